// Built-in termination functions: terminated(next_obs) for the gymnasium MuJoCo tasks MBPO
// is run on, read exactly from the gymnasium 1.x sources (v5 and v4, default parameters,
// terminate_when_unhealthy=True, exclude_current_positions_from_observation=True).
//
// One element body (`is_terminal`, MBPO_HD) is shared by the batched CPU loop, the native
// rollout engine and CUDA kernels; mbpo_fast/_numba/termination.py mirrors its semantics.
//
// Every test is exact on the value as given (float or double): a float32 observation is
// terminal exactly when the real number it holds would make the environment terminal
// (e.g. float(0.7) = 0.69999998807907... is NOT above Hopper's 0.7). Bounds that float cannot
// represent are compared in double; no env threshold is rounded to float.
//
// What each id checks (obs = the observation returned by step, positions x / x,y excluded):
//   kHopper            not (all(-100 < obs[1:] < 100) and 0.7 < obs[0] < inf and -0.2 < obs[1] < 0.2)
//                      gymnasium checks state_vector()[2:] = (qpos[2:], qvel) where the
//                      observation holds clip(qvel, -10, 10): an unclipped |qvel| >= 100 is
//                      invisible in the observation (residual difference; never seen in
//                      thousands of real steps, see tests/test_termination.py).
//   kWalker2d          not (0.8 < obs[0] < 2.0 and -1 < obs[1] < 1)        (no finiteness check)
//   kAnt               not (isfinite(obs[0:27]).all() and 0.2 <= obs[0] <= 1.0)   (inclusive)
//                      gymnasium checks isfinite(state_vector()) which also covers the excluded
//                      x, y position (residual difference: x or y alone non-finite).
//   kHumanoid          not (1.0 < obs[0] < 2.0)                            (no finiteness check)
//   kInvertedPendulum  not isfinite(obs).all() or |obs[1]| > 0.2
//   kHalfCheetah, kPendulum, kNever: never terminal.
// NaN compares false, so a NaN in a checked coordinate makes the state unhealthy, exactly as
// in gymnasium's Python comparisons.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "mbpo_fast/common.h"

namespace mbpo_fast {

// Stable integer ids (stored in configs and passed across the Python boundary): never renumber.
// v4 and v5 of each task share one id because their termination logic is identical in
// gymnasium 1.x; they differ only in the observation widths accepted (see obs-dim checks).
enum class TerminationId : int32_t {
  kNever = 0,             // any obs width; for tasks without termination
  kHopper = 1,            // Hopper-v4/v5: obs 11
  kWalker2d = 2,          // Walker2d-v4/v5: obs 17
  kAnt = 3,               // Ant-v4/v5: obs 27 (no contact forces), 105 (v5 default), 111 (v4 use_contact_forces)
  kHumanoid = 4,          // Humanoid-v4/v5: obs 376 (v4), 348 (v5 default), 45 (v5 four include_* off), ...
  kInvertedPendulum = 5,  // InvertedPendulum-v4/v5: obs 4
  kHalfCheetah = 6,       // HalfCheetah-v4/v5: obs 17, never terminal
  kPendulum = 7,          // Pendulum-v1: obs 3, never terminal
};

inline constexpr int32_t kNumTerminationIds = 8;

// qpos[2:] (13) + qvel (14): the part of Ant's observation gymnasium checks for finiteness.
inline constexpr int kAntStateDim = 27;

namespace detail {

// A value is NaN or +-Inf exactly when its exponent bits are all ones. Tested on the bits
// (host and device alike, no std::isfinite) in the input type -- a float is finite iff its
// double is -- because the integer form vectorizes: 3.5x faster than fabs(x) <= FLT_MAX
// over Ant's 27 values per row.
MBPO_HD uint32_t nonfinite_bit(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  return (u & 0x7f800000u) == 0x7f800000u;
}
MBPO_HD uint32_t nonfinite_bit(double x) {
  uint64_t u;
  memcpy(&u, &x, sizeof u);
  return (u & 0x7ff0000000000000ull) == 0x7ff0000000000000ull;
}

// 1 when NOT |x| < bound (also for NaN), for a positive bound. Non-negative IEEE values order
// like their bit patterns as unsigned integers, and NaN's pattern is above every number's, so
// this is exact; the integer form vectorizes (2x faster than the float compares on Hopper).
MBPO_HD uint32_t abs_not_below(float x, float bound) {
  uint32_t u, b;
  memcpy(&u, &x, sizeof u);
  memcpy(&b, &bound, sizeof b);
  return (u & 0x7fffffffu) >= b;
}
MBPO_HD uint32_t abs_not_below(double x, double bound) {
  uint64_t u, b;
  memcpy(&u, &x, sizeof u);
  memcpy(&b, &bound, sizeof b);
  return (u & 0x7fffffffffffffffull) >= b;
}

// No early exit: a branch-free reduction the compiler vectorizes.
template <typename T>
MBPO_HD bool finite_all(const T* x, int n) {
  uint32_t bad = 0;
  for (int i = 0; i < n; ++i) bad |= nonfinite_bit(x[i]);
  return bad == 0;
}

// One function per task so batched loops can dispatch once, outside the row loop.
// Non-representable bounds (0.7, 0.2, 0.8) are compared in double on the exact value;
// 100 is exact in float, so Hopper's state bound is tested in T.

// Hopper and InvertedPendulum accept a single width: compile-time loop bounds unroll.
inline constexpr int kHopperObsDim = 11;
inline constexpr int kInvertedPendulumObsDim = 4;

template <typename T>
MBPO_HD bool hopper_terminal(const T* x, int) {
  const double z = static_cast<double>(x[0]);
  const double angle = static_cast<double>(x[1]);
  uint32_t state_bad = 0;  // state_vector()[2:] = obs[1:] must lie in (-100, 100)
  for (int i = 1; i < kHopperObsDim; ++i) state_bad |= abs_not_below(x[i], T(100));
  return !(state_bad == 0 && 0.7 < z && z < HUGE_VAL && -0.2 < angle && angle < 0.2);
}

template <typename T>
MBPO_HD bool walker2d_terminal(const T* x, int) {
  const double z = static_cast<double>(x[0]);
  const double angle = static_cast<double>(x[1]);
  return !(0.8 < z && z < 2.0 && -1.0 < angle && angle < 1.0);
}

template <typename T>
MBPO_HD bool ant_terminal(const T* x, int) {
  const double z = static_cast<double>(x[0]);
  return !(finite_all(x, kAntStateDim) && 0.2 <= z && z <= 1.0);
}

template <typename T>
MBPO_HD bool humanoid_terminal(const T* x, int) {
  const double z = static_cast<double>(x[0]);
  return !(1.0 < z && z < 2.0);
}

template <typename T>
MBPO_HD bool inverted_pendulum_terminal(const T* x, int) {
  const double angle = static_cast<double>(x[1]);
  return !finite_all(x, kInvertedPendulumObsDim) || fabs(angle) > 0.2;
}

}  // namespace detail

// True when `next_obs` (obs_dim values) is terminal for `id`. The caller guarantees obs_dim
// is accepted by `accepts_obs_dim(id, obs_dim)`; an unknown id is never terminal.
template <typename T>
MBPO_HD bool is_terminal(TerminationId id, const T* next_obs, int obs_dim) {
  switch (id) {
    case TerminationId::kHopper: return detail::hopper_terminal(next_obs, obs_dim);
    case TerminationId::kWalker2d: return detail::walker2d_terminal(next_obs, obs_dim);
    case TerminationId::kAnt: return detail::ant_terminal(next_obs, obs_dim);
    case TerminationId::kHumanoid: return detail::humanoid_terminal(next_obs, obs_dim);
    case TerminationId::kInvertedPendulum: return detail::inverted_pendulum_terminal(next_obs, obs_dim);
    default: return false;
  }
}

// Convenience overload with the float32 signature the rollout engine uses.
MBPO_HD bool is_terminal(TerminationId id, const float* next_obs, int obs_dim) {
  return is_terminal<float>(id, next_obs, obs_dim);
}

// ---------------------------------------------------------------- host-only helpers

// True when `id` is one of the TerminationId values above.
bool is_valid_termination_id(int32_t id) noexcept;

// The id for a gymnasium env id ("Hopper-v5", "Ant-v4", "Pendulum-v1", ...).
// Throws InvalidArgument listing the known env ids for anything else.
TerminationId termination_id_from_env(const std::string& env_id);

// Comma-separated list of the env ids termination_id_from_env knows.
std::string known_termination_envs();

// Human-readable name of an id ("Hopper", ...); "invalid" for an unknown value.
const char* termination_name(TerminationId id) noexcept;

// Whether the observation width `obs_dim` is one the task produces (guards against running a
// task's termination on another task's observations). kNever accepts any obs_dim >= 1.
bool accepts_obs_dim(TerminationId id, int64_t obs_dim) noexcept;

// The accepted widths as text for error messages, e.g. "27, 105 or 111".
std::string expected_obs_dims(TerminationId id);

// Throws InvalidArgument unless `id` is valid and accepts obs_dim (message names
// `arg_name` with the expected and actual width).
void check_termination_args(int32_t id, int64_t obs_dim, const char* arg_name = "next_obs");

// out[b] = is_terminal(id, next_obs + b*obs_dim, obs_dim) for b in [0, batch); row-major
// next_obs [batch, obs_dim]; out holds 0/1. Validates with check_termination_args and
// batch >= 0; threaded with parallel_for for large batches.
void terminations(TerminationId id, const float* next_obs, int64_t batch, int obs_dim, uint8_t* out);
void terminations(TerminationId id, const double* next_obs, int64_t batch, int obs_dim, uint8_t* out);

// The same on the GPU: next_obs and out are device pointers, `cuda_stream` a cudaStream_t
// (nullptr: the default stream); asynchronous. Validates like terminations(). Without CUDA
// it throws std::runtime_error.
void cuda_terminations(TerminationId id, const float* next_obs, int64_t batch, int obs_dim,
                       uint8_t* out, void* cuda_stream);

}  // namespace mbpo_fast

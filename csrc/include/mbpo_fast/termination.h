// Built-in termination functions: terminated(next_obs) for the gymnasium MuJoCo tasks MBPO
// is run on, read exactly from the gymnasium 1.x sources (v5 and v4, default parameters,
// terminate_when_unhealthy=True, exclude_current_positions_from_observation=True).
//
// One element body (`is_terminal`, MBPO_HD) is shared by the batched CPU loop, the native
// rollout engine and CUDA kernels; mbpo_fast/_numba/termination.py mirrors it line by line.
//
// Comparisons are done in double precision on the value as given (float or double): a
// float32 observation is terminal exactly when the real number it holds would make the
// environment terminal (e.g. float(0.7) = 0.69999998807907... is NOT above Hopper's 0.7).
// No env threshold is rounded to float.
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

// |x| <= DBL_MAX is false exactly for NaN and +-Inf; unlike std::isfinite it compiles
// unchanged as host and device code.
MBPO_HD bool finite(double x) { return fabs(x) <= DBL_MAX; }

template <typename T>
MBPO_HD bool finite_all(const T* x, int n) {
  for (int i = 0; i < n; ++i) {
    if (!finite(static_cast<double>(x[i]))) return false;
  }
  return true;
}

}  // namespace detail

// True when `next_obs` (obs_dim values) is terminal for `id`. The caller guarantees obs_dim
// is accepted by `accepts_obs_dim(id, obs_dim)`; an unknown id is never terminal.
template <typename T>
MBPO_HD bool is_terminal(TerminationId id, const T* next_obs, int obs_dim) {
  switch (id) {
    case TerminationId::kHopper: {
      const double z = static_cast<double>(next_obs[0]);
      const double angle = static_cast<double>(next_obs[1]);
      bool healthy = 0.7 < z && z < HUGE_VAL && -0.2 < angle && angle < 0.2;
      for (int i = 1; healthy && i < obs_dim; ++i) {
        const double s = static_cast<double>(next_obs[i]);
        healthy = -100.0 < s && s < 100.0;
      }
      return !healthy;
    }
    case TerminationId::kWalker2d: {
      const double z = static_cast<double>(next_obs[0]);
      const double angle = static_cast<double>(next_obs[1]);
      return !(0.8 < z && z < 2.0 && -1.0 < angle && angle < 1.0);
    }
    case TerminationId::kAnt: {
      const double z = static_cast<double>(next_obs[0]);
      return !(detail::finite_all(next_obs, kAntStateDim) && 0.2 <= z && z <= 1.0);
    }
    case TerminationId::kHumanoid: {
      const double z = static_cast<double>(next_obs[0]);
      return !(1.0 < z && z < 2.0);
    }
    case TerminationId::kInvertedPendulum: {
      const double angle = static_cast<double>(next_obs[1]);
      return !detail::finite_all(next_obs, obs_dim) || fabs(angle) > 0.2;
    }
    default:
      return false;
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

}  // namespace mbpo_fast

// Built-in reward functions r(obs, act, next_obs) for planning with a learned model (the MPC
// planner, planner.h), read from the gymnasium 1.x sources (default parameters).
//
// One element body (`builtin_reward`, MBPO_HD) is shared by the CPU planner and any device
// code; mbpo_fast/reward.py mirrors it in numpy and mbpo_fast/_numba/planner.py in Numba.
//
//   kPendulum          Pendulum-v1 (obs 3, act 1): -(th^2 + 0.1 thdot^2 + 0.001 u^2) with
//                      th = atan2(obs[1], obs[0]) in [-pi, pi], thdot = obs[2] (the state
//                      BEFORE the step, as gymnasium computes it) and u = clip(act[0], -2, 2).
//                      Exact.
//   kInvertedPendulum  InvertedPendulum-v5 (obs 4, act 1): 1 when next_obs is not terminal
//                      (termination.h), else 0. Exact.
//   kHalfCheetah       HalfCheetah-v4/v5 (obs 17, act 6): next_obs[8] - 0.1 sum(act^2).
//   kHopper            Hopper-v4/v5 (obs 11, act 3): next_obs[5] + healthy - 1e-3 sum(act^2),
//                      healthy = 1 when next_obs is not terminal, else 0.
//   kWalker2d          Walker2d-v4/v5 (obs 17, act 6): next_obs[8] + healthy - 1e-3 sum(act^2).
// The locomotion rewards use the x velocity in next_obs (qvel[0] at the end of the step) where
// gymnasium uses the mean velocity over the frame skip, (x_after - x_before) / dt: the
// observation excludes x, so a model of the observation cannot give the latter (mbrl-lib and
// the PETS code make the same approximation). The healthy term follows v5 (paid only while
// healthy); the costs use the action as given (the planner keeps actions inside the box).
//
// kModel is not a function: the planner then uses the reward the ensemble predicts (its last
// output, sampled like Δobs).
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>

#include "mbpo_fast/common.h"
#include "mbpo_fast/termination.h"

namespace mbpo_fast {

// Stable integer ids (passed across the Python boundary): never renumber.
enum class RewardId : int32_t {
  kModel = 0,  // the model's predicted reward
  kPendulum = 1,
  kInvertedPendulum = 2,
  kHalfCheetah = 3,
  kHopper = 4,
  kWalker2d = 5,
};

inline constexpr int32_t kNumRewardIds = 6;

namespace detail {

MBPO_HD double squared_norm(const float* a, int n) {
  double s = 0.0;
  for (int i = 0; i < n; ++i) s += static_cast<double>(a[i]) * static_cast<double>(a[i]);
  return s;
}

MBPO_HD double pendulum_reward(const float* obs, const float* act) {
  const double th = atan2(static_cast<double>(obs[1]), static_cast<double>(obs[0]));
  const double thdot = static_cast<double>(obs[2]);
  double u = static_cast<double>(act[0]);
  u = u < -2.0 ? -2.0 : (u > 2.0 ? 2.0 : u);
  return -(th * th + 0.1 * thdot * thdot + 0.001 * u * u);
}

}  // namespace detail

// The reward of one transition, computed in double and rounded once to float. The caller
// guarantees accepts_reward_dims(id, obs_dim, act_dim); kModel (and an unknown id) gives 0.
MBPO_HD float builtin_reward(RewardId id, const float* obs, const float* act, const float* next_obs, int obs_dim,
                             int act_dim) {
  double r = 0.0;
  switch (id) {
    case RewardId::kPendulum: r = detail::pendulum_reward(obs, act); break;
    case RewardId::kInvertedPendulum:
      r = is_terminal(TerminationId::kInvertedPendulum, next_obs, obs_dim) ? 0.0 : 1.0;
      break;
    case RewardId::kHalfCheetah:
      r = static_cast<double>(next_obs[8]) - 0.1 * detail::squared_norm(act, act_dim);
      break;
    case RewardId::kHopper:
      r = static_cast<double>(next_obs[5]) + (is_terminal(TerminationId::kHopper, next_obs, obs_dim) ? 0.0 : 1.0) -
          1e-3 * detail::squared_norm(act, act_dim);
      break;
    case RewardId::kWalker2d:
      r = static_cast<double>(next_obs[8]) +
          (is_terminal(TerminationId::kWalker2d, next_obs, obs_dim) ? 0.0 : 1.0) -
          1e-3 * detail::squared_norm(act, act_dim);
      break;
    default: break;
  }
  return static_cast<float>(r);
}

// A reward written by the user: out[i] = r(obs[i], act[i], next_obs[i]) for the n rows
// (row-major obs/next_obs [n, obs_dim], act [n, act_dim]). May throw; the planner then
// propagates the exception and changes nothing.
using RewardCallback =
    std::function<void(const float* obs, const float* act, const float* next_obs, int64_t n, float* out)>;

// ---------------------------------------------------------------- host-only helpers

bool is_valid_reward_id(int32_t id) noexcept;

// The id for a gymnasium env id ("Pendulum-v1", "InvertedPendulum-v5", "HalfCheetah-v5",
// "Hopper-v5", "Walker2d-v5" and their v4 twins). Throws InvalidArgument listing the known
// env ids for anything else.
RewardId reward_id_from_env(const std::string& env_id);

// Comma-separated list of the env ids reward_id_from_env knows.
std::string known_reward_envs();

// Human-readable name ("Pendulum", ..., "model").
const char* reward_name(RewardId id) noexcept;

// Throws InvalidArgument unless `id` is valid and the task's (obs_dim, act_dim) are the given
// ones (kModel accepts any); the message names `arg_name` with the expected and actual dims.
void check_reward_args(int32_t id, int64_t obs_dim, int64_t act_dim, const char* arg_name = "reward");

// out[i] = builtin_reward(id, row i) for i < n. Validates with check_reward_args and n >= 0.
void rewards(RewardId id, const float* obs, const float* act, const float* next_obs, int64_t n, int obs_dim,
             int act_dim, float* out);

}  // namespace mbpo_fast

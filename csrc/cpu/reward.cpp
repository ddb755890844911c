// Host side of the built-in reward functions (reward.h): env-id lookup, dimension checks and
// the batched CPU loop.
#include "mbpo_fast/reward.h"

#include <string>

namespace mbpo_fast {

namespace {

struct RewardEntry {
  const char* env_id;
  RewardId id;
};

constexpr RewardEntry kRewardEnvs[] = {
    {"Pendulum-v1", RewardId::kPendulum},
    {"InvertedPendulum-v5", RewardId::kInvertedPendulum},
    {"InvertedPendulum-v4", RewardId::kInvertedPendulum},
    {"HalfCheetah-v5", RewardId::kHalfCheetah},
    {"HalfCheetah-v4", RewardId::kHalfCheetah},
    {"Hopper-v5", RewardId::kHopper},
    {"Hopper-v4", RewardId::kHopper},
    {"Walker2d-v5", RewardId::kWalker2d},
    {"Walker2d-v4", RewardId::kWalker2d},
};

// (obs_dim, act_dim) of each task; kModel: any (-1).
struct Dims {
  int64_t obs, act;
};

Dims reward_dims(RewardId id) {
  switch (id) {
    case RewardId::kPendulum: return {3, 1};
    case RewardId::kInvertedPendulum: return {4, 1};
    case RewardId::kHalfCheetah: return {17, 6};
    case RewardId::kHopper: return {11, 3};
    case RewardId::kWalker2d: return {17, 6};
    default: return {-1, -1};
  }
}

}  // namespace

bool is_valid_reward_id(int32_t id) noexcept { return id >= 0 && id < kNumRewardIds; }

RewardId reward_id_from_env(const std::string& env_id) {
  for (const RewardEntry& e : kRewardEnvs) {
    if (env_id == e.env_id) return e.id;
  }
  throw InvalidArgument("reward: no built-in reward function for '" + env_id + "'; known env ids: " +
                        known_reward_envs() + " (or use the model's reward output, or a custom function)");
}

std::string known_reward_envs() {
  std::string out;
  for (const RewardEntry& e : kRewardEnvs) {
    if (!out.empty()) out += ", ";
    out += e.env_id;
  }
  return out;
}

const char* reward_name(RewardId id) noexcept {
  switch (id) {
    case RewardId::kModel: return "model";
    case RewardId::kPendulum: return "Pendulum";
    case RewardId::kInvertedPendulum: return "InvertedPendulum";
    case RewardId::kHalfCheetah: return "HalfCheetah";
    case RewardId::kHopper: return "Hopper";
    case RewardId::kWalker2d: return "Walker2d";
  }
  return "invalid";
}

void check_reward_args(int32_t id, int64_t obs_dim, int64_t act_dim, const char* arg_name) {
  require(is_valid_reward_id(id), std::string(arg_name) + ": unknown built-in reward id " + std::to_string(id) +
                                      " (expected 0.." + std::to_string(kNumRewardIds - 1) + ")");
  const Dims d = reward_dims(static_cast<RewardId>(id));
  if (d.obs < 0) return;
  require(obs_dim == d.obs && act_dim == d.act,
          std::string(arg_name) + ": the " + reward_name(static_cast<RewardId>(id)) +
              " reward expects obs_dim " + std::to_string(d.obs) + " and act_dim " + std::to_string(d.act) +
              ", got obs_dim " + std::to_string(obs_dim) + " and act_dim " + std::to_string(act_dim));
}

void rewards(RewardId id, const float* obs, const float* act, const float* next_obs, int64_t n, int obs_dim,
             int act_dim, float* out) {
  check_reward_args(static_cast<int32_t>(id), obs_dim, act_dim);
  require(n >= 0, "rewards: n must be >= 0, got " + std::to_string(n));
  for (int64_t i = 0; i < n; ++i) {
    out[i] = builtin_reward(id, obs + i * obs_dim, act + i * act_dim, next_obs + i * obs_dim, obs_dim, act_dim);
  }
}

}  // namespace mbpo_fast

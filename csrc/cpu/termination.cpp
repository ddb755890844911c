// Host side of the built-in termination functions: env-id lookup, observation-width checks
// and the batched, threaded CPU loop over the shared element body.
#include "mbpo_fast/termination.h"

#include <cstring>
#include <stdexcept>
#include <string>

#include "mbpo_fast/parallel.h"

namespace mbpo_fast {

namespace {

struct EnvEntry {
  const char* env_id;
  TerminationId id;
};

// Every gymnasium id whose termination logic termination.h implements exactly.
constexpr EnvEntry kEnvs[] = {
    {"Hopper-v5", TerminationId::kHopper},
    {"Hopper-v4", TerminationId::kHopper},
    {"Walker2d-v5", TerminationId::kWalker2d},
    {"Walker2d-v4", TerminationId::kWalker2d},
    {"HalfCheetah-v5", TerminationId::kHalfCheetah},
    {"HalfCheetah-v4", TerminationId::kHalfCheetah},
    {"Ant-v5", TerminationId::kAnt},
    {"Ant-v4", TerminationId::kAnt},
    {"Humanoid-v5", TerminationId::kHumanoid},
    {"Humanoid-v4", TerminationId::kHumanoid},
    {"InvertedPendulum-v5", TerminationId::kInvertedPendulum},
    {"InvertedPendulum-v4", TerminationId::kInvertedPendulum},
    {"Pendulum-v1", TerminationId::kPendulum},
};

// Humanoid-v5: 45 (qpos[2:] + qvel) plus any subset of cinert 130, cvel 78,
// qfrc_actuator 17, cfrc_ext 78 (the four include_*_in_observation flags).
bool humanoid_v5_width(int64_t d) {
  for (int mask = 0; mask < 16; ++mask) {
    const int64_t w = 45 + ((mask & 1) ? 130 : 0) + ((mask & 2) ? 78 : 0) + ((mask & 4) ? 17 : 0) +
                      ((mask & 8) ? 78 : 0);
    if (w == d) return true;
  }
  return false;
}

// Rows per thread chunk. A row costs a few ns and the op is memory bound: on the 2-core
// dev VMs, waking a second thread for 100,000 Hopper rows made the call 4x slower (1.5 ms
// -> 6 ms, median of 41, interleaved), so only batches of >= 2^18 rows are split.
constexpr int64_t kGrain = 1 << 17;

template <typename T, typename RowFn>
void rows(const T* next_obs, int64_t batch, int obs_dim, uint8_t* out, RowFn row_fn) {
  parallel_for(batch, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) out[b] = row_fn(next_obs + b * obs_dim, obs_dim) ? 1 : 0;
  });
}

template <typename T>
void terminations_impl(TerminationId id, const T* next_obs, int64_t batch, int obs_dim, uint8_t* out) {
  require(batch >= 0, "terminations: batch must be >= 0, got " + std::to_string(batch));
  check_termination_args(static_cast<int32_t>(id), obs_dim);
  if (batch == 0) return;
  // Dispatch once per call, not per row; lambdas (not function pointers) so that each row
  // loop inlines its task's element body.
  using detail::ant_terminal, detail::hopper_terminal, detail::humanoid_terminal;
  using detail::inverted_pendulum_terminal, detail::walker2d_terminal;
  switch (id) {
    case TerminationId::kHopper:
      return rows(next_obs, batch, obs_dim, out, [](const T* x, int d) { return hopper_terminal(x, d); });
    case TerminationId::kWalker2d:
      return rows(next_obs, batch, obs_dim, out, [](const T* x, int d) { return walker2d_terminal(x, d); });
    case TerminationId::kAnt:
      return rows(next_obs, batch, obs_dim, out, [](const T* x, int d) { return ant_terminal(x, d); });
    case TerminationId::kHumanoid:
      return rows(next_obs, batch, obs_dim, out, [](const T* x, int d) { return humanoid_terminal(x, d); });
    case TerminationId::kInvertedPendulum:
      return rows(next_obs, batch, obs_dim, out,
                  [](const T* x, int d) { return inverted_pendulum_terminal(x, d); });
    default:
      std::memset(out, 0, static_cast<size_t>(batch));  // never-terminating tasks
  }
}

}  // namespace

bool is_valid_termination_id(int32_t id) noexcept { return id >= 0 && id < kNumTerminationIds; }

TerminationId termination_id_from_env(const std::string& env_id) {
  for (const EnvEntry& e : kEnvs) {
    if (env_id == e.env_id) return e.id;
  }
  throw InvalidArgument("env_id: no built-in termination function for '" + env_id + "'; known ids: " +
                        known_termination_envs() +
                        ". For another task pass your own termination callable "
                        "(obs, act, next_obs) -> bool[B] instead of an env id.");
}

std::string known_termination_envs() {
  std::string s;
  for (const EnvEntry& e : kEnvs) {
    if (!s.empty()) s += ", ";
    s += e.env_id;
  }
  return s;
}

const char* termination_name(TerminationId id) noexcept {
  switch (id) {
    case TerminationId::kNever: return "Never";
    case TerminationId::kHopper: return "Hopper";
    case TerminationId::kWalker2d: return "Walker2d";
    case TerminationId::kAnt: return "Ant";
    case TerminationId::kHumanoid: return "Humanoid";
    case TerminationId::kInvertedPendulum: return "InvertedPendulum";
    case TerminationId::kHalfCheetah: return "HalfCheetah";
    case TerminationId::kPendulum: return "Pendulum";
  }
  return "invalid";
}

bool accepts_obs_dim(TerminationId id, int64_t d) noexcept {
  switch (id) {
    case TerminationId::kNever: return d >= 1;
    case TerminationId::kHopper: return d == detail::kHopperObsDim;
    case TerminationId::kWalker2d: return d == 17;
    case TerminationId::kAnt: return d == 27 || d == 105 || d == 111;
    case TerminationId::kHumanoid: return d == 376 || humanoid_v5_width(d);
    case TerminationId::kInvertedPendulum: return d == detail::kInvertedPendulumObsDim;
    case TerminationId::kHalfCheetah: return d == 17;
    case TerminationId::kPendulum: return d == 3;
  }
  return false;
}

std::string expected_obs_dims(TerminationId id) {
  switch (id) {
    case TerminationId::kNever: return ">= 1";
    case TerminationId::kHopper: return "11";
    case TerminationId::kWalker2d: return "17";
    case TerminationId::kAnt: return "27 (no contact forces), 105 (Ant-v5 default) or 111 (Ant-v4 use_contact_forces)";
    case TerminationId::kHumanoid:
      return "376 (Humanoid-v4), 348 (Humanoid-v5 default), 45 (the four include_*_in_observation off) "
             "or 45 plus any of cinert 130 / cvel 78 / qfrc_actuator 17 / cfrc_ext 78";
    case TerminationId::kInvertedPendulum: return "4";
    case TerminationId::kHalfCheetah: return "17";
    case TerminationId::kPendulum: return "3";
  }
  return "?";
}

void check_termination_args(int32_t id, int64_t obs_dim, const char* arg_name) {
  require(is_valid_termination_id(id), "termination_id: expected an id in [0, " +
                                           std::to_string(kNumTerminationIds) + "), got " + std::to_string(id));
  const auto tid = static_cast<TerminationId>(id);
  if (!accepts_obs_dim(tid, obs_dim)) {
    throw InvalidArgument(std::string(arg_name) + ": " + termination_name(tid) +
                          " termination expects an observation width of " + expected_obs_dims(tid) + ", got " +
                          std::to_string(obs_dim));
  }
}

void terminations(TerminationId id, const float* next_obs, int64_t batch, int obs_dim, uint8_t* out) {
  terminations_impl<float>(id, next_obs, batch, obs_dim, out);
}

void terminations(TerminationId id, const double* next_obs, int64_t batch, int obs_dim, uint8_t* out) {
  terminations_impl<double>(id, next_obs, batch, obs_dim, out);
}

#if !defined(MBPO_FAST_WITH_CUDA)
// Built without CUDA: csrc/cuda/termination.cu is not compiled.
void cuda_terminations(TerminationId, const float*, int64_t, int, uint8_t*, void*) {
  throw std::runtime_error("cuda_terminations: mbpo_fast was built without CUDA (MBPO_FAST_CUDA=OFF or no nvcc)");
}
#endif

}  // namespace mbpo_fast

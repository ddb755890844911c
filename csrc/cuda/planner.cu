// MPC planner on the device (cuda_ops.h: cuda_plan_optimize, cuda_plan_evaluate): the
// algorithm of planner.h with the particle rollouts on the GPU.
//
// The optimizer loop (candidate sampling, elite refit, warm start) is the CPU planner's own
// code (detail::plan_optimize_with): it is O(population x horizon x act_dim) per iteration, tiny
// next to the rollouts, and running it on the host keeps the candidates bit-identical to the
// CPU planner's. Each iteration copies the candidates to the device once, scores them there
// and copies the `population` values back (one sync per iteration). Per horizon step t
// (seed_t = rollout_step_seed(s_i, t), computed on the host):
//   plan_act_kernel         act[r] = x[r / P, t]                      (row r = n * P + p)
//   launch_step             next_obs, reward of the fused ensemble step over all R rows, with
//                           members = the TS-inf assignment or null (TS-1: ensemble_step's own
//                           Philox choice) — the kernels of ensemble_step.cu
//   plan_accumulate_kernel  reward (the model's or builtin_reward, reward.h, MBPO_HD),
//                           termination (is_terminal), return / state / failure of each row, and
//                           obs = next_obs where finite: plan_evaluate's loop body, row for row
// then plan_values_kernel: value[n] = mean over the particles of the returns (double, p in
// order, as the CPU). Only built-in rewards and terminations (or the model's reward) run on the
// device; a C++/Python callback needs the rows on the host: the CPU planner.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "check.cuh"
#include "device_guard.cuh"
#include "ensemble_tile.cuh"
#include "mbpo_fast/cuda_ops.h"
#include "mbpo_fast/planner.h"
#include "mbpo_fast/reward.h"
#include "mbpo_fast/rng.h"
#include "mbpo_fast/rollout.h"
#include "mbpo_fast/termination.h"

namespace mbpo_fast {
namespace cuda_detail {
namespace {

// Row states of plan_evaluate (planner.cpp).
constexpr uint8_t kAlive = 0, kTerminated = 1, kFailed = 2;

__global__ void plan_init_kernel(const float* __restrict__ obs0, int od, int64_t R, MemberList elites, uint64_t seed,
                                 float* __restrict__ obs, uint8_t* __restrict__ state, double* __restrict__ ret,
                                 int64_t* __restrict__ members) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (r >= R) return;
  for (int c = 0; c < od; ++c) obs[r * od + c] = obs0[c];
  state[r] = kAlive;
  ret[r] = 0.0;
  if (members != nullptr) {  // TS-inf: one elite per particle for the whole horizon
    members[r] = elites.id[random_index(seed, kStreamMemberChoice, static_cast<uint64_t>(r),
                                        static_cast<uint32_t>(elites.count))];
  }
}

// act[r, a] = x[(r / P) * H + t, a] over the R * A elements.
__global__ void plan_act_kernel(const float* __restrict__ x, int64_t R, int64_t P, int64_t H, int A, int64_t t,
                                float* __restrict__ act) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= R * A) return;
  const int64_t r = e / A, a = e - r * A;
  act[e] = x[((r / P) * H + t) * A + a];
}

__global__ void __launch_bounds__(kThreads)
    plan_accumulate_kernel(int64_t R, int od, int ad, RewardId reward, TerminationId termination,
                           const float* __restrict__ act, const float* __restrict__ next,
                           const float* __restrict__ rew_model, float* __restrict__ obs, uint8_t* __restrict__ state,
                           double* __restrict__ ret, unsigned long long* __restrict__ failed) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  int fail = 0;
  if (r < R) {
    const float* nx = next + r * od;
    float* o = obs + r * od;
    const bool finite = finite_row(nx, od);
    if (state[r] == kAlive) {
      // the reward of the state BEFORE the step (obs is updated below), as the CPU planner
      const float rw = reward == RewardId::kModel ? rew_model[r] : builtin_reward(reward, o, act + r * ad, nx, od, ad);
      if (!finite || !isfinite(rw)) {
        state[r] = kFailed;
        ret[r] = -__longlong_as_double(0x7ff0000000000000ll);
        fail = 1;
      } else {
        ret[r] += static_cast<double>(rw);
        if (is_terminal(termination, nx, od)) state[r] = kTerminated;
      }
    }
    // rows keep stepping (one batch shape) but never from a non-finite state
    if (finite) {
      for (int c = 0; c < od; ++c) o[c] = nx[c];
    }
  }
  const int block_failed = __syncthreads_count(fail);
  if (threadIdx.x == 0 && block_failed != 0) atomicAdd(failed, static_cast<unsigned long long>(block_failed));
}

__global__ void plan_values_kernel(const double* __restrict__ ret, int64_t N, int64_t P, double* __restrict__ values) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (n >= N) return;
  double sum = 0.0;
  for (int64_t p = 0; p < P; ++p) sum += ret[n * P + p];
  values[n] = sum / static_cast<double>(P);
}

unsigned grid_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// Device buffers for scoring N candidates x P particles over H steps; reused across the
// iterations of one plan. Freed in stream order.
class PlanEvaluator {
 public:
  PlanEvaluator(const EnsembleView& model, const PlanObjective& objective, const float* obs0, int64_t N, int64_t H,
                int64_t P, Propagation propagation, bool keep_members, cudaStream_t stream)
      : m_(device_model(model, /*need_elites=*/true, "cuda planner")),
        elites_(member_list(model.elites, model.num_elites, "elites")),
        objective_(objective),
        N_(N), H_(H), P_(P), R_(N * P), A_(model.act_dim), propagation_(propagation), stream_(stream) {
    require(R_ <= INT32_MAX, "population * particles: the CUDA planner takes at most 2**31 - 1 rows, got " +
                                 std::to_string(R_));
    const size_t od = static_cast<size_t>(m_.obs_dim), R = static_cast<size_t>(R_);
    const size_t step_bytes = cuda_ensemble_step_workspace_bytes(R_, model.ensemble_size);
    const bool ts_inf = propagation == Propagation::kTsInf;
    auto piece = [](size_t b) { return (b + 255) / 256 * 256; };
    const size_t sizes[] = {piece(sizeof(float) * od),                       // obs0
                            piece(sizeof(float) * static_cast<size_t>(N * H * A_)),  // x
                            piece(sizeof(float) * R * od) * 2,                // obs, next
                            piece(sizeof(float) * R * static_cast<size_t>(A_)),  // act
                            piece(sizeof(float) * R),                         // model reward
                            piece(R),                                         // state
                            piece(sizeof(double) * R),                        // returns
                            piece(sizeof(double) * static_cast<size_t>(N)),  // values
                            piece(sizeof(unsigned long long)),                // failed
                            ts_inf ? piece(sizeof(int64_t) * R) : 0,          // TS-inf members
                            keep_members ? piece(sizeof(int64_t) * R * static_cast<size_t>(H)) : 0,
                            piece(step_bytes)};
    size_t total = 0;
    for (size_t b : sizes) total += b;
    MBPO_CUDA_CHECK(cudaMallocAsync(&base_, total, stream_));
    char* p = static_cast<char*>(base_);
    auto take = [&](size_t bytes) {
      char* out = p;
      p += bytes;
      return out;
    };
    obs0_ = reinterpret_cast<float*>(take(sizes[0]));
    x_ = reinterpret_cast<float*>(take(sizes[1]));
    obs_ = reinterpret_cast<float*>(take(sizes[2] / 2));
    next_ = reinterpret_cast<float*>(take(sizes[2] / 2));
    act_ = reinterpret_cast<float*>(take(sizes[3]));
    rew_ = reinterpret_cast<float*>(take(sizes[4]));
    state_ = reinterpret_cast<uint8_t*>(take(sizes[5]));
    ret_ = reinterpret_cast<double*>(take(sizes[6]));
    values_ = reinterpret_cast<double*>(take(sizes[7]));
    failed_ = reinterpret_cast<unsigned long long*>(take(sizes[8]));
    members_ = ts_inf ? reinterpret_cast<int64_t*>(take(sizes[9])) : nullptr;
    used_ = keep_members ? reinterpret_cast<int64_t*>(take(sizes[10])) : nullptr;
    step_ws_ = take(sizes[11]);
    MBPO_CUDA_CHECK(cudaMemcpyAsync(obs0_, obs0, sizeof(float) * od, cudaMemcpyHostToDevice, stream_));
    host_values_.resize(static_cast<size_t>(N));
  }
  ~PlanEvaluator() {
    if (base_ != nullptr) cudaFreeAsync(base_, stream_);
  }
  PlanEvaluator(const PlanEvaluator&) = delete;
  PlanEvaluator& operator=(const PlanEvaluator&) = delete;

  // Scores x [N, H, A] (host) with iteration seed s: (values [N] on the host, failed rows).
  // members_out (host [H, R], may be null; needs keep_members) receives the member of every row.
  std::pair<const double*, int64_t> operator()(const float* x, uint64_t s, int64_t* members_out = nullptr) {
    const int od = m_.obs_dim, A = static_cast<int>(A_);
    MBPO_CUDA_CHECK(cudaMemcpyAsync(x_, x, sizeof(float) * static_cast<size_t>(N_ * H_ * A_), cudaMemcpyHostToDevice,
                                    stream_));
    MBPO_CUDA_CHECK(cudaMemsetAsync(failed_, 0, sizeof(unsigned long long), stream_));
    plan_init_kernel<<<grid_for(R_), kThreads, 0, stream_>>>(obs0_, od, R_, elites_, s, obs_, state_, ret_, members_);
    MBPO_CUDA_CHECK_LAUNCH();
    for (int64_t t = 0; t < H_; ++t) {
      const uint64_t seed_t = rollout_step_seed(s, t);
      plan_act_kernel<<<grid_for(R_ * A), kThreads, 0, stream_>>>(x_, R_, P_, H_, A, t, act_);
      MBPO_CUDA_CHECK_LAUNCH();
      launch_step(m_, elites_, obs_, act_, R_, nullptr, seed_t, /*deterministic=*/false, members_, next_, rew_,
                  used_ != nullptr ? used_ + t * R_ : nullptr, step_ws_, stream_);
      plan_accumulate_kernel<<<grid_for(R_), kThreads, 0, stream_>>>(R_, od, A, objective_.reward,
                                                                     objective_.termination, act_, next_, rew_, obs_,
                                                                     state_, ret_, failed_);
      MBPO_CUDA_CHECK_LAUNCH();
    }
    plan_values_kernel<<<grid_for(N_), kThreads, 0, stream_>>>(ret_, N_, P_, values_);
    MBPO_CUDA_CHECK_LAUNCH();
    unsigned long long failed = 0;
    MBPO_CUDA_CHECK(cudaMemcpyAsync(host_values_.data(), values_, sizeof(double) * static_cast<size_t>(N_),
                                    cudaMemcpyDeviceToHost, stream_));
    MBPO_CUDA_CHECK(cudaMemcpyAsync(&failed, failed_, sizeof(failed), cudaMemcpyDeviceToHost, stream_));
    if (members_out != nullptr && used_ != nullptr) {
      MBPO_CUDA_CHECK(cudaMemcpyAsync(members_out, used_, sizeof(int64_t) * static_cast<size_t>(H_ * R_),
                                      cudaMemcpyDeviceToHost, stream_));
    }
    MBPO_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return {host_values_.data(), static_cast<int64_t>(failed)};
  }

 private:
  DeviceModel m_;
  MemberList elites_;
  PlanObjective objective_;
  int64_t N_, H_, P_, R_, A_;
  Propagation propagation_;
  cudaStream_t stream_;
  void* base_ = nullptr;
  float *obs0_ = nullptr, *x_ = nullptr, *obs_ = nullptr, *next_ = nullptr, *act_ = nullptr, *rew_ = nullptr;
  uint8_t* state_ = nullptr;
  double *ret_ = nullptr, *values_ = nullptr;
  unsigned long long* failed_ = nullptr;
  int64_t *members_ = nullptr, *used_ = nullptr;
  void* step_ws_ = nullptr;
  std::vector<double> host_values_;
};

// Before any CUDA call: what the device planner cannot run.
void check_device_objective(const PlanObjective& objective) {
  require(!objective.reward_callback && !objective.termination_callback,
          "reward / termination: the CUDA planner runs the model's reward or a built-in reward and termination "
          "(reward.h, termination.h) on the device; a callback needs the rows on the host: plan with a CPU "
          "model (the CPU planner) for callables");
}

// The device the model's weights live on (the planner runs there).
int model_device(const EnsembleView& model) {
  cudaPointerAttributes attr{};
  MBPO_CUDA_CHECK(cudaPointerGetAttributes(&attr, model.weights[0]));
  require(attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged,
          "model: the CUDA planner needs the ensemble's weights in device memory");
  return attr.device;
}

}  // namespace
}  // namespace cuda_detail

using namespace cuda_detail;

PlanResult cuda_plan_optimize(const EnsembleView& model, const PlannerConfig& config, const PlanObjective& objective,
                              const float* obs, const float* mean, uint64_t call_seed, float* action_out,
                              float* mean_out, void* cuda_stream) {
  const auto t_start = std::chrono::steady_clock::now();
  detail::check_plan_args(model, config, objective, obs, mean, action_out, mean_out);
  check_device_objective(objective);
  DeviceGuard guard(model_device(model));
  PlanEvaluator evaluate(model, objective, obs, config.population, config.horizon, config.particles,
                         config.propagation, /*keep_members=*/false, static_cast<cudaStream_t>(cuda_stream));
  PlanResult res = detail::plan_optimize_with(config, model.act_dim, mean, call_seed, action_out, mean_out,
                                              [&](const float* x, uint64_t s_i) { return evaluate(x, s_i); });
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return res;
}

void cuda_plan_evaluate(const EnsembleView& model, const PlanObjective& objective, const float* obs,
                        const float* actions, int64_t num_sequences, int64_t horizon, int64_t particles,
                        Propagation propagation, uint64_t seed, double* values_out, int64_t* members_out,
                        void* cuda_stream) {
  detail::check_evaluate_args(model, objective, obs, num_sequences, horizon, particles);
  require(propagation == Propagation::kTsInf || propagation == Propagation::kTs1,
          "propagation: expected 'ts_inf' (0) or 'ts_1' (1), got " + std::to_string(static_cast<int>(propagation)));
  require(values_out != nullptr, "plan_evaluate: null values_out");
  detail::check_actions(actions, num_sequences * horizon * model.act_dim);
  check_device_objective(objective);
  DeviceGuard guard(model_device(model));
  PlanEvaluator evaluate(model, objective, obs, num_sequences, horizon, particles, propagation,
                         /*keep_members=*/members_out != nullptr, static_cast<cudaStream_t>(cuda_stream));
  const std::pair<const double*, int64_t> scored = evaluate(actions, seed, members_out);
  std::copy(scored.first, scored.first + num_sequences, values_out);
}

}  // namespace mbpo_fast

// Branched rollout on the device (cuda_ops.h: cuda_branched_rollout): the algorithm of
// rollout.h, step for step, with every array and every count in device memory. The host
// enqueues `horizon` steps without waiting; kernels read the number of alive rows from a
// device counter and blocks past it exit (grids are sized for num_starts, an upper bound).
// One device-to-host copy at the end returns the statistics.
//
// Per step t (seed_t = rollout_step_seed(seed, t), computed on the host):
//   actor_kernel     act[i] for alive position i: the actor MLP (shared tile machinery, ReLU)
//                    + kernels::policy_noise / actor_row_epilogue (noise index i * act_dim + j)
//   launch_step      next_obs[i], rew[i]: the fused ensemble step (member of position i from
//                    Philox, as the CPU), batch read from the alive counter
//   flag_kernel      term[i] = is_terminal(next_obs[i]); ok[i] = act, rew, next_obs finite
//   scan             ok_pos = exclusive prefix of ok (CUB): stored rows keep their order
//   append_kernel    row i with ok[i] goes to model-pool slot (w0 + added + ok_pos[i]) mod
//                    capacity — the CPU add_batch order, including "only the last capacity
//                    rows of a batch survive"; cont[i] = ok[i] && !term[i]
//   scan             cont_pos = exclusive prefix of cont
//   compact_kernel   obs[cont_pos[i]] = next_obs[i] for continuing rows
//   count_kernel     alive = #cont, rows_added += #ok, nonfinite += alive - #ok, ...
// The pools' host-side size / write position are advanced once at the end.
#include <cub/cub.cuh>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "check.cuh"
#include "device_guard.cuh"
#include "ensemble_tile.cuh"
#include "kernels/actor_epilogue.h"
#include "mbpo_fast/cuda_ops.h"
#include "mbpo_fast/rng.h"
#include "mbpo_fast/rollout.h"
#include "mbpo_fast/termination.h"

namespace mbpo_fast {
namespace cuda_detail {
namespace {

constexpr int kMaxActDim = 32;

// The actor's action box and log_std bounds, by value (host arrays at the API).
struct ActorBox {
  float scale[kMaxActDim], bias[kMaxActDim], low[kMaxActDim], high[kMaxActDim];
  float log_std_min, log_std_max;
  int act_dim;
};

// Device-side bookkeeping of a rollout, read back once at the end.
struct Counters {
  int alive;
  int pad;
  long long rows_added, num_terminated, nonfinite, steps_run;
};

struct PoolView {  // read side (start states)
  const float* rec;
  int64_t capacity, size, start_slot;
  int rf;
};

__global__ void init_kernel(Counters* c, int alive) {
  c->alive = alive;
  c->pad = 0;
  c->rows_added = c->num_terminated = c->nonfinite = c->steps_run = 0;
}

// obs of start row i: logical row random_index(seed, kStreamRolloutStart, i, size) of `real`.
__global__ void start_kernel(PoolView real, uint64_t seed, int n, int od, float* __restrict__ obs) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= n) return;
  const uint32_t row = random_index(seed, kStreamRolloutStart, static_cast<uint64_t>(i),
                                    static_cast<uint32_t>(real.size));
  int64_t slot = real.start_slot + row;
  if (slot >= real.capacity) slot -= real.capacity;
  for (int c = 0; c < od; ++c) obs[i * od + c] = real.rec[slot * real.rf + c];
}

__global__ void __launch_bounds__(kThreads)
    actor_kernel(DeviceModel m, ActorBox box, const Counters* __restrict__ cnt, uint64_t seed,
                 const float* __restrict__ obs, float* __restrict__ act) {
  extern __shared__ float smem[];
  __shared__ float scale[kMaxActDim], bias[kMaxActDim], low[kMaxActDim], high[kMaxActDim];
  const int alive = cnt->alive;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  if (row0 >= alive) return;  // the whole block: alive is the same for every thread
  const int rows = alive - row0 < kTileRows ? static_cast<int>(alive - row0) : kTileRows;
  if (threadIdx.x < box.act_dim) {
    scale[threadIdx.x] = box.scale[threadIdx.x];
    bias[threadIdx.x] = box.bias[threadIdx.x];
    low[threadIdx.x] = box.low[threadIdx.x];
    high[threadIdx.x] = box.high[threadIdx.x];
  }
  float* xa = smem;
  float* xb = xa + kTileRows * m.ld;
  float* wbuf = xb + kTileRows * m.ld;
  gather_tile(m, obs, nullptr, nullptr, row0, rows, xa);  // also syncs the box copies
  float* head = forward_tile(m, 0, xa, xb, wbuf);
  float* free_buf = head == xa ? xb : xa;
  const int A = box.act_dim;
  if (threadIdx.x < rows) {
    const int r = threadIdx.x;
    const int64_t i = row0 + r;
    float* eps = free_buf + r * m.ld;  // A <= ld floats of scratch
    kernels::policy_noise(seed, static_cast<uint64_t>(i) * A, A, eps);
    kernels::actor_row_epilogue(head + r * m.ld, A, eps, false, scale, bias, low, high, box.log_std_min,
                                box.log_std_max, act + i * A);
  }
}

__device__ __forceinline__ bool finite_row(const float* x, int n) {
  bool ok = true;
  for (int j = 0; j < n; ++j) ok &= isfinite(x[j]);
  return ok;
}

// Positions [0, n] (n + 1 flags; flag n is always 0 so that the exclusive scan's entry n is
// the total).
__global__ void flag_kernel(const Counters* __restrict__ cnt, int n, TerminationId id, int od, int ad,
                            const float* __restrict__ act, const float* __restrict__ next,
                            const float* __restrict__ rew, uint8_t* __restrict__ term, int* __restrict__ ok) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i > n) return;
  int flag = 0;
  if (i < cnt->alive) {
    term[i] = is_terminal(id, next + i * od, od) ? 1 : 0;
    flag = isfinite(rew[i]) && finite_row(next + i * od, od) && finite_row(act + i * ad, ad);
  }
  ok[i] = flag;
}

struct PoolWrite {  // write side (the model pool's storage; w0 = write position at the call)
  float* rec;
  uint8_t* term;
  int64_t capacity, w0;
  int od, ad;
};

__global__ void append_kernel(const Counters* __restrict__ cnt, int n, PoolWrite p, const float* __restrict__ obs,
                              const float* __restrict__ act, const float* __restrict__ rew,
                              const float* __restrict__ next, const uint8_t* __restrict__ term,
                              const int* __restrict__ ok, const int* __restrict__ ok_pos, int* __restrict__ cont) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i > n) return;
  int flag = 0;
  if (i < cnt->alive && ok[i]) {
    const int64_t k = ok_pos[i], stored = ok_pos[n];
    // As add_batch: of a step's `stored` rows only the last `capacity` reach the ring.
    if (stored - k <= p.capacity) {
      const int64_t slot = (p.w0 + cnt->rows_added + k) % p.capacity;
      const int od = p.od, ad = p.ad;
      float* r = p.rec + slot * (2 * od + ad + 1);
      for (int c = 0; c < od; ++c) r[c] = obs[i * od + c];
      for (int c = 0; c < ad; ++c) r[od + c] = act[i * ad + c];
      r[od + ad] = rew[i];
      for (int c = 0; c < od; ++c) r[od + ad + 1 + c] = next[i * od + c];
      p.term[slot] = term[i];
    }
    flag = term[i] ? 0 : 1;
  }
  cont[i] = flag;
}

__global__ void compact_kernel(const Counters* __restrict__ cnt, int od, const float* __restrict__ next,
                               const int* __restrict__ cont, const int* __restrict__ cont_pos,
                               float* __restrict__ obs) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= cnt->alive || !cont[i]) return;
  const int64_t a = cont_pos[i];
  for (int c = 0; c < od; ++c) obs[a * od + c] = next[i * od + c];
}

__global__ void count_kernel(Counters* cnt, const int* __restrict__ stored_total, const int* __restrict__ cont_total) {
  const int alive = cnt->alive, stored = *stored_total, cont = *cont_total;
  if (alive > 0) cnt->steps_run += 1;
  cnt->nonfinite += alive - stored;
  cnt->rows_added += stored;
  cnt->num_terminated += stored - cont;
  cnt->alive = cont;
}

// One device allocation, carved; freed in stream order (also when an exception unwinds).
class DeviceArena {
 public:
  DeviceArena(size_t bytes, cudaStream_t stream) : stream_(stream) {
    MBPO_CUDA_CHECK(cudaMallocAsync(&base_, bytes, stream));
  }
  ~DeviceArena() {
    if (base_ != nullptr) cudaFreeAsync(base_, stream_);
  }
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;
  template <typename T>
  T* take(size_t count) {
    T* p = reinterpret_cast<T*>(static_cast<char*>(base_) + used_);
    used_ += (sizeof(T) * count + 255) / 256 * 256;
    return p;
  }
  static size_t piece(size_t bytes) { return (bytes + 255) / 256 * 256; }

 private:
  void* base_ = nullptr;
  size_t used_ = 0;
  cudaStream_t stream_;
};

DeviceModel actor_model(const ActorView& a) {
  require(a.act_dim <= kMaxActDim, "cuda_branched_rollout: act_dim must be <= " + std::to_string(kMaxActDim) +
                                       " on the device, got " + std::to_string(a.act_dim));
  DeviceModel m{};
  m.obs_dim = static_cast<int>(a.obs_dim);
  m.act_dim = 0;  // the actor's input is obs alone, not normalized (input_mean null)
  m.ensemble_size = 1;
  set_device_layers(m, a.num_layers, a.widths, a.weights, a.biases, "cuda_branched_rollout: actor");
  m.relu_hidden = true;
  return m;
}

ActorBox actor_box(const ActorView& a) {
  ActorBox box{};
  box.act_dim = static_cast<int>(a.act_dim);
  for (int64_t j = 0; j < a.act_dim; ++j) {
    box.scale[j] = a.action_scale[j];
    box.bias[j] = a.action_bias[j];
    // As actor_act: without an explicit box, [bias - scale, bias + scale].
    box.low[j] = a.action_low != nullptr ? a.action_low[j] : a.action_bias[j] - a.action_scale[j];
    box.high[j] = a.action_high != nullptr ? a.action_high[j] : a.action_bias[j] + a.action_scale[j];
  }
  box.log_std_min = a.log_std_min;
  box.log_std_max = a.log_std_max;
  return box;
}

}  // namespace
}  // namespace cuda_detail

using namespace cuda_detail;

RolloutStats cuda_branched_rollout(const ActorView& actor, const EnsembleView& model, TerminationId termination,
                                   const CudaReplayPool& real, CudaReplayPool& model_pool, int64_t num_starts,
                                   int64_t horizon, uint64_t seed, void* cuda_stream) {
  const auto t_start = std::chrono::steady_clock::now();
  actor.validate();  // reads the host action box
  const DeviceModel ens = device_model(model, /*need_elites=*/true, "cuda_branched_rollout");
  const MemberList elites = member_list(model.elites, model.num_elites, "elites");
  const DeviceModel act_m = actor_model(actor);
  const ActorBox box = actor_box(actor);
  require(actor.obs_dim == model.obs_dim && actor.act_dim == model.act_dim,
          "cuda_branched_rollout: the actor maps obs_dim " + std::to_string(actor.obs_dim) + " to act_dim " +
              std::to_string(actor.act_dim) + " but the model has obs_dim " + std::to_string(model.obs_dim) +
              " and act_dim " + std::to_string(model.act_dim));
  for (const CudaReplayPool* p : {&real, static_cast<const CudaReplayPool*>(&model_pool)}) {
    const char* name = p == &real ? "real_pool" : "model_pool";
    require(p->obs_dim() == model.obs_dim && p->act_dim() == model.act_dim,
            std::string(name) + ": expected obs_dim " + std::to_string(model.obs_dim) + " and act_dim " +
                std::to_string(model.act_dim) + " (the model's), got " + std::to_string(p->obs_dim()) + " and " +
                std::to_string(p->act_dim()));
  }
  require(real.device() == model_pool.device(), "model_pool: expected the same CUDA device as real_pool");
  require(num_starts >= 0 && num_starts < INT32_MAX,
          "num_starts: expected 0 <= num_starts < 2**31 - 1, got " + std::to_string(num_starts));
  require(horizon >= 0 && horizon < static_cast<int64_t>(0xffffffffu),
          "horizon: expected 0 <= horizon < 2**32 - 1, got " + std::to_string(horizon));
  require(num_starts == 0 || real.size() >= 1, "real_pool: is empty; a rollout needs start states");
  check_termination_args(static_cast<int32_t>(termination), model.obs_dim, "model obs_dim");

  RolloutStats st;
  st.num_starts = num_starts;
  st.mean_disagreement = std::numeric_limits<double>::quiet_NaN();  // not computed on the device
  if (num_starts > 0 && horizon > 0) {
    DeviceGuard guard(real.device());
    const auto stream = static_cast<cudaStream_t>(cuda_stream);
    const int n = static_cast<int>(num_starts);
    const int od = ens.obs_dim, ad = ens.act_dim;
    allow_smem(actor_kernel, smem_bytes(act_m), "cuda_branched_rollout (actor)");

    size_t scan_bytes = 0;
    MBPO_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, static_cast<const int*>(nullptr),
                                                  static_cast<int*>(nullptr), n + 1, stream));
    const size_t step_bytes = cuda_ensemble_step_workspace_bytes(n, model.ensemble_size);
    const size_t f = sizeof(float), nn = static_cast<size_t>(n), nf = nn + 1;
    const size_t total = DeviceArena::piece(f * nn * od) * 2 + DeviceArena::piece(f * nn * ad) +
                         DeviceArena::piece(f * nn) + DeviceArena::piece(nn) + 4 * DeviceArena::piece(sizeof(int) * nf) +
                         DeviceArena::piece(sizeof(Counters)) + DeviceArena::piece(scan_bytes) +
                         DeviceArena::piece(step_bytes);
    DeviceArena arena(total, stream);
    float* obs = arena.take<float>(nn * od);
    float* next = arena.take<float>(nn * od);
    float* act = arena.take<float>(nn * ad);
    float* rew = arena.take<float>(nn);
    uint8_t* term = arena.take<uint8_t>(nn);
    int* ok = arena.take<int>(nf);
    int* ok_pos = arena.take<int>(nf);
    int* cont = arena.take<int>(nf);
    int* cont_pos = arena.take<int>(nf);
    Counters* cnt = arena.take<Counters>(1);
    void* scan_tmp = arena.take<char>(scan_bytes);
    void* step_ws = arena.take<char>(step_bytes);

    const int64_t rs = real.write_pos() - real.size();
    const PoolView rv{real.record_data(), real.capacity(), real.size(), rs < 0 ? rs + real.capacity() : rs,
                      static_cast<int>(real.record_floats())};
    const PoolWrite pw{model_pool.rec_, model_pool.term_, model_pool.capacity(), model_pool.write_pos(), od, ad};
    const unsigned grid_rows = static_cast<unsigned>(blocks_for(n));
    const unsigned grid_flags = static_cast<unsigned>(blocks_for(n + 1));
    const unsigned grid_tiles = static_cast<unsigned>((n + kTileRows - 1) / kTileRows);

    init_kernel<<<1, 1, 0, stream>>>(cnt, n);
    MBPO_CUDA_CHECK_LAUNCH();
    start_kernel<<<grid_rows, kThreads, 0, stream>>>(rv, seed, n, od, obs);
    MBPO_CUDA_CHECK_LAUNCH();
    for (int64_t t = 0; t < horizon; ++t) {
      const uint64_t seed_t = rollout_step_seed(seed, t);
      actor_kernel<<<grid_tiles, kThreads, smem_bytes(act_m), stream>>>(act_m, box, cnt, seed_t, obs, act);
      MBPO_CUDA_CHECK_LAUNCH();
      launch_step(ens, elites, obs, act, n, &cnt->alive, seed_t, /*deterministic=*/false, nullptr, next, rew,
                  nullptr, step_ws, stream);
      flag_kernel<<<grid_flags, kThreads, 0, stream>>>(cnt, n, termination, od, ad, act, next, rew, term, ok);
      MBPO_CUDA_CHECK_LAUNCH();
      MBPO_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(scan_tmp, scan_bytes, ok, ok_pos, n + 1, stream));
      append_kernel<<<grid_flags, kThreads, 0, stream>>>(cnt, n, pw, obs, act, rew, next, term, ok, ok_pos, cont);
      MBPO_CUDA_CHECK_LAUNCH();
      MBPO_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(scan_tmp, scan_bytes, cont, cont_pos, n + 1, stream));
      compact_kernel<<<grid_rows, kThreads, 0, stream>>>(cnt, od, next, cont, cont_pos, obs);
      MBPO_CUDA_CHECK_LAUNCH();
      count_kernel<<<1, 1, 0, stream>>>(cnt, ok_pos + n, cont_pos + n);
      MBPO_CUDA_CHECK_LAUNCH();
    }
    Counters host{};
    MBPO_CUDA_CHECK(cudaMemcpyAsync(&host, cnt, sizeof(Counters), cudaMemcpyDeviceToHost, stream));
    MBPO_CUDA_CHECK(cudaStreamSynchronize(stream));
    st.rows_added = host.rows_added;
    st.num_terminated = host.num_terminated;
    st.nonfinite = host.nonfinite;
    st.steps_run = host.steps_run;
    // The kernels wrote the rows; advance the model pool's host-side ring state to match.
    model_pool.write_pos_ = (model_pool.write_pos_ + st.rows_added) % model_pool.capacity_;
    model_pool.size_ = std::min(model_pool.capacity_, model_pool.size_ + st.rows_added);
  }
  if (num_starts > 0) {
    st.mean_length = static_cast<double>(st.rows_added) / static_cast<double>(num_starts);
    st.frac_terminated = static_cast<double>(st.num_terminated) / static_cast<double>(num_starts);
  }
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return st;
}

}  // namespace mbpo_fast

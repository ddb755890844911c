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
//
// Learned termination: termination_mlp_kernel writes term[i] before flag_kernel (which then
// keeps it). Uncertainty (rollout.h step 4, RolloutUncertainty on): launch_step becomes
// launch_step_uncertainty (every elite once per alive row: the same transition plus d[i]);
// at t = 0 with a quantile the threshold is computed on the device (non-finite d -> +inf,
// radix sort, quantile_kernel: numpy's linear interpolation over the finite values); then
// flag_kernel applies the penalty (rew -= penalty * sqrt(d)), drops rows whose d is not
// finite, and stops rows with d > threshold (not stored: check, then store), counting them and
// summing d and penalty * sqrt(d) over the stored rows (block reductions, one double atomic per
// block).
#include <cub/cub.cuh>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
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
  int stopped_step;  // rows the stop rule ended in the current step (count_kernel resets it)
  long long rows_added, num_terminated, nonfinite, steps_run, num_stopped;
  double unc_sum, pen_sum;  // sums of d and of penalty * sqrt(d) over the stored rows
  double threshold;         // the stop threshold in use (the quantile's, from step 0 on)
};

// What flag_kernel needs of the uncertainty features (all off: the plain rollout).
struct UncertainStep {
  const float* d;  // [alive] disagreement of the step (null: features off)
  float penalty;   // uncertainty_penalty as float32 (as the CPU engine)
  bool stops;
};

struct PoolView {  // read side (start states)
  const float* rec;
  int64_t capacity, size, start_slot;
  int rf;
};

__global__ void init_kernel(Counters* c, int alive, double threshold) {
  c->alive = alive;
  c->stopped_step = 0;
  c->rows_added = c->num_terminated = c->nonfinite = c->steps_run = c->num_stopped = 0;
  c->unc_sum = c->pen_sum = 0.0;
  c->threshold = threshold;
}

// Keys of the quantile: non-finite d sorts last as +inf (finite_quantile skips them).
__global__ void quantile_keys_kernel(const float* __restrict__ d, int n, float* __restrict__ keys) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < n) keys[i] = isfinite(d[i]) ? d[i] : __int_as_float(0x7f800000);
}

// threshold = finite_quantile(d, q) from the sorted keys (rollout.cpp): linear interpolation
// over the m finite values in double (no FMA contraction), +inf when m = 0.
__global__ void quantile_kernel(const float* __restrict__ sorted, int n, double q, Counters* c) {
  int lo = 0, hi = n;  // m = the first index holding +inf
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (isfinite(sorted[mid])) lo = mid + 1; else hi = mid;
  }
  const int m = lo;
  if (m == 0) {
    c->threshold = __longlong_as_double(0x7ff0000000000000ll);
    return;
  }
  const double pos = __dmul_rn(q, static_cast<double>(m - 1));
  const int a = static_cast<int>(floor(pos));
  const int b = a + 1 < m ? a + 1 : m - 1;
  const double va = sorted[a], vb = sorted[b];
  c->threshold = __dadd_rn(va, __dmul_rn(pos - static_cast<double>(a), vb - va));
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

// Positions [0, n] (n + 1 flags; flag n is always 0 so that the exclusive scan's entry n is
// the total). term_given: term[] was written by the learned termination (else: built-in `id`).
// With the uncertainty on: rew[i] -= penalty * sqrt(d[i]) (when penalty != 0), a non-finite d
// drops the row, and a row with d > threshold stops (ok = 0, counted in stopped_step).
__global__ void __launch_bounds__(kThreads)
    flag_kernel(Counters* __restrict__ cnt, int n, TerminationId id, bool term_given, UncertainStep u, int od,
                int ad, const float* __restrict__ act, const float* __restrict__ next, float* __restrict__ rew,
                uint8_t* __restrict__ term, int* __restrict__ ok) {
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage reduce_tmp;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  int flag = 0, stop = 0;
  double d_sum = 0.0, pen_sum = 0.0;
  if (i < cnt->alive) {  // (i <= n always holds then: alive <= n)
    if (!term_given) term[i] = is_terminal(id, next + i * od, od) ? 1 : 0;
    float r = rew[i];
    float d = 0.0f;
    if (u.d != nullptr) {
      d = u.d[i];
      if (u.penalty != 0.0f) {
        r -= u.penalty * sqrtf(d);
        rew[i] = r;
      }
    }
    flag = isfinite(r) && finite_row(next + i * od, od) && finite_row(act + i * ad, ad) &&
           (u.d == nullptr || isfinite(d));
    if (flag && u.stops && static_cast<double>(d) > cnt->threshold) {
      flag = 0;
      stop = 1;
    }
    if (flag && u.d != nullptr) {
      d_sum = static_cast<double>(d);
      pen_sum = static_cast<double>(u.penalty) * sqrt(static_cast<double>(d));
    }
  }
  if (i <= n) ok[i] = flag;
  if (u.d != nullptr) {  // uniform over the grid: every thread of the block reaches the barriers
    const int stopped = __syncthreads_count(stop);
    const double bd = Reduce(reduce_tmp).Sum(d_sum);
    __syncthreads();  // reduce_tmp is reused
    const double bp = Reduce(reduce_tmp).Sum(pen_sum);
    if (threadIdx.x == 0) {
      if (stopped != 0) atomicAdd(&cnt->stopped_step, stopped);
      if (bd != 0.0) atomicAdd(&cnt->unc_sum, bd);
      if (bp != 0.0) atomicAdd(&cnt->pen_sum, bp);
    }
  }
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
  const int alive = cnt->alive, stored = *stored_total, cont = *cont_total, stopped = cnt->stopped_step;
  if (alive > 0) cnt->steps_run += 1;
  cnt->nonfinite += alive - stored - stopped;
  cnt->num_stopped += stopped;
  cnt->stopped_step = 0;
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

namespace cuda_detail {

// The model pool's private ring state (CudaReplayPool befriends this).
struct RolloutPoolAccess {
  static float* records(CudaReplayPool& p) { return p.rec_; }
  static uint8_t* terminated(CudaReplayPool& p) { return p.term_; }
  static void advance(CudaReplayPool& p, int64_t rows) {
    p.write_pos_ = (p.write_pos_ + rows) % p.capacity_;
    p.size_ = std::min(p.capacity_, p.size_ + rows);
  }
};

namespace {

// The rollout of rollout.h on the device, with a built-in termination (learned == null) or
// the learned termination MLP `learned` (device pointers).
RolloutStats run_rollout(const ActorView& actor, const EnsembleView& model, TerminationId termination,
                         const TerminationMLPView* learned, const CudaReplayPool& real, CudaReplayPool& model_pool,
                         int64_t num_starts, int64_t horizon, uint64_t seed, void* cuda_stream,
                         const RolloutUncertainty& unc) {
  const auto t_start = std::chrono::steady_clock::now();
  actor.validate();  // reads the host action box
  unc.validate();
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
  const bool uncertain = unc.enabled();
  require(!uncertain || model.num_elites >= 2,
          "max_disagreement / uncertainty_penalty: the disagreement d is a variance across the elites and "
          "needs at least 2 elites, got " + std::to_string(model.num_elites));
  DeviceModel term_m{};
  if (learned != nullptr) {
    term_m = termination_device_model(*learned, "cuda_branched_rollout");
    require(learned->obs_dim == model.obs_dim && learned->act_dim == model.act_dim,
            "termination: the learned termination model has obs_dim " + std::to_string(learned->obs_dim) +
                " and act_dim " + std::to_string(learned->act_dim) + ", the model " +
                std::to_string(model.obs_dim) + " and " + std::to_string(model.act_dim));
  } else {
    check_termination_args(static_cast<int32_t>(termination), model.obs_dim, "model obs_dim");
  }

  RolloutStats st;
  st.num_starts = num_starts;
  st.mean_disagreement = std::numeric_limits<double>::quiet_NaN();  // not computed on the device
  const bool stops = unc.stops();
  double threshold = stops ? unc.max_disagreement : std::numeric_limits<double>::quiet_NaN();
  if (stops && std::isnan(threshold)) threshold = std::numeric_limits<double>::infinity();
  st.disagreement_threshold = threshold;
  const bool quantile = uncertain && unc.quantile >= 0.0;
  if (num_starts > 0 && horizon > 0) {
    DeviceGuard guard(real.device());
    const auto stream = static_cast<cudaStream_t>(cuda_stream);
    const int n = static_cast<int>(num_starts);
    const int od = ens.obs_dim, ad = ens.act_dim;
    allow_smem(actor_kernel, smem_bytes(act_m), "cuda_branched_rollout (actor)");

    size_t scan_bytes = 0, sort_bytes = 0;
    MBPO_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, static_cast<const int*>(nullptr),
                                                  static_cast<int*>(nullptr), n + 1, stream));
    if (quantile) {
      MBPO_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(nullptr, sort_bytes, static_cast<const float*>(nullptr),
                                                     static_cast<float*>(nullptr), n, 0, 32, stream));
    }
    const size_t step_bytes = uncertain ? 0 : cuda_ensemble_step_workspace_bytes(n, model.ensemble_size);
    const size_t f = sizeof(float), nn = static_cast<size_t>(n), nf = nn + 1;
    const size_t K = static_cast<size_t>(elites.count);
    using A = DeviceArena;
    size_t total = A::piece(f * nn * od) * 2 + A::piece(f * nn * ad) + A::piece(f * nn) + A::piece(nn) +
                   4 * A::piece(sizeof(int) * nf) + A::piece(sizeof(Counters)) + A::piece(scan_bytes) +
                   A::piece(step_bytes);
    if (uncertain) total += A::piece(f * nn) + A::piece(f * K * nn * od);            // d, the elites' means
    if (quantile) total += 2 * A::piece(f * nn) + A::piece(sort_bytes);              // keys, sorted, sort temp
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
    float* d = uncertain ? arena.take<float>(nn) : nullptr;
    float* means = uncertain ? arena.take<float>(K * nn * od) : nullptr;
    float* keys = quantile ? arena.take<float>(nn) : nullptr;
    float* sorted = quantile ? arena.take<float>(nn) : nullptr;
    void* sort_tmp = quantile ? arena.take<char>(sort_bytes) : nullptr;

    const int64_t rs = real.write_pos() - real.size();
    const PoolView rv{real.record_data(), real.capacity(), real.size(), rs < 0 ? rs + real.capacity() : rs,
                      static_cast<int>(real.record_floats())};
    const PoolWrite pw{RolloutPoolAccess::records(model_pool), RolloutPoolAccess::terminated(model_pool),
                       model_pool.capacity(), model_pool.write_pos(), od, ad};
    const unsigned grid_rows = static_cast<unsigned>(blocks_for(n));
    const unsigned grid_flags = static_cast<unsigned>(blocks_for(n + 1));
    const unsigned grid_tiles = static_cast<unsigned>((n + kTileRows - 1) / kTileRows);
    const UncertainStep u{d, static_cast<float>(unc.uncertainty_penalty), stops};

    init_kernel<<<1, 1, 0, stream>>>(cnt, n, threshold);
    MBPO_CUDA_CHECK_LAUNCH();
    start_kernel<<<grid_rows, kThreads, 0, stream>>>(rv, seed, n, od, obs);
    MBPO_CUDA_CHECK_LAUNCH();
    for (int64_t t = 0; t < horizon; ++t) {
      const uint64_t seed_t = rollout_step_seed(seed, t);
      actor_kernel<<<grid_tiles, kThreads, smem_bytes(act_m), stream>>>(act_m, box, cnt, seed_t, obs, act);
      MBPO_CUDA_CHECK_LAUNCH();
      if (!uncertain) {
        launch_step(ens, elites, obs, act, n, &cnt->alive, seed_t, /*deterministic=*/false, nullptr, next, rew,
                    nullptr, step_ws, stream);
      } else {
        launch_step_uncertainty(ens, elites, obs, act, n, &cnt->alive, n, seed_t, /*deterministic=*/false, next,
                                rew, d, means, stream);
        if (t == 0 && quantile) {  // step 0: every start row is alive, alive == n
          quantile_keys_kernel<<<grid_rows, kThreads, 0, stream>>>(d, n, keys);
          MBPO_CUDA_CHECK_LAUNCH();
          MBPO_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(sort_tmp, sort_bytes, keys, sorted, n, 0, 32, stream));
          quantile_kernel<<<1, 1, 0, stream>>>(sorted, n, unc.quantile, cnt);
          MBPO_CUDA_CHECK_LAUNCH();
        }
      }
      if (learned != nullptr) launch_termination_mlp(term_m, obs, act, next, n, &cnt->alive, term, nullptr, stream);
      flag_kernel<<<grid_flags, kThreads, 0, stream>>>(cnt, n, termination, learned != nullptr, u, od, ad, act, next,
                                                       rew, term, ok);
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
    st.num_stopped = host.num_stopped;
    if (stops) st.disagreement_threshold = host.threshold;
    if (uncertain && st.rows_added > 0) {
      st.mean_uncertainty = host.unc_sum / static_cast<double>(st.rows_added);
      st.mean_penalty = host.pen_sum / static_cast<double>(st.rows_added);
    }
    // The kernels wrote the rows; advance the model pool's host-side ring state to match.
    RolloutPoolAccess::advance(model_pool, st.rows_added);
  }
  if (!uncertain) st.mean_uncertainty = std::numeric_limits<double>::quiet_NaN();
  if (num_starts > 0) {
    st.mean_length = static_cast<double>(st.rows_added) / static_cast<double>(num_starts);
    st.frac_terminated = static_cast<double>(st.num_terminated) / static_cast<double>(num_starts);
    st.frac_stopped = static_cast<double>(st.num_stopped) / static_cast<double>(num_starts);
  }
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return st;
}

}  // namespace
}  // namespace cuda_detail

RolloutStats cuda_branched_rollout(const ActorView& actor, const EnsembleView& model, TerminationId termination,
                                   const CudaReplayPool& real, CudaReplayPool& model_pool, int64_t num_starts,
                                   int64_t horizon, uint64_t seed, void* cuda_stream,
                                   const RolloutUncertainty& uncertainty) {
  return cuda_detail::run_rollout(actor, model, termination, nullptr, real, model_pool, num_starts, horizon, seed,
                                  cuda_stream, uncertainty);
}

RolloutStats cuda_branched_rollout(const ActorView& actor, const EnsembleView& model,
                                   const TerminationMLPView& termination, const CudaReplayPool& real,
                                   CudaReplayPool& model_pool, int64_t num_starts, int64_t horizon, uint64_t seed,
                                   void* cuda_stream, const RolloutUncertainty& uncertainty) {
  return cuda_detail::run_rollout(actor, model, TerminationId::kNever, &termination, real, model_pool, num_starts,
                                  horizon, seed, cuda_stream, uncertainty);
}

}  // namespace mbpo_fast

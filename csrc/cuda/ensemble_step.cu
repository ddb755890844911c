// CUDA ensemble ops (cuda_ops.h): the fused step, predict, disagreement, the step with the
// elites' uncertainty d (issue 16) and the learned termination MLP.
//
// Step = one memset + three launches, whatever the number of layers:
//   1. choose_count_kernel: member of each row (kernels::step_member: the CPU's Philox
//      formula) and per-member row counts (block-aggregated atomics);
//   2. scatter_kernel: each row's position in the member-grouped order (exclusive prefix
//      of the counts + block-aggregated cursors), members_out;
//   3. step_mlp_kernel: block t maps itself to tile t of the grouping (kernels::step_tile,
//      the function ensemble_step_plan runs on the CPU), gathers and normalizes its <= 32
//      rows, runs EVERY layer of that member with the activations in shared memory and the
//      weights streamed through shared memory in 32-row chunks, then the per-row epilogue
//      (kernels::row_noise + kernels::step_row_epilogue: soft clamp, Philox noise,
//      obs + Δobs), the same MBPO_HD bodies as the CPU path.
//
// Arithmetic: float32 FMA on the CUDA cores, each output accumulated from its bias over
// k = 0..K-1 in order (the CPU kernels' order), so results match the CPU backend to float
// rounding (~1e-6 relative). No tensor cores (WMMA/mma): they take tf32/bf16 inputs (10- or
// 7-bit mantissas), a ~1e-3 relative error per product that would break the 1e-5 parity,
// and a tile holds only 32 rows of one member: at MBPO's sizes the time goes to weight
// traffic and latency, not to FMA throughput (docs/performance.md).
//
// Thread layout of the dense layers (256 threads = 8 warps): warp w owns rows 4w..4w+3 of
// the tile, lane l owns columns l, l+32, ..., l+224 of a 256-column pass; a thread keeps a
// 4x8 accumulator block in registers. Activation reads are warp broadcasts and weight reads
// are consecutive across lanes: no shared-memory bank conflicts.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "check.cuh"
#include "ensemble_tile.cuh"
#include "kernels/ensemble_epilogue.h"
#include "kernels/ensemble_grouping.h"
#include "mbpo_fast/common.h"
#include "mbpo_fast/cuda_ops.h"

namespace mbpo_fast {
namespace cuda_detail {
namespace {

// ------------------------------------------------------------------ kernels

__global__ void __launch_bounds__(kThreads)
    choose_count_kernel(MemberList elites, uint64_t seed, const int64_t* __restrict__ members, int64_t batch,
                        const int* batch_dev, int E, int* __restrict__ chosen, int* __restrict__ counts) {
  if (batch_dev != nullptr) batch = *batch_dev;  // the rollout's alive rows (grid: an upper bound)
  __shared__ int local[kMaxMembers];
  if (threadIdx.x < kMaxMembers) local[threadIdx.x] = 0;
  __syncthreads();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < batch) {
    int64_t m = kernels::step_member(seed, static_cast<uint64_t>(i), members, elites.id,
                                     static_cast<uint32_t>(elites.count));
    if (m < 0 || m >= E) {
      m = -1;  // only from a caller's invalid `members`: the row gets NaN, never an OOB read
    } else {
      atomicAdd(&local[m], 1);
    }
    chosen[i] = static_cast<int>(m);
  }
  __syncthreads();
  if (threadIdx.x < E && local[threadIdx.x] != 0) atomicAdd(&counts[threadIdx.x], local[threadIdx.x]);
}

__global__ void __launch_bounds__(kThreads)
    scatter_kernel(const int* __restrict__ chosen, int64_t batch, const int* batch_dev, int E,
                   const int* __restrict__ counts, int* __restrict__ cursor, int* __restrict__ order,
                   int64_t* __restrict__ members_out, float* __restrict__ next_obs, float* __restrict__ reward,
                   int obs_dim) {
  if (batch_dev != nullptr) batch = *batch_dev;
  __shared__ int start[kMaxMembers], local[kMaxMembers], base[kMaxMembers];
  if (threadIdx.x == 0) {
    int s = 0;
    for (int e = 0; e < E; ++e) {
      start[e] = s;
      s += counts[e];
    }
  }
  if (threadIdx.x < kMaxMembers) local[threadIdx.x] = 0;
  __syncthreads();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  int m = -1, rank = 0;
  if (i < batch) {
    m = chosen[i];
    if (members_out != nullptr) members_out[i] = m;
    if (m >= 0) {
      rank = atomicAdd(&local[m], 1);
    } else {
      const float nan = __int_as_float(0x7fc00000);
      for (int c = 0; c < obs_dim; ++c) next_obs[i * obs_dim + c] = nan;
      reward[i] = nan;
    }
  }
  __syncthreads();
  if (threadIdx.x < E && local[threadIdx.x] != 0) base[threadIdx.x] = atomicAdd(&cursor[threadIdx.x], local[threadIdx.x]);
  __syncthreads();
  if (m >= 0) order[start[m] + base[m] + rank] = static_cast<int>(i);
}

struct StepArgs {
  const float* obs;
  const float* act;
  uint64_t seed;
  const int* order;
  const int* counts;
  int ensemble_size;
  bool deterministic;
  float* next_obs;
  float* reward;
};

__global__ void __launch_bounds__(kThreads) step_mlp_kernel(DeviceModel m, StepArgs a) {
  extern __shared__ float smem[];
  float* xa = smem;
  float* xb = xa + kTileRows * m.ld;
  float* wbuf = xb + kTileRows * m.ld;
  __shared__ kernels::StepTile tile;
  if (threadIdx.x == 0) tile = kernels::step_tile(a.counts, a.ensemble_size, kTileRows, blockIdx.x);
  __syncthreads();
  const kernels::StepTile t = tile;
  if (t.member < 0) return;  // the grid is an upper bound of the tiles; the whole block leaves
  gather_tile(m, a.obs, a.act, a.order, t.first, static_cast<int>(t.rows), xa);
  float* head = forward_tile(m, t.member, xa, xb, wbuf);
  float* free_buf = head == xa ? xb : xa;
  const int od = m.obs_dim, out_dim = m.obs_dim + 1;
  if (threadIdx.x < t.rows) {
    const int r = threadIdx.x;
    const int64_t row = a.order[t.first + r];
    float* eps = free_buf + r * m.ld;  // out_dim <= ld floats of this row's scratch
    if (!a.deterministic) kernels::row_noise(a.seed, static_cast<uint64_t>(row), out_dim, eps);
    kernels::step_row_epilogue(head + r * m.ld, a.obs + row * od, m.max_logvar, m.min_logvar, eps,
                               a.deterministic, od, a.next_obs + row * od, a.reward + row);
  }
}

struct PredictArgs {
  const float* obs;
  const float* act;
  int64_t batch;
  float* mean;  // [members.count, batch, out_dim] or null
  float* var;   // same or null
};

// Block (x, y): rows [32x, 32x + 32) of member members.id[y]; output slice y.
__global__ void __launch_bounds__(kThreads) predict_mlp_kernel(DeviceModel m, MemberList members, PredictArgs a) {
  extern __shared__ float smem[];
  float* xa = smem;
  float* xb = xa + kTileRows * m.ld;
  float* wbuf = xb + kTileRows * m.ld;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  const int64_t left = a.batch - row0;
  const int rows = left < kTileRows ? static_cast<int>(left) : kTileRows;
  gather_tile(m, a.obs, a.act, nullptr, row0, rows, xa);
  const float* head = forward_tile(m, members.id[blockIdx.y], xa, xb, wbuf);
  const int out_dim = m.obs_dim + 1;
  if (threadIdx.x < rows) {
    const int r = threadIdx.x;
    const int64_t o = (static_cast<int64_t>(blockIdx.y) * a.batch + row0 + r) * out_dim;
    kernels::predict_row_epilogue(head + r * m.ld, m.max_logvar, m.min_logvar, out_dim,
                                  a.mean != nullptr ? a.mean + o : nullptr, a.var != nullptr ? a.var + o : nullptr);
  }
}

__global__ void __launch_bounds__(kThreads)
    disagreement_kernel(const float* __restrict__ means, int64_t batch, int n_members, int out_dim,
                        float* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < batch) out[i] = kernels::disagreement_row(means + i * out_dim, batch * out_dim, n_members, out_dim);
}

struct UncertaintyArgs {
  const float* obs;
  const float* act;
  int64_t batch;
  const int* batch_dev;  // the rollout's alive rows (null: batch)
  int64_t stride;        // rows per elite slice of `means`
  uint64_t seed;
  bool deterministic;
  float* next_obs;
  float* reward;
  float* means;  // [K, stride, obs_dim]
};

// Block (x, k): rows [32x, 32x + 32) through elite k — each elite runs once per row. The block
// of the row's chosen elite (kernels::member_choice, as ensemble_step with members = null) also
// runs the step epilogue from this same forward: the transition of ensemble_step, bit for bit
// the element bodies the CPU runs.
__global__ void __launch_bounds__(kThreads)
    uncertainty_mlp_kernel(DeviceModel m, MemberList elites, UncertaintyArgs a) {
  extern __shared__ float smem[];
  const int64_t batch = a.batch_dev != nullptr ? *a.batch_dev : a.batch;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  if (row0 >= batch) return;  // the whole block: batch is the same for every thread
  const int rows = batch - row0 < kTileRows ? static_cast<int>(batch - row0) : kTileRows;
  float* xa = smem;
  float* xb = xa + kTileRows * m.ld;
  float* wbuf = xb + kTileRows * m.ld;
  const int k = static_cast<int>(blockIdx.y);
  gather_tile(m, a.obs, a.act, nullptr, row0, rows, xa);
  const float* head = forward_tile(m, elites.id[k], xa, xb, wbuf);
  float* free_buf = head == xa ? xb : xa;
  const int od = m.obs_dim, out_dim = od + 1;
  if (threadIdx.x < rows) {
    const int r = threadIdx.x;
    const int64_t i = row0 + r;
    const float* h = head + r * m.ld;
    float* mo = a.means + (static_cast<int64_t>(k) * a.stride + i) * od;
    for (int j = 0; j < od; ++j) mo[j] = h[j];
    if (kernels::member_choice(a.seed, static_cast<uint64_t>(i), static_cast<uint32_t>(elites.count)) ==
        static_cast<uint32_t>(k)) {
      float* eps = free_buf + r * m.ld;  // out_dim <= ld floats of this row's scratch
      if (!a.deterministic) kernels::row_noise(a.seed, static_cast<uint64_t>(i), out_dim, eps);
      kernels::step_row_epilogue(h, a.obs + i * od, m.max_logvar, m.min_logvar, eps, a.deterministic, od,
                                 a.next_obs + i * od, a.reward + i);
    }
  }
}

// d[i] = (1 / obs_dim) sum_j var_k(means[k, i, j]) with the unbiased variance (divisor K - 1),
// reduced in double by the function the CPU step uses (kernels::unbiased_disagreement_row).
__global__ void __launch_bounds__(kThreads)
    uncertainty_reduce_kernel(const float* __restrict__ means, int64_t batch, const int* batch_dev, int64_t stride,
                              int K, int od, float* __restrict__ d) {
  if (batch_dev != nullptr) batch = *batch_dev;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= batch) return;
  d[i] = kernels::unbiased_disagreement_row(means + i * od, stride * od, K, od);
}

// The learned termination MLP: block x takes rows [32x, 32x + 32); the input row is
// concat(obs, act, next_obs) normalized, as termination_mlp on the CPU.
__global__ void __launch_bounds__(kThreads)
    termination_mlp_kernel(DeviceModel m, const float* __restrict__ obs, const float* __restrict__ act,
                           const float* __restrict__ next, int64_t batch, const int* batch_dev,
                           uint8_t* __restrict__ out, float* __restrict__ logits) {
  extern __shared__ float smem[];
  if (batch_dev != nullptr) batch = *batch_dev;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  if (row0 >= batch) return;
  const int rows = batch - row0 < kTileRows ? static_cast<int>(batch - row0) : kTileRows;
  float* xa = smem;
  float* xb = xa + kTileRows * m.ld;
  float* wbuf = xb + kTileRows * m.ld;
  const int od = m.obs_dim, ad = m.act_dim, in = 2 * od + ad;
  for (int t = threadIdx.x; t < kTileRows * in; t += kThreads) {
    const int r = t / in, c = t - (t / in) * in;
    float v = 0.0f;
    if (r < rows) {
      const int64_t row = row0 + r;
      const float raw = c < od ? obs[row * od + c]
                               : (c < od + ad ? act[row * ad + (c - od)] : next[row * od + (c - od - ad)]);
      v = (raw - m.input_mean[c]) / m.input_std[c];
    }
    xa[r * m.ld + c] = v;
  }
  __syncthreads();
  const float* head = forward_tile(m, 0, xa, xb, wbuf);
  if (threadIdx.x < rows) {
    const float z = head[threadIdx.x * m.ld];
    out[row0 + threadIdx.x] = z > 0.0f ? 1 : 0;
    if (logits != nullptr) logits[row0 + threadIdx.x] = z;
  }
}

// ------------------------------------------------------------------ host side

constexpr size_t kAlign = 256;
size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

void check_batch(int64_t batch, const char* op) {
  require(batch >= 0 && batch <= INT32_MAX,
          std::string(op) + ": batch must be in [0, 2**31), got " + std::to_string(batch));
}

struct StepWorkspace {
  int* chosen;
  int* order;
  int* counts;  // [E], followed by the cursors [E]
};

StepWorkspace carve_step_workspace(void* workspace, int64_t batch, int64_t E) {
  char* p = static_cast<char*>(workspace);
  const size_t rows = align_up(sizeof(int) * static_cast<size_t>(batch));
  (void)E;
  return StepWorkspace{reinterpret_cast<int*>(p), reinterpret_cast<int*>(p + rows),
                       reinterpret_cast<int*>(p + 2 * rows)};
}

}  // namespace

DeviceModel device_model(const EnsembleView& v, bool need_elites, const char* op) {
  v.validate(need_elites);
  require(v.weights_bf16[0] == nullptr, std::string(op) + ": bf16 weights are a CPU option; pass float32 weights");
  require(v.ensemble_size <= kMaxMembers, std::string(op) + ": ensemble_size must be <= " +
                                              std::to_string(kMaxMembers) + " on the device, got " +
                                              std::to_string(v.ensemble_size));
  DeviceModel m{};
  m.obs_dim = static_cast<int>(v.obs_dim);
  m.act_dim = static_cast<int>(v.act_dim);
  m.ensemble_size = static_cast<int>(v.ensemble_size);
  set_device_layers(m, v.num_layers, v.widths, v.weights, v.biases, std::string(op) + ": layer");
  m.input_mean = v.input_mean;
  m.input_std = v.input_std;
  m.max_logvar = v.max_logvar;
  m.min_logvar = v.min_logvar;
  m.relu_hidden = false;
  return m;
}

MemberList member_list(const int64_t* ids, int64_t n, const char* what) {
  require(n >= 1 && n <= kMaxMembers, std::string(what) + ": expected 1 to " + std::to_string(kMaxMembers) +
                                          " member indices on the device, got " + std::to_string(n));
  MemberList list{};
  for (int64_t k = 0; k < n; ++k) list.id[k] = ids[k];
  list.count = static_cast<int>(n);
  return list;
}

void launch_step(const DeviceModel& m, const MemberList& elites, const float* obs, const float* act, int64_t batch,
                 const int* batch_dev, uint64_t seed, bool deterministic, const int64_t* members, float* next_obs,
                 float* reward, int64_t* members_out, void* workspace, cudaStream_t stream) {
  const int E = m.ensemble_size;
  const StepWorkspace ws = carve_step_workspace(workspace, batch, E);
  const size_t smem = smem_bytes(m);
  allow_smem(step_mlp_kernel, smem, "cuda_ensemble_step");
  MBPO_CUDA_CHECK(cudaMemsetAsync(ws.counts, 0, 2 * sizeof(int) * static_cast<size_t>(E), stream));
  choose_count_kernel<<<blocks_for(batch), kThreads, 0, stream>>>(elites, seed, members, batch, batch_dev, E,
                                                                   ws.chosen, ws.counts);
  MBPO_CUDA_CHECK_LAUNCH();
  scatter_kernel<<<blocks_for(batch), kThreads, 0, stream>>>(ws.chosen, batch, batch_dev, E, ws.counts,
                                                              ws.counts + E, ws.order, members_out, next_obs,
                                                              reward, m.obs_dim);
  MBPO_CUDA_CHECK_LAUNCH();
  const int64_t tiles = kernels::max_step_tiles(batch, E, kTileRows);
  const StepArgs args{obs, act, seed, ws.order, ws.counts, E, deterministic, next_obs, reward};
  step_mlp_kernel<<<static_cast<unsigned>(tiles), kThreads, smem, stream>>>(m, args);
  MBPO_CUDA_CHECK_LAUNCH();
}

void launch_step_uncertainty(const DeviceModel& m, const MemberList& elites, const float* obs, const float* act,
                             int64_t batch, const int* batch_dev, int64_t stride, uint64_t seed, bool deterministic,
                             float* next_obs, float* reward, float* disagreement, float* means, cudaStream_t stream) {
  const size_t smem = smem_bytes(m);
  allow_smem(uncertainty_mlp_kernel, smem, "ensemble step with uncertainty (CUDA)");
  const dim3 grid(static_cast<unsigned>((batch + kTileRows - 1) / kTileRows), static_cast<unsigned>(elites.count));
  const UncertaintyArgs args{obs, act, batch, batch_dev, stride, seed, deterministic, next_obs, reward, means};
  uncertainty_mlp_kernel<<<grid, kThreads, smem, stream>>>(m, elites, args);
  MBPO_CUDA_CHECK_LAUNCH();
  uncertainty_reduce_kernel<<<blocks_for(batch), kThreads, 0, stream>>>(means, batch, batch_dev, stride,
                                                                         elites.count, m.obs_dim, disagreement);
  MBPO_CUDA_CHECK_LAUNCH();
}

DeviceModel termination_device_model(const TerminationMLPView& v, const char* op) {
  v.validate();
  require(v.num_layers <= kEnsembleMaxLayers, std::string(op) + ": the termination model has too many layers");
  DeviceModel m{};
  m.obs_dim = static_cast<int>(v.obs_dim);
  m.act_dim = static_cast<int>(v.act_dim);
  m.ensemble_size = 1;
  set_device_layers(m, v.num_layers, v.widths, v.weights, v.biases, std::string(op) + ": termination layer");
  m.input_mean = v.input_mean;
  m.input_std = v.input_std;
  m.relu_hidden = false;  // SiLU, as termination_mlp
  return m;
}

void launch_termination_mlp(const DeviceModel& m, const float* obs, const float* act, const float* next_obs,
                            int64_t batch, const int* batch_dev, uint8_t* out, float* logits_out,
                            cudaStream_t stream) {
  const size_t smem = smem_bytes(m);
  allow_smem(termination_mlp_kernel, smem, "learned termination (CUDA)");
  const unsigned grid = static_cast<unsigned>((batch + kTileRows - 1) / kTileRows);
  termination_mlp_kernel<<<grid, kThreads, smem, stream>>>(m, obs, act, next_obs, batch, batch_dev, out, logits_out);
  MBPO_CUDA_CHECK_LAUNCH();
}

}  // namespace cuda_detail

using namespace cuda_detail;

size_t cuda_ensemble_step_uncertainty_workspace_bytes(int64_t batch, int64_t num_elites, int64_t obs_dim) {
  require(batch >= 0 && num_elites >= 1 && obs_dim >= 1,
          "cuda_ensemble_step_uncertainty_workspace_bytes: batch >= 0, num_elites >= 1, obs_dim >= 1");
  return align_up(sizeof(float) * static_cast<size_t>(num_elites * batch * obs_dim));
}

void cuda_ensemble_step_uncertainty(const EnsembleView& v, const float* obs, const float* act, int64_t batch,
                                    uint64_t seed, bool deterministic, float* next_obs_out, float* reward_out,
                                    float* disagreement_out, void* workspace, size_t workspace_bytes,
                                    void* cuda_stream) {
  check_batch(batch, "cuda_ensemble_step_uncertainty");
  const DeviceModel m = device_model(v, /*need_elites=*/true, "cuda_ensemble_step_uncertainty");
  const MemberList elites = member_list(v.elites, v.num_elites, "elites");
  require(elites.count >= 2, "elites: the disagreement d (unbiased variance across the elites) needs at least 2 "
                             "elites, got " + std::to_string(elites.count));
  if (batch == 0) return;
  require(obs && act && next_obs_out && reward_out && disagreement_out && workspace,
          "cuda_ensemble_step_uncertainty: null input, output or workspace pointer");
  const size_t need = cuda_ensemble_step_uncertainty_workspace_bytes(batch, v.num_elites, v.obs_dim);
  require(workspace_bytes >= need, "workspace: expected at least " + std::to_string(need) + " bytes, got " +
                                       std::to_string(workspace_bytes));
  launch_step_uncertainty(m, elites, obs, act, batch, nullptr, batch, seed, deterministic, next_obs_out, reward_out,
                          disagreement_out, static_cast<float*>(workspace), static_cast<cudaStream_t>(cuda_stream));
}

void cuda_termination_mlp(const TerminationMLPView& view, const float* obs, const float* act, const float* next_obs,
                          int64_t n, uint8_t* out, float* logits_out, void* cuda_stream) {
  check_batch(n, "cuda_termination_mlp");
  const DeviceModel m = termination_device_model(view, "cuda_termination_mlp");
  if (n == 0) return;
  require(obs && next_obs && out && (act || view.act_dim == 0), "cuda_termination_mlp: null input or output pointer");
  launch_termination_mlp(m, obs, act, next_obs, n, nullptr, out, logits_out, static_cast<cudaStream_t>(cuda_stream));
}

size_t cuda_ensemble_step_workspace_bytes(int64_t batch, int64_t ensemble_size) {
  require(batch >= 0 && ensemble_size >= 1, "cuda_ensemble_step_workspace_bytes: batch >= 0, ensemble_size >= 1");
  return 2 * align_up(sizeof(int) * static_cast<size_t>(batch)) +
         align_up(2 * sizeof(int) * static_cast<size_t>(ensemble_size));
}

size_t cuda_ensemble_disagreement_workspace_bytes(int64_t batch, int64_t n_members, int64_t obs_dim) {
  require(batch >= 0 && n_members >= 1 && obs_dim >= 1,
          "cuda_ensemble_disagreement_workspace_bytes: batch >= 0, n_members >= 1, obs_dim >= 1");
  return align_up(sizeof(float) * static_cast<size_t>(n_members * batch * (obs_dim + 1)));
}

void cuda_ensemble_step(const EnsembleView& v, const float* obs, const float* act, int64_t batch, uint64_t seed,
                        bool deterministic, const int64_t* members, float* next_obs_out, float* reward_out,
                        int64_t* members_out, void* workspace, size_t workspace_bytes, void* cuda_stream) {
  check_batch(batch, "cuda_ensemble_step");
  const DeviceModel m = device_model(v, members == nullptr, "cuda_ensemble_step");
  const MemberList elites = members == nullptr ? member_list(v.elites, v.num_elites, "elites") : MemberList{};
  if (batch == 0) return;
  require(obs && act && next_obs_out && reward_out && workspace,
          "cuda_ensemble_step: null input, output or workspace pointer");
  const size_t need = cuda_ensemble_step_workspace_bytes(batch, v.ensemble_size);
  require(workspace_bytes >= need, "workspace: expected at least " + std::to_string(need) + " bytes, got " +
                                       std::to_string(workspace_bytes));
  launch_step(m, elites, obs, act, batch, nullptr, seed, deterministic, members, next_obs_out, reward_out,
              members_out, workspace, static_cast<cudaStream_t>(cuda_stream));
}

void cuda_ensemble_predict(const EnsembleView& v, const float* obs, const float* act, int64_t batch,
                           float* mean_out, float* var_out, void* cuda_stream) {
  check_batch(batch, "cuda_ensemble_predict");
  const DeviceModel m = device_model(v, false, "cuda_ensemble_predict");
  if (batch == 0 || (mean_out == nullptr && var_out == nullptr)) return;
  require(obs && act, "cuda_ensemble_predict: null input pointer");
  MemberList all{};
  for (int e = 0; e < m.ensemble_size; ++e) all.id[e] = e;
  all.count = m.ensemble_size;
  const size_t smem = smem_bytes(m);
  allow_smem(predict_mlp_kernel, smem, "cuda_ensemble_predict");
  const dim3 grid(static_cast<unsigned>((batch + kTileRows - 1) / kTileRows), static_cast<unsigned>(all.count));
  predict_mlp_kernel<<<grid, kThreads, smem, static_cast<cudaStream_t>(cuda_stream)>>>(
      m, all, PredictArgs{obs, act, batch, mean_out, var_out});
  MBPO_CUDA_CHECK_LAUNCH();
}

void cuda_ensemble_disagreement(const EnsembleView& v, const float* obs, const float* act, int64_t batch,
                                const int64_t* members, int64_t n_members, float* out, void* workspace,
                                size_t workspace_bytes, void* cuda_stream) {
  check_batch(batch, "cuda_ensemble_disagreement");
  const DeviceModel m = device_model(v, members == nullptr, "cuda_ensemble_disagreement");
  if (members == nullptr) {
    members = v.elites;
    n_members = v.num_elites;
  }
  const MemberList list = member_list(members, n_members, "members");
  for (int k = 0; k < list.count; ++k) {
    require(list.id[k] >= 0 && list.id[k] < v.ensemble_size,
            "members: entry " + std::to_string(k) + " = " + std::to_string(list.id[k]) + " is out of range [0, " +
                std::to_string(v.ensemble_size) + ")");
  }
  if (batch == 0) return;
  require(obs && act && out && workspace, "cuda_ensemble_disagreement: null input, output or workspace pointer");
  const size_t need = cuda_ensemble_disagreement_workspace_bytes(batch, n_members, v.obs_dim);
  require(workspace_bytes >= need, "workspace: expected at least " + std::to_string(need) + " bytes, got " +
                                       std::to_string(workspace_bytes));
  const auto stream = static_cast<cudaStream_t>(cuda_stream);
  float* means = static_cast<float*>(workspace);
  const size_t smem = smem_bytes(m);
  allow_smem(predict_mlp_kernel, smem, "cuda_ensemble_disagreement");
  const dim3 grid(static_cast<unsigned>((batch + kTileRows - 1) / kTileRows), static_cast<unsigned>(list.count));
  predict_mlp_kernel<<<grid, kThreads, smem, stream>>>(m, list, PredictArgs{obs, act, batch, means, nullptr});
  MBPO_CUDA_CHECK_LAUNCH();
  disagreement_kernel<<<blocks_for(batch), kThreads, 0, stream>>>(means, batch, list.count, m.obs_dim + 1, out);
  MBPO_CUDA_CHECK_LAUNCH();
}

}  // namespace mbpo_fast

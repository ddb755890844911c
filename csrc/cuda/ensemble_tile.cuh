// Internal to csrc/cuda: the tile machinery shared by the ensemble kernels
// (ensemble_step.cu) and the device rollout (rollout.cu). See ensemble_step.cu for the
// design; nothing here is public API.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "check.cuh"
#include "kernels/actor_epilogue.h"
#include "kernels/ensemble_epilogue.h"
#include "mbpo_fast/common.h"
#include "mbpo_fast/cuda_ops.h"
#include "mbpo_fast/termination_model.h"

namespace mbpo_fast {
namespace cuda_detail {

constexpr int kThreads = 256;
constexpr int kTileRows = static_cast<int>(kCudaEnsembleTileRows);
constexpr int kRowGroups = kThreads / 32;
constexpr int kRowsPerThread = kTileRows / kRowGroups;
constexpr int kColsPerThread = 8;
constexpr int kColsPerPass = 32 * kColsPerThread;
constexpr int kChunkK = 32;
constexpr int kMaxMembers = static_cast<int>(kCudaMaxMembers);
static_assert(kRowsPerThread * kRowGroups == kTileRows, "tile rows must split evenly over the warps");
static_assert(kTileRows <= kThreads, "the epilogue runs one thread per row");

// The model as the kernels see it (by value in the kernel parameters; device pointers).
struct DeviceModel {
  int obs_dim, act_dim, ensemble_size, num_layers;
  int widths[kEnsembleMaxLayers + 1];
  const float* w[kEnsembleMaxLayers];
  const float* b[kEnsembleMaxLayers];
  const float* input_mean;
  const float* input_std;
  const float* max_logvar;
  const float* min_logvar;
  int ld;  // row stride (floats) of an activation tile in shared memory: the widest layer
  bool relu_hidden;  // hidden activation: SiLU (ensemble) or ReLU (SAC actor)
};

// Host side: copies a CPU view's layer widths and weight/bias pointers into `m` (the ensemble
// and the actor share this layout) and sets m.ld to the widest layer. `what` names the op
// and the network in the error when a width exceeds the device limit.
inline void set_device_layers(DeviceModel& m, int num_layers, const int64_t* widths,
                              const float* const* weights, const float* const* biases,
                              const std::string& what) {
  m.num_layers = num_layers;
  int64_t widest = 0;
  for (int i = 0; i <= num_layers; ++i) {
    require(widths[i] <= (1 << 16),
            what + " widths must be <= 65536 on the device, got " + std::to_string(widths[i]));
    m.widths[i] = static_cast<int>(widths[i]);
    widest = widths[i] > widest ? widths[i] : widest;
  }
  for (int i = 0; i < num_layers; ++i) {
    m.w[i] = weights[i];
    m.b[i] = biases[i];
  }
  m.ld = static_cast<int>(widest);
}

struct MemberList {
  int64_t id[kMaxMembers];
  int count;
};

// ------------------------------------------------------------------ device helpers

// Whether x[0..n) are all finite (the rollout's and the planner's non-finite checks).
__device__ __forceinline__ bool finite_row(const float* x, int n) {
  bool ok = true;
  for (int j = 0; j < n; ++j) ok &= isfinite(x[j]);
  return ok;
}

// x[r, c] = (concat(obs, act)[row(r), c] - mean[c]) / std[c] for r < rows (raw inputs when
// m.input_mean is null: the actor); rows up to kTileRows are zero (so every value the layers
// read is defined). row(r) = order[first + r] when order is not null, else first + r.
__device__ __forceinline__ void gather_tile(const DeviceModel& m, const float* __restrict__ obs, const float* __restrict__ act,
                            const int* __restrict__ order, int64_t first, int rows, float* x) {
  const int od = m.obs_dim, in = m.obs_dim + m.act_dim;
  for (int t = threadIdx.x; t < kTileRows * in; t += kThreads) {
    const int r = t / in, c = t - (t / in) * in;
    float v = 0.0f;
    if (r < rows) {
      const int64_t row = order != nullptr ? static_cast<int64_t>(order[first + r]) : first + r;
      const float raw = c < od ? obs[row * od + c] : act[row * m.act_dim + (c - od)];
      v = m.input_mean != nullptr ? (raw - m.input_mean[c]) / m.input_std[c] : raw;
    }
    x[r * m.ld + c] = v;
  }
  __syncthreads();
}

// Runs every layer of member e on the tile in x; returns the buffer holding the output
// layer (mean, raw logvar) — x or y; the other one is free afterwards.
__device__ __forceinline__ float* forward_tile(const DeviceModel& m, int64_t e, float* x, float* y, float* wbuf) {
  const int lane = threadIdx.x & 31, row0 = (threadIdx.x >> 5) * kRowsPerThread;
  for (int i = 0; i < m.num_layers; ++i) {
    const int K = m.widths[i], N = m.widths[i + 1];
    const bool hidden = i + 1 < m.num_layers;
    const float* __restrict__ W = m.w[i] + e * K * N;
    const float* __restrict__ B = m.b[i] + e * N;
    for (int j0 = 0; j0 < N; j0 += kColsPerPass) {
      const int nc = min(kColsPerPass, N - j0);
      float acc[kRowsPerThread][kColsPerThread];
#pragma unroll
      for (int c = 0; c < kColsPerThread; ++c) {
        const int j = lane + 32 * c;
        const float bias = j < nc ? __ldg(B + j0 + j) : 0.0f;
#pragma unroll
        for (int r = 0; r < kRowsPerThread; ++r) acc[r][c] = bias;
      }
      for (int k0 = 0; k0 < K; k0 += kChunkK) {
        const int kc = min(kChunkK, K - k0);
        __syncthreads();  // every thread is done with the previous chunk
        for (int t = threadIdx.x; t < kc * kColsPerPass; t += kThreads) {
          const int kk = t / kColsPerPass, jj = t - kk * kColsPerPass;
          wbuf[t] = jj < nc ? __ldg(W + static_cast<int64_t>(k0 + kk) * N + j0 + jj) : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < kc; ++kk) {
          float xv[kRowsPerThread];
#pragma unroll
          for (int r = 0; r < kRowsPerThread; ++r) xv[r] = x[(row0 + r) * m.ld + k0 + kk];
#pragma unroll
          for (int c = 0; c < kColsPerThread; ++c) {
            const float wv = wbuf[kk * kColsPerPass + lane + 32 * c];
#pragma unroll
            for (int r = 0; r < kRowsPerThread; ++r) acc[r][c] = fmaf(xv[r], wv, acc[r][c]);
          }
        }
      }
#pragma unroll
      for (int c = 0; c < kColsPerThread; ++c) {
        const int j = lane + 32 * c;
        if (j < nc) {
#pragma unroll
          for (int r = 0; r < kRowsPerThread; ++r) {
            const float v = acc[r][c];
            y[(row0 + r) * m.ld + j0 + j] = !hidden ? v : (m.relu_hidden ? kernels::relu(v) : kernels::silu(v));
          }
        }
      }
    }
    __syncthreads();  // the layer's output is complete before the next layer reads it
    float* t = x;
    x = y;
    y = t;
  }
  return x;
}

// ------------------------------------------------------------------ host helpers

inline size_t smem_bytes(const DeviceModel& m) {
  return sizeof(float) * (static_cast<size_t>(2) * kTileRows * m.ld + static_cast<size_t>(kChunkK) * kColsPerPass);
}

inline int blocks_for(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

// Opts `kernel` into `bytes` of dynamic shared memory (above the 48 KB default), or throws
// InvalidArgument when the current device cannot give that much (a very wide model).
// Done once per (kernel, device, size): later calls only look it up, so a warm call makes no
// attribute API calls (cheaper, and nothing but launches while a CUDA graph is captured).
// The attribute is per (kernel, device) and only ever RAISED: the lock is held across the
// check, the cudaFuncSetAttribute and the bookkeeping, so two threads asking for different
// sizes cannot leave the attribute below a grant another thread already relies on (the
// launch with the larger size would then fail with "invalid argument").
template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes, const char* op) {
  int device = 0, optin = 0;
  MBPO_CUDA_CHECK(cudaGetDevice(&device));
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, size_t> granted;
  const auto key = std::make_pair(reinterpret_cast<const void*>(kernel), device);
  std::lock_guard<std::mutex> lock(mutex);
  const auto it = granted.find(key);
  if (it != granted.end() && it->second >= bytes) return;
  MBPO_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  cudaFuncAttributes attr{};
  MBPO_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));  // its static shared memory counts too
  require(bytes + attr.sharedSizeBytes <= static_cast<size_t>(optin),
          std::string(op) + ": the widest layer needs " + std::to_string(bytes + attr.sharedSizeBytes) +
              " bytes of shared memory per block, the device allows " + std::to_string(optin));
  MBPO_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  granted[key] = bytes;
}

// The model of an EnsembleView with device pointers (validates it; ensemble_step.cu).
DeviceModel device_model(const EnsembleView& v, bool need_elites, const char* op);
// The elites / members as a by-value list (InvalidArgument beyond kCudaMaxMembers).
MemberList member_list(const int64_t* ids, int64_t n, const char* what);

// The device pieces of one step (ensemble_step.cu): the member per row, grouping and the
// fused MLP + epilogue, enqueued on `stream`. The batch is `*batch_dev` when batch_dev is not
// null (a device counter: the rollout's alive rows, no host round trip) and `batch` then is
// only an upper bound that sizes the grids; workspace as in cuda_ensemble_step.
void launch_step(const DeviceModel& m, const MemberList& elites, const float* obs, const float* act, int64_t batch,
                 const int* batch_dev, uint64_t seed, bool deterministic, const int64_t* members, float* next_obs,
                 float* reward, int64_t* members_out, void* workspace, cudaStream_t stream);

// The uncertainty step (ensemble.h ensemble_step_uncertainty) on the device: every elite runs
// ONCE on every row (a 2-D grid: row tile x elite); the chosen elite's block also writes the
// sampled transition (the member choice and Philox noise of ensemble_step), every block writes
// its elite's mean next-state deltas to means [K, stride, obs_dim]; a second launch reduces
// them to d [batch] (unbiased variance across the elites, mean over the obs dims, in double).
// The batch is *batch_dev when batch_dev is not null (then `batch` is an upper bound sizing
// the grids); stride >= that upper bound. elites.count >= 2 (the caller checks).
void launch_step_uncertainty(const DeviceModel& m, const MemberList& elites, const float* obs, const float* act,
                             int64_t batch, const int* batch_dev, int64_t stride, uint64_t seed, bool deterministic,
                             float* next_obs, float* reward, float* disagreement, float* means, cudaStream_t stream);

// The learned termination MLP (termination_model.h) on the device: out[i] = logit_i > 0 for
// i < batch (*batch_dev when not null; `batch` then an upper bound), logits_out (may be null).
// `m` from termination_device_model (device pointers).
void launch_termination_mlp(const DeviceModel& m, const float* obs, const float* act, const float* next_obs,
                            int64_t batch, const int* batch_dev, uint8_t* out, float* logits_out,
                            cudaStream_t stream);
// The DeviceModel of a TerminationMLPView whose arrays are device pointers (validates it).
DeviceModel termination_device_model(const TerminationMLPView& v, const char* op);

}  // namespace cuda_detail
}  // namespace mbpo_fast

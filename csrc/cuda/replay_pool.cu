// CudaReplayPool (cuda_ops.h): a ReplayPool whose records live in device memory.
//
// Same layout as the CPU pool (replay_pool.h): record [obs, act, rew, next_obs] of
// 2 * obs_dim + act_dim + 1 floats per physical slot plus one terminated byte; logical row
// r (0 = oldest) lives in slot (write_pos - size + r) mod capacity. Draw k of the pool's life
// is logical row random_index(seed, kStreamPoolSample, k, size) (rng.h), exactly the CPU
// pool's draw_rows, so both pools sample the same rows for the same seed and contents.
// One thread per output row; a row's fields are a few dozen bytes, so a thread copying its
// record is as good as a warp per row at these widths and keeps the kernels trivial.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>

#include "check.cuh"
#include "device_guard.cuh"
#include "kernels/pool_segments.h"
#include "mbpo_fast/common.h"
#include "mbpo_fast/cuda_ops.h"
#include "mbpo_fast/replay_pool.h"
#include "mbpo_fast/rng.h"

namespace mbpo_fast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxCapacity = (int64_t{1} << 32) - 1;  // random_index works on 32-bit ranges
constexpr int kNumFlags = 5;                                // obs, act, rew, next_obs, terminated
constexpr int32_t kNoRow = 0x7f7f7f7f;                      // memset(0x7f) pattern: no bad row

struct PoolRef {
  const float* rec;
  const uint8_t* term;
  int64_t capacity, size, start_slot;
  int od, ad, rf;
  uint64_t seed;
};

struct Outs {
  float* obs;
  float* act;
  float* rew;
  float* next_obs;
  uint8_t* term;
};

__device__ void copy_row_out(const PoolRef& p, int64_t logical, const Outs& o, int64_t out_row) {
  int64_t slot = p.start_slot + logical;
  if (slot >= p.capacity) slot -= p.capacity;
  const float* rec = p.rec + slot * p.rf;
  if (o.obs != nullptr)
    for (int c = 0; c < p.od; ++c) o.obs[out_row * p.od + c] = rec[c];
  if (o.act != nullptr)
    for (int c = 0; c < p.ad; ++c) o.act[out_row * p.ad + c] = rec[p.od + c];
  if (o.rew != nullptr) o.rew[out_row] = rec[p.od + p.ad];
  if (o.next_obs != nullptr)
    for (int c = 0; c < p.od; ++c) o.next_obs[out_row * p.od + c] = rec[p.od + p.ad + 1 + c];
  if (o.term != nullptr) o.term[out_row] = p.term[slot];
}

__device__ bool finite(float v) { return isfinite(v); }

// flags[f] = the smallest row with a bad value in field f (kNoRow when none).
__global__ void validate_kernel(const float* __restrict__ obs, const float* __restrict__ act,
                                const float* __restrict__ rew, const float* __restrict__ next_obs,
                                const uint8_t* __restrict__ term, int64_t n, int od, int ad, int32_t* flags) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= n) return;
  bool ok = true;
  for (int c = 0; c < od; ++c) ok &= finite(obs[i * od + c]);
  if (!ok) atomicMin(&flags[0], static_cast<int32_t>(i));
  ok = true;
  for (int c = 0; c < ad; ++c) ok &= finite(act[i * ad + c]);
  if (!ok) atomicMin(&flags[1], static_cast<int32_t>(i));
  if (!finite(rew[i])) atomicMin(&flags[2], static_cast<int32_t>(i));
  ok = true;
  for (int c = 0; c < od; ++c) ok &= finite(next_obs[i * od + c]);
  if (!ok) atomicMin(&flags[3], static_cast<int32_t>(i));
  if (term[i] > 1) atomicMin(&flags[4], static_cast<int32_t>(i));
}

// Input rows skip + i (i < m) go to slots (start + i) mod capacity.
__global__ void pack_kernel(const float* __restrict__ obs, const float* __restrict__ act,
                            const float* __restrict__ rew, const float* __restrict__ next_obs,
                            const uint8_t* __restrict__ term, int64_t skip, int64_t m, int64_t start,
                            int64_t capacity, int od, int ad, float* __restrict__ rec, uint8_t* __restrict__ term_out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= m) return;
  const int64_t src = skip + i;
  int64_t slot = start + i;
  if (slot >= capacity) slot -= capacity;
  const int rf = 2 * od + ad + 1;
  float* r = rec + slot * rf;
  for (int c = 0; c < od; ++c) r[c] = obs[src * od + c];
  for (int c = 0; c < ad; ++c) r[od + c] = act[src * ad + c];
  r[od + ad] = rew[src];
  for (int c = 0; c < od; ++c) r[od + ad + 1 + c] = next_obs[src * od + c];
  term_out[slot] = term[src];
}

__global__ void sample_kernel(PoolRef p, uint64_t first, int64_t n, Outs o) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= n) return;
  const uint32_t row = random_index(p.seed, kStreamPoolSample, first + static_cast<uint64_t>(i),
                                    static_cast<uint32_t>(p.size));
  copy_row_out(p, row, o, i);
}

// Output row i = logical row rows[i]; an out-of-range entry (the caller validates) gives NaN
// and terminated 0 instead of reading outside the storage.
__global__ void gather_kernel(PoolRef p, const int64_t* __restrict__ rows, int64_t n, Outs o) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= n) return;
  const int64_t r = rows[i];
  if (r >= 0 && r < p.size) {
    copy_row_out(p, r, o, i);
    return;
  }
  const float nan = __int_as_float(0x7fc00000);
  if (o.obs != nullptr)
    for (int c = 0; c < p.od; ++c) o.obs[i * p.od + c] = nan;
  if (o.act != nullptr)
    for (int c = 0; c < p.ad; ++c) o.act[i * p.ad + c] = nan;
  if (o.rew != nullptr) o.rew[i] = nan;
  if (o.next_obs != nullptr)
    for (int c = 0; c < p.od; ++c) o.next_obs[i * p.od + c] = nan;
  if (o.term != nullptr) o.term[i] = 0;
}

__global__ void transitions_kernel(PoolRef p, Outs o) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < p.size) copy_row_out(p, i, o, i);
}

// Row t of batch k: the first n_real rows from `real` (draws real0 + k * real_per_batch + t),
// the rest from `model` (draws model0 + k * model_per_batch + model_skip + (t - n_real)).
// With the same pool for both (same == true) these are the CPU's offsets: real0 + k * bs + t.
__global__ void mixed_kernel(PoolRef real, PoolRef model, uint64_t real0, uint64_t model0, int64_t real_per_batch,
                             int64_t model_per_batch, int64_t model_skip, int64_t batch_size, int64_t n_real,
                             int64_t total, Outs o) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= total) return;
  const int64_t k = i / batch_size, t = i - k * batch_size;
  if (t < n_real) {
    const uint64_t draw = real0 + static_cast<uint64_t>(k * real_per_batch + t);
    copy_row_out(real, random_index(real.seed, kStreamPoolSample, draw, static_cast<uint32_t>(real.size)), o, i);
  } else {
    const uint64_t draw = model0 + static_cast<uint64_t>(k * model_per_batch + model_skip + (t - n_real));
    copy_row_out(model, random_index(model.seed, kStreamPoolSample, draw, static_cast<uint32_t>(model.size)), o,
                 i);
  }
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

PoolRef ref_of(const CudaReplayPool& p) {
  const int64_t s = p.write_pos() - p.size();
  return PoolRef{p.record_data(), p.terminated_data(), p.capacity(), p.size(), s < 0 ? s + p.capacity() : s,
                 static_cast<int>(p.obs_dim()), static_cast<int>(p.act_dim()), static_cast<int>(p.record_floats()),
                 p.seed()};
}

}  // namespace

CudaReplayPool::CudaReplayPool(int64_t capacity, int64_t obs_dim, int64_t act_dim, uint64_t seed)
    : capacity_(capacity), obs_dim_(obs_dim), act_dim_(act_dim), seed_(seed) {
  require(capacity >= 1 && capacity <= kMaxCapacity,
          "capacity: expected 1 <= capacity < 2**32, got " + std::to_string(capacity));
  require(obs_dim >= 1 && obs_dim <= (1 << 16), "obs_dim: expected 1 <= obs_dim <= 65536, got " + std::to_string(obs_dim));
  require(act_dim >= 1 && act_dim <= (1 << 16), "act_dim: expected 1 <= act_dim <= 65536, got " + std::to_string(act_dim));
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    throw std::runtime_error("ReplayPool(device='cuda'): no CUDA device is available");
  }
  MBPO_CUDA_CHECK(cudaGetDevice(&device_));
  try {
    MBPO_CUDA_CHECK(cudaMalloc(&rec_, sizeof(float) * static_cast<size_t>(capacity * record_floats())));
    MBPO_CUDA_CHECK(cudaMalloc(&term_, static_cast<size_t>(capacity)));
    MBPO_CUDA_CHECK(cudaMalloc(&flags_, sizeof(int32_t) * kNumFlags));
  } catch (...) {
    release();
    throw;
  }
}

void CudaReplayPool::release() noexcept {
  if (rec_ == nullptr && term_ == nullptr && flags_ == nullptr) return;
  // cudaFree synchronizes the device, so no kernel still reads the storage. Free on the
  // pool's own device (the caller may have another device current: a pool on cuda:1
  // collected while cuda:0 is current); best effort, a destructor must not throw.
  int previous = -1;
  const bool switched = cudaGetDevice(&previous) == cudaSuccess && device_ >= 0 && previous != device_ &&
                        cudaSetDevice(device_) == cudaSuccess;
  if (rec_ != nullptr) cudaFree(rec_);
  if (term_ != nullptr) cudaFree(term_);
  if (flags_ != nullptr) cudaFree(flags_);
  rec_ = nullptr;
  term_ = nullptr;
  flags_ = nullptr;
  if (switched) cudaSetDevice(previous);
  cudaGetLastError();  // leave no error of this best-effort cleanup for the next check
}

CudaReplayPool::~CudaReplayPool() { release(); }

CudaReplayPool::CudaReplayPool(CudaReplayPool&& o) noexcept { *this = std::move(o); }

CudaReplayPool& CudaReplayPool::operator=(CudaReplayPool&& o) noexcept {
  if (this != &o) {
    release();
    capacity_ = o.capacity_;
    obs_dim_ = o.obs_dim_;
    act_dim_ = o.act_dim_;
    size_ = o.size_;
    write_pos_ = o.write_pos_;
    seed_ = o.seed_;
    rng_counter_ = o.rng_counter_;
    device_ = o.device_;
    rec_ = std::exchange(o.rec_, nullptr);
    term_ = std::exchange(o.term_, nullptr);
    flags_ = std::exchange(o.flags_, nullptr);
  }
  return *this;
}

void CudaReplayPool::add_batch(const float* obs, const float* act, const float* rew, const float* next_obs,
                               const uint8_t* term, int64_t n, void* cuda_stream) {
  // Row indices of bad values travel as int32 with kNoRow (0x7f7f7f7f, the memset pattern)
  // meaning "none": a batch reaching that row could not report a bad value there.
  require(n >= 0 && n < kNoRow, "add_batch: expected 0 <= n < " + std::to_string(kNoRow) + " rows, got " +
                                    std::to_string(n));
  if (n == 0) return;
  require(obs && act && rew && next_obs && term, "add_batch: null input pointer");
  cuda_detail::DeviceGuard guard(device_);
  const auto stream = static_cast<cudaStream_t>(cuda_stream);
  const int od = static_cast<int>(obs_dim_), ad = static_cast<int>(act_dim_);
  MBPO_CUDA_CHECK(cudaMemsetAsync(flags_, 0x7f, sizeof(int32_t) * kNumFlags, stream));
  validate_kernel<<<blocks_for(n), kThreads, 0, stream>>>(obs, act, rew, next_obs, term, n, od, ad, flags_);
  MBPO_CUDA_CHECK_LAUNCH();
  int32_t bad[kNumFlags];
  MBPO_CUDA_CHECK(cudaMemcpyAsync(bad, flags_, sizeof(bad), cudaMemcpyDeviceToHost, stream));
  MBPO_CUDA_CHECK(cudaStreamSynchronize(stream));
  static const char* const kNames[kNumFlags] = {"obs", "act", "rew", "next_obs", "terminated"};
  for (int f = 0; f < kNumFlags; ++f) {
    if (bad[f] != kNoRow) {
      throw InvalidArgument(std::string(kNames[f]) +
                            (f == 4 ? ": values must be 0 or 1" : ": non-finite value (NaN or Inf)") + " in row " +
                            std::to_string(bad[f]) + "; the pool is unchanged");
    }
  }
  const int64_t skip = n > capacity_ ? n - capacity_ : 0;
  const int64_t m = n - skip;
  const int64_t start = (write_pos_ + skip) % capacity_;
  pack_kernel<<<blocks_for(m), kThreads, 0, stream>>>(obs, act, rew, next_obs, term, skip, m, start, capacity_, od,
                                                      ad, rec_, term_);
  MBPO_CUDA_CHECK_LAUNCH();
  write_pos_ = (write_pos_ + n) % capacity_;
  size_ = std::min(capacity_, size_ + n);
}

void CudaReplayPool::resize(int64_t new_capacity, void* cuda_stream) {
  require(new_capacity >= 1 && new_capacity <= kMaxCapacity,
          "new_capacity: expected 1 <= new_capacity < 2**32, got " + std::to_string(new_capacity));
  cuda_detail::DeviceGuard guard(device_);
  const auto stream = static_cast<cudaStream_t>(cuda_stream);
  const int64_t rf = record_floats();
  float* rec = nullptr;
  uint8_t* term = nullptr;
  MBPO_CUDA_CHECK(cudaMalloc(&rec, sizeof(float) * static_cast<size_t>(new_capacity * rf)));
  const cudaError_t err = cudaMalloc(&term, static_cast<size_t>(new_capacity));
  if (err != cudaSuccess) {
    cudaFree(rec);
    MBPO_CUDA_CHECK(err);
  }
  const int64_t keep = std::min(size_, new_capacity);
  try {
    if (keep > 0) {  // the newest rows: at most two contiguous segments of whole records
      const int64_t s0 = write_pos_ - size_;
      int64_t start = (s0 < 0 ? s0 + capacity_ : s0) + (size_ - keep);
      if (start >= capacity_) start -= capacity_;
      const int64_t first = std::min(keep, capacity_ - start);
      MBPO_CUDA_CHECK(cudaMemcpyAsync(rec, rec_ + start * rf, sizeof(float) * first * rf,
                                      cudaMemcpyDeviceToDevice, stream));
      MBPO_CUDA_CHECK(cudaMemcpyAsync(term, term_ + start, first, cudaMemcpyDeviceToDevice, stream));
      if (keep > first) {
        MBPO_CUDA_CHECK(cudaMemcpyAsync(rec + first * rf, rec_, sizeof(float) * (keep - first) * rf,
                                        cudaMemcpyDeviceToDevice, stream));
        MBPO_CUDA_CHECK(cudaMemcpyAsync(term + first, term_, keep - first, cudaMemcpyDeviceToDevice, stream));
      }
    }
  } catch (...) {
    cudaStreamSynchronize(stream);
    cudaFree(rec);
    cudaFree(term);
    throw;
  }
  MBPO_CUDA_CHECK(cudaStreamSynchronize(stream));  // the copies read the old storage
  cudaFree(rec_);
  cudaFree(term_);
  rec_ = rec;
  term_ = term;
  capacity_ = new_capacity;
  size_ = keep;
  write_pos_ = keep % new_capacity;
}

void CudaReplayPool::sample(int64_t n, float* obs, float* act, float* rew, float* next_obs, uint8_t* term,
                            void* cuda_stream) {
  require(n >= 0, "batch_size: expected batch_size >= 0, got " + std::to_string(n));
  if (n == 0) return;
  require(size_ > 0, "sample: the pool is empty (add transitions before sampling)");
  cuda_detail::DeviceGuard guard(device_);
  sample_kernel<<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(cuda_stream)>>>(
      ref_of(*this), rng_counter_, n, Outs{obs, act, rew, next_obs, term});
  MBPO_CUDA_CHECK_LAUNCH();
  rng_counter_ += static_cast<uint64_t>(n);
}

void CudaReplayPool::transitions(float* obs, float* act, float* rew, float* next_obs, uint8_t* term,
                                 void* cuda_stream) const {
  if (size_ == 0) return;
  cuda_detail::DeviceGuard guard(device_);
  transitions_kernel<<<blocks_for(size_), kThreads, 0, static_cast<cudaStream_t>(cuda_stream)>>>(
      ref_of(*this), Outs{obs, act, rew, next_obs, term});
  MBPO_CUDA_CHECK_LAUNCH();
}

void CudaReplayPool::gather(const int64_t* rows, int64_t n, float* obs, float* act, float* rew, float* next_obs,
                            uint8_t* term, void* cuda_stream) const {
  require(n >= 0 && n <= INT32_MAX, "rows: expected 0 <= n < 2**31 row indices, got " + std::to_string(n));
  if (n == 0) return;
  require(rows != nullptr, "rows: null pointer");
  cuda_detail::DeviceGuard guard(device_);
  gather_kernel<<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(cuda_stream)>>>(
      ref_of(*this), rows, n, Outs{obs, act, rew, next_obs, term});
  MBPO_CUDA_CHECK_LAUNCH();
}

ReplayPool CudaReplayPool::to_host(void* cuda_stream) const {
  ReplayPool host(capacity_, obs_dim_, act_dim_, seed_);
  cuda_detail::DeviceGuard guard(device_);
  const auto stream = static_cast<cudaStream_t>(cuda_stream);
  const int64_t rf = record_floats();
  // The used slots, physically where they are on the device (identical record layout).
  const kernels::SlotSegments seg = kernels::slot_segments(capacity_, size_, write_pos_, 0, size_);
  float* rec = host.rec_.get();
  uint8_t* term = host.term_.get();
  if (seg.first_len > 0) {
    MBPO_CUDA_CHECK(cudaMemcpyAsync(rec + seg.first_slot * rf, rec_ + seg.first_slot * rf,
                                    sizeof(float) * static_cast<size_t>(seg.first_len * rf), cudaMemcpyDeviceToHost,
                                    stream));
    MBPO_CUDA_CHECK(cudaMemcpyAsync(term + seg.first_slot, term_ + seg.first_slot,
                                    static_cast<size_t>(seg.first_len), cudaMemcpyDeviceToHost, stream));
  }
  if (seg.second_len > 0) {
    MBPO_CUDA_CHECK(cudaMemcpyAsync(rec, rec_, sizeof(float) * static_cast<size_t>(seg.second_len * rf),
                                    cudaMemcpyDeviceToHost, stream));
    MBPO_CUDA_CHECK(cudaMemcpyAsync(term, term_, static_cast<size_t>(seg.second_len), cudaMemcpyDeviceToHost,
                                    stream));
  }
  // Pageable destination: wait before the host pool is read (or destroyed by an exception).
  MBPO_CUDA_CHECK(cudaStreamSynchronize(stream));
  host.size_ = size_;
  host.write_pos_ = write_pos_;
  host.rng_counter_ = rng_counter_;
  return host;
}

CudaReplayPool CudaReplayPool::from_host(const ReplayPool& pool, void* cuda_stream) {
  CudaReplayPool dev(pool.capacity(), pool.obs_dim(), pool.act_dim(), pool.seed());  // current device
  const auto stream = static_cast<cudaStream_t>(cuda_stream);
  const int64_t rf = dev.record_floats();
  const kernels::SlotSegments seg = kernels::slot_segments(pool.capacity(), pool.size(), pool.write_pos(), 0,
                                                           pool.size());
  const float* rec = pool.record_data();
  const uint8_t* term = pool.terminated_data();
  if (seg.first_len > 0) {
    MBPO_CUDA_CHECK(cudaMemcpyAsync(dev.rec_ + seg.first_slot * rf, rec + seg.first_slot * rf,
                                    sizeof(float) * static_cast<size_t>(seg.first_len * rf), cudaMemcpyHostToDevice,
                                    stream));
    MBPO_CUDA_CHECK(cudaMemcpyAsync(dev.term_ + seg.first_slot, term + seg.first_slot,
                                    static_cast<size_t>(seg.first_len), cudaMemcpyHostToDevice, stream));
  }
  if (seg.second_len > 0) {
    MBPO_CUDA_CHECK(cudaMemcpyAsync(dev.rec_, rec, sizeof(float) * static_cast<size_t>(seg.second_len * rf),
                                    cudaMemcpyHostToDevice, stream));
    MBPO_CUDA_CHECK(cudaMemcpyAsync(dev.term_, term, static_cast<size_t>(seg.second_len), cudaMemcpyHostToDevice,
                                    stream));
  }
  // Pageable source: the copies must be done before the caller may free the host pool.
  MBPO_CUDA_CHECK(cudaStreamSynchronize(stream));
  dev.size_ = pool.size();
  dev.write_pos_ = pool.write_pos();
  dev.rng_counter_ = pool.rng_counter();
  return dev;
}

void cuda_sample_mixed(CudaReplayPool& real, CudaReplayPool& model, int64_t batch_size, double real_ratio,
                       int64_t num_batches, float* obs, float* act, float* rew, float* next_obs, uint8_t* term,
                       void* cuda_stream) {
  const int64_t n_real = mixed_real_rows(batch_size, real_ratio);  // validates batch_size, real_ratio
  const int64_t n_model = batch_size - n_real;
  require(num_batches >= 1, "num_batches: expected num_batches >= 1, got " + std::to_string(num_batches));
  require(real.obs_dim() == model.obs_dim() && real.act_dim() == model.act_dim(),
          "model_pool: expected obs_dim " + std::to_string(real.obs_dim()) + " and act_dim " +
              std::to_string(real.act_dim()) + " like real_pool, got " + std::to_string(model.obs_dim()) + " and " +
              std::to_string(model.act_dim()));
  require(real.device() == model.device(), "model_pool: expected the same CUDA device as real_pool");
  require(n_real == 0 || real.size() > 0,
          "real_pool: the pool is empty but real_ratio asks for " + std::to_string(n_real) + " rows per batch");
  require(n_model == 0 || model.size() > 0, "model_pool: the pool is empty but real_ratio leaves " +
                                                std::to_string(n_model) + " rows per batch to it");
  const bool same = &real == &model;
  const int64_t total = num_batches * batch_size;
  cuda_detail::DeviceGuard guard(real.device());
  // Same pool: one counter, batch k's real rows then model rows are consecutive draws.
  const int64_t real_per_batch = same ? batch_size : n_real;
  const int64_t model_per_batch = same ? batch_size : n_model;
  const int64_t model_skip = same ? n_real : 0;
  mixed_kernel<<<blocks_for(total), kThreads, 0, static_cast<cudaStream_t>(cuda_stream)>>>(
      ref_of(real), ref_of(model), real.rng_counter_, model.rng_counter_, real_per_batch, model_per_batch, model_skip,
      batch_size, n_real, total, Outs{obs, act, rew, next_obs, term});
  MBPO_CUDA_CHECK_LAUNCH();
  real.rng_counter_ += static_cast<uint64_t>(num_batches * (same ? batch_size : n_real));
  if (!same) model.rng_counter_ += static_cast<uint64_t>(num_batches * n_model);
}

}  // namespace mbpo_fast

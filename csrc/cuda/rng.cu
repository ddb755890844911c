// CUDA fills of the shared Philox streams: one thread per element, the same element
// bodies (random_u32 / random_normal in rng.h) as the CPU loops.
#include <cuda_runtime.h>

#include <string>

#include "check.cuh"
#include "mbpo_fast/common.h"
#include "mbpo_fast/cuda.h"
#include "mbpo_fast/rng.h"

namespace mbpo_fast {
namespace {

constexpr int kThreads = 256;

__global__ void fill_normal_kernel(uint64_t seed, uint64_t stream, uint64_t offset, int64_t n,
                                   float* out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = random_normal(seed, stream, offset + static_cast<uint64_t>(i));
  }
}

__global__ void fill_u32_kernel(uint64_t seed, uint64_t stream, uint64_t offset, int64_t n,
                                uint32_t* out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = random_u32(seed, stream, offset + static_cast<uint64_t>(i));
  }
}

int grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65535 ? blocks : 65535);
}

}  // namespace

bool cuda_compiled() noexcept { return true; }

std::string cuda_architectures() { return MBPO_FAST_CUDA_ARCHITECTURES; }

int cuda_device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver / no device" error
    return 0;
  }
  return count;
}

void cuda_philox_fill_normal(uint64_t seed, uint64_t stream, uint64_t offset, int64_t n, float* out,
                             void* cuda_stream) {
  require(n >= 0, "cuda_philox_fill_normal: n must be >= 0, got " + std::to_string(n));
  if (n == 0) return;
  fill_normal_kernel<<<grid_for(n), kThreads, 0, static_cast<cudaStream_t>(cuda_stream)>>>(
      seed, stream, offset, n, out);
  MBPO_CUDA_CHECK_LAUNCH();
}

void cuda_philox_fill_u32(uint64_t seed, uint64_t stream, uint64_t offset, int64_t n, uint32_t* out,
                          void* cuda_stream) {
  require(n >= 0, "cuda_philox_fill_u32: n must be >= 0, got " + std::to_string(n));
  if (n == 0) return;
  fill_u32_kernel<<<grid_for(n), kThreads, 0, static_cast<cudaStream_t>(cuda_stream)>>>(
      seed, stream, offset, n, out);
  MBPO_CUDA_CHECK_LAUNCH();
}

}  // namespace mbpo_fast

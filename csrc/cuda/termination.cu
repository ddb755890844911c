// CUDA batch of the built-in termination functions: one thread per row running the same
// MBPO_HD element body (is_terminal in termination.h) as the CPU loop and the rollout engine.
#include <cuda_runtime.h>

#include <string>

#include "check.cuh"
#include "mbpo_fast/common.h"
#include "mbpo_fast/termination.h"

namespace mbpo_fast {
namespace {

constexpr int kThreads = 256;

__global__ void terminations_kernel(TerminationId id, const float* next_obs, int64_t batch,
                                    int obs_dim, uint8_t* out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b < batch;
       b += stride) {
    out[b] = is_terminal(id, next_obs + b * obs_dim, obs_dim) ? 1 : 0;
  }
}

}  // namespace

void cuda_terminations(TerminationId id, const float* next_obs, int64_t batch, int obs_dim,
                       uint8_t* out, void* cuda_stream) {
  require(batch >= 0, "cuda_terminations: batch must be >= 0, got " + std::to_string(batch));
  check_termination_args(static_cast<int32_t>(id), obs_dim);
  if (batch == 0) return;
  const int64_t blocks = (batch + kThreads - 1) / kThreads;
  const int grid = static_cast<int>(blocks < 65535 ? blocks : 65535);
  terminations_kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(cuda_stream)>>>(
      id, next_obs, batch, obs_dim, out);
  MBPO_CUDA_CHECK_LAUNCH();
}

}  // namespace mbpo_fast

// Error checking for CUDA runtime calls: every call goes through MBPO_CUDA_CHECK, which
// throws std::runtime_error with the call, the file and the line.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace mbpo_fast {
namespace cuda_detail {
inline void check(cudaError_t err, const char* call, const char* file, int line) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("CUDA error '") + cudaGetErrorString(err) + "' in " +
                             call + " at " + file + ":" + std::to_string(line));
  }
}
}  // namespace cuda_detail
}  // namespace mbpo_fast

#define MBPO_CUDA_CHECK(call) ::mbpo_fast::cuda_detail::check((call), #call, __FILE__, __LINE__)
// Checks the launch that just happened (bad configuration, missing kernel image, ...).
#define MBPO_CUDA_CHECK_LAUNCH() MBPO_CUDA_CHECK(cudaGetLastError())

// Built only when CUDA is not compiled: the CUDA entry points report its absence.
#include <stdexcept>

#include "mbpo_fast/cuda.h"

namespace mbpo_fast {
namespace {
[[noreturn]] void no_cuda(const char* what) {
  throw std::runtime_error(std::string(what) +
                           ": mbpo_fast was built without CUDA (MBPO_FAST_CUDA=OFF or no nvcc)");
}
}  // namespace

bool cuda_compiled() noexcept { return false; }
std::string cuda_architectures() { return ""; }
int cuda_device_count() noexcept { return 0; }
void cuda_philox_fill_normal(uint64_t, uint64_t, uint64_t, int64_t, float*, void*) {
  no_cuda("cuda_philox_fill_normal");
}
void cuda_philox_fill_u32(uint64_t, uint64_t, uint64_t, int64_t, uint32_t*, void*) {
  no_cuda("cuda_philox_fill_u32");
}
}  // namespace mbpo_fast

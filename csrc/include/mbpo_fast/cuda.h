// CUDA entry points of the core, declared without any CUDA header so that plain C++
// code can call them. When the library is built without CUDA these functions exist,
// cuda_compiled() is false and the launchers throw std::runtime_error.
#pragma once

#include <cstdint>
#include <string>

namespace mbpo_fast {

// True when the library was compiled with nvcc.
bool cuda_compiled() noexcept;
// The compiled architectures, e.g. "80;86;89;90" (empty without CUDA).
std::string cuda_architectures();
// Number of usable CUDA devices (0 without CUDA, a driver or a device; never throws).
int cuda_device_count() noexcept;

// Fills device memory `out` (n floats) with standard normals number offset..offset+n-1
// of (seed, stream): the same values as philox_fill_normal on the CPU. `cuda_stream`
// is a cudaStream_t (nullptr: the default stream). Errors throw std::runtime_error
// naming the CUDA call, file and line.
void cuda_philox_fill_normal(uint64_t seed, uint64_t stream, uint64_t offset, int64_t n,
                             float* out, void* cuda_stream);
// As above for raw 32-bit words.
void cuda_philox_fill_u32(uint64_t seed, uint64_t stream, uint64_t offset, int64_t n,
                          uint32_t* out, void* cuda_stream);

}  // namespace mbpo_fast

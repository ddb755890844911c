// mbpo_fast public C++ API: shared macros, error type and light array views.
// No Python, no pybind11, no CUDA headers: a C++ simulator can include this directly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

// MBPO_HD marks functions that compile as both host and device code. Under nvcc they
// become __host__ __device__; under a plain C++ compiler the macro is empty, so the
// same element bodies run in the CPU loops and in the CUDA kernels.
#if defined(__CUDACC__)
#define MBPO_HD __host__ __device__ __forceinline__
#else
#define MBPO_HD inline
#endif

namespace mbpo_fast {

// Thrown for invalid arguments at the C++ API boundary (bad shapes, sizes, values).
// The Python bindings translate it into ValueError.
class InvalidArgument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Thrown when a file cannot be opened, written, synced or renamed (Python: OSError).
class IoError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Thrown when a file's contents are invalid: truncated, corrupted (checksum mismatch),
// wrong magic/version or inconsistent shapes (Python: ValueError).
class FormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Throws InvalidArgument(message) when `condition` is false. Used instead of assert():
// validation must survive release builds.
inline void require(bool condition, const std::string& message) {
  if (!condition) throw InvalidArgument(message);
}

// Library version (kept in sync with pyproject.toml by CMake).
const char* version() noexcept;

}  // namespace mbpo_fast

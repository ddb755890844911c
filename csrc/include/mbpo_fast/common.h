// mbpo_fast public C++ API: shared macros, error type and light array views.
// No Python, no pybind11, no CUDA headers: a C++ simulator can include this directly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

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

// Thrown when a file asks for more memory than can be allocated (e.g. a pool header's
// capacity); carries a message naming the file (Python: MemoryError).
class AllocationError : public std::bad_alloc {
 public:
  explicit AllocationError(std::string message) : message_(std::move(message)) {}
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string message_;
};

// Python's spelling of a shape for error messages: "(2, 3)", "(5,)"; a negative extent
// (any size) prints "*".
std::string shape_string(const std::vector<int64_t>& shape);

// Throws InvalidArgument(message) when `condition` is false. Used instead of the assert macro:
// validation must survive release builds.
inline void require(bool condition, const std::string& message) {
  if (!condition) throw InvalidArgument(message);
}

// A non-owning view of `size()` contiguous elements, like C++20's std::span (the library
// is C++17). Converts implicitly from std::vector, std::array, C arrays and anything else with
// data() and size(); Span<const T> also from a const container. Used by the span-style
// overloads, which take their sizes from the spans and check them.
template <typename T>
class Span {
 public:
  constexpr Span() noexcept = default;
  constexpr Span(T* data, size_t size) noexcept : data_(data), size_(size) {}
  template <size_t N>
  constexpr Span(T (&array)[N]) noexcept : data_(array), size_(N) {}  // NOLINT: implicit by design
  template <typename C,
            typename = std::enable_if_t<!std::is_same_v<std::decay_t<C>, Span> &&
                                        std::is_convertible_v<decltype(std::declval<C&>().data()), T*>>>
  constexpr Span(C&& container) noexcept  // NOLINT: implicit by design
      : data_(container.data()), size_(static_cast<size_t>(container.size())) {}

  constexpr T* data() const noexcept { return data_; }
  constexpr size_t size() const noexcept { return size_; }
  constexpr bool empty() const noexcept { return size_ == 0; }
  constexpr T& operator[](size_t i) const noexcept { return data_[i]; }
  constexpr T* begin() const noexcept { return data_; }
  constexpr T* end() const noexcept { return data_ + size_; }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
};

// Library version (kept in sync with pyproject.toml by CMake).
const char* version() noexcept;

}  // namespace mbpo_fast

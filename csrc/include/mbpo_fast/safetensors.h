// A small, dependency-free reader for safetensors files (the format EnsembleDynamics.save
// and SAC.export_actor write), so C++ programs can load models with no Python and no torch.
//
// Format: 8-byte little-endian header length N, N bytes of JSON
//   {"__metadata__": {"k": "v", ...}, "name": {"dtype": "F32", "shape": [..],
//    "data_offsets": [begin, end]}, ...}
// then the raw little-endian tensor data. Every structural problem (truncation, bad JSON,
// offsets outside the data, overlapping tensors, trailing bytes) throws FormatError with
// the file name; a file that cannot be opened throws IoError.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "mbpo_fast/common.h"

namespace mbpo_fast {

enum class DType { kF32, kF64, kI64, kI32, kU8, kBool, kU16, kBF16 };

// Size in bytes of one element of `dtype`.
int dtype_size(DType dtype) noexcept;
// The safetensors name of `dtype` ("F32", "I64", ...).
const char* dtype_name(DType dtype) noexcept;

struct TensorInfo {
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section
  uint64_t end = 0;
  int64_t numel() const noexcept;
};

class SafetensorsFile {
 public:
  // Reads and validates the whole file.
  static SafetensorsFile read(const std::string& path);
  // Parses an in-memory file (`source` names it in error messages).
  static SafetensorsFile parse(std::vector<uint8_t> bytes, const std::string& source);

  const std::string& source() const noexcept { return source_; }
  bool has(const std::string& name) const noexcept { return tensors_.count(name) != 0; }
  std::vector<std::string> names() const;
  // Throws FormatError naming the tensor when it is missing.
  const TensorInfo& info(const std::string& name) const;

  // Copies tensor `name` as float32 / int64. Throws FormatError when it is missing, has
  // another dtype, or its shape differs from `expected_shape` (-1 = any extent).
  std::vector<float> f32(const std::string& name, const std::vector<int64_t>& expected_shape) const;
  std::vector<int64_t> i64(const std::string& name, const std::vector<int64_t>& expected_shape) const;

  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  // The metadata value for `key`; throws FormatError when it is absent.
  const std::string& metadata(const std::string& key) const;
  // The metadata value for `key` parsed as an integer; throws FormatError when absent or not
  // an integer.
  int64_t metadata_int(const std::string& key) const;

 private:
  const TensorInfo& checked(const std::string& name, DType dtype,
                            const std::vector<int64_t>& expected_shape) const;

  std::string source_;
  std::vector<uint8_t> bytes_;
  uint64_t data_start_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace mbpo_fast

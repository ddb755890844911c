// Writes small safetensors files from C++ tests (the library only reads them), so a test can
// hand Ensemble::load / Actor::load a model with known weights.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace mbpo_fast_test {

struct StTensor {
  std::string dtype;  // "F32" or "I64"
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

inline StTensor st_f32(std::vector<int64_t> shape, const std::vector<float>& v) {
  StTensor t{"F32", std::move(shape), std::vector<uint8_t>(v.size() * 4)};
  if (!v.empty()) std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
  return t;
}

inline StTensor st_i64(const std::vector<int64_t>& v) {
  StTensor t{"I64", {static_cast<int64_t>(v.size())}, std::vector<uint8_t>(v.size() * 8)};
  if (!v.empty()) std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
  return t;
}

// The bytes of a safetensors file: 8-byte little-endian header size, JSON header, data.
inline std::string safetensors_bytes(const std::map<std::string, StTensor>& tensors,
                                     const std::map<std::string, std::string>& meta) {
  std::string header = "{\"__metadata__\":{";
  bool first = true;
  for (const auto& [k, v] : meta) {
    header += (first ? "\"" : ",\"") + k + "\":\"" + v + "\"";
    first = false;
  }
  header += "}";
  std::string data;
  for (const auto& [name, t] : tensors) {
    header += ",\"" + name + "\":{\"dtype\":\"" + t.dtype + "\",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); ++i) header += (i ? "," : "") + std::to_string(t.shape[i]);
    header += "],\"data_offsets\":[" + std::to_string(data.size()) + "," +
              std::to_string(data.size() + t.bytes.size()) + "]}";
    data.append(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size());
  }
  header += "}";
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i)
    file[static_cast<size_t>(i)] = static_cast<char>(static_cast<uint64_t>(header.size()) >> (8 * i));
  return file + header + data;
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

inline void write_safetensors(const std::string& path, const std::map<std::string, StTensor>& tensors,
                              const std::map<std::string, std::string>& meta) {
  write_bytes(path, safetensors_bytes(tensors, meta));
}

}  // namespace mbpo_fast_test

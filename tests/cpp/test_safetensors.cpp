// The C++ safetensors reader: round trip of hand-built files, every truncation and
// corruption raises FormatError (never crashes), shape/dtype checks.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "harness.h"
#include "mbpo_fast/safetensors.h"

using namespace mbpo_fast;

namespace {

std::vector<uint8_t> build(const std::string& header, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> out(8);
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<uint8_t>(n >> (8 * i));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

std::vector<uint8_t> sample_file() {
  std::vector<float> w = {1.5f, -2.25f, 3.0f, 0.125f, -7.0f, 9.5f};
  std::vector<int64_t> e = {4, 0, 2};
  std::vector<uint8_t> data(w.size() * 4 + e.size() * 8);
  std::memcpy(data.data(), w.data(), w.size() * 4);
  std::memcpy(data.data() + w.size() * 4, e.data(), e.size() * 8);
  const std::string header =
      "{\"__metadata__\":{\"obs_dim\":\"11\",\"activation\":\"silu\",\"note\":\"a\\\"b\\u0041\"},"
      "\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
      "\"elites\":{\"dtype\":\"I64\",\"shape\":[3],\"data_offsets\":[24,48]}}   ";
  return build(header, data);
}

bool throws_format(const std::vector<uint8_t>& bytes) {
  try {
    SafetensorsFile::parse(bytes, "mem");
  } catch (const FormatError&) {
    return true;
  }
  return false;
}

}  // namespace

TEST_CASE("reads tensors and metadata") {
  const auto f = SafetensorsFile::parse(sample_file(), "mem");
  const auto w = f.f32("w", {2, 3});
  CHECK(w.size() == 6 && w[0] == 1.5f && w[5] == 9.5f);
  const auto e = f.i64("elites", {-1});
  CHECK(e.size() == 3 && e[0] == 4 && e[2] == 2);
  CHECK(f.metadata("activation") == "silu");
  CHECK(f.metadata_int("obs_dim") == 11);
  CHECK(f.metadata("note") == "a\"bA");
  CHECK(f.names().size() == 2);
}

TEST_CASE("shape, dtype and missing-name errors") {
  const auto f = SafetensorsFile::parse(sample_file(), "mem");
  CHECK_THROWS(f.f32("w", {3, 2}));
  CHECK_THROWS(f.f32("elites", {3}));
  CHECK_THROWS(f.f32("nope", {1}));
  CHECK_THROWS(f.metadata("missing"));
  CHECK_THROWS(f.metadata_int("activation"));
}

TEST_CASE("every truncation raises FormatError") {
  const auto full = sample_file();
  bool all = true;
  for (size_t cut = 0; cut < full.size(); ++cut) {
    std::vector<uint8_t> part(full.begin(), full.begin() + static_cast<long>(cut));
    all = all && throws_format(part);
  }
  CHECK(all);
}

TEST_CASE("corrupted bytes never crash") {
  const auto full = sample_file();
  int errors = 0;
  for (size_t i = 0; i < full.size(); ++i) {
    for (uint8_t flip : {0x01, 0x20, 0x80, 0xff}) {
      auto bad = full;
      bad[i] ^= flip;
      try {
        SafetensorsFile::parse(bad, "mem");
      } catch (const FormatError&) {
        ++errors;
      }
    }
  }
  CHECK(errors > 0);  // header corruption is detected; data-byte flips parse (no checksum in the format)
  auto trailing = full;
  trailing.push_back(0);
  CHECK(throws_format(trailing));
}

TEST_CASE("file I/O") {
  const std::string path = "test_safetensors_tmp.safetensors";
  const auto bytes = sample_file();
  {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  const auto f = SafetensorsFile::read(path);
  CHECK(f.f32("w", {2, 3})[1] == -2.25f);
  std::remove(path.c_str());
  bool io_error = false;
  try {
    SafetensorsFile::read("/nonexistent/dir/file.safetensors");
  } catch (const IoError&) {
    io_error = true;
  }
  CHECK(io_error);
}

MBPO_TEST_MAIN

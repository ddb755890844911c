// Fuzz target: SafetensorsFile::parse on arbitrary bytes, then every accessor on every
// tensor it accepted (the copies must stay inside the buffer).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fuzz_target.h"
#include "mbpo_fast/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  mbpo_fast_fuzz::expect_clean_rejection([&] {
    const auto f = mbpo_fast::SafetensorsFile::parse(std::vector<uint8_t>(data, data + size), "fuzz.safetensors");
    for (const auto& name : f.names()) {
      const auto& info = f.info(name);
      std::vector<int64_t> any(info.shape.size(), -1);
      if (info.dtype == mbpo_fast::DType::kF32) (void)f.f32(name, any);
      if (info.dtype == mbpo_fast::DType::kI64) (void)f.i64(name, any);
    }
    for (const auto& kv : f.metadata()) {
      try {
        (void)f.metadata_int(kv.first);
      } catch (const mbpo_fast::FormatError&) {
      }
    }
  });
  return 0;
}

// CPU fills of the shared Philox streams, threaded over elements.
#include "mbpo_fast/rng.h"

#include <string>

#include "mbpo_fast/parallel.h"

namespace mbpo_fast {

namespace {
constexpr int64_t kGrain = 1 << 14;
}

void philox_fill_u32(uint64_t seed, uint64_t stream, uint64_t offset, int64_t n, uint32_t* out) {
  require(n >= 0, "philox_fill_u32: n must be >= 0, got " + std::to_string(n));
  parallel_for(n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = random_u32(seed, stream, offset + i);
  });
}

void philox_fill_normal(uint64_t seed, uint64_t stream, uint64_t offset, int64_t n, float* out) {
  require(n >= 0, "philox_fill_normal: n must be >= 0, got " + std::to_string(n));
  parallel_for(n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = random_normal(seed, stream, offset + i);
  });
}

}  // namespace mbpo_fast

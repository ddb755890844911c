// Philox4x32-10 known answers, stream layout, normal statistics and the thread pool.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "mbpo_fast/parallel.h"
#include "harness.h"
#include "mbpo_fast/cuda.h"
#include "mbpo_fast/rng.h"

using namespace mbpo_fast;

TEST_CASE("philox4x32_10 matches the Random123 known-answer vectors") {
  const Philox4x32 a = philox4x32_10(0, 0, 0, 0, 0, 0);
  CHECK(a.v[0] == 0x6627e8d5u && a.v[1] == 0xe169c58du && a.v[2] == 0xbc57ac4cu && a.v[3] == 0x9b00dbd8u);
  const uint32_t f = 0xffffffffu;
  const Philox4x32 b = philox4x32_10(f, f, f, f, f, f);
  CHECK(b.v[0] == 0x408f276du && b.v[1] == 0x41c83b0eu && b.v[2] == 0xa20bc7c6u && b.v[3] == 0x6d5451fdu);
  const Philox4x32 c =
      philox4x32_10(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u);
  CHECK(c.v[0] == 0xd16cfe09u && c.v[1] == 0x94fdccebu && c.v[2] == 0x5001e420u && c.v[3] == 0x24126ea1u);
}

TEST_CASE("stream layout: element i is lane i%4 of block i/4") {
  const uint64_t seed = 0x0123456789abcdefull, stream = kStreamModelNoise + 7;
  for (uint64_t i = 0; i < 64; ++i) {
    const Philox4x32 blk = philox4x32_10(static_cast<uint32_t>(i / 4), 0, static_cast<uint32_t>(stream),
                                         static_cast<uint32_t>(stream >> 32),
                                         static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
    CHECK(random_u32(seed, stream, i) == blk.v[i % 4]);
  }
}

TEST_CASE("fills are independent of threading and offset") {
  std::vector<float> whole(100003), part(50000);
  set_num_threads(2);
  philox_fill_normal(42, kStreamUser, 0, static_cast<int64_t>(whole.size()), whole.data());
  set_num_threads(1);
  philox_fill_normal(42, kStreamUser, 50003, 50000, part.data());
  set_num_threads(2);
  bool same = true;
  for (size_t i = 0; i < part.size(); ++i) same = same && part[i] == whole[50003 + i];
  CHECK(same);
}

TEST_CASE("normal samples have mean 0 and variance 1") {
  const int64_t n = 1 << 20;
  std::vector<float> x(static_cast<size_t>(n));
  philox_fill_normal(7, kStreamUser, 0, n, x.data());
  double sum = 0, sq = 0;
  for (float v : x) { sum += v; sq += static_cast<double>(v) * v; }
  const double mean = sum / n, var = sq / n - mean * mean;
  CHECK_NEAR(mean, 0.0, 5.0 / std::sqrt(static_cast<double>(n)));
  CHECK_NEAR(var, 1.0, 5.0 * std::sqrt(2.0 / n));
  CHECK(std::all_of(x.begin(), x.end(), [](float v) { return std::isfinite(v); }));
}

TEST_CASE("bounded indices stay in range and cover it") {
  std::vector<int> counts(7, 0);
  for (uint64_t i = 0; i < 70000; ++i) {
    const uint32_t k = random_index(3, kStreamMemberChoice, i, 7);
    CHECK(k < 7);
    if (k < 7) ++counts[k];
  }
  for (int c : counts) CHECK(c > 9500 && c < 10500);
}

TEST_CASE("parallel_for covers every element once and rethrows") {
  std::vector<std::atomic<int>> hits(10007);
  for (auto& h : hits) h.store(0);
  parallel_for(10007, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)]++;
  });
  CHECK(std::all_of(hits.begin(), hits.end(), [](const std::atomic<int>& h) { return h.load() == 1; }));
  CHECK_THROWS(parallel_for(100, 1, [](int64_t b, int64_t) {
    if (b > 0) throw std::runtime_error("boom");
  }));
  CHECK_THROWS(set_num_threads(0));
}

TEST_CASE("CUDA entry points are consistent") {
  if (!cuda_compiled()) {
    CHECK(cuda_device_count() == 0);
    CHECK_THROWS(cuda_philox_fill_normal(0, 0, 0, 4, nullptr, nullptr));
  } else {
    CHECK(!cuda_architectures().empty());
    CHECK(cuda_device_count() >= 0);
  }
}

MBPO_TEST_MAIN

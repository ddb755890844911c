// C++ tests of the ReplayPool core (no Python): ring semantics, Philox sampling formula,
// resize, save/load round trip and corrupted files.
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "harness.h"
#include "mbpo_fast/crc32.h"
#include "mbpo_fast/replay_pool.h"
#include "mbpo_fast/rng.h"

using namespace mbpo_fast;

namespace {

constexpr int64_t kOd = 3, kAd = 2;

// Rows whose every value encodes the row id, so a gathered row identifies itself.
struct Rows {
  std::vector<float> obs, act, rew, next_obs;
  std::vector<uint8_t> term;
  explicit Rows(int64_t n, int64_t first_id = 0) {
    for (int64_t i = 0; i < n; ++i) {
      const float id = static_cast<float>(first_id + i);
      for (int64_t d = 0; d < kOd; ++d) obs.push_back(id + 0.125f * d);
      for (int64_t d = 0; d < kAd; ++d) act.push_back(-id - 0.25f * d);
      rew.push_back(id * 0.5f);
      for (int64_t d = 0; d < kOd; ++d) next_obs.push_back(id + 1000.0f + d);
      term.push_back(static_cast<uint8_t>((first_id + i) % 3 == 0));
    }
  }
  void add_to(ReplayPool& p) const {
    p.add_batch(obs.data(), act.data(), rew.data(), next_obs.data(), term.data(),
                static_cast<int64_t>(rew.size()));
  }
};

// Row ids (rew / 0.5) of every stored row, oldest first.
std::vector<int64_t> ids(const ReplayPool& p) {
  std::vector<float> obs(p.size() * kOd), act(p.size() * kAd), rew(p.size()), next(p.size() * kOd);
  std::vector<uint8_t> term(p.size());
  p.transitions(obs.data(), act.data(), rew.data(), next.data(), term.data());
  std::vector<int64_t> out;
  for (int64_t i = 0; i < p.size(); ++i) {
    const int64_t id = static_cast<int64_t>(rew[i] * 2.0f);
    CHECK(obs[i * kOd + 2] == static_cast<float>(id) + 0.25f);
    CHECK(act[i * kAd + 1] == -static_cast<float>(id) - 0.25f);
    CHECK(next[i * kOd] == static_cast<float>(id) + 1000.0f);
    CHECK(term[i] == (id % 3 == 0 ? 1 : 0));
    out.push_back(id);
  }
  return out;
}

std::vector<int64_t> range(int64_t a, int64_t b) {
  std::vector<int64_t> v;
  for (int64_t i = a; i < b; ++i) v.push_back(i);
  return v;
}

std::string temp_path(const char* name) { return std::string("/tmp/mbpo_fast_test_") + name; }

}  // namespace

TEST_CASE("add_batch wraps around and keeps the newest rows oldest-first") {
  for (int64_t b : {9, 10, 11, 23}) {  // cap-1, cap, cap+1, 2*cap+3
    ReplayPool p(10, kOd, kAd);
    Rows(4, 100).add_to(p);
    Rows(b, 0).add_to(p);
    const int64_t total = 4 + b;
    CHECK(p.size() == std::min<int64_t>(total, 10));
    CHECK(p.write_pos() == total % 10);
    std::vector<int64_t> expect;
    for (int64_t i = std::max<int64_t>(0, total - 10); i < total; ++i)
      expect.push_back(i < 4 ? 100 + i : i - 4);
    CHECK(ids(p) == expect);
  }
}

TEST_CASE("single add matches add_batch") {
  ReplayPool a(7, kOd, kAd), b(7, kOd, kAd);
  Rows rows(12);
  for (int64_t i = 0; i < 12; ++i) {
    a.add(&rows.obs[i * kOd], &rows.act[i * kAd], rows.rew[i], &rows.next_obs[i * kOd],
          rows.term[i] != 0);
  }
  rows.add_to(b);
  CHECK(ids(a) == ids(b));
  CHECK(a.write_pos() == b.write_pos());
}

TEST_CASE("sample follows the Philox formula over logical rows") {
  ReplayPool p(50, kOd, kAd, 1234);
  Rows(77).add_to(p);  // wrapped: logical row r is id 27 + r
  std::vector<float> obs(40 * kOd), act(40 * kAd), rew(40), next(40 * kOd);
  std::vector<uint8_t> term(40);
  p.sample(15, nullptr, nullptr, rew.data(), nullptr, nullptr);
  p.sample(25, obs.data(), act.data(), rew.data() + 15, next.data(), term.data());
  CHECK(p.rng_counter() == 40);
  for (int64_t k = 0; k < 40; ++k) {
    const int64_t row = random_index(1234, kStreamPoolSample, k, 50);
    CHECK(rew[k] == 0.5f * static_cast<float>(27 + row));
  }
  std::vector<int64_t> peek(5);
  p.peek_indices(5, peek.data());
  for (int64_t k = 0; k < 5; ++k)
    CHECK(peek[k] == random_index(1234, kStreamPoolSample, 40 + k, 50));
  CHECK(p.rng_counter() == 40);
}

TEST_CASE("invalid input throws and leaves the pool unchanged") {
  ReplayPool p(10, kOd, kAd);
  Rows rows(6);
  rows.add_to(p);
  Rows bad(4, 50);
  bad.next_obs[2 * kOd + 1] = std::nanf("");
  CHECK_THROWS(bad.add_to(p));
  bad = Rows(4, 50);
  bad.term[3] = 2;
  CHECK_THROWS(bad.add_to(p));
  CHECK(ids(p) == range(0, 6));
  CHECK(p.write_pos() == 6);
  CHECK_THROWS(ReplayPool(0, kOd, kAd));
  CHECK_THROWS(ReplayPool(5, 0, kAd));
  ReplayPool empty(5, kOd, kAd);
  float out[kOd];
  CHECK_THROWS(empty.sample_obs(1, out));
  int64_t row = 6;
  CHECK_THROWS(p.gather(&row, 1, out, nullptr, nullptr, nullptr, nullptr));
}

TEST_CASE("resize keeps the newest rows in order") {
  ReplayPool p(10, kOd, kAd, 7);
  Rows(14).add_to(p);  // ids 4..13
  p.resize(6);
  CHECK(ids(p) == range(8, 14));
  CHECK(p.capacity() == 6 && p.write_pos() == 0);
  p.resize(20);
  CHECK(ids(p) == range(8, 14));
  Rows(3, 14).add_to(p);
  CHECK(ids(p) == range(8, 17));
  CHECK(p.nbytes() == 20 * (4 * (2 * kOd + kAd + 1) + 1));
  float rew[3];
  p.copy_rows(6, 3, nullptr, nullptr, rew, nullptr, nullptr);  // logical rows 6..8 = ids 14..16
  CHECK(rew[0] == 7.0f && rew[2] == 8.0f);
  CHECK_THROWS(p.copy_rows(7, 3, nullptr, nullptr, rew, nullptr, nullptr));
  CHECK_THROWS(p.copy_rows(-1, 1, nullptr, nullptr, rew, nullptr, nullptr));
}

TEST_CASE("sample_mixed fills real rows first and advances each counter") {
  ReplayPool real(20, kOd, kAd, 1), model(30, kOd, kAd, 2);
  Rows(20, 0).add_to(real);
  Rows(30, 500).add_to(model);
  const int64_t bs = 10, k = 3;
  const int64_t n_real = mixed_real_rows(bs, 0.25);  // 2
  CHECK(n_real == 2);
  std::vector<float> rew(k * bs);
  sample_mixed(real, model, bs, 0.25, k, nullptr, nullptr, rew.data(), nullptr, nullptr);
  for (int64_t b = 0; b < k; ++b) {
    for (int64_t j = 0; j < bs; ++j) {
      const float got = rew[b * bs + j];
      const float want = j < n_real
                             ? 0.5f * random_index(1, kStreamPoolSample, b * n_real + j, 20)
                             : 0.5f * (500 + random_index(2, kStreamPoolSample,
                                                          b * (bs - n_real) + j - n_real, 30));
      CHECK(got == want);
    }
  }
  CHECK(real.rng_counter() == 6 && model.rng_counter() == 24);
  ReplayPool empty(5, kOd, kAd);
  CHECK_THROWS(
      sample_mixed(empty, model, bs, 0.25, 1, nullptr, nullptr, rew.data(), nullptr, nullptr));
  sample_mixed(empty, model, bs, 0.0, 1, nullptr, nullptr, rew.data(), nullptr, nullptr);
  CHECK_THROWS(
      sample_mixed(real, model, bs, 1.5, 1, nullptr, nullptr, rew.data(), nullptr, nullptr));
}

TEST_CASE("save/load round trip continues the same samples") {
  ReplayPool p(10, kOd, kAd, 99);
  Rows(13).add_to(p);
  float r[8];
  p.sample(8, nullptr, nullptr, r, nullptr, nullptr);
  const std::string path = temp_path("pool.bin");
  p.save(path);
  ReplayPool q = ReplayPool::load(path);
  CHECK(q.size() == p.size() && q.write_pos() == p.write_pos() && q.seed() == 99 &&
        q.rng_counter() == 8);
  CHECK(ids(q) == ids(p));
  float a[16], b[16];
  p.sample(16, nullptr, nullptr, a, nullptr, nullptr);
  q.sample(16, nullptr, nullptr, b, nullptr, nullptr);
  for (int i = 0; i < 16; ++i) CHECK(a[i] == b[i]);
  std::remove(path.c_str());
}

TEST_CASE("truncated, corrupted and foreign files throw FormatError") {
  ReplayPool p(10, kOd, kAd, 3);
  Rows(6).add_to(p);
  const std::string path = temp_path("pool_bad.bin");
  p.save(path);
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto expect_format_error = [&](const std::string& content) {
    {
      std::ofstream out(path, std::ios::binary | std::ios::trunc);
      out << content;
    }
    bool format_error = false;
    try {
      ReplayPool::load(path);
    } catch (const FormatError&) {
      format_error = true;
    }
    CHECK(format_error);
  };
  expect_format_error(bytes.substr(0, bytes.size() - 1));
  expect_format_error(bytes.substr(0, 40));
  expect_format_error(bytes + "x");
  for (size_t pos : {size_t{3}, size_t{20}, size_t{90}, bytes.size() - 2}) {
    std::string flipped = bytes;
    flipped[pos] ^= 0x10;
    expect_format_error(flipped);
  }
  std::remove(path.c_str());
  bool io_error = false;
  try {
    ReplayPool::load(temp_path("does_not_exist.bin"));
  } catch (const IoError&) {
    io_error = true;
  }
  CHECK(io_error);
}

TEST_CASE("crc32 matches the IEEE check value") {
  CHECK(crc32("123456789", 9) == 0xCBF43926u);
  CHECK(crc32("56789", 5, crc32("1234", 4)) == 0xCBF43926u);
}

MBPO_TEST_MAIN

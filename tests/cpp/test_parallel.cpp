// The thread pool (parallel_for) and concurrent callers of the const model APIs: results
// equal a serial reference, exceptions reach their caller, and concurrent regions from
// several threads (which run inline) neither deadlock nor race. Meant to run under
// ThreadSanitizer too (tools/sanitize.sh tsan).
#include <atomic>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#include "harness.h"
#include "mbpo_fast/actor.h"
#include "mbpo_fast/parallel.h"

using namespace mbpo_fast;

namespace {

// Sum of i * i over [0, n) computed through parallel_for into per-index slots.
std::vector<int64_t> squares(int64_t n, int64_t grain) {
  std::vector<int64_t> out(static_cast<size_t>(n), -1);
  parallel_for(n, grain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[static_cast<size_t>(i)] = i * i;
  });
  return out;
}

Actor random_actor(uint64_t seed) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::normal_distribution<float> nd(0.0f, 0.4f);
  const std::vector<int64_t> widths{6, 32, 32, 4};
  std::vector<std::vector<float>> ws, bs;
  for (size_t i = 0; i + 1 < widths.size(); ++i) {
    std::vector<float> w(static_cast<size_t>(widths[i] * widths[i + 1])), b(static_cast<size_t>(widths[i + 1]));
    for (auto& x : w) x = nd(rng);
    for (auto& x : b) x = nd(rng);
    ws.push_back(w);
    bs.push_back(b);
  }
  return Actor(6, 2, widths, ws, bs, {1.0f, 0.5f}, {0.0f, 0.1f});
}

}  // namespace

TEST_CASE("parallel_for covers every index exactly once, for any size, grain and thread count") {
  const int saved = num_threads();
  for (int threads : {1, 2, 3, 4}) {
    set_num_threads(threads);
    for (int64_t n : {0, 1, 7, 1000, 4097}) {
      for (int64_t grain : {1, 16, 5000}) {
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        parallel_for(n, grain, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
        });
        for (auto& h : hits) CHECK(h.load() == 1);
      }
    }
  }
  set_num_threads(saved);
}

TEST_CASE("an exception in a chunk reaches the caller; the pool stays usable") {
  const int saved = num_threads();
  set_num_threads(4);
  for (int round = 0; round < 20; ++round) {
    CHECK_THROWS(parallel_for(1000, 10, [&](int64_t b, int64_t e) {
      if (b <= 500 + round && 500 + round < e) throw std::runtime_error("chunk failed");
    }));
    const auto s = squares(1000, 10);
    for (int64_t i = 0; i < 1000; ++i) CHECK(s[static_cast<size_t>(i)] == i * i);
  }
  set_num_threads(saved);
}

TEST_CASE("concurrent and nested regions from several threads give serial results") {
  const int saved = num_threads();
  set_num_threads(3);
  std::atomic<int> bad{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([&, t] {
      for (int round = 0; round < 50; ++round) {
        const int64_t n = 500 + 37 * t + round;
        // nested: each chunk calls parallel_for again (runs inline)
        std::vector<int64_t> out(static_cast<size_t>(n), -1);
        parallel_for(n, 8, [&](int64_t b, int64_t e) {
          parallel_for(e - b, 4, [&](int64_t bb, int64_t ee) {
            for (int64_t i = b + bb; i < b + ee; ++i) out[static_cast<size_t>(i)] = i * i;
          });
        });
        for (int64_t i = 0; i < n; ++i) bad += out[static_cast<size_t>(i)] != i * i;
      }
    });
  }
  // set_num_threads while regions run: takes effect at the next region, never mid-way
  std::thread changer([] {
    for (int i = 0; i < 200; ++i) set_num_threads(1 + i % 4);
  });
  for (auto& c : callers) c.join();
  changer.join();
  CHECK(bad.load() == 0);
  set_num_threads(saved);
}

TEST_CASE("concurrent Actor::act calls on one actor equal serial calls") {
  const int saved = num_threads();
  set_num_threads(2);
  const Actor actor = random_actor(5);
  const int64_t B = 2000;  // large enough for the thread pool
  std::mt19937 rng(17);
  std::normal_distribution<float> nd;
  std::vector<float> obs(static_cast<size_t>(B * 6));
  for (auto& x : obs) x = nd(rng);
  std::vector<float> ref(static_cast<size_t>(B * 2)), ref_lp(static_cast<size_t>(B));
  actor.act(obs.data(), B, 42, 3, false, ref.data(), ref_lp.data());
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      std::vector<float> act(static_cast<size_t>(B * 2)), lp(static_cast<size_t>(B));
      for (int round = 0; round < 5; ++round) {
        actor.act(obs.data(), B, 42, 3, false, act.data(), lp.data());
        for (int64_t i = 0; i < B * 2; ++i) bad += act[static_cast<size_t>(i)] != ref[static_cast<size_t>(i)];
        for (int64_t i = 0; i < B; ++i) bad += lp[static_cast<size_t>(i)] != ref_lp[static_cast<size_t>(i)];
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(bad.load() == 0);
  set_num_threads(saved);
}

MBPO_TEST_MAIN

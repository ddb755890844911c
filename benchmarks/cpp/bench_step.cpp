// bench_step: latency of mbpo_fast::Ensemble::step called directly from C++ (no Python),
// for a model file written by EnsembleDynamics.save.
//
//   bench_step MODEL [--batch B[,B...]] [--reps N] [--warmup N]
//
// For each batch size: `warmup` untimed calls, then `reps` calls each timed alone with
// steady_clock (nothing else runs between them); prints one JSON object per batch size:
//   {"batch": B, "reps": N, "median_us": ..., "p10_us": ..., "p90_us": ..., "min_us": ...}
// Inputs are fixed random non-zero rows; every call uses a new seed (a new member draw and
// new noise), as a simulator stepping the model does. benchmarks/bench_cpp_step.py runs this
// beside the Python EnsembleDynamics.step on the same file.
#include <cstdint>
#include <cstdio>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_util.h"
#include "mbpo_fast/ensemble_model.h"

using mbpo_fast::bench::positive;

int main(int argc, char** argv) {
  try {
    if (argc < 2) throw std::invalid_argument("expected a MODEL path");
    std::vector<int64_t> batches{1, 32};
    int64_t reps = 20000, warmup = 2000;
    auto option = [&](const std::string& arg, const std::string& value) {
      if (arg != "--batch") return false;
      batches.clear();
      std::stringstream ss(value);
      for (std::string item; std::getline(ss, item, ',');) batches.push_back(positive("--batch", item));
      return true;
    };
    mbpo_fast::bench::parse_options(argc, argv, 2, reps, warmup, option);
    const mbpo_fast::Ensemble model = mbpo_fast::Ensemble::load(argv[1]);
    std::mt19937 gen(1);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (int64_t b : batches) {
      std::vector<float> obs(static_cast<size_t>(b * model.obs_dim())),
          act(static_cast<size_t>(b * model.act_dim()));
      for (auto& x : obs) x = normal(gen);
      for (auto& x : act) x = normal(gen);
      std::vector<float> next(obs.size()), rew(static_cast<size_t>(b));
      uint64_t seed = 0;
      const std::vector<double> us = mbpo_fast::bench::time_calls<std::micro>(
          warmup, reps, [] {},
          [&] { model.step(obs.data(), act.data(), b, seed++, false, nullptr, next.data(), rew.data()); });
      const mbpo_fast::bench::Summary t = mbpo_fast::bench::summarize(us);
      std::printf(
          "{\"batch\": %lld, \"reps\": %lld, \"median_us\": %.4f, \"p10_us\": %.4f, \"p90_us\": %.4f, "
          "\"min_us\": %.4f}\n",
          static_cast<long long>(b), static_cast<long long>(reps), t.median, t.p10, t.p90, t.min);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\nusage: %s MODEL [--batch B[,B...]] [--reps N] [--warmup N]\n", e.what(),
                 argv[0]);
    return 1;
  }
}

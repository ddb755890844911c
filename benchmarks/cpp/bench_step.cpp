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
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "mbpo_fast/ensemble_model.h"

namespace {

double percentile(std::vector<double> v, double q) {
  const size_t k = static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
  std::nth_element(v.begin(), v.begin() + static_cast<long>(k), v.end());
  return v[k];
}

int64_t positive(const std::string& name, const std::string& value) {
  size_t used = 0;
  int64_t v = 0;
  try {
    v = std::stoll(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != value.size() || v < 1)
    throw std::invalid_argument(name + ": expected an integer >= 1, got '" + value + "'");
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 2) throw std::invalid_argument("expected a MODEL path");
    std::vector<int64_t> batches{1, 32};
    int64_t reps = 20000, warmup = 2000;
    for (int i = 2; i < argc; i += 2) {
      const std::string arg = argv[i];
      if (i + 1 >= argc) throw std::invalid_argument(arg + ": expected a value after it");
      const std::string value = argv[i + 1];
      if (arg == "--batch") {
        batches.clear();
        std::stringstream ss(value);
        for (std::string item; std::getline(ss, item, ',');) batches.push_back(positive("--batch", item));
      } else if (arg == "--reps") {
        reps = positive(arg, value);
      } else if (arg == "--warmup") {
        warmup = positive(arg, value);
      } else {
        throw std::invalid_argument("unknown option " + arg);
      }
    }
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
      for (int64_t r = 0; r < warmup; ++r) {
        model.step(obs.data(), act.data(), b, seed++, false, nullptr, next.data(), rew.data());
      }
      std::vector<double> us(static_cast<size_t>(reps));
      for (int64_t r = 0; r < reps; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        model.step(obs.data(), act.data(), b, seed++, false, nullptr, next.data(), rew.data());
        const auto t1 = std::chrono::steady_clock::now();
        us[static_cast<size_t>(r)] = std::chrono::duration<double, std::micro>(t1 - t0).count();
      }
      std::printf(
          "{\"batch\": %lld, \"reps\": %lld, \"median_us\": %.4f, \"p10_us\": %.4f, \"p90_us\": %.4f, "
          "\"min_us\": %.4f}\n",
          static_cast<long long>(b), static_cast<long long>(reps), percentile(us, 0.5), percentile(us, 0.1),
          percentile(us, 0.9), *std::min_element(us.begin(), us.end()));
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\nusage: %s MODEL [--batch B[,B...]] [--reps N] [--warmup N]\n", e.what(),
                 argv[0]);
    return 1;
  }
}

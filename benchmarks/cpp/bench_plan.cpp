// bench_plan: latency of mbpo_fast::Planner::plan called directly from C++ (no Python), for a
// model file written by EnsembleDynamics.save, with the built-in reward and termination of
// an env id.
//
//   bench_plan MODEL ENV_ID [--optimizer cem|random] [--population N] [--elites N]
//              [--iterations N] [--horizon N] [--particles N] [--propagation ts_inf|ts_1]
//              [--reps N] [--warmup N]
//
// `warmup` untimed plans, then `reps` plans each timed alone (steady_clock); every call is a
// new plan (the call counter moves, the warm start shifts), from fixed random observations.
// Prints one JSON object: {"reps": N, "median_ms": ..., "p10_ms": ..., "p90_ms": ...,
// "min_ms": ...}. benchmarks/bench_planner.py runs this beside MPC.plan from Python.
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_util.h"
#include "mbpo_fast/planner.h"

using mbpo_fast::bench::positive;

int main(int argc, char** argv) {
  try {
    if (argc < 3) throw std::invalid_argument("expected a MODEL path and an ENV_ID");
    mbpo_fast::PlannerConfig cfg;
    int64_t reps = 50, warmup = 5;
    auto option = [&](const std::string& arg, const std::string& value) {
      if (arg == "--optimizer") {
        if (value != "cem" && value != "random") throw std::invalid_argument("--optimizer: cem or random");
        cfg.optimizer = value == "cem" ? mbpo_fast::PlanOptimizer::kCem : mbpo_fast::PlanOptimizer::kRandom;
      } else if (arg == "--propagation") {
        if (value != "ts_inf" && value != "ts_1") throw std::invalid_argument("--propagation: ts_inf or ts_1");
        cfg.propagation = value == "ts_inf" ? mbpo_fast::Propagation::kTsInf : mbpo_fast::Propagation::kTs1;
      } else if (arg == "--population") {
        cfg.population = positive(arg, value);
      } else if (arg == "--elites") {
        cfg.elites = positive(arg, value);
      } else if (arg == "--iterations") {
        cfg.iterations = positive(arg, value);
      } else if (arg == "--horizon") {
        cfg.horizon = positive(arg, value);
      } else if (arg == "--particles") {
        cfg.particles = positive(arg, value);
      } else {
        return false;
      }
      return true;
    };
    mbpo_fast::bench::parse_options(argc, argv, 3, reps, warmup, option);
    auto model = std::make_shared<const mbpo_fast::Ensemble>(mbpo_fast::Ensemble::load(argv[1]));
    cfg.action_low.assign(static_cast<size_t>(model->act_dim()), -1.0f);
    cfg.action_high.assign(static_cast<size_t>(model->act_dim()), 1.0f);
    mbpo_fast::Planner planner(model, cfg, argv[2], /*seed=*/1);
    std::mt19937 gen(1);
    std::normal_distribution<float> normal(0.0f, 0.1f);
    std::vector<float> obs(static_cast<size_t>(model->obs_dim())), action(static_cast<size_t>(model->act_dim()));
    auto draw = [&] {
      for (auto& x : obs) x = normal(gen);
      obs[0] += 1.25f;  // a healthy Hopper height (for Hopper's termination)
    };
    const std::vector<double> ms = mbpo_fast::bench::time_calls<std::milli>(
        warmup, reps, draw, [&] { planner.plan(obs.data(), action.data()); });
    const mbpo_fast::bench::Summary t = mbpo_fast::bench::summarize(ms);
    std::printf("{\"reps\": %lld, \"median_ms\": %.4f, \"p10_ms\": %.4f, \"p90_ms\": %.4f, \"min_ms\": %.4f}\n",
                static_cast<long long>(reps), t.median, t.p10, t.p90, t.min);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr,
                 "error: %s\nusage: %s MODEL ENV_ID [--optimizer cem|random] [--population N] [--elites N] "
                 "[--iterations N] [--horizon N] [--particles N] [--propagation ts_inf|ts_1] [--reps N] "
                 "[--warmup N]\n",
                 e.what(), argv[0]);
    return 1;
  }
}

// pendulum_mpc: a C++ controller that plans with a learned ensemble at every simulator step
// (PETS-style MPC, mbpo_fast::Planner), no Python anywhere.
//
//   pendulum_mpc MODEL [--episodes N] [--seed S] [--optimizer cem|random] [--population N]
//                [--elites N] [--iterations N] [--horizon N] [--particles N]
//                [--propagation ts_inf|ts_1]
//
// MODEL: a Pendulum-v1 ensemble saved by EnsembleDynamics.save (e.g. the model.safetensors in a
// checkpoint of `mbpo-fast pets --env Pendulum-v1`, or pendulum_train --save-model). The planner
// uses the built-in Pendulum-v1 reward (reward.h); the simulator is examples/cpp/pendulum.h.
// Each 200-step episode prints one JSON line:
//   {"episode": i, "return": ..., "plan_ms_median": ..., "plan_ms_p90": ..., "plan_ms_max": ...}
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "args.h"
#include "mbpo_fast/planner.h"
#include "pendulum.h"

namespace {

using example::count;

constexpr int64_t kEpisodeSteps = 200;

double percentile(std::vector<double> v, double q) {
  const size_t k = static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
  std::nth_element(v.begin(), v.begin() + static_cast<long>(k), v.end());
  return v[k];
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 2) throw std::invalid_argument("expected a MODEL path");
    mbpo_fast::PlannerConfig cfg;  // PETS defaults: CEM 500 x 5, 50 elites, horizon 30, 20 particles
    cfg.action_low = {-2.0f};
    cfg.action_high = {2.0f};
    int64_t episodes = 1;
    uint64_t seed = 0;
    for (int i = 2; i < argc; i += 2) {
      const std::string arg = argv[i];
      if (i + 1 >= argc) throw std::invalid_argument(arg + ": expected a value after it");
      const std::string value = argv[i + 1];
      if (arg == "--episodes") episodes = count(arg, value, 1);
      else if (arg == "--seed") seed = static_cast<uint64_t>(count(arg, value, 0));
      else if (arg == "--population") cfg.population = count(arg, value, 1);
      else if (arg == "--elites") cfg.elites = count(arg, value, 1);
      else if (arg == "--iterations") cfg.iterations = count(arg, value, 1);
      else if (arg == "--horizon") cfg.horizon = count(arg, value, 1);
      else if (arg == "--particles") cfg.particles = count(arg, value, 1);
      else if (arg == "--optimizer" && (value == "cem" || value == "random"))
        cfg.optimizer = value == "cem" ? mbpo_fast::PlanOptimizer::kCem : mbpo_fast::PlanOptimizer::kRandom;
      else if (arg == "--propagation" && (value == "ts_inf" || value == "ts_1"))
        cfg.propagation = value == "ts_inf" ? mbpo_fast::Propagation::kTsInf : mbpo_fast::Propagation::kTs1;
      else throw std::invalid_argument("unknown option or value: " + arg + " " + value);
    }
    auto model = std::make_shared<const mbpo_fast::Ensemble>(mbpo_fast::Ensemble::load(argv[1]));
    // Built-in reward and termination of Pendulum-v1 (the constructor checks the model's dims).
    mbpo_fast::Planner planner(model, cfg, "Pendulum-v1", seed);
    example::Pendulum sim;
    for (int64_t ep = 0; ep < episodes; ++ep) {
      sim.reset(seed, static_cast<uint64_t>(ep));
      planner.reset();
      double ret = 0.0;
      std::vector<double> ms;
      float obs[3], action[1];
      for (int64_t t = 0; t < kEpisodeSteps; ++t) {
        sim.observe(obs);
        const auto t0 = std::chrono::steady_clock::now();
        planner.plan(obs, action);
        ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
        ret += sim.step(action[0]);
      }
      std::printf("{\"episode\": %lld, \"return\": %.3f, \"plan_ms_median\": %.3f, \"plan_ms_p90\": %.3f, "
                  "\"plan_ms_max\": %.3f}\n",
                  static_cast<long long>(ep), ret, percentile(ms, 0.5), percentile(ms, 0.9),
                  *std::max_element(ms.begin(), ms.end()));
      std::fflush(stdout);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}

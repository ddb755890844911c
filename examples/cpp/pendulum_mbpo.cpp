// pendulum_mbpo: a C++ simulator that embeds mbpo_fast with no Python.
//
// 1. loads a learned dynamics model (EnsembleDynamics.save -> model.safetensors) and a SAC
//    actor (SAC.export_actor -> actor.safetensors);
// 2. runs episodes of a pendulum simulated here in C++ (gymnasium Pendulum-v1 dynamics)
//    with the actor choosing the torques, filling a "real" ReplayPool;
// 3. runs MBPO branched rollouts of the model from those simulator states into a model pool
//    and prints statistics (rows added, mean length, ensemble disagreement, step latency).
//
//   pendulum_mbpo MODEL ACTOR [--episodes N] [--episode-steps T] [--num-starts N]
//                 [--horizon H] [--seed S] [--dump DIR]
//
// --dump DIR also writes machine-readable outputs so that a test can compare them with the
// Python API for the same files and seed (tests/test_example_cpp.py):
//   real_pool.bin, model_pool.bin   ReplayPool::save files (mf.ReplayPool.load reads them)
//   step_next_obs.f32, step_reward.f32, step_members.i64
//                                   model.step(real obs, real act, seed=S) on every real row
//   actor_deterministic.f32, actor_stochastic.f32
//                                   the actor on every real obs (stochastic: seed S, offset 0)
//   stats.json                      the rollout statistics
// Raw arrays are little-endian, row-major, no header (numpy.fromfile reads them).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "args.h"
#include "mbpo_fast/actor.h"
#include "mbpo_fast/branched_rollout.h"
#include "mbpo_fast/ensemble_model.h"
#include "mbpo_fast/replay_pool.h"
#include "mbpo_fast/rng.h"
#include "pendulum.h"

namespace {

using example::Pendulum;

struct Options {
  std::string model_path, actor_path, dump_dir;
  int64_t episodes = 4, episode_steps = 200, num_starts = 1000, horizon = 5;
  uint64_t seed = 0;
};

Options parse(int argc, char** argv) {
  Options o;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      positional.push_back(arg);
      continue;
    }
    if (i + 1 >= argc) throw std::invalid_argument(arg + ": expected a value after it");
    const std::string value = argv[++i];
    auto count = [&](int64_t min) { return example::count(arg, value, min); };
    if (arg == "--episodes")
      o.episodes = count(1);
    else if (arg == "--episode-steps")
      o.episode_steps = count(1);
    else if (arg == "--num-starts")
      o.num_starts = count(1);
    else if (arg == "--horizon")
      o.horizon = count(1);
    else if (arg == "--seed")
      o.seed = static_cast<uint64_t>(count(0));
    else if (arg == "--dump")
      o.dump_dir = value;
    else
      throw std::invalid_argument("unknown option " + arg);
  }
  if (positional.size() != 2) {
    throw std::invalid_argument("expected MODEL and ACTOR paths, got " + std::to_string(positional.size()) +
                                " positional arguments");
  }
  o.model_path = positional[0];
  o.actor_path = positional[1];
  return o;
}

template <typename T>
void write_raw(const std::string& path, const std::vector<T>& v) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(T)));
  if (!out) throw std::runtime_error("cannot write " + path);
}

// Median wall time in microseconds of `reps` single-row model steps (one row: the
// latency a simulator sees when it queries the model once per control tick).
double step_latency_us(const mbpo_fast::Ensemble& model, const float* obs, const float* act, int reps) {
  std::vector<double> us(static_cast<size_t>(reps));
  float next[3], rew;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    model.step(obs, act, 1, static_cast<uint64_t>(r), false, nullptr, next, &rew);
    us[static_cast<size_t>(r)] =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  }
  std::nth_element(us.begin(), us.begin() + reps / 2, us.end());
  return us[static_cast<size_t>(reps / 2)];
}

int run(const Options& o) {
  // Shared ownership: BranchedRollout keeps both alive; both are immutable and thread-safe.
  auto model = std::make_shared<const mbpo_fast::Ensemble>(mbpo_fast::Ensemble::load(o.model_path));
  auto actor = std::make_shared<const mbpo_fast::Actor>(mbpo_fast::Actor::load(o.actor_path));
  if (model->obs_dim() != 3 || model->act_dim() != 1) {
    throw std::invalid_argument("model: expected a Pendulum model (obs_dim 3, act_dim 1), got obs_dim " +
                                std::to_string(model->obs_dim()) + ", act_dim " +
                                std::to_string(model->act_dim()));
  }

  // --- simulator episodes with the actor's stochastic policy fill the real pool.
  // Noise of step k: Philox (seed, policy stream, offset k * act_dim), so runs are reproducible.
  mbpo_fast::ReplayPool real(o.episodes * o.episode_steps, 3, 1, o.seed);
  Pendulum env;
  double episode_return = 0.0;
  for (int64_t ep = 0; ep < o.episodes; ++ep) {
    env.reset(o.seed, static_cast<uint64_t>(ep));
    float obs[3], next[3], act[1];
    env.observe(obs);
    for (int64_t t = 0; t < o.episode_steps; ++t) {
      const uint64_t k = static_cast<uint64_t>(ep * o.episode_steps + t);
      actor->act(obs, 1, o.seed, k, /*deterministic=*/false, act);
      const float rew = static_cast<float>(env.step(act[0]));
      env.observe(next);
      real.add(obs, act, rew, next, /*terminated=*/false);  // time limits truncate, never terminate
      episode_return += rew;
      std::memcpy(obs, next, sizeof obs);
    }
  }

  // --- branched rollouts of the model from the simulator's states.
  const mbpo_fast::BranchedRollout rollout(model, actor, "Pendulum-v1");  // never terminates
  mbpo_fast::ReplayPool model_pool(o.num_starts * o.horizon, 3, 1, o.seed);
  const mbpo_fast::RolloutStats st = rollout.run(real, model_pool, o.num_starts, o.horizon, o.seed);

  // --- one-step model error against the simulator on the real transitions (mean |Δ|).
  const int64_t n = real.size();
  std::vector<float> obs(static_cast<size_t>(n * 3)), act(static_cast<size_t>(n)),
      rew(static_cast<size_t>(n)), sim_next(static_cast<size_t>(n * 3));
  real.transitions(obs.data(), act.data(), rew.data(), sim_next.data(), nullptr);
  std::vector<float> pred_next(obs.size()), pred_rew(rew.size());
  model->step(obs.data(), act.data(), n, o.seed, /*deterministic=*/true, nullptr, pred_next.data(),
              pred_rew.data());
  double obs_err = 0.0;
  for (size_t i = 0; i < obs.size(); ++i) obs_err += std::fabs(pred_next[i] - sim_next[i]);

  std::printf("model: %s (ensemble %lld, elites %zu)   actor: %s\n", o.model_path.c_str(),
              static_cast<long long>(model->ensemble_size()), model->elites().size(), o.actor_path.c_str());
  std::printf("simulator: %lld episodes x %lld steps, mean return %.2f\n", static_cast<long long>(o.episodes),
              static_cast<long long>(o.episode_steps), episode_return / static_cast<double>(o.episodes));
  std::printf("model one-step |next_obs error| (deterministic): %.4f\n",
              obs_err / static_cast<double>(obs.size()));
  std::printf(
      "rollout: %lld starts x horizon %lld -> rows added %lld, mean length %.3f, terminated %.3f, "
      "non-finite %lld, mean disagreement %.5f, %.2f ms\n",
      static_cast<long long>(st.num_starts), static_cast<long long>(o.horizon),
      static_cast<long long>(st.rows_added), st.mean_length, st.frac_terminated,
      static_cast<long long>(st.nonfinite), st.mean_disagreement, st.seconds * 1e3);
  std::printf("Ensemble::step latency, 1 row: %.2f us (median of 2000)\n",
              step_latency_us(*model, obs.data(), act.data(), 2000));

  if (!o.dump_dir.empty()) {
    const std::string d = o.dump_dir + "/";
    real.save(d + "real_pool.bin");
    model_pool.save(d + "model_pool.bin");
    std::vector<float> next(obs.size()), r(rew.size()), det(act.size()), sto(act.size());
    std::vector<int64_t> members(static_cast<size_t>(n));
    // The span-style overload: sizes come from the vectors (batch = r.size()) and are checked.
    model->step(obs, act, o.seed, /*deterministic=*/false, next, r, /*members=*/{}, members);
    actor->act(obs.data(), n, o.seed, 0, /*deterministic=*/true, det.data());
    actor->act(obs.data(), n, o.seed, 0, /*deterministic=*/false, sto.data());
    write_raw(d + "step_next_obs.f32", next);
    write_raw(d + "step_reward.f32", r);
    write_raw(d + "step_members.i64", members);
    write_raw(d + "actor_deterministic.f32", det);
    write_raw(d + "actor_stochastic.f32", sto);
    std::ofstream json(d + "stats.json");
    json << "{\"num_starts\": " << st.num_starts << ", \"rows_added\": " << st.rows_added
         << ", \"num_terminated\": " << st.num_terminated << ", \"nonfinite\": " << st.nonfinite
         << ", \"steps_run\": " << st.steps_run << ", \"mean_length\": " << st.mean_length
         << ", \"disagreement_rows\": " << st.disagreement_rows << ", \"mean_disagreement\": ";
    json.precision(17);
    if (std::isnan(st.mean_disagreement))
      json << "NaN}\n";  // Python's json reads NaN
    else
      json << st.mean_disagreement << "}\n";
    if (!json) throw std::runtime_error("cannot write " + d + "stats.json");
    std::printf("wrote %s\n", o.dump_dir.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    o = parse(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr,
                 "error: %s\nusage: %s MODEL ACTOR [--episodes N] [--episode-steps T] [--num-starts N] "
                 "[--horizon H] [--seed S] [--dump DIR]\n",
                 e.what(), argv[0]);
    return 2;
  }
  try {
    return run(o);
  } catch (const std::exception& e) {  // mbpo_fast throws IoError/FormatError/InvalidArgument
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}

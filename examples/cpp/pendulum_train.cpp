// pendulum_train: the whole MBPO loop in C++, no Python anywhere — a simulator that trains
// its own dynamics model and SAC policy in-process.
//
// Per real step (MBPOConfig()'s quick Pendulum-v1 setting, DESIGN §4):
//   * every --model-every steps after the random phase: fit the ensemble on the whole real
//     pool (mbpo_fast::EnsembleTrainer::fit: holdout, normalizer, bootstrap, early stopping,
//     elites), set the rollout length from the schedule (epochs counted from the end of the
//     random phase), resize the model pool, and run --rollouts branched rollouts into it
//     (mbpo_fast::branched_rollout with the learner's live actor and the trained model);
//   * one simulator step with the stochastic policy (uniform random actions during the first
//     --random-steps steps); 200-step episodes end by truncation (never terminal);
//   * --updates SAC updates (mbpo_fast::SacLearner::update_block) on batches of 256 with 5 %
//     real and 95 % model rows (mbpo_fast::sample_mixed).
// Every --eval-every steps: 5 deterministic episodes; one JSON line per evaluation on stdout:
//   {"step": ..., "eval_return": ..., "model_holdout_mse": ..., "model_epochs": ...,
//    "rollout_length": ..., "critic_loss": ..., "alpha": ..., "seconds": ...}
//
//   pendulum_train [--steps N] [--seed S] [--random-steps N] [--model-every N] [--updates K]
//                  [--rollouts N] [--eval-every N] [--model-max-epochs N] [--bf16]
//                  [--save-model PATH]
//
// --save-model writes the fitted ensemble in the DESIGN §3 safetensors layout at the end
// (mbpo_fast.EnsembleDynamics.load and mbpo_fast::Ensemble::load read it).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "args.h"
#include "mbpo_fast/actor.h"
#include "mbpo_fast/ensemble_trainer.h"
#include "mbpo_fast/replay_pool.h"
#include "mbpo_fast/rng.h"
#include "mbpo_fast/rollout.h"
#include "mbpo_fast/sac_learner.h"
#include "pendulum.h"

namespace {

using example::Pendulum;

constexpr int64_t kObsDim = 3, kActDim = 1, kEpisodeSteps = 200, kBatch = 256;
constexpr int64_t kEpochLength = 200, kRetainEpochs = 5, kEvalEpisodes = 5;
constexpr double kRealRatio = 0.05;
constexpr int64_t kSchedule[4] = {2, 10, 1, 5};  // (e0, e1, k0, k1), as MBPOConfig()

struct Options {
  int64_t steps = 5000, random_steps = 400, model_every = 200, updates = 10, rollouts = 4000;
  int64_t eval_every = 1000;
  int64_t model_max_epochs = 0;  // 0: early stopping only (MBPO)
  uint64_t seed = 0;
  bool bf16 = false;
  std::string save_model;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--bf16") {
      o.bf16 = true;
      continue;
    }
    if (i + 1 >= argc) throw std::invalid_argument(arg + ": expected a value after it");
    const std::string value = argv[++i];
    if (arg == "--save-model") {
      o.save_model = value;
      continue;
    }
    const bool may_be_zero = arg == "--seed" || arg == "--random-steps";
    const int64_t v = example::count(arg, value, may_be_zero ? 0 : 1);
    if (arg == "--steps") o.steps = v;
    else if (arg == "--seed") o.seed = static_cast<uint64_t>(v);
    else if (arg == "--random-steps") o.random_steps = v;
    else if (arg == "--model-every") o.model_every = v;
    else if (arg == "--updates") o.updates = v;
    else if (arg == "--rollouts") o.rollouts = v;
    else if (arg == "--eval-every") o.eval_every = v;
    else if (arg == "--model-max-epochs") o.model_max_epochs = v;
    else throw std::invalid_argument("unknown option " + arg);
  }
  return o;
}

// MBPOConfig.rollout_length: k0 up to epoch e0, k1 from e1, linear (truncated) in between.
int64_t rollout_length(int64_t epoch) {
  const auto [e0, e1, k0, k1] = kSchedule;
  if (epoch <= e0) return k0;
  if (epoch >= e1) return k1;
  const double y = k0 + static_cast<double>(epoch - e0) / static_cast<double>(e1 - e0) * (k1 - k0);
  return std::max<int64_t>(1, static_cast<int64_t>(y));
}

// Mean undiscounted return of deterministic episodes (their own reset seeds).
double evaluate(const mbpo_fast::ActorView& actor, uint64_t seed, uint64_t evaluation) {
  Pendulum env;
  double total = 0.0;
  float obs[kObsDim], act[kActDim];
  for (int64_t ep = 0; ep < kEvalEpisodes; ++ep) {
    env.reset(seed ^ 0x5eed0000ull, evaluation * kEvalEpisodes + ep);
    for (int64_t t = 0; t < kEpisodeSteps; ++t) {
      env.observe(obs);
      mbpo_fast::actor_act(actor, obs, 1, 0, 0, /*deterministic=*/true, act, nullptr);
      total += env.step(act[0]);
    }
  }
  return total / kEvalEpisodes;
}

// A JSON number, or null for NaN/Inf (JSON has no NaN).
std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.6g", v);
  return buf;
}

struct Batch {
  std::vector<float> obs, act, rew, next_obs;
  std::vector<uint8_t> term;
  explicit Batch(int64_t rows)
      : obs(rows * kObsDim), act(rows * kActDim), rew(rows), next_obs(rows * kObsDim), term(rows) {}
};

int run(const Options& o) {
  using Clock = std::chrono::steady_clock;
  const auto t_start = Clock::now();

  mbpo_fast::SacConfig sac_config = mbpo_fast::SacConfig::for_action_box(
      kObsDim, std::vector<double>{-Pendulum::kMaxTorque}, std::vector<double>{Pendulum::kMaxTorque});
  mbpo_fast::EnsembleTrainerConfig model_config;
  model_config.obs_dim = kObsDim;
  model_config.act_dim = kActDim;
  if (o.bf16) {
    sac_config.precision = mbpo_fast::MatmulPrecision::kBf16;
    model_config.precision = mbpo_fast::MatmulPrecision::kBf16;
  }
  mbpo_fast::SacLearner learner = mbpo_fast::SacLearner::create(sac_config, o.seed);
  mbpo_fast::EnsembleTrainer model(model_config, o.seed + 1, /*num_elites=*/5);

  mbpo_fast::ReplayPool real(o.steps, kObsDim, kActDim, o.seed);
  const int64_t fits_per_epoch = std::max<int64_t>(1, kEpochLength / o.model_every);
  auto pool_capacity = [&](int64_t length) { return o.rollouts * length * fits_per_epoch * kRetainEpochs; };
  int64_t length = rollout_length(0);
  mbpo_fast::ReplayPool model_pool(pool_capacity(length), kObsDim, kActDim, o.seed + 2);

  Pendulum env;
  uint64_t episode = 0;
  env.reset(o.seed, episode);
  float obs[kObsDim], act[kActDim], next_obs[kObsDim];
  env.observe(obs);
  int64_t episode_t = 0;

  Batch batch(o.updates * kBatch);
  std::vector<mbpo_fast::SacStats> stats(o.updates);
  mbpo_fast::EnsembleFitResult last_fit;
  std::vector<float> all_obs, all_act, all_rew, all_next;
  uint64_t evaluations = 0;

  for (int64_t step = 0; step < o.steps; ++step) {
    const bool random_phase = step < o.random_steps;
    if (!random_phase && (step - o.random_steps) % o.model_every == 0) {
      const int64_t n = real.size();
      all_obs.resize(n * kObsDim);
      all_act.resize(n * kActDim);
      all_rew.resize(n);
      all_next.resize(n * kObsDim);
      real.transitions(all_obs.data(), all_act.data(), all_rew.data(), all_next.data(), nullptr);
      mbpo_fast::EnsembleFitOptions fit;
      fit.seed = o.seed * 1000003ull + static_cast<uint64_t>(step);
      fit.max_epochs = o.model_max_epochs;
      last_fit = model.fit(all_obs.data(), all_act.data(), all_rew.data(), all_next.data(), n, fit);
      length = rollout_length((step - o.random_steps) / kEpochLength);
      if (pool_capacity(length) != model_pool.capacity()) model_pool.resize(pool_capacity(length));
      mbpo_fast::branched_rollout(learner.actor_view(), model.view(), mbpo_fast::TerminationId::kPendulum, real,
                                  model_pool, o.rollouts, length, o.seed * 7919ull + static_cast<uint64_t>(step));
    }

    if (random_phase) {  // uniform in the torque box, from Philox
      const double u = mbpo_fast::u32_to_unit(mbpo_fast::random_u32(o.seed, mbpo_fast::kStreamUser, step));
      act[0] = static_cast<float>(Pendulum::kMaxTorque * (2.0 * u - 1.0));
    } else {
      mbpo_fast::actor_act(learner.actor_view(), obs, 1, o.seed + 3, static_cast<uint64_t>(step) * kActDim,
                           /*deterministic=*/false, act, nullptr);
    }
    const float reward = static_cast<float>(env.step(act[0]));
    env.observe(next_obs);
    real.add(obs, act, reward, next_obs, /*terminated=*/false);  // Pendulum never terminates
    std::copy(next_obs, next_obs + kObsDim, obs);
    if (++episode_t == kEpisodeSteps) {  // time limit: a truncation, not a terminal
      env.reset(o.seed, ++episode);
      env.observe(obs);
      episode_t = 0;
    }

    if (!random_phase) {
      mbpo_fast::ReplayPool& model_rows = model_pool.size() > 0 ? model_pool : real;
      mbpo_fast::sample_mixed(real, model_rows, kBatch, kRealRatio, o.updates, batch.obs.data(), batch.act.data(),
                              batch.rew.data(), batch.next_obs.data(), batch.term.data());
      learner.update_block(o.updates, kBatch, batch.obs.data(), batch.act.data(), batch.rew.data(),
                           batch.next_obs.data(), batch.term.data(), /*eps=*/nullptr, stats.data());
    }

    if ((step + 1) % o.eval_every == 0 || step + 1 == o.steps) {
      const double ret = evaluate(learner.actor_view(), o.seed, evaluations++);
      double mse = 0.0;
      for (int64_t e : last_fit.elites) mse += last_fit.holdout_mse[e];
      mse = last_fit.elites.empty() ? NAN : mse / static_cast<double>(last_fit.elites.size());
      const double secs = std::chrono::duration<double>(Clock::now() - t_start).count();
      const mbpo_fast::SacStats& s = stats.back();
      std::printf("{\"step\": %lld, \"eval_return\": %s, \"model_holdout_mse\": %s, \"model_epochs\": %lld, "
                  "\"rollout_length\": %lld, \"model_pool\": %lld, \"critic_loss\": %s, \"alpha\": %s, "
                  "\"seconds\": %.2f}\n",
                  static_cast<long long>(step + 1), json_number(ret).c_str(), json_number(mse).c_str(),
                  static_cast<long long>(last_fit.epochs), static_cast<long long>(length),
                  static_cast<long long>(model_pool.size()), json_number(random_phase ? NAN : s.critic_loss).c_str(),
                  json_number(random_phase ? NAN : s.alpha).c_str(), secs);
      std::fflush(stdout);
    }
  }
  if (!o.save_model.empty()) model.save(o.save_model);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pendulum_train: error: %s\n", e.what());
    return 2;
  }
}

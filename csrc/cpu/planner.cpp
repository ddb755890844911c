// CPU implementation of the MPC planner (planner.h).
//
// Every particle of every candidate is one row of ONE fused ensemble step per horizon step
// (R = population * particles rows: the tiled, threaded kernel of ensemble.cpp, which runs
// only the member each row uses). Between steps the planner computes rewards and
// terminations over the rows in place; nothing is allocated per step.
#include "mbpo_fast/planner.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "mbpo_fast/parallel.h"
#include "mbpo_fast/rng.h"

namespace mbpo_fast {

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();
// Bound on population * particles (rows of one step): keeps every index below 2^31.
constexpr int64_t kMaxPlanRows = int64_t{1} << 31;

bool row_finite(const float* x, int64_t n) {
  bool ok = true;
  for (int64_t j = 0; j < n; ++j) ok &= std::isfinite(x[j]);
  return ok;
}

void require_finite_values(const float* x, int64_t n, const char* name) {
  for (int64_t i = 0; i < n; ++i) {
    require(std::isfinite(x[i]), std::string(name) + ": contains a non-finite value (NaN or Inf) at flat index " +
                                     std::to_string(i));
  }
}

// Per-row state of one evaluation.
enum RowState : uint8_t { kAlive = 0, kTerminated = 1, kFailed = 2 };

struct Workspace {
  std::vector<float> obs, next, act, rew_model, rew;
  std::vector<uint8_t> term, state;
  std::vector<double> ret;
  std::vector<int64_t> members, used;
};

// plan_evaluate without validation; returns the number of failed rows.
int64_t evaluate(const EnsembleView& model, const PlanObjective& objective, const float* obs0, const float* actions,
                 int64_t N, int64_t H, int64_t P, Propagation propagation, uint64_t seed, double* values,
                 int64_t* members_out, Workspace& w) {
  const int64_t od = model.obs_dim, ad = model.act_dim, R = N * P;
  w.obs.resize(static_cast<size_t>(R * od));
  w.next.resize(static_cast<size_t>(R * od));
  w.act.resize(static_cast<size_t>(R * ad));
  w.rew_model.resize(static_cast<size_t>(R));
  w.rew.resize(static_cast<size_t>(R));
  w.term.resize(static_cast<size_t>(R));
  w.state.assign(static_cast<size_t>(R), kAlive);
  w.ret.assign(static_cast<size_t>(R), 0.0);
  w.used.resize(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; ++r) std::memcpy(w.obs.data() + r * od, obs0, sizeof(float) * od);
  const bool ts_inf = propagation == Propagation::kTsInf;
  if (ts_inf) {
    w.members.resize(static_cast<size_t>(R));
    const uint32_t K = static_cast<uint32_t>(model.num_elites);
    for (int64_t r = 0; r < R; ++r) {
      w.members[r] = model.elites[random_index(seed, kStreamMemberChoice, static_cast<uint64_t>(r), K)];
    }
  }
  int64_t failed = 0;
  for (int64_t t = 0; t < H; ++t) {
    const uint64_t seed_t = rollout_step_seed(seed, t);
    for (int64_t r = 0; r < R; ++r) {
      std::memcpy(w.act.data() + r * ad, actions + ((r / P) * H + t) * ad, sizeof(float) * ad);
    }
    ensemble_step(model, w.obs.data(), w.act.data(), R, seed_t, /*deterministic=*/false,
                  ts_inf ? w.members.data() : nullptr, w.next.data(), w.rew_model.data(), w.used.data());
    if (members_out != nullptr) std::memcpy(members_out + t * R, w.used.data(), sizeof(int64_t) * R);

    const float* rew = w.rew_model.data();
    if (objective.reward_callback) {
      objective.reward_callback(w.obs.data(), w.act.data(), w.next.data(), R, w.rew.data());
      rew = w.rew.data();
    } else if (objective.reward != RewardId::kModel) {
      rewards(objective.reward, w.obs.data(), w.act.data(), w.next.data(), R, static_cast<int>(od),
              static_cast<int>(ad), w.rew.data());
      rew = w.rew.data();
    }
    if (objective.termination_callback) {
      objective.termination_callback(w.obs.data(), w.act.data(), w.next.data(), R, w.term.data());
      for (int64_t r = 0; r < R; ++r) {
        require(w.term[r] <= 1, "termination: the callback must write 0 or 1, got " + std::to_string(w.term[r]) +
                                    " at row " + std::to_string(r));
      }
    } else {
      terminations(objective.termination, w.next.data(), R, static_cast<int>(od), w.term.data());
    }

    for (int64_t r = 0; r < R; ++r) {
      const float* next = w.next.data() + r * od;
      const bool finite = row_finite(next, od);
      if (w.state[r] == kAlive) {
        if (!finite || !std::isfinite(rew[r])) {
          w.state[r] = kFailed;
          w.ret[r] = kNegInf;
          ++failed;
        } else {
          w.ret[r] += static_cast<double>(rew[r]);
          if (w.term[r]) w.state[r] = kTerminated;
        }
      }
      // Rows keep stepping (one batch shape for the whole horizon) but never from a
      // non-finite state: every model input stays finite.
      if (finite) std::memcpy(w.obs.data() + r * od, next, sizeof(float) * od);
    }
  }
  for (int64_t n = 0; n < N; ++n) {
    double sum = 0.0;
    for (int64_t p = 0; p < P; ++p) sum += w.ret[n * P + p];
    values[n] = sum / static_cast<double>(P);
  }
  return failed;
}

// Index order by (value desc, index asc) of the first `k` entries.
void top_k(const std::vector<double>& values, int64_t k, std::vector<int64_t>& order) {
  order.resize(values.size());
  std::iota(order.begin(), order.end(), int64_t{0});
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t a, int64_t b) {
    return values[a] > values[b] || (values[a] == values[b] && a < b);
  });
}

}  // namespace

namespace detail {

void check_evaluate_args(const EnsembleView& model, const PlanObjective& objective, const float* obs,
                         int64_t num_sequences, int64_t horizon, int64_t particles) {
  model.validate(/*need_elites=*/true);
  objective.validate(model.obs_dim, model.act_dim);
  require(num_sequences >= 1, "population: expected >= 1 candidate sequences, got " + std::to_string(num_sequences));
  require(horizon >= 1 && horizon < static_cast<int64_t>(0xffffffffu),
          "horizon: expected 1 <= horizon < 2**32 - 1, got " + std::to_string(horizon));
  require(particles >= 1, "particles: expected >= 1, got " + std::to_string(particles));
  require(num_sequences <= kMaxPlanRows / particles,
          "population * particles: expected at most 2**31 rows, got " + std::to_string(num_sequences) + " * " +
              std::to_string(particles));
  require(obs != nullptr, "obs: null pointer");
  require_finite_values(obs, model.obs_dim, "obs");
}

void check_plan_args(const EnsembleView& model, const PlannerConfig& config, const PlanObjective& objective,
                     const float* obs, const float* mean, const float* action_out, const float* mean_out) {
  config.validate(model.act_dim);
  check_evaluate_args(model, objective, obs, config.population, config.horizon, config.particles);
  require(mean != nullptr && action_out != nullptr && mean_out != nullptr,
          "plan_optimize: null mean, action_out or mean_out");
  require_finite_values(mean, config.horizon * model.act_dim, "mean");
}

void check_actions(const float* actions, int64_t n) {
  require(actions != nullptr, "actions: null pointer");
  require_finite_values(actions, n, "actions");
}

}  // namespace detail

// ------------------------------------------------------------------ config

void PlannerConfig::validate(int64_t act_dim) const {
  require(horizon >= 1 && horizon < static_cast<int64_t>(0xffffffffu),
          "horizon: expected 1 <= horizon < 2**32 - 1, got " + std::to_string(horizon));
  require(optimizer == PlanOptimizer::kCem || optimizer == PlanOptimizer::kRandom,
          "optimizer: expected 'cem' (0) or 'random' (1), got " + std::to_string(static_cast<int>(optimizer)));
  require(propagation == Propagation::kTsInf || propagation == Propagation::kTs1,
          "propagation: expected 'ts_inf' (0) or 'ts_1' (1), got " + std::to_string(static_cast<int>(propagation)));
  require(population >= 1, "population: expected >= 1, got " + std::to_string(population));
  require(particles >= 1, "particles: expected >= 1, got " + std::to_string(particles));
  require(population <= kMaxPlanRows / particles, "population * particles: expected at most 2**31 rows, got " +
                                                      std::to_string(population) + " * " + std::to_string(particles));
  if (optimizer == PlanOptimizer::kCem) {
    require(elites >= 1 && elites <= population, "elites: expected 1 <= elites <= population = " +
                                                     std::to_string(population) + ", got " + std::to_string(elites));
    require(iterations >= 1, "iterations: expected >= 1, got " + std::to_string(iterations));
    require(alpha >= 0.0 && alpha < 1.0, "alpha: expected 0 <= alpha < 1, got " + std::to_string(alpha));
  }
  require(static_cast<int64_t>(action_low.size()) == act_dim,
          "action_low: expected shape (" + std::to_string(act_dim) + ",), got (" +
              std::to_string(action_low.size()) + ",)");
  require(static_cast<int64_t>(action_high.size()) == act_dim,
          "action_high: expected shape (" + std::to_string(act_dim) + ",), got (" +
              std::to_string(action_high.size()) + ",)");
  for (int64_t a = 0; a < act_dim; ++a) {
    require(std::isfinite(action_low[a]) && std::isfinite(action_high[a]) && action_low[a] < action_high[a],
            "action_low, action_high: expected finite bounds with low < high, got [" +
                std::to_string(action_low[a]) + ", " + std::to_string(action_high[a]) + "] at index " +
                std::to_string(a));
  }
}

void PlanObjective::validate(int64_t obs_dim, int64_t act_dim) const {
  if (!reward_callback) check_reward_args(static_cast<int32_t>(reward), obs_dim, act_dim, "reward");
  if (!termination_callback) check_termination_args(static_cast<int32_t>(termination), obs_dim, "termination");
}

uint64_t derive_seed(uint64_t seed, uint64_t stream, uint64_t index) {
  const Philox4x32 b = philox_block(seed, stream, index);
  return (static_cast<uint64_t>(b.v[1]) << 32) | b.v[0];
}

// ------------------------------------------------------------------ evaluate

void plan_evaluate(const EnsembleView& model, const PlanObjective& objective, const float* obs,
                   const float* actions, int64_t num_sequences, int64_t horizon, int64_t particles,
                   Propagation propagation, uint64_t seed, double* values_out, int64_t* members_out) {
  detail::check_evaluate_args(model, objective, obs, num_sequences, horizon, particles);
  require(propagation == Propagation::kTsInf || propagation == Propagation::kTs1,
          "propagation: expected 'ts_inf' (0) or 'ts_1' (1), got " + std::to_string(static_cast<int>(propagation)));
  require(values_out != nullptr, "plan_evaluate: null values_out");
  detail::check_actions(actions, num_sequences * horizon * model.act_dim);
  Workspace w;
  evaluate(model, objective, obs, actions, num_sequences, horizon, particles, propagation, seed, values_out,
           members_out, w);
}

// ------------------------------------------------------------------ optimize

PlanResult plan_optimize(const EnsembleView& model, const PlannerConfig& config, const PlanObjective& objective,
                         const float* obs, const float* mean, uint64_t call_seed, float* action_out,
                         float* mean_out) {
  const auto t_start = std::chrono::steady_clock::now();
  detail::check_plan_args(model, config, objective, obs, mean, action_out, mean_out);
  std::vector<double> values(static_cast<size_t>(config.population));
  Workspace w;
  PlanResult res = detail::plan_optimize_with(
      config, model.act_dim, mean, call_seed, action_out, mean_out, [&](const float* x, uint64_t s_i) {
        const int64_t failed = evaluate(model, objective, obs, x, config.population, config.horizon,
                                        config.particles, config.propagation, s_i, values.data(), nullptr, w);
        return std::make_pair(static_cast<const double*>(values.data()), failed);
      });
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return res;
}

namespace detail {

PlanResult plan_optimize_with(const PlannerConfig& config, int64_t act_dim, const float* mean, uint64_t call_seed,
                              float* action_out, float* mean_out, const PlanEvaluator& evaluate_candidates) {
  const int64_t H = config.horizon, A = act_dim, N = config.population, HA = H * A;
  const float* lo = config.action_low.data();
  const float* hi = config.action_high.data();
  const bool cem = config.optimizer == PlanOptimizer::kCem;

  std::vector<double> mu(static_cast<size_t>(HA)), var(static_cast<size_t>(HA)), sd(static_cast<size_t>(HA));
  for (int64_t k = 0; k < HA; ++k) {
    const int64_t a = k % A;
    mu[k] = std::clamp(static_cast<double>(mean[k]), static_cast<double>(lo[a]), static_cast<double>(hi[a]));
    const double range = static_cast<double>(hi[a]) - static_cast<double>(lo[a]);
    var[k] = range * range / 16.0;
  }
  std::vector<float> x(static_cast<size_t>(N * HA));
  std::vector<double> values(static_cast<size_t>(N));
  std::vector<int64_t> order;
  PlanResult res;
  const int64_t iterations = cem ? config.iterations : 1;
  int64_t best = 0;
  for (int64_t i = 0; i < iterations; ++i) {
    const uint64_t s_i = derive_seed(call_seed, kStreamPlanSeed + 1, static_cast<uint64_t>(i));
    // 1. candidates
    if (cem) {
      for (int64_t k = 0; k < HA; ++k) {
        const int64_t a = k % A;
        const double dl = (mu[k] - lo[a]) / 2.0, dh = (hi[a] - mu[k]) / 2.0;
        sd[k] = std::sqrt(std::min({var[k], dl * dl, dh * dh}));
      }
    }
    auto fill = [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        const int64_t k = e % HA, a = e % A;
        if (cem) {
          const float z = std::clamp(random_normal(s_i, kStreamPlanAction, static_cast<uint64_t>(e)), -2.0f, 2.0f);
          const float v = static_cast<float>(mu[k] + sd[k] * static_cast<double>(z));
          x[e] = std::clamp(v, lo[a], hi[a]);
        } else {
          const float u = u32_to_unit(random_u32(s_i, kStreamPlanAction, static_cast<uint64_t>(e)));
          x[e] = std::clamp(lo[a] + (hi[a] - lo[a]) * u, lo[a], hi[a]);
        }
      }
    };
    const int64_t total = N * HA;
    if (total < 65536) fill(0, total); else parallel_for(total, 16384, fill);
    // 2. values
    const std::pair<const double*, int64_t> scored = evaluate_candidates(x.data(), s_i);
    std::copy(scored.first, scored.first + N, values.begin());
    res.failed += scored.second;
    ++res.iterations;
    // 3. refit / best
    const int64_t k_top = cem ? config.elites : 1;
    top_k(values, k_top, order);
    best = order[0];
    res.best_value = values[best];
    if (cem) {
      double elite_sum = 0.0;
      for (int64_t j = 0; j < k_top; ++j) elite_sum += values[order[j]];
      res.elite_value = elite_sum / static_cast<double>(k_top);
      const double alpha = config.alpha;
      for (int64_t k = 0; k < HA; ++k) {
        double m = 0.0;
        for (int64_t j = 0; j < k_top; ++j) m += static_cast<double>(x[order[j] * HA + k]);
        m /= static_cast<double>(k_top);
        double v = 0.0;
        for (int64_t j = 0; j < k_top; ++j) {
          const double d = static_cast<double>(x[order[j] * HA + k]) - m;
          v += d * d;
        }
        v /= static_cast<double>(k_top);
        mu[k] = alpha * mu[k] + (1.0 - alpha) * m;
        var[k] = alpha * var[k] + (1.0 - alpha) * v;
      }
    } else {
      res.elite_value = res.best_value;
    }
  }
  if (cem) {
    for (int64_t a = 0; a < A; ++a) action_out[a] = static_cast<float>(mu[a]);
    for (int64_t k = 0; k < HA; ++k) mean_out[k] = static_cast<float>(mu[k]);
  } else {
    std::memcpy(action_out, x.data() + best * HA, sizeof(float) * A);
    if (mean_out != mean) std::memcpy(mean_out, mean, sizeof(float) * HA);
  }
  return res;
}

}  // namespace detail

void plan_shift_mean(float* mean, int64_t horizon, int64_t act_dim, const float* action_low,
                     const float* action_high) {
  require(horizon >= 1 && act_dim >= 0, "plan_shift_mean: expected horizon >= 1 and act_dim >= 0");
  if (horizon > 1) std::memmove(mean, mean + act_dim, sizeof(float) * (horizon - 1) * act_dim);
  float* last = mean + (horizon - 1) * act_dim;
  for (int64_t a = 0; a < act_dim; ++a) last[a] = 0.5f * (action_low[a] + action_high[a]);
}

// ------------------------------------------------------------------ Planner

namespace {

PlanObjective env_objective(const std::string& env_id) {
  PlanObjective o;
  o.reward = reward_id_from_env(env_id);
  o.termination = termination_id_from_env(env_id);
  return o;
}

}  // namespace

Planner::Planner(std::shared_ptr<const Ensemble> model, PlannerConfig config, const std::string& env_id,
                 uint64_t seed)
    : Planner(std::move(model), std::move(config), env_objective(env_id), seed) {}

Planner::Planner(std::shared_ptr<const Ensemble> model, PlannerConfig config, PlanObjective objective,
                 uint64_t seed)
    : model_(std::move(model)), config_(std::move(config)), objective_(std::move(objective)), seed_(seed) {
  require(model_ != nullptr, "model: expected an Ensemble, got a null pointer");
  model_->view().validate(/*need_elites=*/true);
  config_.validate(model_->act_dim());
  objective_.validate(model_->obs_dim(), model_->act_dim());
  reset();
}

void Planner::reset() {
  const int64_t A = model_->act_dim();
  mean_.assign(static_cast<size_t>(config_.horizon * A), 0.0f);
  for (int64_t t = 0; t < config_.horizon; ++t) {
    for (int64_t a = 0; a < A; ++a) mean_[t * A + a] = 0.5f * (config_.action_low[a] + config_.action_high[a]);
  }
}

void Planner::plan(const float* obs, float* action_out) {
  std::vector<float> next_mean(mean_.size());
  const uint64_t call_seed = derive_seed(seed_, kStreamPlanSeed, calls_);
  last_ = plan_optimize(model_->view(), config_, objective_, obs, mean_.data(), call_seed, action_out,
                        next_mean.data());
  plan_shift_mean(next_mean.data(), config_.horizon, model_->act_dim(), config_.action_low.data(),
                  config_.action_high.data());
  mean_ = std::move(next_mean);
  ++calls_;
}

std::vector<float> Planner::plan(Span<const float> obs) {
  require(static_cast<int64_t>(obs.size()) == model_->obs_dim(),
          "obs: expected shape (" + std::to_string(model_->obs_dim()) + ",), got (" + std::to_string(obs.size()) +
              ",)");
  std::vector<float> action(static_cast<size_t>(model_->act_dim()));
  plan(obs.data(), action.data());
  return action;
}

}  // namespace mbpo_fast

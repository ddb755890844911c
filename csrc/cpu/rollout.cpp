// CPU implementation of the branched rollout engine (rollout.h).
//
// Per step the alive rows live in five contiguous arrays (obs, act, rew, next_obs, term).
// The actor and the ensemble step are the threaded, tiled kernels of actor.cpp / ensemble.cpp
// run over all alive rows at once (their Philox indices are the alive-row positions, so one
// call per step is what makes the randomness independent of any tiling). Rows with a
// non-finite value are squeezed out in place, the rest are appended to the model pool with
// one add_batch straight from these arrays, and the non-terminated rows' next_obs are
// compacted in place into obs for the next step: no per-step allocation, no masked copies.
#include "mbpo_fast/rollout.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "mbpo_fast/rng.h"

namespace mbpo_fast {

namespace {

bool row_finite(const float* x, int64_t n) {
  bool ok = true;
  for (int64_t j = 0; j < n; ++j) ok &= std::isfinite(x[j]);
  return ok;
}

// Appends transitions either straight into the pool (built-in termination: nothing can
// fail after validation) or into a staging area flushed at the end (custom callbacks may
// throw; staging keeps the pool unchanged then). Both give the same final pool.
class Sink {
 public:
  Sink(ReplayPool& pool, bool staged) : pool_(pool), staged_(staged) {}

  void append(const float* obs, const float* act, const float* rew, const float* next_obs,
              const uint8_t* term, int64_t n) {
    if (n == 0) return;
    if (!staged_) {
      pool_.add_batch(obs, act, rew, next_obs, term, n);
      return;
    }
    const int64_t od = pool_.obs_dim(), ad = pool_.act_dim();
    obs_.insert(obs_.end(), obs, obs + n * od);
    act_.insert(act_.end(), act, act + n * ad);
    rew_.insert(rew_.end(), rew, rew + n);
    next_.insert(next_.end(), next_obs, next_obs + n * od);
    term_.insert(term_.end(), term, term + n);
  }

  void flush() {
    if (!staged_ || rew_.empty()) return;
    pool_.add_batch(obs_.data(), act_.data(), rew_.data(), next_.data(), term_.data(),
                    static_cast<int64_t>(rew_.size()));
  }

 private:
  ReplayPool& pool_;
  bool staged_;
  std::vector<float> obs_, act_, rew_, next_;
  std::vector<uint8_t> term_;
};

void check_args(const ActorView& actor, const EnsembleView& model, const ReplayPool& real,
                const ReplayPool& model_pool, int64_t num_starts, int64_t horizon, int64_t disagreement_rows,
                const RolloutUncertainty& unc) {
  actor.validate();
  unc.validate();
  model.validate(/*need_elites=*/true);
  require(actor.obs_dim == model.obs_dim && actor.act_dim == model.act_dim,
          "branched_rollout: the actor maps obs_dim " + std::to_string(actor.obs_dim) + " to act_dim " +
              std::to_string(actor.act_dim) + " but the model has obs_dim " + std::to_string(model.obs_dim) +
              " and act_dim " + std::to_string(model.act_dim));
  for (const ReplayPool* p : {&real, &model_pool}) {
    const char* name = p == &real ? "real_pool" : "model_pool";
    require(p->obs_dim() == model.obs_dim && p->act_dim() == model.act_dim,
            std::string(name) + ": expected obs_dim " + std::to_string(model.obs_dim) + " and act_dim " +
                std::to_string(model.act_dim) + " (the model's), got " + std::to_string(p->obs_dim()) +
                " and " + std::to_string(p->act_dim()));
  }
  require(num_starts >= 0, "num_starts: expected num_starts >= 0, got " + std::to_string(num_starts));
  (void)disagreement_sample_rows(disagreement_rows, 0);  // validates the rule
  require(horizon >= 0 && horizon < static_cast<int64_t>(0xffffffffu),
          "horizon: expected 0 <= horizon < 2**32 - 1, got " + std::to_string(horizon));
  require(num_starts == 0 || real.size() >= 1, "real_pool: is empty; a rollout needs start states");
  require(!unc.enabled() || model.num_elites >= 2,
          "max_disagreement / uncertainty_penalty: the disagreement d is a variance across the elites and "
          "needs at least 2 elites, got " + std::to_string(model.num_elites));
}

template <typename TermFn>
RolloutStats run(const ActorView& actor, const EnsembleView& model, const TermFn& terminate,
                 const ReplayPool& real, ReplayPool& model_pool, int64_t num_starts, int64_t horizon,
                 uint64_t seed, bool compute_disagreement, int64_t disagreement_rows, const RolloutUncertainty& unc,
                 bool staged) {
  const auto t_start = std::chrono::steady_clock::now();
  RolloutStats st;
  st.num_starts = num_starts;
  st.mean_disagreement = std::numeric_limits<double>::quiet_NaN();
  const int64_t od = model.obs_dim, ad = model.act_dim;
  const bool uncertain = unc.enabled();
  const bool stops = unc.stops();
  const float penalty = static_cast<float>(unc.uncertainty_penalty);
  double threshold = stops ? unc.max_disagreement : std::numeric_limits<double>::quiet_NaN();
  if (stops && std::isnan(threshold)) threshold = std::numeric_limits<double>::infinity();
  st.disagreement_threshold = threshold;
  if (!uncertain) st.mean_uncertainty = std::numeric_limits<double>::quiet_NaN();

  std::vector<float> obs, act, next, rew, dis, unc_d;
  std::vector<uint8_t> term;
  if (num_starts > 0 && horizon > 0) {
    obs.resize(static_cast<size_t>(num_starts * od));
    act.resize(static_cast<size_t>(num_starts * ad));
    next.resize(static_cast<size_t>(num_starts * od));
    rew.resize(static_cast<size_t>(num_starts));
    term.resize(static_cast<size_t>(num_starts));
    if (compute_disagreement) dis.resize(static_cast<size_t>(num_starts));
    if (uncertain) unc_d.resize(static_cast<size_t>(num_starts));
    {
      std::vector<int64_t> rows(static_cast<size_t>(num_starts));
      const uint32_t n_real = static_cast<uint32_t>(real.size());
      for (int64_t i = 0; i < num_starts; ++i) {
        rows[i] = random_index(seed, kStreamRolloutStart, static_cast<uint64_t>(i), n_real);
      }
      real.gather(rows.data(), num_starts, obs.data(), nullptr, nullptr, nullptr, nullptr);
    }
  }

  Sink sink(model_pool, staged);
  double dis_sum = 0.0, unc_sum = 0.0, pen_sum = 0.0;
  int64_t alive = (horizon > 0) ? num_starts : 0;
  for (int64_t t = 0; t < horizon && alive > 0; ++t) {
    const uint64_t seed_t = rollout_step_seed(seed, t);
    const int64_t B = alive;
    actor_act(actor, obs.data(), B, seed_t, 0, /*deterministic=*/false, act.data(), nullptr);
    // The disagreement statistic is measured on the first m_sample input rows that are stored.
    // A small sample rides on the step's own weight pass (ensemble_step_sample_disagreement);
    // larger ones (and the uncertainty path) take a separate pass over the stored rows below.
    const int64_t m_sample = compute_disagreement ? disagreement_sample_rows(disagreement_rows, B) : 0;
    const bool fused = m_sample > 0 && m_sample <= kStepSampleMax && !uncertain;
    int64_t sample_stored = 0;
    if (fused) {
      ensemble_step_sample_disagreement(model, obs.data(), act.data(), B, seed_t, /*deterministic=*/false,
                                        next.data(), rew.data(), m_sample, dis.data());
    } else if (!uncertain) {
      ensemble_step(model, obs.data(), act.data(), B, seed_t, /*deterministic=*/false, nullptr, next.data(),
                    rew.data(), nullptr);
    } else {  // every elite once per row: the same sampled transition and d
      ensemble_step_uncertainty(model, obs.data(), act.data(), B, seed_t, /*deterministic=*/false, next.data(),
                                rew.data(), unc_d.data());
      if (t == 0 && unc.quantile >= 0.0) {
        threshold = finite_quantile(unc_d.data(), B, unc.quantile);
        st.disagreement_threshold = threshold;
      }
      if (penalty != 0.0f) {
        for (int64_t i = 0; i < B; ++i) rew[i] -= penalty * std::sqrt(unc_d[i]);
      }
    }
    terminate(obs.data(), act.data(), next.data(), B, term.data());

    // Drop rows with a non-finite value (in place, order kept). Inputs are finite: start
    // states come from a pool (which only holds finite rows) and later obs passed this check.
    // With the uncertainty on, a row whose d is not finite is dropped too, and then a row with
    // d > threshold stops unstored (check, then store).
    int64_t stored = 0, dropped = 0;
    for (int64_t i = 0; i < B; ++i) {
      const bool ok = std::isfinite(rew[i]) && row_finite(next.data() + i * od, od) &&
                      row_finite(act.data() + i * ad, ad) && (!uncertain || std::isfinite(unc_d[i]));
      if (!ok) {
        ++dropped;
        continue;
      }
      if (stops && static_cast<double>(unc_d[i]) > threshold) {
        ++st.num_stopped;
        continue;
      }
      if (uncertain) {
        unc_sum += static_cast<double>(unc_d[i]);
        pen_sum += static_cast<double>(penalty) * std::sqrt(static_cast<double>(unc_d[i]));
      }
      if (i < m_sample) {
        ++sample_stored;
        if (fused) dis_sum += static_cast<double>(dis[i]);
      }
      if (stored != i) {
        std::memcpy(obs.data() + stored * od, obs.data() + i * od, sizeof(float) * od);
        std::memcpy(act.data() + stored * ad, act.data() + i * ad, sizeof(float) * ad);
        std::memcpy(next.data() + stored * od, next.data() + i * od, sizeof(float) * od);
        rew[stored] = rew[i];
        term[stored] = term[i];
      }
      ++stored;
    }
    st.nonfinite += dropped;
    st.steps_run += 1;

    // (compaction keeps the order: the sample's stored rows are the first sample_stored ones)
    if (!fused && sample_stored > 0) {
      ensemble_disagreement(model, obs.data(), act.data(), sample_stored, model.elites, model.num_elites,
                            dis.data());
      for (int64_t i = 0; i < sample_stored; ++i) dis_sum += static_cast<double>(dis[i]);
    }
    st.disagreement_rows += sample_stored;
    sink.append(obs.data(), act.data(), rew.data(), next.data(), term.data(), stored);
    st.rows_added += stored;

    // Continue the rows that did not terminate: obs[a] = next_obs[i] (a <= i, in place).
    int64_t a = 0;
    for (int64_t i = 0; i < stored; ++i) {
      if (term[i]) {
        ++st.num_terminated;
        continue;
      }
      std::memmove(obs.data() + a * od, next.data() + i * od, sizeof(float) * od);
      ++a;
    }
    alive = a;
  }
  sink.flush();

  if (num_starts > 0) {
    st.mean_length = static_cast<double>(st.rows_added) / static_cast<double>(num_starts);
    st.frac_terminated = static_cast<double>(st.num_terminated) / static_cast<double>(num_starts);
    st.frac_stopped = static_cast<double>(st.num_stopped) / static_cast<double>(num_starts);
  }
  if (uncertain) {
    const double n = static_cast<double>(st.rows_added);
    st.mean_uncertainty = st.rows_added > 0 ? unc_sum / n : std::numeric_limits<double>::quiet_NaN();
    st.mean_penalty = st.rows_added > 0 ? pen_sum / n : 0.0;
  }
  if (compute_disagreement && st.disagreement_rows > 0) {
    st.mean_disagreement = dis_sum / static_cast<double>(st.disagreement_rows);
  }
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return st;
}

}  // namespace

void RolloutUncertainty::validate() const {
  require(std::isfinite(uncertainty_penalty) && uncertainty_penalty >= 0.0,
          "uncertainty_penalty: expected a finite float >= 0, got " + std::to_string(uncertainty_penalty));
  require(quantile < 0.0 || quantile <= 1.0,
          "max_disagreement: expected a quantile in [0, 1], got " + std::to_string(quantile));
  require(std::isnan(max_disagreement) || max_disagreement >= 0.0,
          "max_disagreement: expected a threshold >= 0 (or +inf / NaN: no stop), got " +
              std::to_string(max_disagreement));
}

double finite_quantile(const float* x, int64_t n, double q) {
  require(q >= 0.0 && q <= 1.0, "quantile: expected q in [0, 1], got " + std::to_string(q));
  std::vector<double> v;
  v.reserve(static_cast<size_t>(std::max<int64_t>(n, 0)));
  for (int64_t i = 0; i < n; ++i) {
    if (std::isfinite(x[i])) v.push_back(static_cast<double>(x[i]));
  }
  if (v.empty()) return std::numeric_limits<double>::infinity();
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (pos - static_cast<double>(lo)) * (v[hi] - v[lo]);
}

int64_t disagreement_sample_rows(int64_t rule, int64_t stored) {
  require(rule >= kDisagreementAutoRows,
          "disagreement_rows: expected a count >= 0, -1 (every row) or -2 (auto: one row in " +
              std::to_string(kDisagreementAutoStride) + "), got " + std::to_string(rule));
  if (stored <= 0) return 0;
  if (rule == kDisagreementAllRows) return stored;
  if (rule == kDisagreementAutoRows) return (stored + kDisagreementAutoStride - 1) / kDisagreementAutoStride;
  return std::min(stored, rule);
}

uint64_t rollout_step_seed(uint64_t seed, int64_t step) {
  const Philox4x32 b = philox_block(seed, kStreamRolloutStart + 1 + static_cast<uint64_t>(step), 0);
  return (static_cast<uint64_t>(b.v[1]) << 32) | b.v[0];
}

RolloutStats branched_rollout(const ActorView& actor, const EnsembleView& model, TerminationId termination,
                              const ReplayPool& real, ReplayPool& model_pool, int64_t num_starts,
                              int64_t horizon, uint64_t seed, bool compute_disagreement,
                              int64_t disagreement_rows, const RolloutUncertainty& uncertainty) {
  check_args(actor, model, real, model_pool, num_starts, horizon, disagreement_rows, uncertainty);
  check_termination_args(static_cast<int32_t>(termination), model.obs_dim, "model obs_dim");
  const int od = static_cast<int>(model.obs_dim);
  auto terminate = [&](const float*, const float*, const float* next, int64_t n, uint8_t* out) {
    terminations(termination, next, n, od, out);
  };
  return run(actor, model, terminate, real, model_pool, num_starts, horizon, seed, compute_disagreement,
             disagreement_rows, uncertainty, /*staged=*/false);
}

RolloutStats branched_rollout(const ActorView& actor, const EnsembleView& model,
                              const TerminationCallback& termination, const ReplayPool& real,
                              ReplayPool& model_pool, int64_t num_starts, int64_t horizon, uint64_t seed,
                              bool compute_disagreement, int64_t disagreement_rows,
                              const RolloutUncertainty& uncertainty) {
  check_args(actor, model, real, model_pool, num_starts, horizon, disagreement_rows, uncertainty);
  require(static_cast<bool>(termination), "termination: expected a callable, got an empty function");
  auto terminate = [&](const float* o, const float* a, const float* next, int64_t n, uint8_t* out) {
    termination(o, a, next, n, out);
    for (int64_t i = 0; i < n; ++i) {
      require(out[i] <= 1, "termination: the callback must write 0 or 1, got " + std::to_string(out[i]) +
                               " at row " + std::to_string(i));
    }
  };
  return run(actor, model, terminate, real, model_pool, num_starts, horizon, seed, compute_disagreement,
             disagreement_rows, uncertainty, /*staged=*/true);
}

}  // namespace mbpo_fast

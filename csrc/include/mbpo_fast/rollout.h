// Branched rollout engine (MBPO): short model rollouts from real start states, appended to
// the model pool, in one native call (no Python per step, no per-step masked copies).
//
// Algorithm of branched_rollout(actor, model, termination, real, model_pool, num_starts,
// horizon, seed), exactly (every backend and the Python reference follow it):
//   1. Start states: row i (0 <= i < num_starts) starts from logical row
//        random_index(seed, kStreamRolloutStart, i, real.size())   of the real pool
//      (its obs; the real pool is only read: its sampling counter does not move).
//   2. For step t = 0 .. horizon - 1, with B alive rows (in order) and the step seed
//        seed_t = rollout_step_seed(seed, t)
//      a. act  = actor_act(actor, obs, B, seed_t, /*noise_offset=*/0, stochastic)
//                (noise of element j of alive row i: random_normal(seed_t, kStreamPolicyNoise, i*act_dim +
//                j))
//      b. (next_obs, rew) = ensemble_step(model, obs, act, B, seed_t, stochastic) (member of
//                alive row i: elites[random_index(seed_t, kStreamMemberChoice, i, K)])
//      c. term = termination(next_obs) (built-in id, or a custom callback (obs, act, next_obs))
//      d. a row whose act, rew or next_obs holds a NaN/Inf is dropped: never stored, counted
//         in `nonfinite`, and its rollout ends;
//      e. the other rows are appended to the model pool in order, as (obs, act, rew,
//         next_obs, term) - terminated rows once, with terminated = 1;
//      f. rows that are not terminated continue with obs = next_obs, compacted in order.
//      Reaching the horizon is a truncation: the last transitions are stored with term = 0.
//   3. Stats (RolloutStats). mean_disagreement (when requested) is the mean, over the
//      measured stored transitions, of ensemble_disagreement(model, obs, act) over the
//      elites: the population std across elites of the predicted mean (Δobs, reward),
//      averaged over the obs_dim + 1 outputs, at the state-action pairs the rollout
//      visited. Measured at each step on those of the first m alive rows whose transition is
//      stored (a uniform random subset: start rows are drawn uniformly and alive rows keep
//      their order), with m given by the disagreement_rows rule (disagreement_sample_rows) of
//      the step's alive rows: a count >= 0, every row (kDisagreementAllRows), or one row in
//      kDisagreementAutoStride, at least one (kDisagreementAutoRows, the default of the
//      BranchedRollout classes). It costs one forward of every elite per measured row; a
//      sample of at most kStepSampleMax rows rides on the step's own pass over the elites'
//      weights (ensemble_step_sample_disagreement, same transitions), larger ones take a
//      separate pass.
//
//   4. Uncertainty (issue 16; RolloutUncertainty, off by default: then steps 1-3 run exactly as
//      written, same code path and cost). When a stop threshold or a penalty is set, step 2b
//      becomes ensemble_step_uncertainty (every elite once per alive row: the same sampled
//      transition, plus d(s, a) = mean over the obs dims of the unbiased variance across the
//      elites of their predicted mean next state), and after 2b:
//        - quantile form: at t = 0 the threshold becomes the q-quantile (linear interpolation,
//          numpy's default) of d over the rows of step 0 (the start states and their actions)
//          whose d is finite (no finite d: +inf, nothing stops);
//        - penalty: rew -= uncertainty_penalty * sqrt(d) (float32), when the penalty != 0;
//        - in 2d a row whose d is non-finite is dropped (counted in nonfinite) as well;
//        - after 2d, a row with d > threshold stops: it is NOT stored (check, then store),
//          counted in num_stopped, and its rollout ends (2e/2f see only the other rows).
//      Stats: num_stopped / frac_stopped (per start row), mean_uncertainty (mean d over the
//      stored rows), mean_penalty (mean of uncertainty_penalty * sqrt(d) over the stored
//      rows) and disagreement_threshold (the threshold used; NaN when the stop is off).
//
// Results do not depend on the thread count (discrete choices never; values only to float
// rounding through the kernel choice AVX-512 / portable).
#pragma once

#include <cstdint>
#include <functional>
#include <limits>

#include "mbpo_fast/actor.h"
#include "mbpo_fast/ensemble.h"
#include "mbpo_fast/replay_pool.h"
#include "mbpo_fast/termination.h"

namespace mbpo_fast {

struct RolloutStats {
  int64_t num_starts = 0;
  int64_t rows_added = 0;          // transitions appended to the model pool (before any ring wrap)
  int64_t num_terminated = 0;      // start rows whose rollout ended in a terminal transition
  int64_t nonfinite = 0;           // rows dropped for a non-finite action, reward or next_obs
  int64_t steps_run = 0;           // steps with at least one alive row
  double mean_length = 0.0;        // rows_added / num_starts: stored steps per start row
  double frac_terminated = 0.0;    // num_terminated / num_starts
  double mean_disagreement = 0.0;  // NaN when not computed or when nothing was measured
  int64_t disagreement_rows = 0;   // transitions mean_disagreement was measured on
  double seconds = 0.0;            // wall time of the call
  // Uncertainty (step 4; zeros / NaN when RolloutUncertainty is off).
  int64_t num_stopped = 0;               // start rows whose rollout the stop rule ended
  double frac_stopped = 0.0;             // num_stopped / num_starts
  double mean_uncertainty = std::numeric_limits<double>::quiet_NaN();  // mean d over the stored rows
                                                                        // (NaN: off or none stored)
  double mean_penalty = 0.0;             // mean uncertainty_penalty * sqrt(d) over the stored rows
  double disagreement_threshold = std::numeric_limits<double>::quiet_NaN();  // stop threshold used (NaN: off)
};

// The uncertainty-aware extensions of a rollout (step 4 above). Default: off.
struct RolloutUncertainty {
  // Stop threshold on d: a row with d > max_disagreement stops unstored. +inf or NaN: no stop.
  double max_disagreement = std::numeric_limits<double>::infinity();
  // In [0, 1]: the threshold is this quantile of d over step 0's rows instead (overrides
  // max_disagreement). Negative: not used.
  double quantile = -1.0;
  // >= 0: the stored reward is r - uncertainty_penalty * sqrt(d).
  double uncertainty_penalty = 0.0;

  bool stops() const { return quantile >= 0.0 || max_disagreement < std::numeric_limits<double>::infinity(); }
  bool enabled() const { return stops() || uncertainty_penalty != 0.0; }
  // Throws InvalidArgument naming the field: a negative or non-finite penalty, a quantile
  // outside [0, 1] (other than negative = unused), a negative threshold.
  void validate() const;
};

// The q-quantile (0 <= q <= 1) of the finite values of x[0..n) with linear interpolation
// (numpy.quantile's default), computed in double; +inf when none is finite.
double finite_quantile(const float* x, int64_t n, double q);

// disagreement_rows rules besides a count >= 0.
constexpr int64_t kDisagreementAllRows = -1;   // every stored row
constexpr int64_t kDisagreementAutoRows = -2;  // ceil(stored / kDisagreementAutoStride) rows
constexpr int64_t kDisagreementAutoStride = 256;

// Rows measured at a step that stored `stored` transitions under `rule` (see above). Throws
// InvalidArgument for a rule < kDisagreementAutoRows.
int64_t disagreement_sample_rows(int64_t rule, int64_t stored);

// Custom termination: out[i] = terminated(obs[i], act[i], next_obs[i]) (0 or 1) for the n
// rows (row-major obs/next_obs [n, obs_dim], act [n, act_dim]). May throw; the rollout then
// leaves the model pool unchanged (transitions are staged and appended at the end).
using TerminationCallback =
    std::function<void(const float* obs, const float* act, const float* next_obs, int64_t n, uint8_t* out)>;

// The seed of step t: the 64-bit word (v1 << 32 | v0) of philox_block(seed,
// kStreamRolloutStart + 1 + t, 0), i.e. random_u32 indices 0 and 1 of that stream.
uint64_t rollout_step_seed(uint64_t seed, int64_t step);

// Runs the rollout with a built-in termination function (see the header comment). Requires:
// actor and model views valid with matching obs/act dims; the model has elites; both pools
// have those dims; real.size() >= 1 when num_starts >= 1; num_starts >= 0; 0 <= horizon <
// 2^32 - 1; `termination` accepts obs_dim; `uncertainty` valid (and >= 2 elites when on). Throws InvalidArgument before changing anything.
// The transitions of each step are appended directly to the model pool.
// `real` and `model_pool` may be the same pool.
RolloutStats branched_rollout(const ActorView& actor, const EnsembleView& model, TerminationId termination,
                              const ReplayPool& real, ReplayPool& model_pool, int64_t num_starts,
                              int64_t horizon, uint64_t seed, bool compute_disagreement = false,
                              int64_t disagreement_rows = -1, const RolloutUncertainty& uncertainty = {});

// Same with a custom termination callback (called once per step with the alive rows).
// All transitions are staged and appended once at the end, so an exception from the
// callback leaves the model pool unchanged; the final pool contents are identical.
RolloutStats branched_rollout(const ActorView& actor, const EnsembleView& model,
                              const TerminationCallback& termination, const ReplayPool& real,
                              ReplayPool& model_pool, int64_t num_starts, int64_t horizon, uint64_t seed,
                              bool compute_disagreement = false, int64_t disagreement_rows = -1,
                              const RolloutUncertainty& uncertainty = {});

}  // namespace mbpo_fast

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
//      visited. Measured at each step on the first m stored transitions (a uniform random
//      subset: start rows are drawn uniformly and alive rows keep their order), with m given
//      by the disagreement_rows rule (disagreement_sample_rows): a count >= 0, every stored
//      row (kDisagreementAllRows), or one row in kDisagreementAutoStride, at least one
//      (kDisagreementAutoRows, the default of the BranchedRollout classes: ~1 % of the
//      rollout's arithmetic). It costs one forward of every elite per measured row.
//
// Results do not depend on the thread count (discrete choices never; values only to float
// rounding through the kernel choice AVX-512 / portable).
#pragma once

#include <cstdint>
#include <functional>

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
};

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
// 2^32 - 1; `termination` accepts obs_dim. Throws InvalidArgument before changing anything.
// The transitions of each step are appended directly to the model pool.
// `real` and `model_pool` may be the same pool.
RolloutStats branched_rollout(const ActorView& actor, const EnsembleView& model, TerminationId termination,
                              const ReplayPool& real, ReplayPool& model_pool, int64_t num_starts,
                              int64_t horizon, uint64_t seed, bool compute_disagreement = false,
                              int64_t disagreement_rows = -1);

// Same with a custom termination callback (called once per step with the alive rows).
// All transitions are staged and appended once at the end, so an exception from the
// callback leaves the model pool unchanged; the final pool contents are identical.
RolloutStats branched_rollout(const ActorView& actor, const EnsembleView& model,
                              const TerminationCallback& termination, const ReplayPool& real,
                              ReplayPool& model_pool, int64_t num_starts, int64_t horizon, uint64_t seed,
                              bool compute_disagreement = false, int64_t disagreement_rows = -1);

}  // namespace mbpo_fast

// Model-predictive control with a learned ensemble (PETS, Chua et al., NeurIPS 2018):
// random shooting or the cross-entropy method (CEM) over action sequences, each sequence
// scored by propagating particles through the fused ensemble step (ensemble.h) with
// trajectory sampling TS-inf or TS-1.
//
//   auto model = std::make_shared<const mbpo_fast::Ensemble>(mbpo_fast::Ensemble::load("model.safetensors"));
//   mbpo_fast::PlannerConfig cfg;                      // PETS defaults: CEM 500 x 5, horizon 30, 20 particles
//   cfg.action_low = {-2.0f};  cfg.action_high = {2.0f};
//   mbpo_fast::Planner planner(model, cfg, "Pendulum-v1", /*seed=*/0);   // built-in reward + termination
//   std::vector<float> action = planner.plan(obs);    // [act_dim], once per simulator step
//   planner.reset();                                  // at the start of an episode
//
// ALGORITHM of one plan (plan_optimize), exactly (the Numba mirror and the Python reference
// in tests/test_planner.py follow it). N = population, H = horizon, A = act_dim,
// P = particles, R = N * P rows, lo/hi = the action box, K = the model's elites.
//   call seed      s   = derive_seed(seed, kStreamPlanSeed, call)
//   iteration seed s_i = derive_seed(s, kStreamPlanSeed + 1, i),  i = 0 .. I - 1
//     (random shooting: I = 1; derive_seed(x, stream, k) = (v1 << 32) | v0 of
//      philox_block(x, stream, k))
//   state (double): mean [H, A] = the warm start given (float), var [H, A] = (hi - lo)^2 / 16
//   per iteration i:
//     1. candidates x [N, H, A], element e = (n * H + t) * A + a:
//          CEM:    z = clamp(random_normal(s_i, kStreamPlanAction, e), -2, 2),
//                  cvar = min(var, ((mean - lo) / 2)^2, ((hi - mean) / 2)^2),
//                  x = clamp(float(mean + sqrt(cvar) * z), lo, hi)
//          random: x = lo + (hi - lo) * u32_to_unit(random_u32(s_i, kStreamPlanAction, e))  (in float)
//     2. values = plan_evaluate(obs, x, s_i)  (below)
//     3. CEM: elites = the `elites` candidates with the highest value (ties: lower index first);
//          m = their mean, v = their population variance (double);
//          mean = alpha * mean + (1 - alpha) * m; var = alpha * var + (1 - alpha) * v.
//        random: remember the best candidate (ties: lower index).
//   action: CEM: float(mean[0]); random: x[best, 0].
//   PlanResult::mean is float(mean) (CEM) or the warm start unchanged (random).
//
// plan_evaluate(obs, x [N, H, A], s_i): row r = n * P + p starts at obs; at step t
//   seed_t = rollout_step_seed(s_i, t) (rollout.h);
//   member of row r: TS-inf: elites[random_index(s_i, kStreamMemberChoice, r, K)] for every t
//                    TS-1:   elites[random_index(seed_t, kStreamMemberChoice, r, K)] (redrawn
//                            each step: ensemble_step's own choice with members = null)
//   (next, rew_model) = ensemble_step(obs_rows, x[n, t], R, seed_t, stochastic, members)
//   reward r_t = rew_model (kModel), builtin_reward(id, obs, act, next) or the callback;
//   done = termination(next) (built-in id or callback);
//   return[r] += r_t while the row is alive (the terminating step's reward counts, later
//   ones do not: a terminated particle collects no further reward, as in PETS/mbrl-lib);
//   a row whose next obs or reward is non-finite FAILS: its return becomes -inf and it stops
//   (it keeps its last finite obs so every model input stays finite); obs_rows = next.
//   value[n] = (1/P) sum_p return[n * P + p] (double; -inf when any particle failed).
//   The rewards are summed undiscounted over the horizon, as in PETS.
//
// Differences from mbrl-lib's CEM (documented in docs/planning.md): the samples are a
// clipped normal (z clamped to [-2, 2]) rather than a truncated normal; TS-inf draws each
// particle's member uniformly among the elites (PETS assigns particles to members in equal
// blocks); the action is the first step of the final CEM mean (as in the PETS code), not the
// best sequence seen.
//
// Determinism: for the same seed the member choices, the candidates and the elite sets do not
// depend on the thread count or the kernel (AVX-512 / portable) except through float rounding
// of the model's outputs (which could, in principle, swap two candidates of equal value).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mbpo_fast/ensemble.h"
#include "mbpo_fast/ensemble_model.h"
#include "mbpo_fast/reward.h"
#include "mbpo_fast/rng.h"
#include "mbpo_fast/rollout.h"
#include "mbpo_fast/termination.h"

namespace mbpo_fast {

enum class PlanOptimizer : int32_t { kCem = 0, kRandom = 1 };
enum class Propagation : int32_t { kTsInf = 0, kTs1 = 1 };

struct PlannerConfig {
  int64_t horizon = 30;
  PlanOptimizer optimizer = PlanOptimizer::kCem;
  int64_t population = 500;  // candidate sequences per iteration
  int64_t elites = 50;       // CEM: candidates the distribution is refit to
  int64_t iterations = 5;    // CEM iterations (random shooting: one batch of `population`)
  double alpha = 0.1;        // CEM: weight of the previous distribution in the refit
  int64_t particles = 20;    // model rollouts per candidate (returns are averaged)
  Propagation propagation = Propagation::kTsInf;
  std::vector<float> action_low, action_high;  // [act_dim], low < high, finite

  // Throws InvalidArgument naming the first bad field (expected and actual values).
  void validate(int64_t act_dim) const;
};

// What a plan maximizes: a reward (kModel: the model's reward output; a built-in id; or a
// callback when reward_callback is set) and a termination (built-in id, or a callback).
struct PlanObjective {
  RewardId reward = RewardId::kModel;
  RewardCallback reward_callback;  // overrides `reward` when set
  TerminationId termination = TerminationId::kNever;
  TerminationCallback termination_callback;  // overrides `termination` when set

  // Throws InvalidArgument when a built-in id does not fit the model's dims.
  void validate(int64_t obs_dim, int64_t act_dim) const;
};

struct PlanResult {
  double best_value = 0.0;   // highest candidate value of the last iteration
  double elite_value = 0.0;  // CEM: mean value of the last iteration's elites; random: best_value
  int64_t failed = 0;        // particle rollouts that produced a non-finite value (all iterations)
  int64_t iterations = 0;    // iterations run
  double seconds = 0.0;
};

// (v1 << 32) | v0 of philox_block(seed, stream, index): the seed derivation of the planner.
uint64_t derive_seed(uint64_t seed, uint64_t stream, uint64_t index);

// Scores `num_sequences` action sequences `actions` [num_sequences, horizon, act_dim] from the
// single observation `obs` [obs_dim] (see the header comment): values_out [num_sequences]
// (double), members_out [horizon, num_sequences * particles] (may be null: the members every
// row used at every step). Requires a model with elites, finite obs and actions. Throws
// InvalidArgument before computing anything; an exception from a callback propagates.
void plan_evaluate(const EnsembleView& model, const PlanObjective& objective, const float* obs,
                   const float* actions, int64_t num_sequences, int64_t horizon, int64_t particles,
                   Propagation propagation, uint64_t seed, double* values_out, int64_t* members_out = nullptr);

// One plan (see the header comment): reads the warm start `mean` [horizon, act_dim] (entries
// are clamped into the action box), writes action_out [act_dim] and the final distribution
// mean into mean_out [horizon, act_dim] (may alias `mean`). `call_seed` is s above.
PlanResult plan_optimize(const EnsembleView& model, const PlannerConfig& config, const PlanObjective& objective,
                         const float* obs, const float* mean, uint64_t call_seed, float* action_out,
                         float* mean_out);

namespace detail {
// The pieces plan_optimize is made of, shared with the CUDA planner (cuda_ops.h), which scores
// the candidates on the device and runs the same optimizer loop on the host.
// Validation of plan_optimize's / plan_evaluate's arguments (InvalidArgument naming the field).
void check_plan_args(const EnsembleView& model, const PlannerConfig& config, const PlanObjective& objective,
                     const float* obs, const float* mean, const float* action_out, const float* mean_out);
void check_evaluate_args(const EnsembleView& model, const PlanObjective& objective, const float* obs,
                         int64_t num_sequences, int64_t horizon, int64_t particles);
void check_actions(const float* actions, int64_t n);  // not null, finite
// Scores the candidates x [population, horizon, act_dim] of iteration seed s_i: returns
// (values [population], pointer valid until the next call; failed particle rollouts).
using PlanEvaluator = std::function<std::pair<const double*, int64_t>(const float* x, uint64_t s_i)>;
// The optimizer loop of plan_optimize (steps 1 and 3 of the header comment; arguments
// validated by the caller); res.seconds is left 0.
PlanResult plan_optimize_with(const PlannerConfig& config, int64_t act_dim, const float* mean, uint64_t call_seed,
                              float* action_out, float* mean_out, const PlanEvaluator& evaluate_candidates);
}  // namespace detail

// The warm start of the next call: mean shifted one step earlier, the last step set to the
// middle of the box. In place, mean [horizon, act_dim].
void plan_shift_mean(float* mean, int64_t horizon, int64_t act_dim, const float* action_low,
                     const float* action_high);

// mbpo_fast::Planner — an MPC controller over a loaded Ensemble, for programs with no Python.
// Keeps the warm start between calls and a call counter (call k plans with
// derive_seed(seed, kStreamPlanSeed, k)), so a run is reproducible from its seed.
// Not thread-safe (it carries state); one Planner per controller. The model is shared.
class Planner {
 public:
  // Built-in reward AND termination of a gymnasium env id (reward_id_from_env; the termination
  // of termination_id_from_env, kNever for ids without one).
  Planner(std::shared_ptr<const Ensemble> model, PlannerConfig config, const std::string& env_id,
          uint64_t seed = 0);
  Planner(std::shared_ptr<const Ensemble> model, PlannerConfig config, PlanObjective objective,
          uint64_t seed = 0);

  // The action for `obs` [obs_dim] -> action_out [act_dim]. Throws InvalidArgument for a
  // non-finite obs (the state is then unchanged).
  void plan(const float* obs, float* action_out);
  std::vector<float> plan(Span<const float> obs);

  // Forget the warm start (the mean returns to the middle of the box); the call counter keeps
  // running so that episodes differ.
  void reset();

  const PlannerConfig& config() const noexcept { return config_; }
  const PlanResult& last_result() const noexcept { return last_; }
  const std::vector<float>& mean() const noexcept { return mean_; }  // warm start [horizon, act_dim]
  uint64_t calls() const noexcept { return calls_; }
  uint64_t seed() const noexcept { return seed_; }
  const Ensemble& model() const noexcept { return *model_; }

 private:
  std::shared_ptr<const Ensemble> model_;
  PlannerConfig config_;
  PlanObjective objective_;
  uint64_t seed_;
  uint64_t calls_ = 0;
  std::vector<float> mean_;
  PlanResult last_;
};

}  // namespace mbpo_fast

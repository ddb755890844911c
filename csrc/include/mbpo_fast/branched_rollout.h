// mbpo_fast::BranchedRollout — the C++ counterpart of Python's mf.BranchedRollout(model, agent,
// termination).run(...) for programs with no Python: a loaded Ensemble, a loaded Actor and a
// termination function, bound once and run many times.
//
//   auto model = std::make_shared<const mbpo_fast::Ensemble>(mbpo_fast::Ensemble::load("model.safetensors"));
//   auto actor = std::make_shared<const mbpo_fast::Actor>(mbpo_fast::Actor::load("actor.safetensors"));
//   mbpo_fast::BranchedRollout rollout(model, actor, "Hopper-v5");       // built-in termination
//   mbpo_fast::RolloutStats st = rollout.run(real_pool, model_pool, /*num_starts=*/400,
//                                            /*horizon=*/5, /*seed=*/7);
//
// run() is exactly branched_rollout() of rollout.h (the engine the Python side calls with
// engine="native"): the same files, pools and seed give the same model-pool contents as
//   mf.BranchedRollout(mf.EnsembleDynamics.load(...), agent, "Hopper-v5").run(real, model_pool, n, h, seed)
// (member choices and row counts exactly, values to float rounding), because both call the
// same kernels with the same Philox streams.
//
// Lifetime: the rollout holds shared ownership of the model and the actor, so they live at
// least as long as the rollout (share them between several rollouts or threads freely; both
// are immutable after load). A TerminationCallback is copied into the rollout; whatever it
// captures by reference must outlive the rollout.
//
// Thread safety: run() is const and keeps no state between calls. Concurrent run() calls are
// safe when each writes a different model pool (ReplayPool itself is not thread-safe; a real
// pool may be shared by concurrent runs since it is only read) and a custom callback is
// itself safe to call concurrently.
//
// Errors: the constructor throws InvalidArgument for a null model/actor, an actor whose
// obs/act dims differ from the model's, a model without elites, an unknown env id (the message
// lists the known ids), a built-in termination that does not accept the model's obs_dim, or an
// empty callback. run() throws InvalidArgument (pools with other dims, num_starts < 0, an empty
// real pool, a horizon out of range) before changing anything; an exception thrown by a custom
// callback propagates and leaves the model pool unchanged.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "mbpo_fast/actor.h"
#include "mbpo_fast/ensemble_model.h"
#include "mbpo_fast/replay_pool.h"
#include "mbpo_fast/rollout.h"
#include "mbpo_fast/termination.h"
#include "mbpo_fast/termination_model.h"

namespace mbpo_fast {

class BranchedRollout {
 public:
  // Rows per step on which RolloutStats::mean_disagreement is measured (rollout.h,
  // disagreement_sample_rows): a count >= 0 (the first min(count, stored) stored rows; 0 turns
  // the statistic off: NaN, as in Python), kDisagreementAllRows (every stored row) or
  // kDisagreementAutoRows (the default, as the Python class's "auto": one stored row in 256,
  // at least one, ~1 % of the rollout). Measuring costs one forward of every elite per row.
  static constexpr int64_t kDefaultDisagreementRows = kDisagreementAutoRows;

  // Built-in termination by gymnasium env id ("Hopper-v5", "Pendulum-v1", ...; see
  // known_termination_envs()).
  BranchedRollout(std::shared_ptr<const Ensemble> model, std::shared_ptr<const Actor> actor,
                  const std::string& termination_env_id,
                  int64_t disagreement_rows = kDefaultDisagreementRows);
  // Built-in termination by id.
  BranchedRollout(std::shared_ptr<const Ensemble> model, std::shared_ptr<const Actor> actor,
                  TerminationId termination, int64_t disagreement_rows = kDefaultDisagreementRows);
  // A learned termination model (termination_model.h, e.g. a checkpoint's
  // termination_model.safetensors): InvalidArgument unless its obs_dim and act_dim are the
  // model's (a file of another run); the rollout shares its ownership.
  BranchedRollout(std::shared_ptr<const Ensemble> model, std::shared_ptr<const Actor> actor,
                  std::shared_ptr<const TerminationModel> termination,
                  int64_t disagreement_rows = kDefaultDisagreementRows);
  // A user C++ callable (see TerminationCallback in rollout.h): called once per step with the
  // alive rows; must write 0 or 1 per row.
  BranchedRollout(std::shared_ptr<const Ensemble> model, std::shared_ptr<const Actor> actor,
                  TerminationCallback termination, int64_t disagreement_rows = kDefaultDisagreementRows);

  // Rolls num_starts start states (uniform over `real`) for up to `horizon` steps and appends
  // the transitions to `model_pool`; `real` and `model_pool` may be the same pool. See
  // rollout.h for the exact algorithm and randomness.
  RolloutStats run(const ReplayPool& real, ReplayPool& model_pool, int64_t num_starts, int64_t horizon,
                   uint64_t seed) const;

  // The uncertainty-aware extensions (rollout.h step 4: stop where the elites disagree,
  // reward penalty); off by default. Throws InvalidArgument for an invalid setting or a model
  // with fewer than 2 elites when it turns them on; changes nothing then.
  void set_uncertainty(const RolloutUncertainty& uncertainty);
  const RolloutUncertainty& uncertainty() const noexcept { return uncertainty_; }

  const Ensemble& model() const noexcept { return *model_; }
  const Actor& actor() const noexcept { return *actor_; }
  // True for a custom callback; then termination_id() is meaningless (kNever).
  bool has_custom_termination() const noexcept { return static_cast<bool>(callback_); }
  TerminationId termination_id() const noexcept { return termination_; }
  int64_t disagreement_rows() const noexcept { return disagreement_rows_; }

 private:
  void check_components() const;

  std::shared_ptr<const Ensemble> model_;
  std::shared_ptr<const Actor> actor_;
  TerminationId termination_ = TerminationId::kNever;
  TerminationCallback callback_;  // empty: built-in termination_
  std::shared_ptr<const TerminationModel> termination_model_;  // what callback_ reads, if any
  int64_t disagreement_rows_;
  RolloutUncertainty uncertainty_;
};

}  // namespace mbpo_fast

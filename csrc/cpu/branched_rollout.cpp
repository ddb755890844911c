// mbpo_fast::BranchedRollout (branched_rollout.h): binds a loaded model, actor and termination
// once and forwards run() to the branched_rollout engine (rollout.cpp).
#include "mbpo_fast/branched_rollout.h"

#include <string>
#include <utility>

namespace mbpo_fast {

BranchedRollout::BranchedRollout(std::shared_ptr<const Ensemble> model, std::shared_ptr<const Actor> actor,
                                 const std::string& termination_env_id, int64_t disagreement_rows)
    : model_(std::move(model)), actor_(std::move(actor)), disagreement_rows_(disagreement_rows) {
  check_components();
  termination_ = termination_id_from_env(termination_env_id);  // InvalidArgument listing the known ids
  check_termination_args(static_cast<int32_t>(termination_), model_->obs_dim(), "model obs_dim");
}

BranchedRollout::BranchedRollout(std::shared_ptr<const Ensemble> model, std::shared_ptr<const Actor> actor,
                                 TerminationId termination, int64_t disagreement_rows)
    : model_(std::move(model)),
      actor_(std::move(actor)),
      termination_(termination),
      disagreement_rows_(disagreement_rows) {
  check_components();
  check_termination_args(static_cast<int32_t>(termination_), model_->obs_dim(), "model obs_dim");
}

BranchedRollout::BranchedRollout(std::shared_ptr<const Ensemble> model, std::shared_ptr<const Actor> actor,
                                 TerminationCallback termination, int64_t disagreement_rows)
    : model_(std::move(model)),
      actor_(std::move(actor)),
      callback_(std::move(termination)),
      disagreement_rows_(disagreement_rows) {
  check_components();
  require(static_cast<bool>(callback_), "termination: expected a callable, got an empty function");
}

BranchedRollout::BranchedRollout(std::shared_ptr<const Ensemble> model, std::shared_ptr<const Actor> actor,
                                 std::shared_ptr<const TerminationModel> termination, int64_t disagreement_rows)
    : model_(std::move(model)),
      actor_(std::move(actor)),
      termination_model_(std::move(termination)),
      disagreement_rows_(disagreement_rows) {
  check_components();
  const TerminationModel* t = termination_model_.get();
  require(t != nullptr, "termination: expected a loaded TerminationModel, got a null pointer");
  require(t->obs_dim() == model_->obs_dim() && t->act_dim() == model_->act_dim(),
          "termination: the termination model has obs_dim " + std::to_string(t->obs_dim()) + " and act_dim " +
              std::to_string(t->act_dim()) + ", the model " + std::to_string(model_->obs_dim()) + " and " +
              std::to_string(model_->act_dim()) + " (files of different runs?)");
  callback_ = termination_model_->callback();
}

void BranchedRollout::check_components() const {
  (void)disagreement_sample_rows(disagreement_rows_, 0);  // InvalidArgument for an unknown rule
  require(model_ != nullptr, "model: expected a loaded Ensemble, got a null pointer");
  require(actor_ != nullptr, "actor: expected a loaded Actor, got a null pointer");
  require(actor_->obs_dim() == model_->obs_dim() && actor_->act_dim() == model_->act_dim(),
          "actor: expected obs_dim " + std::to_string(model_->obs_dim()) + " and act_dim " +
              std::to_string(model_->act_dim()) + " (the model's), got " + std::to_string(actor_->obs_dim()) +
              " and " + std::to_string(actor_->act_dim()));
  require(!model_->elites().empty(), "model: a rollout samples among the elites, but the model has none");
}

void BranchedRollout::set_uncertainty(const RolloutUncertainty& uncertainty) {
  uncertainty.validate();
  require(!uncertainty.enabled() || model_->elites().size() >= 2,
          "uncertainty: the disagreement d needs at least 2 elites, the model has " +
              std::to_string(model_->elites().size()));
  uncertainty_ = uncertainty;
}

RolloutStats BranchedRollout::run(const ReplayPool& real, ReplayPool& model_pool, int64_t num_starts,
                                  int64_t horizon, uint64_t seed) const {
  const bool measure = disagreement_rows_ != 0;
  const ActorView actor = actor_->view();
  if (callback_) {
    return branched_rollout(actor, model_->view(), callback_, real, model_pool, num_starts, horizon, seed,
                            measure, disagreement_rows_, uncertainty_);
  }
  return branched_rollout(actor, model_->view(), termination_, real, model_pool, num_starts, horizon, seed,
                          measure, disagreement_rows_, uncertainty_);
}

}  // namespace mbpo_fast

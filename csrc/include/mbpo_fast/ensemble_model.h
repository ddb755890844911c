// mbpo_fast::Ensemble — an ensemble dynamics model that OWNS its weights, loaded from the
// safetensors file EnsembleDynamics.save writes, for C++ programs with no Python.
//
//   auto model = mbpo_fast::Ensemble::load("model.safetensors");
//   model.step(obs, act, batch, seed, /*deterministic=*/false, /*members=*/nullptr,
//              next_obs, reward);
//
// Results are identical to the Python API (EnsembleDynamics.step/predict/disagreement) for
// the same file and seed: both call the same kernels (ensemble.h) with the same Philox
// streams. All methods are const and thread-safe: concurrent callers may share one model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mbpo_fast/ensemble.h"

namespace mbpo_fast {

class Ensemble {
 public:
  // Reads and validates `path` (DESIGN §3 layout: input_mean/std [in], layers.{i}.weight
  // [E, in_i, out_i], layers.{i}.bias [E, out_i], max/min_logvar [obs_dim + 1], elites
  // int64 [K]; metadata obs_dim, act_dim, activation = "silu"). Throws IoError when the file
  // cannot be read and FormatError naming the tensor/key on any inconsistency.
  static Ensemble load(const std::string& path);

  int64_t obs_dim() const noexcept { return view_.obs_dim; }
  int64_t act_dim() const noexcept { return view_.act_dim; }
  int64_t ensemble_size() const noexcept { return view_.ensemble_size; }
  // Linear layers (hidden + output).
  int num_layers() const noexcept { return view_.num_layers; }
  const std::vector<int64_t>& elites() const noexcept { return elites_; }
  // A view of the owned weights (valid while this object lives and is not moved).
  const EnsembleView& view() const noexcept { return view_; }

  // One sampled transition per row (see ensemble_step in ensemble.h):
  //   obs [batch, obs_dim], act [batch, act_dim] -> next_obs_out [batch, obs_dim],
  //   reward_out [batch], members_out [batch] (may be null). `members` [batch] or null
  //   (null: one random elite per row from the Philox stream of `seed`).
  void step(const float* obs, const float* act, int64_t batch, uint64_t seed, bool deterministic,
            const int64_t* members, float* next_obs_out, float* reward_out,
            int64_t* members_out = nullptr) const;
  // Span-style overload: the batch is reward_out.size(); obs must hold batch * obs_dim values,
  // act batch * act_dim, next_obs_out batch * obs_dim, members (when not empty) and
  // members_out (when not empty) batch. Throws InvalidArgument naming the argument with the
  // expected and actual sizes, before anything is written.
  //   std::vector<float> next(B * model.obs_dim()), rew(B);
  //   model.step(obs, act, seed, /*deterministic=*/false, next, rew);
  void step(Span<const float> obs, Span<const float> act, uint64_t seed, bool deterministic,
            Span<float> next_obs_out, Span<float> reward_out, Span<const int64_t> members = {},
            Span<int64_t> members_out = {}) const;
  // Every member on every row: mean_out, var_out [E, batch, obs_dim + 1] (Δobs, reward).
  void predict(const float* obs, const float* act, int64_t batch, float* mean_out, float* var_out) const;
  // Spread of the members' means per row (members null: the elites), out [batch].
  void disagreement(const float* obs, const float* act, int64_t batch, const int64_t* members,
                    int64_t n_members, float* out) const;

  Ensemble(Ensemble&& other) noexcept;
  Ensemble& operator=(Ensemble&& other) noexcept;
  Ensemble(const Ensemble&) = delete;
  Ensemble& operator=(const Ensemble&) = delete;

 private:
  Ensemble() = default;
  void rebind();  // points view_ at the owned vectors

  std::vector<float> input_mean_, input_std_, max_logvar_, min_logvar_;
  std::vector<std::vector<float>> weights_, biases_;
  std::vector<int64_t> elites_;
  EnsembleView view_{};
};

}  // namespace mbpo_fast

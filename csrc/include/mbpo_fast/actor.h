// Native SAC actor: the tanh-squashed Gaussian policy of mbpo_fast/sac.py, run from borrowed
// weights (ActorView, e.g. the live torch parameters) or from an owned copy loaded from the
// safetensors file SAC.export_actor writes (Actor, for C++ programs without Python).
//
// Network: h_0 = obs [batch, obs_dim]; h_{i+1} = relu(h_i @ W_i + b_i) for the hidden layers,
// head = h_L @ W_L + b_L with width 2 * act_dim (raw mean, raw log_std); W_i row-major
// [in_i, out_i]. Epilogue (kernels/actor_epilogue.h):
//   log_std = clamp(raw, log_std_min, log_std_max)      (SAC: -20, 2)
//   u = mean + exp(log_std) * eps,  a = clamp(tanh(u) * action_scale + action_bias, low, high)
//   log_prob = log pi(a | obs) by the change of variables (sac.py, `squashed_gaussian`).
// Noise: eps of element j of row i = random_normal(seed, kStreamPolicyNoise,
// noise_offset + i * act_dim + j) (rng.h), so a batch split into pieces (with the matching
// offsets) draws exactly the numbers of the whole batch, on every backend.
//
// Rows are independent: a row's result does not depend on the batch size, the tiling or
// the thread count (the dense kernels accumulate every row in the same order).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mbpo_fast/common.h"

namespace mbpo_fast {

// At most this many linear layers (hidden + output): keeps the view a flat struct.
constexpr int kActorMaxLayers = 16;

struct ActorView {
  int64_t obs_dim = 0;
  int64_t act_dim = 0;
  int num_layers = 0;  // linear layers, hidden + output (>= 1)
  // widths[0] = obs_dim, widths[i + 1] = output width of layer i, widths[num_layers] = 2 * act_dim.
  int64_t widths[kActorMaxLayers + 1] = {};
  const float* weights[kActorMaxLayers] = {};  // [widths[i], widths[i + 1]], C-contiguous
  const float* biases[kActorMaxLayers] = {};   // [widths[i + 1]]
  const float* action_scale = nullptr;         // [act_dim], > 0
  const float* action_bias = nullptr;          // [act_dim]
  // The action box [act_dim]; null: bias - scale and bias + scale (computed per call).
  const float* action_low = nullptr;
  const float* action_high = nullptr;
  float log_std_min = -20.0f;
  float log_std_max = 2.0f;

  int64_t max_width() const;
  // Throws InvalidArgument naming the first inconsistent field (dims, widths, null pointers,
  // non-positive or non-finite action_scale, low > high, log_std_min > log_std_max).
  void validate() const;
};

// Policy actions of `batch` rows: obs [batch, obs_dim] -> act_out [batch, act_dim] and, when
// log_prob_out is not null, log pi(a | obs) [batch]. deterministic: a = tanh(mean) * scale +
// bias (the log-density is then evaluated at u = mean, as sac.py does). Threaded over row
// tiles with parallel_for; no allocation after the first call on a thread.
void actor_act(const ActorView& view, const float* obs, int64_t batch, uint64_t seed, uint64_t noise_offset,
               bool deterministic, float* act_out, float* log_prob_out);

// Multiply-adds of one row (for FLOP counts in benchmarks): sum_i widths[i] * widths[i + 1].
int64_t actor_macs_per_row(const ActorView& view);

// An actor that owns its weights. Const methods are thread-safe.
class Actor {
 public:
  // layer_weights[i] row-major [widths[i], widths[i + 1]], layer_biases[i] [widths[i + 1]];
  // widths[0] = obs_dim, last = 2 * act_dim. Actions are clamped to [action_low,
  // action_high] (both [act_dim], finite, low <= high); when both are empty the box is
  // action_bias -/+ action_scale computed in float32, which can differ by one ulp from the
  // float32 rounding of the agent's own (float64) bounds. Validated (InvalidArgument).
  Actor(int64_t obs_dim, int64_t act_dim, std::vector<int64_t> widths,
        std::vector<std::vector<float>> layer_weights, std::vector<std::vector<float>> layer_biases,
        std::vector<float> action_scale, std::vector<float> action_bias, float log_std_min = -20.0f,
        float log_std_max = 2.0f, std::vector<float> action_low = {}, std::vector<float> action_high = {});

  // Reads the file SAC.export_actor writes: layers.{i}.weight [in, out], layers.{i}.bias
  // [out] (i = 0..num_layers), action_scale, action_bias [act_dim], action_low, action_high
  // [act_dim] (optional: files written before they were added load with the derived box);
  // metadata format "mbpo_fast.actor/1", obs_dim, act_dim, num_layers (hidden), activation
  // "relu", log_std_min, log_std_max. IoError when unreadable, FormatError when inconsistent.
  static Actor load(const std::string& safetensors_path);

  int64_t obs_dim() const noexcept { return obs_dim_; }
  int64_t act_dim() const noexcept { return act_dim_; }
  int num_layers() const noexcept { return static_cast<int>(weights_.size()); }
  const std::vector<int64_t>& widths() const noexcept { return widths_; }

  // A view of the owned weights (valid while this Actor lives and is not moved-from).
  ActorView view() const;

  // See actor_act().
  void act(const float* obs, int64_t batch, uint64_t seed, uint64_t noise_offset, bool deterministic,
           float* act_out, float* log_prob_out = nullptr) const;

 private:
  int64_t obs_dim_, act_dim_;
  std::vector<int64_t> widths_;
  std::vector<std::vector<float>> weights_, biases_;
  std::vector<float> scale_, bias_, low_, high_;
  float log_std_min_, log_std_max_;
};

}  // namespace mbpo_fast

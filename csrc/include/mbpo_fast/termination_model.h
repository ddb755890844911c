// Learned termination function (issue 16): a small MLP classifier of transitions, run natively
// inside a rollout (no Python), loaded from the safetensors file mf.TerminationModel.save writes.
//
// Model: x = concat(obs, act, next_obs) [B, in], in = 2 * obs_dim + act_dim, normalized
// (x - input_mean) / input_std; num_layers linear layers h = h @ W + b with W [in_i, out_i]
// row-major, SiLU after every layer but the last, whose width is 1 (the logit of
// "terminated"). A row is terminated when its logit > 0 (probability > 0.5).
//
// File layout (safetensors): input_mean [in], input_std [in], layers.{i}.weight [in_i, out_i],
// layers.{i}.bias [out_i] for i = 0 .. num_layers - 1 (float32); metadata format =
// "mbpo_fast.termination_model/1", obs_dim, act_dim, num_layers, activation = "silu".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mbpo_fast/common.h"
#include "mbpo_fast/rollout.h"

namespace mbpo_fast {

constexpr int kTerminationMaxLayers = 16;

// Borrowed weights (raw pointers read during the call, never kept).
struct TerminationMLPView {
  int64_t obs_dim = 0;
  int64_t act_dim = 0;
  int num_layers = 0;                              // linear layers, >= 1
  int64_t widths[kTerminationMaxLayers + 1] = {};  // widths[0] = in_dim(), widths[num_layers] = 1
  const float* input_mean = nullptr;               // [in]
  const float* input_std = nullptr;                // [in], > 0
  const float* weights[kTerminationMaxLayers] = {};  // [widths[i], widths[i + 1]]
  const float* biases[kTerminationMaxLayers] = {};   // [widths[i + 1]]

  int64_t in_dim() const { return 2 * obs_dim + act_dim; }
  // Throws InvalidArgument naming the first inconsistent field.
  void validate() const;
};

// out[i] = 1 when the logit of row i is > 0, else 0; logits_out [n] (may be null) receives the
// logits. obs, next_obs [n, obs_dim], act [n, act_dim]. Threaded over rows for large n.
void termination_mlp(const TerminationMLPView& view, const float* obs, const float* act, const float* next_obs,
                     int64_t n, uint8_t* out, float* logits_out);

// Owns the weights of a learned termination model (the C++ counterpart of mf.TerminationModel).
class TerminationModel {
 public:
  // Throws InvalidArgument for inconsistent shapes (see TerminationMLPView).
  TerminationModel(int64_t obs_dim, int64_t act_dim, std::vector<int64_t> widths, std::vector<float> input_mean,
                   std::vector<float> input_std, std::vector<std::vector<float>> weights,
                   std::vector<std::vector<float>> biases);
  // Reads a file mf.TerminationModel.save wrote; FormatError / IoError on a bad file.
  static TerminationModel load(const std::string& path);

  TerminationMLPView view() const;
  int64_t obs_dim() const noexcept { return obs_dim_; }
  int64_t act_dim() const noexcept { return act_dim_; }
  // A rollout termination (rollout.h) that calls termination_mlp on this model; the model must
  // outlive the callback, and the rollout's rows must have this model's obs_dim and act_dim
  // (the callback cannot check: rows of another width are read out of bounds). Prefer
  // BranchedRollout(model, actor, std::shared_ptr<const TerminationModel>), which checks both.
  TerminationCallback callback() const;

 private:
  int64_t obs_dim_, act_dim_;
  std::vector<int64_t> widths_;
  std::vector<float> input_mean_, input_std_;
  std::vector<std::vector<float>> weights_, biases_;
};

}  // namespace mbpo_fast

#include "mbpo_fast/ensemble_model.h"

#include <cmath>
#include <string>
#include <utility>

#include "mbpo_fast/safetensors.h"

namespace mbpo_fast {
namespace {

void require_finite(const std::vector<float>& v, const std::string& name, const std::string& source) {
  for (float x : v) {
    if (!std::isfinite(x)) throw FormatError(source + ": tensor '" + name + "' contains a non-finite value");
  }
}

}  // namespace

Ensemble Ensemble::load(const std::string& path) {
  const SafetensorsFile file = SafetensorsFile::read(path);
  const std::string& src = file.source();
  Ensemble m;
  const int64_t obs_dim = file.metadata_int("obs_dim");
  const int64_t act_dim = file.metadata_int("act_dim");
  // Bounded like the pool's dims (2**24), so the sizes derived below cannot overflow.
  constexpr int64_t kMaxDim = int64_t{1} << 24;
  if (obs_dim <= 0 || act_dim <= 0 || obs_dim > kMaxDim || act_dim > kMaxDim) {
    throw FormatError(src + ": metadata obs_dim/act_dim must be in [1, 2**24], got " + std::to_string(obs_dim) +
                      " and " + std::to_string(act_dim));
  }
  if (file.metadata("activation") != "silu") {
    throw FormatError(src + ": unsupported activation '" + file.metadata("activation") + "' (expected 'silu')");
  }
  const int64_t in = obs_dim + act_dim, out = obs_dim + 1;
  m.input_mean_ = file.f32("input_mean", {in});
  m.input_std_ = file.f32("input_std", {in});
  m.max_logvar_ = file.f32("max_logvar", {out});
  m.min_logvar_ = file.f32("min_logvar", {out});
  for (float s : m.input_std_) {
    if (!(s > 0.0f) || !std::isfinite(s)) throw FormatError(src + ": tensor 'input_std' must be finite and > 0");
  }
  require_finite(m.input_mean_, "input_mean", src);
  require_finite(m.max_logvar_, "max_logvar", src);
  require_finite(m.min_logvar_, "min_logvar", src);

  int64_t E = -1, width = in;
  int layers = 0;
  while (file.has("layers." + std::to_string(layers) + ".weight")) {
    if (layers >= kEnsembleMaxLayers) {
      throw FormatError(src + ": more than " + std::to_string(kEnsembleMaxLayers) + " layers");
    }
    const std::string w = "layers." + std::to_string(layers) + ".weight";
    const std::string b = "layers." + std::to_string(layers) + ".bias";
    const TensorInfo& info = file.info(w);
    if (info.shape.size() != 3) throw FormatError(src + ": tensor '" + w + "' must have rank 3 [E, in, out]");
    if (E < 0) E = info.shape[0];
    m.weights_.push_back(file.f32(w, {E, width, -1}));
    const int64_t next = info.shape[2];
    m.biases_.push_back(file.f32(b, {E, next}));
    require_finite(m.weights_.back(), w, src);
    require_finite(m.biases_.back(), b, src);
    width = next;
    ++layers;
  }
  if (layers == 0) throw FormatError(src + ": missing tensor 'layers.0.weight'");
  if (E <= 0) throw FormatError(src + ": ensemble size must be > 0");
  if (width != 2 * out) {
    throw FormatError(src + ": the last layer has width " + std::to_string(width) + ", expected 2 * (obs_dim + 1) = " +
                      std::to_string(2 * out));
  }
  m.elites_ = file.i64("elites", {-1});
  if (m.elites_.empty()) throw FormatError(src + ": tensor 'elites' is empty");
  for (int64_t e : m.elites_) {
    if (e < 0 || e >= E) throw FormatError(src + ": elite index " + std::to_string(e) + " is outside [0, " + std::to_string(E) + ")");
  }
  m.view_.obs_dim = obs_dim;
  m.view_.act_dim = act_dim;
  m.view_.ensemble_size = E;
  m.view_.num_layers = layers;
  m.view_.widths[0] = in;
  for (int i = 0; i < layers; ++i) m.view_.widths[i + 1] = static_cast<int64_t>(m.biases_[static_cast<size_t>(i)].size()) / E;
  m.rebind();
  m.view_.validate(true);
  return m;
}

void Ensemble::rebind() {
  view_.input_mean = input_mean_.data();
  view_.input_std = input_std_.data();
  view_.max_logvar = max_logvar_.data();
  view_.min_logvar = min_logvar_.data();
  for (size_t i = 0; i < weights_.size(); ++i) {
    view_.weights[i] = weights_[i].data();
    view_.biases[i] = biases_[i].data();
  }
  view_.elites = elites_.data();
  view_.num_elites = static_cast<int64_t>(elites_.size());
}

Ensemble::Ensemble(Ensemble&& other) noexcept
    : input_mean_(std::move(other.input_mean_)),
      input_std_(std::move(other.input_std_)),
      max_logvar_(std::move(other.max_logvar_)),
      min_logvar_(std::move(other.min_logvar_)),
      weights_(std::move(other.weights_)),
      biases_(std::move(other.biases_)),
      elites_(std::move(other.elites_)),
      view_(other.view_) {
  rebind();
}

Ensemble& Ensemble::operator=(Ensemble&& other) noexcept {
  input_mean_ = std::move(other.input_mean_);
  input_std_ = std::move(other.input_std_);
  max_logvar_ = std::move(other.max_logvar_);
  min_logvar_ = std::move(other.min_logvar_);
  weights_ = std::move(other.weights_);
  biases_ = std::move(other.biases_);
  elites_ = std::move(other.elites_);
  view_ = other.view_;
  rebind();
  return *this;
}

void Ensemble::step(const float* obs, const float* act, int64_t batch, uint64_t seed, bool deterministic,
                    const int64_t* members, float* next_obs_out, float* reward_out, int64_t* members_out) const {
  ensemble_step(view_, obs, act, batch, seed, deterministic, members, next_obs_out, reward_out, members_out);
}

void Ensemble::step(Span<const float> obs, Span<const float> act, uint64_t seed, bool deterministic,
                    Span<float> next_obs_out, Span<float> reward_out, Span<const int64_t> members,
                    Span<int64_t> members_out) const {
  const size_t batch = reward_out.size();
  auto check = [batch](const char* name, size_t actual, int64_t per_row) {
    const size_t expected = batch * static_cast<size_t>(per_row);
    require(actual == expected, std::string(name) + ": expected " + std::to_string(expected) +
                                    " values (batch " + std::to_string(batch) + " from reward_out.size() x " +
                                    std::to_string(per_row) + "), got " + std::to_string(actual));
  };
  check("obs", obs.size(), obs_dim());
  check("act", act.size(), act_dim());
  check("next_obs_out", next_obs_out.size(), obs_dim());
  if (!members.empty()) check("members", members.size(), 1);
  if (!members_out.empty()) check("members_out", members_out.size(), 1);
  ensemble_step(view_, obs.data(), act.data(), static_cast<int64_t>(batch), seed, deterministic,
                members.empty() ? nullptr : members.data(), next_obs_out.data(), reward_out.data(),
                members_out.empty() ? nullptr : members_out.data());
}

void Ensemble::predict(const float* obs, const float* act, int64_t batch, float* mean_out, float* var_out) const {
  ensemble_predict(view_, obs, act, batch, mean_out, var_out);
}

void Ensemble::disagreement(const float* obs, const float* act, int64_t batch, const int64_t* members,
                            int64_t n_members, float* out) const {
  ensemble_disagreement(view_, obs, act, batch, members, n_members, out);
}

}  // namespace mbpo_fast

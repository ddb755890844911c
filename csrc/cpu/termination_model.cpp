// Learned termination MLP (termination_model.h): a small classifier (~6 kFLOP per row at the
// default 2 x 64), so plain loops over row tiles; threads only for large batches.
#include "mbpo_fast/termination_model.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "mbpo_fast/parallel.h"
#include "mbpo_fast/safetensors.h"

namespace mbpo_fast {

namespace {
constexpr int64_t kRowsPerTask = 256;
}

void TerminationMLPView::validate() const {
  require(obs_dim >= 1 && act_dim >= 0, "termination model: expected obs_dim >= 1 and act_dim >= 0, got " +
                                            std::to_string(obs_dim) + " and " + std::to_string(act_dim));
  require(num_layers >= 1 && num_layers <= kTerminationMaxLayers,
          "termination model: num_layers must be in [1, " + std::to_string(kTerminationMaxLayers) + "], got " +
              std::to_string(num_layers));
  require(widths[0] == in_dim(), "termination model: widths[0] must be 2 * obs_dim + act_dim = " +
                                     std::to_string(in_dim()) + ", got " + std::to_string(widths[0]));
  require(widths[num_layers] == 1,
          "termination model: the last layer must have width 1, got " + std::to_string(widths[num_layers]));
  require(input_mean && input_std, "termination model: input_mean and input_std must not be null");
  for (int i = 0; i < num_layers; ++i) {
    require(widths[i + 1] >= 1 && weights[i] && biases[i],
            "termination model: layer " + std::to_string(i) + " has width < 1 or a null weight/bias");
  }
}

void termination_mlp(const TerminationMLPView& v, const float* obs, const float* act, const float* next_obs,
                     int64_t n, uint8_t* out, float* logits_out) {
  v.validate();
  require(n >= 0, "termination_mlp: n must be >= 0, got " + std::to_string(n));
  if (n == 0) return;
  require(obs && next_obs && out && (act || v.act_dim == 0), "termination_mlp: null input or output pointer");
  int64_t max_w = 0;
  for (int i = 0; i <= v.num_layers; ++i) max_w = std::max(max_w, v.widths[i]);
  const int64_t od = v.obs_dim, ad = v.act_dim;
  auto rows = [&](int64_t r0, int64_t r1) {
    std::vector<float> a(static_cast<size_t>(max_w)), b(static_cast<size_t>(max_w));
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t c = 0; c < od; ++c) a[c] = (obs[r * od + c] - v.input_mean[c]) / v.input_std[c];
      for (int64_t c = 0; c < ad; ++c) a[od + c] = (act[r * ad + c] - v.input_mean[od + c]) / v.input_std[od + c];
      for (int64_t c = 0; c < od; ++c) {
        a[od + ad + c] = (next_obs[r * od + c] - v.input_mean[od + ad + c]) / v.input_std[od + ad + c];
      }
      for (int i = 0; i < v.num_layers; ++i) {
        const int64_t k = v.widths[i], m = v.widths[i + 1];
        const float* w = v.weights[i];
        std::copy(v.biases[i], v.biases[i] + m, b.begin());
        for (int64_t p = 0; p < k; ++p) {
          const float x = a[p];
          const float* wr = w + p * m;
          for (int64_t j = 0; j < m; ++j) b[j] += x * wr[j];
        }
        if (i + 1 < v.num_layers) {
          for (int64_t j = 0; j < m; ++j) b[j] = b[j] / (1.0f + std::exp(-b[j]));  // SiLU
        }
        std::swap(a, b);
      }
      out[r] = a[0] > 0.0f ? 1 : 0;
      if (logits_out) logits_out[r] = a[0];
    }
  };
  if (n < 2 * kRowsPerTask) {
    rows(0, n);
  } else {
    parallel_for(n, kRowsPerTask, rows);
  }
}

TerminationModel::TerminationModel(int64_t obs_dim, int64_t act_dim, std::vector<int64_t> widths,
                                   std::vector<float> input_mean, std::vector<float> input_std,
                                   std::vector<std::vector<float>> weights, std::vector<std::vector<float>> biases)
    : obs_dim_(obs_dim),
      act_dim_(act_dim),
      widths_(std::move(widths)),
      input_mean_(std::move(input_mean)),
      input_std_(std::move(input_std)),
      weights_(std::move(weights)),
      biases_(std::move(biases)) {
  const size_t L = weights_.size();
  require(L >= 1 && L <= static_cast<size_t>(kTerminationMaxLayers) && biases_.size() == L &&
              widths_.size() == L + 1,
          "termination model: expected 1.." + std::to_string(kTerminationMaxLayers) +
              " layers with one bias each and num_layers + 1 widths");
  const int64_t in = 2 * obs_dim + act_dim;
  require(static_cast<int64_t>(input_mean_.size()) == in && static_cast<int64_t>(input_std_.size()) == in,
          "termination model: input_mean and input_std must have 2 * obs_dim + act_dim = " + std::to_string(in) +
              " entries");
  for (float s : input_std_) require(s > 0.0f, "termination model: input_std entries must be > 0");
  for (size_t i = 0; i < L; ++i) {
    require(static_cast<int64_t>(weights_[i].size()) == widths_[i] * widths_[i + 1] &&
                static_cast<int64_t>(biases_[i].size()) == widths_[i + 1],
            "termination model: layer " + std::to_string(i) + " has the wrong number of weights or biases");
  }
  view().validate();
}

TerminationMLPView TerminationModel::view() const {
  TerminationMLPView v;
  v.obs_dim = obs_dim_;
  v.act_dim = act_dim_;
  v.num_layers = static_cast<int>(weights_.size());
  for (size_t i = 0; i < widths_.size(); ++i) v.widths[i] = widths_[i];
  v.input_mean = input_mean_.data();
  v.input_std = input_std_.data();
  for (size_t i = 0; i < weights_.size(); ++i) {
    v.weights[i] = weights_[i].data();
    v.biases[i] = biases_[i].data();
  }
  return v;
}

TerminationCallback TerminationModel::callback() const {
  const TerminationMLPView v = view();
  return [v](const float* o, const float* a, const float* next, int64_t n, uint8_t* out) {
    termination_mlp(v, o, a, next, n, out, nullptr);
  };
}

TerminationModel TerminationModel::load(const std::string& path) {
  const SafetensorsFile f = SafetensorsFile::read(path);
  const std::string src = f.source();
  auto fail = [&](const std::string& msg) { throw FormatError(src + ": " + msg); };
  const auto& meta = f.metadata();
  auto it = meta.find("format");
  if (it == meta.end() || it->second != "mbpo_fast.termination_model/1") {
    fail("metadata format must be 'mbpo_fast.termination_model/1' (a file mf.TerminationModel.save wrote)");
  }
  it = meta.find("activation");
  if (it != meta.end() && it->second != "silu") fail("activation '" + it->second + "' is not supported");
  const int64_t od = f.metadata_int("obs_dim"), ad = f.metadata_int("act_dim");
  const int64_t L = f.metadata_int("num_layers");
  constexpr int64_t kMaxDim = int64_t{1} << 24;  // as the other readers: 2 * od + ad cannot overflow
  if (od < 1 || ad < 0 || od > kMaxDim || ad > kMaxDim) {
    fail("metadata obs_dim must be in [1, 2^24] and act_dim in [0, 2^24], got " + std::to_string(od) +
         " and " + std::to_string(ad));
  }
  if (L < 1 || L > kTerminationMaxLayers) fail("metadata num_layers must be in [1, 16]");
  if (f.has("layers." + std::to_string(L) + ".weight")) fail("holds more layers than metadata num_layers");
  const int64_t in = 2 * od + ad;
  std::vector<int64_t> widths{in};
  std::vector<std::vector<float>> ws, bs;
  for (int64_t i = 0; i < L; ++i) {
    const std::string wn = "layers." + std::to_string(i) + ".weight";
    ws.push_back(f.f32(wn, {widths.back(), i + 1 == L ? 1 : -1}));
    const int64_t m = f.info(wn).shape.at(1);
    bs.push_back(f.f32("layers." + std::to_string(i) + ".bias", {m}));
    widths.push_back(m);
  }
  std::vector<float> mean = f.f32("input_mean", {in}), stdv = f.f32("input_std", {in});
  try {
    return TerminationModel(od, ad, std::move(widths), std::move(mean), std::move(stdv), std::move(ws),
                            std::move(bs));
  } catch (const InvalidArgument& e) {
    fail(e.what());
  }
  throw FormatError(src + ": unreachable");
}

}  // namespace mbpo_fast

// CPU implementation of the native SAC actor (actor.h).
//
// Rows are processed in tiles (one thread per tile): layer 0 reads the observations in place,
// every layer runs the shared dense micro-kernel (AVX-512 or portable, the same selection as
// the ensemble ops) and the hidden ReLU is applied to the tile while it is still in L1/L2;
// the per-row epilogue (kernels/actor_epilogue.h) draws the Philox noise and squashes.
#include "mbpo_fast/actor.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "cpu/ensemble_kernels.h"
#include "kernels/actor_epilogue.h"
#include "mbpo_fast/ensemble.h"
#include "mbpo_fast/parallel.h"
#include "mbpo_fast/safetensors.h"

namespace mbpo_fast {

namespace {

// Rows per tile: a multiple of the AVX-512 kernel's 6-row block; two activation buffers of
// 96 x 256 floats (192 KB) stay in L2 while a layer's weights stream past.
constexpr int64_t kTileRows = 96;
// Below this many rows the whole call runs on the calling thread.
constexpr int64_t kParallelMinRows = 24;

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

struct Scratch {
  std::vector<float> a, b, eps;
  float* ensure(std::vector<float>& v, size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
  }
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

cpu::DenseFn active_dense() {
  // Follows the ensemble ops' kernel setting (ensemble_set_kernel / MBPO_FAST_CPU_KERNEL).
  return ensemble_kernel() == "avx512" ? &cpu::dense_avx512 : &cpu::dense_portable;
}

void relu_tile(float* y, int64_t rows, int64_t n, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) {
    float* yr = y + r * ld;
    // kernels::relu keeps NaN (as torch.relu does) and vectorizes to a compare + blend.
    for (int64_t c = 0; c < n; ++c) yr[c] = kernels::relu(yr[c]);
  }
}

std::string fmt(float x) {
  std::string s = std::to_string(x);
  return s;
}

}  // namespace

// ------------------------------------------------------------------ view

int64_t ActorView::max_width() const {
  int64_t w = 0;
  for (int i = 1; i <= num_layers; ++i) w = std::max(w, widths[i]);
  return w;
}

void ActorView::validate() const {
  require(obs_dim >= 1, "actor: obs_dim must be >= 1, got " + std::to_string(obs_dim));
  require(act_dim >= 1, "actor: act_dim must be >= 1, got " + std::to_string(act_dim));
  require(num_layers >= 1 && num_layers <= kActorMaxLayers, "actor: num_layers must be in [1, " +
                                                                std::to_string(kActorMaxLayers) + "], got " +
                                                                std::to_string(num_layers));
  require(widths[0] == obs_dim, "actor: widths[0] must be obs_dim = " + std::to_string(obs_dim) + ", got " +
                                    std::to_string(widths[0]));
  require(widths[num_layers] == 2 * act_dim,
          "actor: output width must be 2 * act_dim = " + std::to_string(2 * act_dim) +
              " (mean, log_std), got " + std::to_string(widths[num_layers]));
  for (int i = 0; i <= num_layers; ++i) {
    require(widths[i] >= 1,
            "actor: widths[" + std::to_string(i) + "] must be >= 1, got " + std::to_string(widths[i]));
  }
  for (int i = 0; i < num_layers; ++i) {
    require(weights[i] && biases[i], "actor: layer " + std::to_string(i) + " has a null weight or bias");
  }
  require(action_scale && action_bias, "actor: action_scale and action_bias must not be null");
  require((action_low == nullptr) == (action_high == nullptr),
          "actor: action_low and action_high must both be given or both be null");
  for (int64_t j = 0; j < act_dim; ++j) {
    require(std::isfinite(action_scale[j]) && action_scale[j] > 0.0f,
            "action_scale: every entry must be finite and > 0, got " + fmt(action_scale[j]) + " at index " +
                std::to_string(j));
    require(std::isfinite(action_bias[j]), "action_bias: every entry must be finite, got " +
                                               fmt(action_bias[j]) + " at index " + std::to_string(j));
    if (action_low) {
      require(
          std::isfinite(action_low[j]) && std::isfinite(action_high[j]) && action_low[j] <= action_high[j],
          "action_low/action_high: expected finite low <= high, got low=" + fmt(action_low[j]) +
              ", high=" + fmt(action_high[j]) + " at index " + std::to_string(j));
    }
  }
  require(
      std::isfinite(log_std_min) && std::isfinite(log_std_max) && log_std_min <= log_std_max,
      "actor: expected finite log_std_min <= log_std_max, got " + fmt(log_std_min) + ", " + fmt(log_std_max));
}

int64_t actor_macs_per_row(const ActorView& v) {
  int64_t macs = 0;
  for (int i = 0; i < v.num_layers; ++i) macs += v.widths[i] * v.widths[i + 1];
  return macs;
}

// ------------------------------------------------------------------ act

void actor_act(const ActorView& v, const float* obs, int64_t batch, uint64_t seed, uint64_t noise_offset,
               bool deterministic, float* act_out, float* log_prob_out) {
  require(batch >= 0, "actor_act: batch must be >= 0, got " + std::to_string(batch));
  v.validate();
  if (batch == 0) return;
  require(obs != nullptr && act_out != nullptr, "actor_act: null obs or act_out pointer");
  const int64_t A = v.act_dim;

  std::vector<float> box;
  const float* low = v.action_low;
  const float* high = v.action_high;
  if (low == nullptr) {
    box.resize(static_cast<size_t>(2 * A));
    for (int64_t j = 0; j < A; ++j) {
      box[j] = v.action_bias[j] - v.action_scale[j];
      box[A + j] = v.action_bias[j] + v.action_scale[j];
    }
    low = box.data();
    high = box.data() + A;
  }

  // Tiles of at most kTileRows rows, their count a multiple of the thread count when the
  // batch is small (400 rows on 2 threads: 6 tiles of 72 rather than 3 + 2 tiles of 96).
  const int64_t threads = std::max(1, num_threads());
  int64_t want = (batch + kTileRows - 1) / kTileRows;
  if (want < 8 * threads) want = round_up(want, threads);
  const int64_t tile = std::max<int64_t>(6, round_up((batch + want - 1) / want, 6));
  const int64_t num_tiles = (batch + tile - 1) / tile;
  const cpu::DenseFn dense = active_dense();
  const int64_t ld = round_up(v.max_width(), 16);
  const uint64_t ua = static_cast<uint64_t>(A);

  auto run = [&](int64_t t0, int64_t t1) {
    Scratch& s = scratch();
    float* xa = s.ensure(s.a, static_cast<size_t>(tile * ld));
    float* xb = s.ensure(s.b, static_cast<size_t>(tile * ld));
    float* eps = s.ensure(s.eps, static_cast<size_t>(A));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t row0 = t * tile;
      const int64_t rows = std::min(tile, batch - row0);
      const float* x = obs + row0 * v.obs_dim;
      int64_t ldx = v.obs_dim;
      float* y = xa;
      for (int i = 0; i < v.num_layers; ++i) {
        const int64_t k = v.widths[i], n = v.widths[i + 1];
        dense(x, ldx, rows, v.weights[i], v.biases[i], k, n, y, ld, /*silu=*/false);
        if (i + 1 < v.num_layers) relu_tile(y, rows, n, ld);
        x = y;
        ldx = ld;
        y = (y == xa) ? xb : xa;
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t row = row0 + r;
        if (!deterministic) {
          kernels::policy_noise(seed, noise_offset + static_cast<uint64_t>(row) * ua, A, eps);
        }
        const float lp =
            kernels::actor_row_epilogue(x + r * ld, A, eps, deterministic, v.action_scale, v.action_bias, low,
                                        high, v.log_std_min, v.log_std_max, act_out + row * A);
        if (log_prob_out) log_prob_out[row] = lp;
      }
    }
  };
  if (batch < kParallelMinRows || num_tiles < 2) {
    run(0, num_tiles);
  } else {
    parallel_for(num_tiles, 1, run);
  }
}

// ------------------------------------------------------------------ Actor

Actor::Actor(int64_t obs_dim, int64_t act_dim, std::vector<int64_t> widths,
             std::vector<std::vector<float>> layer_weights, std::vector<std::vector<float>> layer_biases,
             std::vector<float> action_scale, std::vector<float> action_bias, float log_std_min,
             float log_std_max, std::vector<float> action_low, std::vector<float> action_high)
    : obs_dim_(obs_dim),
      act_dim_(act_dim),
      widths_(std::move(widths)),
      weights_(std::move(layer_weights)),
      biases_(std::move(layer_biases)),
      scale_(std::move(action_scale)),
      bias_(std::move(action_bias)),
      low_(std::move(action_low)),
      high_(std::move(action_high)),
      log_std_min_(log_std_min),
      log_std_max_(log_std_max) {
  const size_t L = weights_.size();
  require(L >= 1 && L <= static_cast<size_t>(kActorMaxLayers),
          "Actor: expected 1.." + std::to_string(kActorMaxLayers) + " layers, got " + std::to_string(L));
  require(biases_.size() == L, "Actor: expected one bias per layer (" + std::to_string(L) + "), got " +
                                   std::to_string(biases_.size()));
  require(widths_.size() == L + 1,
          "Actor: expected " + std::to_string(L + 1) + " widths, got " + std::to_string(widths_.size()));
  require(act_dim_ >= 1 && scale_.size() == static_cast<size_t>(act_dim_) &&
              bias_.size() == static_cast<size_t>(act_dim_),
          "Actor: action_scale and action_bias must have act_dim = " + std::to_string(act_dim_) + " entries");
  for (size_t i = 0; i < L; ++i) {
    require(widths_[i] >= 1 && widths_[i + 1] >= 1 &&
                weights_[i].size() == static_cast<size_t>(widths_[i] * widths_[i + 1]) &&
                biases_[i].size() == static_cast<size_t>(widths_[i + 1]),
            "Actor: layer " + std::to_string(i) + " has " + std::to_string(weights_[i].size()) +
                " weights and " + std::to_string(biases_[i].size()) + " biases; expected " +
                std::to_string(widths_[i]) + " x " + std::to_string(widths_[i + 1]) + " and " +
                std::to_string(widths_[i + 1]));
  }
  require(low_.empty() == high_.empty(), "Actor: action_low and action_high must both be given or both be empty");
  if (low_.empty()) {
    // No explicit box: low = bias - scale, high = bias + scale (in float32).
    low_.resize(scale_.size());
    high_.resize(scale_.size());
    for (size_t j = 0; j < scale_.size(); ++j) {
      low_[j] = bias_[j] - scale_[j];
      high_[j] = bias_[j] + scale_[j];
    }
  } else {
    require(low_.size() == static_cast<size_t>(act_dim_) && high_.size() == static_cast<size_t>(act_dim_),
            "Actor: action_low and action_high must have act_dim = " + std::to_string(act_dim_) +
                " entries, got " + std::to_string(low_.size()) + " and " + std::to_string(high_.size()));
  }
  view().validate();  // finite, low <= high
}

ActorView Actor::view() const {
  ActorView v;
  v.obs_dim = obs_dim_;
  v.act_dim = act_dim_;
  v.num_layers = static_cast<int>(weights_.size());
  for (size_t i = 0; i < widths_.size() && i <= static_cast<size_t>(kActorMaxLayers); ++i)
    v.widths[i] = widths_[i];
  for (size_t i = 0; i < weights_.size() && i < static_cast<size_t>(kActorMaxLayers); ++i) {
    v.weights[i] = weights_[i].data();
    v.biases[i] = biases_[i].data();
  }
  v.action_scale = scale_.data();
  v.action_bias = bias_.data();
  v.action_low = low_.data();
  v.action_high = high_.data();
  v.log_std_min = log_std_min_;
  v.log_std_max = log_std_max_;
  return v;
}

void Actor::act(const float* obs, int64_t batch, uint64_t seed, uint64_t noise_offset, bool deterministic,
                float* act_out, float* log_prob_out) const {
  actor_act(view(), obs, batch, seed, noise_offset, deterministic, act_out, log_prob_out);
}

Actor Actor::load(const std::string& path) {
  const SafetensorsFile f = SafetensorsFile::read(path);
  const std::string src = f.source();
  auto fail = [&](const std::string& msg) { throw FormatError(src + ": " + msg); };
  const auto meta = f.metadata();
  auto fmt_it = meta.find("format");
  if (fmt_it != meta.end() && fmt_it->second != "mbpo_fast.actor/1") {
    fail("metadata format is '" + fmt_it->second + "', expected 'mbpo_fast.actor/1'");
  }
  auto act_it = meta.find("activation");
  if (act_it != meta.end() && act_it->second != "relu") {
    fail("activation '" + act_it->second + "' is not supported (expected 'relu')");
  }
  const int64_t obs_dim = f.metadata_int("obs_dim");
  const int64_t act_dim = f.metadata_int("act_dim");
  const int64_t hidden = f.metadata_int("num_layers");
  // Bounded (2**24, as the pool's dims) so 2 * act_dim and the widths cannot overflow.
  constexpr int64_t kMaxDim = int64_t{1} << 24;
  if (obs_dim < 1 || act_dim < 1 || obs_dim > kMaxDim || act_dim > kMaxDim) {
    fail("metadata obs_dim and act_dim must be in [1, 2**24], got " + std::to_string(obs_dim) + " and " +
         std::to_string(act_dim));
  }
  if (hidden < 0 || hidden + 1 > kActorMaxLayers) {
    fail("metadata num_layers must be in [0, " + std::to_string(kActorMaxLayers - 1) + "], got " +
         std::to_string(hidden));
  }
  auto parse_float = [&](const char* key, float fallback) {
    auto it = meta.find(key);
    if (it == meta.end()) return fallback;
    try {
      size_t used = 0;
      const float x = std::stof(it->second, &used);
      if (used != it->second.size()) throw std::invalid_argument("trailing characters");
      return x;
    } catch (const std::exception&) {
      fail(std::string("metadata ") + key + " = '" + it->second + "' is not a number");
    }
    return fallback;
  };
  const float ls_min = parse_float("log_std_min", -20.0f);
  const float ls_max = parse_float("log_std_max", 2.0f);
  const int64_t L = hidden + 1;
  if (f.has("layers." + std::to_string(L) + ".weight")) {
    fail("holds more layers than metadata num_layers + 1 = " + std::to_string(L));
  }
  std::vector<int64_t> widths{obs_dim};
  std::vector<std::vector<float>> ws, bs;
  for (int64_t i = 0; i < L; ++i) {
    const std::string wn = "layers." + std::to_string(i) + ".weight";
    const int64_t out = i + 1 == L ? 2 * act_dim : -1;
    ws.push_back(f.f32(wn, {widths.back(), out}));
    const int64_t n = f.info(wn).shape.at(1);
    bs.push_back(f.f32("layers." + std::to_string(i) + ".bias", {n}));
    widths.push_back(n);
  }
  std::vector<float> scale = f.f32("action_scale", {act_dim});
  std::vector<float> bias = f.f32("action_bias", {act_dim});
  std::vector<float> low, high;
  if (f.has("action_low") || f.has("action_high")) {
    if (!f.has("action_low") || !f.has("action_high")) fail("holds only one of action_low and action_high");
    low = f.f32("action_low", {act_dim});
    high = f.f32("action_high", {act_dim});
  }
  try {
    return Actor(obs_dim, act_dim, std::move(widths), std::move(ws), std::move(bs), std::move(scale),
                 std::move(bias), ls_min, ls_max, std::move(low), std::move(high));
  } catch (const InvalidArgument& e) {
    fail(e.what());
  }
  throw FormatError(src + ": unreachable");
}

}  // namespace mbpo_fast

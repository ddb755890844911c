// The native SAC actor: against a scalar double reference of the policy (forward, clamp,
// tanh squash, log-prob), row independence (batch splits with noise offsets, thread
// counts), validation, and Actor::load from a hand-written safetensors file.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "harness.h"
#include "mbpo_fast/actor.h"
#include "mbpo_fast/parallel.h"
#include "mbpo_fast/rng.h"

using namespace mbpo_fast;

namespace {

struct Lcg {
  uint64_t s;
  float uniform() {  // [-1, 1)
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>((s >> 40) * (1.0 / 8388608.0)) - 1.0f;
  }
};

const std::vector<int64_t> kWidths = {5, 20, 13, 4};  // obs 5 -> 20 -> 13 -> (mean, log_std) x 2

Actor make_actor(uint64_t seed) {
  Lcg g{seed};
  std::vector<std::vector<float>> w, b;
  for (size_t i = 0; i + 1 < kWidths.size(); ++i) {
    std::vector<float> wi(static_cast<size_t>(kWidths[i] * kWidths[i + 1])),
        bi(static_cast<size_t>(kWidths[i + 1]));
    for (auto& x : wi) x = g.uniform() * 1.2f;
    for (auto& x : bi) x = g.uniform() * 0.3f;
    w.push_back(wi);
    b.push_back(bi);
  }
  // Large log_std weights so some rows reach the clamp bounds.
  for (int64_t k = 0; k < kWidths[2]; ++k) w[2][static_cast<size_t>(k * 4 + 3)] *= 20.0f;
  return Actor(5, 2, kWidths, w, b, {1.5f, 0.25f}, {0.5f, -0.1f});
}

std::vector<float> random_obs(int64_t n, uint64_t seed) {
  Lcg g{seed};
  std::vector<float> o(static_cast<size_t>(n * 5));
  for (auto& x : o) x = 2.0f * g.uniform();
  return o;
}

// Scalar double reference of one row.
void reference_row(const Actor& actor, const float* obs, uint64_t seed, uint64_t first_noise, bool det,
                   double* act, double* log_prob) {
  const ActorView v = actor.view();
  std::vector<double> h(obs, obs + 5);
  for (int i = 0; i < v.num_layers; ++i) {
    const int64_t k = v.widths[i], n = v.widths[i + 1];
    std::vector<double> y(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) {
      double s = v.biases[i][j];
      for (int64_t c = 0; c < k; ++c) s += h[static_cast<size_t>(c)] * v.weights[i][c * n + j];
      y[static_cast<size_t>(j)] = (i + 1 < v.num_layers && s < 0) ? 0.0 : s;
    }
    h = y;
  }
  double lp = 0.0;
  for (int j = 0; j < 2; ++j) {
    const double mean = h[static_cast<size_t>(j)];
    const double ls = std::fmin(std::fmax(h[static_cast<size_t>(2 + j)], -20.0), 2.0);
    double u = mean, gauss = -ls - 0.5 * std::log(2 * M_PI);
    if (!det) {
      const double e = random_normal(seed, kStreamPolicyNoise, first_noise + static_cast<uint64_t>(j));
      u = mean + std::exp(ls) * e;
      gauss = -0.5 * e * e - ls - 0.5 * std::log(2 * M_PI);
    }
    const double t = std::tanh(u);
    lp += gauss - std::log(v.action_scale[j] * (1.0 - t * t));
    act[j] =
        std::fmin(std::fmax(t * v.action_scale[j] + v.action_bias[j], v.action_low[j]), v.action_high[j]);
  }
  *log_prob = lp;
}

}  // namespace

TEST_CASE("actor matches a double reference (stochastic and deterministic)") {
  const Actor actor = make_actor(1);
  const int64_t n = 257;
  const auto obs = random_obs(n, 2);
  for (bool det : {false, true}) {
    std::vector<float> act(static_cast<size_t>(n * 2)), lp(static_cast<size_t>(n));
    actor.act(obs.data(), n, 99, 10, det, act.data(), lp.data());
    for (int64_t i = 0; i < n; ++i) {
      double ra[2], rlp;
      reference_row(actor, obs.data() + i * 5, 99, 10 + static_cast<uint64_t>(i) * 2, det, ra, &rlp);
      CHECK_NEAR(act[i * 2], ra[0], 2e-5);
      CHECK_NEAR(act[i * 2 + 1], ra[1], 2e-5);
      // log(1 - tanh^2) loses precision in the reference near saturation; compare there loosely
      const double tol = std::fabs(ra[0] - 0.5) > 1.49 || std::fabs(ra[1] + 0.1) > 0.249 ? 1e-1 : 2e-3;
      CHECK_NEAR(lp[i], rlp, tol * (1.0 + std::fabs(rlp)));
      CHECK(act[i * 2] >= -1.0f && act[i * 2] <= 2.0f && act[i * 2 + 1] >= -0.35f && act[i * 2 + 1] <= 0.15f);
    }
  }
}

TEST_CASE("rows are independent of batch splits and thread counts") {
  const Actor actor = make_actor(3);
  const int64_t n = 1000;
  const auto obs = random_obs(n, 4);
  std::vector<float> whole(static_cast<size_t>(n * 2)), lp(static_cast<size_t>(n));
  actor.act(obs.data(), n, 7, 0, false, whole.data(), lp.data());
  std::vector<float> parts(static_cast<size_t>(n * 2)), lp2(static_cast<size_t>(n));
  const int64_t cut = 331;
  actor.act(obs.data(), cut, 7, 0, false, parts.data(), lp2.data());
  actor.act(obs.data() + cut * 5, n - cut, 7, static_cast<uint64_t>(cut) * 2, false, parts.data() + cut * 2,
            lp2.data() + cut);
  CHECK(std::memcmp(whole.data(), parts.data(), whole.size() * 4) == 0);
  CHECK(std::memcmp(lp.data(), lp2.data(), lp.size() * 4) == 0);
  const int saved = num_threads();
  set_num_threads(1);
  std::vector<float> one(static_cast<size_t>(n * 2));
  actor.act(obs.data(), n, 7, 0, false, one.data(), nullptr);
  set_num_threads(saved);
  CHECK(std::memcmp(whole.data(), one.data(), whole.size() * 4) == 0);
  // a different seed gives different actions
  actor.act(obs.data(), n, 8, 0, false, parts.data(), nullptr);
  CHECK(std::memcmp(whole.data(), parts.data(), whole.size() * 4) != 0);
}

TEST_CASE("validation") {
  CHECK_THROWS(Actor(5, 2, {5, 4}, {std::vector<float>(19)}, {std::vector<float>(4)}, {1, 1}, {0, 0}));
  CHECK_THROWS(
      Actor(5, 2, {5, 6}, {std::vector<float>(30)}, {std::vector<float>(6)}, {1, 1}, {0, 0}));  // 6 != 2*2
  CHECK_THROWS(
      Actor(5, 2, {5, 4}, {std::vector<float>(20)}, {std::vector<float>(4)}, {1, 0}, {0, 0}));  // scale 0
  CHECK_THROWS(
      Actor(5, 2, {5, 4}, {std::vector<float>(20)}, {std::vector<float>(4)}, {1, 1}, {0, 0}, 3.f, 2.f));
  // An explicit action box: both halves, act_dim entries each, finite, low <= high.
  const std::vector<float> w20(20, 0.1f), b4(4, 0.0f);
  CHECK_THROWS(Actor(5, 2, {5, 4}, {w20}, {b4}, {1, 1}, {0, 0}, -20.f, 2.f, {-1, -1}, {}));
  CHECK_THROWS(Actor(5, 2, {5, 4}, {w20}, {b4}, {1, 1}, {0, 0}, -20.f, 2.f, {-1}, {1}));
  CHECK_THROWS(Actor(5, 2, {5, 4}, {w20}, {b4}, {1, 1}, {0, 0}, -20.f, 2.f, {-1, 2}, {1, 1}));
  const Actor ok(5, 2, {5, 4}, {std::vector<float>(20, 0.1f)}, {std::vector<float>(4)}, {1, 1}, {0, 0});
  float o[5] = {1, 2, 3, 4, 5}, a[2];
  CHECK_THROWS(ok.act(o, -1, 0, 0, false, a));
  ActorView v = ok.view();
  v.weights[0] = nullptr;
  CHECK_THROWS(actor_act(v, o, 1, 0, 0, false, a, nullptr));
  CHECK(actor_macs_per_row(ok.view()) == 20);
}

namespace {

void put_u64(std::string& s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// Writes `actor` in the SAC.export_actor layout.
void write_actor(const Actor& actor, const std::string& path, const std::string& format) {
  const ActorView v = actor.view();
  std::string header = "{\"__metadata__\":{\"format\":\"" + format +
                       "\",\"obs_dim\":\"5\",\"act_dim\":\"2\",\"num_layers\":\"2\",\"hidden_size\":\"20\","
                       "\"activation\":\"relu\",\"log_std_min\":\"-20\",\"log_std_max\":\"2\"}";
  std::string data;
  auto add = [&](const std::string& name, const float* p, std::vector<int64_t> shape) {
    int64_t n = 1;
    std::string dims;
    for (auto d : shape) {
      n *= d;
      dims += (dims.empty() ? "" : ",") + std::to_string(d);
    }
    header += ",\"" + name + "\":{\"dtype\":\"F32\",\"shape\":[" + dims + "],\"data_offsets\":[" +
              std::to_string(data.size()) + "," + std::to_string(data.size() + 4 * n) + "]}";
    data.append(reinterpret_cast<const char*>(p), static_cast<size_t>(4 * n));
  };
  for (int i = 0; i < v.num_layers; ++i) {
    add("layers." + std::to_string(i) + ".weight", v.weights[i], {v.widths[i], v.widths[i + 1]});
    add("layers." + std::to_string(i) + ".bias", v.biases[i], {v.widths[i + 1]});
  }
  add("action_scale", v.action_scale, {2});
  add("action_bias", v.action_bias, {2});
  header += "}";
  std::string file;
  put_u64(file, header.size());
  file += header + data;
  std::ofstream(path, std::ios::binary) << file;
}

}  // namespace

TEST_CASE("Actor::load reads the export_actor layout") {
  const Actor actor = make_actor(5);
  const std::string path = "test_actor_tmp.safetensors";
  write_actor(actor, path, "mbpo_fast.actor/1");
  const Actor loaded = Actor::load(path);
  CHECK(loaded.obs_dim() == 5 && loaded.act_dim() == 2 && loaded.widths() == kWidths);
  const auto obs = random_obs(50, 6);
  std::vector<float> a(100), b(100), la(50), lb(50);
  actor.act(obs.data(), 50, 1, 0, false, a.data(), la.data());
  loaded.act(obs.data(), 50, 1, 0, false, b.data(), lb.data());
  CHECK(std::memcmp(a.data(), b.data(), 400) == 0);
  CHECK(std::memcmp(la.data(), lb.data(), 200) == 0);
  write_actor(actor, path, "something/else");
  bool format_error = false;
  try {
    Actor::load(path);
  } catch (const FormatError&) {
    format_error = true;
  }
  CHECK(format_error);
  // A truncated or corrupted export raises FormatError wherever it is cut or damaged.
  write_actor(actor, path, "mbpo_fast.actor/1");
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  auto load_fails = [&](const std::string& content) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
    try {
      Actor::load(path);
    } catch (const FormatError&) {
      return true;
    }
    return false;
  };
  for (size_t cut : {size_t{0}, size_t{5}, size_t{8}, size_t{60}, bytes.size() / 2, bytes.size() - 1}) {
    CHECK(load_fails(bytes.substr(0, cut)));
  }
  std::string wrong_header_len = bytes;
  wrong_header_len[0] = static_cast<char>(wrong_header_len[0] + 3);
  CHECK(load_fails(wrong_header_len));
  std::string bad_shape = bytes;
  const size_t at = bad_shape.find("\"shape\":[5,20]");
  CHECK(at != std::string::npos);
  bad_shape.replace(at, 15, "\"shape\":[4,20]");  // layer 0 no longer takes obs_dim inputs
  CHECK(load_fails(bad_shape));
  std::string nan_scale = bytes;
  const float nan = std::nanf("");
  std::memcpy(&nan_scale[nan_scale.size() - 16], &nan, 4);  // action_scale[0]
  CHECK(load_fails(nan_scale));
  std::remove(path.c_str());
  bool io_error = false;
  try {
    Actor::load("/nonexistent/dir/actor.safetensors");
  } catch (const IoError&) {
    io_error = true;
  }
  CHECK(io_error);
}

TEST_CASE("an explicit action box is the clamp") {
  // Saturating weights: every mean is far beyond tanh's range, so every action is
  // bias +/- scale, which here lies just outside the explicit box and is clamped onto it.
  std::vector<float> w(20, 50.0f), b(4, 0.0f);
  const std::vector<float> low{-0.705f, -2.083f}, high{1.606f, 0.659f};
  const std::vector<float> scale{(1.606f + 0.705f) / 2.0f + 1e-3f, (0.659f + 2.083f) / 2.0f + 1e-3f};
  const std::vector<float> bias{(1.606f - 0.705f) / 2.0f, (0.659f - 2.083f) / 2.0f};
  const Actor boxed(5, 2, {5, 4}, {w}, {b}, scale, bias, -20.f, 2.f, low, high);
  const Actor derived(5, 2, {5, 4}, {w}, {b}, scale, bias);
  const float obs[10] = {1, 2, 3, 4, 5, -1, -2, -3, -4, -5};  // + and - means
  float a[4], d[4];
  boxed.act(obs, 2, 0, 0, true, a);
  derived.act(obs, 2, 0, 0, true, d);
  for (int j = 0; j < 2; ++j) {
    CHECK(a[j] == high[static_cast<size_t>(j)] && a[2 + j] == low[static_cast<size_t>(j)]);
    CHECK(d[j] == bias[static_cast<size_t>(j)] + scale[static_cast<size_t>(j)]);
    CHECK(d[2 + j] == bias[static_cast<size_t>(j)] - scale[static_cast<size_t>(j)]);
  }
}

MBPO_TEST_MAIN

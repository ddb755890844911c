// mbpo_fast::Ensemble (owning, loaded from safetensors): forward vs a double reference,
// load errors on bad files, determinism and thread safety under concurrent callers.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"
#include "safetensors_writer.h"
#include "mbpo_fast/ensemble_model.h"

using namespace mbpo_fast;

namespace {

using Tensor = mbpo_fast_test::StTensor;
using mbpo_fast_test::safetensors_bytes;
using mbpo_fast_test::write_bytes;
const auto f32 = mbpo_fast_test::st_f32;
const auto i64 = mbpo_fast_test::st_i64;

constexpr int64_t kObs = 5, kAct = 2, kE = 3, kHidden = 16;

struct Model {
  std::map<std::string, Tensor> tensors;
  std::vector<std::vector<float>> w, b;  // per layer [E, in, out], [E, out]
  std::vector<int64_t> widths;
  std::vector<float> mean, std, maxlv, minlv;
};

Model random_model(uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  Model m;
  m.widths = {kObs + kAct, kHidden, kHidden, 2 * (kObs + 1)};
  for (size_t i = 0; i + 1 < m.widths.size(); ++i) {
    const int64_t in = m.widths[i], out = m.widths[i + 1];
    std::vector<float> w(static_cast<size_t>(kE * in * out)), b(static_cast<size_t>(kE * out));
    for (auto& x : w) x = n(gen) / (2.0f * std::sqrt(static_cast<float>(in)));
    for (auto& x : b) x = 0.1f * n(gen);
    m.tensors["layers." + std::to_string(i) + ".weight"] = f32({kE, in, out}, w);
    m.tensors["layers." + std::to_string(i) + ".bias"] = f32({kE, out}, b);
    m.w.push_back(w);
    m.b.push_back(b);
  }
  for (int64_t j = 0; j < kObs + kAct; ++j) {
    m.mean.push_back(0.3f * n(gen));
    m.std.push_back(0.5f + std::fabs(n(gen)));
  }
  for (int64_t j = 0; j <= kObs; ++j) {
    m.maxlv.push_back(0.5f);
    m.minlv.push_back(-6.0f);
  }
  m.tensors["input_mean"] = f32({kObs + kAct}, m.mean);
  m.tensors["input_std"] = f32({kObs + kAct}, m.std);
  m.tensors["max_logvar"] = f32({kObs + 1}, m.maxlv);
  m.tensors["min_logvar"] = f32({kObs + 1}, m.minlv);
  m.tensors["elites"] = i64({2, 0});
  return m;
}

const std::map<std::string, std::string> kMeta = {{"obs_dim", "5"}, {"act_dim", "2"}, {"activation", "silu"}};

// Standard-normal obs [batch, kObs] and act [batch, kAct].
void random_rows(int64_t batch, uint32_t seed, std::vector<float>& obs, std::vector<float>& act) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  obs.resize(static_cast<size_t>(batch * kObs));
  act.resize(static_cast<size_t>(batch * kAct));
  for (auto& x : obs) x = n(gen);
  for (auto& x : act) x = n(gen);
}

// Writes `m` to a temporary file and loads it with Ensemble::load.
Ensemble load_model(const Model& m) {
  const std::string path = "test_ensemble_model_tmp.safetensors";
  write_bytes(path, safetensors_bytes(m.tensors, kMeta));
  Ensemble model = Ensemble::load(path);
  std::remove(path.c_str());
  return model;
}

// Double-precision forward of member e on one row: (mean [obs+1], raw logvar [obs+1]).
std::vector<double> reference_head(const Model& m, int64_t e, const float* obs, const float* act) {
  std::vector<double> h(static_cast<size_t>(kObs + kAct));
  for (int64_t j = 0; j < kObs; ++j) h[static_cast<size_t>(j)] = (obs[j] - m.mean[static_cast<size_t>(j)]) / static_cast<double>(m.std[static_cast<size_t>(j)]);
  for (int64_t j = 0; j < kAct; ++j) h[static_cast<size_t>(kObs + j)] = (act[j] - m.mean[static_cast<size_t>(kObs + j)]) / static_cast<double>(m.std[static_cast<size_t>(kObs + j)]);
  for (size_t l = 0; l + 1 < m.widths.size(); ++l) {
    const int64_t in = m.widths[l], out = m.widths[l + 1];
    std::vector<double> y(static_cast<size_t>(out));
    for (int64_t o = 0; o < out; ++o) {
      double acc = m.b[l][static_cast<size_t>(e * out + o)];
      for (int64_t k = 0; k < in; ++k) acc += h[static_cast<size_t>(k)] * m.w[l][static_cast<size_t>((e * in + k) * out + o)];
      if (l + 2 < m.widths.size()) acc = acc / (1.0 + std::exp(-acc));
      y[static_cast<size_t>(o)] = acc;
    }
    h = y;
  }
  return h;
}

}  // namespace

TEST_CASE("Ensemble::load + deterministic step and predict match a double reference") {
  const Model m = random_model(7);
  const Ensemble model = load_model(m);
  CHECK(model.obs_dim() == kObs && model.act_dim() == kAct && model.ensemble_size() == kE);
  CHECK(model.num_layers() == 3 && model.elites().size() == 2);

  const int64_t B = 9;
  std::vector<float> obs, act;
  random_rows(B, 3, obs, act);
  std::vector<int64_t> members(static_cast<size_t>(B));
  for (int64_t i = 0; i < B; ++i) members[static_cast<size_t>(i)] = i % kE;
  std::vector<float> next(static_cast<size_t>(B * kObs)), rew(static_cast<size_t>(B));
  model.step(obs.data(), act.data(), B, 11, true, members.data(), next.data(), rew.data());
  std::vector<float> mean(static_cast<size_t>(kE * B * (kObs + 1))), var(mean.size());
  model.predict(obs.data(), act.data(), B, mean.data(), var.data());
  double worst = 0;
  for (int64_t i = 0; i < B; ++i) {
    const auto head = reference_head(m, members[static_cast<size_t>(i)], &obs[static_cast<size_t>(i * kObs)], &act[static_cast<size_t>(i * kAct)]);
    for (int64_t j = 0; j < kObs; ++j) {
      worst = std::max(worst, std::fabs(next[static_cast<size_t>(i * kObs + j)] - (obs[static_cast<size_t>(i * kObs + j)] + head[static_cast<size_t>(j)])));
    }
    worst = std::max(worst, std::fabs(rew[static_cast<size_t>(i)] - head[static_cast<size_t>(kObs)]));
    for (int64_t e = 0; e < kE; ++e) {
      const auto he = reference_head(m, e, &obs[static_cast<size_t>(i * kObs)], &act[static_cast<size_t>(i * kAct)]);
      for (int64_t j = 0; j <= kObs; ++j) {
        const size_t idx = static_cast<size_t>((e * B + i) * (kObs + 1) + j);
        worst = std::max(worst, std::fabs(mean[idx] - he[static_cast<size_t>(j)]));
        double lv = m.maxlv[static_cast<size_t>(j)] - std::log1p(std::exp(m.maxlv[static_cast<size_t>(j)] - he[static_cast<size_t>(kObs + 1 + j)]));
        lv = m.minlv[static_cast<size_t>(j)] + std::log1p(std::exp(lv - m.minlv[static_cast<size_t>(j)]));
        CHECK_NEAR(var[idx], std::exp(lv), 1e-5 * std::exp(lv) + 1e-7);
      }
    }
  }
  CHECK(worst < 2e-5);
}

TEST_CASE("Ensemble::step picks elites only, is deterministic and thread-safe") {
  const Model m = random_model(8);
  const Ensemble model = load_model(m);
  const int64_t B = 2000;
  std::vector<float> obs(static_cast<size_t>(B * kObs), 0.25f), act(static_cast<size_t>(B * kAct), -0.5f);
  for (size_t i = 0; i < obs.size(); ++i) obs[i] += 0.001f * static_cast<float>(i % 97);
  std::vector<float> next0(static_cast<size_t>(B * kObs)), rew0(static_cast<size_t>(B));
  std::vector<int64_t> mem0(static_cast<size_t>(B));
  model.step(obs.data(), act.data(), B, 99, false, nullptr, next0.data(), rew0.data(), mem0.data());
  bool elites_only = true;
  for (int64_t e : mem0) elites_only = elites_only && (e == 2 || e == 0);
  CHECK(elites_only);
  std::vector<std::thread> threads;
  std::vector<int> same(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::vector<float> next(static_cast<size_t>(B * kObs)), rew(static_cast<size_t>(B));
      bool ok = true;
      for (int rep = 0; rep < 5; ++rep) {
        model.step(obs.data(), act.data(), B, 99, false, nullptr, next.data(), rew.data());
        ok = ok && next == next0 && rew == rew0;
      }
      same[static_cast<size_t>(t)] = ok ? 1 : 0;
    });
  }
  for (auto& th : threads) th.join();
  for (int s : same) CHECK(s == 1);
}

TEST_CASE("Ensemble::step span overload equals the pointer form and checks sizes") {
  const Model m = random_model(10);
  const Ensemble model = load_model(m);
  const int64_t B = 13;
  std::vector<float> obs, act;
  random_rows(B, 5, obs, act);
  std::vector<float> next0(obs.size()), rew0(static_cast<size_t>(B)), next1(obs.size()), rew1(rew0.size());
  std::vector<int64_t> mem0(static_cast<size_t>(B)), mem1(static_cast<size_t>(B));
  model.step(obs.data(), act.data(), B, 21, false, nullptr, next0.data(), rew0.data(), mem0.data());
  model.step(obs, act, 21, false, next1, rew1, {}, mem1);
  CHECK(next0 == next1 && rew0 == rew1 && mem0 == mem1);
  // Explicit members, const inputs.
  const std::vector<int64_t> members{1, 2, 0, 1, 1, 2, 0, 0, 2, 1, 0, 2, 1};
  const std::vector<float>& cobs = obs;
  model.step(obs.data(), act.data(), B, 3, true, members.data(), next0.data(), rew0.data());
  model.step(cobs, act, 3, true, next1, rew1, members);
  CHECK(next0 == next1 && rew0 == rew1);

  auto message = [&](auto&& call) {
    try {
      call();
    } catch (const InvalidArgument& e) {
      return std::string(e.what());
    }
    return std::string("<no InvalidArgument>");
  };
  std::vector<float> short_obs(obs.begin(), obs.end() - 1), short_next(next1.begin(), next1.end() - 2);
  const std::string e1 = message([&] { model.step(short_obs, act, 1, false, next1, rew1); });
  CHECK(e1.find("obs") == 0 && e1.find(std::to_string(B * kObs)) != std::string::npos &&
        e1.find(std::to_string(B * kObs - 1)) != std::string::npos);
  CHECK(message([&] { model.step(obs, act, 1, false, short_next, rew1); }).find("next_obs_out") == 0);
  CHECK(message([&] {
          model.step(obs, act, 1, false, next1, rew1, std::vector<int64_t>(3, 0));
        }).find("members") == 0);
  const std::vector<float> rew_before = rew1;
  CHECK(message([&] { model.step(obs, std::vector<float>(3, 0.5f), 1, false, next1, rew1); }).find("act") ==
        0);
  CHECK(rew1 == rew_before);  // nothing written on a size error
}

TEST_CASE("Ensemble::load rejects bad files with FormatError") {
  const Model good = random_model(9);
  const std::string path = "test_ensemble_model_bad.safetensors";
  auto expect_format_error = [&](const std::map<std::string, Tensor>& tensors,
                                 const std::map<std::string, std::string>& meta) {
    write_bytes(path, safetensors_bytes(tensors, meta));
    bool threw = false;
    try {
      Ensemble::load(path);
    } catch (const FormatError&) {
      threw = true;
    }
    return threw;
  };
  auto t = good.tensors;
  t.erase("input_std");
  CHECK(expect_format_error(t, kMeta));
  t = good.tensors;
  t["elites"] = i64({5});
  CHECK(expect_format_error(t, kMeta));
  t = good.tensors;
  t["layers.1.bias"] = f32({kE, kHidden + 1}, std::vector<float>(static_cast<size_t>(kE * (kHidden + 1)), 0.1f));
  CHECK(expect_format_error(t, kMeta));
  auto meta = kMeta;
  meta["activation"] = "relu";
  CHECK(expect_format_error(good.tensors, meta));
  meta = kMeta;
  meta["obs_dim"] = "6";
  CHECK(expect_format_error(good.tensors, meta));
  // Truncation anywhere raises too.
  const auto bytes = safetensors_bytes(good.tensors, kMeta);
  bool all = true;
  for (size_t cut : {size_t{0}, size_t{7}, size_t{40}, bytes.size() / 2, bytes.size() - 1}) {
    write_bytes(path, bytes.substr(0, cut));
    bool threw = false;
    try {
      Ensemble::load(path);
    } catch (const FormatError&) {
      threw = true;
    }
    all = all && threw;
  }
  CHECK(all);
  std::remove(path.c_str());
  bool io = false;
  try {
    Ensemble::load("/nonexistent/model.safetensors");
  } catch (const IoError&) {
    io = true;
  }
  CHECK(io);
}

MBPO_TEST_MAIN

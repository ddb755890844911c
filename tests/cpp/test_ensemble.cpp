// The fused ensemble ops of the C++ core (no Python) against a double-precision reference:
// predict, step (deterministic and sampled), member choice, kernels, threads, bad input.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "cpu/ensemble_kernels.h"
#include "harness.h"
#include "kernels/ensemble_epilogue.h"
#include "mbpo_fast/ensemble.h"
#include "mbpo_fast/parallel.h"
#include "mbpo_fast/rng.h"

using namespace mbpo_fast;

namespace {

// A random ensemble at realistic scales with its own storage; view() borrows it.
struct Model {
  int64_t obs_dim, act_dim, E;
  std::vector<int64_t> widths;
  std::vector<std::vector<float>> w, b;
  std::vector<float> mean, std_, maxlv, minlv;
  std::vector<int64_t> elites;

  Model(int64_t od, int64_t ad, int64_t e, std::vector<int64_t> hidden, uint32_t seed)
      : obs_dim(od), act_dim(ad), E(e) {
    std::mt19937 g(seed);
    std::normal_distribution<float> n01(0.0f, 1.0f);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    widths.push_back(od + ad);
    for (int64_t h : hidden) widths.push_back(h);
    widths.push_back(2 * (od + 1));
    for (size_t i = 0; i + 1 < widths.size(); ++i) {
      const float s = 1.0f / (2.0f * std::sqrt(static_cast<float>(widths[i])));
      std::vector<float> wi(static_cast<size_t>(E * widths[i] * widths[i + 1]));
      for (auto& x : wi) x = std::max(-2.0f, std::min(2.0f, n01(g))) * s;
      std::vector<float> bi(static_cast<size_t>(E * widths[i + 1]));
      for (auto& x : bi) x = 0.1f * n01(g);
      w.push_back(std::move(wi));
      b.push_back(std::move(bi));
    }
    for (int64_t c = 0; c < od + ad; ++c) {
      mean.push_back(n01(g));
      std_.push_back(0.3f + 2.0f * u(g));
    }
    for (int64_t j = 0; j <= od; ++j) {
      maxlv.push_back(-0.5f + 1.5f * u(g));
      minlv.push_back(-8.0f + 4.0f * u(g));
    }
    for (int64_t k = 0; k < E; k += 2) elites.push_back(k);
  }

  EnsembleView view() const {
    EnsembleView v;
    v.obs_dim = obs_dim;
    v.act_dim = act_dim;
    v.ensemble_size = E;
    v.num_layers = static_cast<int>(widths.size() - 1);
    for (size_t i = 0; i < widths.size(); ++i) v.widths[i] = widths[i];
    for (size_t i = 0; i + 1 < widths.size(); ++i) {
      v.weights[i] = w[i].data();
      v.biases[i] = b[i].data();
    }
    v.input_mean = mean.data();
    v.input_std = std_.data();
    v.max_logvar = maxlv.data();
    v.min_logvar = minlv.data();
    v.elites = elites.data();
    v.num_elites = static_cast<int64_t>(elites.size());
    return v;
  }

  // double-precision (mean, var) of member e on one row.
  void reference(int64_t e, const float* obs, const float* act, std::vector<double>& mu,
                 std::vector<double>& var) const {
    std::vector<double> h(static_cast<size_t>(obs_dim + act_dim));
    for (int64_t c = 0; c < obs_dim; ++c) h[c] = (double(obs[c]) - mean[c]) / std_[c];
    for (int64_t c = 0; c < act_dim; ++c) h[obs_dim + c] = (double(act[c]) - mean[obs_dim + c]) / std_[obs_dim + c];
    for (size_t i = 0; i + 1 < widths.size(); ++i) {
      const int64_t k = widths[i], n = widths[i + 1];
      std::vector<double> y(static_cast<size_t>(n));
      for (int64_t j = 0; j < n; ++j) {
        double s = b[i][e * n + j];
        for (int64_t q = 0; q < k; ++q) s += h[q] * w[i][(e * k + q) * n + j];
        y[j] = i + 2 < widths.size() ? s / (1.0 + std::exp(-s)) : s;
      }
      h = y;
    }
    const int64_t od1 = obs_dim + 1;
    mu.assign(h.begin(), h.begin() + od1);
    var.resize(od1);
    auto sp = [](double x) { return std::max(x, 0.0) + std::log1p(std::exp(-std::abs(x))); };
    for (int64_t j = 0; j < od1; ++j) {
      double lv = maxlv[j] - sp(maxlv[j] - h[od1 + j]);
      lv = minlv[j] + sp(lv - minlv[j]);
      var[j] = std::exp(lv);
    }
  }
};

std::vector<float> random_vec(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, 1.5f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

struct KernelGuard {
  ~KernelGuard() { ensemble_set_kernel("auto"); }
};

}  // namespace

TEST_CASE("ensemble_predict matches a double reference (odd widths, both kernels)") {
  KernelGuard guard;
  const Model m(5, 2, 3, {200, 64, 37}, 1);
  const int64_t B = 33;
  const auto obs = random_vec(B * 5, 2), act = random_vec(B * 2, 3);
  for (const char* kernel : {"portable", "avx512"}) {
    if (std::string(kernel) == "avx512" && !ensemble_avx512_available()) continue;
    ensemble_set_kernel(kernel);
    std::vector<float> mean(3 * B * 6), var(3 * B * 6);
    ensemble_predict(m.view(), obs.data(), act.data(), B, mean.data(), var.data());
    std::vector<double> mu, vr;
    for (int64_t e = 0; e < 3; ++e) {
      for (int64_t i = 0; i < B; ++i) {
        m.reference(e, &obs[i * 5], &act[i * 2], mu, vr);
        for (int j = 0; j < 6; ++j) {
          CHECK_NEAR(mean[(e * B + i) * 6 + j], mu[j], 1e-5 * (1.0 + std::abs(mu[j])));
          CHECK_NEAR(var[(e * B + i) * 6 + j] / vr[j], 1.0, 1e-5);
        }
      }
    }
  }
}

TEST_CASE("ensemble_step: Philox member choice, noise and next_obs") {
  const Model m(11, 3, 7, {200, 200}, 4);
  const int64_t B = 100;
  const uint64_t seed = 987654321;
  const auto obs = random_vec(B * 11, 5), act = random_vec(B * 3, 6);
  std::vector<float> next_obs(B * 11), rew(B), det_obs(B * 11), det_rew(B);
  std::vector<int64_t> used(B), det_used(B);
  ensemble_step(m.view(), obs.data(), act.data(), B, seed, false, nullptr, next_obs.data(), rew.data(), used.data());
  ensemble_step(m.view(), obs.data(), act.data(), B, seed, true, nullptr, det_obs.data(), det_rew.data(),
                det_used.data());
  std::vector<double> mu, vr;
  for (int64_t i = 0; i < B; ++i) {
    const int64_t expected = m.elites[random_index(seed, kStreamMemberChoice, i, 4)];
    CHECK(used[i] == expected && det_used[i] == expected);
    m.reference(used[i], &obs[i * 11], &act[i * 3], mu, vr);
    for (int j = 0; j <= 11; ++j) {
      const double eps = random_normal(seed, kStreamModelNoise, i * 12 + j);
      const double sampled = mu[j] + std::sqrt(vr[j]) * eps;
      const double got = j < 11 ? double(next_obs[i * 11 + j]) - obs[i * 11 + j] : rew[i];
      const double got_det = j < 11 ? double(det_obs[i * 11 + j]) - obs[i * 11 + j] : det_rew[i];
      CHECK_NEAR(got, sampled, 2e-5 * (1.0 + std::abs(sampled)));
      CHECK_NEAR(got_det, mu[j], 2e-5 * (1.0 + std::abs(mu[j])));
    }
  }
}

TEST_CASE("ensemble_step: members override and thread-count invariance") {
  const Model m(3, 1, 5, {64, 64}, 7);
  const int64_t B = 500;
  const auto obs = random_vec(B * 3, 8), act = random_vec(B * 1, 9);
  std::vector<int64_t> members(B);
  for (int64_t i = 0; i < B; ++i) members[i] = (i * 7) % 5;
  std::vector<float> a_obs(B * 3), a_rew(B), b_obs(B * 3), b_rew(B);
  std::vector<int64_t> a_used(B), b_used(B);
  const int saved = num_threads();
  set_num_threads(1);
  ensemble_step(m.view(), obs.data(), act.data(), B, 3, false, members.data(), a_obs.data(), a_rew.data(),
                a_used.data());
  set_num_threads(2);
  ensemble_step(m.view(), obs.data(), act.data(), B, 3, false, members.data(), b_obs.data(), b_rew.data(),
                b_used.data());
  set_num_threads(saved);
  CHECK(a_used == members);
  CHECK(a_obs == b_obs);
  CHECK(a_rew == b_rew);
}

TEST_CASE("ensemble_disagreement is the member std of the means, averaged over outputs") {
  const Model m(4, 2, 5, {32}, 10);
  const int64_t B = 50;
  const auto obs = random_vec(B * 4, 11), act = random_vec(B * 2, 12);
  const int64_t members[] = {0, 1, 3};
  std::vector<float> out(B);
  ensemble_disagreement(m.view(), obs.data(), act.data(), B, members, 3, out.data());
  std::vector<double> mu[3], vr;
  for (int64_t i = 0; i < B; ++i) {
    for (int k = 0; k < 3; ++k) m.reference(members[k], &obs[i * 4], &act[i * 2], mu[k], vr);
    double total = 0.0;
    for (int j = 0; j < 5; ++j) {
      const double avg = (mu[0][j] + mu[1][j] + mu[2][j]) / 3.0;
      double ss = 0.0;
      for (int k = 0; k < 3; ++k) ss += (mu[k][j] - avg) * (mu[k][j] - avg);
      total += std::sqrt(ss / 3.0);
    }
    CHECK_NEAR(out[i], total / 5.0, 1e-5 * (1.0 + total / 5.0));
  }
}

TEST_CASE("ensemble_step_sample_disagreement: the step's transitions plus the elites' disagreement") {
  const Model m(3, 2, 6, {48, 48}, 21);  // elites 0, 2, 4 (every other member)
  for (int64_t B : {1, 7, 70, 400}) {
    const auto obs = random_vec(B * 3, 22 + static_cast<uint32_t>(B)), act = random_vec(B * 2, 23);
    std::vector<float> a_obs(B * 3), a_rew(B), b_obs(B * 3), b_rew(B);
    ensemble_step(m.view(), obs.data(), act.data(), B, 99, false, nullptr, a_obs.data(), a_rew.data(), nullptr);
    const int64_t n = std::min<int64_t>(B, 3);
    std::vector<float> dis(n), ref(n);
    for (int threads : {1, 2}) {
      const int saved = num_threads();
      set_num_threads(threads);
      ensemble_step_sample_disagreement(m.view(), obs.data(), act.data(), B, 99, false, b_obs.data(), b_rew.data(),
                                        n, dis.data());
      set_num_threads(saved);
      CHECK(a_obs == b_obs);  // the same members, noise and values as the plain step
      CHECK(a_rew == b_rew);
      ensemble_disagreement(m.view(), obs.data(), act.data(), n, nullptr, 0, ref.data());
      for (int64_t j = 0; j < n; ++j) CHECK_NEAR(dis[j], ref[j], 1e-6 * (1.0 + ref[j]));
      CHECK(ref[0] > 0.0f);
    }
  }
  // n_sample bounds: more than the batch or than kStepSampleMax is refused
  const auto obs = random_vec(40 * 3, 30), act = random_vec(40 * 2, 31);
  std::vector<float> o(40 * 3), r(40), d(kStepSampleMax + 1);
  CHECK_THROWS(ensemble_step_sample_disagreement(m.view(), obs.data(), act.data(), 5, 1, false, o.data(), r.data(),
                                                 6, d.data()));
  CHECK_THROWS(ensemble_step_sample_disagreement(m.view(), obs.data(), act.data(), 40, 1, false, o.data(), r.data(),
                                                 kStepSampleMax + 1, d.data()));
}

TEST_CASE("bad arguments throw InvalidArgument and write nothing") {
  const Model m(3, 1, 5, {16}, 13);
  const int64_t B = 4;
  const auto obs = random_vec(B * 3, 14), act = random_vec(B, 15);
  std::vector<float> next_obs(B * 3, -7.0f), rew(B, -7.0f);
  const int64_t bad_members[] = {0, 1, 5, 2};
  CHECK_THROWS(ensemble_step(m.view(), obs.data(), act.data(), B, 0, false, bad_members, next_obs.data(),
                             rew.data(), nullptr));
  EnsembleView v = m.view();
  v.num_elites = 0;
  CHECK_THROWS(ensemble_step(v, obs.data(), act.data(), B, 0, false, nullptr, next_obs.data(), rew.data(), nullptr));
  v = m.view();
  v.widths[2] = 9;  // output width must be 2 * (obs_dim + 1) = 8
  CHECK_THROWS(ensemble_step(v, obs.data(), act.data(), B, 0, false, nullptr, next_obs.data(), rew.data(), nullptr));
  v = m.view();
  v.weights[0] = nullptr;
  CHECK_THROWS(ensemble_predict(v, obs.data(), act.data(), B, next_obs.data(), nullptr));
  CHECK_THROWS(ensemble_step(m.view(), obs.data(), act.data(), -1, 0, false, nullptr, next_obs.data(), rew.data(),
                             nullptr));
  CHECK_THROWS(ensemble_set_kernel("sse9"));
  for (float x : next_obs) CHECK(x == -7.0f);
  for (float x : rew) CHECK(x == -7.0f);
}

TEST_CASE("epilogue: soft clamp saturates near the bounds and is the identity in between") {
  // The upper side saturates at max + softplus(min - max) (MBPO's two-sided soft clamp).
  CHECK_NEAR(kernels::soft_clamp_logvar(100.0f, 0.5f, -5.0f), 0.5 + std::log1p(std::exp(-5.5)), 1e-6);
  CHECK(kernels::soft_clamp_logvar(-100.0f, 0.5f, -5.0f) >= -5.0f);
  CHECK_NEAR(kernels::soft_clamp_logvar(-2.0f, 10.0f, -20.0f), -2.0f, 1e-4);
  float eps[13];
  kernels::row_noise(42, 5, 13, eps);
  for (int j = 0; j < 13; ++j) CHECK(eps[j] == random_normal(42, kStreamModelNoise, 5 * 13 + j));
}

TEST_CASE("bf16 weights: AMX (>= 16-row tiles), vdpbf16ps (1 row) and portable stay far below the std") {
  KernelGuard guard;
  const Model m(11, 3, 3, {200, 200, 200}, 21);
  const int64_t B = 40, od1 = 12;
  const auto obs = random_vec(B * 11, 22), act = random_vec(B * 3, 23);
  std::vector<std::vector<uint16_t>> packed(m.w.size());
  EnsembleView v = m.view();
  for (size_t i = 0; i < m.w.size(); ++i) {
    const int64_t k = m.widths[i], n = m.widths[i + 1];
    packed[i].assign(static_cast<size_t>(3 * (((k + 1) / 2 + 15) / 16 * 16) * ((n + 15) / 16 * 16) * 2), 1);
    ensemble_pack_bf16(m.w[i].data(), 3, k, n, packed[i].data());
    v.weights_bf16[i] = packed[i].data();
  }
  std::vector<double> mu, vr;
  for (const char* kernel : {"auto", "portable"}) {
    ensemble_set_kernel(kernel);
    std::vector<float> mean(3 * B * od1), var(3 * B * od1), one_mean(3 * od1), one_var(3 * od1);
    ensemble_predict(v, obs.data(), act.data(), B, mean.data(), var.data());
    double worst = 0.0;
    for (int64_t i = 0; i < B; ++i) {
      ensemble_predict(v, &obs[i * 11], &act[i * 3], 1, one_mean.data(), one_var.data());
      for (int64_t e = 0; e < 3; ++e) {
        m.reference(e, &obs[i * 11], &act[i * 3], mu, vr);
        for (int64_t j = 0; j < od1; ++j) {
          const double sd = std::sqrt(vr[j]);
          worst = std::max(worst, std::abs(mean[(e * B + i) * od1 + j] - mu[j]) / sd);
          worst = std::max(worst, std::abs(one_mean[e * od1 + j] - mu[j]) / sd);
        }
      }
    }
    std::printf("    %s: max |mean_bf16 - mean| / std = %.3g\n", kernel, worst);
    CHECK(worst < 0.02);
  }
}

TEST_CASE("AVX-512 Box-Muller equals rng.h's random_normal (float rounding, odd widths)") {
  if (!ensemble_avx512_available()) return;
  int64_t mismatches = 0, total = 0;
  double max_diff = 0.0;
  float eps[40];
  for (int64_t out_dim : {1, 2, 5, 12, 18, 37}) {
    for (uint64_t row = 0; row < 20000; ++row) {
      cpu::model_noise_avx512(0x9e3779b97f4a7c15ull, row, out_dim, eps);
      for (int64_t j = 0; j < out_dim; ++j) {
        const float want = random_normal(0x9e3779b97f4a7c15ull, kStreamModelNoise, row * out_dim + j);
        mismatches += eps[j] != want;
        max_diff = std::max(max_diff, std::abs(double(eps[j]) - want) / (1.0 + std::abs(want)));
        ++total;
      }
    }
  }
  std::printf("    %lld of %lld normals differ from rng.h, max rel diff %.3g\n",
              static_cast<long long>(mismatches), static_cast<long long>(total), max_diff);
  CHECK(max_diff < 2e-7);                // float rounding at most
  CHECK(mismatches * 10000 < total);     // and only in rare double-rounding ties
}

MBPO_TEST_MAIN

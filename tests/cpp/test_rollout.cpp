// The branched rollout engine from C++ (no Python): truncation vs termination, row order,
// determinism and thread-count independence, custom callbacks (including one that throws:
// the model pool stays unchanged), non-finite drops, validation.
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "harness.h"
#include "mbpo_fast/actor.h"
#include "mbpo_fast/ensemble.h"
#include "mbpo_fast/parallel.h"
#include "mbpo_fast/replay_pool.h"
#include "mbpo_fast/rollout.h"
#include "pool_contents.h"

using namespace mbpo_fast;

namespace {

constexpr int64_t kOd = 11, kAd = 3;  // Hopper widths

struct Lcg {
  uint64_t s;
  float uniform() {  // [-1, 1)
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>((s >> 40) * (1.0 / 8388608.0)) - 1.0f;
  }
};

// A small ensemble (E = 4, 14 -> 16 -> 24) that owns its arrays.
struct Model {
  std::vector<float> mean, stdv, w0, b0, w1, b1, maxlv, minlv;
  std::vector<int64_t> elites{0, 1, 3};
  EnsembleView view;
  explicit Model(uint64_t seed) {
    Lcg g{seed};
    const int64_t E = 4, in = kOd + kAd, h = 16, out = 2 * (kOd + 1);
    auto fill = [&](std::vector<float>& v, size_t n, float scale) {
      v.resize(n);
      for (auto& x : v) x = scale * g.uniform();
    };
    fill(mean, in, 0.1f);
    stdv.assign(in, 1.0f);
    fill(w0, static_cast<size_t>(E * in * h), 0.5f);
    fill(b0, static_cast<size_t>(E * h), 0.1f);
    fill(w1, static_cast<size_t>(E * h * out), 0.05f);
    fill(b1, static_cast<size_t>(E * out), 0.02f);
    maxlv.assign(kOd + 1, -5.0f);
    minlv.assign(kOd + 1, -10.0f);
    view.obs_dim = kOd;
    view.act_dim = kAd;
    view.ensemble_size = E;
    view.num_layers = 2;
    view.widths[0] = in;
    view.widths[1] = h;
    view.widths[2] = out;
    view.input_mean = mean.data();
    view.input_std = stdv.data();
    view.weights[0] = w0.data();
    view.biases[0] = b0.data();
    view.weights[1] = w1.data();
    view.biases[1] = b1.data();
    view.max_logvar = maxlv.data();
    view.min_logvar = minlv.data();
    view.elites = elites.data();
    view.num_elites = static_cast<int64_t>(elites.size());
  }
};

Actor make_actor() {
  Lcg g{77};
  const std::vector<int64_t> widths{kOd, 32, 2 * kAd};
  std::vector<std::vector<float>> w(2), b(2);
  for (size_t i = 0; i < 2; ++i) {
    w[i].resize(static_cast<size_t>(widths[i] * widths[i + 1]));
    b[i].resize(static_cast<size_t>(widths[i + 1]));
    for (auto& x : w[i]) x = 0.3f * g.uniform();
    for (auto& x : b[i]) x = 0.1f * g.uniform();
  }
  return Actor(kOd, kAd, widths, w, b, {1, 1, 1}, {0, 0, 0});
}

ReplayPool real_pool(int64_t n) {
  ReplayPool pool(n, kOd, kAd, 0);
  Lcg g{5};
  std::vector<float> o(static_cast<size_t>(n * kOd)), a(static_cast<size_t>(n * kAd), 0.f),
      r(static_cast<size_t>(n), 0.f);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < kOd; ++j) o[static_cast<size_t>(i * kOd + j)] = g.uniform();
    o[static_cast<size_t>(i * kOd)] = 1.2f + 0.2f * g.uniform();  // healthy Hopper height
    o[static_cast<size_t>(i * kOd + 1)] = 0.1f * g.uniform();
  }
  std::vector<uint8_t> t(static_cast<size_t>(n), 0);
  pool.add_batch(o.data(), a.data(), r.data(), o.data(), t.data(), n);
  return pool;
}

using Contents = mbpo_fast_test::PoolContents;

}  // namespace

TEST_CASE("horizon end is a truncation; rows continue in order") {
  Model m(1);
  const Actor actor = make_actor();
  ReplayPool real = real_pool(100);
  ReplayPool pool(10000, kOd, kAd);
  const RolloutStats s =
      branched_rollout(actor.view(), m.view, TerminationId::kNever, real, pool, 300, 4, 42, true);
  CHECK(s.rows_added == 1200 && pool.size() == 1200 && s.num_terminated == 0 && s.nonfinite == 0);
  CHECK(s.steps_run == 4 && s.mean_length == 4.0 && s.frac_terminated == 0.0);
  CHECK(std::isfinite(s.mean_disagreement) && s.mean_disagreement > 0.0);
  const Contents c(pool);
  for (auto t : c.term) CHECK(t == 0);
  // step t+1's obs are step t's next_obs, row by row
  CHECK(std::memcmp(c.obs.data() + 300 * kOd, c.next.data(), 300 * kOd * 4) == 0);
  CHECK(real.rng_counter() == 0);  // the real pool is only read
}

TEST_CASE("deterministic in the seed, independent of the thread count") {
  Model m(2);
  const Actor actor = make_actor();
  ReplayPool real = real_pool(500);
  ReplayPool a(50000, kOd, kAd), b(50000, kOd, kAd), c(50000, kOd, kAd);
  const auto sa = branched_rollout(actor.view(), m.view, TerminationId::kHopper, real, a, 3000, 5, 9);
  const int saved = num_threads();
  set_num_threads(1);
  const auto sb = branched_rollout(actor.view(), m.view, TerminationId::kHopper, real, b, 3000, 5, 9);
  set_num_threads(saved);
  branched_rollout(actor.view(), m.view, TerminationId::kHopper, real, c, 3000, 5, 10);
  CHECK(Contents(a) == Contents(b));
  CHECK(sa.rows_added == sb.rows_added && sa.num_terminated == sb.num_terminated);
  CHECK(sa.num_terminated > 0 && sa.num_terminated < 3000);
  CHECK(!(Contents(a) == Contents(c)));
}

TEST_CASE("custom callbacks: equal to built-in, terminate-all, throwing leaves the pool unchanged") {
  Model m(3);
  const Actor actor = make_actor();
  ReplayPool real = real_pool(200);
  ReplayPool a(20000, kOd, kAd), b(20000, kOd, kAd);
  branched_rollout(actor.view(), m.view, TerminationId::kHopper, real, a, 500, 5, 1);
  TerminationCallback hopper = [](const float*, const float*, const float* next, int64_t n, uint8_t* out) {
    terminations(TerminationId::kHopper, next, n, static_cast<int>(kOd), out);
  };
  branched_rollout(actor.view(), m.view, hopper, real, b, 500, 5, 1);
  CHECK(Contents(a) == Contents(b));

  ReplayPool all(1000, kOd, kAd);
  TerminationCallback everything = [](const float*, const float*, const float*, int64_t n, uint8_t* out) {
    std::memset(out, 1, static_cast<size_t>(n));
  };
  const auto s = branched_rollout(actor.view(), m.view, everything, real, all, 64, 5, 1);
  CHECK(s.rows_added == 64 && s.steps_run == 1 && s.frac_terminated == 1.0 && s.mean_length == 1.0);

  int calls = 0;
  TerminationCallback flaky = [&](const float*, const float*, const float*, int64_t n, uint8_t* out) {
    if (++calls == 3) throw std::runtime_error("boom");
    std::memset(out, 0, static_cast<size_t>(n));
  };
  const int64_t size0 = all.size(), pos0 = all.write_pos();
  CHECK_THROWS(branched_rollout(actor.view(), m.view, flaky, real, all, 64, 5, 1));
  CHECK(all.size() == size0 && all.write_pos() == pos0);
  TerminationCallback bad_flag = [](const float*, const float*, const float*, int64_t n, uint8_t* out) {
    std::memset(out, 2, static_cast<size_t>(n));
  };
  CHECK_THROWS(branched_rollout(actor.view(), m.view, bad_flag, real, all, 64, 5, 1));
  CHECK(all.size() == size0);
}

TEST_CASE("non-finite predictions are dropped and counted, never stored") {
  Model m(4);
  // member 1 (an elite) overflows for rows with a large first input
  for (int64_t j = 0; j < 16; ++j) m.w0[static_cast<size_t>(1 * 14 * 16 + j)] = 3e37f;
  const Actor actor = make_actor();
  ReplayPool real = real_pool(300);
  ReplayPool pool(20000, kOd, kAd);
  const auto s = branched_rollout(actor.view(), m.view, TerminationId::kNever, real, pool, 1000, 3, 5);
  CHECK(s.nonfinite > 0 && s.rows_added + s.nonfinite < 3000 && pool.size() == s.rows_added);
  const Contents c(pool);
  for (float x : c.next) CHECK(std::isfinite(x));
  for (float x : c.rew) CHECK(std::isfinite(x));
}

TEST_CASE("validation throws before anything changes") {
  Model m(5);
  const Actor actor = make_actor();
  ReplayPool real = real_pool(10);
  ReplayPool pool(100, kOd, kAd), empty(10, kOd, kAd), wrong(10, kOd, kAd + 1);
  const ActorView av = actor.view();
  CHECK_THROWS(branched_rollout(av, m.view, TerminationId::kNever, real, pool, -1, 2, 0));
  CHECK_THROWS(branched_rollout(av, m.view, TerminationId::kNever, empty, pool, 5, 2, 0));
  CHECK_THROWS(branched_rollout(av, m.view, TerminationId::kNever, real, wrong, 5, 2, 0));
  CHECK_THROWS(branched_rollout(av, m.view, TerminationId::kWalker2d, real, pool, 5, 2, 0));  // obs 17
  CHECK_THROWS(branched_rollout(av, m.view, static_cast<TerminationId>(42), real, pool, 5, 2, 0));
  EnsembleView no_elites = m.view;
  no_elites.num_elites = 0;
  CHECK_THROWS(branched_rollout(av, no_elites, TerminationId::kNever, real, pool, 5, 2, 0));
  ActorView bad = av;
  bad.widths[0] = 7;
  CHECK_THROWS(branched_rollout(bad, m.view, TerminationId::kNever, real, pool, 5, 2, 0));
  CHECK(pool.size() == 0);
  const auto s = branched_rollout(av, m.view, TerminationId::kNever, empty, pool, 0, 2, 0);  // nothing to do
  CHECK(s.rows_added == 0 && s.steps_run == 0 && std::isnan(s.mean_disagreement));
  CHECK_THROWS(branched_rollout(av, m.view, TerminationId::kNever, real, pool, 5, 2, 0, true, -3));
  CHECK(pool.size() == 0);
  CHECK(rollout_step_seed(1, 0) != rollout_step_seed(1, 1) &&
        rollout_step_seed(1, 0) != rollout_step_seed(2, 0));
}

TEST_CASE("disagreement_sample_rows: counts, every row, one in 256") {
  CHECK(disagreement_sample_rows(0, 500) == 0);
  CHECK(disagreement_sample_rows(40, 500) == 40 && disagreement_sample_rows(40, 7) == 7);
  CHECK(disagreement_sample_rows(kDisagreementAllRows, 500) == 500);
  CHECK(disagreement_sample_rows(kDisagreementAutoRows, 1) == 1);
  CHECK(disagreement_sample_rows(kDisagreementAutoRows, 256) == 1);
  CHECK(disagreement_sample_rows(kDisagreementAutoRows, 257) == 2);
  CHECK(disagreement_sample_rows(kDisagreementAutoRows, 100000) == 391);
  CHECK(disagreement_sample_rows(kDisagreementAutoRows, 0) == 0);
  CHECK_THROWS(disagreement_sample_rows(-3, 10));
}

TEST_CASE("uncertainty: d from one elites pass, stop rule, penalty, neutral = plain, validation") {
  Model m(11);
  const Actor actor = make_actor();
  ReplayPool real = real_pool(300);
  const ActorView av = actor.view();
  // ensemble_step_uncertainty: the same transition as ensemble_step, d = unbiased variance
  // across the elites of the predicted means (obs dims), checked against ensemble_predict.
  const int64_t n = 150;
  std::vector<float> obs(n * kOd), act(n * kAd), n1(n * kOd), r1(n), n2(n * kOd), r2(n), d(n);
  Lcg g{3};
  for (auto& x : obs) x = g.uniform();
  for (auto& x : act) x = g.uniform();
  ensemble_step(m.view, obs.data(), act.data(), n, 99, false, nullptr, n1.data(), r1.data(), nullptr);
  ensemble_step_uncertainty(m.view, obs.data(), act.data(), n, 99, false, n2.data(), r2.data(), d.data());
  for (int64_t i = 0; i < n * kOd; ++i) CHECK_NEAR(n1[i], n2[i], 1e-5);
  for (int64_t i = 0; i < n; ++i) CHECK_NEAR(r1[i], r2[i], 1e-5);
  const int64_t E = m.view.ensemble_size, od1 = kOd + 1, K = m.view.num_elites;
  std::vector<float> mean(E * n * od1);
  ensemble_predict(m.view, obs.data(), act.data(), n, mean.data(), nullptr);
  for (int64_t i = 0; i < n; ++i) {
    double total = 0.0;
    for (int64_t j = 0; j < kOd; ++j) {
      double mu = 0.0, ss = 0.0;
      for (int64_t k = 0; k < K; ++k) mu += mean[(m.elites[k] * n + i) * od1 + j];
      mu /= K;
      for (int64_t k = 0; k < K; ++k) {
        const double dev = mean[(m.elites[k] * n + i) * od1 + j] - mu;
        ss += dev * dev;
      }
      total += ss / (K - 1);
    }
    CHECK_NEAR(d[i], total / kOd, 1e-4 * total / kOd + 1e-9);
    CHECK(d[i] > 0.0f);
  }
  // neutral features (threshold never reached, penalty 0) store what the plain rollout stores
  ReplayPool plain(20000, kOd, kAd), neutral(20000, kOd, kAd), pen(20000, kOd, kAd), stop(20000, kOd, kAd);
  const auto s0 = branched_rollout(av, m.view, TerminationId::kHopper, real, plain, 500, 4, 21);
  RolloutUncertainty u;
  u.max_disagreement = 1e30;
  const auto s1 = branched_rollout(av, m.view, TerminationId::kHopper, real, neutral, 500, 4, 21, false, 0, u);
  CHECK(s0.rows_added == s1.rows_added && s0.num_terminated == s1.num_terminated && s1.num_stopped == 0);
  CHECK(std::isnan(s0.mean_uncertainty) && s1.mean_uncertainty > 0.0 && s1.disagreement_threshold == 1e30);
  const Contents c0(plain), c1(neutral);
  CHECK(c0.term == c1.term);
  for (size_t i = 0; i < c0.next.size(); ++i) CHECK_NEAR(c0.next[i], c1.next[i], 1e-5);
  // penalty: stored reward = plain reward - 1.5 sqrt(d)
  RolloutUncertainty up;
  up.uncertainty_penalty = 1.5;
  const auto s2 = branched_rollout(av, m.view, TerminationId::kHopper, real, pen, 500, 4, 21, false, 0, up);
  CHECK(s2.rows_added == s0.rows_added);
  const Contents c2(pen);
  std::vector<float> dn(s2.rows_added), scratch_n(s2.rows_added * kOd), scratch_r(s2.rows_added);
  ensemble_step_uncertainty(m.view, c2.obs.data(), c2.act.data(), s2.rows_added, 1, false, scratch_n.data(),
                            scratch_r.data(), dn.data());
  double pen_sum = 0.0;
  for (int64_t i = 0; i < s2.rows_added; ++i) {
    CHECK_NEAR(c2.rew[i], c0.rew[i] - 1.5f * std::sqrt(dn[i]), 1e-4);
    pen_sum += 1.5 * std::sqrt(static_cast<double>(dn[i]));
  }
  CHECK_NEAR(s2.mean_penalty, pen_sum / s2.rows_added, 1e-4 * s2.mean_penalty);
  // quantile stop: every stored row has d <= threshold; some rows stopped
  RolloutUncertainty uq;
  uq.quantile = 0.8;
  const auto s3 = branched_rollout(av, m.view, TerminationId::kHopper, real, stop, 500, 4, 21, false, 0, uq);
  CHECK(s3.num_stopped > 0 && s3.rows_added < s0.rows_added && std::isfinite(s3.disagreement_threshold));
  CHECK_NEAR(s3.frac_stopped, s3.num_stopped / 500.0, 1e-12);
  const Contents c3(stop);
  std::vector<float> d3(s3.rows_added), n3(s3.rows_added * kOd), r3(s3.rows_added);
  ensemble_step_uncertainty(m.view, c3.obs.data(), c3.act.data(), s3.rows_added, 1, false, n3.data(), r3.data(),
                            d3.data());
  for (float x : d3) CHECK(x <= s3.disagreement_threshold * (1 + 1e-5));
  // validation: nothing appended
  ReplayPool untouched(100, kOd, kAd);
  RolloutUncertainty bad;
  bad.uncertainty_penalty = -1.0;
  CHECK_THROWS(branched_rollout(av, m.view, TerminationId::kNever, real, untouched, 5, 2, 0, false, 0, bad));
  bad = RolloutUncertainty{};
  bad.quantile = 2.0;
  CHECK_THROWS(branched_rollout(av, m.view, TerminationId::kNever, real, untouched, 5, 2, 0, false, 0, bad));
  EnsembleView one = m.view;
  one.num_elites = 1;
  CHECK_THROWS(branched_rollout(av, one, TerminationId::kNever, real, untouched, 5, 2, 0, false, 0, up));
  CHECK(untouched.size() == 0);
  const float vals[5] = {3.f, NAN, 1.f, 2.f, 4.f};
  CHECK_NEAR(finite_quantile(vals, 5, 0.5), 2.5, 1e-12);
  CHECK(std::isinf(finite_quantile(vals + 1, 1, 0.3)));
}

MBPO_TEST_MAIN

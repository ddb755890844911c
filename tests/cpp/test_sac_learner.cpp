// SacLearner (sac_learner.h) against a double-precision reference written from the SAC
// equations: every gradient of one update against central finite differences of the
// double-precision losses, the stats, Polyak, and the owning mode (init, Philox noise,
// K-block == K single updates, thread-count independence, actor_view), plus validation.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <vector>

#include "harness.h"
#include "mbpo_fast/actor.h"
#include "mbpo_fast/parallel.h"
#include "mbpo_fast/rng.h"
#include "mbpo_fast/sac_learner.h"

using namespace mbpo_fast;

namespace {

constexpr int64_t O = 3, A = 2, H = 5, B = 4;
constexpr int L = 2;

SacConfig tiny_config() {
  SacConfig c;
  c.obs_dim = O;
  c.act_dim = A;
  c.hidden_size = H;
  c.num_layers = L;
  c.gamma = 0.9;
  c.tau = 0.3;
  c.target_entropy = -1.5;
  c.action_scale = {1.5f, 0.25f};
  c.action_bias = {0.5f, -1.0f};
  return c;
}

std::vector<float> normal(uint64_t seed, int64_t n, float scale = 1.0f) {
  std::vector<float> v(n);
  philox_fill_normal(seed, kStreamUser, 0, n, v.data());
  for (float& x : v) x *= scale;
  return v;
}

// Flat double copies of every tensor, in SacStorage order.
struct Params {
  std::vector<std::vector<double>> actor, critic, target;
  double log_alpha = 0.0;
};

std::vector<double> to_double(const float* p, int64_t n) { return std::vector<double>(p, p + n); }

Params snapshot(const SacLearner& l) {
  const SacConfig& c = l.config();
  Params p;
  for (int i = 0; i <= c.num_layers; ++i) {
    const int64_t an = c.actor_in(i) * c.actor_out(i), cn = 2 * c.critic_in(i) * c.critic_out(i);
    p.actor.push_back(to_double(l.storage().actor[2 * i].param, an));
    p.actor.push_back(to_double(l.storage().actor[2 * i + 1].param, c.actor_out(i)));
    p.critic.push_back(to_double(l.storage().critic[2 * i].param, cn));
    p.critic.push_back(to_double(l.storage().critic[2 * i + 1].param, 2 * c.critic_out(i)));
    p.target.push_back(to_double(l.storage().critic_target[2 * i], cn));
    p.target.push_back(to_double(l.storage().critic_target[2 * i + 1], 2 * c.critic_out(i)));
  }
  p.log_alpha = *l.storage().log_alpha.param;
  return p;
}

// One row through a ReLU MLP; tensors[2i] weight [members, in, out], tensors[2i + 1] bias.
std::vector<double> mlp(const std::vector<std::vector<double>>& t, int member,
                        const std::vector<int64_t>& widths, std::vector<double> x) {
  const int nl = static_cast<int>(widths.size()) - 1;
  for (int i = 0; i < nl; ++i) {
    const int64_t in = widths[i], out = widths[i + 1];
    std::vector<double> y(out);
    for (int64_t o = 0; o < out; ++o) {
      double s = t[2 * i + 1][member * out + o];
      for (int64_t k = 0; k < in; ++k) s += x[k] * t[2 * i][(member * in + k) * out + o];
      y[o] = (i < nl - 1) ? std::max(s, 0.0) : s;
    }
    x = std::move(y);
  }
  return x;
}

const std::vector<int64_t> kActorWidths = {O, H, H, 2 * A};
const std::vector<int64_t> kCriticWidths = {O + A, H, H, 1};

// The squashed-Gaussian sample: action [A] and log pi, exactly sac.py's formula in double.
std::vector<double> policy(const Params& p, const SacConfig& c, const float* obs, const float* eps,
                           double* logp) {
  const std::vector<double> out = mlp(p.actor, 0, kActorWidths, std::vector<double>(obs, obs + O));
  std::vector<double> a(A);
  double lp = 0.0;
  for (int64_t i = 0; i < A; ++i) {
    const double ls = std::min(std::max(out[A + i], -20.0), 2.0);
    const double u = out[i] + std::exp(ls) * eps[i];
    // log N(u; mean, std) - log(scale * (1 - tanh(u)^2))
    lp += -0.5 * eps[i] * eps[i] - ls - 0.5 * std::log(2.0 * M_PI) -
          std::log(c.action_scale[i]) - std::log(1.0 - std::tanh(u) * std::tanh(u));
    a[i] = std::tanh(u) * c.action_scale[i] + c.action_bias[i];
  }
  *logp = lp;
  return a;
}

double q_value(const std::vector<std::vector<double>>& critic, int j, const float* obs,
               const std::vector<double>& act) {
  std::vector<double> x(obs, obs + O);
  x.insert(x.end(), act.begin(), act.end());
  return mlp(critic, j, kCriticWidths, x)[0];
}

struct Batch {
  std::vector<float> obs, act, rew, next_obs, eps;
  std::vector<uint8_t> term;
};

Batch make_batch(uint64_t seed, int64_t k = 1) {
  Batch b;
  b.obs = normal(seed, k * B * O);
  b.act = normal(seed + 1, k * B * A, 0.5f);
  b.rew = normal(seed + 2, k * B);
  b.next_obs = normal(seed + 3, k * B * O);
  b.eps = normal(seed + 4, k * 2 * B * A);
  b.term.resize(k * B);
  for (int64_t i = 0; i < k * B; ++i) b.term[i] = (i % 3 == 1) ? 1 : 0;
  return b;
}

double critic_loss(const Params& p, const SacConfig& c, const Batch& b) {
  const double alpha = std::exp(p.log_alpha);
  double loss = 0.0;
  for (int64_t r = 0; r < B; ++r) {
    double logp;
    const std::vector<double> a2 = policy(p, c, &b.next_obs[r * O], &b.eps[r * A], &logp);
    const double v = std::min(q_value(p.target, 0, &b.next_obs[r * O], a2),
                              q_value(p.target, 1, &b.next_obs[r * O], a2)) - alpha * logp;
    const double y = b.rew[r] + c.gamma * (b.term[r] ? 0.0 : 1.0) * v;
    const std::vector<double> a(&b.act[r * A], &b.act[r * A] + A);
    for (int j = 0; j < 2; ++j) {
      const double d = q_value(p.critic, j, &b.obs[r * O], a) - y;
      loss += d * d / B;
    }
  }
  return loss;
}

double actor_loss(const Params& p, const SacConfig& c, const Batch& b, double* mean_logp) {
  const double alpha = std::exp(p.log_alpha);
  double loss = 0.0, lp_sum = 0.0;
  for (int64_t r = 0; r < B; ++r) {
    double logp;
    const std::vector<double> a = policy(p, c, &b.obs[r * O], &b.eps[B * A + r * A], &logp);
    const double q = std::min(q_value(p.critic, 0, &b.obs[r * O], a),
                              q_value(p.critic, 1, &b.obs[r * O], a));
    loss += (alpha * logp - q) / B;
    lp_sum += logp;
  }
  *mean_logp = lp_sum / B;
  return loss;
}

void check_gradient(const float* got, std::vector<double>& x, const std::function<double()>& f,
                    const char* what) {
  double scale = 0.0;
  std::vector<double> fd(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double h = 1e-6 * std::max(1.0, std::fabs(x[i]));
    const double x0 = x[i];
    x[i] = x0 + h;
    const double up = f();
    x[i] = x0 - h;
    const double down = f();
    x[i] = x0;
    fd[i] = (up - down) / (2 * h);
    scale = std::max(scale, std::fabs(fd[i]));
  }
  int bad = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    if (!(std::fabs(got[i] - fd[i]) <= 1e-3 * std::fabs(fd[i]) + 1e-4 * scale + 1e-7)) {
      if (bad++ < 3) {
        std::fprintf(stderr, "  %s[%zu]: native %.8g vs finite difference %.8g\n", what, i,
                     static_cast<double>(got[i]), fd[i]);
      }
    }
  }
  CHECK(bad == 0);
  CHECK(scale > 0.0);
}

}  // namespace

TEST_CASE("every gradient of one update equals finite differences of the double losses") {
  SacConfig cfg = tiny_config();
  // beta1 = 0: exp_avg after the first Adam step IS the gradient; a negligible lr keeps the
  // critics the actor loss sees at their initial values (float32 does not move).
  cfg.adam = AdamConfig{1e-30, 0.0, 0.999, 1e-8};
  SacLearner l = SacLearner::create(cfg, 42, 0.7);
  // targets away from the critics (so Polyak is visible), and a log_std head that crosses
  // the clamp bounds on some rows.
  for (int t = 0; t < 2 * (L + 1); ++t) {
    const int i = t / 2;
    const int64_t n = (t % 2 == 0 ? cfg.critic_in(i) : 1) * 2 * cfg.critic_out(i);
    const std::vector<float> noise = normal(100 + t, n, 0.1f);
    for (int64_t e = 0; e < n; ++e) l.storage().critic_target[t][e] += noise[e];
  }
  float* head_b = l.storage().actor[2 * L + 1].param;
  head_b[A] = 2.5f;  // raw log_std of action 0 above log_std_max for most rows
  const Batch b = make_batch(7);
  Params p0 = snapshot(l);

  SacStats stats;
  l.update_block(1, B, b.obs.data(), b.act.data(), b.rew.data(), b.next_obs.data(), b.term.data(),
                 b.eps.data(), &stats);

  double mean_logp = 0.0;
  const double want_actor = actor_loss(p0, cfg, b, &mean_logp);
  CHECK_NEAR(stats.critic_loss, critic_loss(p0, cfg, b), 1e-4 * std::fabs(critic_loss(p0, cfg, b)));
  CHECK_NEAR(stats.actor_loss, want_actor, 1e-4 * std::fabs(want_actor) + 1e-5);
  CHECK_NEAR(stats.alpha, 0.7, 1e-6);
  CHECK_NEAR(stats.entropy, -mean_logp, 1e-4 * std::fabs(mean_logp) + 1e-5);
  double mean_q = 0.0;
  for (int64_t r = 0; r < B; ++r) {
    const std::vector<double> a(&b.act[r * A], &b.act[r * A] + A);
    for (int j = 0; j < 2; ++j) mean_q += q_value(p0.critic, j, &b.obs[r * O], a) / (2 * B);
  }
  CHECK_NEAR(stats.mean_q, mean_q, 1e-5 * std::fabs(mean_q) + 1e-6);

  Params p = p0;
  for (size_t t = 0; t < p.critic.size(); ++t) {
    check_gradient(l.storage().critic[t].exp_avg, p.critic[t],
                   [&] { return critic_loss(p, cfg, b); }, "critic grad");
  }
  for (size_t t = 0; t < p.actor.size(); ++t) {
    check_gradient(l.storage().actor[t].exp_avg, p.actor[t], [&] {
      double unused;
      return actor_loss(p, cfg, b, &unused);
    }, "actor grad");
  }
  // alpha loss -log_alpha * (mean logp + target_entropy)
  CHECK_NEAR(*l.storage().log_alpha.exp_avg, -(mean_logp + cfg.target_entropy),
             1e-4 * std::fabs(mean_logp) + 1e-5);
  // Adam steps once per tensor; Polyak moved every target toward the (unchanged) critic
  CHECK(*l.storage().critic[0].step == 1.0f && *l.storage().actor[3].step == 1.0f);
  CHECK(*l.storage().log_alpha.step == 1.0f);
  for (size_t t = 0; t < p0.target.size(); ++t) {
    for (size_t e = 0; e < p0.target[t].size(); ++e) {
      const double want = p0.target[t][e] + cfg.tau * (p0.critic[t][e] - p0.target[t][e]);
      CHECK_NEAR(l.storage().critic_target[t][e], want, 1e-6);
    }
  }
}

TEST_CASE("owning mode: nn.Linear-style init, targets = critics, zero Adam state, actor_view") {
  SacConfig cfg = tiny_config();
  SacLearner l = SacLearner::create(cfg, 3, 0.5);
  CHECK(l.owns_storage());
  const SacStorage& s = l.storage();
  for (int i = 0; i <= L; ++i) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(cfg.actor_in(i)));
    const int64_t n = cfg.actor_in(i) * cfg.actor_out(i);
    double max_abs = 0.0;
    for (int64_t e = 0; e < n; ++e) max_abs = std::max(max_abs, std::fabs(double(s.actor[2 * i].param[e])));
    CHECK(max_abs <= bound && max_abs > 0.3 * bound);
    const int64_t cn = 2 * cfg.critic_in(i) * cfg.critic_out(i);
    CHECK(std::memcmp(s.critic[2 * i].param, s.critic_target[2 * i], cn * sizeof(float)) == 0);
    CHECK(*s.critic[2 * i].step == 0.0f && s.critic[2 * i].exp_avg_sq[0] == 0.0f);
  }
  CHECK_NEAR(*s.log_alpha.param, std::log(0.5), 1e-7);
  ActorView v = l.actor_view();
  v.validate();
  std::vector<float> obs = normal(5, 3 * O), act(3 * A), logp(3);
  actor_act(v, obs.data(), 3, 1, 0, true, act.data(), logp.data());
  for (int64_t r = 0; r < 3; ++r) {
    for (int64_t i = 0; i < A; ++i) {
      const float a = act[r * A + i];
      CHECK(a >= cfg.action_bias[i] - cfg.action_scale[i] && a <= cfg.action_bias[i] + cfg.action_scale[i]);
    }
  }
}

TEST_CASE("a K-block equals K single updates; Philox noise; no dependence on the thread count") {
  const SacConfig cfg = tiny_config();
  const Batch b = make_batch(11, 3);
  auto run = [&](bool block, int threads) {
    set_num_threads(threads);
    SacLearner l = SacLearner::create(cfg, 9);
    std::vector<SacStats> stats(3);
    if (block) {
      l.update_block(3, B, b.obs.data(), b.act.data(), b.rew.data(), b.next_obs.data(),
                     b.term.data(), nullptr, stats.data());
    } else {
      for (int64_t k = 0; k < 3; ++k) {
        l.update_block(1, B, &b.obs[k * B * O], &b.act[k * B * A], &b.rew[k * B],
                       &b.next_obs[k * B * O], &b.term[k * B], nullptr, &stats[k]);
      }
    }
    CHECK(l.noise_offset() == static_cast<uint64_t>(3 * 2 * B * A));
    std::vector<float> flat;
    for (const auto& t : l.storage().actor) flat.insert(flat.end(), t.param, t.param + 1);
    const Params p = snapshot(l);
    std::vector<double> all;
    for (const auto* group : {&p.actor, &p.critic, &p.target}) {
      for (const auto& t : *group) all.insert(all.end(), t.begin(), t.end());
    }
    all.push_back(p.log_alpha);
    for (const auto& st : stats) {
      all.insert(all.end(), {st.critic_loss, st.actor_loss, st.alpha, st.entropy, st.mean_q});
    }
    return all;
  };
  const int before = num_threads();
  const std::vector<double> a = run(true, 2), b1 = run(false, 2), c = run(true, 1);
  set_num_threads(before);
  CHECK(a == b1);
  CHECK(a == c);
  for (double x : a) CHECK(std::isfinite(x));
}

TEST_CASE("bf16 matmuls: finite and close to float32") {
  SacConfig cfg = tiny_config();
  cfg.hidden_size = 32;
  SacConfig cfg16 = cfg;
  cfg16.precision = MatmulPrecision::kBf16;
  SacLearner f32 = SacLearner::create(cfg, 1), b16 = SacLearner::create(cfg16, 1);
  const Batch b = make_batch(21, 2);
  SacStats s32[2], s16[2];
  f32.update_block(2, B, b.obs.data(), b.act.data(), b.rew.data(), b.next_obs.data(), b.term.data(),
                   b.eps.data(), s32);
  b16.update_block(2, B, b.obs.data(), b.act.data(), b.rew.data(), b.next_obs.data(), b.term.data(),
                   b.eps.data(), s16);
  for (int k = 0; k < 2; ++k) {
    CHECK(std::isfinite(s16[k].critic_loss) && std::isfinite(s16[k].actor_loss));
    CHECK_NEAR(s16[k].critic_loss, s32[k].critic_loss, 0.02 * std::fabs(s32[k].critic_loss) + 1e-3);
    CHECK_NEAR(s16[k].mean_q, s32[k].mean_q, 0.02);
  }
}

TEST_CASE("SacConfig::for_action_box: sac.py's defaults and its float32 rounding of the box") {
  const SacConfig c = SacConfig::for_action_box(11, {-1.0, 0.1, -3.0}, {1.0, 0.7, 2.0});
  CHECK(c.obs_dim == 11 && c.act_dim == 3 && c.hidden_size == 256 && c.num_layers == 2);
  CHECK(c.target_entropy == -3.0 && c.gamma == 0.99 && c.tau == 5e-3 && c.adam.lr == 3e-4);
  CHECK(c.action_scale[1] == static_cast<float>((0.7 - 0.1) / 2.0));
  CHECK(c.action_bias[2] == static_cast<float>((2.0 + -3.0) / 2.0));
  CHECK_THROWS(SacConfig::for_action_box(11, {1.0}, {1.0}));
  CHECK_THROWS(SacConfig::for_action_box(11, {0.0, 0.0}, {1.0}));
  CHECK_THROWS(SacConfig::for_action_box(0, {0.0}, {1.0}));
}

TEST_CASE("validation: bad config, null storage, bad block arguments change nothing") {
  SacConfig bad = tiny_config();
  bad.action_scale = {1.0f};
  CHECK_THROWS(SacLearner::create(bad, 0));
  bad = tiny_config();
  bad.tau = 0.0;
  CHECK_THROWS(SacLearner::create(bad, 0));
  bad = tiny_config();
  bad.num_layers = 0;
  CHECK_THROWS(SacLearner::create(bad, 0));
  CHECK_THROWS(SacLearner::create(tiny_config(), 0, -1.0));

  SacLearner l = SacLearner::create(tiny_config(), 0);
  SacStorage storage = l.storage();
  storage.critic[1].exp_avg = nullptr;
  CHECK_THROWS(SacLearner(tiny_config(), storage));
  storage = l.storage();
  storage.actor.pop_back();
  CHECK_THROWS(SacLearner(tiny_config(), storage));

  const Batch b = make_batch(1);
  const Params before = snapshot(l);
  CHECK_THROWS(l.update_block(0, B, b.obs.data(), b.act.data(), b.rew.data(), b.next_obs.data(),
                              b.term.data(), b.eps.data(), nullptr));
  CHECK_THROWS(l.update_block(1, B, b.obs.data(), nullptr, b.rew.data(), b.next_obs.data(),
                              b.term.data(), b.eps.data(), nullptr));
  const Params after = snapshot(l);
  CHECK(before.actor == after.actor && before.critic == after.critic);
  CHECK(l.noise_offset() == 0);
}

MBPO_TEST_MAIN

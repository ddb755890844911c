// SacLearner (sac_learner.h): the SAC update of mbpo_fast/sac.py, written out layer by
// layer with the backward of each step next to its forward. Every elementwise formula
// follows the op torch's autograd runs for sac.py (same operands, same order where it
// changes the rounding), so the float32 results match the torch trainer to rounding.
#include "mbpo_fast/sac_learner.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>

#include "mbpo_fast/parallel.h"
#include "mbpo_fast/rng.h"

namespace mbpo_fast {

namespace {

constexpr double kHalfLog2Pi = 0.91893853320467274178;  // log(2 pi) / 2
constexpr double kLog2 = 0.69314718055994530942;

std::string str(int64_t v) { return std::to_string(v); }

// Runs both tasks (0 and 1) of a phase; on one thread they run one after the other.
template <typename Fn>
void run_two(const Fn& fn) {
  parallel_for(2, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) fn(static_cast<int>(t));
  });
}

// torch.nn.functional.softplus(x) (beta 1, threshold 20).
inline float softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

// A ReLU MLP of `nl` linear layers: x [rows, widths[0]] (row stride ldx) -> out [rows,
// widths[nl]]; hidden[i] receives layer i's ReLU output [rows, widths[i + 1]] (i < nl - 1).
// Hidden layers run at `precision`, the output layer in float32 (sac.py's _float32_output).
void mlp_forward(const float* x, int64_t ldx, int64_t rows, const float* const* w,
                 const float* const* b, const int64_t* widths, int nl, float* const* hidden,
                 float* out, MatmulPrecision precision) {
  const float* in = x;
  int64_t ld = ldx;
  for (int i = 0; i < nl; ++i) {
    const bool last = i == nl - 1;
    float* y = last ? out : hidden[i];
    linear_forward(in, ld, rows, w[i], b[i], widths[i], widths[i + 1], y, widths[i + 1],
                   last ? MatmulPrecision::kFloat32 : precision);
    if (!last) relu_forward(y, rows * widths[i + 1]);
    in = y;
    ld = widths[i + 1];
  }
}

// Pointers of member `member` of an ensemble's layers (weight [E, in, out], bias [E, out]).
struct MemberLayers {
  const float* w[kActorMaxLayers];
  const float* b[kActorMaxLayers];
};

}  // namespace

// ------------------------------------------------------------------------------ config

int64_t SacConfig::actor_in(int i) const { return i == 0 ? obs_dim : hidden_size; }
int64_t SacConfig::actor_out(int i) const { return i == num_layers ? 2 * act_dim : hidden_size; }
int64_t SacConfig::critic_in(int i) const { return i == 0 ? obs_dim + act_dim : hidden_size; }
int64_t SacConfig::critic_out(int i) const { return i == num_layers ? 1 : hidden_size; }

void SacConfig::validate() const {
  require(obs_dim > 0, "SacConfig: obs_dim must be > 0, got " + str(obs_dim));
  require(act_dim > 0, "SacConfig: act_dim must be > 0, got " + str(act_dim));
  require(hidden_size > 0, "SacConfig: hidden_size must be > 0, got " + str(hidden_size));
  require(num_layers >= 1 && num_layers < kActorMaxLayers,
          "SacConfig: num_layers must be in [1, " + str(kActorMaxLayers - 1) + "], got " +
              str(num_layers));
  require(std::isfinite(gamma) && gamma > 0.0 && gamma <= 1.0,
          "SacConfig: gamma must be in (0, 1], got " + std::to_string(gamma));
  require(std::isfinite(tau) && tau > 0.0 && tau <= 1.0,
          "SacConfig: tau must be in (0, 1], got " + std::to_string(tau));
  require(std::isfinite(target_entropy),
          "SacConfig: target_entropy must be finite, got " + std::to_string(target_entropy));
  require(std::isfinite(adam.lr) && adam.lr > 0.0,
          "SacConfig: adam.lr must be > 0, got " + std::to_string(adam.lr));
  require(adam.beta1 >= 0.0 && adam.beta1 < 1.0 && adam.beta2 >= 0.0 && adam.beta2 < 1.0,
          "SacConfig: adam betas must be in [0, 1)");
  require(std::isfinite(adam.eps) && adam.eps >= 0.0, "SacConfig: adam.eps must be >= 0");
  require(static_cast<int64_t>(action_scale.size()) == act_dim,
          "SacConfig: action_scale must have act_dim = " + str(act_dim) + " entries, got " +
              str(static_cast<int64_t>(action_scale.size())));
  require(static_cast<int64_t>(action_bias.size()) == act_dim,
          "SacConfig: action_bias must have act_dim = " + str(act_dim) + " entries, got " +
              str(static_cast<int64_t>(action_bias.size())));
  for (int64_t i = 0; i < act_dim; ++i) {
    require(std::isfinite(action_scale[i]) && action_scale[i] > 0.0f,
            "SacConfig: action_scale[" + str(i) + "] must be finite and > 0");
    require(std::isfinite(action_bias[i]), "SacConfig: action_bias[" + str(i) + "] must be finite");
  }
  require(log_std_min <= log_std_max, "SacConfig: log_std_min must be <= log_std_max");
  require(precision == MatmulPrecision::kFloat32 || precision == MatmulPrecision::kBf16,
          "SacConfig: unknown precision");
}

// ----------------------------------------------------------------------------- scratch

// Every buffer an update needs, allocated once per batch size (grown, never shrunk).
struct SacLearner::Scratch {
  int64_t batch = 0;
  // actor at s' (no backward) and at s (kept for the backward)
  std::vector<float> next_hidden[2];       // ping-pong [B, H]
  std::vector<float> next_out;             // [B, 2A]
  std::vector<float> next_logp;            // [B]
  std::vector<std::vector<float>> pol_hidden;  // [L][B, H]
  std::vector<float> pol_out;              // [B, 2A] (raw head: mean, raw log_std)
  std::vector<float> pol_logp;             // [B]
  std::vector<float> pol_std, pol_tanh;    // [B, A]
  // critic inputs concat(obs, act) [B, O + A]
  std::vector<float> x_data, x_next, x_pol;
  std::vector<float> y;  // TD target [B]
  // per critic member j
  struct Member {
    std::vector<float> target_hidden[2];           // ping-pong [B, H]
    std::vector<std::vector<float>> data_hidden;   // [L][B, H]  Q(s, a)
    std::vector<std::vector<float>> pol_hidden;    // [L][B, H]  Q(s, a_pi), updated critic
    std::vector<float> q_next, q_data, q_pol, dq;  // [B]
    std::vector<float> grad_h[2];                  // ping-pong [B, H]
    std::vector<float> da;                         // [B, A]
    float adam_step[2 * kActorMaxLayers] = {};
  } member[2];
  // actor backward
  std::vector<float> dout;      // [B, 2A]
  std::vector<float> grad_h[2];  // ping-pong [B, H]
  float actor_adam_step[2][2 * kActorMaxLayers] = {};
  // gradients, laid out like the parameters
  std::vector<std::vector<float>> actor_grad, critic_grad;
  std::vector<float> noise;  // [K, 2, B, A] drawn when update_block gets no eps
};

// -------------------------------------------------------------------------- lifecycle

SacLearner::SacLearner(SacConfig config, SacStorage storage, uint64_t noise_seed)
    : config_(std::move(config)), storage_(std::move(storage)), noise_seed_(noise_seed) {
  config_.validate();
  const size_t n_tensors = 2 * static_cast<size_t>(config_.num_layers + 1);
  require(storage_.actor.size() == n_tensors,
          "SacLearner: storage.actor must hold " + str(n_tensors) + " tensors, got " +
              str(static_cast<int64_t>(storage_.actor.size())));
  require(storage_.critic.size() == n_tensors,
          "SacLearner: storage.critic must hold " + str(n_tensors) + " tensors, got " +
              str(static_cast<int64_t>(storage_.critic.size())));
  require(storage_.critic_target.size() == n_tensors,
          "SacLearner: storage.critic_target must hold " + str(n_tensors) + " tensors, got " +
              str(static_cast<int64_t>(storage_.critic_target.size())));
  auto check = [](const AdamTensor& t, const std::string& name) {
    require(t.param && t.exp_avg && t.exp_avg_sq && t.step,
            "SacLearner: " + name + " has a null pointer (param, exp_avg, exp_avg_sq, step)");
  };
  for (size_t i = 0; i < n_tensors; ++i) {
    check(storage_.actor[i], "storage.actor[" + str(static_cast<int64_t>(i)) + "]");
    check(storage_.critic[i], "storage.critic[" + str(static_cast<int64_t>(i)) + "]");
    require(storage_.critic_target[i] != nullptr,
            "SacLearner: storage.critic_target[" + str(static_cast<int64_t>(i)) + "] is null");
  }
  check(storage_.log_alpha, "storage.log_alpha");
  scratch_ = std::make_unique<Scratch>();
  const int nl = config_.num_layers + 1;
  scratch_->actor_grad.resize(2 * nl);
  scratch_->critic_grad.resize(2 * nl);
  for (int i = 0; i < nl; ++i) {
    const int64_t ai = config_.actor_in(i), ao = config_.actor_out(i);
    const int64_t ci = config_.critic_in(i), co = config_.critic_out(i);
    scratch_->actor_grad[2 * i].resize(ai * ao);
    scratch_->actor_grad[2 * i + 1].resize(ao);
    scratch_->critic_grad[2 * i].resize(2 * ci * co);
    scratch_->critic_grad[2 * i + 1].resize(2 * co);
  }
}

SacLearner::SacLearner(SacLearner&&) noexcept = default;
SacLearner& SacLearner::operator=(SacLearner&&) noexcept = default;
SacLearner::~SacLearner() = default;

SacLearner SacLearner::create(SacConfig config, uint64_t seed, double init_alpha) {
  config.validate();
  require(std::isfinite(init_alpha) && init_alpha > 0.0,
          "SacLearner::create: init_alpha must be finite and > 0, got " +
              std::to_string(init_alpha));
  std::vector<std::vector<float>> owned;
  uint64_t init_index = 0;  // Philox element counter of the initialization stream
  // nn.Linear's default init: weight and bias uniform in [-1/sqrt(in), 1/sqrt(in)).
  auto init_uniform = [&](std::vector<float>& v, int64_t fan_in) {
    const float bound = static_cast<float>(1.0 / std::sqrt(static_cast<double>(fan_in)));
    for (float& x : v) {
      const float u = u32_to_unit(random_u32(seed, kStreamSacInit, init_index++));
      x = (2.0f * u - 1.0f) * bound;
    }
  };
  auto add = [&](int64_t n) -> float* {
    owned.emplace_back(static_cast<size_t>(n), 0.0f);
    return owned.back().data();
  };
  // Reserve first: pointers into `owned`'s elements' buffers stay valid (each inner vector
  // keeps its heap buffer), but reserving avoids moving them at all.
  const int nl = config.num_layers + 1;
  owned.reserve(static_cast<size_t>(4 * 2 * nl * 2 + 8));
  auto adam_tensor = [&](int64_t n) {
    AdamTensor t;
    t.param = add(n);
    t.exp_avg = add(n);
    t.exp_avg_sq = add(n);
    t.step = add(1);
    return t;
  };
  SacStorage storage;
  for (int i = 0; i < nl; ++i) {
    const int64_t ai = config.actor_in(i), ao = config.actor_out(i);
    storage.actor.push_back(adam_tensor(ai * ao));
    storage.actor.push_back(adam_tensor(ao));
  }
  for (int i = 0; i < nl; ++i) {
    const int64_t ci = config.critic_in(i), co = config.critic_out(i);
    storage.critic.push_back(adam_tensor(2 * ci * co));
    storage.critic.push_back(adam_tensor(2 * co));
  }
  for (int i = 0; i < nl; ++i) {
    const int64_t ci = config.critic_in(i), co = config.critic_out(i);
    storage.critic_target.push_back(add(2 * ci * co));
    storage.critic_target.push_back(add(2 * co));
  }
  storage.log_alpha = adam_tensor(1);
  // Same order as sac.py: actor layers, then the critics (member by member within a layer's
  // tensor), the targets copied from the critics.
  for (int i = 0; i < nl; ++i) {
    const int64_t ai = config.actor_in(i), ao = config.actor_out(i);
    std::vector<float> w(ai * ao), b(ao);
    init_uniform(w, ai);
    init_uniform(b, ai);
    std::copy(w.begin(), w.end(), storage.actor[2 * i].param);
    std::copy(b.begin(), b.end(), storage.actor[2 * i + 1].param);
  }
  for (int i = 0; i < nl; ++i) {
    const int64_t ci = config.critic_in(i), co = config.critic_out(i);
    std::vector<float> w(2 * ci * co), b(2 * co);
    init_uniform(w, ci);
    init_uniform(b, ci);
    std::copy(w.begin(), w.end(), storage.critic[2 * i].param);
    std::copy(b.begin(), b.end(), storage.critic[2 * i + 1].param);
    std::copy(w.begin(), w.end(), storage.critic_target[2 * i]);
    std::copy(b.begin(), b.end(), storage.critic_target[2 * i + 1]);
  }
  *storage.log_alpha.param = static_cast<float>(std::log(init_alpha));
  SacLearner learner(std::move(config), std::move(storage), seed);
  learner.owned_ = std::move(owned);
  return learner;
}

void SacLearner::ensure_scratch(int64_t batch, int64_t noise_floats) {
  Scratch& s = *scratch_;
  if (static_cast<int64_t>(s.noise.size()) < noise_floats) s.noise.resize(noise_floats);
  if (batch <= s.batch) return;
  const int64_t O = config_.obs_dim, A = config_.act_dim, H = config_.hidden_size;
  const int L = config_.num_layers;
  const int64_t BH = batch * H;
  for (auto& v : s.next_hidden) v.assign(BH, 0.0f);
  s.next_out.assign(batch * 2 * A, 0.0f);
  s.next_logp.assign(batch, 0.0f);
  s.pol_hidden.assign(L, std::vector<float>(BH, 0.0f));
  s.pol_out.assign(batch * 2 * A, 0.0f);
  s.pol_logp.assign(batch, 0.0f);
  s.pol_std.assign(batch * A, 0.0f);
  s.pol_tanh.assign(batch * A, 0.0f);
  for (auto* v : {&s.x_data, &s.x_next, &s.x_pol}) v->assign(batch * (O + A), 0.0f);
  s.y.assign(batch, 0.0f);
  for (auto& m : s.member) {
    for (auto& v : m.target_hidden) v.assign(BH, 0.0f);
    m.data_hidden.assign(L, std::vector<float>(BH, 0.0f));
    m.pol_hidden.assign(L, std::vector<float>(BH, 0.0f));
    for (auto* v : {&m.q_next, &m.q_data, &m.q_pol, &m.dq}) v->assign(batch, 0.0f);
    for (auto& v : m.grad_h) v.assign(BH, 0.0f);
    m.da.assign(batch * A, 0.0f);
  }
  s.dout.assign(batch * 2 * A, 0.0f);
  for (auto& v : s.grad_h) v.assign(BH, 0.0f);
  s.batch = batch;
}

// ------------------------------------------------------------------------------ public

ActorView SacLearner::actor_view() const {
  ActorView v;
  v.obs_dim = config_.obs_dim;
  v.act_dim = config_.act_dim;
  v.num_layers = config_.num_layers + 1;
  v.widths[0] = config_.obs_dim;
  for (int i = 0; i < v.num_layers; ++i) {
    v.widths[i + 1] = config_.actor_out(i);
    v.weights[i] = storage_.actor[2 * i].param;
    v.biases[i] = storage_.actor[2 * i + 1].param;
  }
  v.action_scale = config_.action_scale.data();
  v.action_bias = config_.action_bias.data();
  v.log_std_min = config_.log_std_min;
  v.log_std_max = config_.log_std_max;
  return v;
}

int64_t SacLearner::update_macs(int64_t batch) const {
  const int nl = config_.num_layers + 1;
  int64_t a = 0, c = 0;
  for (int i = 0; i < nl; ++i) {
    a += config_.actor_in(i) * config_.actor_out(i);
    c += config_.critic_in(i) * config_.critic_out(i);
  }
  const int64_t O = config_.obs_dim, A = config_.act_dim, H = config_.hidden_size;
  const int64_t c_dx = c - (O + A) * H;  // input gradients stop below layer 0
  const int64_t per_row = 2 * a            // actor forward at s' and s
                          + 4 * c          // target critics at s', critics at s
                          + 2 * c + 2 * c_dx  // critic backward: weights, inputs
                          + 2 * c          // updated critics at (s, a_pi)
                          + 2 * (c_dx + A * H)  // their input gradients (action columns)
                          + a + (a - O * H);    // actor backward: weights, inputs
  return per_row * batch;
}

void SacLearner::update_block(int64_t k, int64_t batch, const float* obs, const float* act,
                              const float* rew, const float* next_obs, const uint8_t* terminated,
                              const float* eps, SacStats* stats_out) {
  require(k >= 1, "SacLearner::update_block: k must be >= 1, got " + str(k));
  require(batch >= 1, "SacLearner::update_block: batch must be >= 1, got " + str(batch));
  require(obs && act && rew && next_obs && terminated,
          "SacLearner::update_block: obs, act, rew, next_obs and terminated must be non-null");
  const int64_t O = config_.obs_dim, A = config_.act_dim;
  const int64_t noise_floats = eps == nullptr ? k * 2 * batch * A : 0;
  ensure_scratch(batch, noise_floats);
  if (eps == nullptr) {
    philox_fill_normal(noise_seed_, kStreamSacUpdateNoise, noise_offset_, noise_floats,
                       scratch_->noise.data());
    noise_offset_ += static_cast<uint64_t>(noise_floats);
    eps = scratch_->noise.data();
  }
  for (int64_t i = 0; i < k; ++i) {
    update_one(batch, obs + i * batch * O, act + i * batch * A, rew + i * batch,
               next_obs + i * batch * O, terminated + i * batch, eps + i * 2 * batch * A,
               stats_out ? stats_out + i : nullptr);
  }
}

// -------------------------------------------------------------------------- one update

void SacLearner::update_one(int64_t B, const float* obs, const float* act, const float* rew,
                            const float* next_obs, const uint8_t* terminated, const float* eps,
                            SacStats* stats) {
  Scratch& s = *scratch_;
  const SacConfig& cfg = config_;
  const int64_t O = cfg.obs_dim, A = cfg.act_dim, H = cfg.hidden_size, X = O + A;
  const int L = cfg.num_layers, nl = L + 1;
  const MatmulPrecision prec = cfg.precision;
  const float inv_b = 1.0f / static_cast<float>(B);

  int64_t actor_w[kActorMaxLayers + 1], critic_w[kActorMaxLayers + 1];
  actor_w[0] = O;
  critic_w[0] = X;
  for (int i = 0; i < nl; ++i) {
    actor_w[i + 1] = cfg.actor_out(i);
    critic_w[i + 1] = cfg.critic_out(i);
  }
  MemberLayers actor;
  for (int i = 0; i < nl; ++i) {
    actor.w[i] = storage_.actor[2 * i].param;
    actor.b[i] = storage_.actor[2 * i + 1].param;
  }
  auto critic_member = [&](bool target, int j) {
    MemberLayers m;
    for (int i = 0; i < nl; ++i) {
      const int64_t wn = critic_w[i] * critic_w[i + 1], bn = critic_w[i + 1];
      const float* w = target ? storage_.critic_target[2 * i] : storage_.critic[2 * i].param;
      const float* b = target ? storage_.critic_target[2 * i + 1] : storage_.critic[2 * i + 1].param;
      m.w[i] = w + j * wn;
      m.b[i] = b + j * bn;
    }
    return m;
  };

  const float alpha = std::exp(*storage_.log_alpha.param);
  // log pi's u-independent part, as sac.py forms it: a float32 rounding of
  // -A * (log(2 pi) / 2 + 2 log 2) minus the float32 sum of log(scale).
  float sum_log_scale = 0.0f;
  for (int64_t i = 0; i < A; ++i) sum_log_scale += std::log(cfg.action_scale[i]);
  const float logp_const =
      static_cast<float>(-static_cast<double>(A) * (kHalfLog2Pi + 2.0 * kLog2)) - sum_log_scale;

  // The squashed-Gaussian sample of `squashed_gaussian` from the raw head out [B, 2A]:
  // writes a into act_dst (row stride X, at column O of a critic input), logp [B], and, when
  // given, exp(log_std) and tanh(u) [B, A] for the backward.
  auto sample = [&](const float* out, const float* noise, float* act_dst, float* logp,
                    float* std_out, float* tanh_out) {
    for (int64_t r = 0; r < B; ++r) {
      const float* mean = out + r * 2 * A;
      const float* raw = mean + A;
      const float* e = noise + r * A;
      float sum = 0.0f;
      for (int64_t i = 0; i < A; ++i) {
        const float log_std = std::min(std::max(raw[i], cfg.log_std_min), cfg.log_std_max);
        const float sd = std::exp(log_std);
        const float u = mean[i] + sd * e[i];
        const float per_dim = (-0.5f * (e[i] * e[i]) - log_std) + 2.0f * (u + softplus(-2.0f * u));
        sum += per_dim;
        const float t = std::tanh(u);
        act_dst[r * X + i] = cfg.action_bias[i] + t * cfg.action_scale[i];
        if (std_out) {
          std_out[r * A + i] = sd;
          tanh_out[r * A + i] = t;
        }
      }
      logp[r] = sum + logp_const;
    }
  };
  auto copy_obs = [&](const float* src, float* dst) {
    for (int64_t r = 0; r < B; ++r) std::memcpy(dst + r * X, src + r * O, sizeof(float) * O);
  };

  // ---- phase 1: the actor at s' (task 0) and at s (task 1), with the current weights.
  run_two([&](int t) {
    if (t == 0) {
      float* hidden[kActorMaxLayers];
      for (int i = 0; i < L; ++i) hidden[i] = s.next_hidden[i % 2].data();
      mlp_forward(next_obs, O, B, actor.w, actor.b, actor_w, nl, hidden, s.next_out.data(), prec);
      copy_obs(next_obs, s.x_next.data());
      sample(s.next_out.data(), eps, s.x_next.data() + O, s.next_logp.data(), nullptr, nullptr);
    } else {
      float* hidden[kActorMaxLayers];
      for (int i = 0; i < L; ++i) hidden[i] = s.pol_hidden[i].data();
      mlp_forward(obs, O, B, actor.w, actor.b, actor_w, nl, hidden, s.pol_out.data(), prec);
      copy_obs(obs, s.x_pol.data());
      sample(s.pol_out.data(), eps + B * A, s.x_pol.data() + O, s.pol_logp.data(),
             s.pol_std.data(), s.pol_tanh.data());
      copy_obs(obs, s.x_data.data());
      for (int64_t r = 0; r < B; ++r) {
        std::memcpy(s.x_data.data() + r * X + O, act + r * A, sizeof(float) * A);
      }
    }
  });

  // ---- phase 2: target critic j at (s', a') and critic j at (s, a).
  run_two([&](int j) {
    auto& m = s.member[j];
    float* hidden[kActorMaxLayers];
    const MemberLayers tgt = critic_member(true, j);
    for (int i = 0; i < L; ++i) hidden[i] = m.target_hidden[i % 2].data();
    mlp_forward(s.x_next.data(), X, B, tgt.w, tgt.b, critic_w, nl, hidden, m.q_next.data(), prec);
    const MemberLayers cur = critic_member(false, j);
    for (int i = 0; i < L; ++i) hidden[i] = m.data_hidden[i].data();
    mlp_forward(s.x_data.data(), X, B, cur.w, cur.b, critic_w, nl, hidden, m.q_data.data(), prec);
  });

  // ---- TD target and the critic loss (sac.py `_td_target`, `_critic_loss`).
  const float gamma = static_cast<float>(cfg.gamma);
  double loss_sum = 0.0, q_sum = 0.0;
  {
    auto& m0 = s.member[0];
    auto& m1 = s.member[1];
    for (int64_t r = 0; r < B; ++r) {
      const float v = std::min(m0.q_next[r], m1.q_next[r]) - alpha * s.next_logp[r];
      const float not_done = terminated[r] ? 0.0f : 1.0f;
      s.y[r] = rew[r] + gamma * not_done * v;  // torch.addcmul(rew, not_done, v, value=gamma)
    }
    for (auto& m : s.member) {
      double member_sum = 0.0;
      for (int64_t r = 0; r < B; ++r) {
        const float d = m.q_data[r] - s.y[r];
        member_sum += static_cast<double>(d) * d;
        q_sum += m.q_data[r];
        m.dq[r] = inv_b * (2.0f * d);  // d/dq of mean_B (q - y)^2, in autograd's order
      }
      loss_sum += member_sum / static_cast<double>(B);
    }
  }

  // ---- phase 3: critic j: backward (weight gradients), Adam, Polyak; then Q_j(s, a_pi)
  // with the updated weights.
  const float tau = static_cast<float>(cfg.tau);
  run_two([&](int j) {
    auto& m = s.member[j];
    const MemberLayers cur = critic_member(false, j);
    float* gw[kActorMaxLayers];
    float* gb[kActorMaxLayers];
    for (int i = 0; i < nl; ++i) {
      gw[i] = s.critic_grad[2 * i].data() + j * critic_w[i] * critic_w[i + 1];
      gb[i] = s.critic_grad[2 * i + 1].data() + j * critic_w[i + 1];
    }
    // output layer q = h @ w + b (one column): dW = h^T dq, db = sum dq, dh = dq w^T.
    const float* h_last = m.data_hidden[L - 1].data();
    linear_backward(h_last, H, B, cur.w[L], H, 1, m.dq.data(), 1, gw[L], gb[L], nullptr, 0, false,
                    MatmulPrecision::kFloat32);
    float* g = m.grad_h[0].data();
    float* g_next = m.grad_h[1].data();
    for (int64_t r = 0; r < B; ++r) {
      const float dq = m.dq[r];
      for (int64_t c = 0; c < H; ++c) {
        g[r * H + c] = h_last[r * H + c] > 0.0f ? dq * cur.w[L][c] : 0.0f;
      }
    }
    for (int i = L - 1; i >= 0; --i) {
      const float* x = i == 0 ? s.x_data.data() : m.data_hidden[i - 1].data();
      const int64_t in = critic_w[i];
      linear_backward(x, in, B, cur.w[i], in, H, g, H, gw[i], gb[i], i == 0 ? nullptr : g_next, H,
                      false, prec);
      if (i > 0) {
        relu_backward(m.data_hidden[i - 1].data(), g_next, B * H);
        std::swap(g, g_next);
      }
    }
    // Adam on this member's halves of the critic tensors (torch steps each [2, ...] tensor
    // once: the step counter is advanced on a copy here and stored after the phase).
    for (int t = 0; t < 2 * nl; ++t) {
      const int i = t / 2;
      const int64_t n = (t % 2 == 0) ? critic_w[i] * critic_w[i + 1] : critic_w[i + 1];
      const AdamTensor& at = storage_.critic[t];
      m.adam_step[t] = *at.step;
      adam_step(at.param + j * n, s.critic_grad[t].data() + j * n, at.exp_avg + j * n,
                at.exp_avg_sq + j * n, &m.adam_step[t], n, cfg.adam);
      // Polyak: target.lerp_(critic, tau), torch's two-branch lerp formula.
      float* tp = storage_.critic_target[t] + j * n;
      const float* cp = at.param + j * n;
      if (tau < 0.5f) {
        for (int64_t e = 0; e < n; ++e) tp[e] = tp[e] + tau * (cp[e] - tp[e]);
      } else {
        const float one_minus = 1.0f - tau;
        for (int64_t e = 0; e < n; ++e) tp[e] = cp[e] - (cp[e] - tp[e]) * one_minus;
      }
    }
    const MemberLayers upd = critic_member(false, j);
    float* hidden[kActorMaxLayers];
    for (int i = 0; i < L; ++i) hidden[i] = m.pol_hidden[i].data();
    mlp_forward(s.x_pol.data(), X, B, upd.w, upd.b, critic_w, nl, hidden, m.q_pol.data(), prec);
  });
  for (int t = 0; t < 2 * nl; ++t) *storage_.critic[t].step = s.member[0].adam_step[t];

  // ---- actor loss mean(alpha * logp - min_j Q_j) and its gradient w.r.t. the Q's
  // (torch.min's backward: each side gets the gradient where it is the minimum, half on ties).
  double actor_sum = 0.0, logp_sum = 0.0;
  {
    auto& m0 = s.member[0];
    auto& m1 = s.member[1];
    const float dmin = -inv_b;
    for (int64_t r = 0; r < B; ++r) {
      const float q0 = m0.q_pol[r], q1 = m1.q_pol[r];
      actor_sum += static_cast<double>(alpha * s.pol_logp[r] - std::min(q0, q1));
      logp_sum += s.pol_logp[r];
      const float split = dmin / 2.0f;
      m0.dq[r] = q0 == q1 ? split : (q0 > q1 ? 0.0f : dmin);
      m1.dq[r] = q0 == q1 ? split : (q1 > q0 ? 0.0f : dmin);
    }
  }

  // ---- phase 4: input gradients through critic j (no weight gradients) -> da_j [B, A].
  run_two([&](int j) {
    auto& m = s.member[j];
    const MemberLayers cur = critic_member(false, j);
    const float* h_last = m.pol_hidden[L - 1].data();
    float* g = m.grad_h[0].data();
    float* g_next = m.grad_h[1].data();
    for (int64_t r = 0; r < B; ++r) {
      const float dq = m.dq[r];
      for (int64_t c = 0; c < H; ++c) {
        g[r * H + c] = h_last[r * H + c] > 0.0f ? dq * cur.w[L][c] : 0.0f;
      }
    }
    for (int i = L - 1; i >= 1; --i) {
      linear_backward(nullptr, H, B, cur.w[i], H, H, g, H, nullptr, nullptr, g_next, H, false, prec);
      relu_backward(m.pol_hidden[i - 1].data(), g_next, B * H);
      std::swap(g, g_next);
    }
    // Layer 0: only the action columns of the input gradient (rows O.. of W0 [X, H]).
    linear_backward(nullptr, A, B, cur.w[0] + O * H, A, H, g, H, nullptr, nullptr, m.da.data(), A,
                    false, prec);
  });

  // ---- actor head: d loss / d (mean, raw log_std), through the squashed sample.
  const float dlogp = inv_b * alpha;  // d mean(alpha * logp - .) / d logp
  for (int64_t r = 0; r < B; ++r) {
    const float* mean = s.pol_out.data() + r * 2 * A;
    const float* raw = mean + A;
    const float* e = eps + B * A + r * A;
    float* dmean = s.dout.data() + r * 2 * A;
    float* draw = dmean + A;
    for (int64_t i = 0; i < A; ++i) {
      const int64_t idx = r * A + i;
      const float sd = s.pol_std[idx], th = s.pol_tanh[idx];
      const float u = mean[i] + sd * e[i];
      // a = bias + tanh(u) * scale; the critics' input gradient is summed over both members
      const float da = s.member[0].da[idx] + s.member[1].da[idx];
      const float du_action = da * cfg.action_scale[i] * (1.0f - th * th);
      // logp's per-dim term 2 * (u + softplus(-2u)): softplus_backward, then the chain rule
      const float ds = dlogp * 2.0f;
      const float x = -2.0f * u;
      float dsp = ds;
      if (!(x > 20.0f)) {
        const float z = std::exp(x);
        dsp = ds * z / (z + 1.0f);
      }
      const float du = du_action + (ds + dsp * -2.0f);
      // u = mean + std * eps; std = exp(log_std); per-dim term -log_std
      const float dlog_std = -dlogp + du * e[i] * sd;
      dmean[i] = du;
      draw[i] = (raw[i] >= cfg.log_std_min && raw[i] <= cfg.log_std_max) ? dlog_std : 0.0f;
    }
  }

  // ---- actor backward: output layer, then the hidden layers (weight gradients in task 0,
  // input gradients in task 1), then layer 0's weights.
  {
    float* g = s.grad_h[0].data();
    float* g_next = s.grad_h[1].data();
    const int64_t out = 2 * A;
    linear_backward(s.pol_hidden[L - 1].data(), H, B, actor.w[L], H, out, s.dout.data(), out,
                    s.actor_grad[2 * L].data(), s.actor_grad[2 * L + 1].data(), g, H, false,
                    MatmulPrecision::kFloat32);
    relu_backward(s.pol_hidden[L - 1].data(), g, B * H);
    for (int i = L - 1; i >= 1; --i) {
      const float* x = s.pol_hidden[i - 1].data();
      run_two([&](int t) {
        if (t == 0) {
          linear_backward(x, H, B, actor.w[i], H, H, g, H, s.actor_grad[2 * i].data(),
                          s.actor_grad[2 * i + 1].data(), nullptr, H, false, prec);
        } else {
          linear_backward(x, H, B, actor.w[i], H, H, g, H, nullptr, nullptr, g_next, H, false,
                          prec);
          relu_backward(x, g_next, B * H);
        }
      });
      std::swap(g, g_next);
    }
    linear_backward(obs, O, B, actor.w[0], O, H, g, H, s.actor_grad[0].data(),
                    s.actor_grad[1].data(), nullptr, O, false, prec);
  }

  // ---- Adam on the actor (each tensor split in two halves, one per task) and log_alpha.
  const float mean_logp = static_cast<float>(logp_sum / static_cast<double>(B));
  run_two([&](int t) {
    for (int p = 0; p < 2 * nl; ++p) {
      const int i = p / 2;
      const int64_t n = (p % 2 == 0) ? actor_w[i] * actor_w[i + 1] : actor_w[i + 1];
      const int64_t lo = n * t / 2, hi = n * (t + 1) / 2;
      const AdamTensor& at = storage_.actor[p];
      s.actor_adam_step[t][p] = *at.step;
      adam_step(at.param + lo, s.actor_grad[p].data() + lo, at.exp_avg + lo, at.exp_avg_sq + lo,
                &s.actor_adam_step[t][p], hi - lo, cfg.adam);
    }
  });
  for (int p = 0; p < 2 * nl; ++p) *storage_.actor[p].step = s.actor_adam_step[0][p];
  // alpha loss -log_alpha * (mean logp + target_entropy): its gradient is -(mean logp + H).
  const float alpha_grad = -(mean_logp + static_cast<float>(cfg.target_entropy));
  const AdamTensor& la = storage_.log_alpha;
  adam_step(la.param, &alpha_grad, la.exp_avg, la.exp_avg_sq, la.step, 1, cfg.adam);

  if (stats) {
    stats->critic_loss = static_cast<float>(loss_sum);
    stats->actor_loss = static_cast<float>(actor_sum / static_cast<double>(B));
    stats->alpha = alpha;
    stats->entropy = -mean_logp;
    stats->mean_q = static_cast<float>(q_sum / static_cast<double>(2 * B));
  }
}

}  // namespace mbpo_fast

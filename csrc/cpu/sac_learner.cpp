// SacLearner (sac_learner.h): the SAC update of mbpo_fast/sac.py, written out layer by
// layer with the backward of each step next to its forward. Every elementwise formula
// follows the op torch's autograd runs for sac.py (same operands, same order where it
// changes the rounding), so the float32 results match the torch trainer to rounding.
#include "mbpo_fast/sac_learner.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <thread>
#include <utility>

#include "mbpo_fast/parallel.h"
#include "mbpo_fast/rng.h"

namespace mbpo_fast {

namespace {

constexpr double kHalfLog2Pi = 0.91893853320467274178;  // log(2 pi) / 2
constexpr double kLog2 = 0.69314718055994530942;

std::string str(int64_t v) { return std::to_string(v); }

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

// Runs fn(task, stage) for tasks 0 and 1 and stages 0 .. n_stages - 1, where the two task
// bodies of a stage are independent and a stage may use anything earlier stages wrote.
// On two threads (one parallel_for region) each task runs its stages in order with a spin
// barrier between consecutive stages: one thread wake-up per block instead of one per
// phase. When parallel_for runs the region inline (one thread, or a nested call) the
// stages run in order, task 0 then task 1. An exception in one task releases the other.
template <typename Fn>
void run_staged(int64_t n_stages, const Fn& fn) {
  std::atomic<int64_t> arrived{0};
  std::atomic<bool> failed{false};
  struct Released {};  // unwinds a task whose partner failed
  parallel_for(2, 1, [&](int64_t begin, int64_t end) {
    if (end - begin == 2) {
      for (int64_t st = 0; st < n_stages; ++st) {
        fn(0, st);
        fn(1, st);
      }
      return;
    }
    const int task = static_cast<int>(begin);
    try {
      for (int64_t st = 0; st < n_stages; ++st) {
        if (st > 0) {
          // barrier number st: both tasks have finished stage st - 1 when arrived == 2 * st
          arrived.fetch_add(1, std::memory_order_acq_rel);
          for (int spins = 0; arrived.load(std::memory_order_acquire) < 2 * st; ++spins) {
            if (failed.load(std::memory_order_relaxed)) throw Released{};
            if (spins > 2000) std::this_thread::yield();
          }
        }
        fn(task, st);
      }
    } catch (const Released&) {
      return;  // the partner's exception is the one parallel_for rethrows
    } catch (...) {
      failed.store(true, std::memory_order_relaxed);
      throw;
    }
  });
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

SacConfig SacConfig::for_action_box(int64_t obs_dim, const std::vector<double>& low,
                                    const std::vector<double>& high) {
  require(!low.empty() && low.size() == high.size(),
          "SacConfig::for_action_box: low and high must have the same non-zero size (act_dim), "
          "got " + str(static_cast<int64_t>(low.size())) + " and " +
              str(static_cast<int64_t>(high.size())));
  SacConfig c;
  c.obs_dim = obs_dim;
  c.act_dim = static_cast<int64_t>(low.size());
  c.target_entropy = -static_cast<double>(c.act_dim);
  for (size_t i = 0; i < low.size(); ++i) {
    require(std::isfinite(low[i]) && std::isfinite(high[i]) && low[i] < high[i],
            "SacConfig::for_action_box: need finite low[i] < high[i], got low[" +
                str(static_cast<int64_t>(i)) + "] = " + std::to_string(low[i]) + ", high = " +
                std::to_string(high[i]));
    c.action_scale.push_back(static_cast<float>((high[i] - low[i]) / 2.0));
    c.action_bias.push_back(static_cast<float>((high[i] + low[i]) / 2.0));
  }
  c.validate();
  return c;
}

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
  // per critic member j
  struct Member {
    std::vector<float> target_hidden[2];           // ping-pong [B, H]
    std::vector<std::vector<float>> data_hidden;   // [L][B, H]  Q(s, a)
    std::vector<std::vector<float>> pol_hidden;    // [L][B, H]  Q(s, a_pi), updated critic
    std::vector<float> q_next, q_data, q_pol, dq;  // [B]
    std::vector<float> grad_h[2];                  // ping-pong [B, H]
    std::vector<float> da;                         // [B, A]
    float adam_step[2 * kActorMaxLayers] = {};
    double loss_sum = 0.0, q_sum = 0.0;  // this member's critic loss, sum of Q(s, a)
  } member[2];
  float task_alpha[2] = {};  // exp(log_alpha) at the start of the update, per task
  double actor_sum = 0.0;    // sum_B (alpha * logp - min Q)
  float mean_logp = 0.0f;
  // actor backward
  std::vector<float> dout;      // [B, 2A]
  std::vector<float> grad_h[2];  // ping-pong [B, H]
  float actor_adam_step[2][2 * kActorMaxLayers] = {};
  float alpha_adam_step = 0.0f;
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
  const int64_t A = config_.act_dim;
  const int64_t noise_floats = eps == nullptr ? k * 2 * batch * A : 0;
  ensure_scratch(batch, noise_floats);
  if (eps == nullptr) {
    philox_fill_normal(noise_seed_, kStreamSacUpdateNoise, noise_offset_, noise_floats,
                       scratch_->noise.data());
    noise_offset_ += static_cast<uint64_t>(noise_floats);
    eps = scratch_->noise.data();
  }
  run_block(k, batch, obs, act, rew, next_obs, terminated, eps, stats_out);
}

// -------------------------------------------------------------------------- one block

void SacLearner::run_block(int64_t K, int64_t B, const float* obs_all, const float* act_all,
                           const float* rew_all, const float* next_obs_all,
                           const uint8_t* term_all, const float* eps_all, SacStats* stats_all) {
  Scratch& s = *scratch_;
  const SacConfig& cfg = config_;
  const int64_t O = cfg.obs_dim, A = cfg.act_dim, H = cfg.hidden_size, X = O + A;
  const int L = cfg.num_layers, nl = L + 1;
  const MatmulPrecision prec = cfg.precision;
  const float inv_b = 1.0f / static_cast<float>(B);
  const float gamma = static_cast<float>(cfg.gamma);
  const float tau = static_cast<float>(cfg.tau);

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
  // Member j of the critics (target or current) on x [B, X]; hidden activations into
  // `keep` (for a backward) or a ping-pong scratch.
  auto critic_forward = [&](int j, bool target, const float* x,
                            std::vector<std::vector<float>>* keep, float* q) {
    const MemberLayers m = critic_member(target, j);
    float* hidden[kActorMaxLayers];
    for (int i = 0; i < L; ++i) {
      hidden[i] = keep ? (*keep)[i].data() : s.member[j].target_hidden[i % 2].data();
    }
    mlp_forward(x, X, B, m.w, m.b, critic_w, nl, hidden, q, prec);
  };

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
  // Adam on elements [lo, hi) of actor tensor p, on task t's copy of its step counter.
  auto actor_adam = [&](int t, int p, bool low_half, bool high_half) {
    const int i = p / 2;
    const int64_t n = (p % 2 == 0) ? actor_w[i] * actor_w[i + 1] : actor_w[i + 1];
    const int64_t lo = low_half ? 0 : n / 2, hi = high_half ? n : n / 2;
    const AdamTensor& at = storage_.actor[p];
    s.actor_adam_step[t][p] = *at.step;
    adam_step(at.param + lo, s.actor_grad[p].data() + lo, at.exp_avg + lo, at.exp_avg_sq + lo,
              &s.actor_adam_step[t][p], hi - lo, cfg.adam);
  };
  // The step counters advance on task-local copies during an update (both tasks read the
  // stored value in the same stage); task 0 stores them in the next update's first stage
  // (where nobody reads them) and after the block.
  auto store_steps = [&] {
    for (int t = 0; t < 2 * nl; ++t) *storage_.critic[t].step = s.member[0].adam_step[t];
    *storage_.actor[0].step = s.actor_adam_step[0][0];
    *storage_.actor[1].step = s.actor_adam_step[0][1];
    for (int p = 2; p < 2 * nl; ++p) *storage_.actor[p].step = s.actor_adam_step[1][p];
    *storage_.log_alpha.step = s.alpha_adam_step;
  };
  // Gradient buffer holding d loss / d (input of actor layer i), i >= 1.
  auto actor_grad_in = [&](int i) { return s.grad_h[(L - i) % 2].data(); };

  // Stages of one update (each a pair of independent task bodies; see run_staged):
  const int kForward = 0, kCriticForward = 1, kCriticStep = 2, kCriticInputGrad = 3,
            kActorHead = 4;
  const int kActorHidden = 5;                       // layers L-1 .. 2: L - 2 stages
  const int kActorLayer1 = kActorHidden + std::max(L - 2, 0);
  const int kActorAdam = kActorLayer1 + 1;
  const int stages = kActorAdam + 1;

  run_staged(K * stages, [&](int t, int64_t stage) {
    const int64_t k = stage / stages;
    const int st = static_cast<int>(stage % stages);
    const float* obs = obs_all + k * B * O;
    const float* act = act_all + k * B * A;
    const float* rew = rew_all + k * B;
    const float* next_obs = next_obs_all + k * B * O;
    const uint8_t* terminated = term_all + k * B;
    const float* eps = eps_all + k * 2 * B * A;
    auto& mine = s.member[t];

    if (st == kForward) {
      // alpha = exp(log_alpha) of this update (log_alpha last changed before a barrier)
      s.task_alpha[t] = std::exp(*storage_.log_alpha.param);
      float* hidden[kActorMaxLayers];
      if (t == 0) {
        if (k > 0) store_steps();
        copy_obs(obs, s.x_data.data());
        for (int64_t r = 0; r < B; ++r) {
          std::memcpy(s.x_data.data() + r * X + O, act + r * A, sizeof(float) * A);
        }
        for (int i = 0; i < L; ++i) hidden[i] = s.next_hidden[i % 2].data();
        mlp_forward(next_obs, O, B, actor.w, actor.b, actor_w, nl, hidden, s.next_out.data(),
                    prec);
        copy_obs(next_obs, s.x_next.data());
        sample(s.next_out.data(), eps, s.x_next.data() + O, s.next_logp.data(), nullptr, nullptr);
      } else {
        for (int i = 0; i < L; ++i) hidden[i] = s.pol_hidden[i].data();
        mlp_forward(obs, O, B, actor.w, actor.b, actor_w, nl, hidden, s.pol_out.data(), prec);
        copy_obs(obs, s.x_pol.data());
        sample(s.pol_out.data(), eps + B * A, s.x_pol.data() + O, s.pol_logp.data(),
               s.pol_std.data(), s.pol_tanh.data());
      }
    } else if (st == kCriticForward) {
      // target critic j at (s', a'), critic j at (s, a)
      critic_forward(t, true, s.x_next.data(), nullptr, mine.q_next.data());
      critic_forward(t, false, s.x_data.data(), &mine.data_hidden, mine.q_data.data());
    } else if (st == kCriticStep) {
      // TD target (sac.py `_td_target`; each task forms it for its own member) and
      // d/dq of mean_B (q - y)^2 in autograd's order.
      const float alpha = s.task_alpha[t];
      const auto& q0 = s.member[0].q_next;
      const auto& q1 = s.member[1].q_next;
      double loss = 0.0, q_sum = 0.0;
      for (int64_t r = 0; r < B; ++r) {
        const float v = std::min(q0[r], q1[r]) - alpha * s.next_logp[r];
        const float not_done = terminated[r] ? 0.0f : 1.0f;
        const float y = rew[r] + gamma * not_done * v;  // addcmul(rew, not_done, v, value=gamma)
        const float d = mine.q_data[r] - y;
        loss += static_cast<double>(d) * d;
        q_sum += mine.q_data[r];
        mine.dq[r] = inv_b * (2.0f * d);
      }
      mine.loss_sum = loss / static_cast<double>(B);
      mine.q_sum = q_sum;
      // backward of critic j: output layer q = h @ w + b (one column), then the hidden layers
      const MemberLayers cur = critic_member(false, t);
      float* gw[kActorMaxLayers];
      float* gb[kActorMaxLayers];
      for (int i = 0; i < nl; ++i) {
        gw[i] = s.critic_grad[2 * i].data() + t * critic_w[i] * critic_w[i + 1];
        gb[i] = s.critic_grad[2 * i + 1].data() + t * critic_w[i + 1];
      }
      const float* h_last = mine.data_hidden[L - 1].data();
      float* g = mine.grad_h[0].data();
      float* g_next = mine.grad_h[1].data();
      // dW = h^T dq, db = sum dq, dh = dq w^T (a rank-1 product), then the ReLU mask
      linear_backward(h_last, H, B, cur.w[L], H, 1, mine.dq.data(), 1, gw[L], gb[L], g, H,
                      false, MatmulPrecision::kFloat32);
      relu_backward(h_last, g, B * H);
      for (int i = L - 1; i >= 0; --i) {
        const float* x = i == 0 ? s.x_data.data() : mine.data_hidden[i - 1].data();
        const int64_t in = critic_w[i];
        linear_backward(x, in, B, cur.w[i], in, H, g, H, gw[i], gb[i], i == 0 ? nullptr : g_next,
                        H, false, prec);
        if (i > 0) {
          relu_backward(mine.data_hidden[i - 1].data(), g_next, B * H);
          std::swap(g, g_next);
        }
      }
      // Adam on this member's halves of the critic tensors, then Polyak
      // (target.lerp_(critic, tau): torch's two-branch lerp formula).
      for (int p = 0; p < 2 * nl; ++p) {
        const int i = p / 2;
        const int64_t n = (p % 2 == 0) ? critic_w[i] * critic_w[i + 1] : critic_w[i + 1];
        const AdamTensor& at = storage_.critic[p];
        mine.adam_step[p] = *at.step;
        adam_step(at.param + t * n, s.critic_grad[p].data() + t * n, at.exp_avg + t * n,
                  at.exp_avg_sq + t * n, &mine.adam_step[p], n, cfg.adam);
        float* tp = storage_.critic_target[p] + t * n;
        const float* cp = at.param + t * n;
        if (tau < 0.5f) {
          for (int64_t e = 0; e < n; ++e) tp[e] = tp[e] + tau * (cp[e] - tp[e]);
        } else {
          const float one_minus = 1.0f - tau;
          for (int64_t e = 0; e < n; ++e) tp[e] = cp[e] - (cp[e] - tp[e]) * one_minus;
        }
      }
      // Q_j(s, a_pi) with the updated critic
      critic_forward(t, false, s.x_pol.data(), &mine.pol_hidden, mine.q_pol.data());
    } else if (st == kCriticInputGrad) {
      // actor loss mean(alpha * logp - min_j Q_j): its gradient w.r.t. Q_t (torch.min's
      // backward: the side that is the minimum gets it, half each on ties) ...
      const auto& qa = s.member[0].q_pol;
      const auto& qb = s.member[1].q_pol;
      const float dmin = -inv_b;
      for (int64_t r = 0; r < B; ++r) {
        const float own = t == 0 ? qa[r] : qb[r], other = t == 0 ? qb[r] : qa[r];
        mine.dq[r] = own == other ? dmin / 2.0f : (own > other ? 0.0f : dmin);
      }
      if (t == 0) {
        double actor_sum = 0.0, logp_sum = 0.0;
        for (int64_t r = 0; r < B; ++r) {
          actor_sum += static_cast<double>(s.task_alpha[0] * s.pol_logp[r] - std::min(qa[r], qb[r]));
          logp_sum += s.pol_logp[r];
        }
        s.actor_sum = actor_sum;
        s.mean_logp = static_cast<float>(logp_sum / static_cast<double>(B));
      }
      // ... and back through critic t to the action columns of its input (no weight grads)
      const MemberLayers cur = critic_member(false, t);
      const float* h_last = mine.pol_hidden[L - 1].data();
      float* g = mine.grad_h[0].data();
      float* g_next = mine.grad_h[1].data();
      linear_backward(nullptr, H, B, cur.w[L], H, 1, mine.dq.data(), 1, nullptr, nullptr, g, H,
                      false, MatmulPrecision::kFloat32);
      relu_backward(h_last, g, B * H);
      for (int i = L - 1; i >= 1; --i) {
        linear_backward(nullptr, H, B, cur.w[i], H, H, g, H, nullptr, nullptr, g_next, H, false,
                        prec);
        relu_backward(mine.pol_hidden[i - 1].data(), g_next, B * H);
        std::swap(g, g_next);
      }
      // layer 0: rows O.. of W0 [X, H] are the action inputs
      linear_backward(nullptr, A, B, cur.w[0] + O * H, A, H, g, H, nullptr, nullptr,
                      mine.da.data(), A, false, prec);
    } else if (st == kActorHead) {
      if (t != 0) return;
      // d loss / d (mean, raw log_std) through the squashed sample (sac.py's graph)
      const float dlogp = inv_b * s.task_alpha[0];  // d mean(alpha * logp - .) / d logp
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
          // a = bias + tanh(u) * scale; the critic input is shared by both members
          const float da = s.member[0].da[idx] + s.member[1].da[idx];
          const float du_action = da * cfg.action_scale[i] * (1.0f - th * th);
          // logp's per-dim term 2 * (u + softplus(-2u)): softplus_backward, chain rule
          const float ds = dlogp * 2.0f;
          const float x = -2.0f * u;
          float dsp = ds;
          if (!(x > 20.0f)) {
            const float z = std::exp(x);
            dsp = ds * z / (z + 1.0f);
          }
          const float du = du_action + (ds + dsp * -2.0f);
          // u = mean + std * eps, std = exp(log_std); the per-dim term -log_std; the clamp
          // passes the gradient where log_std_min <= raw <= log_std_max
          const float dlog_std = -dlogp + du * e[i] * sd;
          dmean[i] = du;
          draw[i] = (raw[i] >= cfg.log_std_min && raw[i] <= cfg.log_std_max) ? dlog_std : 0.0f;
        }
      }
      const int64_t out = 2 * A;
      float* g = actor_grad_in(L);
      linear_backward(s.pol_hidden[L - 1].data(), H, B, actor.w[L], H, out, s.dout.data(), out,
                      s.actor_grad[2 * L].data(), s.actor_grad[2 * L + 1].data(), g, H, false,
                      MatmulPrecision::kFloat32);
      relu_backward(s.pol_hidden[L - 1].data(), g, B * H);
    } else if (st < kActorLayer1) {
      // hidden layer i (L-1 .. 2): weight gradients (task 0) | input gradients (task 1)
      const int i = L - 1 - (st - kActorHidden);
      const float* x = s.pol_hidden[i - 1].data();
      const float* dy = actor_grad_in(i + 1);
      if (t == 0) {
        linear_backward(x, H, B, actor.w[i], H, H, dy, H, s.actor_grad[2 * i].data(),
                        s.actor_grad[2 * i + 1].data(), nullptr, H, false, prec);
      } else {
        float* dx = actor_grad_in(i);
        linear_backward(nullptr, H, B, actor.w[i], H, H, dy, H, nullptr, nullptr, dx, H, false,
                        prec);
        relu_backward(x, dx, B * H);
      }
    } else if (st == kActorLayer1) {
      // task 0: layer 1's input gradients and layer 0's weight gradients; task 1: layer 1's
      // weight gradients (with one hidden layer, layer 1 is the head, done above).
      if (t == 0) {
        const float* g0 = actor_grad_in(1);
        if (L >= 2) {
          float* dx = const_cast<float*>(g0);
          linear_backward(nullptr, H, B, actor.w[1], H, H, actor_grad_in(2), H, nullptr, nullptr,
                          dx, H, false, prec);
          relu_backward(s.pol_hidden[0].data(), dx, B * H);
        }
        linear_backward(obs, O, B, actor.w[0], O, H, g0, H, s.actor_grad[0].data(),
                        s.actor_grad[1].data(), nullptr, O, false, prec);
      } else if (L >= 2) {
        linear_backward(s.pol_hidden[0].data(), H, B, actor.w[1], H, H, actor_grad_in(2), H,
                        s.actor_grad[2].data(), s.actor_grad[3].data(), nullptr, H, false, prec);
      }
    } else {  // kActorAdam: task 0 takes layer 0 and the low halves, task 1 the high halves
      if (t == 0) {
        actor_adam(0, 0, true, true);
        actor_adam(0, 1, true, true);
        for (int p = 2; p < 2 * nl; ++p) actor_adam(0, p, true, false);
        // alpha loss -log_alpha * (mean logp + target_entropy): gradient -(mean logp + H)
        const float alpha_grad = -(s.mean_logp + static_cast<float>(cfg.target_entropy));
        const AdamTensor& la = storage_.log_alpha;
        s.alpha_adam_step = *la.step;
        adam_step(la.param, &alpha_grad, la.exp_avg, la.exp_avg_sq, &s.alpha_adam_step, 1,
                  cfg.adam);
        if (stats_all) {
          SacStats& st_out = stats_all[k];
          st_out.critic_loss = static_cast<float>(s.member[0].loss_sum + s.member[1].loss_sum);
          st_out.actor_loss = static_cast<float>(s.actor_sum / static_cast<double>(B));
          st_out.alpha = s.task_alpha[0];
          st_out.entropy = -s.mean_logp;
          st_out.mean_q = static_cast<float>((s.member[0].q_sum + s.member[1].q_sum) /
                                             static_cast<double>(2 * B));
        }
      } else {
        for (int p = 2; p < 2 * nl; ++p) actor_adam(1, p, false, true);
      }
    }
  });
  store_steps();
}

}  // namespace mbpo_fast

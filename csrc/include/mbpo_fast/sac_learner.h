// Native SAC trainer: K-update blocks of Soft Actor-Critic (the math of mbpo_fast/sac.py)
// on float32 parameter and Adam-state storage, with no Python.
//
// One update (sac.py, `_update_one`; alpha = exp(log_alpha) at the start, detached):
//   a', logp' = pi(s') with noise eps[k, 0]           (current actor)
//   y  = r + gamma * (1 - terminated) * (min_j Qtarg_j(s', a') - alpha * logp')
//   critic loss = sum_j mean_B (Q_j(s, a) - y)^2;  one Adam step on both critics
//   a, logp = pi(s) with noise eps[k, 1]
//   actor loss = mean_B(alpha * logp - min_j Q_j(s, a))   (the UPDATED critics; only their
//                input gradients are computed)
//   alpha loss = -log_alpha * (mean_B logp + target_entropy)
//   one Adam step on the actor and log_alpha;  Qtarg += tau * (Q - Qtarg)   (torch.lerp)
// Policy: log_std = clamp(raw, log_std_min, log_std_max) (hard clamp; the gradient passes
// where min <= raw <= max), u = mean + exp(log_std) * eps, a = tanh(u) * scale + bias,
// log pi = sum_i [-eps_i^2 / 2 - log_std_i + 2 (u_i + softplus(-2 u_i))] + const.
//
// Networks (widths: hidden_size for the num_layers hidden ReLU layers):
//   actor  obs [obs_dim] -> [2 * act_dim] (mean, raw log_std): layer i weight [in, out], bias [out]
//   critic concat(obs, act) -> 1, two members: weight [2, in, out], bias [2, out]
// Row-major, C-contiguous; the layout of the torch modules' parameters (sac.py), so a
// learner can work IN PLACE on the tensors torch owns (borrowed mode), or own its storage
// (SacLearner::create, for C++ programs).
//
// Threads: a block runs as two tasks in ONE parallel_for region, in stages separated by
// spin barriers: the two critics (and target critics) are independent networks, one per
// task; the actor's forward passes at s' and s, its backward (weight vs input gradients)
// and Adam (tensor halves) are split between the tasks. The split is fixed (2 tasks), so
// results do not depend on the thread count; on one thread the stages run in order.
// Precision: MatmulPrecision::kBf16 runs the hidden layers' matmuls (forward and backward)
// with bf16 inputs and float32 accumulation; output layers, losses, weights and Adam stay
// float32 (SAC(autocast_bf16=True)).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "mbpo_fast/actor.h"
#include "mbpo_fast/common.h"
#include "mbpo_fast/train_ops.h"

namespace mbpo_fast {

// Philox streams of the owning mode (rng.h): the update noise when update_block is given
// no eps, and the parameter initialization of SacLearner::create.
constexpr uint64_t kStreamSacUpdateNoise = 16ull << 32;
constexpr uint64_t kStreamSacInit = 17ull << 32;

struct SacConfig {
  int64_t obs_dim = 0;
  int64_t act_dim = 0;
  int64_t hidden_size = 256;
  int num_layers = 2;  // hidden layers (>= 1); each network has num_layers + 1 linear layers
  double gamma = 0.99;
  double tau = 5e-3;
  double target_entropy = 0.0;  // sac.py default: -act_dim
  AdamConfig adam{3e-4, 0.9, 0.999, 1e-8};
  std::vector<float> action_scale;  // [act_dim], > 0: (high - low) / 2
  std::vector<float> action_bias;   // [act_dim]:      (high + low) / 2
  float log_std_min = -20.0f;
  float log_std_max = 2.0f;
  MatmulPrecision precision = MatmulPrecision::kFloat32;

  // sac.py's defaults for an action box [low, high] (each [act_dim], low < high, finite):
  // scale = (high - low) / 2 and bias = (high + low) / 2 computed in double and rounded to
  // float32 (as the agent does), target_entropy = -act_dim, 2 x 256 hidden, lr 3e-4,
  // gamma 0.99, tau 5e-3. Throws InvalidArgument for bad sizes or bounds.
  static SacConfig for_action_box(int64_t obs_dim, const std::vector<double>& low,
                                  const std::vector<double>& high);
  // Throws InvalidArgument naming the first bad field.
  void validate() const;
  // Linear layer i (0 .. num_layers) of the actor / of one critic: [in, out] sizes.
  int64_t actor_in(int i) const;
  int64_t actor_out(int i) const;
  int64_t critic_in(int i) const;
  int64_t critic_out(int i) const;
};

// Where the learner's state lives. Tensor order is the modules' parameters() order:
// layer 0 weight, layer 0 bias, layer 1 weight, ... (2 * (num_layers + 1) entries).
//   actor[2i]      [actor_in(i), actor_out(i)]        actor[2i + 1]  [actor_out(i)]
//   critic[2i]     [2, critic_in(i), critic_out(i)]   critic[2i + 1] [2, critic_out(i)]
//   critic_target  the critic's shapes (parameters only: no optimizer)
//   log_alpha      one float (its Adam state in the same struct)
struct SacStorage {
  std::vector<AdamTensor> actor;
  std::vector<AdamTensor> critic;
  std::vector<float*> critic_target;
  AdamTensor log_alpha;
};

// Per-update statistics (sac.py `update`): critic loss, actor loss, alpha used in the
// update, entropy = -mean logp of the actor step, mean_q = mean of both critics' Q(s, a)
// over the batch before the critic step.
struct SacStats {
  float critic_loss = 0.0f;
  float actor_loss = 0.0f;
  float alpha = 0.0f;
  float entropy = 0.0f;
  float mean_q = 0.0f;
};

class SacLearner {
 public:
  // Borrowed mode: works in place on `storage` (every pointer non-null, sized by config),
  // which must outlive the learner. `noise_seed` only matters for update_block calls
  // without eps. Throws InvalidArgument for a bad config or a null pointer.
  SacLearner(SacConfig config, SacStorage storage, uint64_t noise_seed = 0);

  // Owning mode: allocates every tensor, initializes the weights like nn.Linear's default
  // (weight and bias uniform in +-1/sqrt(in), from Philox stream kStreamSacInit under
  // `seed`), copies the critics into the targets, log_alpha = log(init_alpha), zero Adam
  // state (step 0). Noise of update_block calls without eps: Philox under `seed`.
  static SacLearner create(SacConfig config, uint64_t seed, double init_alpha = 1.0);

  SacLearner(SacLearner&&) noexcept;
  SacLearner& operator=(SacLearner&&) noexcept;
  SacLearner(const SacLearner&) = delete;
  SacLearner& operator=(const SacLearner&) = delete;
  ~SacLearner();

  // Runs `k` updates, update i on batch i of the block (every array C-contiguous):
  //   obs, next_obs [k, batch, obs_dim]; act [k, batch, act_dim]; rew [k, batch] float32;
  //   terminated [k, batch] uint8 (0: bootstrap, else terminal);
  //   eps [k, 2, batch, act_dim] float32 standard-normal noise: eps[i, 0] for the
  //   next-state actions, eps[i, 1] for the policy actions. eps == nullptr draws it from
  //   Philox (seed, kStreamSacUpdateNoise) at noise_offset(), which then advances by
  //   k * 2 * batch * act_dim.
  //   stats_out [k] (may be null).
  // Validates before it changes anything (InvalidArgument). Scratch is allocated on the
  // first call and when batch grows; then an update allocates nothing. Not thread-safe
  // (one call at a time per learner); uses parallel_for internally.
  void update_block(int64_t k, int64_t batch, const float* obs, const float* act, const float* rew,
                    const float* next_obs, const uint8_t* terminated, const float* eps,
                    SacStats* stats_out);

  // The current policy (weights alias the storage; valid while the learner lives), for
  // actor_act (actor.h).
  ActorView actor_view() const;

  const SacConfig& config() const noexcept { return config_; }
  const SacStorage& storage() const noexcept { return storage_; }
  bool owns_storage() const noexcept { return !owned_.empty(); }
  uint64_t noise_seed() const noexcept { return noise_seed_; }
  uint64_t noise_offset() const noexcept { return noise_offset_; }
  void set_noise_offset(uint64_t offset) noexcept { noise_offset_ = offset; }
  // Matmul multiply-adds of one update at batch size `batch` (for benchmarks' FLOP counts).
  int64_t update_macs(int64_t batch) const;

 private:
  struct Scratch;
  void ensure_scratch(int64_t batch, int64_t noise_floats);
  void run_block(int64_t k, int64_t batch, const float* obs, const float* act, const float* rew,
                 const float* next_obs, const uint8_t* terminated, const float* eps,
                 SacStats* stats);

  SacConfig config_;
  SacStorage storage_;
  std::vector<std::vector<float>> owned_;  // owning mode: every tensor's memory
  std::unique_ptr<Scratch> scratch_;
  uint64_t noise_seed_ = 0;
  uint64_t noise_offset_ = 0;
};

}  // namespace mbpo_fast

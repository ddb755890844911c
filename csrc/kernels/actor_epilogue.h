// Per-row epilogue of the SAC actor (tanh-squashed Gaussian policy), shared by the CPU loop
// and the device rollout (csrc/cuda/rollout.cu). Mirrors mbpo_fast/sac.py (`SAC.act`, `squashed_gaussian`):
//
//   mean = head[0:A], log_std = clamp(head[A:2A], log_std_min, log_std_max)
//   u = mean + exp(log_std) * eps          (deterministic: u = mean)
//   a = clamp(tanh(u) * scale + bias, low, high)
//   log pi(a) = sum_j [ -eps_j^2 / 2 - log_std_j - log(2 pi) / 2 ]            (deterministic: no eps term)
//             - sum_j [ log(scale_j) + 2 * (log 2 - u_j - softplus(-2 u_j)) ]
//
// The clamp of `a` matters only when tanh saturates to exactly +-1 and scale + bias rounds
// one ulp past a bound (the agent clamps for the same reason).
#pragma once

#include <cmath>
#include <cstdint>

#include "mbpo_fast/common.h"
#include "mbpo_fast/rng.h"

namespace mbpo_fast {
namespace kernels {

constexpr float kHalfLog2Pi = 0.91893853320467274178f;  // log(2 pi) / 2
constexpr float kLog2 = 0.69314718055994530942f;

// softplus(x) = log(1 + exp(x)) without overflow or cancellation.
MBPO_HD float actor_softplus(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }

// The actor's hidden activation: `x < 0 ? 0 : x` keeps NaN (as torch.relu does).
MBPO_HD float relu(float x) { return x < 0.0f ? 0.0f : x; }

// torch.clamp semantics: NaN stays NaN (fminf/fmaxf would replace it by a bound).
MBPO_HD float clamp_keep_nan(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

// Standard normals number first .. first + n - 1 of (seed, kStreamPolicyNoise), i.e.
// eps[j] = random_normal(seed, kStreamPolicyNoise, first + j), computing each Philox block once.
MBPO_HD void policy_noise(uint64_t seed, uint64_t first, int64_t n, float* eps) {
  uint64_t block = ~0ull;
  Philox4x32 b{};
  for (int64_t j = 0; j < n; ++j) {
    const uint64_t index = first + static_cast<uint64_t>(j);
    if ((index >> 2) != block) {
      block = index >> 2;
      b = philox_block(seed, kStreamPolicyNoise, block);
    }
    const uint32_t pair = static_cast<uint32_t>(index & 2u);
    eps[j] = box_muller(b.v[pair], b.v[pair + 1], (index & 1u) != 0);
  }
}

// One row: head [2 * act_dim] (raw mean, raw log_std) -> act [act_dim]; returns log pi(a).
// eps [act_dim] is ignored (may be null) when deterministic. low/high: the action box.
MBPO_HD float actor_row_epilogue(const float* head, int64_t act_dim, const float* eps, bool deterministic,
                                 const float* scale, const float* bias, const float* low, const float* high,
                                 float log_std_min, float log_std_max, float* act) {
  float log_prob = 0.0f;
  for (int64_t j = 0; j < act_dim; ++j) {
    const float mean = head[j];
    const float log_std = clamp_keep_nan(head[act_dim + j], log_std_min, log_std_max);
    float u = mean;
    float gauss = -log_std - kHalfLog2Pi;
    if (!deterministic) {
      const float e = eps[j];
      u = mean + expf(log_std) * e;
      gauss = -0.5f * (e * e) - log_std - kHalfLog2Pi;
    }
    const float log_det = 2.0f * (kLog2 - u - actor_softplus(-2.0f * u)) + logf(scale[j]);
    log_prob += gauss - log_det;
    act[j] = clamp_keep_nan(tanhf(u) * scale[j] + bias[j], low[j], high[j]);
  }
  return log_prob;
}

}  // namespace kernels
}  // namespace mbpo_fast

// Per-row epilogue of the ensemble model, shared by the CPU loops and the CUDA kernels
// (csrc/cuda/ensemble_step.cu): logvar soft clamp, Gaussian noise from the shared Philox
// stream, next_obs.
#pragma once

#include <cmath>
#include <cstdint>

#include "mbpo_fast/common.h"
#include "mbpo_fast/rng.h"

namespace mbpo_fast {
namespace kernels {

// softplus(x) = log(1 + exp(x)), written so it neither overflows nor loses precision.
MBPO_HD float softplus(float x) {
  return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x)));
}

// The hidden activation, SiLU (swish): x / (1 + exp(-x)) (the portable CPU kernel and the
// CUDA kernels; the AVX-512 kernel vectorizes the same formula).
MBPO_HD float silu(float x) { return x / (1.0f + expf(-x)); }

// MBPO's soft clamp of a raw logvar into (min_logvar, max_logvar):
//   lv = max - softplus(max - raw); lv = min + softplus(lv - min).
MBPO_HD float soft_clamp_logvar(float raw, float max_logvar, float min_logvar) {
  const float lv = max_logvar - softplus(max_logvar - raw);
  return min_logvar + softplus(lv - min_logvar);
}

// Member of row `row` among `num_elites` elites (the index into the elites array).
MBPO_HD uint32_t member_choice(uint64_t seed, uint64_t row, uint32_t num_elites) {
  return random_index(seed, kStreamMemberChoice, row, num_elites);
}

// Writes the obs_dim + 1 standard normals of row `row` (Δobs then reward) to eps:
// element j is random_normal(seed, kStreamModelNoise, row * (obs_dim + 1) + j). Computes
// each Philox block once instead of once per element.
MBPO_HD void row_noise(uint64_t seed, uint64_t row, int64_t out_dim, float* eps) {
  const uint64_t base = row * static_cast<uint64_t>(out_dim);
  uint64_t block = ~0ull;
  Philox4x32 b{};
  for (int64_t j = 0; j < out_dim; ++j) {
    const uint64_t index = base + static_cast<uint64_t>(j);
    if ((index >> 2) != block) {
      block = index >> 2;
      b = philox_block(seed, kStreamModelNoise, block);
    }
    const uint32_t pair = static_cast<uint32_t>(index & 2u);
    eps[j] = box_muller(b.v[pair], b.v[pair + 1], (index & 1u) != 0);
  }
}

// The step epilogue of one row. head [2 * (obs_dim + 1)] = (mean, raw logvar) of the
// chosen member; eps [obs_dim + 1] (ignored when deterministic).
//   next_obs[j] = obs[j] + mean[j] + std[j] * eps[j],  reward = mean[d] + std[d] * eps[d].
MBPO_HD void step_row_epilogue(const float* head, const float* obs, const float* max_logvar,
                               const float* min_logvar, const float* eps, bool deterministic,
                               int64_t obs_dim, float* next_obs, float* reward) {
  const int64_t out_dim = obs_dim + 1;
  for (int64_t j = 0; j < out_dim; ++j) {
    float value = head[j];
    if (!deterministic) {
      const float lv = soft_clamp_logvar(head[out_dim + j], max_logvar[j], min_logvar[j]);
      value += expf(0.5f * lv) * eps[j];
    }
    if (j < obs_dim) {
      next_obs[j] = obs[j] + value;
    } else {
      *reward = value;
    }
  }
}

// The predict epilogue of one row: mean and variance = exp(soft-clamped logvar).
MBPO_HD void predict_row_epilogue(const float* head, const float* max_logvar, const float* min_logvar,
                                  int64_t out_dim, float* mean, float* var) {
  for (int64_t j = 0; j < out_dim; ++j) {
    if (mean) mean[j] = head[j];
    if (var) var[j] = expf(soft_clamp_logvar(head[out_dim + j], max_logvar[j], min_logvar[j]));
  }
}

}  // namespace kernels
}  // namespace mbpo_fast

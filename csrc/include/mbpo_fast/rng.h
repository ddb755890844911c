// Philox4x32-10 counter-based RNG (Salmon et al., SC'11) and the sampling helpers every
// backend shares.
//
// Every random number in mbpo_fast is a pure function of (seed, stream, index):
//   key     = (lo32(seed), hi32(seed))
//   counter = (lo32(index / 4), hi32(index / 4), lo32(stream), hi32(stream))
//   value   = lane (index % 4) of philox4x32_10(counter, key)
// so the CPU loops, the CUDA kernels and the Numba mirror draw the SAME numbers for the
// same element regardless of threading or launch shape. Streams separate independent
// uses (pool sampling, member choice, Gaussian noise, ...); see the kStream* constants.
#pragma once

#include <cmath>
#include <cstdint>

#include "mbpo_fast/common.h"

namespace mbpo_fast {

struct Philox4x32 {
  uint32_t v[4];
};

namespace philox_detail {
constexpr uint32_t kM0 = 0xD2511F53u;
constexpr uint32_t kM1 = 0xCD9E8D57u;
constexpr uint32_t kW0 = 0x9E3779B9u;
constexpr uint32_t kW1 = 0xBB67AE85u;

MBPO_HD void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}
}  // namespace philox_detail

// One Philox4x32-10 block: 10 rounds on a 128-bit counter under a 64-bit key.
MBPO_HD Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                 uint32_t k1) {
  using namespace philox_detail;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kM0, c0, hi0, lo0);
    mulhilo(kM1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return Philox4x32{{c0, c1, c2, c3}};
}

// The four 32-bit words of block `block` (= index / 4) in `stream` under `seed`.
MBPO_HD Philox4x32 philox_block(uint64_t seed, uint64_t stream, uint64_t block) {
  return philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                       static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32),
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Uniform 32-bit word number `index` of (seed, stream).
MBPO_HD uint32_t random_u32(uint64_t seed, uint64_t stream, uint64_t index) {
  const Philox4x32 b = philox_block(seed, stream, index >> 2);
  return b.v[index & 3u];
}

// Maps a uniform 32-bit word to [0, n) by multiply-shift (Lemire). The bias is at most
// n / 2^32, far below anything a test or an RL run can see for n < 2^31.
MBPO_HD uint32_t bounded_u32(uint32_t word, uint32_t n) {
  return static_cast<uint32_t>((static_cast<uint64_t>(word) * n) >> 32);
}

// Uniform integer in [0, n) for element `index` of (seed, stream). Requires 0 < n < 2^32.
MBPO_HD uint32_t random_index(uint64_t seed, uint64_t stream, uint64_t index, uint32_t n) {
  return bounded_u32(random_u32(seed, stream, index), n);
}

// Uniform float in (0, 1]: 24 random bits, never 0 (so log() is finite).
MBPO_HD float u32_to_unit_open0(uint32_t word) {
  return (static_cast<float>(word >> 8) + 1.0f) * (1.0f / 16777216.0f);
}

// Uniform float in [0, 1).
MBPO_HD float u32_to_unit(uint32_t word) {
  return static_cast<float>(word >> 8) * (1.0f / 16777216.0f);
}

// Box-Muller on two words: returns the cosine (first) or sine (second) branch.
// Computed in double and rounded once to float, so every backend (whatever its libm)
// produces the same float32 value except in vanishingly rare double-rounding ties.
MBPO_HD float box_muller(uint32_t w0, uint32_t w1, bool second) {
  const double u1 = (static_cast<double>(w0 >> 8) + 1.0) * (1.0 / 16777216.0);
  const double u2 = static_cast<double>(w1 >> 8) * (1.0 / 16777216.0);
  const double r = sqrt(-2.0 * log(u1));
  const double theta = 6.283185307179586 * u2;
  return static_cast<float>(second ? r * sin(theta) : r * cos(theta));
}

// Standard normal number `index` of (seed, stream). Lanes (0,1) and (2,3) of a block are
// Box-Muller pairs, so filling indices 4k..4k+3 costs one Philox block.
MBPO_HD float random_normal(uint64_t seed, uint64_t stream, uint64_t index) {
  const Philox4x32 b = philox_block(seed, stream, index >> 2);
  const uint32_t lane = static_cast<uint32_t>(index & 3u);
  const uint32_t pair = lane & 2u;
  return box_muller(b.v[pair], b.v[pair + 1], (lane & 1u) != 0);
}

// Stream identifiers. A stream id is a 64-bit value; the high 32 bits name the purpose,
// the low 32 bits are free for a per-call counter (e.g. the rollout step).
constexpr uint64_t kStreamUser = 0;                    // raw fills requested by the user
constexpr uint64_t kStreamPoolSample = 1ull << 32;     // replay-pool row indices
constexpr uint64_t kStreamMemberChoice = 2ull << 32;   // ensemble member per row
constexpr uint64_t kStreamModelNoise = 3ull << 32;     // Gaussian noise of model.step
constexpr uint64_t kStreamPolicyNoise = 4ull << 32;    // SAC actor noise in rollouts
constexpr uint64_t kStreamRolloutStart = 5ull << 32;   // rollout start states
constexpr uint64_t kStreamPlanSeed = 6ull << 32;       // MPC planner: per-call / per-iteration seeds
constexpr uint64_t kStreamPlanAction = 7ull << 32;     // MPC planner: candidate action sequences

// CPU fills (csrc/cpu/rng.cpp), threaded over elements; out[i] is element offset + i.
void philox_fill_u32(uint64_t seed, uint64_t stream, uint64_t offset, int64_t n, uint32_t* out);
void philox_fill_normal(uint64_t seed, uint64_t stream, uint64_t offset, int64_t n, float* out);

}  // namespace mbpo_fast

// Internal: the micro-kernels of the CPU ensemble ops (not public API): dense layers and
// tile epilogues, each in a portable and an AVX-512 version chosen at run time.
//
//   y[r, j] = act(b[j] + sum_k x[r, k] * w[k, j])   for r < rows, j < n,
//   w row-major [k_dim, n] (a member's slice of layers.{i}.weight), act = SiLU or identity.
//
// Every row is accumulated in the same order (bias, then k = 0..k_dim-1), so a row's result
// does not depend on how many rows are processed together, on its position in a tile or
// on the thread that runs it: results are identical for any thread count.
#pragma once

#include <cstdint>

namespace mbpo_fast {
namespace cpu {

using DenseFn = void (*)(const float* x, int64_t ldx, int64_t rows, const float* w, const float* b,
                         int64_t k_dim, int64_t n, float* y, int64_t ldy, bool silu);

// Plain C++ (auto-vectorized for the build's baseline ISA); runs on any CPU.
void dense_portable(const float* x, int64_t ldx, int64_t rows, const float* w, const float* b,
                    int64_t k_dim, int64_t n, float* y, int64_t ldy, bool silu);

// AVX-512 register-blocked kernel (6 rows x 64 columns of accumulators). Only call when
// dense_avx512_supported() is true.
void dense_avx512(const float* x, int64_t ldx, int64_t rows, const float* w, const float* b,
                  int64_t k_dim, int64_t n, float* y, int64_t ldy, bool silu);

// True when the AVX-512 kernel was compiled in and this CPU supports AVX-512F.
bool dense_avx512_supported();

// Step epilogue of a tile: row r < rows of `head` (row stride ld; mean then raw logvar)
// belongs to the original row idx[r]; writes next_obs[idx[r]], reward[idx[r]] (see
// kernels::step_row_epilogue). work: 2 * (obs_dim + 1) floats.
using StepEpilogueFn = void (*)(const float* head, int64_t ld, int64_t rows, const int64_t* idx,
                                const float* obs, int64_t obs_dim, const float* max_logvar,
                                const float* min_logvar, uint64_t seed, bool deterministic,
                                float* next_obs, float* reward, float* work);
void step_epilogue_portable(const float* head, int64_t ld, int64_t rows, const int64_t* idx,
                            const float* obs, int64_t obs_dim, const float* max_logvar,
                            const float* min_logvar, uint64_t seed, bool deterministic,
                            float* next_obs, float* reward, float* work);
void step_epilogue_avx512(const float* head, int64_t ld, int64_t rows, const int64_t* idx,
                          const float* obs, int64_t obs_dim, const float* max_logvar,
                          const float* min_logvar, uint64_t seed, bool deterministic,
                          float* next_obs, float* reward, float* work);

// Predict epilogue of a tile: mean[r, :] = head[r, :out_dim], var[r, :] = exp(soft clamp)
// (rows of out_dim floats; either may be null).
using PredictEpilogueFn = void (*)(const float* head, int64_t ld, int64_t rows, int64_t out_dim,
                                   const float* max_logvar, const float* min_logvar, float* mean,
                                   float* var);
void predict_epilogue_portable(const float* head, int64_t ld, int64_t rows, int64_t out_dim,
                               const float* max_logvar, const float* min_logvar, float* mean,
                               float* var);
void predict_epilogue_avx512(const float* head, int64_t ld, int64_t rows, int64_t out_dim,
                             const float* max_logvar, const float* min_logvar, float* mean,
                             float* var);

// The model noise of one row with the AVX-512 Box-Muller (for tests against rng.h).
void model_noise_avx512(uint64_t seed, uint64_t row, int64_t out_dim, float* eps);

}  // namespace cpu
}  // namespace mbpo_fast

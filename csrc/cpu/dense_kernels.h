// Internal: the dense-layer micro-kernels of the CPU ensemble forward (not public API).
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

}  // namespace cpu
}  // namespace mbpo_fast

// Internal: the AVX-512 GEMM kernels behind sgemm / sgemm_bf16 (train_ops.h), each in its
// own translation unit compiled with AVX-512 flags and chosen at run time.
#pragma once

#include <cstdint>

namespace mbpo_fast {
namespace cpu {

using GemmFn = void (*)(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                        const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                        float* c, int64_t ldc);

// C[m, n] = beta * C (beta == 0: zero-fill without reading C). Used for k == 0. Defined in
// train_ops.cpp (compiled without AVX-512 flags), never inline here: an inline function
// compiled into an AVX-512 unit could be the copy the linker keeps for every caller.
void gemm_scale_c(int64_t m, int64_t n, float beta, float* c, int64_t ldc);

// True when gemm_avx512.cpp was compiled with AVX-512 and this CPU has AVX-512F.
bool gemm_avx512_supported();
void sgemm_avx512(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
                  int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// True when gemm_bf16_avx512.cpp was compiled with AVX512_BF16 and this CPU has it.
bool gemm_bf16_avx512_supported();
void sgemm_bf16_avx512(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                       const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                       float* c, int64_t ldc);

// ------------------------------------------------------------------ elementwise (AVX-512)
// The trainers' elementwise hot path, vectorized in gemm_avx512.cpp (the unit compiled with
// AVX-512 flags); train_ops.cpp calls them when gemm_avx512_supported(), else its portable
// loops. Semantics are those of the train_ops.h functions of the same name.
void relu_forward_avx512(float* x, int64_t n);
void relu_backward_avx512(const float* h, float* g, int64_t n);
void silu_forward_avx512(float* x, float* pre, int64_t n);
void silu_backward_avx512(const float* pre, float* g, int64_t n);
// db[j] (=|+=) sum over rows r of dy[r * ld + j], j < n (rows summed in order, in double,
// rounded to float once).
void column_sums_avx512(const float* dy, int64_t ld, int64_t rows, int64_t n, float* db, bool accumulate);
// One Adam step over n floats with the scalars already derived (see adam_step); the
// arithmetic is torch's fused CPU kernel as compiled for AVX-512 (FMA-contracted).
struct AdamScalars {
  float step_size, bias_correction2_sqrt, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay;
};
void adam_avx512(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
                 const AdamScalars& s);

}  // namespace cpu
}  // namespace mbpo_fast

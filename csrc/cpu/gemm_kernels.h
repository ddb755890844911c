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

}  // namespace cpu
}  // namespace mbpo_fast

// AVX-512 GEMM kernel behind sgemm (train_ops.h). PLACEHOLDER until the register-blocked
// kernel lands: reports unsupported so sgemm dispatches to the portable kernel.
#include "cpu/gemm_kernels.h"

#include "mbpo_fast/train_ops.h"

namespace mbpo_fast {
namespace cpu {

bool gemm_bf16_avx512_supported() { return false; }

void sgemm_bf16_avx512(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
                       int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  sgemm_bf16_portable(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace cpu
}  // namespace mbpo_fast

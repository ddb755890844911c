// Portable implementations of the trainer building blocks (train_ops.h) and the run-time
// dispatch of sgemm / sgemm_bf16 to the AVX-512 kernels (gemm_avx512.cpp,
// gemm_bf16_avx512.cpp) where the CPU has them.
#include "mbpo_fast/train_ops.h"

#include <cmath>
#include <cstring>

#include "cpu/ensemble_kernels.h"  // bf16_round
#include "cpu/gemm_kernels.h"

namespace mbpo_fast {

namespace {

inline float at_a(bool trans, const float* a, int64_t lda, int64_t i, int64_t p) {
  return trans ? a[p * lda + i] : a[i * lda + p];
}

inline float bf16_value(float x) {
  const uint32_t bits = static_cast<uint32_t>(cpu::bf16_round(x)) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

template <bool kBf16>
void gemm_reference(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
                    int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cpu::gemm_scale_c(m, n, beta, c, ldc);
  for (int64_t i = 0; i < m; ++i) {
    float* ci = c + i * ldc;
    for (int64_t p = 0; p < k; ++p) {
      float av = at_a(trans_a, a, lda, i, p);
      if (kBf16) av = bf16_value(av);
      if (!trans_b) {
        const float* bp = b + p * ldb;
        if (kBf16) {
          for (int64_t j = 0; j < n; ++j) ci[j] += av * bf16_value(bp[j]);
        } else {
          for (int64_t j = 0; j < n; ++j) ci[j] += av * bp[j];
        }
      } else {
        for (int64_t j = 0; j < n; ++j) {
          const float bv = b[j * ldb + p];
          ci[j] += av * (kBf16 ? bf16_value(bv) : bv);
        }
      }
    }
  }
}

}  // namespace

namespace cpu {
void gemm_scale_c(int64_t m, int64_t n, float beta, float* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    float* ci = c + i * ldc;
    if (beta == 0.0f) {
      for (int64_t j = 0; j < n; ++j) ci[j] = 0.0f;
    } else if (beta != 1.0f) {
      for (int64_t j = 0; j < n; ++j) ci[j] *= beta;
    }
  }
}
}  // namespace cpu

void sgemm_portable(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
                    int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  gemm_reference<false>(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc);
}

void sgemm_bf16_portable(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                         const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                         float* c, int64_t ldc) {
  gemm_reference<true>(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc);
}

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  static const cpu::GemmFn fn = cpu::gemm_avx512_supported() ? &cpu::sgemm_avx512 : &sgemm_portable;
  fn(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc);
}

void sgemm_bf16(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
                int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  static const cpu::GemmFn fn =
      cpu::gemm_bf16_avx512_supported() ? &cpu::sgemm_bf16_avx512 : &sgemm_bf16_portable;
  fn(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc);
}

const char* sgemm_kernel_name() { return cpu::gemm_avx512_supported() ? "avx512" : "portable"; }
const char* sgemm_bf16_kernel_name() {
  return cpu::gemm_bf16_avx512_supported() ? "avx512_bf16" : "portable";
}

// ------------------------------------------------------------------------ dense layer

void linear_forward(const float* x, int64_t ldx, int64_t rows, const float* w, const float* b,
                    int64_t in, int64_t out, float* y, int64_t ldy, MatmulPrecision precision) {
  for (int64_t r = 0; r < rows; ++r) std::memcpy(y + r * ldy, b, sizeof(float) * out);
  if (precision == MatmulPrecision::kBf16) {
    sgemm_bf16(false, false, rows, out, in, x, ldx, w, out, 1.0f, y, ldy);
  } else {
    sgemm(false, false, rows, out, in, x, ldx, w, out, 1.0f, y, ldy);
  }
}

void linear_backward(const float* x, int64_t ldx, int64_t rows, const float* w, int64_t in,
                     int64_t out, const float* dy, int64_t lddy, float* dw, float* db, float* dx,
                     int64_t lddx, bool accumulate, MatmulPrecision precision) {
  const bool bf16 = precision == MatmulPrecision::kBf16;
  const float beta = accumulate ? 1.0f : 0.0f;
  if (dw != nullptr) {  // dw[in, out] = x^T[in, rows] @ dy[rows, out]
    if (bf16) {
      sgemm_bf16(true, false, in, out, rows, x, ldx, dy, lddy, beta, dw, out);
    } else {
      sgemm(true, false, in, out, rows, x, ldx, dy, lddy, beta, dw, out);
    }
  }
  if (db != nullptr) {  // db[out] = column sums of dy (float32, never rounded to bf16)
    if (cpu::gemm_avx512_supported()) {
      cpu::column_sums_avx512(dy, lddy, rows, out, db, accumulate);
    } else {
      // In double, rounded once (as column_sums_avx512): the sums cancel.
      for (int64_t j = 0; j < out; ++j) {
        double acc = accumulate ? db[j] : 0.0;
        for (int64_t r = 0; r < rows; ++r) acc += dy[r * lddy + j];
        db[j] = static_cast<float>(acc);
      }
    }
  }
  if (dx != nullptr) {  // dx[rows, in] = dy[rows, out] @ w^T  (w stored [in, out])
    if (bf16) {
      sgemm_bf16(false, true, rows, in, out, dy, lddy, w, out, 0.0f, dx, lddx);
    } else {
      sgemm(false, true, rows, in, out, dy, lddy, w, out, 0.0f, dx, lddx);
    }
  }
}

void relu_forward(float* x, int64_t n) {
  if (cpu::gemm_avx512_supported()) return cpu::relu_forward_avx512(x, n);
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void relu_backward(const float* h, float* g, int64_t n) {
  if (cpu::gemm_avx512_supported()) return cpu::relu_backward_avx512(h, g, n);
  for (int64_t i = 0; i < n; ++i) g[i] = h[i] > 0.0f ? g[i] : 0.0f;
}

void silu_forward(float* x, float* pre, int64_t n) {
  if (cpu::gemm_avx512_supported()) return cpu::silu_forward_avx512(x, pre, n);
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    pre[i] = v;
    x[i] = v / (1.0f + std::exp(-v));
  }
}

void silu_backward(const float* pre, float* g, int64_t n) {
  if (cpu::gemm_avx512_supported()) return cpu::silu_backward_avx512(pre, g, n);
  for (int64_t i = 0; i < n; ++i) {
    const float s = 1.0f / (1.0f + std::exp(-pre[i]));
    g[i] *= s * (1.0f + pre[i] * (1.0f - s));
  }
}

// ------------------------------------------------------------------------------- Adam

void adam_step(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, float* step,
               int64_t n, const AdamConfig& config, double weight_decay) {
  *step += 1.0f;
  // The scalars as torch derives them: bias corrections in double from the float step,
  // then each cast to float for the float32 arithmetic.
  const double t = static_cast<double>(*step);
  const double bias_correction1 = 1.0 - std::pow(config.beta1, t);
  const double bias_correction2 = 1.0 - std::pow(config.beta2, t);
  cpu::AdamScalars s;
  s.step_size = static_cast<float>(config.lr / bias_correction1);
  s.bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  s.one_minus_beta1 = static_cast<float>(1.0 - config.beta1);
  s.beta2 = static_cast<float>(config.beta2);
  s.one_minus_beta2 = static_cast<float>(1.0 - config.beta2);
  s.eps = static_cast<float>(config.eps);
  s.weight_decay = static_cast<float>(weight_decay);
  if (cpu::gemm_avx512_supported()) return cpu::adam_avx512(param, grad, exp_avg, exp_avg_sq, n, s);
  // Portable: the same formula without FMA contraction (torch's own portable build).
  for (int64_t i = 0; i < n; ++i) {
    float g = grad[i];
    if (s.weight_decay != 0.0f) g += param[i] * s.weight_decay;
    const float m = exp_avg[i] + s.one_minus_beta1 * (g - exp_avg[i]);
    const float v = exp_avg_sq[i] * s.beta2 + s.one_minus_beta2 * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    param[i] -= s.step_size * m / (std::sqrt(v) / s.bias_correction2_sqrt + s.eps);
  }
}

}  // namespace mbpo_fast

// Building blocks of the native trainers (SacLearner, EnsembleTrainer): a single-threaded
// float32 GEMM (and its bf16-input variant), the dense layer's forward and backward, the
// activations and Adam. Public C++ API: no Python, no CUDA headers.
//
// Layout conventions (DESIGN §3): every matrix is row-major with an explicit leading
// dimension (row stride, in elements). A linear layer holds W [in, out] and b [out] and
// computes y = x @ W + b on x [rows, in]. An ensemble of E such layers is stored as
// W [E, in, out], b [E, out] (member e's W starts at W + e * in * out).
//
// Threading: every function here runs on the calling thread. The trainers parallelize
// across independent work (ensemble members, the two critics, row blocks) with
// parallel_for; nested parallel_for calls run inline, so these are safe to call anywhere.
#pragma once

#include <cstdint>

namespace mbpo_fast {

// ------------------------------------------------------------------------------------ GEMM
// C[m, n] = beta * C + op(A)[m, k] @ op(B)[k, n]
//   trans_a = false: A is [m, k] with row stride lda;  true: A is stored [k, m] (op(A) = A^T).
//   trans_b = false: B is [k, n] with row stride ldb;  true: B is stored [n, k] (op(B) = B^T).
//   beta == 0: C is overwritten (never read, so it may hold garbage or NaN).
// m, n, k >= 0 (k == 0 gives beta * C). Dispatches at run time to the AVX-512 kernel when the
// CPU has AVX-512F, else the portable one. Results do not depend on which rows/columns of C a
// caller computes in one call beyond float rounding of the k-sum order.
void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// The same product with A and B rounded to bf16 (round to nearest even) and the products
// accumulated in float32 (AVX512_BF16 vdpbf16ps where the CPU has it, else emulated exactly).
// vdpbf16ps treats bf16 denormals (|x| < 1.2e-38 after rounding) as zero; otherwise the two
// kernels differ only in the float32 summation order.
void sgemm_bf16(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
                int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// Which kernel sgemm / sgemm_bf16 run on this CPU: "avx512", "avx512_bf16", "portable", ...
const char* sgemm_kernel_name();
const char* sgemm_bf16_kernel_name();

// Portable reference kernels (always available; the tests compare the fast ones against them).
void sgemm_portable(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
                    int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
void sgemm_bf16_portable(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                         const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                         float* c, int64_t ldc);

// ------------------------------------------------------------------------ dense layer
// Matmul precision of a layer: float32, or bf16 inputs with float32 accumulation.
enum class MatmulPrecision { kFloat32 = 0, kBf16 = 1 };

// Forward: y[rows, out] = x[rows, in] @ w[in, out] + b[out]   (x row stride ldx, y ldy).
void linear_forward(const float* x, int64_t ldx, int64_t rows, const float* w, const float* b,
                    int64_t in, int64_t out, float* y, int64_t ldy,
                    MatmulPrecision precision = MatmulPrecision::kFloat32);

// Backward of linear_forward, given dy[rows, out] (row stride lddy):
//   dw[in, out] (=|+=) x^T @ dy      (accumulate: += instead of =; dw may be null: skipped)
//   db[out]     (=|+=) sum_rows dy   (may be null)
//   dx[rows, in] = dy @ w^T          (row stride lddx; may be null: skipped)
void linear_backward(const float* x, int64_t ldx, int64_t rows, const float* w, int64_t in,
                     int64_t out, const float* dy, int64_t lddy, float* dw, float* db, float* dx,
                     int64_t lddx, bool accumulate,
                     MatmulPrecision precision = MatmulPrecision::kFloat32);

// Activations in place over n contiguous floats, and their backward:
// relu_backward: g[i] = h[i] > 0 ? g[i] : 0   (h: the ReLU OUTPUT, as torch's threshold_backward)
// silu_forward:  stores pre = x (the input, needed by the backward) and x = x * sigmoid(x)
// silu_backward: g[i] *= s * (1 + pre * (1 - s)), s = sigmoid(pre[i])
// (AVX-512 path: a ~1-ulp vector exp whose argument is clamped to [-87.3, 88.3], so e.g.
// silu(-95) is -4e-37 instead of -5e-40.)
void relu_forward(float* x, int64_t n);
void relu_backward(const float* h, float* g, int64_t n);
void silu_forward(float* x, float* pre, int64_t n);
void silu_backward(const float* pre, float* g, int64_t n);

// ------------------------------------------------------------------------------- Adam
// torch.optim.Adam (fused=True, amsgrad=False, maximize=False) on one tensor, in place:
//   step += 1 (a float, torch keeps it as a float32 tensor)
//   g = grad + weight_decay * param                       (L2 as torch applies it: coupled)
//   m = m + (1 - beta1) * (g - m)                          (torch's lerp)
//   v = beta2 * v + (1 - beta2) * g * g
//   param -= (lr / (1 - beta1^step)) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
// The bias corrections are computed in double from the incremented step, as torch does.
// On AVX-512 CPUs the arithmetic is that of torch's AVX-512 fused kernel (FMA-contracted L2
// term, lerp and second moment): bit-identical on whole 16-float vectors, within an ulp on
// the last n % 16 floats; the portable build rounds every operation separately.
struct AdamConfig {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
};
// One Adam-trained tensor, borrowed: the parameter and its torch.optim.Adam state (exp_avg,
// exp_avg_sq: the parameter's size; step: one float, torch's float32 step tensor). The
// trainers (SacLearner, EnsembleTrainer) update these in place.
struct AdamTensor {
  float* param = nullptr;
  float* exp_avg = nullptr;
  float* exp_avg_sq = nullptr;
  float* step = nullptr;
};

void adam_step(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, float* step,
               int64_t n, const AdamConfig& config, double weight_decay = 0.0);

}  // namespace mbpo_fast

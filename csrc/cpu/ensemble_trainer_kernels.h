// Internal: AVX-512 elementwise kernels of the ensemble trainer (ensemble_trainer.cpp),
// defined in ensemble_trainer_avx512.cpp.
#pragma once

#include <cstdint>

namespace mbpo_fast {
namespace cpu {

// True when ensemble_trainer_avx512.cpp was compiled with AVX-512 and this CPU has AVX-512
// F/DQ/BW/VL.
bool ensemble_trainer_avx512_supported();

// The loss of one trainer unit and its gradient (ensemble_trainer.cpp): for rows j < rows,
// outputs k < out, o = model output [rows, 2 * out] (mean, then raw logvar), y [rows, out],
// bounds mx / mn [out], g = gmean:
//   lv = mn + softplus(mx - softplus(mx - raw) - mn)       (torch's softplus, threshold 20)
//   *loss += sum (mu - y)^2 exp(-lv) + lv                    (double accumulation)
//   d_out[j, k] = d/dmu, d_out[j, out + k] = d/draw of g * that sum
//   gmax[k] += d/dmax, gmin[k] += d/dmin                     (double)
// ensemble_loss_scalar: libm, torch's operation order; ensemble_loss_avx512: the same with
// Cephes exp/log polynomials (~1-2 ulp) and softplus as max(x, 0) + log1p(exp(-|x|)).
void ensemble_loss_scalar(const float* o, const float* y, int64_t rows, int64_t out, const float* mx,
                          const float* mn, float gmean, float* d_out, double* loss, double* gmax, double* gmin);
void ensemble_loss_avx512(const float* o, const float* y, int64_t rows, int64_t out, const float* mx,
                          const float* mn, float gmean, float* d_out, double* loss, double* gmax, double* gmin);

// SiLU keeping its sigmoid for the backward (values identical to train_ops.h silu_forward /
// silu_backward on AVX-512, minus the backward's exp): x <- x * s, pre <- x, sig <- s =
// 1 / (1 + exp(-x)); then g *= s * (1 + pre * (1 - s)). n floats each.
void ensemble_silu_forward_avx512(float* x, float* pre, float* sig, int64_t n);
void ensemble_silu_backward_avx512(const float* pre, const float* sig, float* g, int64_t n);

}  // namespace cpu
}  // namespace mbpo_fast

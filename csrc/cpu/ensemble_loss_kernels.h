// Internal: the Gaussian NLL with soft logvar bounds and its gradient for one unit of the
// ensemble trainer (ensemble_trainer.cpp), vectorized in ensemble_loss_avx512.cpp.
#pragma once

#include <cstdint>

namespace mbpo_fast {
namespace cpu {

// The portable loop (ensemble_trainer.cpp), the reference of the AVX-512 version.
void ensemble_loss_scalar(const float* o, const float* y, int64_t rows, int64_t out, const float* mx,
                          const float* mn, float gmean, float* d_out, double* loss, double* gmax, double* gmin);

// True when ensemble_loss_avx512.cpp was compiled with AVX-512 and this CPU has AVX-512F.
bool ensemble_loss_avx512_supported();

// For rows j < rows and outputs k < out, with o = model output [rows, 2 * out] (mean, then
// raw logvar; row stride 2 * out), y [rows, out], bounds mx / mn [out], g = gmean:
//   lv = mn + softplus(mx - softplus(mx - raw) - mn)       (torch's softplus, threshold 20)
//   *loss += sum (mu - y)^2 exp(-lv) + lv                    (double accumulation)
//   d_out[j, k] = d/dmu, d_out[j, out + k] = d/draw of g * that sum
//   gmax[k] += d/dmax, gmin[k] += d/dmin                     (double)
// Same operation order as ensemble_loss_scalar; exp / log1p differ from libm by ~1 ulp.
void ensemble_loss_avx512(const float* o, const float* y, int64_t rows, int64_t out, const float* mx,
                          const float* mn, float gmean, float* d_out, double* loss, double* gmax, double* gmin);

}  // namespace cpu
}  // namespace mbpo_fast

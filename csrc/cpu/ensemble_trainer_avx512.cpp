// AVX-512 elementwise kernels of the ensemble trainer (ensemble_trainer_kernels.h): the loss
// and its gradient (16 outputs of a row per vector) and a SiLU that keeps its sigmoid, so the
// backward needs no exp. Compiled with AVX-512 flags (CMake:
// *_avx512.cpp); only called when ensemble_trainer_avx512_supported(). Nothing here is inline
// or a template shared with non-AVX-512 units (the linker could keep this unit's copy for
// every caller).
#include "cpu/ensemble_trainer_kernels.h"

#if defined(__AVX512F__)
// GCC 12's getexp/getmant intrinsics read an undefined pass-through operand.
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include "cpu/simd_avx512.h"
#endif

namespace mbpo_fast {
namespace cpu {

#if defined(__AVX512F__)

namespace {

// log(x) for finite x > 0, ~1 ulp (Cephes logf: x = m 2^k, m in [sqrt(1/2), sqrt(2))).
__m512 log512(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  __m512 k = _mm512_getexp_ps(x);                                     // floor(log2 x)
  __m512 m = _mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);  // [1, 2)
  const __mmask16 big = _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.41421356237f), _CMP_GE_OQ);
  m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5f));
  k = _mm512_mask_add_ps(k, big, k, one);
  const __m512 f = _mm512_sub_ps(m, one);
  const __m512 z = _mm512_mul_ps(f, f);
  __m512 p = _mm512_set1_ps(7.0376836292E-2f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-1.1514610310E-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.1676998740E-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-1.2420140846E-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.4249322787E-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-1.6668057665E-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.0000714765E-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-2.4999993993E-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(3.3333331174E-1f));
  __m512 r = _mm512_mul_ps(_mm512_mul_ps(p, f), z);
  r = _mm512_fmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
  r = _mm512_fnmadd_ps(_mm512_set1_ps(0.5f), z, r);
  r = _mm512_add_ps(f, r);
  return _mm512_fmadd_ps(k, _mm512_set1_ps(0.693359375f), r);
}

// log1p(z) for z >= 0: log(u) * z / (u - 1) with u = 1 + z (exact for the rounding of u);
// z itself where u rounds to 1.
__m512 log1p512(__m512 z) {
  const __m512 u = _mm512_add_ps(_mm512_set1_ps(1.0f), z);
  const __m512 d = _mm512_sub_ps(u, _mm512_set1_ps(1.0f));
  const __mmask16 tiny = _mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_EQ_OQ);
  const __m512 safe_d = _mm512_mask_blend_ps(tiny, d, _mm512_set1_ps(1.0f));
  const __m512 r = _mm512_mul_ps(log512(u), _mm512_div_ps(z, safe_d));
  return _mm512_mask_blend_ps(tiny, r, z);
}

// torch's softplus (threshold 20), written as max(x, 0) + log1p(exp(-|x|)): the value of
// log1p(exp(x)) with the log's rounding on the small correction, not on the result (1 ulp of
// softplus(x ~ 10) would be ~1e-6 in lv and in exp(-lv)). Also returns s = sigmoid(x) =
// z / (z + 1) for the backward.
__m512 softplus512(__m512 x, __m512& s, __mmask16& linear) {
  const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
  linear = _mm512_cmp_ps_mask(x, _mm512_set1_ps(20.0f), _CMP_GT_OQ);
  const __mmask16 pos = _mm512_cmp_ps_mask(x, zero, _CMP_GT_OQ);
  const __m512 w = exp512(_mm512_sub_ps(zero, _mm512_abs_ps(x)));  // exp(-|x|) in (0, 1]
  const __m512 inv1w = _mm512_div_ps(one, _mm512_add_ps(one, w));
  s = _mm512_mask_blend_ps(pos, _mm512_mul_ps(w, inv1w), inv1w);
  const __m512 sp = _mm512_add_ps(_mm512_max_ps(x, zero), log1p512(w));
  return _mm512_mask_blend_ps(linear, sp, x);
}

// grad * sigmoid(x), or grad on the linear branch.
__m512 softplus_backward512(__m512 grad, __m512 s, __mmask16 linear) {
  return _mm512_mask_blend_ps(linear, _mm512_mul_ps(grad, s), grad);
}

// acc[0..16) += double(v) on the lanes of `mask` (two 8-lane halves).
void add_pd(double* acc, __m512 v, __mmask16 mask) {
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  const __mmask8 mlo = static_cast<__mmask8>(mask & 0xFF), mhi = static_cast<__mmask8>(mask >> 8);
  _mm512_mask_storeu_pd(acc, mlo, _mm512_add_pd(_mm512_maskz_loadu_pd(mlo, acc), lo));
  _mm512_mask_storeu_pd(acc + 8, mhi, _mm512_add_pd(_mm512_maskz_loadu_pd(mhi, acc + 8), hi));
}

}  // namespace

// The unit is compiled with AVX-512 F/DQ/BW/VL: the compiler may use any of them.
bool ensemble_trainer_avx512_supported() {
  static const bool supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                                __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  return supported;
}

void ensemble_silu_forward_avx512(float* x, float* pre, float* sig, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = static_cast<__mmask16>(n - i >= 16 ? 0xFFFFu : (1u << (n - i)) - 1u);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    const __m512 d = _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), v)));
    _mm512_mask_storeu_ps(pre + i, m, v);
    _mm512_mask_storeu_ps(x + i, m, _mm512_div_ps(v, d));
    _mm512_mask_storeu_ps(sig + i, m, _mm512_div_ps(one, d));
  }
}

void ensemble_silu_backward_avx512(const float* pre, const float* sig, float* g, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = static_cast<__mmask16>(n - i >= 16 ? 0xFFFFu : (1u << (n - i)) - 1u);
    const __m512 x = _mm512_maskz_loadu_ps(m, pre + i);
    const __m512 s = _mm512_maskz_loadu_ps(m, sig + i);
    const __m512 d = _mm512_mul_ps(s, _mm512_fmadd_ps(x, _mm512_sub_ps(one, s), one));
    _mm512_mask_storeu_ps(g + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, g + i), d));
  }
}

void ensemble_loss_avx512(const float* o, const float* y, int64_t rows, int64_t out, const float* mx,
                          const float* mn, float gmean, float* d_out, double* loss, double* gmax, double* gmin) {
  const int64_t o2 = 2 * out;
  const __m512 g = _mm512_set1_ps(gmean), two = _mm512_set1_ps(2.0f), zero = _mm512_setzero_ps();
  double lacc[16] = {0.0};
  for (int64_t k0 = 0; k0 < out; k0 += 16) {
    const int64_t n = out - k0 < 16 ? out - k0 : 16;
    const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
    const __m512 vmx = _mm512_maskz_loadu_ps(m, mx + k0), vmn = _mm512_maskz_loadu_ps(m, mn + k0);
    double gx[16] = {0.0}, gn[16] = {0.0};
    for (int64_t j = 0; j < rows; ++j) {
      const float* oj = o + j * o2;
      const __m512 mu = _mm512_maskz_loadu_ps(m, oj + k0), raw = _mm512_maskz_loadu_ps(m, oj + out + k0);
      const __m512 yy = _mm512_maskz_loadu_ps(m, y + j * out + k0);
      __m512 s1, s2;
      __mmask16 lin1, lin2;
      const __m512 t1 = _mm512_sub_ps(vmx, raw);
      const __m512 lv1 = _mm512_sub_ps(vmx, softplus512(t1, s1, lin1));
      const __m512 t2 = _mm512_sub_ps(lv1, vmn);
      const __m512 lv = _mm512_add_ps(vmn, softplus512(t2, s2, lin2));
      const __m512 inv = exp512(_mm512_sub_ps(zero, lv));
      const __m512 diff = _mm512_sub_ps(mu, yy);
      const __m512 sq = _mm512_mul_ps(diff, diff);
      add_pd(lacc, _mm512_add_ps(_mm512_mul_ps(sq, inv), lv), m);
      const __m512 g_sq = _mm512_mul_ps(g, inv), g_inv = _mm512_mul_ps(g, sq);
      const __m512 dmu = _mm512_mul_ps(g_sq, _mm512_mul_ps(two, diff));
      const __m512 g_lv = _mm512_sub_ps(g, _mm512_mul_ps(g_inv, inv));
      const __m512 g_t2 = softplus_backward512(g_lv, s2, lin2);
      const __m512 g_t1 = softplus_backward512(_mm512_sub_ps(zero, g_t2), s1, lin1);
      // d/dmin = g_lv - g_t2, d/dmax = g_t2 + g_t1, each summed in double as the scalar loop
      add_pd(gn, g_lv, m);
      add_pd(gn, _mm512_sub_ps(zero, g_t2), m);
      add_pd(gx, g_t2, m);
      add_pd(gx, g_t1, m);
      _mm512_mask_storeu_ps(d_out + j * o2 + k0, m, dmu);
      _mm512_mask_storeu_ps(d_out + j * o2 + out + k0, m, _mm512_sub_ps(zero, g_t1));
    }
    for (int64_t k = 0; k < n; ++k) {
      gmax[k0 + k] += gx[k];
      gmin[k0 + k] += gn[k];
    }
  }
  double total = 0.0;
  for (int k = 0; k < 16; ++k) total += lacc[k];
  *loss += total;
}

#else  // built without AVX-512 flags: never selected

bool ensemble_trainer_avx512_supported() { return false; }
void ensemble_loss_avx512(const float*, const float*, int64_t, int64_t, const float*, const float*, float, float*,
                          double*, double*, double*) {}
void ensemble_silu_forward_avx512(float*, float*, float*, int64_t) {}
void ensemble_silu_backward_avx512(const float*, const float*, float*, int64_t) {}

#endif

}  // namespace cpu
}  // namespace mbpo_fast

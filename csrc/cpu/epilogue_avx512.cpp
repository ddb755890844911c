// AVX-512 versions of the ensemble epilogues (kernels/ensemble_epilogue.h holds the scalar
// element bodies that the portable path and CUDA use). At Hopper sizes the scalar
// epilogue (Box-Muller in double, soft clamp with four transcendentals per output) costs
// about as much as the three 200x200 layers, so it is vectorized here:
//   * Box-Muller pairs of a row are computed 8 at a time in double with vector log and
//     sincos accurate to a few double ulps, then rounded to float once, exactly like
//     rng.h's box_muller: the float results are identical except in (vanishingly rare)
//     double-rounding ties, i.e. equal to float rounding.
//   * the soft clamp and exp(lv / 2) run in float over 16 outputs at a time.
#include "cpu/ensemble_kernels.h"

#if defined(__AVX512F__)
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "cpu/simd_avx512.h"
#include "kernels/ensemble_epilogue.h"
#include "mbpo_fast/rng.h"

namespace mbpo_fast {
namespace cpu {

namespace {

// log(x) for x in (0, 1] (normal doubles), a few ulps: x = 2^e * m, m in [sqrt(1/2), sqrt(2)),
// log(m) = 2 atanh(s) with s = (m - 1) / (m + 1), |s| < 0.1716, series to s^23.
inline __m512d log_pd(__m512d x) {
  __m512d e = _mm512_getexp_pd(x);
  __m512d m = _mm512_getmant_pd(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
  const __mmask8 big = _mm512_cmp_pd_mask(m, _mm512_set1_pd(1.4142135623730951), _CMP_GT_OQ);
  m = _mm512_mask_mul_pd(m, big, m, _mm512_set1_pd(0.5));
  e = _mm512_mask_add_pd(e, big, e, _mm512_set1_pd(1.0));
  const __m512d one = _mm512_set1_pd(1.0);
  const __m512d s = _mm512_div_pd(_mm512_sub_pd(m, one), _mm512_add_pd(m, one));
  const __m512d z = _mm512_mul_pd(s, s);
  __m512d p = _mm512_set1_pd(1.0 / 23.0);
  p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(1.0 / 21.0));
  p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(1.0 / 19.0));
  p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(1.0 / 17.0));
  p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(1.0 / 15.0));
  p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(1.0 / 13.0));
  p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(1.0 / 11.0));
  p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(1.0 / 9.0));
  p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(1.0 / 7.0));
  p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(1.0 / 5.0));
  p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(1.0 / 3.0));
  // log(m) = 2s + 2s * z * p
  const __m512d two_s = _mm512_add_pd(s, s);
  const __m512d log_m = _mm512_fmadd_pd(_mm512_mul_pd(two_s, z), p, two_s);
  const __m512d ln2_hi = _mm512_set1_pd(6.93147180369123816490e-01);
  const __m512d ln2_lo = _mm512_set1_pd(1.90821492927058770002e-10);
  return _mm512_fmadd_pd(e, ln2_hi, _mm512_fmadd_pd(e, ln2_lo, log_m));
}

// sin and cos of theta in [0, 2*pi), a few ulps (fdlibm kernels after a Cody-Waite reduction).
inline void sincos_pd(__m512d theta, __m512d& sin_out, __m512d& cos_out) {
  const __m512d q = _mm512_roundscale_pd(_mm512_mul_pd(theta, _mm512_set1_pd(0.63661977236758134308)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512d x = _mm512_fnmadd_pd(q, _mm512_set1_pd(1.57079632673412561417e+00), theta);
  x = _mm512_fnmadd_pd(q, _mm512_set1_pd(6.07710050650619224932e-11), x);
  x = _mm512_fnmadd_pd(q, _mm512_set1_pd(2.02226624879595063154e-21), x);
  const __m512d z = _mm512_mul_pd(x, x);
  __m512d ps = _mm512_set1_pd(1.58969099521155010221e-10);
  ps = _mm512_fmadd_pd(ps, z, _mm512_set1_pd(-2.50507602534068634195e-08));
  ps = _mm512_fmadd_pd(ps, z, _mm512_set1_pd(2.75573137070700676789e-06));
  ps = _mm512_fmadd_pd(ps, z, _mm512_set1_pd(-1.98412698298579493134e-04));
  ps = _mm512_fmadd_pd(ps, z, _mm512_set1_pd(8.33333333332248946124e-03));
  ps = _mm512_fmadd_pd(ps, z, _mm512_set1_pd(-1.66666666666666324348e-01));
  const __m512d s = _mm512_fmadd_pd(_mm512_mul_pd(z, x), ps, x);
  __m512d pc = _mm512_set1_pd(-1.13596475577881948265e-11);
  pc = _mm512_fmadd_pd(pc, z, _mm512_set1_pd(2.08757232129817482790e-09));
  pc = _mm512_fmadd_pd(pc, z, _mm512_set1_pd(-2.75573143513906633035e-07));
  pc = _mm512_fmadd_pd(pc, z, _mm512_set1_pd(2.48015872894767294178e-05));
  pc = _mm512_fmadd_pd(pc, z, _mm512_set1_pd(-1.38888888888741095749e-03));
  pc = _mm512_fmadd_pd(pc, z, _mm512_set1_pd(4.16666666666666019037e-02));
  const __m512d r = _mm512_mul_pd(z, pc);
  const __m512d one = _mm512_set1_pd(1.0);
  const __m512d hz = _mm512_mul_pd(_mm512_set1_pd(0.5), z);
  const __m512d w = _mm512_sub_pd(one, hz);
  const __m512d c = _mm512_add_pd(w, _mm512_fmadd_pd(z, r, _mm512_sub_pd(_mm512_sub_pd(one, w), hz)));
  // quadrant j = q mod 4: (sin, cos) = (s, c), (c, -s), (-s, -c), (-c, s)
  const __m512i j = _mm512_and_si512(_mm512_cvtpd_epi64(q), _mm512_set1_epi64(3));
  const __mmask8 odd = _mm512_test_epi64_mask(j, _mm512_set1_epi64(1));
  const __mmask8 sin_neg = _mm512_test_epi64_mask(j, _mm512_set1_epi64(2));
  const __mmask8 cos_neg = _mm512_test_epi64_mask(_mm512_add_epi64(j, _mm512_set1_epi64(1)), _mm512_set1_epi64(2));
  const __m512d sv = _mm512_mask_blend_pd(odd, s, c);
  const __m512d cv = _mm512_mask_blend_pd(odd, c, s);
  const __m512d neg = _mm512_set1_pd(-0.0);
  sin_out = _mm512_mask_xor_pd(sv, sin_neg, sv, neg);
  cos_out = _mm512_mask_xor_pd(cv, cos_neg, cv, neg);
}

// The out_dim normals of `row` (random_normal(seed, kStreamModelNoise, row * out_dim + j)).
// Box-Muller pairs (lanes 0-1 and 2-3 of a Philox block) are computed 8 at a time.
void row_noise_avx512(uint64_t seed, uint64_t row, int64_t out_dim, float* eps) {
  const uint64_t base = row * static_cast<uint64_t>(out_dim);
  const uint64_t first_pair = base >> 1, last_pair = (base + out_dim - 1) >> 1;
  alignas(64) uint64_t u1w[8], u2w[8];
  alignas(32) float cos_f[8], sin_f[8];
  for (uint64_t p0 = first_pair; p0 <= last_pair; p0 += 8) {
    const int n = static_cast<int>(std::min<uint64_t>(8, last_pair - p0 + 1));
    Philox4x32 blk{};
    uint64_t block = ~0ull;
    for (int l = 0; l < n; ++l) {
      const uint64_t pair = p0 + l;
      if ((pair >> 1) != block) {
        block = pair >> 1;
        blk = philox_block(seed, kStreamModelNoise, block);
      }
      const uint32_t lane = static_cast<uint32_t>((pair & 1u) * 2u);
      u1w[l] = blk.v[lane] >> 8;
      u2w[l] = blk.v[lane + 1] >> 8;
    }
    const __mmask8 mask = static_cast<__mmask8>((1u << n) - 1u);
    const __m512d inv24 = _mm512_set1_pd(1.0 / 16777216.0);
    const __m512d u1 = _mm512_mul_pd(
        _mm512_add_pd(_mm512_cvtepu64_pd(_mm512_maskz_load_epi64(mask, u1w)), _mm512_set1_pd(1.0)), inv24);
    const __m512d u2 = _mm512_mul_pd(_mm512_cvtepu64_pd(_mm512_maskz_load_epi64(mask, u2w)), inv24);
    const __m512d r = _mm512_sqrt_pd(_mm512_mul_pd(_mm512_set1_pd(-2.0), log_pd(u1)));
    __m512d sn, cs;
    sincos_pd(_mm512_mul_pd(_mm512_set1_pd(6.283185307179586), u2), sn, cs);
    _mm256_store_ps(cos_f, _mm512_cvtpd_ps(_mm512_mul_pd(r, cs)));
    _mm256_store_ps(sin_f, _mm512_cvtpd_ps(_mm512_mul_pd(r, sn)));
    for (int l = 0; l < n; ++l) {
      const uint64_t index0 = 2 * (p0 + l);  // the cosine branch; index0 + 1 is the sine branch
      if (index0 >= base && index0 < base + out_dim) eps[index0 - base] = cos_f[l];
      if (index0 + 1 >= base && index0 + 1 < base + out_dim) eps[index0 + 1 - base] = sin_f[l];
    }
  }
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)); log1p(t) = 2 atanh(t / (2 + t)) for t in (0, 1].
inline __m512 softplus512(__m512 x) {
  const __m512 t = exp512(_mm512_min_ps(x, _mm512_sub_ps(_mm512_setzero_ps(), x)));
  const __m512 s = _mm512_div_ps(t, _mm512_add_ps(_mm512_set1_ps(2.0f), t));
  const __m512 z = _mm512_mul_ps(s, s);
  __m512 p = _mm512_set1_ps(1.0f / 13.0f);
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.0f / 11.0f));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.0f / 9.0f));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.0f / 7.0f));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.0f / 5.0f));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.0f / 3.0f));
  const __m512 two_s = _mm512_add_ps(s, s);
  return _mm512_add_ps(_mm512_max_ps(x, _mm512_setzero_ps()), _mm512_fmadd_ps(_mm512_mul_ps(two_s, z), p, two_s));
}

inline __m512 soft_clamp512(__m512 raw, __m512 mx, __m512 mn) {
  const __m512 lv = _mm512_sub_ps(mx, softplus512(_mm512_sub_ps(mx, raw)));
  return _mm512_add_ps(mn, softplus512(_mm512_sub_ps(lv, mn)));
}

}  // namespace

void step_epilogue_avx512(const float* head, int64_t ld, int64_t rows, const int64_t* idx, const float* obs,
                          int64_t obs_dim, const float* max_logvar, const float* min_logvar, uint64_t seed,
                          bool deterministic, float* next_obs, float* reward, float* work) {
  const int64_t out_dim = obs_dim + 1;
  float* eps = work;
  float* value = work + out_dim;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row = idx[r];
    const float* h = head + r * ld;
    if (!deterministic) row_noise_avx512(seed, static_cast<uint64_t>(row), out_dim, eps);
    for (int64_t j0 = 0; j0 < out_dim; j0 += 16) {
      const int64_t n = std::min<int64_t>(16, out_dim - j0);
      const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
      __m512 v = _mm512_maskz_loadu_ps(m, h + j0);
      if (!deterministic) {
        const __m512 lv = soft_clamp512(_mm512_maskz_loadu_ps(m, h + out_dim + j0),
                                        _mm512_maskz_loadu_ps(m, max_logvar + j0),
                                        _mm512_maskz_loadu_ps(m, min_logvar + j0));
        const __m512 sd = exp512(_mm512_mul_ps(_mm512_set1_ps(0.5f), lv));
        v = _mm512_add_ps(v, _mm512_mul_ps(sd, _mm512_maskz_loadu_ps(m, eps + j0)));
      }
      _mm512_mask_storeu_ps(value + j0, m, v);
    }
    const float* o = obs + row * obs_dim;
    float* no = next_obs + row * obs_dim;
    for (int64_t j = 0; j < obs_dim; ++j) no[j] = o[j] + value[j];
    reward[row] = value[obs_dim];
  }
}

void predict_epilogue_avx512(const float* head, int64_t ld, int64_t rows, int64_t out_dim, const float* max_logvar,
                             const float* min_logvar, float* mean, float* var) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* h = head + r * ld;
    for (int64_t j0 = 0; j0 < out_dim; j0 += 16) {
      const int64_t n = std::min<int64_t>(16, out_dim - j0);
      const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
      if (mean) _mm512_mask_storeu_ps(mean + r * out_dim + j0, m, _mm512_maskz_loadu_ps(m, h + j0));
      if (var) {
        const __m512 lv = soft_clamp512(_mm512_maskz_loadu_ps(m, h + out_dim + j0),
                                        _mm512_maskz_loadu_ps(m, max_logvar + j0),
                                        _mm512_maskz_loadu_ps(m, min_logvar + j0));
        _mm512_mask_storeu_ps(var + r * out_dim + j0, m, exp512(lv));
      }
    }
  }
}

void model_noise_avx512(uint64_t seed, uint64_t row, int64_t out_dim, float* eps) {
  row_noise_avx512(seed, row, out_dim, eps);
}

}  // namespace cpu
}  // namespace mbpo_fast

#else  // no AVX-512: never dispatched to; defined so the library links.

#include "kernels/ensemble_epilogue.h"

namespace mbpo_fast {
namespace cpu {
void step_epilogue_avx512(const float* head, int64_t ld, int64_t rows, const int64_t* idx, const float* obs,
                          int64_t obs_dim, const float* max_logvar, const float* min_logvar, uint64_t seed,
                          bool deterministic, float* next_obs, float* reward, float* work) {
  step_epilogue_portable(head, ld, rows, idx, obs, obs_dim, max_logvar, min_logvar, seed, deterministic, next_obs,
                         reward, work);
}
void predict_epilogue_avx512(const float* head, int64_t ld, int64_t rows, int64_t out_dim, const float* max_logvar,
                             const float* min_logvar, float* mean, float* var) {
  predict_epilogue_portable(head, ld, rows, out_dim, max_logvar, min_logvar, mean, var);
}
void model_noise_avx512(uint64_t seed, uint64_t row, int64_t out_dim, float* eps) {
  kernels::row_noise(seed, row, out_dim, eps);
}
}  // namespace cpu
}  // namespace mbpo_fast

#endif

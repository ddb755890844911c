// AVX-512 elementwise kernels of the ensemble trainer (ensemble_trainer_kernels.h): a SiLU
// that keeps its sigmoid, so the backward needs no exp. Compiled with AVX-512 flags (CMake:
// *_avx512.cpp); only called when ensemble_trainer_avx512_supported(). Nothing here is inline
// or a template shared with non-AVX-512 units (the linker could keep this unit's copy for
// every caller).
#include "cpu/ensemble_trainer_kernels.h"

#if defined(__AVX512F__)
#include <immintrin.h>

#include "cpu/simd_avx512.h"
#endif

namespace mbpo_fast {
namespace cpu {

#if defined(__AVX512F__)

bool ensemble_trainer_avx512_supported() { return __builtin_cpu_supports("avx512f"); }

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

#else  // built without AVX-512 flags: never selected

bool ensemble_trainer_avx512_supported() { return false; }
void ensemble_silu_forward_avx512(float*, float*, float*, int64_t) {}
void ensemble_silu_backward_avx512(const float*, const float*, float*, int64_t) {}

#endif

}  // namespace cpu
}  // namespace mbpo_fast

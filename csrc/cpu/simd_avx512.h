// Internal: vector math shared by the AVX-512 translation units (compiled with AVX-512 flags).
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace mbpo_fast {
namespace cpu {

// exp(x) in float, ~1 ulp (Cephes polynomial; 2^n applied with scalef). Inputs are clamped
// to [-87.3, 88.3], so the result is finite and > 0.
inline __m512 exp512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

inline __m512 silu512(__m512 a) {
  const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), a));
  return _mm512_div_ps(a, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

// The first `lanes` lanes (none for lanes <= 0, all 16 for lanes >= 16).
inline __mmask16 lane_mask(int64_t lanes) {
  return lanes >= 16 ? static_cast<__mmask16>(0xFFFF)
                     : static_cast<__mmask16>(lanes <= 0 ? 0u : (1u << lanes) - 1u);
}

// 64-byte aligned view of a (thread-local) buffer of at least `count` elements of 4 bytes.
template <typename T>
T* aligned_scratch(std::vector<T>& buf, int64_t count) {
  static_assert(sizeof(T) == 4, "16 elements of padding make 64 bytes");
  const size_t need = static_cast<size_t>(count) + 16;
  if (buf.size() < need) buf.resize(need);
  const auto addr = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<T*>((addr + 63) & ~static_cast<uintptr_t>(63));
}

// In-register transpose of a 16 x 16 block of 32-bit values: t[i] holds row i on entry, column i on exit.
inline void transpose16(__m512 t[16]) {
  __m512 u[16];
  for (int i = 0; i < 8; ++i) {  // pairs of rows interleaved within 128-bit lanes
    u[2 * i] = _mm512_unpacklo_ps(t[2 * i], t[2 * i + 1]);
    u[2 * i + 1] = _mm512_unpackhi_ps(t[2 * i], t[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // t[4i + j], lane L: rows 4i..4i+3 at column 4L + j
    const __m512d a = _mm512_castps_pd(u[4 * i]), b = _mm512_castps_pd(u[4 * i + 2]);
    const __m512d c = _mm512_castps_pd(u[4 * i + 1]), d = _mm512_castps_pd(u[4 * i + 3]);
    t[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    t[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    t[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
    t[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
  }
  for (int j = 0; j < 4; ++j) {  // gather 128-bit lanes across the row groups
    u[j] = _mm512_shuffle_f32x4(t[j], t[4 + j], 0x88);
    u[4 + j] = _mm512_shuffle_f32x4(t[j], t[4 + j], 0xDD);
    u[8 + j] = _mm512_shuffle_f32x4(t[8 + j], t[12 + j], 0x88);
    u[12 + j] = _mm512_shuffle_f32x4(t[8 + j], t[12 + j], 0xDD);
  }
  for (int j = 0; j < 4; ++j) {
    t[j] = _mm512_shuffle_f32x4(u[j], u[8 + j], 0x88);
    t[8 + j] = _mm512_shuffle_f32x4(u[j], u[8 + j], 0xDD);
    t[4 + j] = _mm512_shuffle_f32x4(u[4 + j], u[12 + j], 0x88);
    t[12 + j] = _mm512_shuffle_f32x4(u[4 + j], u[12 + j], 0xDD);
  }
}

}  // namespace cpu
}  // namespace mbpo_fast

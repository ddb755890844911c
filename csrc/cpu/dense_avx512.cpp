// AVX-512 dense-layer kernel. Compiled with AVX-512 flags (CMakeLists.txt) and only called
// after a runtime check (dense_avx512_supported), so the library still runs on older CPUs.
//
// Register blocking: 6 rows x 64 columns = 24 zmm accumulators. Per k the kernel loads
// 4 vectors of W's row k (contiguous in the [in, out] layout, so no packing is needed) and
// broadcasts 6 inputs: 24 FMAs per 10 loads. Column tails use masked loads/stores, which
// never touch memory past the row. SiLU uses a vectorized exp (Cephes polynomial, ~1 ulp).
#include "dense_kernels.h"

#if defined(__AVX512F__)
#include <immintrin.h>

#include <algorithm>

namespace mbpo_fast {
namespace cpu {

namespace {

constexpr int kMr = 6;
constexpr int kNv = 4;

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

// MR rows x NV vectors of output; the last vector uses `tail` (all ones when full).
template <int MR, int NV>
void block(const float* x, int64_t ldx, const float* w, int64_t n, const float* b, int64_t k_dim,
           float* y, int64_t ldy, __mmask16 tail, bool silu) {
  __m512 acc[MR][NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    const __m512 bv = v == NV - 1 ? _mm512_maskz_loadu_ps(tail, b + 16 * v) : _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) acc[r][v] = bv;
  }
  for (int64_t k = 0; k < k_dim; ++k) {
    const float* wk = w + k * n;
    __m512 wv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      wv[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(tail, wk + 16 * v) : _mm512_loadu_ps(wk + 16 * v);
    }
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m512 xv = _mm512_set1_ps(x[r * ldx + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(xv, wv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __m512 out = silu ? silu512(acc[r][v]) : acc[r][v];
      if (v == NV - 1) {
        _mm512_mask_storeu_ps(y + r * ldy + 16 * v, tail, out);
      } else {
        _mm512_storeu_ps(y + r * ldy + 16 * v, out);
      }
    }
  }
}

using BlockFn = void (*)(const float*, int64_t, const float*, int64_t, const float*, int64_t, float*,
                         int64_t, __mmask16, bool);

template <int MR>
constexpr BlockFn pick(int nv) {
  return nv == 1 ? &block<MR, 1> : nv == 2 ? &block<MR, 2> : nv == 3 ? &block<MR, 3> : &block<MR, 4>;
}

// kBlocks[mr - 1][nv - 1]
const BlockFn kBlocks[kMr][kNv] = {
    {pick<1>(1), pick<1>(2), pick<1>(3), pick<1>(4)}, {pick<2>(1), pick<2>(2), pick<2>(3), pick<2>(4)},
    {pick<3>(1), pick<3>(2), pick<3>(3), pick<3>(4)}, {pick<4>(1), pick<4>(2), pick<4>(3), pick<4>(4)},
    {pick<5>(1), pick<5>(2), pick<5>(3), pick<5>(4)}, {pick<6>(1), pick<6>(2), pick<6>(3), pick<6>(4)},
};

}  // namespace

void dense_avx512(const float* x, int64_t ldx, int64_t rows, const float* w, const float* b,
                  int64_t k_dim, int64_t n, float* y, int64_t ldy, bool silu) {
  // Column panels outer: a panel of W (k_dim x 64 floats) stays in L1/L2 while every row
  // block of the tile streams past it.
  for (int64_t j0 = 0; j0 < n; j0 += 16 * kNv) {
    const int64_t cols = std::min<int64_t>(16 * kNv, n - j0);
    const int nv = static_cast<int>((cols + 15) / 16);
    const int last = static_cast<int>(cols - 16 * (nv - 1));
    const __mmask16 tail = static_cast<__mmask16>((1u << last) - 1u);
    for (int64_t r0 = 0; r0 < rows; r0 += kMr) {
      const int mr = static_cast<int>(std::min<int64_t>(kMr, rows - r0));
      kBlocks[mr - 1][nv - 1](x + r0 * ldx, ldx, w + j0, n, b + j0, k_dim, y + r0 * ldy + j0, ldy, tail,
                              silu);
    }
  }
}

bool dense_avx512_supported() {
  static const bool supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  return supported;
}

}  // namespace cpu
}  // namespace mbpo_fast

#else  // compiled without AVX-512 support (non-x86 or MBPO_FAST_SIMD=PORTABLE)

namespace mbpo_fast {
namespace cpu {
void dense_avx512(const float* x, int64_t ldx, int64_t rows, const float* w, const float* b,
                  int64_t k_dim, int64_t n, float* y, int64_t ldy, bool silu) {
  dense_portable(x, ldx, rows, w, b, k_dim, n, y, ldy, silu);
}
bool dense_avx512_supported() { return false; }
}  // namespace cpu
}  // namespace mbpo_fast

#endif

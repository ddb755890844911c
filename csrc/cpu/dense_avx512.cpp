// AVX-512 dense-layer kernel. Compiled with AVX-512 flags (CMakeLists.txt) and only called
// after a runtime check (dense_avx512_supported), so the library still runs on older CPUs.
//
// Register blocking: 6 rows x 64 columns = 24 zmm accumulators. Per k the kernel loads
// 4 vectors of W's row k (contiguous in the [in, out] layout, so no packing is needed) and
// broadcasts 6 inputs: 24 FMAs per 10 loads. Column tails use masked loads/stores, which
// never touch memory past the row. SiLU uses a vectorized exp (Cephes polynomial, ~1 ulp).
#include "cpu/ensemble_kernels.h"

#if defined(__AVX512F__)
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <utility>

#include "cpu/simd_avx512.h"

namespace mbpo_fast {
namespace cpu {

namespace {

constexpr int kMr = 6;
constexpr int kNv = 4;

// MR rows x NV vectors of output; the last vector uses `tail` (all ones when full).
template <int MR, int NV>
void block(const float* x, int64_t ldx, const float* w, int64_t n, const float* b, int64_t k_dim,
           float* y, int64_t ldy, __mmask16 tail, bool silu) {
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) {
    const __m512 bv = v == NV - 1 ? _mm512_maskz_loadu_ps(tail, b + 16 * v) : _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) acc[r][v] = bv;
  }
  for (int64_t k = 0; k < k_dim; ++k) {
    const float* wk = w + k * n;
    __m512 wv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      wv[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(tail, wk + 16 * v) : _mm512_loadu_ps(wk + 16 * v);
    }
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m512 xv = _mm512_set1_ps(x[r * ldx + k]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(xv, wv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 8
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

template <int MR, int... NV>
constexpr std::array<BlockFn, sizeof...(NV)> blocks_of(std::integer_sequence<int, NV...>) {
  return {&block<MR, NV + 1>...};
}

// Tall tiles: kBlocks[mr - 1][nv - 1], 6 rows x 4 vectors.
const std::array<BlockFn, kNv> kBlocks[kMr] = {
    blocks_of<1>(std::make_integer_sequence<int, kNv>{}), blocks_of<2>(std::make_integer_sequence<int, kNv>{}),
    blocks_of<3>(std::make_integer_sequence<int, kNv>{}), blocks_of<4>(std::make_integer_sequence<int, kNv>{}),
    blocks_of<5>(std::make_integer_sequence<int, kNv>{}), blocks_of<6>(std::make_integer_sequence<int, kNv>{}),
};

// Short tiles (1-2 rows, e.g. a single-row step): with only 4 vectors per row the FMA
// chains are latency-bound, so these blocks keep up to 8 vectors (128 columns) in flight.
// Same accumulation order per output as the tall blocks: results are identical.
constexpr int kWideRows = 2;
constexpr int kWideNv = 8;
const std::array<BlockFn, kWideNv> kWideBlocks[kWideRows] = {
    blocks_of<1>(std::make_integer_sequence<int, kWideNv>{}),
    blocks_of<2>(std::make_integer_sequence<int, kWideNv>{}),
};

}  // namespace

void dense_avx512(const float* x, int64_t ldx, int64_t rows, const float* w, const float* b,
                  int64_t k_dim, int64_t n, float* y, int64_t ldy, bool silu) {
  const bool wide = rows <= kWideRows;
  const int max_nv = wide ? kWideNv : kNv;
  const int64_t row_step = wide ? kWideRows : kMr;
  // Column panels outer: a panel of W (k_dim x 64 floats) stays in L1/L2 while every row
  // block of the tile streams past it.
  for (int64_t j0 = 0; j0 < n; j0 += 16 * max_nv) {
    const int64_t cols = std::min<int64_t>(16 * max_nv, n - j0);
    const int nv = static_cast<int>((cols + 15) / 16);
    const int last = static_cast<int>(cols - 16 * (nv - 1));
    const __mmask16 tail = static_cast<__mmask16>((1u << last) - 1u);
    for (int64_t r0 = 0; r0 < rows; r0 += row_step) {
      const int mr = static_cast<int>(std::min<int64_t>(row_step, rows - r0));
      const BlockFn fn = wide ? kWideBlocks[mr - 1][nv - 1] : kBlocks[mr - 1][nv - 1];
      fn(x + r0 * ldx, ldx, w + j0, n, b + j0, k_dim, y + r0 * ldy + j0, ldy, tail, silu);
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

// Opt-in bf16-weight dense kernel (AVX512_BF16 vdpbf16ps). Each instruction multiplies
// 16 pairs of bf16 numbers and adds both products to 16 float32 accumulators: twice the
// multiply-adds of a float32 FMA per instruction, and half the weight bytes to stream.
//
// Weights are pre-packed (ensemble_pack_bf16) as [E, ceil(in/2), out, 2]: the pair
// (W[2p, j], W[2p+1, j]) is one 32-bit word, so a zmm load gives 16 columns of one k pair.
// The inputs of each row are rounded to bf16 once per layer; accumulation stays float32.
// Same register blocking as the float32 kernel (6 rows x 64 columns, 1-2-row tiles wide).
#include "cpu/ensemble_kernels.h"

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <utility>
#include <vector>

#include "cpu/simd_avx512.h"

namespace mbpo_fast {
namespace cpu {

namespace {

constexpr int kMr = 6;
constexpr int kNv = 4;

template <int MR, int NV>
void block_bf16(const uint32_t* xp, int64_t ldxp, const uint32_t* wp, int64_t n, const float* b, int64_t k_pairs,
                float* y, int64_t ldy, __mmask16 tail, bool silu) {
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) {
    const __m512 bv = v == NV - 1 ? _mm512_maskz_loadu_ps(tail, b + 16 * v) : _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) acc[r][v] = bv;
  }
  for (int64_t p = 0; p < k_pairs; ++p) {
    const uint32_t* wk = wp + p * n;
    __m512bh wv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const __m512i raw = v == NV - 1 ? _mm512_maskz_loadu_epi32(tail, wk + 16 * v)
                                      : _mm512_loadu_si512(reinterpret_cast<const void*>(wk + 16 * v));
      wv[v] = reinterpret_cast<__m512bh>(raw);
    }
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m512bh xv = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(xp[r * ldxp + p])));
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], xv, wv[v]);
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

using BlockFn = void (*)(const uint32_t*, int64_t, const uint32_t*, int64_t, const float*, int64_t, float*, int64_t,
                         __mmask16, bool);

template <int MR, int... NV>
constexpr std::array<BlockFn, sizeof...(NV)> blocks_of(std::integer_sequence<int, NV...>) {
  return {&block_bf16<MR, NV + 1>...};
}

const std::array<BlockFn, kNv> kBlocks[kMr] = {
    blocks_of<1>(std::make_integer_sequence<int, kNv>{}), blocks_of<2>(std::make_integer_sequence<int, kNv>{}),
    blocks_of<3>(std::make_integer_sequence<int, kNv>{}), blocks_of<4>(std::make_integer_sequence<int, kNv>{}),
    blocks_of<5>(std::make_integer_sequence<int, kNv>{}), blocks_of<6>(std::make_integer_sequence<int, kNv>{}),
};
constexpr int kWideRows = 2;
constexpr int kWideNv = 8;
const std::array<BlockFn, kWideNv> kWideBlocks[kWideRows] = {
    blocks_of<1>(std::make_integer_sequence<int, kWideNv>{}),
    blocks_of<2>(std::make_integer_sequence<int, kWideNv>{}),
};

}  // namespace

void dense_bf16_avx512(const float* x, int64_t ldx, int64_t rows, const uint16_t* w_packed, const float* b,
                       int64_t k_dim, int64_t n, float* y, int64_t ldy, bool silu) {
  // Round the tile's inputs to bf16 pairs (k padded to even with a zero).
  const int64_t k_pairs = (k_dim + 1) / 2;
  const int64_t ldxp = (k_pairs + 15) / 16 * 16;
  thread_local std::vector<uint32_t> xbuf;
  if (xbuf.size() < static_cast<size_t>(rows * ldxp)) xbuf.resize(static_cast<size_t>(rows * ldxp));
  uint32_t* xp = xbuf.data();
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    for (int64_t k0 = 0; k0 < 2 * k_pairs; k0 += 32) {
      const int64_t lo_n = std::max<int64_t>(0, std::min<int64_t>(16, k_dim - k0));
      const int64_t hi_n = std::max<int64_t>(0, std::min<int64_t>(16, k_dim - k0 - 16));
      const __m512 lo = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << lo_n) - 1u), xr + k0);
      const __m512 hi = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << hi_n) - 1u), xr + k0 + 16);
      const __m512i packed = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));
      const int64_t words = std::min<int64_t>(16, k_pairs - k0 / 2);
      _mm512_mask_storeu_epi32(xp + r * ldxp + k0 / 2, static_cast<__mmask16>((1u << words) - 1u), packed);
    }
  }
  const uint32_t* wp = reinterpret_cast<const uint32_t*>(w_packed);
  const bool wide = rows <= kWideRows;
  const int max_nv = wide ? kWideNv : kNv;
  const int64_t row_step = wide ? kWideRows : kMr;
  for (int64_t j0 = 0; j0 < n; j0 += 16 * max_nv) {
    const int64_t cols = std::min<int64_t>(16 * max_nv, n - j0);
    const int nv = static_cast<int>((cols + 15) / 16);
    const int last = static_cast<int>(cols - 16 * (nv - 1));
    const __mmask16 tail = static_cast<__mmask16>((1u << last) - 1u);
    for (int64_t r0 = 0; r0 < rows; r0 += row_step) {
      const int mr = static_cast<int>(std::min<int64_t>(row_step, rows - r0));
      const BlockFn fn = wide ? kWideBlocks[mr - 1][nv - 1] : kBlocks[mr - 1][nv - 1];
      fn(xp + r0 * ldxp, ldxp, wp + j0, n, b + j0, k_pairs, y + r0 * ldy + j0, ldy, tail, silu);
    }
  }
}

bool dense_bf16_avx512_supported() {
  static const bool supported = dense_avx512_supported() && __builtin_cpu_supports("avx512bf16");
  return supported;
}

}  // namespace cpu
}  // namespace mbpo_fast

#else  // compiled without AVX512_BF16

namespace mbpo_fast {
namespace cpu {
void dense_bf16_avx512(const float* x, int64_t ldx, int64_t rows, const uint16_t* w_packed, const float* b,
                       int64_t k_dim, int64_t n, float* y, int64_t ldy, bool silu) {
  dense_bf16_portable(x, ldx, rows, w_packed, b, k_dim, n, y, ldy, silu);
}
bool dense_bf16_avx512_supported() { return false; }
}  // namespace cpu
}  // namespace mbpo_fast

#endif

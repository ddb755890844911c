// AVX512_BF16 GEMM behind sgemm_bf16 (train_ops.h): A and B rounded to bf16 (round to
// nearest even) while packing, products accumulated in float32 by vdpbf16ps. Compiled with
// AVX512_BF16 flags (CMakeLists.txt) and chosen at run time (gemm_bf16_avx512_supported).
//
// The structure is gemm_avx512.cpp's, over k PAIRS: vdpbf16ps multiplies 16 pairs of bf16
// numbers and adds both products to 16 float32 lanes, so the packed panels hold one 32-bit
// word per (pair of k, row/column): word = bf16(X[r, 2q]) | bf16(X[r, 2q + 1]) << 16, with a
// zero upper half past an odd k.
//   * B panels [kc/2][32 columns] (2 zmm of words), A micro-panels [kc/2][14 rows];
//   * micro-kernel 14 rows x 32 columns: 28 float32 accumulators, per k pair 2 B loads and 14
//     32-bit broadcasts into 28 vdpbf16ps (twice the multiply-adds of the float32 kernel);
//   * operands contiguous along k: rows converted to pair words, then 16 x 16 word blocks
//     transposed in registers; narrow n computed as C^T (lanes along m), as in float32;
//   * n == 1 runs as a GEMV on bf16-rounded values with float32 FMAs (the products of two
//     bf16 numbers are exact in float32, so this is the same arithmetic).
// vdpbf16ps treats bf16 denormals as zero (DAZ) and flushes denormal results: with inputs
// whose bf16 values are below 1.2e-38 in magnitude the result can differ from the emulation.
#include "cpu/gemm_kernels.h"

#include "mbpo_fast/train_ops.h"

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#include "cpu/simd_avx512.h"

namespace mbpo_fast {
namespace cpu {

namespace {

constexpr int kMr = 14;
constexpr int kNr = 32;
constexpr int64_t kKc = 512;   // k block (even): a 32-column panel of 256 pairs is 32 KiB
constexpr int64_t kNc = 2048;

// 16 pair words from two float vectors: word i = bf16(lo[i]) | bf16(hi[i]) << 16.
inline __m512i pair_words(__m512 lo, __m512 hi) {
  // cvtne2ps_pbh(hi, lo) = [bf16(lo[0..15]), bf16(hi[0..15])]; vpermw interleaves the halves.
  const __m512i halves = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                       21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(idx, halves);
}

// The float value of x rounded to bf16 (round to nearest even).
inline __m512 round_bf16(__m512 x) {
  const __m256i h = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(x));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// Packs rows r0 .. r0+w-1 (w <= W) of a view X over k indices p0 .. p0+kc-1 into pair words
// dst[ceil(kc/2)][W]; lanes r >= w and the upper half past an odd kc are zero.
//   k_contig: X(r, p) = src[r * ld + p];  else X(r, p) = src[p * ld + r].
template <int W>
void pack(bool k_contig, const float* src, int64_t ld, int64_t r0, int w, int64_t p0, int64_t kc,
          uint32_t* dst) {
  constexpr int kVecs = (W + 15) / 16;
  const int64_t pairs = (kc + 1) / 2;
  if (!k_contig) {
    for (int64_t q = 0; q < pairs; ++q) {
      const float* lo_row = src + (p0 + 2 * q) * ld + r0;
      const bool has_hi = 2 * q + 1 < kc;
#pragma GCC unroll 2
      for (int v = 0; v < kVecs; ++v) {
        const __mmask16 mask = lane_mask(w - 16 * v);
        const __m512 lo = _mm512_maskz_loadu_ps(mask, lo_row + 16 * v);
        const __m512 hi = has_hi ? _mm512_maskz_loadu_ps(mask, lo_row + ld + 16 * v) : _mm512_setzero_ps();
        _mm512_mask_storeu_epi32(dst + q * W + 16 * v, lane_mask(W - 16 * v), pair_words(lo, hi));
      }
    }
    return;
  }
  // Rows of X are contiguous in k: convert 32 k values (16 words) of 16 rows, then
  // transpose the 16 x 16 word block in registers.
  for (int rb = 0; rb < W; rb += 16) {
    const int rows = std::max(0, std::min(16, w - rb));
    const __mmask16 lanes = lane_mask(W - rb);
    for (int64_t p = 0; p < kc; p += 32) {
      const __mmask16 lo_mask = lane_mask(kc - p), hi_mask = lane_mask(kc - p - 16);
      __m512 t[16];
      for (int i = 0; i < 16; ++i) {
        if (i < rows) {
          const float* sr = src + (r0 + rb + i) * ld + p0 + p;
          const __m512 lo = _mm512_maskz_loadu_ps(lo_mask, sr), hi = _mm512_maskz_loadu_ps(hi_mask, sr + 16);
          t[i] = reinterpret_cast<__m512>(_mm512_cvtne2ps_pbh(hi, lo));
        } else {
          t[i] = _mm512_setzero_ps();
        }
      }
      transpose16(t);
      const int64_t q0 = p / 2, count = std::min<int64_t>(16, pairs - q0);
      for (int64_t q = 0; q < count; ++q) {
        _mm512_mask_storeu_ps(reinterpret_cast<float*>(dst + (q0 + q) * W + rb), lanes, t[q]);
      }
    }
  }
}

template <int MR, int NV>
void micro(const uint32_t* ap, const uint32_t* bp, int64_t pairs, float* c, int64_t ldc, float beta,
           __mmask16 tail) {
  __m512 acc[MR][NV];
#pragma GCC unroll 14
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  for (int64_t q = 0; q < pairs; ++q) {
    const uint32_t* a = ap + q * kMr;
    __m512bh b[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      b[v] = reinterpret_cast<__m512bh>(_mm512_load_si512(reinterpret_cast<const void*>(bp + q * kNr + 16 * v)));
    }
#pragma GCC unroll 14
    for (int r = 0; r < MR; ++r) {
      const __m512bh x = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(a[r])));
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], x, b[v]);
    }
  }
  const __m512 beta_v = _mm512_set1_ps(beta);
#pragma GCC unroll 14
  for (int r = 0; r < MR; ++r) {
    float* cr = c + r * ldc;
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      const __mmask16 mask = v == NV - 1 ? tail : static_cast<__mmask16>(0xFFFF);
      __m512 out = acc[r][v];
      if (beta == 1.0f) {
        out = _mm512_add_ps(out, _mm512_maskz_loadu_ps(mask, cr + 16 * v));
      } else if (beta != 0.0f) {
        out = _mm512_fmadd_ps(beta_v, _mm512_maskz_loadu_ps(mask, cr + 16 * v), out);
      }
      _mm512_mask_storeu_ps(cr + 16 * v, mask, out);
    }
  }
}

using MicroFn = void (*)(const uint32_t*, const uint32_t*, int64_t, float*, int64_t, float, __mmask16);

template <int MR>
constexpr std::array<MicroFn, 2> micro_row() {
  return {&micro<MR, 1>, &micro<MR, 2>};
}

template <int... R>
constexpr std::array<std::array<MicroFn, 2>, sizeof...(R)> micro_table(std::integer_sequence<int, R...>) {
  return {micro_row<R + 1>()...};
}

const std::array<std::array<MicroFn, 2>, kMr> kMicro = micro_table(std::make_integer_sequence<int, kMr>{});

// C[:, 0] (stride ldc) = beta * C + bf16(op(A)) @ x, x = bf16(op(B)[:, 0]) already rounded.
void gemv(bool trans_a, int64_t m, int64_t k, const float* a, int64_t lda, const float* x, float beta,
          float* c, int64_t ldc) {
  auto finish = [&](int64_t i, float dot) {
    float& out = c[i * ldc];
    out = beta == 0.0f ? dot : (beta == 1.0f ? out + dot : beta * out + dot);
  };
  if (!trans_a) {
    int64_t i = 0;
    for (; i + 4 <= m; i += 4) {
      __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
      for (int64_t p = 0; p < k; p += 16) {
        const __mmask16 mask = lane_mask(k - p);
        const __m512 xv = _mm512_maskz_loadu_ps(mask, x + p);
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r) {
          acc[r] = _mm512_fmadd_ps(round_bf16(_mm512_maskz_loadu_ps(mask, a + (i + r) * lda + p)), xv, acc[r]);
        }
      }
      for (int r = 0; r < 4; ++r) finish(i + r, _mm512_reduce_add_ps(acc[r]));
    }
    for (; i < m; ++i) {
      __m512 acc = _mm512_setzero_ps();
      for (int64_t p = 0; p < k; p += 16) {
        const __mmask16 mask = lane_mask(k - p);
        acc = _mm512_fmadd_ps(round_bf16(_mm512_maskz_loadu_ps(mask, a + i * lda + p)),
                              _mm512_maskz_loadu_ps(mask, x + p), acc);
      }
      finish(i, _mm512_reduce_add_ps(acc));
    }
    return;
  }
  alignas(64) float out[64];
  for (int64_t i0 = 0; i0 < m; i0 += 64) {
    const int64_t rows = std::min<int64_t>(64, m - i0);
    __mmask16 mask[4];
    for (int v = 0; v < 4; ++v) mask[v] = lane_mask(rows - 16 * v);
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t p = 0; p < k; ++p) {
      const __m512 xv = _mm512_set1_ps(x[p]);
      const float* ap = a + p * lda + i0;
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) {
        acc[v] = _mm512_fmadd_ps(xv, round_bf16(_mm512_maskz_loadu_ps(mask[v], ap + 16 * v)), acc[v]);
      }
    }
    for (int v = 0; v < 4; ++v) _mm512_store_ps(out + 16 * v, acc[v]);
    for (int64_t r = 0; r < rows; ++r) finish(i0 + r, out[r]);
  }
}

// k == 1 (the critic head's input gradient dy[B, 1] @ w^T[1, in]): a rank-1 update,
// C[i, :] = beta * C[i, :] + y[i] * x[:] with x = op(B)[0, :], y = op(A)[:, 0] gathered
// contiguously (and rounded to bf16 in the bf16 kernel) - no packing.
void rank1(int64_t m, int64_t n, const float* y, const float* x, float beta, float* c, int64_t ldc) {
  const __m512 beta_v = _mm512_set1_ps(beta);
  for (int64_t i = 0; i < m; ++i) {
    const __m512 yi = _mm512_set1_ps(y[i]);
    float* ci = c + i * ldc;
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 mask = lane_mask(n - j);
      __m512 out = _mm512_mul_ps(yi, _mm512_maskz_loadu_ps(mask, x + j));
      if (beta == 1.0f) {
        out = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, ci + j), out);
      } else if (beta != 0.0f) {
        out = _mm512_fmadd_ps(beta_v, _mm512_maskz_loadu_ps(mask, ci + j), out);
      }
      _mm512_mask_storeu_ps(ci + j, mask, out);
    }
  }
}

// C (=beta*C+) bf16(X) @ bf16(Y), X(i, p) / Y(p, j) views as in pack(); c_trans: element
// (i, j) lives at c[j * ldc + i].
void gemm_blocked(bool x_k_contig, bool y_k_contig, int64_t m, int64_t n, int64_t k, const float* x, int64_t ldx,
                  const float* y, int64_t ldy, float beta, float* c, int64_t ldc, bool c_trans) {
  thread_local std::vector<uint32_t> a_buf, b_buf;
  alignas(64) float tile[kMr * kNr];
  for (int64_t jc = 0; jc < n; jc += kNc) {
    const int64_t nc = std::min(kNc, n - jc);
    const int64_t panels = (nc + kNr - 1) / kNr;
    for (int64_t pc = 0; pc < k; pc += kKc) {
      const int64_t kc = std::min(kKc, k - pc);
      const int64_t pairs = (kc + 1) / 2;
      uint32_t* bp = aligned_scratch(b_buf, panels * kNr * pairs);
      for (int64_t jp = 0; jp < panels; ++jp) {
        const int w = static_cast<int>(std::min<int64_t>(kNr, nc - jp * kNr));
        pack<kNr>(y_k_contig, y, ldy, jc + jp * kNr, w, pc, kc, bp + jp * kNr * pairs);
      }
      const float beta_block = pc == 0 ? beta : 1.0f;
      uint32_t* ap = aligned_scratch(a_buf, kMr * pairs);
      for (int64_t ic = 0; ic < m; ic += kMr) {
        const int mr = static_cast<int>(std::min<int64_t>(kMr, m - ic));
        pack<kMr>(x_k_contig, x, ldx, ic, mr, pc, kc, ap);
        for (int64_t jp = 0; jp < panels; ++jp) {
          const int64_t j0 = jc + jp * kNr;
          const int64_t cols = std::min<int64_t>(kNr, nc - jp * kNr);
          const int nv = static_cast<int>((cols + 15) / 16);
          const __mmask16 tail = lane_mask(cols - 16 * (nv - 1));
          if (!c_trans) {
            kMicro[mr - 1][nv - 1](ap, bp + jp * kNr * pairs, pairs, c + ic * ldc + j0, ldc, beta_block, tail);
            continue;
          }
          kMicro[mr - 1][nv - 1](ap, bp + jp * kNr * pairs, pairs, tile, kNr, 0.0f, tail);
          for (int64_t j = 0; j < cols; ++j) {
            float* cj = c + (j0 + j) * ldc + ic;
            for (int r = 0; r < mr; ++r) {
              const float v = tile[r * kNr + j];
              cj[r] = beta_block == 0.0f ? v : (beta_block == 1.0f ? cj[r] + v : beta_block * cj[r] + v);
            }
          }
        }
      }
    }
  }
}

}  // namespace

void sgemm_bf16_avx512(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
                       int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    gemm_scale_c(m, n, beta, c, ldc);
    return;
  }
  thread_local std::vector<float> x_buf;
  if (n == 1) {
    if (x_buf.size() < static_cast<size_t>(k + 16)) x_buf.resize(static_cast<size_t>(k + 16));
    float* x = x_buf.data();
    for (int64_t p = 0; p < k; ++p) x[p] = trans_b ? b[p] : b[p * ldb];
    for (int64_t p = 0; p < k; p += 16) {  // x = bf16(op(B)[:, 0])
      const __mmask16 mask = lane_mask(k - p);
      _mm512_mask_storeu_ps(x + p, mask, round_bf16(_mm512_maskz_loadu_ps(mask, x + p)));
    }
    gemv(trans_a, m, k, a, lda, x, beta, c, ldc);
    return;
  }
  if (k == 1) {
    thread_local std::vector<float> v_buf;
    if (v_buf.size() < static_cast<size_t>(m + n)) v_buf.resize(static_cast<size_t>(m + n));
    float* y = v_buf.data();  // y = op(A)[:, 0], then x = op(B)[0, :]
    float* x = y + m;
    for (int64_t i = 0; i < m; ++i) y[i] = trans_a ? a[i] : a[i * lda];
    for (int64_t j = 0; j < n; ++j) x[j] = trans_b ? b[j * ldb] : b[j];
    for (int64_t t = 0; t < m + n; t += 16) {  // round both vectors to bf16
      const __mmask16 mask = lane_mask(m + n - t);
      _mm512_mask_storeu_ps(y + t, mask, round_bf16(_mm512_maskz_loadu_ps(mask, y + t)));
    }
    rank1(m, n, y, x, beta, c, ldc);
    return;
  }
  // Narrow n: compute C^T = op(B)^T op(A)^T with the lanes along m (see gemm_avx512.cpp).
  const int64_t cost = m * ((n + 15) / 16), cost_swapped = n * ((m + 15) / 16);
  if (5 * cost_swapped < 4 * cost) {
    gemm_blocked(trans_b, !trans_a, n, m, k, b, ldb, a, lda, beta, c, ldc, true);
  } else {
    gemm_blocked(!trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc, false);
  }
}

bool gemm_bf16_avx512_supported() {
  static const bool supported = gemm_avx512_supported() && __builtin_cpu_supports("avx512bf16");
  return supported;
}

}  // namespace cpu
}  // namespace mbpo_fast

#else  // compiled without AVX512_BF16 (old compiler, non-x86 or MBPO_FAST_SIMD=PORTABLE)

namespace mbpo_fast {
namespace cpu {

bool gemm_bf16_avx512_supported() { return false; }

void sgemm_bf16_avx512(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
                       int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  sgemm_bf16_portable(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace cpu
}  // namespace mbpo_fast

#endif

// AVX-512 float32 GEMM behind sgemm (train_ops.h), plus the trainers' elementwise kernels
// (ReLU/SiLU, bias column sums, Adam) because this is the unit compiled with AVX-512 flags
// (CMakeLists.txt); train_ops.cpp chooses these at run time (gemm_avx512_supported), so the
// library still runs on older CPUs.
//
// Structure (GotoBLAS/BLIS style, single-threaded):
//   * op(B) is packed per (k block x column block) into panels of kNr = 32 columns,
//     [kc][32] contiguous, zero-padded past n: the transposes of B are resolved here.
//   * op(A) is packed per row block into a [kc][14] micro-panel (transposes of A likewise).
//     Operands contiguous along k are transposed 16 x 16 at a time in registers.
//   * One register-blocked micro-kernel serves every form: 14 rows x 2 vectors = 28 zmm
//     accumulators; per k it loads 2 B vectors and broadcasts 14 A values straight from
//     memory into the FMAs (embedded broadcast), 28 FMAs per 16 loads. Edge tiles use the
//     same kernel instantiated for 1..14 rows and 1..2 vectors; the last vector's column
//     tail is masked, so no operand is read and C is not written past its rows.
//   * Narrow n (e.g. the actor head's 6 outputs): C^T = op(B)^T op(A)^T, so the vector lanes
//     run along m, stored transposed through a tile buffer.
//   * n == 1 (the critic head) runs as a GEMV (dot products or column AXPYs), because a
//     16-wide vector would waste 15/16 of the arithmetic.
//   * With few row blocks (m <= 28) and B contiguous along n, B's rows are read in place:
//     a packed copy would be used only once or twice.
// Buffers are thread_local and only grow, so steady-state calls do not allocate.
#include "cpu/gemm_kernels.h"

#include "mbpo_fast/train_ops.h"

#include <cmath>

#if defined(__AVX512F__)
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

constexpr int kMr = 14;          // rows of the micro-tile (A micro-panel width)
constexpr int kNr = 32;          // columns of the micro-tile (B panel width): 2 zmm
constexpr int64_t kKc = 384;     // k block: a 32 x 384 B panel is 48 KiB, A micro-panel 21 KiB
constexpr int64_t kNc = 2048;    // column block: packed B block <= 3 MiB

// Packs rows r0 .. r0+w-1 (w <= W) of a matrix view X over k indices p0 .. p0+kc-1 into
// dst[kc][W]: dst[p * W + r] = X(r0 + r, p0 + p), lanes r >= w zero.
//   k_contig: X(r, p) = src[r * ld + p]   (rows of X contiguous in k: needs a transpose)
//   else:     X(r, p) = src[p * ld + r]   (X^T stored row-major: a plain copy per k)
template <int W>
void pack(bool k_contig, const float* src, int64_t ld, int64_t r0, int w, int64_t p0, int64_t kc,
          float* dst) {
  static_assert(W % 2 == 0 && W <= 32, "panel width");
  constexpr int kVecs = (W + 15) / 16;
  if (!k_contig) {
    const float* s = src + p0 * ld + r0;
    for (int64_t p = 0; p < kc; ++p, s += ld) {
#pragma GCC unroll 2
      for (int v = 0; v < kVecs; ++v) {
        const __m512 x = _mm512_maskz_loadu_ps(lane_mask(w - 16 * v), s + 16 * v);
        _mm512_mask_storeu_ps(dst + p * W + 16 * v, lane_mask(W - 16 * v), x);
      }
    }
    return;
  }
  // Rows of X are contiguous in k: transpose 16 rows x 16 k blocks in registers.
  for (int rb = 0; rb < W; rb += 16) {
    const int rows = std::max(0, std::min(16, w - rb));
    const __mmask16 lanes = lane_mask(W - rb);
    for (int64_t p = 0; p < kc; p += 16) {
      const __mmask16 km = lane_mask(kc - p);
      __m512 t[16];
      for (int i = 0; i < 16; ++i) {
        t[i] = i < rows ? _mm512_maskz_loadu_ps(km, src + (r0 + rb + i) * ld + p0 + p) : _mm512_setzero_ps();
      }
      transpose16(t);
      const int64_t np = std::min<int64_t>(16, kc - p);
      for (int64_t q = 0; q < np; ++q) _mm512_mask_storeu_ps(dst + (p + q) * W + rb, lanes, t[q]);
    }
  }
}

// C[MR, cols] = beta * C + A_panel[kc][kMr] (first MR rows) @ B_panel[kc][kNr] (first NV
// vectors; the last vector's columns masked by `tail`). beta == 0 never reads C.
template <int MR, int NV>
void micro(const float* ap, const float* bp, int64_t ldbp, int64_t kc, float* c, int64_t ldc, float beta,
           __mmask16 tail) {
  __m512 acc[MR][NV];
#pragma GCC unroll 14
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  for (int64_t p = 0; p < kc; ++p) {
    const float* a = ap + p * kMr;
    __m512 b[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      // Masked: bp may be B itself (unpacked), whose rows end at the last column.
      b[v] = _mm512_maskz_loadu_ps(v == NV - 1 ? tail : static_cast<__mmask16>(0xFFFF), bp + p * ldbp + 16 * v);
    }
#pragma GCC unroll 14
    for (int r = 0; r < MR; ++r) {
      const __m512 x = _mm512_set1_ps(a[r]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(x, b[v], acc[r][v]);
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

using MicroFn = void (*)(const float*, const float*, int64_t, int64_t, float*, int64_t, float, __mmask16);

template <int MR>
constexpr std::array<MicroFn, 2> micro_row() {
  return {&micro<MR, 1>, &micro<MR, 2>};
}

template <int... R>
constexpr std::array<std::array<MicroFn, 2>, sizeof...(R)> micro_table(std::integer_sequence<int, R...>) {
  return {micro_row<R + 1>()...};
}

// kMicro[mr - 1][nv - 1]
const std::array<std::array<MicroFn, 2>, kMr> kMicro = micro_table(std::make_integer_sequence<int, kMr>{});

// C[:, 0] (column of stride ldc) = beta * C + op(A) @ x, x = op(B)[:, 0] (contiguous, k).
void gemv(bool trans_a, int64_t m, int64_t k, const float* a, int64_t lda, const float* x, float beta,
          float* c, int64_t ldc) {
  auto finish = [&](int64_t i, float dot) {
    float& out = c[i * ldc];
    out = beta == 0.0f ? dot : (beta == 1.0f ? out + dot : beta * out + dot);
  };
  if (!trans_a) {
    // Rows of A are contiguous in k: 4 dot products at a time (4 independent FMA chains).
    int64_t i = 0;
    for (; i + 4 <= m; i += 4) {
      __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
      for (int64_t p = 0; p < k; p += 16) {
        const __mmask16 mask = lane_mask(k - p);
        const __m512 xv = _mm512_maskz_loadu_ps(mask, x + p);
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r) {
          acc[r] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, a + (i + r) * lda + p), xv, acc[r]);
        }
      }
      for (int r = 0; r < 4; ++r) finish(i + r, _mm512_reduce_add_ps(acc[r]));
    }
    for (; i < m; ++i) {
      __m512 acc = _mm512_setzero_ps();
      for (int64_t p = 0; p < k; p += 16) {
        const __mmask16 mask = lane_mask(k - p);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, a + i * lda + p), _mm512_maskz_loadu_ps(mask, x + p), acc);
      }
      finish(i, _mm512_reduce_add_ps(acc));
    }
    return;
  }
  // A stored [k, m]: C[i0 .. i0+63] accumulates x[p] * A[p, i0 .. i0+63] over p.
  alignas(64) float out[64];
  for (int64_t i0 = 0; i0 < m; i0 += 64) {
    const int64_t rows = std::min<int64_t>(64, m - i0);
    __mmask16 mask[4];
    for (int v = 0; v < 4; ++v) mask[v] = lane_mask(std::max<int64_t>(0, rows - 16 * v));
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t p = 0; p < k; ++p) {
      const __m512 xv = _mm512_set1_ps(x[p]);
      const float* ap = a + p * lda + i0;
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) acc[v] = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(mask[v], ap + 16 * v), acc[v]);
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

// C (=beta*C+) X @ Y over packed panels, X(i, p) / Y(p, j) views as in pack(). c_trans:
// the product is C^T, i.e. element (i, j) lives at c[j * ldc + i] (tiles go through a
// local buffer and are stored transposed).
void gemm_blocked(bool x_k_contig, bool y_k_contig, int64_t m, int64_t n, int64_t k, const float* x, int64_t ldx,
                  const float* y, int64_t ldy, float beta, float* c, int64_t ldc, bool c_trans) {
  thread_local std::vector<float> a_buf, b_buf;
  // Y's rows are used in place (no packing) when they are contiguous along n and only a few
  // row blocks would reuse a packed copy (e.g. dW = x^T @ dy with in = 11..14).
  const bool direct_y = !y_k_contig && m <= 2 * kMr;
  alignas(64) float tile[kMr * kNr];
  for (int64_t jc = 0; jc < n; jc += kNc) {
    const int64_t nc = std::min(kNc, n - jc);
    const int64_t panels = (nc + kNr - 1) / kNr;
    for (int64_t pc = 0; pc < k; pc += kKc) {
      const int64_t kc = std::min(kKc, k - pc);
      float* bp = direct_y ? nullptr : aligned_scratch(b_buf, panels * kNr * kc);
      if (!direct_y) {
        for (int64_t jp = 0; jp < panels; ++jp) {
          const int w = static_cast<int>(std::min<int64_t>(kNr, nc - jp * kNr));
          pack<kNr>(y_k_contig, y, ldy, jc + jp * kNr, w, pc, kc, bp + jp * kNr * kc);
        }
      }
      const float beta_block = pc == 0 ? beta : 1.0f;
      float* ap = aligned_scratch(a_buf, kMr * kc);
      for (int64_t ic = 0; ic < m; ic += kMr) {
        const int mr = static_cast<int>(std::min<int64_t>(kMr, m - ic));
        pack<kMr>(x_k_contig, x, ldx, ic, mr, pc, kc, ap);
        for (int64_t jp = 0; jp < panels; ++jp) {
          const int64_t j0 = jc + jp * kNr;
          const int64_t cols = std::min<int64_t>(kNr, nc - jp * kNr);
          const int nv = static_cast<int>((cols + 15) / 16);
          const __mmask16 tail = lane_mask(cols - 16 * (nv - 1));
          const float* panel = direct_y ? y + pc * ldy + j0 : bp + jp * kNr * kc;
          const int64_t ldp = direct_y ? ldy : kNr;
          if (!c_trans) {
            kMicro[mr - 1][nv - 1](ap, panel, ldp, kc, c + ic * ldc + j0, ldc, beta_block, tail);
            continue;
          }
          kMicro[mr - 1][nv - 1](ap, panel, ldp, kc, tile, kNr, 0.0f, tail);
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

void sgemm_avx512(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
                  int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    gemm_scale_c(m, n, beta, c, ldc);
    return;
  }
  if (n == 1) {
    thread_local std::vector<float> x_buf;
    float* x = aligned_scratch(x_buf, k);
    for (int64_t p = 0; p < k; ++p) x[p] = trans_b ? b[p] : b[p * ldb];
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
    rank1(m, n, y, x, beta, c, ldc);
    return;
  }
  // Vector lanes run along n; a narrow n (the actor head's 6 outputs) would leave most of
  // them idle, so then compute C^T = op(B)^T op(A)^T with the lanes along m instead. Cost
  // ~ rows x 16-lane vectors, the transposed store counted 25 % dearer.
  const int64_t cost = m * ((n + 15) / 16), cost_swapped = n * ((m + 15) / 16);
  if (5 * cost_swapped < 4 * cost) {
    // X(j, p) = op(B)(p, j): b[j * ldb + p] when trans_b; Y(p, i) = op(A)(i, p).
    gemm_blocked(trans_b, !trans_a, n, m, k, b, ldb, a, lda, beta, c, ldc, true);
    return;
  }
  gemm_blocked(!trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc, false);
}

// ------------------------------------------------------------------ elementwise

void relu_forward_avx512(float* x, int64_t n) {
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = lane_mask(n - i);
    // max(x, 0) returns the second operand for NaN: 0, as the portable x > 0 ? x : 0.
    _mm512_mask_storeu_ps(x + i, m, _mm512_max_ps(_mm512_maskz_loadu_ps(m, x + i), zero));
  }
}

void relu_backward_avx512(const float* h, float* g, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = lane_mask(n - i);
    const __mmask16 pos = _mm512_mask_cmp_ps_mask(m, _mm512_maskz_loadu_ps(m, h + i), _mm512_setzero_ps(), _CMP_GT_OQ);
    _mm512_mask_storeu_ps(g + i, m, _mm512_maskz_loadu_ps(pos, g + i));
  }
}

void silu_forward_avx512(float* x, float* pre, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = lane_mask(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    _mm512_mask_storeu_ps(pre + i, m, v);
    _mm512_mask_storeu_ps(x + i, m, silu512(v));
  }
}

void silu_backward_avx512(const float* pre, float* g, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = lane_mask(n - i);
    const __m512 x = _mm512_maskz_loadu_ps(m, pre + i);
    const __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), x))));
    const __m512 d = _mm512_mul_ps(s, _mm512_fmadd_ps(x, _mm512_sub_ps(one, s), one));
    _mm512_mask_storeu_ps(g + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, g + i), d));
  }
}

// The sums run in double (rounded to float once at the end): a bias gradient is a sum over
// the batch with cancellation, and a float32 running sum over 256 rows lost up to ~1e-3 of
// a small result (more than torch's blocked summation; the ensemble parity test caught it).
void column_sums_avx512(const float* dy, int64_t ld, int64_t rows, int64_t n, float* db, bool accumulate) {
  for (int64_t j0 = 0; j0 < n; j0 += 32) {
    __mmask16 mask[2];
    __m512d acc[4];
    for (int v = 0; v < 2; ++v) {
      mask[v] = lane_mask(std::max<int64_t>(0, n - j0 - 16 * v));
      const __m512 init = accumulate ? _mm512_maskz_loadu_ps(mask[v], db + j0 + 16 * v) : _mm512_setzero_ps();
      acc[2 * v] = _mm512_cvtps_pd(_mm512_castps512_ps256(init));
      acc[2 * v + 1] = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(init), 1)));
    }
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = dy + r * ld + j0;
#pragma GCC unroll 2
      for (int v = 0; v < 2; ++v) {
        const __m512 x = _mm512_maskz_loadu_ps(mask[v], row + 16 * v);
        acc[2 * v] = _mm512_add_pd(acc[2 * v], _mm512_cvtps_pd(_mm512_castps512_ps256(x)));
        acc[2 * v + 1] = _mm512_add_pd(
            acc[2 * v + 1], _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1))));
      }
    }
    for (int v = 0; v < 2; ++v) {
      const __m256 lo = _mm512_cvtpd_ps(acc[2 * v]), hi = _mm512_cvtpd_ps(acc[2 * v + 1]);
      const __m512 sum = _mm512_castpd_ps(
          _mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1));
      _mm512_mask_storeu_ps(db + j0 + 16 * v, mask[v], sum);
    }
  }
}

// torch's fused Adam (aten/src/ATen/native/cpu/FusedAdamKernel.cpp) as its AVX-512 build
// computes it (checked bit for bit against torch 2.x on float32 parameters): the L2 term,
// the lerp and the second moment are FMAs,
//   g = fma(p, wd, g);  m = fma(1 - beta1, g - m, m);  v = fma((1 - beta2) * g, g, v * beta2)
//   p -= (step_size * m) / (sqrt(v) / sqrt(bias_correction2) + eps)
// torch runs its last n % 16 floats through a scalar loop whose compiled contraction may
// differ by an ulp in v; here the tail is the same formula under a lane mask.
void adam_avx512(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
                 const AdamScalars& s) {
  const __m512 wd = _mm512_set1_ps(s.weight_decay), c1 = _mm512_set1_ps(s.one_minus_beta1);
  const __m512 b2 = _mm512_set1_ps(s.beta2), c2 = _mm512_set1_ps(s.one_minus_beta2);
  const __m512 bc2 = _mm512_set1_ps(s.bias_correction2_sqrt), eps = _mm512_set1_ps(s.eps);
  const __m512 step = _mm512_set1_ps(s.step_size);
  const bool decay = s.weight_decay != 0.0f;
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = lane_mask(n - i);
    __m512 p = _mm512_maskz_loadu_ps(k, param + i), g = _mm512_maskz_loadu_ps(k, grad + i);
    if (decay) g = _mm512_fmadd_ps(p, wd, g);
    __m512 m = _mm512_maskz_loadu_ps(k, exp_avg + i), v = _mm512_maskz_loadu_ps(k, exp_avg_sq + i);
    m = _mm512_fmadd_ps(c1, _mm512_sub_ps(g, m), m);
    v = _mm512_fmadd_ps(_mm512_mul_ps(c2, g), g, _mm512_mul_ps(v, b2));
    const __m512 denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(v), bc2), eps);
    p = _mm512_sub_ps(p, _mm512_div_ps(_mm512_mul_ps(step, m), denom));
    _mm512_mask_storeu_ps(exp_avg + i, k, m);
    _mm512_mask_storeu_ps(exp_avg_sq + i, k, v);
    _mm512_mask_storeu_ps(param + i, k, p);
  }
}

bool gemm_avx512_supported() {
  static const bool supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                                __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  return supported;
}

}  // namespace cpu
}  // namespace mbpo_fast

#else  // compiled without AVX-512 support (non-x86 or MBPO_FAST_SIMD=PORTABLE)

namespace mbpo_fast {
namespace cpu {

bool gemm_avx512_supported() { return false; }

void sgemm_avx512(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
                  int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  sgemm_portable(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc);
}

// Never called (gemm_avx512_supported() is false); defined for the link.
void relu_forward_avx512(float* x, int64_t n) { relu_forward(x, n); }
void relu_backward_avx512(const float* h, float* g, int64_t n) { relu_backward(h, g, n); }
void silu_forward_avx512(float* x, float* pre, int64_t n) { silu_forward(x, pre, n); }
void silu_backward_avx512(const float* pre, float* g, int64_t n) { silu_backward(pre, g, n); }
void column_sums_avx512(const float* dy, int64_t ld, int64_t rows, int64_t n, float* db, bool accumulate) {
  for (int64_t j = 0; j < n; ++j) {
    double acc = accumulate ? db[j] : 0.0;
    for (int64_t r = 0; r < rows; ++r) acc += dy[r * ld + j];
    db[j] = static_cast<float>(acc);
  }
}
void adam_avx512(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
                 const AdamScalars& s) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i] + s.weight_decay * param[i];
    exp_avg[i] += s.one_minus_beta1 * (g - exp_avg[i]);
    exp_avg_sq[i] = s.beta2 * exp_avg_sq[i] + s.one_minus_beta2 * g * g;
    param[i] -= s.step_size * exp_avg[i] / (std::sqrt(exp_avg_sq[i]) / s.bias_correction2_sqrt + s.eps);
  }
}

}  // namespace cpu
}  // namespace mbpo_fast

#endif

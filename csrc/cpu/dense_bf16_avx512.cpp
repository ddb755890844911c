// Opt-in bf16-weight dense kernel (AVX512_BF16 vdpbf16ps). Each instruction multiplies
// 16 pairs of bf16 numbers and adds both products to 16 float32 accumulators: twice the
// multiply-adds of a float32 FMA per instruction, and half the weight bytes to stream.
//
// Weights are pre-packed (ensemble_pack_bf16) as [E, P, C, 2] (P, C padded to 16): the
// pair (W[2p, j], W[2p+1, j]) is one 32-bit word, so a zmm load gives 16 columns of one k
// pair, and 16 x 16 blocks are whole AMX B tiles. The inputs of each row are rounded to
// bf16 once per layer; accumulation stays float32.
//   * tiles of >= 16 rows on CPUs with AMX-BF16 (Sapphire Rapids+): 32 x 32 output blocks
//     of four 16 x 16 accumulator tiles, tdpbf16ps over 32-wide k chunks;
//   * otherwise vdpbf16ps with the float32 kernel's register blocking (6 rows x 64
//     columns; 1-2-row tiles 128 columns wide).
#include "cpu/ensemble_kernels.h"

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__)
#define MBPO_FAST_HAVE_AMX 1
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <array>
#include <utility>
#include <cstdlib>
#include <string>
#include <vector>

#include "cpu/simd_avx512.h"

namespace mbpo_fast {
namespace cpu {

namespace {

constexpr int kMr = 6;
constexpr int kNv = 4;

template <int MR, int NV>
void block_bf16(const uint32_t* xp, int64_t ldxp, const uint32_t* wp, int64_t ldw, const float* b, int64_t k_pairs,
                float* y, int64_t ldy, __mmask16 tail, bool silu) {
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) {
    const __m512 bv = v == NV - 1 ? _mm512_maskz_loadu_ps(tail, b + 16 * v) : _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) acc[r][v] = bv;
  }
  for (int64_t p = 0; p < k_pairs; ++p) {
    const uint32_t* wk = wp + p * ldw;
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


#if defined(MBPO_FAST_HAVE_AMX)
// ---------------------------------------------------------------- AMX

struct TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Asks Linux for the AMX tile state (once per process) and checks the CPU bits.
bool amx_available() {
  static const bool ok = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool amx_bf16 = (d >> 22) & 1u, amx_tile = (d >> 24) & 1u;
    if (!amx_bf16 || !amx_tile) return false;
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

// MBPO_FAST_AMX=0 disables the AMX path (e.g. to compare with vdpbf16ps).
bool amx_enabled_by_env() {
  const char* env = std::getenv("MBPO_FAST_AMX");
  return env == nullptr || std::string(env) != "0";
}

// Every thread configures its tiles once: tmm0-3 = 16 x 16 float32 accumulators,
// tmm4-5 = A (16 rows x 16 bf16 pairs), tmm6-7 = B (16 pairs x 16 columns).
void configure_tiles() {
  thread_local bool configured = false;
  if (configured) return;
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
  configured = true;
}

// y[r, j] = act(b[j] + sum_p xp[r, p] . wp[p, j]) for a tile whose inputs are already bf16
// pairs xp [rows_pad32, ldxp] (zero padding in k); rows processed in blocks of 32.
void dense_amx(const uint32_t* xp, int64_t ldxp, int64_t rows, const uint32_t* wp, int64_t ldw, const float* b,
               int64_t k_pairs_padded, int64_t n, float* y, int64_t ldy, bool silu) {
  configure_tiles();
  alignas(64) float c[32][32];
  const int64_t a_stride = ldxp * 4, b_stride = ldw * 4;
  for (int64_t r0 = 0; r0 < rows; r0 += 32) {
    for (int64_t j0 = 0; j0 < ldw; j0 += 32) {
      const bool two_cols = j0 + 16 < ldw;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t p0 = 0; p0 < k_pairs_padded; p0 += 16) {
        _tile_loadd(4, xp + r0 * ldxp + p0, a_stride);
        _tile_loadd(5, xp + (r0 + 16) * ldxp + p0, a_stride);
        _tile_loadd(6, wp + p0 * ldw + j0, b_stride);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(2, 5, 6);
        if (two_cols) {
          _tile_loadd(7, wp + p0 * ldw + j0 + 16, b_stride);
          _tile_dpbf16ps(1, 4, 7);
          _tile_dpbf16ps(3, 5, 7);
        }
      }
      _tile_stored(0, &c[0][0], 128);
      _tile_stored(2, &c[16][0], 128);
      if (two_cols) {
        _tile_stored(1, &c[0][16], 128);
        _tile_stored(3, &c[16][16], 128);
      }
      const int64_t nr = std::min<int64_t>(32, rows - r0);
      for (int64_t h = 0; h < (two_cols ? 2 : 1); ++h) {
        const int64_t j = j0 + 16 * h;
        if (j >= n) break;
        const __mmask16 m = static_cast<__mmask16>((1u << std::min<int64_t>(16, n - j)) - 1u);
        const __m512 bias = _mm512_maskz_loadu_ps(m, b + j);
        for (int64_t r = 0; r < nr; ++r) {
          __m512 v = _mm512_add_ps(_mm512_load_ps(&c[r][16 * h]), bias);
          if (silu) v = silu512(v);
          _mm512_mask_storeu_ps(y + (r0 + r) * ldy + j, m, v);
        }
      }
    }
  }
}
#endif  // MBPO_FAST_HAVE_AMX

}  // namespace

void dense_bf16_avx512(const float* x, int64_t ldx, int64_t rows, const uint16_t* w_packed, const float* b,
                       int64_t k_dim, int64_t n, float* y, int64_t ldy, bool silu) {
  const int64_t k_pairs = (k_dim + 1) / 2;
  const int64_t ldxp = bf16_pairs_padded(k_dim);  // multiple of 16 words, zero padded
  const int64_t ldw = bf16_cols_padded(n);
  const bool amx = rows >= 16 && dense_bf16_amx_supported();
  // Round the tile's inputs to bf16 pairs (AMX: rows padded to a multiple of 32 with zeros).
  const int64_t rows_alloc = amx ? (rows + 31) / 32 * 32 : rows;
  thread_local std::vector<uint32_t> xbuf;
  if (xbuf.size() < static_cast<size_t>(rows_alloc * ldxp)) xbuf.resize(static_cast<size_t>(rows_alloc * ldxp));
  uint32_t* xp = xbuf.data();
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    for (int64_t k0 = 0; k0 < 2 * ldxp; k0 += 32) {
      const int64_t lo_n = std::max<int64_t>(0, std::min<int64_t>(16, k_dim - k0));
      const int64_t hi_n = std::max<int64_t>(0, std::min<int64_t>(16, k_dim - k0 - 16));
      const __m512 lo = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << lo_n) - 1u), xr + k0);
      const __m512 hi = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << hi_n) - 1u), xr + k0 + 16);
      _mm512_storeu_si512(reinterpret_cast<void*>(xp + r * ldxp + k0 / 2),
                          reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
    }
  }
  std::fill(xp + rows * ldxp, xp + rows_alloc * ldxp, 0u);
  const uint32_t* wp = reinterpret_cast<const uint32_t*>(w_packed);
#if defined(MBPO_FAST_HAVE_AMX)
  if (amx) {
    dense_amx(xp, ldxp, rows, wp, ldw, b, ldxp, n, y, ldy, silu);
    return;
  }
#endif
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
      fn(xp + r0 * ldxp, ldxp, wp + j0, ldw, b + j0, k_pairs, y + r0 * ldy + j0, ldy, tail, silu);
    }
  }
}

bool dense_bf16_avx512_supported() {
  static const bool supported = dense_avx512_supported() && __builtin_cpu_supports("avx512bf16");
  return supported;
}

bool dense_bf16_amx_supported() {
#if defined(MBPO_FAST_HAVE_AMX)
  static const bool supported = dense_bf16_avx512_supported() && amx_available() && amx_enabled_by_env();
  return supported;
#else
  return false;
#endif
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
bool dense_bf16_amx_supported() { return false; }
}  // namespace cpu
}  // namespace mbpo_fast

#endif

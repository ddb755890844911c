// Portable dense-layer kernel: blocks of 4 rows x 64 columns held in a local accumulator
// array that the compiler vectorizes for the baseline ISA.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/ensemble_kernels.h"
#include "kernels/ensemble_epilogue.h"

namespace mbpo_fast {
namespace cpu {

namespace {
constexpr int64_t kRows = 4;
constexpr int64_t kCols = 64;
}  // namespace

uint16_t bf16_round(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  bits += 0x7FFFu + ((bits >> 16) & 1u);  // round to nearest even (finite inputs)
  return static_cast<uint16_t>(bits >> 16);
}

void dense_portable(const float* x, int64_t ldx, int64_t rows, const float* w, const float* b,
                    int64_t k_dim, int64_t n, float* y, int64_t ldy, bool silu) {
  float acc[kRows][kCols];
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    const int64_t nr = std::min(kRows, rows - r0);
    for (int64_t j0 = 0; j0 < n; j0 += kCols) {
      const int64_t nc = std::min(kCols, n - j0);
      for (int64_t r = 0; r < nr; ++r) {
        for (int64_t j = 0; j < nc; ++j) acc[r][j] = b[j0 + j];
      }
      for (int64_t k = 0; k < k_dim; ++k) {
        const float* wk = w + k * n + j0;
        for (int64_t r = 0; r < nr; ++r) {
          const float xv = x[(r0 + r) * ldx + k];
          for (int64_t j = 0; j < nc; ++j) acc[r][j] += xv * wk[j];
        }
      }
      for (int64_t r = 0; r < nr; ++r) {
        float* yr = y + (r0 + r) * ldy + j0;
        if (silu) {
          for (int64_t j = 0; j < nc; ++j) yr[j] = kernels::silu(acc[r][j]);
        } else {
          for (int64_t j = 0; j < nc; ++j) yr[j] = acc[r][j];
        }
      }
    }
  }
}

void dense_bf16_portable(const float* x, int64_t ldx, int64_t rows, const uint16_t* w_packed,
                         const float* b, int64_t k_dim, int64_t n, float* y, int64_t ldy, bool silu) {
  auto widen = [](uint16_t h) {
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  };
  const int64_t ldw = bf16_cols_padded(n);
  float acc[kCols];
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    for (int64_t j0 = 0; j0 < n; j0 += kCols) {
      const int64_t nc = std::min(kCols, n - j0);
      for (int64_t j = 0; j < nc; ++j) acc[j] = b[j0 + j];
      for (int64_t k = 0; k < k_dim; ++k) {
        const float xv = widen(bf16_round(xr[k]));
        const uint16_t* wk = w_packed + ((k / 2) * ldw + j0) * 2 + (k & 1);
        for (int64_t j = 0; j < nc; ++j) acc[j] += xv * widen(wk[2 * j]);
      }
      float* yr = y + r * ldy + j0;
      for (int64_t j = 0; j < nc; ++j) yr[j] = silu ? kernels::silu(acc[j]) : acc[j];
    }
  }
}

void step_epilogue_portable(const float* head, int64_t ld, int64_t rows, const int64_t* idx,
                            const float* obs, int64_t obs_dim, const float* max_logvar,
                            const float* min_logvar, uint64_t seed, bool deterministic,
                            float* next_obs, float* reward, float* work) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row = idx[r];
    if (!deterministic) kernels::row_noise(seed, static_cast<uint64_t>(row), obs_dim + 1, work);
    kernels::step_row_epilogue(head + r * ld, obs + row * obs_dim, max_logvar, min_logvar, work,
                               deterministic, obs_dim, next_obs + row * obs_dim, reward + row);
  }
}

void predict_epilogue_portable(const float* head, int64_t ld, int64_t rows, int64_t out_dim,
                               const float* max_logvar, const float* min_logvar, float* mean,
                               float* var) {
  for (int64_t r = 0; r < rows; ++r) {
    kernels::predict_row_epilogue(head + r * ld, max_logvar, min_logvar, out_dim,
                                  mean ? mean + r * out_dim : nullptr, var ? var + r * out_dim : nullptr);
  }
}

}  // namespace cpu
}  // namespace mbpo_fast

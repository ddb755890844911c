// Index math of the ensemble step's row grouping, shared by the CPU step
// (csrc/cpu/ensemble.cpp) and the CUDA kernels (csrc/cuda/ensemble_step.cu):
//
//   1. member of row i: members[i] when given, else elites[member_choice(seed, i, K)];
//   2. rows are grouped by member: member e owns the sorted positions
//      [start_e, start_e + count_e), start_e = count_0 + ... + count_{e-1};
//   3. each member's positions are cut into tiles of `tile_rows`; tile t (numbered member
//      by member) is found by step_tile() from the counts alone, so a CUDA block can map
//      blockIdx.x to its tile with no host round trip (the grid is sized by max_step_tiles).
//
// The order of rows inside a member's range does not change any result (each row is
// computed independently, in a fixed arithmetic order): the CPU sorts stably, the GPU
// scatters with atomics.
#pragma once

#include <cstdint>

#include "kernels/ensemble_epilogue.h"
#include "mbpo_fast/common.h"

namespace mbpo_fast {
namespace kernels {

// Member that runs row `row`: members[row] when members is not null, else a uniform elite.
MBPO_HD int64_t step_member(uint64_t seed, uint64_t row, const int64_t* members, const int64_t* elites,
                            uint32_t num_elites) {
  return members != nullptr ? members[row] : elites[member_choice(seed, row, num_elites)];
}

// Tiles of a member that owns `count` rows.
MBPO_HD int64_t tiles_for(int64_t count, int64_t tile_rows) { return (count + tile_rows - 1) / tile_rows; }

// An upper bound of the tiles of any grouping of `batch` rows over `members` members:
// sum_e ceil(c_e / T) <= sum_e (c_e + T - 1) / T <= ceil(batch / T) + members.
MBPO_HD int64_t max_step_tiles(int64_t batch, int64_t members, int64_t tile_rows) {
  return tiles_for(batch, tile_rows) + members;
}

struct StepTile {
  int64_t member;  // -1: no such tile (block index past the last tile)
  int64_t first;   // first sorted position of the tile
  int64_t rows;    // rows in the tile (0 when member == -1)
};

// Tile number `tile` of the grouping with per-member row counts counts[0..E).
template <typename Count>
MBPO_HD StepTile step_tile(const Count* counts, int64_t E, int64_t tile_rows, int64_t tile) {
  int64_t start = 0, t0 = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t c = static_cast<int64_t>(counts[e]);
    const int64_t nt = tiles_for(c, tile_rows);
    if (tile < t0 + nt) {
      const int64_t first = start + (tile - t0) * tile_rows;
      const int64_t left = start + c - first;
      return StepTile{e, first, left < tile_rows ? left : tile_rows};
    }
    t0 += nt;
    start += c;
  }
  return StepTile{-1, 0, 0};
}

// Disagreement of one row: means of member m at mu_row[m * member_stride + j], j < out_dim.
//   (1 / out_dim) * sum_j sqrt( (1/M) sum_m (mu_mj - mean_m mu_mj)^2 ), reduced in double.
MBPO_HD float disagreement_row(const float* mu_row, int64_t member_stride, int64_t n_members, int64_t out_dim) {
  double total = 0.0;
  for (int64_t j = 0; j < out_dim; ++j) {
    double mu = 0.0;
    for (int64_t m = 0; m < n_members; ++m) mu += mu_row[m * member_stride + j];
    mu /= static_cast<double>(n_members);
    double ss = 0.0;
    for (int64_t m = 0; m < n_members; ++m) {
      const double d = mu_row[m * member_stride + j] - mu;
      ss += d * d;
    }
    total += sqrt(ss / static_cast<double>(n_members));
  }
  return static_cast<float>(total / static_cast<double>(out_dim));
}

// Issue 16's disagreement d of one row (rollout.h step 4): means of elite k at
// mu_row[k * member_stride + j], j < out_dim;
//   d = (1 / out_dim) * sum_j (1 / (K - 1)) sum_k (mu_kj - mean_k mu_kj)^2   (unbiased, as torch.var),
// reduced in double. The device rounds every product and sum as the host does (no FMA
// contraction), so the CPU and CUDA steps agree to the last bit. n_members >= 2.
MBPO_HD float unbiased_disagreement_row(const float* mu_row, int64_t member_stride, int64_t n_members,
                                        int64_t out_dim) {
  double total = 0.0;
  for (int64_t j = 0; j < out_dim; ++j) {
    double mu = 0.0;
    for (int64_t k = 0; k < n_members; ++k) mu += mu_row[k * member_stride + j];
    mu /= static_cast<double>(n_members);
    double ss = 0.0;
    for (int64_t k = 0; k < n_members; ++k) {
      const double dev = mu_row[k * member_stride + j] - mu;
#if defined(__CUDA_ARCH__)
      ss = __dadd_rn(ss, __dmul_rn(dev, dev));
#else
      ss += dev * dev;
#endif
    }
    total += ss / static_cast<double>(n_members - 1);
  }
  return static_cast<float>(total / static_cast<double>(out_dim));
}

}  // namespace kernels
}  // namespace mbpo_fast

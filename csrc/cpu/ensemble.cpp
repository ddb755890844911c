// CPU implementation of the fused ensemble inference (ensemble.h).
//
// step: choose a member per row (Philox) -> counting-sort the rows by member -> tiles of up
// to kTileRows rows of ONE member (smaller for small batches), claimed by the threads from a
// shared counter -> per tile (one thread): gather + normalize the inputs
// into a thread-local buffer, run every layer with the dense micro-kernel (the member's
// weights stream through the cache once per tile), then the per-row epilogue writes each
// row back to its original position. Small batches run inline on the calling thread (a
// thread wake-up costs more than their arithmetic).
#include "mbpo_fast/ensemble.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "cpu/ensemble_kernels.h"
#include "kernels/ensemble_epilogue.h"
#include "kernels/ensemble_grouping.h"
#include "mbpo_fast/parallel.h"
#include "mbpo_fast/rng.h"

namespace mbpo_fast {

namespace {

// Rows per tile: two activation buffers of 64 x 208 floats (106 KB) stay in L2 while a
// member's weights stream past; 64 = two 32-row AMX blocks with no padding rows.
constexpr int64_t kTileRows = 64;
// Below this many rows the whole call runs on the calling thread (measured: at 32 rows a
// second thread costs more to wake than it saves).
constexpr int64_t kParallelMinRows = 64;
// Smallest tile of a threaded step (smaller tiles waste the 6-row register blocks).
constexpr int64_t kMinTileRows = 16;

// ------------------------------------------------------------------ kernel selection

enum class Kernel : int { kAuto = 0, kAvx512 = 1, kPortable = 2 };

Kernel parse_kernel(const std::string& name) {
  if (name == "auto" || name.empty()) return Kernel::kAuto;
  if (name == "avx512") return Kernel::kAvx512;
  if (name == "portable") return Kernel::kPortable;
  throw InvalidArgument("kernel: expected 'auto', 'avx512' or 'portable', got '" + name + "'");
}

std::atomic<int>& kernel_setting() {
  static std::atomic<int> setting{[] {
    const char* env = std::getenv("MBPO_FAST_CPU_KERNEL");
    if (env == nullptr) return static_cast<int>(Kernel::kAuto);
    try {
      const Kernel k = parse_kernel(env);
      if (k == Kernel::kAvx512 && !cpu::dense_avx512_supported()) return static_cast<int>(Kernel::kPortable);
      return static_cast<int>(k);
    } catch (const InvalidArgument&) {
      return static_cast<int>(Kernel::kAuto);  // unknown value: ignore rather than abort at load time
    }
  }()};
  return setting;
}

// The micro-kernels of one call (chosen once per call, so a call never mixes kernels).
struct Kernels {
  cpu::DenseFn dense;
  cpu::DenseBf16Fn dense_bf16;
  cpu::StepEpilogueFn step_epilogue;
  cpu::PredictEpilogueFn predict_epilogue;
  bool avx512;
};

Kernels active_kernels() {
  const auto k = static_cast<Kernel>(kernel_setting().load(std::memory_order_relaxed));
  if (k == Kernel::kPortable || !cpu::dense_avx512_supported()) {
    return {&cpu::dense_portable, &cpu::dense_bf16_portable, &cpu::step_epilogue_portable,
            &cpu::predict_epilogue_portable, false};
  }
  const cpu::DenseBf16Fn bf16 =
      cpu::dense_bf16_avx512_supported() ? &cpu::dense_bf16_avx512 : &cpu::dense_bf16_portable;
  return {&cpu::dense_avx512, bf16, &cpu::step_epilogue_avx512, &cpu::predict_epilogue_avx512, true};
}

// ------------------------------------------------------------------ tile forward

// Per-thread activation buffers, grown on demand and reused across calls (no allocation
// on the hot path after the first call).
struct Scratch {
  std::vector<float> a, b;
  std::vector<float> extra;
  float* ensure(std::vector<float>& v, size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
  }
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

int64_t round_up16(int64_t n) { return (n + 15) / 16 * 16; }

// Runs member `e` on `rows` normalized inputs held in `x` (row stride ld); returns the
// buffer ([rows, ld]) holding the output layer (mean, raw logvar). `y` is the other buffer.
const float* forward_tile(const EnsembleView& v, int64_t e, float* x, float* y, int64_t rows, int64_t ld,
                          const Kernels& kern) {
  const bool bf16 = v.weights_bf16[0] != nullptr;
  for (int i = 0; i < v.num_layers; ++i) {
    const int64_t k = v.widths[i], n = v.widths[i + 1];
    const bool silu = i + 1 < v.num_layers;
    if (bf16) {
      const int64_t member_stride = cpu::bf16_pairs_padded(k) * cpu::bf16_cols_padded(n) * 2;
      kern.dense_bf16(x, ld, rows, v.weights_bf16[i] + e * member_stride, v.biases[i] + e * n, k, n, y, ld, silu);
    } else {
      kern.dense(x, ld, rows, v.weights[i] + e * k * n, v.biases[i] + e * n, k, n, y, ld, silu);
    }
    std::swap(x, y);
  }
  return x;
}

// x[r, :] = (concat(obs[row], act[row]) - mean) / std for the rows of `rows`.
template <typename RowOf>
void gather_normalized(const EnsembleView& v, const float* obs, const float* act, int64_t count, RowOf row_of,
                       float* x, int64_t ld) {
  const int64_t od = v.obs_dim, ad = v.act_dim;
  for (int64_t r = 0; r < count; ++r) {
    const int64_t row = row_of(r);
    const float* o = obs + row * od;
    const float* a = act + row * ad;
    float* xr = x + r * ld;
    for (int64_t c = 0; c < od; ++c) xr[c] = (o[c] - v.input_mean[c]) / v.input_std[c];
    for (int64_t c = 0; c < ad; ++c) xr[od + c] = (a[c] - v.input_mean[od + c]) / v.input_std[od + c];
  }
}

void run_tiles(int64_t num_tiles, int64_t batch, const std::function<void(int64_t, int64_t)>& fn) {
  if (batch < kParallelMinRows || num_tiles < 2) {
    fn(0, num_tiles);
  } else {
    parallel_for(num_tiles, 1, fn);
  }
}

// require() with the message built only on failure: validation runs on every call, and
// building strings eagerly was the largest cost of a single-row step.
#define MBPO_ENSEMBLE_REQUIRE(cond, message)      \
  do {                                            \
    if (!(cond)) throw InvalidArgument(message);  \
  } while (false)

void check_batch(int64_t batch, const char* op) {
  MBPO_ENSEMBLE_REQUIRE(batch >= 0, std::string(op) + ": batch must be >= 0, got " + std::to_string(batch));
}

// The grouping of a step (kernels/ensemble_grouping.h): the same index math as the CUDA
// kernels; only the order of rows inside a member differs (stable here, atomic there).
struct PlanBuffers {
  std::vector<int64_t> start, cursor, order, tile_member, tile_first, tile_rows;
};

void plan_into(const EnsembleView& v, int64_t batch, uint64_t seed, const int64_t* members, int64_t tile_rows,
               int64_t* chosen, PlanBuffers& p) {
  const int64_t E = v.ensemble_size;
  // 1. member of each row.
  const uint32_t K = static_cast<uint32_t>(v.num_elites);
  auto choose = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      chosen[i] = kernels::step_member(seed, static_cast<uint64_t>(i), members, v.elites, K);
    }
  };
  if (batch < 8192) choose(0, batch); else parallel_for(batch, 8192, choose);
  // 2. counting sort of the rows by member (stable: rows keep their order within a member).
  p.start.assign(static_cast<size_t>(E + 1), 0);
  for (int64_t i = 0; i < batch; ++i) ++p.start[static_cast<size_t>(chosen[i] + 1)];
  for (int64_t e = 0; e < E; ++e) p.start[e + 1] += p.start[e];
  p.order.resize(static_cast<size_t>(batch));
  p.cursor.assign(p.start.begin(), p.start.end() - 1);
  for (int64_t i = 0; i < batch; ++i) p.order[static_cast<size_t>(p.cursor[chosen[i]]++)] = i;
  // 3. tiles, numbered member by member (kernels::step_tile: what a CUDA block computes);
  //    the CPU step cuts its own per-thread tiles and passes tile_rows = 0 to skip this.
  if (tile_rows <= 0) return;
  for (int64_t e = 0; e < E; ++e) p.cursor[e] = p.start[e + 1] - p.start[e];  // counts
  const int64_t bound = kernels::max_step_tiles(batch, E, tile_rows);
  p.tile_member.clear();
  p.tile_first.clear();
  p.tile_rows.clear();
  for (int64_t t = 0; t < bound; ++t) {
    const kernels::StepTile tile = kernels::step_tile(p.cursor.data(), E, tile_rows, t);
    if (tile.member < 0) break;
    p.tile_member.push_back(tile.member);
    p.tile_first.push_back(tile.first);
    p.tile_rows.push_back(tile.rows);
  }
}

}  // namespace

// ------------------------------------------------------------------ view

int64_t EnsembleView::max_width() const {
  int64_t w = 0;
  for (int i = 0; i <= num_layers; ++i) w = std::max(w, widths[i]);
  return w;
}

void EnsembleView::validate(bool need_elites) const {
  MBPO_ENSEMBLE_REQUIRE(obs_dim >= 1, "ensemble: obs_dim must be >= 1, got " + std::to_string(obs_dim));
  MBPO_ENSEMBLE_REQUIRE(act_dim >= 0, "ensemble: act_dim must be >= 0, got " + std::to_string(act_dim));
  MBPO_ENSEMBLE_REQUIRE(ensemble_size >= 1, "ensemble: ensemble_size must be >= 1, got " + std::to_string(ensemble_size));
  MBPO_ENSEMBLE_REQUIRE(num_layers >= 1 && num_layers <= kEnsembleMaxLayers,
          "ensemble: num_layers must be in [1, " + std::to_string(kEnsembleMaxLayers) + "], got " +
              std::to_string(num_layers));
  MBPO_ENSEMBLE_REQUIRE(widths[0] == in_dim(), "ensemble: widths[0] must be obs_dim + act_dim = " + std::to_string(in_dim()) +
                                     ", got " + std::to_string(widths[0]));
  MBPO_ENSEMBLE_REQUIRE(widths[num_layers] == 2 * out_dim(), "ensemble: output width must be 2 * (obs_dim + 1) = " +
                                                   std::to_string(2 * out_dim()) + ", got " +
                                                   std::to_string(widths[num_layers]));
  for (int i = 0; i <= num_layers; ++i) {
    MBPO_ENSEMBLE_REQUIRE(widths[i] >= 1, "ensemble: widths[" + std::to_string(i) + "] must be >= 1, got " +
                                std::to_string(widths[i]));
  }
  MBPO_ENSEMBLE_REQUIRE(input_mean && input_std && max_logvar && min_logvar,
          "ensemble: input_mean, input_std, max_logvar and min_logvar must not be null");
  const bool bf16 = weights_bf16[0] != nullptr;
  for (int i = 0; i < num_layers; ++i) {
    MBPO_ENSEMBLE_REQUIRE((bf16 ? weights_bf16[i] != nullptr : weights[i] != nullptr) && biases[i], "ensemble: layer " + std::to_string(i) + " has a null weight or bias");
  }
  if (need_elites) {
    MBPO_ENSEMBLE_REQUIRE(elites != nullptr && num_elites >= 1,
            "ensemble: elites must hold at least one member index, got " + std::to_string(num_elites));
  }
  if (elites != nullptr) {
    for (int64_t k = 0; k < num_elites; ++k) {
      MBPO_ENSEMBLE_REQUIRE(elites[k] >= 0 && elites[k] < ensemble_size,
              "elites: entry " + std::to_string(k) + " = " + std::to_string(elites[k]) +
                  " is out of range [0, " + std::to_string(ensemble_size) + ")");
    }
  }
}

// ------------------------------------------------------------------ step

namespace {

// ensemble_step's body. With n_sample > 0 (members == nullptr, n_sample <=
// kStepSampleMax, n_sample <= batch), the first n_sample rows also go through every elite,
// appended to that elite's first tile (an elite without rows of its own gets a tile of just
// them), so each elite's weights are streamed once for both; sample_means receives
// [K, n_sample, out_dim] (the raw means of Δobs and reward).
void step_impl(const EnsembleView& v, const float* obs, const float* act, int64_t batch, uint64_t seed,
               bool deterministic, const int64_t* members, float* next_obs_out, float* reward_out,
               int64_t* members_out, int64_t n_sample, float* sample_means) {
  check_batch(batch, "ensemble_step");
  v.validate(members == nullptr);
  const int64_t E = v.ensemble_size;
  if (members != nullptr) {
    for (int64_t i = 0; i < batch; ++i) {
      MBPO_ENSEMBLE_REQUIRE(members[i] >= 0 && members[i] < E, "members: entry " + std::to_string(i) + " = " +
                                                      std::to_string(members[i]) + " is out of range [0, " +
                                                      std::to_string(E) + ")");
    }
  }
  if (batch == 0) return;
  MBPO_ENSEMBLE_REQUIRE(obs && act && next_obs_out && reward_out, "ensemble_step: null input or output pointer");

  // Index buffers of the calling thread, reused across calls (no allocation per call once
  // warm). The worker threads read them through the references below: naming a
  // thread_local inside the lambda would give each worker its own (empty) instance.
  thread_local std::vector<int64_t> tl_members;
  thread_local PlanBuffers tl_plan;
  PlanBuffers& plan = tl_plan;
  int64_t* chosen = members_out;
  if (chosen == nullptr) {
    tl_members.resize(static_cast<size_t>(batch));
    chosen = tl_members.data();
  }
  plan_into(v, batch, seed, members, /*tile_rows=*/0, chosen, plan);
  const int64_t* order = plan.order.data();

  const Kernels kern = active_kernels();
  const int64_t ld = round_up16(v.max_width());
  const int64_t out_dim = v.out_dim();
  // Tiles: each member's sorted rows cut into equal tiles of <= tile_rows rows, numbered
  // member by member. Threads claim tiles from a shared counter (dynamic scheduling), so
  // a thread that starts late (a slow wake-up, a core shared with another process) takes
  // fewer tiles instead of holding up the call. Small batches use smaller tiles so that
  // every thread gets several (B = 256 over 5 elites: 10 tiles of ~26 rows, not 5 of 51
  // split 2 + 3); large ones keep kTileRows (one pass of a member's weights per tile).
  const int threads = batch < kParallelMinRows ? 1 : std::max(1, num_threads());
  const int64_t tile_rows =
      std::clamp<int64_t>((batch + 4 * threads - 1) / (4 * threads), kMinTileRows, kTileRows);
  thread_local std::vector<int64_t> tl_tiles;  // (member, first, rows) triples
  std::vector<int64_t>& tiles = tl_tiles;
  tiles.clear();
  for (int64_t e = 0; e < v.ensemble_size; ++e) {
    const int64_t begin = plan.start[e], count = plan.start[e + 1] - begin;
    const int64_t n = (count + tile_rows - 1) / tile_rows;
    for (int64_t t = 0; t < n; ++t) {
      const int64_t first = begin + count * t / n;
      tiles.insert(tiles.end(), {e, first, begin + count * (t + 1) / n - first});
    }
  }
  // The sample rows ride on the first tile of each elite (elite index k, or -1 in tile_sample).
  thread_local std::vector<int64_t> tl_tile_sample;
  std::vector<int64_t>& tile_sample = tl_tile_sample;
  tile_sample.assign(tiles.size() / 3, -1);
  if (n_sample > 0) {
    for (int64_t k = 0; k < v.num_elites; ++k) {
      const int64_t e = v.elites[k];
      int64_t first_tile = -1;
      for (size_t t = 0; t < tile_sample.size(); ++t) {
        if (tiles[3 * t] == e && tile_sample[t] < 0) {
          first_tile = static_cast<int64_t>(t);
          break;
        }
      }
      if (first_tile < 0) {  // no rows of its own (or the elite is listed twice): a tile of the samples
        tiles.insert(tiles.end(), {e, 0, 0});
        tile_sample.push_back(k);
      } else {
        tile_sample[static_cast<size_t>(first_tile)] = k;
      }
    }
  }
  const int64_t num_tiles = static_cast<int64_t>(tiles.size() / 3);
  const int64_t* tile = tiles.data();
  const int64_t* tile_k = tile_sample.data();
  std::atomic<int64_t> next_tile{0};
  auto run_slots = [&](int64_t, int64_t) {
    Scratch& s = scratch();
    float* xa = s.ensure(s.a, static_cast<size_t>((kTileRows + kStepSampleMax) * ld));
    float* xb = s.ensure(s.b, static_cast<size_t>((kTileRows + kStepSampleMax) * ld));
    float* work = s.ensure(s.extra, static_cast<size_t>(2 * out_dim));
    for (int64_t t; (t = next_tile.fetch_add(1, std::memory_order_relaxed)) < num_tiles;) {
      const int64_t e = tile[3 * t], rows = tile[3 * t + 2];
      const int64_t* idx = order + tile[3 * t + 1];
      const int64_t k = tile_k[t];
      const int64_t extra = k >= 0 ? n_sample : 0;
      gather_normalized(v, obs, act, rows, [&](int64_t r) { return idx[r]; }, xa, ld);
      if (extra > 0) gather_normalized(v, obs, act, extra, [](int64_t r) { return r; }, xa + rows * ld, ld);
      const float* head = forward_tile(v, e, xa, xb, rows + extra, ld, kern);
      if (rows > 0) {
        kern.step_epilogue(head, ld, rows, idx, obs, v.obs_dim, v.max_logvar, v.min_logvar, seed, deterministic,
                           next_obs_out, reward_out, work);
      }
      for (int64_t j = 0; j < extra; ++j) {
        const float* h = head + (rows + j) * ld;
        std::copy(h, h + out_dim, sample_means + (k * n_sample + j) * out_dim);
      }
    }
  };
  if (threads == 1 || num_tiles < 2) {
    run_slots(0, 1);
  } else {
    parallel_for(std::min<int64_t>(threads, num_tiles), 1, run_slots);
  }
}

}  // namespace

void ensemble_step(const EnsembleView& v, const float* obs, const float* act, int64_t batch, uint64_t seed,
                   bool deterministic, const int64_t* members, float* next_obs_out, float* reward_out,
                   int64_t* members_out) {
  step_impl(v, obs, act, batch, seed, deterministic, members, next_obs_out, reward_out, members_out, 0, nullptr);
}

void ensemble_step_sample_disagreement(const EnsembleView& v, const float* obs, const float* act, int64_t batch,
                                       uint64_t seed, bool deterministic, float* next_obs_out, float* reward_out,
                                       int64_t n_sample, float* disagreement_out) {
  MBPO_ENSEMBLE_REQUIRE(n_sample >= 0 && n_sample <= kStepSampleMax && n_sample <= batch,
                        "n_sample: expected 0 <= n_sample <= min(batch, " + std::to_string(kStepSampleMax) +
                            "), got " + std::to_string(n_sample));
  MBPO_ENSEMBLE_REQUIRE(n_sample == 0 || disagreement_out != nullptr,
                        "ensemble_step_sample_disagreement: null disagreement output");
  v.validate(/*need_elites=*/true);
  const int64_t out_dim = v.out_dim(), K = v.num_elites;
  thread_local std::vector<float> tl_means;
  tl_means.resize(static_cast<size_t>(std::max<int64_t>(1, K * n_sample * out_dim)));
  step_impl(v, obs, act, batch, seed, deterministic, nullptr, next_obs_out, reward_out, nullptr, n_sample,
            tl_means.data());
  for (int64_t j = 0; j < n_sample; ++j) {
    disagreement_out[j] = kernels::disagreement_row(tl_means.data() + j * out_dim, n_sample * out_dim, K, out_dim);
  }
}

EnsembleStepPlan ensemble_step_plan(const EnsembleView& v, int64_t batch, uint64_t seed, const int64_t* members,
                                    int64_t tile_rows) {
  check_batch(batch, "ensemble_step_plan");
  MBPO_ENSEMBLE_REQUIRE(tile_rows >= 1, "tile_rows: must be >= 1, got " + std::to_string(tile_rows));
  v.validate(members == nullptr);
  if (members != nullptr) {
    for (int64_t i = 0; i < batch; ++i) {
      MBPO_ENSEMBLE_REQUIRE(members[i] >= 0 && members[i] < v.ensemble_size,
                            "members: entry " + std::to_string(i) + " = " + std::to_string(members[i]) +
                                " is out of range [0, " + std::to_string(v.ensemble_size) + ")");
    }
  }
  EnsembleStepPlan out;
  out.member.resize(static_cast<size_t>(batch));
  PlanBuffers p;
  plan_into(v, batch, seed, members, tile_rows, out.member.data(), p);
  out.start = std::move(p.start);
  out.order = std::move(p.order);
  out.tile_member = std::move(p.tile_member);
  out.tile_first = std::move(p.tile_first);
  out.tile_rows = std::move(p.tile_rows);
  return out;
}

// ------------------------------------------------------------------ predict

void ensemble_predict(const EnsembleView& v, const float* obs, const float* act, int64_t batch, float* mean_out,
                      float* var_out) {
  check_batch(batch, "ensemble_predict");
  v.validate(false);
  if (batch == 0) return;
  MBPO_ENSEMBLE_REQUIRE(obs && act, "ensemble_predict: null input pointer");
  const int64_t E = v.ensemble_size, out_dim = v.out_dim();
  const int64_t tiles_per_member = (batch + kTileRows - 1) / kTileRows;
  const Kernels kern = active_kernels();
  const int64_t ld = round_up16(v.max_width());
  run_tiles(E * tiles_per_member, batch * E, [&](int64_t t0, int64_t t1) {
    Scratch& s = scratch();
    float* xa = s.ensure(s.a, static_cast<size_t>(kTileRows * ld));
    float* xb = s.ensure(s.b, static_cast<size_t>(kTileRows * ld));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t e = t / tiles_per_member;
      const int64_t row0 = (t % tiles_per_member) * kTileRows;
      const int64_t rows = std::min(kTileRows, batch - row0);
      gather_normalized(v, obs, act, rows, [&](int64_t r) { return row0 + r; }, xa, ld);
      const float* head = forward_tile(v, e, xa, xb, rows, ld, kern);
      const int64_t o = (e * batch + row0) * out_dim;
      kern.predict_epilogue(head, ld, rows, out_dim, v.max_logvar, v.min_logvar, mean_out ? mean_out + o : nullptr,
                            var_out ? var_out + o : nullptr);
    }
  });
}

// ------------------------------------------------------------------ every member on every row

namespace {

// Runs members[0 .. n_members) over each kTileRows-row tile of the batch (threads split the
// tiles): per tile, begin_tile(row0, rows, extra), then per_member(m, head, ld, row0, rows,
// extra) right after member m's forward (head: the tile's output rows, stride ld), then
// end_tile(row0, rows, extra). `extra`: `extra_floats` floats of the thread's scratch.
template <typename BeginTile, typename PerMember, typename EndTile>
void members_over_tiles(const EnsembleView& v, const float* obs, const float* act, int64_t batch,
                        const int64_t* members, int64_t n_members, size_t extra_floats, BeginTile&& begin_tile,
                        PerMember&& per_member, EndTile&& end_tile) {
  const int64_t num_tiles = (batch + kTileRows - 1) / kTileRows;
  const Kernels kern = active_kernels();
  const int64_t ld = round_up16(v.max_width());
  run_tiles(num_tiles, batch * n_members, [&](int64_t t0, int64_t t1) {
    Scratch& s = scratch();
    float* xa = s.ensure(s.a, static_cast<size_t>(kTileRows * ld));
    float* xb = s.ensure(s.b, static_cast<size_t>(kTileRows * ld));
    float* extra = s.ensure(s.extra, extra_floats);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t row0 = t * kTileRows;
      const int64_t rows = std::min(kTileRows, batch - row0);
      begin_tile(row0, rows, extra);
      for (int64_t m = 0; m < n_members; ++m) {
        gather_normalized(v, obs, act, rows, [&](int64_t r) { return row0 + r; }, xa, ld);
        per_member(m, forward_tile(v, members[m], xa, xb, rows, ld, kern), ld, row0, rows, extra);
      }
      end_tile(row0, rows, extra);
    }
  });
}

}  // namespace

// ------------------------------------------------------------------ disagreement

void ensemble_disagreement(const EnsembleView& v, const float* obs, const float* act, int64_t batch,
                           const int64_t* members, int64_t n_members, float* out) {
  check_batch(batch, "ensemble_disagreement");
  v.validate(members == nullptr);
  if (members == nullptr) {
    members = v.elites;
    n_members = v.num_elites;
  }
  MBPO_ENSEMBLE_REQUIRE(n_members >= 1, "members: expected at least one member, got " + std::to_string(n_members));
  for (int64_t m = 0; m < n_members; ++m) {
    MBPO_ENSEMBLE_REQUIRE(members[m] >= 0 && members[m] < v.ensemble_size,
            "members: entry " + std::to_string(m) + " = " + std::to_string(members[m]) + " is out of range [0, " +
                std::to_string(v.ensemble_size) + ")");
  }
  if (batch == 0) return;
  MBPO_ENSEMBLE_REQUIRE(obs && act && out, "ensemble_disagreement: null input or output pointer");
  const int64_t out_dim = v.out_dim();
  // extra = means[m, r, j] of the tile
  members_over_tiles(
      v, obs, act, batch, members, n_members, static_cast<size_t>(n_members * kTileRows * out_dim),
      [](int64_t, int64_t, float*) {},
      [&](int64_t m, const float* head, int64_t ld, int64_t, int64_t rows, float* means) {
        for (int64_t r = 0; r < rows; ++r) {
          std::copy(head + r * ld, head + r * ld + out_dim, means + (m * kTileRows + r) * out_dim);
        }
      },
      [&](int64_t row0, int64_t rows, float* means) {
        for (int64_t r = 0; r < rows; ++r) {
          out[row0 + r] = kernels::disagreement_row(means + r * out_dim, kTileRows * out_dim, n_members, out_dim);
        }
      });
}

// ------------------------------------------------------------------ step with uncertainty

void ensemble_step_uncertainty(const EnsembleView& v, const float* obs, const float* act, int64_t batch,
                               uint64_t seed, bool deterministic, float* next_obs_out, float* reward_out,
                               float* disagreement_out) {
  check_batch(batch, "ensemble_step_uncertainty");
  v.validate(/*need_elites=*/true);
  MBPO_ENSEMBLE_REQUIRE(v.num_elites >= 2, "elites: the disagreement d (unbiased variance across the elites) "
                                           "needs at least 2 elites, got " + std::to_string(v.num_elites));
  if (batch == 0) return;
  MBPO_ENSEMBLE_REQUIRE(obs && act && next_obs_out && reward_out && disagreement_out,
                        "ensemble_step_uncertainty: null input or output pointer");
  const int64_t od = v.obs_dim, out_dim = v.out_dim(), K = v.num_elites;
  const uint32_t k32 = static_cast<uint32_t>(K);
  const Kernels kern = active_kernels();
  // extra = means[k, r, j] (j < obs_dim) of the tile, then the epilogue's work area. choice:
  // the member (index into the elites) of each row of the tile; a thread_local named inside
  // the lambdas, so each worker uses its own for the tiles it runs.
  thread_local int64_t choice[kTileRows];
  members_over_tiles(
      v, obs, act, batch, v.elites, K, static_cast<size_t>(K * kTileRows * od + 2 * out_dim),
      [&](int64_t row0, int64_t rows, float*) {
        for (int64_t r = 0; r < rows; ++r) choice[r] = kernels::member_choice(seed, static_cast<uint64_t>(row0 + r), k32);
      },
      [&](int64_t k, const float* head, int64_t ld, int64_t row0, int64_t rows, float* means) {
        float* work = means + K * kTileRows * od;
        for (int64_t r = 0; r < rows; ++r) {
          std::copy(head + r * ld, head + r * ld + od, means + (k * kTileRows + r) * od);
          if (choice[r] == k) {  // the sampled transition, from this same forward
            const int64_t row = row0 + r;
            kern.step_epilogue(head + r * ld, ld, 1, &row, obs, od, v.max_logvar, v.min_logvar, seed, deterministic,
                               next_obs_out, reward_out, work);
          }
        }
      },
      [&](int64_t row0, int64_t rows, const float* means) {
        for (int64_t r = 0; r < rows; ++r) {
          disagreement_out[row0 + r] = kernels::unbiased_disagreement_row(means + r * od, kTileRows * od, K, od);
        }
      });
}

// ------------------------------------------------------------------ bf16 packing

void ensemble_pack_bf16(const float* w, int64_t E, int64_t in, int64_t out, uint16_t* packed) {
  MBPO_ENSEMBLE_REQUIRE(E >= 1 && in >= 1 && out >= 1, "ensemble_pack_bf16: dimensions must be >= 1");
  const int64_t pairs = cpu::bf16_pairs_padded(in), cols = cpu::bf16_cols_padded(out);
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t p = 0; p < pairs; ++p) {
      for (int64_t j = 0; j < cols; ++j) {
        for (int64_t t = 0; t < 2; ++t) {
          const int64_t k = 2 * p + t;
          packed[((e * pairs + p) * cols + j) * 2 + t] =
              k < in && j < out ? cpu::bf16_round(w[(e * in + k) * out + j]) : 0;
        }
      }
    }
  }
}

bool ensemble_bf16_native() {
  return active_kernels().dense_bf16 == &cpu::dense_bf16_avx512 && cpu::dense_bf16_avx512_supported();
}

bool ensemble_bf16_amx() { return ensemble_bf16_native() && cpu::dense_bf16_amx_supported(); }

// ------------------------------------------------------------------ kernel selection

void ensemble_set_kernel(const std::string& name) {
  const Kernel k = parse_kernel(name);
  require(k != Kernel::kAvx512 || cpu::dense_avx512_supported(),
          "kernel: 'avx512' requested but this CPU/build does not support AVX-512");
  kernel_setting().store(static_cast<int>(k));
}

std::string ensemble_kernel() { return active_kernels().avx512 ? "avx512" : "portable"; }

bool ensemble_avx512_available() { return cpu::dense_avx512_supported(); }

}  // namespace mbpo_fast

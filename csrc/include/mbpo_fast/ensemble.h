// Fused inference of a probabilistic ensemble dynamics model (MBPO's model), CPU.
//
// Model (DESIGN §3): x = concat(obs, act) [B, in], in = obs_dim + act_dim, normalized
// (x - input_mean) / input_std; num_layers linear layers h = h @ W[e] + b[e] with
// W[e] [in_i, out_i] row-major (layers.{i}.weight [E, in_i, out_i]), SiLU after every
// layer but the last; the last has width 2 * (obs_dim + 1): mean (Δobs, reward LAST),
// then raw logvar, soft-clamped between min_logvar and max_logvar (kernels/ensemble_epilogue.h).
//
// The weights are BORROWED: an EnsembleView is a bag of raw pointers that the entry
// points read during the call and never keep. No Python, no allocation the caller sees.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mbpo_fast/common.h"

namespace mbpo_fast {

// At most this many linear layers (hidden + output): keeps the view a flat struct.
constexpr int kEnsembleMaxLayers = 16;

struct EnsembleView {
  int64_t obs_dim = 0;
  int64_t act_dim = 0;
  int64_t ensemble_size = 0;  // E
  int num_layers = 0;         // linear layers, hidden + output (>= 1)
  // widths[0] = obs_dim + act_dim, widths[i + 1] = output width of layer i,
  // widths[num_layers] = 2 * (obs_dim + 1).
  int64_t widths[kEnsembleMaxLayers + 1] = {};
  const float* input_mean = nullptr;  // [in]
  const float* input_std = nullptr;   // [in], > 0
  const float* weights[kEnsembleMaxLayers] = {};  // [E, widths[i], widths[i + 1]], C-contiguous
  const float* biases[kEnsembleMaxLayers] = {};   // [E, widths[i + 1]]
  const float* max_logvar = nullptr;  // [obs_dim + 1]
  const float* min_logvar = nullptr;  // [obs_dim + 1]
  // Optional bf16 weights (ensemble_pack_bf16): when weights_bf16[0] is set, every layer
  // uses them instead of `weights` (layout: ensemble_pack_bf16).
  const uint16_t* weights_bf16[kEnsembleMaxLayers] = {};
  const int64_t* elites = nullptr;    // [num_elites], each in [0, E); may be null for predict
  int64_t num_elites = 0;

  int64_t in_dim() const { return obs_dim + act_dim; }
  int64_t out_dim() const { return obs_dim + 1; }  // Δobs and reward
  int64_t max_width() const;

  // Throws InvalidArgument naming the first inconsistent field (dims, widths, null
  // pointers, elite indices out of range). `need_elites`: step/disagreement defaults.
  void validate(bool need_elites) const;
};

// One sampled transition per row. For row i the member is members[i] (when members is not
// null; each must be in [0, E)) or elites[random_index(seed, kStreamMemberChoice, i, K)].
// Only that member is evaluated. Noise of output j (0..obs_dim) is
// random_normal(seed, kStreamModelNoise, i * (obs_dim + 1) + j); deterministic: no noise.
//   obs [batch, obs_dim], act [batch, act_dim] -> next_obs_out [batch, obs_dim],
//   reward_out [batch], members_out [batch] (may be null).
// Results do not depend on the thread count or on which kernel (AVX-512 / portable) runs
// beyond float rounding; member choices never do.
void ensemble_step(const EnsembleView& view, const float* obs, const float* act, int64_t batch,
                   uint64_t seed, bool deterministic, const int64_t* members, float* next_obs_out,
                   float* reward_out, int64_t* members_out);

// ensemble_step with the elites' disagreement on a sample of its rows, from the same weight
// pass: the first n_sample rows (0 <= n_sample <= min(batch, kStepSampleMax)) also run
// through every elite, riding on that elite's first tile, and disagreement_out[j] is
// ensemble_disagreement(row j) over the elites. The step's own outputs equal ensemble_step's
// (same members and noise); the rollout's default disagreement statistic uses this so that
// measuring costs a few rows of arithmetic instead of another pass over the elites' weights.
constexpr int64_t kStepSampleMax = 16;
void ensemble_step_sample_disagreement(const EnsembleView& view, const float* obs, const float* act,
                                       int64_t batch, uint64_t seed, bool deterministic, float* next_obs_out,
                                       float* reward_out, int64_t n_sample, float* disagreement_out);

// The row grouping ensemble_step uses (CPU and CUDA share its index math,
// csrc/kernels/ensemble_grouping.h): member[i] of each row; member e owns the sorted
// positions [start[e], start[e + 1]); order[p] is the original row at sorted position p
// (stable); tiles of at most tile_rows rows of one member, numbered member by member:
// tile t = (tile_member[t], tile_first[t] (a sorted position), tile_rows[t]). The CUDA step
// launches with tile_rows = kCudaEnsembleTileRows (cuda_ops.h) and maps block t to tile t.
struct EnsembleStepPlan {
  std::vector<int64_t> member, start, order, tile_member, tile_first, tile_rows;
};
EnsembleStepPlan ensemble_step_plan(const EnsembleView& view, int64_t batch, uint64_t seed, const int64_t* members,
                                    int64_t tile_rows);

// Every member on every row: mean_out, var_out [E, batch, obs_dim + 1] (Δobs, reward),
// var = exp(soft-clamped logvar). Either output may be null (then it is not written).
void ensemble_predict(const EnsembleView& view, const float* obs, const float* act, int64_t batch,
                      float* mean_out, float* var_out);

// Disagreement of the members `members` [n_members] (null: the elites) on each row:
//   out[i] = (1 / (obs_dim + 1)) * sum_j sqrt( (1/M) sum_m (mu_mj - mean_m mu_mj)^2 )
// i.e. the population standard deviation across members of the predicted means, averaged
// over the outputs (Δobs and reward). Reduced in double. out [batch].
void ensemble_disagreement(const EnsembleView& view, const float* obs, const float* act,
                           int64_t batch, const int64_t* members, int64_t n_members, float* out);

// The rollout step with the ensemble's uncertainty (issue 16), computed WITHOUT running any
// member twice: every elite runs once on every row; the chosen member's output of that same
// pass gives the sampled transition, bit-for-bit the rule of ensemble_step (members == null:
// member elites[random_index(seed, kStreamMemberChoice, i, K)], noise random_normal(seed,
// kStreamModelNoise, i * (obs_dim + 1) + j)), and all the elites' means give
//   disagreement_out[i] = d(s_i, a_i) = (1 / obs_dim) * sum_{j < obs_dim} var_k(mu_kj)
// the UNBIASED variance (divisor K - 1, as torch.var) across the K elites of the predicted mean
// next state (= of the mean Δobs), averaged over the observation dimensions only (not the
// reward). Reduced in double, stored as float. Needs K = num_elites >= 2 (InvalidArgument
// otherwise). Costs K member forwards per row instead of one.
//   obs [batch, obs_dim], act [batch, act_dim] -> next_obs_out [batch, obs_dim],
//   reward_out [batch], disagreement_out [batch].
void ensemble_step_uncertainty(const EnsembleView& view, const float* obs, const float* act, int64_t batch,
                               uint64_t seed, bool deterministic, float* next_obs_out, float* reward_out,
                               float* disagreement_out);

// Packs float32 weights [E, in, out] into the bf16 layout of EnsembleView::weights_bf16,
// [E, P, C, 2] with P = ceil(ceil(in / 2) / 16) * 16 and C = ceil(out / 16) * 16:
// packed[e, p, j, t] = bf16(w[e, 2p + t, j]) (round to nearest even), 0 in the padding.
// The (k pair, column) interleave is the VNNI layout that vdpbf16ps and AMX tiles read.
void ensemble_pack_bf16(const float* w, int64_t E, int64_t in, int64_t out, uint16_t* packed);
// Whether the bf16 weights run on the AVX512_BF16 instructions (otherwise: a portable
// emulation with the same rounding, much slower).
bool ensemble_bf16_native();
// Whether tiles of >= 16 rows with bf16 weights use AMX (Sapphire Rapids+; MBPO_FAST_AMX=0
// turns it off).
bool ensemble_bf16_amx();

// Kernel selection (for tests and benchmarks): "auto" (AVX-512 when the CPU has it),
// "avx512" (throws InvalidArgument when unsupported) or "portable". The environment
// variable MBPO_FAST_CPU_KERNEL sets the initial value.
void ensemble_set_kernel(const std::string& name);
// The kernel the next call will use: "avx512" or "portable".
std::string ensemble_kernel();
// Whether this CPU and build can run the AVX-512 kernel.
bool ensemble_avx512_available();

}  // namespace mbpo_fast

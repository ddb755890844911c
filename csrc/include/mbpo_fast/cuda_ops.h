// Device (CUDA) versions of the ensemble ops and a device-resident replay pool, declared
// without any CUDA header: raw DEVICE pointers and an opaque stream (`void*`, a
// cudaStream_t; nullptr = the legacy default stream). Every call is asynchronous on that
// stream unless documented otherwise. When the library is built without CUDA these
// functions exist and throw std::runtime_error (csrc/cpu/cuda_absent.cpp).
//
// Errors: invalid arguments throw InvalidArgument (common.h) before anything is launched;
// a failing CUDA call throws std::runtime_error naming the call, the file and the line.
//
// Arithmetic (csrc/cuda/ensemble_step.cu): float32 FMA on the CUDA cores, bias first then
// k = 0..K-1, the same order as the CPU kernels; SiLU, soft clamp, Philox noise and
// obs + Δobs run the MBPO_HD element bodies of csrc/kernels/ensemble_epilogue.h that the
// CPU also runs. Not tensor cores (WMMA/mma): their float32 inputs are rounded to tf32
// (10-bit mantissa) or bf16, a relative error ~1e-3 per product that breaks the 1e-5
// parity with the CPU backend, and MBPO's batches are small (a tile of 32 rows of one
// member) so the matrix units would idle on the gather and epilogue anyway.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "mbpo_fast/actor.h"
#include "mbpo_fast/ensemble.h"
#include "mbpo_fast/planner.h"
#include "mbpo_fast/replay_pool.h"
#include "mbpo_fast/rollout.h"
#include "mbpo_fast/termination.h"
#include "mbpo_fast/termination_model.h"

namespace mbpo_fast {

namespace cuda_detail {
struct RolloutPoolAccess;
}

// Rows of one member a CUDA block processes (the tile_rows of ensemble_step_plan).
constexpr int64_t kCudaEnsembleTileRows = 32;
// Largest ensemble (E) and number of elites / disagreement members the CUDA ops accept
// (they travel by value in the kernel parameters).
constexpr int64_t kCudaMaxMembers = 32;

// Bytes of device workspace cuda_ensemble_step needs for `batch` rows of an ensemble of
// `ensemble_size` members (member per row, sorted order, counts; 256-byte aligned pieces).
size_t cuda_ensemble_step_workspace_bytes(int64_t batch, int64_t ensemble_size);
// Bytes of device workspace cuda_ensemble_disagreement needs (the members' means).
size_t cuda_ensemble_disagreement_workspace_bytes(int64_t batch, int64_t n_members, int64_t obs_dim);

// ensemble_step (ensemble.h) on the device. `view`: every array pointer is a DEVICE pointer
// (input_mean, input_std, weights, biases, max/min_logvar) EXCEPT view.elites, a host array
// (K <= kCudaMaxMembers) passed to the kernels by value. bf16 weights are not supported.
// obs [batch, obs_dim], act [batch, act_dim], members (null: elites by Philox; else
// int64 [batch], each in [0, E): validate them before the call, an out-of-range entry
// yields NaN outputs and member -1 for that row, never an out-of-bounds read),
// next_obs_out [batch, obs_dim], reward_out [batch], members_out int64 [batch] (may be
// null), workspace >= cuda_ensemble_step_workspace_bytes(batch, E) bytes: all device.
// Launches: one memset and three kernels (choose+count, scatter, fused MLP+epilogue); all
// layers and the epilogue run in the one fused launch, whatever the depth.
void cuda_ensemble_step(const EnsembleView& view, const float* obs, const float* act, int64_t batch,
                        uint64_t seed, bool deterministic, const int64_t* members, float* next_obs_out,
                        float* reward_out, int64_t* members_out, void* workspace, size_t workspace_bytes,
                        void* cuda_stream);

// ensemble_predict on the device (one launch): mean_out, var_out [E, batch, obs_dim + 1]
// (either may be null). view as for cuda_ensemble_step (elites unused).
void cuda_ensemble_predict(const EnsembleView& view, const float* obs, const float* act, int64_t batch,
                           float* mean_out, float* var_out, void* cuda_stream);

// ensemble_disagreement on the device (two launches: the members' means, then the per-row
// reduction in double, kernels::disagreement_row). members: HOST int64 [n_members]
// (null: view.elites), n_members <= kCudaMaxMembers. out [batch] and workspace: device.
void cuda_ensemble_disagreement(const EnsembleView& view, const float* obs, const float* act, int64_t batch,
                                const int64_t* members, int64_t n_members, float* out, void* workspace,
                                size_t workspace_bytes, void* cuda_stream);

// ensemble_step_uncertainty (ensemble.h, issue 16) on the device: every elite runs ONCE on every
// row (two launches: the elites' forwards, a 2-D grid of row tiles x elites whose chosen-elite
// blocks also write the sampled transition; then the per-row reduction), so no member runs
// twice. The transition equals cuda_ensemble_step's (same member choice and Philox noise);
// disagreement_out[i] = d = mean over the obs dims of the unbiased variance across the K elites
// of their predicted mean next state, reduced in double. Needs K = num_elites >= 2
// (InvalidArgument otherwise). obs, act, outputs and workspace (>=
// cuda_ensemble_step_uncertainty_workspace_bytes: the elites' means) are device arrays.
size_t cuda_ensemble_step_uncertainty_workspace_bytes(int64_t batch, int64_t num_elites, int64_t obs_dim);
void cuda_ensemble_step_uncertainty(const EnsembleView& view, const float* obs, const float* act, int64_t batch,
                                    uint64_t seed, bool deterministic, float* next_obs_out, float* reward_out,
                                    float* disagreement_out, void* workspace, size_t workspace_bytes,
                                    void* cuda_stream);

// termination_mlp (termination_model.h) on the device: `view` holds DEVICE pointers (weights,
// biases, input_mean, input_std); obs, act, next_obs, out [n] (0/1) and logits_out [n] (may be
// null) are device arrays. One launch; the same float32 arithmetic order as the CPU loop
// (bias, then k = 0..K-1, SiLU x / (1 + exp(-x))), so logits agree to float rounding.
void cuda_termination_mlp(const TerminationMLPView& view, const float* obs, const float* act, const float* next_obs,
                          int64_t n, uint8_t* out, float* logits_out, void* cuda_stream);

// A ReplayPool (replay_pool.h) whose rows live in device memory: the same record layout,
// FIFO semantics, Philox draws (row = random_index(seed, kStreamPoolSample,
// rng_counter + k, size)) and counters as the CPU pool, so a CPU and a device pool fed the
// same rows sample the same rows. Sizes and counters live on the host (no sync to read
// them). All data pointers are device pointers; calls are asynchronous on `cuda_stream`
// except add_batch, which waits for its validation (one small device-to-host copy) so that
// a batch with a NaN/Inf or a terminated value > 1 raises and leaves the pool unchanged.
// Not thread-safe (the Python binding serializes calls per pool).
class CudaReplayPool {
 public:
  // Allocates capacity records on the current CUDA device. capacity, obs_dim, act_dim >= 1.
  CudaReplayPool(int64_t capacity, int64_t obs_dim, int64_t act_dim, uint64_t seed = 0);
  ~CudaReplayPool();
  CudaReplayPool(CudaReplayPool&& other) noexcept;
  CudaReplayPool& operator=(CudaReplayPool&& other) noexcept;
  CudaReplayPool(const CudaReplayPool&) = delete;
  CudaReplayPool& operator=(const CudaReplayPool&) = delete;

  int64_t size() const noexcept { return size_; }
  int64_t capacity() const noexcept { return capacity_; }
  int64_t obs_dim() const noexcept { return obs_dim_; }
  int64_t act_dim() const noexcept { return act_dim_; }
  int64_t write_pos() const noexcept { return write_pos_; }
  uint64_t seed() const noexcept { return seed_; }
  uint64_t rng_counter() const noexcept { return rng_counter_; }
  int device() const noexcept { return device_; }
  int64_t record_floats() const noexcept { return 2 * obs_dim_ + act_dim_ + 1; }
  int64_t nbytes() const noexcept { return capacity_ * (4 * record_floats() + 1); }

  // Appends n rows (device arrays; term uint8/bool 0 or 1); n > capacity keeps the last
  // capacity rows. Synchronizes `cuda_stream` once (validation).
  void add_batch(const float* obs, const float* act, const float* rew, const float* next_obs,
                 const uint8_t* term, int64_t n, void* cuda_stream);
  // n draws into device outputs (any may be null); rng_counter += n. Empty pool and n > 0:
  // InvalidArgument.
  void sample(int64_t n, float* obs, float* act, float* rew, float* next_obs, uint8_t* term,
              void* cuda_stream);
  // Every stored row, oldest first, into device outputs sized [size(), dim].
  void transitions(float* obs, float* act, float* rew, float* next_obs, uint8_t* term,
                   void* cuda_stream) const;
  void clear() noexcept { size_ = 0; write_pos_ = 0; }
  // Changes the capacity (>= 1), keeping the newest min(size, new_capacity) rows in order from
  // slot 0 (as ReplayPool::resize); keeps seed and rng_counter. Allocates the new storage
  // first (a failure leaves the pool unchanged), copies on `cuda_stream`, then frees the old
  // storage (cudaFree waits for the copies).
  void resize(int64_t new_capacity, void* cuda_stream);

  // Copies logical rows rows[0..n) (a DEVICE int64 array) into device outputs (any may be
  // null), like ReplayPool::gather. Validate the rows first (the Python binding does, with one
  // sync): an entry outside [0, size()) yields NaN floats and terminated 0 for that output row,
  // never an out-of-bounds read. Asynchronous on cuda_stream.
  void gather(const int64_t* rows, int64_t n, float* obs, float* act, float* rew, float* next_obs, uint8_t* term,
              void* cuda_stream) const;

  // The pool as a CPU ReplayPool: the same rows in the same slots, write position, seed and
  // rng_counter (one device-to-host copy of the used slots, then a sync of cuda_stream).
  ReplayPool to_host(void* cuda_stream) const;
  // A device pool (on the current device) holding `pool`'s rows and state; syncs cuda_stream.
  static CudaReplayPool from_host(const ReplayPool& pool, void* cuda_stream);
  // save / load go through the host with ReplayPool::save / ReplayPool::load, so the file
  // format is the CPU pool's and files are interchangeable between CPU and device pools.
  void save(const std::string& path, void* cuda_stream) const { to_host(cuda_stream).save(path); }
  static CudaReplayPool load(const std::string& path, void* cuda_stream) {
    return from_host(ReplayPool::load(path), cuda_stream);
  }

  // Device storage (records of record_floats() floats; terminated bytes), for zero-copy use.
  const float* record_data() const noexcept { return rec_; }
  const uint8_t* terminated_data() const noexcept { return term_; }

  // The device rollout (rollout.cu) appends to the model pool's storage and advances its ring.
  friend struct cuda_detail::RolloutPoolAccess;
  friend void cuda_sample_mixed(CudaReplayPool& real, CudaReplayPool& model, int64_t batch_size,
                                double real_ratio, int64_t num_batches, float* obs, float* act,
                                float* rew, float* next_obs, uint8_t* term, void* cuda_stream);

 private:
  void release() noexcept;
  int64_t capacity_ = 0, obs_dim_ = 0, act_dim_ = 0;
  int64_t size_ = 0, write_pos_ = 0;
  uint64_t seed_ = 0, rng_counter_ = 0;
  int device_ = -1;
  float* rec_ = nullptr;
  uint8_t* term_ = nullptr;
  int32_t* flags_ = nullptr;  // validation results of add_batch (device)
};

// sample_mixed (replay_pool.h) on two device pools: the same draws and counter updates as
// the CPU version; outputs [num_batches * batch_size, dim] on the device.
void cuda_sample_mixed(CudaReplayPool& real, CudaReplayPool& model, int64_t batch_size, double real_ratio,
                       int64_t num_batches, float* obs, float* act, float* rew, float* next_obs,
                       uint8_t* term, void* cuda_stream);

// branched_rollout (rollout.h) entirely on the device, with a built-in termination: the same
// start states, actions (Philox policy noise), members, model noise, termination, dropping of
// non-finite rows and order of the appended transitions as the CPU engine, so the model pool
// ends up with the same rows (values to float rounding). No host round trip per step: the
// alive count lives on the device; one sync at the end reads the statistics back.
// actor: weights/biases DEVICE pointers ([in_i, out_i] row-major), action_scale/bias/low/high
// HOST arrays (act_dim <= 32). model: as cuda_ensemble_step (device pointers, host elites).
// Pools on the same device; they may be the same pool. mean_disagreement is NaN (not
// computed on the device yet); custom termination callbacks are CPU-only.
//
// `uncertainty` (rollout.h step 4, default off: then exactly the plain device rollout): the
// adaptive stop (fixed threshold, or the quantile of d over step 0's rows: a device radix sort,
// no host round trip) and the reward penalty r - uncertainty_penalty * sqrt(d), with d from
// the uncertainty step above (every elite once per alive row; needs >= 2 elites). Check, then
// store: a row with d > threshold is not stored and stops; a non-finite d drops the row
// (nonfinite). Statistics as the CPU engine: num_stopped, frac_stopped, mean_uncertainty,
// mean_penalty, disagreement_threshold.
RolloutStats cuda_branched_rollout(const ActorView& actor, const EnsembleView& model, TerminationId termination,
                                   const CudaReplayPool& real, CudaReplayPool& model_pool, int64_t num_starts,
                                   int64_t horizon, uint64_t seed, void* cuda_stream,
                                   const RolloutUncertainty& uncertainty = {});
// Same with a learned termination (termination_model.h) run on the device at every step:
// `termination` holds DEVICE pointers and must match the model's obs/act dims.
RolloutStats cuda_branched_rollout(const ActorView& actor, const EnsembleView& model,
                                   const TerminationMLPView& termination, const CudaReplayPool& real,
                                   CudaReplayPool& model_pool, int64_t num_starts, int64_t horizon, uint64_t seed,
                                   void* cuda_stream, const RolloutUncertainty& uncertainty = {});

// The MPC planner (planner.h) with its particle rollouts on the device: the same algorithm,
// candidates, member choices (TS-inf / TS-1) and Philox noise as plan_optimize /
// plan_evaluate, so the values agree with the CPU planner to float rounding and the chosen
// elites / actions are the same unless two candidates' values are within rounding. `model`: as
// cuda_ensemble_step (device pointers, host elites; the planner runs on the device holding
// the weights). obs [obs_dim], mean [horizon, act_dim], action_out, mean_out, actions,
// values_out and members_out are HOST arrays (members_out [horizon, num_sequences *
// particles] may be null). The objective must be built-in (RewardId / TerminationId): a
// reward or termination callback needs the rows on the host and is refused with
// InvalidArgument (use plan_optimize). The CEM refit and candidate sampling run on the host
// (planner.cpp's own loop); per iteration: one host-to-device copy of the candidates,
// 2 + 5 * horizon launches (action gather, fused ensemble step, reward/termination/return
// update), one device-to-host copy of the values and one stream sync. Device memory is taken
// per call with cudaMallocAsync (stream-ordered) and freed at its end.
PlanResult cuda_plan_optimize(const EnsembleView& model, const PlannerConfig& config, const PlanObjective& objective,
                              const float* obs, const float* mean, uint64_t call_seed, float* action_out,
                              float* mean_out, void* cuda_stream);
void cuda_plan_evaluate(const EnsembleView& model, const PlanObjective& objective, const float* obs,
                        const float* actions, int64_t num_sequences, int64_t horizon, int64_t particles,
                        Propagation propagation, uint64_t seed, double* values_out, int64_t* members_out,
                        void* cuda_stream);

}  // namespace mbpo_fast

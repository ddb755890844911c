// mbpo_fast::EnsembleTrainer — native training of MBPO's probabilistic ensemble dynamics
// model (the model of ensemble.h), CPU. Public C++ API: no Python.
//
// Objective (DESIGN §4), for one batch where member e sees its own rows x_e [b, in], y_e [b, out]:
//   loss = sum_e mean_{rows, outputs}((mu_e - y_e)^2 * exp(-lv_e) + lv_e)
//          + 0.01 * (sum(max_logvar) - sum(min_logvar))
// with lv = max - softplus(max - raw); lv = min + softplus(lv - min) (the soft bounds are
// trainable and SHARED by the members), followed by ONE Adam step (torch.optim.Adam's exact
// formula, train_ops.h adam_step) on every tensor: layer i weights with coupled L2
// weight_decays[i], biases and logvar bounds without decay.
//
// Two ways to use it:
//   * Borrowed storage (what the Python trainer does): the parameters and the Adam state are
//     float32 arrays someone else owns (torch parameters and torch.optim.Adam's exp_avg /
//     exp_avg_sq / step tensors). train_epoch updates them IN PLACE, so torch can continue
//     from them at any point.
//   * Owning (a C++ program, no Python): EnsembleTrainer(config, seed) allocates and
//     initializes everything; fit() trains on raw transitions like EnsembleDynamics.fit and
//     view() gives an EnsembleView for ensemble_step / the rollout engine; save() writes the
//     DESIGN §3 safetensors file that EnsembleDynamics.load and Ensemble::load read.
//
// A C++ program with no Python (owning mode):
//
//   mbpo_fast::EnsembleTrainerConfig cfg;
//   cfg.obs_dim = 11; cfg.act_dim = 3;            // E = 7, 4 x 200, MBPO decays and Adam
//   mbpo_fast::EnsembleTrainer model(cfg, /*seed=*/0, /*num_elites=*/5);
//   mbpo_fast::EnsembleFitOptions fit;             // holdout 0.2 (<= 5000), batch 256, patience 5
//   fit.seed = step;                               // fresh split / bootstrap per fit
//   auto stats = model.fit(obs, act, rew, next_obs, n, fit);   // raw float32 rows
//   mbpo_fast::EnsembleView view = model.view();   // ensemble_step(view, ...) / rollouts
//   model.save("model.safetensors");               // EnsembleDynamics.load / Ensemble::load
//
// Threading: train_epoch and member_mse use parallel_for (parallel.h): the members (and row
// parts of the members left over when E is not a multiple of the thread count) run
// concurrently; the shared logvar bounds' gradient is reduced after the parallel part. Results do not depend on the thread
// count beyond float rounding. One trainer must not be used by two threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mbpo_fast/ensemble.h"
#include "mbpo_fast/train_ops.h"

namespace mbpo_fast {

// Sizes and hyperparameters of the ensemble being trained.
struct EnsembleTrainerConfig {
  int64_t obs_dim = 0;
  int64_t act_dim = 0;          // may be 0
  int64_t ensemble_size = 7;    // E
  int64_t hidden_size = 200;
  int num_hidden_layers = 4;    // SiLU layers; the output layer (2 * (obs_dim + 1)) follows
  // Per linear layer (num_hidden_layers + 1 values) L2 coefficient; empty = MBPO's
  // 2.5e-5, 5e-5, 7.5e-5 ..., 1e-4 (layer_weight_decays in mbpo_fast/ensemble.py).
  std::vector<double> weight_decays;
  AdamConfig adam;  // lr 1e-3, betas (0.9, 0.999), eps 1e-8
  // kBf16: the hidden layers' matmuls (forward and backward) take bf16-rounded inputs and
  // accumulate in float32; the output layer, the parameters and Adam stay float32.
  MatmulPrecision precision = MatmulPrecision::kFloat32;
  // Work split of a batch over the T threads. 0 = automatic: each thread trains E / T whole
  // members, and the E % T members left over are split into T row parts, one per thread
  // (E = 7, T = 2: 3.5 members each). 1..4: every member in that many row parts, spread
  // evenly. Results do not depend on it beyond float rounding.
  int row_parts = 0;

  int num_linear() const { return num_hidden_layers + 1; }
  int64_t in_dim() const { return obs_dim + act_dim; }
  int64_t out_dim() const { return obs_dim + 1; }
  // Input / output width of linear layer i.
  int64_t layer_in(int i) const { return i == 0 ? in_dim() : hidden_size; }
  int64_t layer_out(int i) const { return i == num_hidden_layers ? 2 * out_dim() : hidden_size; }
  // Throws InvalidArgument naming the first bad field.
  void validate() const;
};

// The storage a trainer updates: layer i weight [E, layer_in(i), layer_out(i)] and bias
// [E, layer_out(i)] (i < num_linear()), max_logvar / min_logvar [obs_dim + 1].
struct EnsembleTrainerStorage {
  AdamTensor weights[kEnsembleMaxLayers];
  AdamTensor biases[kEnsembleMaxLayers];
  AdamTensor max_logvar;
  AdamTensor min_logvar;
};

// Options of EnsembleTrainer::fit (the defaults are MBPO's, as EnsembleDynamics.fit).
struct EnsembleFitOptions {
  double holdout_ratio = 0.2;      // in [0, 1)
  int64_t max_holdout = 5000;      // >= 0
  int64_t batch_size = 256;        // >= 1
  int64_t max_epochs = 0;          // 0 = no limit
  double max_seconds = 0.0;        // 0 = no limit (checked after each epoch)
  int64_t patience = 5;            // stop when > patience epochs passed without improvement
  double improvement_threshold = 0.01;
  uint64_t seed = 0;               // Philox seed of the split, bootstrap and shuffles
  int64_t num_elites = 0;          // in [1, E]; 0 = the trainer's elite count (constructor)
};

struct EnsembleFitResult {
  std::vector<double> holdout_mse;          // [E], restored weights
  std::vector<double> initial_holdout_mse;  // [E], before training (refit normalizer)
  std::vector<int64_t> elites;              // [num_elites], ascending holdout MSE
  int64_t epochs = 0;
  double seconds = 0.0;
  // The last epoch's mean batch loss plus the weight-decay term 0.5 sum_i wd_i ||W_i||^2 at
  // the epoch's end (as EnsembleDynamics.fit's train_loss).
  double train_loss = 0.0;
};

class EnsembleTrainer {
 public:
  // Borrowing: trains the tensors of `storage` in place (they must stay valid while the
  // trainer is used; rebind() swaps them). Validates `config` and that no pointer is null.
  EnsembleTrainer(const EnsembleTrainerConfig& config, const EnsembleTrainerStorage& storage);
  // Owning: allocates the parameters (MBPO init: truncated normal, std 1 / (2 sqrt(in)) in
  // +-2 std, from the Philox stream of `seed`; zero biases; max_logvar 0.5, min_logvar -10),
  // zero Adam state, input normalizer mean 0 / std 1 and elites 0..num_elites-1.
  EnsembleTrainer(const EnsembleTrainerConfig& config, uint64_t seed, int64_t num_elites = 5);
  ~EnsembleTrainer();
  EnsembleTrainer(EnsembleTrainer&&) noexcept;
  EnsembleTrainer& operator=(EnsembleTrainer&&) noexcept;
  EnsembleTrainer(const EnsembleTrainer&) = delete;
  EnsembleTrainer& operator=(const EnsembleTrainer&) = delete;

  const EnsembleTrainerConfig& config() const noexcept;
  bool owning() const noexcept;
  // Points a borrowing trainer at other storage of the same shapes (throws for an owning one).
  void rebind(const EnsembleTrainerStorage& storage);

  // ONE EPOCH: for each batch slice idx[:, s : s + batch_size] (s = 0, batch_size, ...; the
  // last may be short), member e takes rows x[idx[e, s + j]], y[idx[e, s + j]], and one Adam
  // step follows the summed objective above.
  //   x [rows, in_dim] normalized inputs, y [rows, out_dim] targets (Δobs, then reward),
  //   idx [E, cols] int64, every entry in [0, rows) (checked before anything changes).
  // Returns the mean over batches of the objective (its value before each step).
  double train_epoch(const float* x, const float* y, int64_t rows, const int64_t* idx, int64_t cols,
                     int64_t batch_size);

  // Per-member mean squared error of the predicted mean: mse_out[e] =
  // mean_{rows, outputs}(mu_e(x) - y)^2, x [rows, in_dim] normalized, y [rows, out_dim]; float32
  // forward, double accumulation. rows >= 1.
  void member_mse(const float* x, const float* y, int64_t rows, double* mse_out) const;

  // The whole MBPO model fit on raw transitions (obs, next_obs [n, obs_dim], act [n, act_dim],
  // rew [n]), as EnsembleDynamics.fit: Philox holdout split (min(int(n * ratio), max_holdout)
  // rows), normalizer refit on the training split (std < 1e-12 -> 1), one bootstrap set per
  // member, a fresh shuffle per member per epoch, early stopping with every member's best
  // starting at +inf, best-snapshot restore per member, elites by holdout MSE. The random
  // numbers come from Philox (rng.h), so the result differs from the Python fit's torch
  // generator draws, not in the procedure. Writes the normalizer and elites of this trainer.
  EnsembleFitResult fit(const float* obs, const float* act, const float* rew, const float* next_obs,
                        int64_t n, const EnsembleFitOptions& options = {});

  // Normalizer and elites used by view() (and written by fit): in_dim floats each, std > 0.
  void set_normalizer(const float* mean, const float* stddev);
  void set_elites(const std::vector<int64_t>& elites);
  const std::vector<int64_t>& elites() const noexcept;
  // A view for ensemble_step / ensemble_predict / the rollout engine over the current
  // parameters (valid until the trainer is moved, destroyed or rebound).
  EnsembleView view() const;
  // Writes the DESIGN §3 safetensors layout (readable by Ensemble::load and
  // EnsembleDynamics.load), atomically (temporary file, fsync, rename). Throws IoError.
  void save(const std::string& path) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mbpo_fast

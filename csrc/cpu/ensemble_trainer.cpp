// mbpo_fast::EnsembleTrainer (ensemble_trainer.h): one native call per training epoch of
// MBPO's ensemble, on borrowed (torch) or owned float32 storage.
//
// Per batch: parallel_for over one work list per thread; a list holds "units" = (member,
// row part) — each gathers its rows, runs the forward (train_ops.h linear_forward + SiLU),
// the loss and its gradient, the backward into its part's gradient buffer and its share of
// the logvar-bound gradient. A whole member's Adam step runs inside its unit, layer by layer
// right after that layer's backward (its gradient still in cache). Then the bound gradients
// are reduced serially (tiny), a second parallel_for runs Adam on the split members' slices
// (their row parts summed first), and the bounds take their Adam step. Balance: each thread
// gets E / T whole members, and the E % T members left over are split into T row parts, one
// per thread (E = 7 on 2 threads: 3 whole members + half of the 7th each), so most matmuls
// keep the full batch as M. Scratch is allocated once per trainer (grown when the batch or
// the thread count grows), never per batch.
#include "mbpo_fast/ensemble_trainer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <sstream>
#include <string>
#include <utility>

#include "cpu/ensemble_trainer_kernels.h"
#include "mbpo_fast/common.h"
#include "mbpo_fast/parallel.h"
#include "mbpo_fast/rng.h"

namespace mbpo_fast {

namespace {

constexpr double kLogvarBoundCoef = 0.01;  // MBPO: 0.01 * (sum(max_logvar) - sum(min_logvar))
constexpr float kSoftplusThreshold = 20.0f;  // torch.nn.functional.softplus's default
constexpr int64_t kEvalRows = 512;            // rows per holdout forward tile
constexpr int kMaxRowParts = 4;

// Philox streams of the C++ fit (high 32 bits: purpose; low 32 bits: the epoch for shuffles).
constexpr uint64_t kStreamFitSplit = 16ull << 32;
constexpr uint64_t kStreamFitBootstrap = 17ull << 32;
constexpr uint64_t kStreamFitShuffle = 18ull << 32;
constexpr uint64_t kStreamFitInit = 19ull << 32;  // owning-mode parameter init (low bits: layer)

// torch's softplus (beta 1, threshold 20) and its backward, written as the ATen CPU kernel
// evaluates them so float32 results agree with torch to rounding of exp/log1p.
// softplus also returns z = exp(x) (when x <= threshold) for the backward.
inline float softplus(float x, float& z) {
  if (x > kSoftplusThreshold) return x;
  z = std::exp(x);
  return std::log1p(z);
}
inline float softplus_backward(float grad, float x, float z) {
  return x > kSoftplusThreshold ? grad : grad * z / (z + 1.0f);
}

std::vector<double> default_weight_decays(int num_linear) {
  if (num_linear < 2) return {};
  std::vector<double> d(static_cast<size_t>(num_linear), 7.5e-5);
  d.front() = 2.5e-5;
  if (num_linear >= 3) d[1] = 5e-5;
  d.back() = 1e-4;
  return d;
}

}  // namespace

namespace cpu {

// The loss and its gradient in the order torch's autograd evaluates them (ensemble.py _nll);
// see ensemble_trainer_kernels.h.
void ensemble_loss_scalar(const float* o_all, const float* y, int64_t rows, int64_t out, const float* mx,
                          const float* mn, float gmean, float* d_out, double* loss, double* gmax, double* gmin) {
  const int64_t o2 = 2 * out;
  for (int64_t j = 0; j < rows; ++j) {
    const float* o = o_all + j * o2;
    const float* yj = y + j * out;
    float* d = d_out + j * o2;
    for (int64_t k = 0; k < out; ++k) {
      float z1 = 0.0f, z2 = 0.0f;
      const float t1 = mx[k] - o[out + k];
      const float lv1 = mx[k] - softplus(t1, z1);
      const float t2 = lv1 - mn[k];
      const float lv = mn[k] + softplus(t2, z2);
      const float inv = std::exp(-lv);
      const float diff = o[k] - yj[k];
      const float sq = diff * diff;
      *loss += static_cast<double>(sq * inv + lv);
      const float g_sq = gmean * inv;
      const float g_inv = gmean * sq;
      d[k] = g_sq * (2.0f * diff);
      const float g_lv = gmean - g_inv * inv;
      const float g_t2 = softplus_backward(g_lv, t2, z2);
      gmin[k] += static_cast<double>(g_lv) - static_cast<double>(g_t2);
      const float g_t1 = softplus_backward(-g_t2, t1, z1);
      gmax[k] += static_cast<double>(g_t2) + static_cast<double>(g_t1);
      d[out + k] = -g_t1;
    }
  }
}

}  // namespace cpu

void EnsembleTrainerConfig::validate() const {
  require(obs_dim >= 1, "EnsembleTrainerConfig.obs_dim: expected >= 1, got " + std::to_string(obs_dim));
  require(act_dim >= 0, "EnsembleTrainerConfig.act_dim: expected >= 0, got " + std::to_string(act_dim));
  require(ensemble_size >= 1,
          "EnsembleTrainerConfig.ensemble_size: expected >= 1, got " + std::to_string(ensemble_size));
  require(hidden_size >= 1,
          "EnsembleTrainerConfig.hidden_size: expected >= 1, got " + std::to_string(hidden_size));
  require(num_hidden_layers >= 1 && num_hidden_layers + 1 <= kEnsembleMaxLayers,
          "EnsembleTrainerConfig.num_hidden_layers: expected 1.." + std::to_string(kEnsembleMaxLayers - 1) +
              ", got " + std::to_string(num_hidden_layers));
  require(weight_decays.empty() || static_cast<int>(weight_decays.size()) == num_linear(),
          "EnsembleTrainerConfig.weight_decays: expected " + std::to_string(num_linear()) +
              " values (one per linear layer) or none, got " + std::to_string(weight_decays.size()));
  for (double wd : weight_decays) {
    require(std::isfinite(wd) && wd >= 0.0, "EnsembleTrainerConfig.weight_decays: expected finite values >= 0");
  }
  require(std::isfinite(adam.lr) && adam.lr > 0.0, "EnsembleTrainerConfig.adam.lr: expected a finite value > 0");
  require(adam.beta1 >= 0.0 && adam.beta1 < 1.0 && adam.beta2 >= 0.0 && adam.beta2 < 1.0,
          "EnsembleTrainerConfig.adam: expected betas in [0, 1)");
  require(adam.eps > 0.0, "EnsembleTrainerConfig.adam.eps: expected > 0");
  require(row_parts >= 0 && row_parts <= kMaxRowParts,
          "EnsembleTrainerConfig.row_parts: expected 0 (automatic) .. " + std::to_string(kMaxRowParts) + ", got " +
              std::to_string(row_parts));
}

struct EnsembleTrainer::Impl {
  EnsembleTrainerConfig cfg;
  EnsembleTrainerStorage st{};
  bool owning = false;
  std::vector<double> decays;  // per linear layer

  // Owned storage (owning mode): one block per tensor, [param, exp_avg, exp_avg_sq].
  std::vector<std::vector<float>> own;
  std::vector<float> own_steps;
  // Normalizer and elites for view() / fit() / save().
  std::vector<float> input_mean, input_std;
  std::vector<int64_t> elites;

  // The member tensors (weights and biases of every layer) as one flat element space:
  // tensor t = (layer t / 2, weight if t even else bias) covers [flat_off[t], flat_off[t + 1]),
  // E * member_numel[t] elements; its gradient lives at the same offset of each row part's
  // gradient block.
  std::vector<int64_t> flat_off, member_numel;
  int64_t flat_total = 0;

  // Scratch (grown on demand, never per batch).
  int64_t scratch_rows = 0;  // rows per unit the slots hold
  int scratch_slots = 0;
  int64_t slot_floats = 0;
  std::vector<float> slots;   // [slots, slot_floats]
  struct Unit {
    int64_t member;
    int part, parts;  // rows [b * part / parts, b * (part + 1) / parts) of the batch
  };
  std::vector<Unit> units;          // grouped by thread: list i = [list_begin[i], list_begin[i + 1])
  std::vector<int64_t> list_begin;
  std::vector<int> member_parts;    // row parts of each member
  int max_parts = 1;
  std::vector<float> grads;         // [max_parts, flat_total]: part p of a member writes block p
  std::vector<double> unit_bound;   // [units, 2 * out]: d/dmax, d/dmin partial sums
  std::vector<double> unit_loss;    // [units]
  std::vector<double> member_loss;  // [E]

  // AVX-512 SiLU and loss of ensemble_trainer_avx512.cpp (else train_ops.h's silu and the
  // scalar loss).
  const bool fast_elementwise = cpu::ensemble_trainer_avx512_supported();

  int L() const { return cfg.num_hidden_layers; }
  int64_t E() const { return cfg.ensemble_size; }

  AdamTensor& tensor(int t) { return (t % 2 == 0) ? st.weights[t / 2] : st.biases[t / 2]; }

  void init_layout() {
    cfg.validate();
    decays = cfg.weight_decays.empty() ? default_weight_decays(cfg.num_linear()) : cfg.weight_decays;
    const int n_t = 2 * cfg.num_linear();
    flat_off.assign(static_cast<size_t>(n_t) + 1, 0);
    member_numel.assign(static_cast<size_t>(n_t), 0);
    for (int t = 0; t < n_t; ++t) {
      const int i = t / 2;
      member_numel[t] = (t % 2 == 0) ? cfg.layer_in(i) * cfg.layer_out(i) : cfg.layer_out(i);
      flat_off[t + 1] = flat_off[t] + E() * member_numel[t];
    }
    flat_total = flat_off[n_t];
    const int64_t in = cfg.in_dim();
    input_mean.assign(static_cast<size_t>(in), 0.0f);
    input_std.assign(static_cast<size_t>(in), 1.0f);
  }

  void check_storage(const EnsembleTrainerStorage& s) const {
    auto check = [](const AdamTensor& t, const std::string& name) {
      require(t.param != nullptr && t.exp_avg != nullptr && t.exp_avg_sq != nullptr && t.step != nullptr,
              "EnsembleTrainerStorage." + name + ": param, exp_avg, exp_avg_sq and step must all be set");
    };
    for (int i = 0; i < cfg.num_linear(); ++i) {
      check(s.weights[i], "weights[" + std::to_string(i) + "]");
      check(s.biases[i], "biases[" + std::to_string(i) + "]");
    }
    check(s.max_logvar, "max_logvar");
    check(s.min_logvar, "min_logvar");
  }

  // Floats of one slot for `rows` rows: x0, y, (pre, h, sigmoid) per hidden layer, out,
  // d_out, 2 dh.
  int64_t slot_size(int64_t rows) const {
    const int64_t H = cfg.hidden_size, in = cfg.in_dim(), out = cfg.out_dim();
    return rows * (in + out + 3 * L() * H + 4 * out + 2 * H);
  }

  // The work lists (see the file comment); cfg.row_parts > 0: every member in that many
  // parts, the units spread evenly over the threads in member order.
  void plan_units(int64_t T) {
    units.clear();
    list_begin.assign(1, 0);
    member_parts.assign(static_cast<size_t>(E()), 1);
    if (cfg.row_parts > 0) {
      for (int64_t e = 0; e < E(); ++e) {
        member_parts[e] = cfg.row_parts;
        for (int p = 0; p < cfg.row_parts; ++p) units.push_back({e, p, cfg.row_parts});
      }
      const int64_t n = static_cast<int64_t>(units.size());
      for (int64_t i = 1; i <= T; ++i) list_begin.push_back(n * i / T);
    } else {
      const int64_t whole = E() / T * T;
      for (int64_t e = whole; e < E(); ++e) member_parts[e] = static_cast<int>(T);
      for (int64_t i = 0; i < T; ++i) {
        for (int64_t e = i * (E() / T); e < (i + 1) * (E() / T); ++e) units.push_back({e, 0, 1});
        for (int64_t e = whole; e < E(); ++e) units.push_back({e, static_cast<int>(i), static_cast<int>(T)});
        list_begin.push_back(static_cast<int64_t>(units.size()));
      }
    }
    max_parts = *std::max_element(member_parts.begin(), member_parts.end());
  }

  void ensure_scratch(int64_t batch) {
    const int64_t T = std::max(1, num_threads());
    plan_units(T);
    int min_parts = max_parts;
    for (int p : member_parts) min_parts = std::min(min_parts, p);
    const int64_t rows = (batch + min_parts - 1) / min_parts;
    const int slots_needed = static_cast<int>(T);
    if (rows > scratch_rows || slots_needed > scratch_slots) {
      scratch_rows = std::max(rows, scratch_rows);
      scratch_slots = std::max(slots_needed, scratch_slots);
      slot_floats = slot_size(scratch_rows);
      slots.assign(static_cast<size_t>(scratch_slots * slot_floats), 0.0f);
    }
    const size_t gsize = static_cast<size_t>(max_parts * flat_total);
    if (grads.size() != gsize) grads.assign(gsize, 0.0f);
    unit_bound.assign(units.size() * 2 * static_cast<size_t>(cfg.out_dim()), 0.0);
    unit_loss.assign(units.size(), 0.0);
    member_loss.assign(static_cast<size_t>(E()), 0.0);
  }

  MatmulPrecision precision(int layer) const {
    return layer < L() ? cfg.precision : MatmulPrecision::kFloat32;
  }

  // Forward of member e on rows [rows, in] at x (row stride in): fills the slot's h/pre and
  // out buffers. Returns a pointer to out [rows, 2 * out_dim].
  struct SlotPtrs {
    float *x0, *y, *out, *d_out, *dh[2];
    float* pre[kEnsembleMaxLayers];
    float* h[kEnsembleMaxLayers];
    float* sig[kEnsembleMaxLayers];
  };
  SlotPtrs slot_ptrs(float* base, int64_t rows) const {
    const int64_t H = cfg.hidden_size, in = cfg.in_dim(), out = cfg.out_dim();
    SlotPtrs p{};
    float* q = base;
    p.x0 = q; q += rows * in;
    p.y = q; q += rows * out;
    for (int i = 0; i < L(); ++i) {
      p.pre[i] = q; q += rows * H;
      p.h[i] = q; q += rows * H;
      p.sig[i] = q; q += rows * H;
    }
    p.out = q; q += rows * 2 * out;
    p.d_out = q; q += rows * 2 * out;
    p.dh[0] = q; q += rows * H;
    p.dh[1] = q;
    return p;
  }

  const float* forward(int64_t e, const float* x, int64_t rows, SlotPtrs& p, bool training) const {
    const int64_t H = cfg.hidden_size;
    const float* in_ptr = x;
    int64_t in_w = cfg.in_dim();
    for (int i = 0; i < L(); ++i) {
      const float* w = st.weights[i].param + e * in_w * H;
      const float* b = st.biases[i].param + e * H;
      linear_forward(in_ptr, in_w, rows, w, b, in_w, H, p.h[i], H,
                     training ? precision(i) : MatmulPrecision::kFloat32);
      if (fast_elementwise) {
        cpu::ensemble_silu_forward_avx512(p.h[i], p.pre[i], p.sig[i], rows * H);
      } else {
        silu_forward(p.h[i], p.pre[i], rows * H);
      }
      in_ptr = p.h[i];
      in_w = H;
    }
    const int64_t o2 = 2 * cfg.out_dim();
    linear_forward(in_ptr, in_w, rows, st.weights[L()].param + e * in_w * o2, st.biases[L()].param + e * o2,
                   in_w, o2, p.out, o2, MatmulPrecision::kFloat32);
    return p.out;
  }

  // Unit u of a batch: its member's rows [r0, r1) of the batch slice starting at column s.
  void train_unit(int64_t u, float* slot, const float* x, const float* y, const int64_t* idx, int64_t cols,
                  int64_t s, int64_t b) {
    const Unit& un = units[u];
    const int64_t e = un.member, r = un.part;
    const int64_t r0 = b * r / un.parts, r1 = b * (r + 1) / un.parts, rows = r1 - r0;
    const int64_t in = cfg.in_dim(), out = cfg.out_dim(), H = cfg.hidden_size, o2 = 2 * out;
    float* g = grads.data() + r * flat_total;
    double* bound = unit_bound.data() + u * 2 * out;
    std::fill(bound, bound + 2 * out, 0.0);
    unit_loss[u] = 0.0;
    if (rows == 0) {  // a short last batch can leave a row part empty: contribute zeros
      for (int t = 0; t < 2 * cfg.num_linear(); ++t) {
        float* gt = g + flat_off[t] + e * member_numel[t];
        std::fill(gt, gt + member_numel[t], 0.0f);
      }
      return;
    }
    SlotPtrs p = slot_ptrs(slot, rows);
    const int64_t* ie = idx + e * cols + s + r0;
    for (int64_t j = 0; j < rows; ++j) {
      std::memcpy(p.x0 + j * in, x + ie[j] * in, sizeof(float) * in);
      std::memcpy(p.y + j * out, y + ie[j] * out, sizeof(float) * out);
    }
    forward(e, p.x0, rows, p, true);

    // Loss and its gradient, in the order torch's autograd evaluates them (ensemble.py _nll).
    const float gmean = 1.0f / static_cast<float>(b * out);  // mean over the member's b rows
    const float* mx = st.max_logvar.param;
    const float* mn = st.min_logvar.param;
    double loss = 0.0;
    double* gmax = bound;
    double* gmin = bound + out;
    (fast_elementwise ? cpu::ensemble_loss_avx512 : cpu::ensemble_loss_scalar)(p.out, p.y, rows, out, mx, mn, gmean,
                                                                       p.d_out, &loss, gmax, gmin);
    unit_loss[u] = loss;

    // Backward, output layer first. Layer i's input is x0 (i == 0) or h[i - 1].
    const float* dy = p.d_out;
    int64_t dy_w = o2;
    for (int i = L(); i >= 0; --i) {
      const int64_t in_w = i == 0 ? in : H, out_w = i == L() ? o2 : H;
      const float* xin = i == 0 ? p.x0 : p.h[i - 1];
      float* gw = g + flat_off[2 * i] + e * member_numel[2 * i];
      float* gb = g + flat_off[2 * i + 1] + e * member_numel[2 * i + 1];
      float* dx = i == 0 ? nullptr : p.dh[i % 2];
      float* w = st.weights[i].param + e * in_w * out_w;
      linear_backward(xin, in_w, rows, w, in_w, out_w, dy, dy_w, gw, gb, dx, in_w, false, precision(i));
      if (un.parts == 1) {
        // A whole member's gradient is final: its Adam step runs here, while the gradient is
        // still in cache (W_i is not read again this batch: its dx is done).
        adam_member(2 * i, e, gw);
        adam_member(2 * i + 1, e, gb);
      }
      if (i > 0) {
        if (fast_elementwise) {
          cpu::ensemble_silu_backward_avx512(p.pre[i - 1], p.sig[i - 1], dx, rows * H);
        } else {
          silu_backward(p.pre[i - 1], dx, rows * H);
        }
        dy = dx;
        dy_w = H;
      }
    }
  }

  // Adam on member e's slice of member tensor t with its final gradient g. Every slice
  // steps from the count read before the batch; the count is advanced once after it.
  void adam_member(int t, int64_t e, const float* g) {
    AdamTensor& tt = tensor(t);
    const int64_t off = e * member_numel[t];
    float step = steps_scratch[t];
    adam_step(tt.param + off, g, tt.exp_avg + off, tt.exp_avg_sq + off, &step, member_numel[t], cfg.adam,
              t % 2 == 0 ? decays[t / 2] : 0.0);
  }

  // Adam over flat element range [begin, end) of the SPLIT members' slices of the member
  // tensors, their row parts summed first (whole members stepped in train_unit).
  void adam_range(int64_t begin, int64_t end) {
    const int n_t = 2 * cfg.num_linear();
    for (int t = 0; t < n_t; ++t) {
      AdamTensor& tt = tensor(t);
      const double wd = t % 2 == 0 ? decays[t / 2] : 0.0;
      for (int64_t e = 0; e < E(); ++e) {
        if (member_parts[e] == 1) continue;
        const int64_t base = flat_off[t] + e * member_numel[t];
        const int64_t a = std::max(begin, base), z = std::min(end, base + member_numel[t]);
        // Blocks of 4096: the row parts' sum is still in L1 when Adam reads it.
        for (int64_t a0 = a; a0 < z; a0 += 4096) {
          const int64_t n = std::min<int64_t>(4096, z - a0);
          float* g0 = grads.data() + a0;
          for (int r = 1; r < member_parts[e]; ++r) {
            const float* gr = grads.data() + r * flat_total + a0;
            for (int64_t k = 0; k < n; ++k) g0[k] += gr[k];
          }
          const int64_t off = a0 - flat_off[t];
          float step = steps_scratch[t];
          adam_step(tt.param + off, g0, tt.exp_avg + off, tt.exp_avg_sq + off, &step, n, cfg.adam, wd);
        }
      }
    }
  }

  double train_batch(const float* x, const float* y, const int64_t* idx, int64_t cols, int64_t s, int64_t b) {
    const int64_t out = cfg.out_dim();
    const int64_t n_units = static_cast<int64_t>(units.size());
    const int64_t n_lists = static_cast<int64_t>(list_begin.size()) - 1;
    const int n_t = 2 * cfg.num_linear();
    steps_scratch.resize(static_cast<size_t>(n_t));
    for (int t = 0; t < n_t; ++t) steps_scratch[t] = *tensor(t).step;
    // The lambdas capture one pointer, so std::function keeps them in its small buffer: no
    // heap allocation per batch.
    struct BatchArgs {
      Impl* self;
      const float *x, *y;
      const int64_t* idx;
      int64_t cols, s, b;
      std::atomic<int> next_slot{0};
    } args{this, x, y, idx, cols, s, b, {}};
    BatchArgs* a = &args;
    parallel_for(n_lists, 1, [a](int64_t l0, int64_t l1) {
      Impl& me = *a->self;
      const int slot = a->next_slot.fetch_add(1);
      require(slot < me.scratch_slots, "EnsembleTrainer: more parallel chunks than scratch slots (thread "
                                       "count changed during an epoch?)");
      float* base = me.slots.data() + static_cast<int64_t>(slot) * me.slot_floats;
      for (int64_t u = me.list_begin[l0]; u < me.list_begin[l1]; ++u) {
        me.train_unit(u, base, a->x, a->y, a->idx, a->cols, a->s, a->b);
      }
    });
    // Loss value (before the step) and the shared bounds' gradient, reduced in unit order.
    const double denom = static_cast<double>(b * out);
    std::fill(member_loss.begin(), member_loss.end(), 0.0);
    for (int64_t u = 0; u < n_units; ++u) member_loss[units[u].member] += unit_loss[u];
    double loss = 0.0;
    for (int64_t e = 0; e < E(); ++e) loss += member_loss[e] / denom;
    double bound_val = 0.0;
    std::vector<float>& gm = bound_grad_scratch;
    gm.assign(static_cast<size_t>(2 * out), 0.0f);
    for (int64_t k = 0; k < out; ++k) {
      double smax = kLogvarBoundCoef, smin = -kLogvarBoundCoef;
      for (int64_t u = 0; u < n_units; ++u) {
        smax += unit_bound[u * 2 * out + k];
        smin += unit_bound[u * 2 * out + out + k];
      }
      gm[k] = static_cast<float>(smax);
      gm[out + k] = static_cast<float>(smin);
      bound_val += static_cast<double>(st.max_logvar.param[k]) - static_cast<double>(st.min_logvar.param[k]);
    }
    loss += kLogvarBoundCoef * bound_val;

    if (max_parts > 1) {
      parallel_for(flat_total, 4096, [a](int64_t lo, int64_t hi) { a->self->adam_range(lo, hi); });
    }
    for (int t = 0; t < n_t; ++t) *tensor(t).step = steps_scratch[t] + 1.0f;  // what adam_step did
    adam_step(st.max_logvar.param, gm.data(), st.max_logvar.exp_avg, st.max_logvar.exp_avg_sq, st.max_logvar.step,
              out, cfg.adam, 0.0);
    adam_step(st.min_logvar.param, gm.data() + out, st.min_logvar.exp_avg, st.min_logvar.exp_avg_sq,
              st.min_logvar.step, out, cfg.adam, 0.0);
    return loss;
  }

  std::vector<float> bound_grad_scratch, steps_scratch;

  void member_mse(const float* x, const float* y, int64_t rows, double* mse_out) const {
    const int64_t out = cfg.out_dim();
    const int64_t tiles = (rows + kEvalRows - 1) / kEvalRows;
    const int64_t units = E() * tiles;
    std::vector<double> sums(static_cast<size_t>(units), 0.0);
    parallel_for(units, 1, [&](int64_t u0, int64_t u1) {
      std::vector<float> scratch(static_cast<size_t>(slot_size(kEvalRows)));
      for (int64_t u = u0; u < u1; ++u) {
        const int64_t e = u / tiles, t = u % tiles;
        const int64_t r0 = t * kEvalRows, n = std::min(kEvalRows, rows - r0);
        SlotPtrs p = slot_ptrs(scratch.data(), n);
        const float* o = forward(e, x + r0 * cfg.in_dim(), n, p, false);
        double acc = 0.0;
        for (int64_t j = 0; j < n; ++j) {
          const float* oj = o + j * 2 * out;
          const float* yj = y + (r0 + j) * out;
          for (int64_t k = 0; k < out; ++k) {
            const double dd = static_cast<double>(oj[k] - yj[k]);
            acc += dd * dd;
          }
        }
        sums[u] = acc;
      }
    });
    for (int64_t e = 0; e < E(); ++e) {
      double acc = 0.0;
      for (int64_t t = 0; t < tiles; ++t) acc += sums[e * tiles + t];
      mse_out[e] = acc / static_cast<double>(rows * out);
    }
  }

  double weight_decay_loss() const {
    double total = 0.0;
    for (int i = 0; i < cfg.num_linear(); ++i) {
      const float* w = st.weights[i].param;
      double sq = 0.0;
      for (int64_t k = 0; k < E() * member_numel[2 * i]; ++k) sq += static_cast<double>(w[k]) * w[k];
      total += 0.5 * decays[i] * sq;
    }
    return total;
  }
};

// ------------------------------------------------------------------------------ lifecycle

EnsembleTrainer::EnsembleTrainer(const EnsembleTrainerConfig& config, const EnsembleTrainerStorage& storage)
    : impl_(std::make_unique<Impl>()) {
  impl_->cfg = config;
  impl_->init_layout();
  impl_->check_storage(storage);
  impl_->st = storage;
  impl_->elites.resize(static_cast<size_t>(config.ensemble_size));
  std::iota(impl_->elites.begin(), impl_->elites.end(), 0);
}

EnsembleTrainer::EnsembleTrainer(const EnsembleTrainerConfig& config, uint64_t seed, int64_t num_elites)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.cfg = config;
  m.init_layout();
  require(num_elites >= 1 && num_elites <= config.ensemble_size,
          "EnsembleTrainer: num_elites: expected 1.." + std::to_string(config.ensemble_size) + ", got " +
              std::to_string(num_elites));
  m.owning = true;
  const int n_lin = config.num_linear();
  const int64_t out = config.out_dim(), E = config.ensemble_size;
  // Blocks: [param | exp_avg | exp_avg_sq] per tensor: weights, biases, max, min.
  auto alloc = [&](int64_t n) {
    m.own.emplace_back(static_cast<size_t>(3 * n), 0.0f);
    return m.own.size() - 1;
  };
  std::vector<size_t> block(static_cast<size_t>(2 * n_lin + 2));
  for (int t = 0; t < 2 * n_lin; ++t) block[t] = alloc(E * m.member_numel[t]);
  block[2 * n_lin] = alloc(out);
  block[2 * n_lin + 1] = alloc(out);
  m.own_steps.assign(static_cast<size_t>(2 * n_lin + 2), 0.0f);
  auto attach = [&](AdamTensor& tt, size_t t, int64_t n) {
    float* base = m.own[block[t]].data();
    tt = AdamTensor{base, base + n, base + 2 * n, &m.own_steps[t]};
  };
  for (int t = 0; t < 2 * n_lin; ++t) attach(m.tensor(t), static_cast<size_t>(t), E * m.member_numel[t]);
  attach(m.st.max_logvar, static_cast<size_t>(2 * n_lin), out);
  attach(m.st.min_logvar, static_cast<size_t>(2 * n_lin + 1), out);
  // MBPO init: truncated normal (std 1 / (2 sqrt(in)), redrawn outside +-2 std), zero biases.
  for (int i = 0; i < n_lin; ++i) {
    const int64_t n = E * m.member_numel[2 * i];
    const double sd = 1.0 / (2.0 * std::sqrt(static_cast<double>(config.layer_in(i))));
    float* w = m.st.weights[i].param;
    for (int64_t k = 0; k < n; ++k) {
      float z = 0.0f;
      for (uint64_t attempt = 0;; ++attempt) {
        z = random_normal(seed, kStreamFitInit + static_cast<uint64_t>(i), static_cast<uint64_t>(k) +
                                                                               attempt * static_cast<uint64_t>(n));
        if (std::fabs(z) <= 2.0f) break;
      }
      w[k] = static_cast<float>(z * sd);
    }
  }
  std::fill(m.st.max_logvar.param, m.st.max_logvar.param + out, 0.5f);
  std::fill(m.st.min_logvar.param, m.st.min_logvar.param + out, -10.0f);
  m.elites.resize(static_cast<size_t>(num_elites));
  std::iota(m.elites.begin(), m.elites.end(), 0);
}

EnsembleTrainer::~EnsembleTrainer() = default;
// Moving keeps the Impl (and so every owned buffer and pointer into it) at the same address.
EnsembleTrainer::EnsembleTrainer(EnsembleTrainer&&) noexcept = default;
EnsembleTrainer& EnsembleTrainer::operator=(EnsembleTrainer&&) noexcept = default;

const EnsembleTrainerConfig& EnsembleTrainer::config() const noexcept { return impl_->cfg; }
bool EnsembleTrainer::owning() const noexcept { return impl_->owning; }

void EnsembleTrainer::rebind(const EnsembleTrainerStorage& storage) {
  require(!impl_->owning, "EnsembleTrainer.rebind: this trainer owns its storage");
  impl_->check_storage(storage);
  impl_->st = storage;
}

// ------------------------------------------------------------------------------ training

double EnsembleTrainer::train_epoch(const float* x, const float* y, int64_t rows, const int64_t* idx, int64_t cols,
                                    int64_t batch_size) {
  Impl& m = *impl_;
  require(x != nullptr && y != nullptr && idx != nullptr, "train_epoch: x, y and idx must not be null");
  require(rows >= 1, "train_epoch: rows: expected >= 1, got " + std::to_string(rows));
  require(cols >= 1, "train_epoch: idx: expected >= 1 column, got " + std::to_string(cols));
  require(batch_size >= 1, "train_epoch: batch_size: expected >= 1, got " + std::to_string(batch_size));
  const int64_t total = m.E() * cols;
  for (int64_t k = 0; k < total; ++k) {
    if (idx[k] < 0 || idx[k] >= rows) {
      throw InvalidArgument("train_epoch: idx: entry [" + std::to_string(k / cols) + ", " +
                            std::to_string(k % cols) + "] = " + std::to_string(idx[k]) +
                            " is outside [0, rows = " + std::to_string(rows) + ")");
    }
  }
  m.ensure_scratch(std::min(batch_size, cols));
  double loss_sum = 0.0;
  int64_t batches = 0;
  for (int64_t s = 0; s < cols; s += batch_size) {
    const int64_t b = std::min(batch_size, cols - s);
    loss_sum += m.train_batch(x, y, idx, cols, s, b);
    ++batches;
  }
  return loss_sum / static_cast<double>(batches);
}

void EnsembleTrainer::member_mse(const float* x, const float* y, int64_t rows, double* mse_out) const {
  require(x != nullptr && y != nullptr && mse_out != nullptr, "member_mse: x, y and mse_out must not be null");
  require(rows >= 1, "member_mse: rows: expected >= 1, got " + std::to_string(rows));
  impl_->member_mse(x, y, rows, mse_out);
}

// ------------------------------------------------------------------------------ normalizer, view

void EnsembleTrainer::set_normalizer(const float* mean, const float* stddev) {
  Impl& m = *impl_;
  const int64_t in = m.cfg.in_dim();
  for (int64_t k = 0; k < in; ++k) {
    require(std::isfinite(mean[k]), "set_normalizer: mean: entry " + std::to_string(k) + " is not finite");
    require(std::isfinite(stddev[k]) && stddev[k] > 0.0f,
            "set_normalizer: std: entry " + std::to_string(k) + " must be finite and > 0");
  }
  std::copy(mean, mean + in, m.input_mean.begin());
  std::copy(stddev, stddev + in, m.input_std.begin());
}

void EnsembleTrainer::set_elites(const std::vector<int64_t>& elites) {
  Impl& m = *impl_;
  require(!elites.empty() && static_cast<int64_t>(elites.size()) <= m.E(),
          "set_elites: expected 1.." + std::to_string(m.E()) + " indices, got " + std::to_string(elites.size()));
  std::vector<bool> seen(static_cast<size_t>(m.E()), false);
  for (int64_t e : elites) {
    require(e >= 0 && e < m.E() && !seen[e],
            "set_elites: expected distinct indices in [0, " + std::to_string(m.E()) + "), got " + std::to_string(e));
    seen[e] = true;
  }
  m.elites = elites;
}

const std::vector<int64_t>& EnsembleTrainer::elites() const noexcept { return impl_->elites; }

EnsembleView EnsembleTrainer::view() const {
  const Impl& m = *impl_;
  EnsembleView v;
  v.obs_dim = m.cfg.obs_dim;
  v.act_dim = m.cfg.act_dim;
  v.ensemble_size = m.E();
  v.num_layers = m.cfg.num_linear();
  v.widths[0] = m.cfg.in_dim();
  for (int i = 0; i < v.num_layers; ++i) {
    v.widths[i + 1] = m.cfg.layer_out(i);
    v.weights[i] = m.st.weights[i].param;
    v.biases[i] = m.st.biases[i].param;
  }
  v.input_mean = m.input_mean.data();
  v.input_std = m.input_std.data();
  v.max_logvar = m.st.max_logvar.param;
  v.min_logvar = m.st.min_logvar.param;
  v.elites = m.elites.data();
  v.num_elites = static_cast<int64_t>(m.elites.size());
  return v;
}

// ------------------------------------------------------------------------------ fit

EnsembleFitResult EnsembleTrainer::fit(const float* obs, const float* act, const float* rew, const float* next_obs,
                                       int64_t n, const EnsembleFitOptions& opt) {
  Impl& m = *impl_;
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t E = m.E(), in = m.cfg.in_dim(), out = m.cfg.out_dim(), od = m.cfg.obs_dim, ad = m.cfg.act_dim;
  require(obs != nullptr && rew != nullptr && next_obs != nullptr && (act != nullptr || ad == 0),
          "fit: obs, act, rew and next_obs must not be null");
  require(opt.holdout_ratio >= 0.0 && opt.holdout_ratio < 1.0, "fit: holdout_ratio: expected a value in [0, 1)");
  require(opt.max_holdout >= 0, "fit: max_holdout: expected >= 0");
  require(opt.batch_size >= 1, "fit: batch_size: expected >= 1");
  require(opt.max_epochs >= 0, "fit: max_epochs: expected >= 0 (0 = no limit)");
  require(opt.max_seconds >= 0.0, "fit: max_seconds: expected >= 0 (0 = no limit)");
  require(opt.patience >= 1, "fit: patience: expected >= 1");
  require(opt.improvement_threshold >= 0.0, "fit: improvement_threshold: expected >= 0");
  const int64_t num_elites = opt.num_elites > 0 ? opt.num_elites : static_cast<int64_t>(m.elites.size());
  require(num_elites >= 1 && num_elites <= E,
          "fit: num_elites: expected 1.." + std::to_string(E) + ", got " + std::to_string(opt.num_elites));
  const int64_t n_hold = std::min(static_cast<int64_t>(static_cast<double>(n) * opt.holdout_ratio), opt.max_holdout);
  require(n - n_hold >= 1, "fit: need at least one training row, got " + std::to_string(n) + " rows with " +
                               std::to_string(n_hold) + " held out");
  for (int64_t k = 0; k < n * od; ++k) {
    require(std::isfinite(obs[k]) && std::isfinite(next_obs[k]), "fit: obs/next_obs contain a non-finite value");
  }
  for (int64_t k = 0; k < n * ad; ++k) require(std::isfinite(act[k]), "fit: act contains a non-finite value");
  for (int64_t k = 0; k < n; ++k) require(std::isfinite(rew[k]), "fit: rew contains a non-finite value");

  // Holdout split: a Fisher-Yates permutation; the first n_hold rows are held out.
  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), 0);
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = random_index(opt.seed, kStreamFitSplit, static_cast<uint64_t>(i), static_cast<uint32_t>(i + 1));
    std::swap(perm[i], perm[j]);
  }
  const int64_t n_train = n - n_hold;
  std::vector<float> x_train(static_cast<size_t>(n_train * in)), y_train(static_cast<size_t>(n_train * out));
  std::vector<float> x_hold(static_cast<size_t>(n_hold * in)), y_hold(static_cast<size_t>(n_hold * out));
  auto fill = [&](int64_t src, float* xr, float* yr) {
    std::memcpy(xr, obs + src * od, sizeof(float) * od);
    if (ad > 0) std::memcpy(xr + od, act + src * ad, sizeof(float) * ad);
    for (int64_t k = 0; k < od; ++k) yr[k] = next_obs[src * od + k] - obs[src * od + k];
    yr[od] = rew[src];
  };
  for (int64_t j = 0; j < n_train; ++j) fill(perm[n_hold + j], &x_train[j * in], &y_train[j * out]);
  for (int64_t j = 0; j < n_hold; ++j) fill(perm[j], &x_hold[j * in], &y_hold[j * out]);

  // Normalizer on the training split (double moments, population std, std < 1e-12 -> 1).
  for (int64_t k = 0; k < in; ++k) {
    double s = 0.0;
    for (int64_t j = 0; j < n_train; ++j) s += x_train[j * in + k];
    const double mean = s / static_cast<double>(n_train);
    double v = 0.0;
    for (int64_t j = 0; j < n_train; ++j) {
      const double d = x_train[j * in + k] - mean;
      v += d * d;
    }
    const double sd = std::sqrt(v / static_cast<double>(n_train));
    m.input_mean[k] = static_cast<float>(mean);
    m.input_std[k] = sd < 1e-12 ? 1.0f : static_cast<float>(sd);
  }
  auto normalize = [&](std::vector<float>& xs, int64_t rows) {
    for (int64_t j = 0; j < rows; ++j) {
      for (int64_t k = 0; k < in; ++k) xs[j * in + k] = (xs[j * in + k] - m.input_mean[k]) / m.input_std[k];
    }
  };
  normalize(x_train, n_train);
  normalize(x_hold, n_hold);
  const float* xh = n_hold > 0 ? x_hold.data() : x_train.data();
  const float* yh = n_hold > 0 ? y_hold.data() : y_train.data();
  const int64_t rows_h = n_hold > 0 ? n_hold : n_train;

  // One bootstrap set per member (with replacement), reshuffled every epoch.
  require(n_train < (int64_t{1} << 32), "fit: more than 2^32 training rows");
  std::vector<int64_t> boot(static_cast<size_t>(E * n_train)), idx(boot.size());
  for (int64_t k = 0; k < E * n_train; ++k) {
    boot[k] = random_index(opt.seed, kStreamFitBootstrap, static_cast<uint64_t>(k), static_cast<uint32_t>(n_train));
  }

  EnsembleFitResult res;
  res.initial_holdout_mse.assign(static_cast<size_t>(E), 0.0);
  m.member_mse(xh, yh, rows_h, res.initial_holdout_mse.data());
  std::vector<double> best(static_cast<size_t>(E), std::numeric_limits<double>::infinity()), mse(best.size());
  const int n_t = 2 * m.cfg.num_linear();
  std::vector<float> snapshot(static_cast<size_t>(m.flat_total));
  auto copy_member = [&](int64_t e, bool to_snapshot) {
    for (int t = 0; t < n_t; ++t) {
      float* p = m.tensor(t).param + e * m.member_numel[t];
      float* sp = snapshot.data() + m.flat_off[t] + e * m.member_numel[t];
      if (to_snapshot) {
        std::copy(p, p + m.member_numel[t], sp);
      } else {
        std::copy(sp, sp + m.member_numel[t], p);
      }
    }
  };
  for (int64_t e = 0; e < E; ++e) copy_member(e, true);
  int64_t epochs = 0, since = 0;
  double train_loss = 0.0;
  for (;;) {
    for (int64_t e = 0; e < E; ++e) {
      int64_t* row = idx.data() + e * n_train;
      std::copy(boot.begin() + e * n_train, boot.begin() + (e + 1) * n_train, row);
      for (int64_t i = n_train - 1; i > 0; --i) {
        const int64_t j = random_index(opt.seed, kStreamFitShuffle + static_cast<uint64_t>(epochs),
                                       static_cast<uint64_t>(e * n_train + i), static_cast<uint32_t>(i + 1));
        std::swap(row[i], row[j]);
      }
    }
    train_loss = train_epoch(x_train.data(), y_train.data(), n_train, idx.data(), n_train, opt.batch_size);
    ++epochs;
    m.member_mse(xh, yh, rows_h, mse.data());
    bool any = false;
    for (int64_t e = 0; e < E; ++e) {
      const bool improved = std::isinf(best[e]) || (best[e] - mse[e]) > opt.improvement_threshold * best[e];
      if (improved) {
        best[e] = mse[e];
        copy_member(e, true);
        any = true;
      }
    }
    train_loss += m.weight_decay_loss();
    since = any ? 0 : since + 1;
    if (since > opt.patience) break;
    if (opt.max_epochs > 0 && epochs >= opt.max_epochs) break;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (opt.max_seconds > 0.0 && elapsed >= opt.max_seconds) break;
  }
  for (int64_t e = 0; e < E; ++e) copy_member(e, false);
  res.holdout_mse.assign(static_cast<size_t>(E), 0.0);
  m.member_mse(xh, yh, rows_h, res.holdout_mse.data());
  std::vector<int64_t> order(static_cast<size_t>(E));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return res.holdout_mse[a] < res.holdout_mse[b]; });
  order.resize(static_cast<size_t>(num_elites));
  m.elites = order;
  res.elites = order;
  res.epochs = epochs;
  res.train_loss = train_loss;
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

// ------------------------------------------------------------------------------ save

namespace {

struct NamedBlob {
  std::string name, dtype;
  std::vector<int64_t> shape;
  const void* data;
  size_t bytes;
};

}  // namespace

void EnsembleTrainer::save(const std::string& path) const {
  const Impl& m = *impl_;
  const int64_t E = m.E(), in = m.cfg.in_dim(), out = m.cfg.out_dim();
  std::vector<NamedBlob> blobs;
  blobs.push_back({"input_mean", "F32", {in}, m.input_mean.data(), sizeof(float) * in});
  blobs.push_back({"input_std", "F32", {in}, m.input_std.data(), sizeof(float) * in});
  for (int i = 0; i < m.cfg.num_linear(); ++i) {
    const int64_t a = m.cfg.layer_in(i), b = m.cfg.layer_out(i);
    blobs.push_back({"layers." + std::to_string(i) + ".weight", "F32", {E, a, b}, m.st.weights[i].param,
                     sizeof(float) * E * a * b});
    blobs.push_back({"layers." + std::to_string(i) + ".bias", "F32", {E, b}, m.st.biases[i].param,
                     sizeof(float) * E * b});
  }
  blobs.push_back({"max_logvar", "F32", {out}, m.st.max_logvar.param, sizeof(float) * out});
  blobs.push_back({"min_logvar", "F32", {out}, m.st.min_logvar.param, sizeof(float) * out});
  const int64_t k = static_cast<int64_t>(m.elites.size());
  blobs.push_back({"elites", "I64", {k}, m.elites.data(), sizeof(int64_t) * k});

  std::ostringstream h;
  h << "{\"__metadata__\":{\"format\":\"mbpo_fast.ensemble/1\",\"obs_dim\":\"" << m.cfg.obs_dim
    << "\",\"act_dim\":\"" << m.cfg.act_dim << "\",\"activation\":\"silu\",\"ensemble_size\":\"" << E
    << "\",\"num_elites\":\"" << k << "\",\"hidden_size\":\"" << m.cfg.hidden_size << "\",\"num_layers\":\""
    << m.cfg.num_hidden_layers << "\"}";
  size_t offset = 0;
  for (const auto& b : blobs) {
    h << ",\"" << b.name << "\":{\"dtype\":\"" << b.dtype << "\",\"shape\":[";
    for (size_t d = 0; d < b.shape.size(); ++d) h << (d ? "," : "") << b.shape[d];
    h << "],\"data_offsets\":[" << offset << "," << offset + b.bytes << "]}";
    offset += b.bytes;
  }
  h << "}";
  std::string header = h.str();
  while (header.size() % 8 != 0) header.push_back(' ');  // the data section starts 8-byte aligned

  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw IoError("EnsembleTrainer.save: cannot open '" + tmp + "' for writing");
  auto write_all = [&](const void* p, size_t n) {
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
      const ssize_t w = ::write(fd, c, n);
      if (w <= 0) {
        ::close(fd);
        ::unlink(tmp.c_str());
        throw IoError("EnsembleTrainer.save: write to '" + tmp + "' failed");
      }
      c += w;
      n -= static_cast<size_t>(w);
    }
  };
  uint8_t len[8];
  const uint64_t hl = header.size();
  for (int b = 0; b < 8; ++b) len[b] = static_cast<uint8_t>(hl >> (8 * b));  // little endian
  write_all(len, 8);
  write_all(header.data(), header.size());
  for (const auto& b : blobs) write_all(b.data, b.bytes);
  if (::fsync(fd) != 0) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw IoError("EnsembleTrainer.save: fsync of '" + tmp + "' failed");
  }
  ::close(fd);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    throw IoError("EnsembleTrainer.save: cannot rename '" + tmp + "' to '" + path + "'");
  }
}

}  // namespace mbpo_fast

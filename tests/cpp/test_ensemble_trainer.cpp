// mbpo_fast::EnsembleTrainer: the epoch step against a double-precision reference (forward,
// Gaussian NLL with soft logvar bounds, backward, torch's Adam), thread-count independence,
// input validation, and the owning C++ fit (holdout MSE falls; save -> Ensemble::load).
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cpu/ensemble_trainer_kernels.h"
#include "harness.h"
#include "mbpo_fast/ensemble_model.h"
#include "mbpo_fast/ensemble_trainer.h"
#include "mbpo_fast/parallel.h"

using namespace mbpo_fast;

namespace {

// Borrowed storage for a trainer: params and Adam state per tensor, plus the float64 copy.
struct Model {
  EnsembleTrainerConfig cfg;
  std::vector<std::vector<float>> p, m, v;  // [w0, b0, ..., wL, bL, max, min]
  std::vector<float> step;
  EnsembleTrainerStorage storage() {
    EnsembleTrainerStorage st;
    const int n_lin = cfg.num_linear();
    for (int t = 0; t < 2 * n_lin + 2; ++t) {
      AdamTensor tt{p[t].data(), m[t].data(), v[t].data(), &step[t]};
      if (t < 2 * n_lin) {
        (t % 2 == 0 ? st.weights[t / 2] : st.biases[t / 2]) = tt;
      } else {
        (t == 2 * n_lin ? st.max_logvar : st.min_logvar) = tt;
      }
    }
    return st;
  }
};

Model make_model(int64_t E, int64_t obs, int64_t act, int64_t H, int L, uint32_t seed) {
  Model md;
  md.cfg.obs_dim = obs;
  md.cfg.act_dim = act;
  md.cfg.ensemble_size = E;
  md.cfg.hidden_size = H;
  md.cfg.num_hidden_layers = L;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int n_lin = md.cfg.num_linear();
  for (int t = 0; t < 2 * n_lin + 2; ++t) {
    int64_t n;
    if (t < 2 * n_lin) {
      const int i = t / 2;
      n = t % 2 == 0 ? E * md.cfg.layer_in(i) * md.cfg.layer_out(i) : E * md.cfg.layer_out(i);
    } else {
      n = md.cfg.out_dim();
    }
    std::vector<float> val(static_cast<size_t>(n));
    for (auto& x : val) x = 0.3f * nd(rng);
    if (t == 2 * n_lin) for (auto& x : val) x = 0.5f + 0.1f * x;     // max_logvar
    if (t == 2 * n_lin + 1) for (auto& x : val) x = -6.0f + x;       // min_logvar
    md.p.push_back(val);
    md.m.emplace_back(val.size(), 0.0f);
    md.v.emplace_back(val.size(), 0.0f);
  }
  md.step.assign(static_cast<size_t>(2 * n_lin + 2), 0.0f);
  return md;
}

double softplus(double x) { return x > 20.0 ? x : std::log1p(std::exp(x)); }
double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Float64 gradient of the batch objective (ensemble_trainer.h) at the parameters `p`.
// Returns the loss; g has the layout of p.
double reference_grad(const Model& md, const std::vector<std::vector<double>>& p, const std::vector<float>& x,
                      const std::vector<float>& y, const std::vector<int64_t>& idx, int64_t cols, int64_t s,
                      int64_t b, std::vector<std::vector<double>>& g) {
  const auto& c = md.cfg;
  const int L = c.num_hidden_layers, n_lin = c.num_linear();
  const int64_t E = c.ensemble_size, out = c.out_dim(), in = c.in_dim();
  g.assign(p.size(), {});
  for (size_t t = 0; t < p.size(); ++t) g[t].assign(p[t].size(), 0.0);
  const std::vector<double>& mx = p[2 * n_lin];
  const std::vector<double>& mn = p[2 * n_lin + 1];
  double loss = 0.0;
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t j = 0; j < b; ++j) {
      const int64_t row = idx[e * cols + s + j];
      // forward, keeping every layer's input and pre-activation
      std::vector<std::vector<double>> acts(n_lin + 1), pres(n_lin);
      acts[0].assign(x.begin() + row * in, x.begin() + (row + 1) * in);
      for (int i = 0; i < n_lin; ++i) {
        const int64_t a = c.layer_in(i), o = c.layer_out(i);
        std::vector<double> z(static_cast<size_t>(o));
        for (int64_t q = 0; q < o; ++q) {
          double acc = p[2 * i + 1][e * o + q];
          for (int64_t k = 0; k < a; ++k) acc += acts[i][k] * p[2 * i][(e * a + k) * o + q];
          z[q] = acc;
        }
        pres[i] = z;
        if (i < L) for (auto& zz : z) zz = zz * sigmoid(zz);
        acts[i + 1] = z;
      }
      const std::vector<double>& o2 = acts[n_lin];
      std::vector<double> d_out(static_cast<size_t>(2 * out));
      const double gm = 1.0 / static_cast<double>(b * out);
      for (int64_t k = 0; k < out; ++k) {
        const double raw = o2[out + k], t1 = mx[k] - raw, lv1 = mx[k] - softplus(t1);
        const double t2 = lv1 - mn[k], lv = mn[k] + softplus(t2);
        const double diff = o2[k] - y[row * out + k], inv = std::exp(-lv);
        loss += gm * (diff * diff * inv + lv);
        d_out[k] = gm * 2.0 * diff * inv;
        const double g_lv = gm * (1.0 - diff * diff * inv);
        const double g_lv1 = g_lv * sigmoid(t2);
        g[2 * n_lin + 1][k] += g_lv * (1.0 - sigmoid(t2));
        g[2 * n_lin][k] += g_lv1 * (1.0 - sigmoid(t1));
        d_out[out + k] = g_lv1 * sigmoid(t1);
      }
      std::vector<double> dy = d_out;
      for (int i = n_lin - 1; i >= 0; --i) {
        const int64_t a = c.layer_in(i), o = c.layer_out(i);
        if (i < L) {  // through the SiLU of layer i
          for (int64_t q = 0; q < o; ++q) {
            const double z = pres[i][q], sg = sigmoid(z);
            dy[q] *= sg * (1.0 + z * (1.0 - sg));
          }
        }
        std::vector<double> dx(static_cast<size_t>(a), 0.0);
        for (int64_t k = 0; k < a; ++k) {
          for (int64_t q = 0; q < o; ++q) {
            g[2 * i][(e * a + k) * o + q] += acts[i][k] * dy[q];
            dx[k] += dy[q] * p[2 * i][(e * a + k) * o + q];
          }
        }
        for (int64_t q = 0; q < o; ++q) g[2 * i + 1][e * o + q] += dy[q];
        dy = dx;
      }
    }
  }
  for (int64_t k = 0; k < out; ++k) {
    g[2 * n_lin][k] += 0.01;
    g[2 * n_lin + 1][k] -= 0.01;
    loss += 0.01 * (mx[k] - mn[k]);
  }
  return loss;
}

std::vector<double> default_decays(int n_lin) {
  std::vector<double> d(static_cast<size_t>(n_lin), 7.5e-5);
  d.front() = 2.5e-5;
  if (n_lin >= 3) d[1] = 5e-5;
  d.back() = 1e-4;
  return d;
}

// One torch Adam step in double on the reference parameters.
void reference_adam(std::vector<std::vector<double>>& p, std::vector<std::vector<double>>& m,
                    std::vector<std::vector<double>>& v, const std::vector<std::vector<double>>& g, int step,
                    const std::vector<double>& decays, int n_lin) {
  const double b1 = 0.9, b2 = 0.999, lr = 1e-3, eps = 1e-8;
  for (size_t t = 0; t < p.size(); ++t) {
    const double wd = (t < static_cast<size_t>(2 * n_lin) && t % 2 == 0) ? decays[t / 2] : 0.0;
    for (size_t k = 0; k < p[t].size(); ++k) {
      const double gg = g[t][k] + wd * p[t][k];
      m[t][k] = b1 * m[t][k] + (1 - b1) * gg;
      v[t][k] = b2 * v[t][k] + (1 - b2) * gg * gg;
      const double mh = m[t][k] / (1 - std::pow(b1, step)), vh = v[t][k] / (1 - std::pow(b2, step));
      p[t][k] -= lr * mh / (std::sqrt(vh) + eps);
    }
  }
}

struct Problem {
  std::vector<float> x, y;
  std::vector<int64_t> idx;
  int64_t rows, cols;
};

Problem make_problem(const EnsembleTrainerConfig& c, int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Problem pr{{}, {}, {}, rows, cols};
  pr.x.resize(static_cast<size_t>(rows * c.in_dim()));
  pr.y.resize(static_cast<size_t>(rows * c.out_dim()));
  for (auto& v : pr.x) v = nd(rng);
  for (auto& v : pr.y) v = 0.5f * nd(rng);
  std::uniform_int_distribution<int64_t> ud(0, rows - 1);
  pr.idx.resize(static_cast<size_t>(c.ensemble_size * cols));
  for (auto& v : pr.idx) v = ud(rng);
  return pr;
}

// Float64 trajectory of `batches` Adam steps from md's parameters.
double reference_epoch(const Model& md, const Problem& pr, int64_t batch, std::vector<std::vector<double>>& p,
                       std::vector<std::vector<double>>& m, std::vector<std::vector<double>>& v) {
  p.clear();
  for (const auto& t : md.p) p.emplace_back(t.begin(), t.end());
  m.assign(p.size(), {});
  v.assign(p.size(), {});
  for (size_t t = 0; t < p.size(); ++t) {
    m[t].assign(p[t].size(), 0.0);
    v[t].assign(p[t].size(), 0.0);
  }
  const int n_lin = md.cfg.num_linear();
  const auto decays = default_decays(n_lin);
  double loss_sum = 0.0;
  int step = 0;
  for (int64_t s = 0; s < pr.cols; s += batch) {
    const int64_t b = std::min(batch, pr.cols - s);
    std::vector<std::vector<double>> g;
    loss_sum += reference_grad(md, p, pr.x, pr.y, pr.idx, pr.cols, s, b, g);
    reference_adam(p, m, v, g, ++step, decays, n_lin);
  }
  return loss_sum / step;
}

double max_rel(const std::vector<float>& a, const std::vector<double>& b) {
  double scale = 0.0, worst = 0.0;
  for (double x : b) scale = std::max(scale, std::fabs(x));
  for (size_t k = 0; k < a.size(); ++k) {
    const double err = std::fabs(a[k] - b[k]) / (std::fabs(b[k]) + 1e-3 * scale + 1e-30);
    worst = std::max(worst, err);
  }
  return worst;
}

}  // namespace

TEST_CASE("EnsembleTrainer: one step's gradient, Adam state and parameters match float64") {
  for (int L : {1, 3}) {
    Model md = make_model(3, 2, 1, 5, L, 11 + L);
    const Problem pr = make_problem(md.cfg, 9, 4, 5);  // one batch of 4 rows per member
    std::vector<std::vector<double>> p, m, v;
    const double ref_loss = reference_epoch(md, pr, 4, p, m, v);
    EnsembleTrainer tr(md.cfg, md.storage());
    const double loss = tr.train_epoch(pr.x.data(), pr.y.data(), pr.rows, pr.idx.data(), pr.cols, 4);
    CHECK_NEAR(loss, ref_loss, 1e-5 * std::fabs(ref_loss));
    for (size_t t = 0; t < p.size(); ++t) {
      CHECK(md.step[t] == 1.0f);
      const double em = max_rel(md.m[t], m[t]), ev = max_rel(md.v[t], v[t]), ep = max_rel(md.p[t], p[t]);
      // float32 vs float64 through up to 4 layers of backward sums: a few ulp-of-the-sum off
      if (!(em < 5e-5 && ev < 5e-5 && ep < 1e-5)) {
        std::fprintf(stderr, "  L=%d tensor %zu: exp_avg %.2e exp_avg_sq %.2e param %.2e\n", L, t, em, ev, ep);
      }
      CHECK(em < 5e-5);
      CHECK(ev < 5e-5);
      CHECK(ep < 1e-5);
    }
  }
}

TEST_CASE("EnsembleTrainer: a whole epoch (short last batch) follows the float64 trajectory") {
  Model md = make_model(4, 3, 2, 7, 2, 3);
  const Problem pr = make_problem(md.cfg, 40, 23, 9);  // batches 5, 5, 5, 5, 3
  std::vector<std::vector<double>> p, m, v;
  const double ref_loss = reference_epoch(md, pr, 5, p, m, v);
  EnsembleTrainer tr(md.cfg, md.storage());
  const double loss = tr.train_epoch(pr.x.data(), pr.y.data(), pr.rows, pr.idx.data(), pr.cols, 5);
  CHECK_NEAR(loss, ref_loss, 1e-5 * std::fabs(ref_loss));
  for (size_t t = 0; t < p.size(); ++t) {
    CHECK(md.step[t] == 5.0f);
    CHECK(max_rel(md.p[t], p[t]) < 1e-4);
    CHECK(max_rel(md.m[t], m[t]) < 1e-3);
  }
}

TEST_CASE("EnsembleTrainer: results do not depend on the thread count") {
  const int before = num_threads();
  std::vector<std::vector<std::vector<float>>> results;
  for (int threads : {1, 2, 3}) {
    set_num_threads(threads);
    Model md = make_model(7, 4, 2, 16, 2, 21);
    const Problem pr = make_problem(md.cfg, 60, 60, 4);
    EnsembleTrainer tr(md.cfg, md.storage());
    tr.train_epoch(pr.x.data(), pr.y.data(), pr.rows, pr.idx.data(), pr.cols, 16);
    results.push_back(md.p);
  }
  set_num_threads(before);
  for (size_t r = 1; r < results.size(); ++r) {
    for (size_t t = 0; t < results[0].size(); ++t) {
      std::vector<double> ref(results[0][t].begin(), results[0][t].end());
      CHECK(max_rel(results[r][t], ref) < 1e-5);
    }
  }
}

TEST_CASE("EnsembleTrainer: bad input throws and changes nothing") {
  Model md = make_model(2, 2, 1, 4, 1, 1);
  Problem pr = make_problem(md.cfg, 10, 6, 2);
  EnsembleTrainer tr(md.cfg, md.storage());
  const auto params = md.p;
  pr.idx[7] = 10;  // member 1, column 1: out of range
  CHECK_THROWS(tr.train_epoch(pr.x.data(), pr.y.data(), pr.rows, pr.idx.data(), pr.cols, 4));
  CHECK_THROWS(tr.train_epoch(pr.x.data(), pr.y.data(), pr.rows, pr.idx.data(), pr.cols, 0));
  CHECK(md.p == params);
  CHECK(md.step[0] == 0.0f);
  EnsembleTrainerConfig bad = md.cfg;
  bad.weight_decays = {1e-4};  // needs 2
  CHECK_THROWS(EnsembleTrainer(bad, md.storage()));
  EnsembleTrainerStorage st = md.storage();
  st.biases[1].exp_avg = nullptr;
  CHECK_THROWS(EnsembleTrainer(md.cfg, st));
}

TEST_CASE("EnsembleTrainer (owning): the C++ fit learns a system; save -> Ensemble::load") {
  EnsembleTrainerConfig cfg;
  cfg.obs_dim = 3;
  cfg.act_dim = 2;
  cfg.ensemble_size = 5;
  cfg.hidden_size = 32;
  cfg.num_hidden_layers = 2;
  EnsembleTrainer tr(cfg, /*seed=*/7, /*num_elites=*/3);
  CHECK(tr.owning());
  const int64_t n = 1500;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> ud(-1.0f, 1.0f);
  std::vector<float> obs(n * 3), act(n * 2), rew(n), nxt(n * 3);
  for (int64_t i = 0; i < n; ++i) {
    for (int k = 0; k < 3; ++k) obs[i * 3 + k] = nd(rng);
    for (int k = 0; k < 2; ++k) act[i * 2 + k] = ud(rng);
    for (int k = 0; k < 3; ++k) {
      nxt[i * 3 + k] = obs[i * 3 + k] + std::sin(obs[i * 3 + (k + 1) % 3] + act[i * 2]) + 0.02f * nd(rng);
    }
    rew[i] = obs[i * 3] * act[i * 2 + 1];
  }
  EnsembleFitOptions opt;
  opt.max_epochs = 8;
  opt.batch_size = 32;
  // num_elites 0: the constructor's 3
  opt.seed = 1;
  const EnsembleFitResult res = tr.fit(obs.data(), act.data(), rew.data(), nxt.data(), n, opt);
  CHECK(res.epochs == 8);
  CHECK(res.elites.size() == 3);
  double worst = 0.0, best_initial = 1e30;
  for (int e = 0; e < 5; ++e) {
    worst = std::max(worst, res.holdout_mse[e]);
    best_initial = std::min(best_initial, res.initial_holdout_mse[e]);
  }
  std::printf("  C++ fit: holdout MSE %.4f (initial %.4f), %lld epochs, %.2f s\n", worst, best_initial,
              static_cast<long long>(res.epochs), res.seconds);
  CHECK(worst < 0.5 * best_initial);
  CHECK(res.holdout_mse[res.elites[0]] <= res.holdout_mse[res.elites[1]]);
  CHECK(std::isfinite(res.train_loss));
  // reproducible from the seed
  EnsembleTrainer again(cfg, 7, 3);
  const EnsembleFitResult res2 = again.fit(obs.data(), act.data(), rew.data(), nxt.data(), n, opt);
  CHECK(res2.holdout_mse == res.holdout_mse);

  // the view runs the inference kernels; the saved file loads into Ensemble with equal output
  const std::string path = "test_ensemble_trainer_model.safetensors";
  tr.save(path);
  Ensemble loaded = Ensemble::load(path);
  std::remove(path.c_str());
  CHECK(loaded.elites() == res.elites);
  const int64_t B = 16;
  std::vector<float> m1(5 * B * 4), v1(m1.size()), m2(m1.size()), v2(m1.size());
  ensemble_predict(tr.view(), obs.data(), act.data(), B, m1.data(), v1.data());
  loaded.predict(obs.data(), act.data(), B, m2.data(), v2.data());
  CHECK(m1 == m2 && v1 == v2);
  std::vector<float> next(B * 3), r(B);
  ensemble_step(tr.view(), obs.data(), act.data(), B, 5, true, nullptr, next.data(), r.data(), nullptr);
  double err = 0.0;
  for (int64_t i = 0; i < B; ++i) err += std::fabs(next[i * 3] - nxt[i * 3]);
  CHECK(err / B < 0.3);  // the deterministic step predicts the system
}

TEST_CASE("ensemble SiLU keeping its sigmoid equals train_ops' silu forward and backward") {
  if (!cpu::ensemble_trainer_avx512_supported()) {
    std::printf("  (no AVX-512: skipped)\n");
    return;
  }
  std::mt19937 rng(8);
  std::normal_distribution<float> nd(0.0f, 4.0f);
  for (int64_t n : {1, 15, 16, 17, 200, 1003}) {
    std::vector<float> x(n), g(n);
    for (auto& v : x) v = nd(rng);
    for (auto& v : g) v = nd(rng);
    x[0] = -100.0f;  // exp overflow side
    std::vector<float> x1 = x, x2 = x, pre1(n), pre2(n), sig(n), g1 = g, g2 = g;
    silu_forward(x1.data(), pre1.data(), n);
    cpu::ensemble_silu_forward_avx512(x2.data(), pre2.data(), sig.data(), n);
    CHECK(x1 == x2 && pre1 == pre2);
    silu_backward(pre1.data(), g1.data(), n);
    cpu::ensemble_silu_backward_avx512(pre2.data(), sig.data(), g2.data(), n);
    CHECK(g1 == g2);
  }
}

TEST_CASE("ensemble loss: the AVX-512 kernel matches the scalar loop (incl. logvars at the bounds)") {
  if (!cpu::ensemble_trainer_avx512_supported()) {
    std::printf("  (no AVX-512: skipped)\n");
    return;
  }
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t out : {1, 12, 16, 17, 40}) {
    for (float raw_shift : {0.0f, 30.0f, -30.0f}) {  // raw logvar inside, above max, below min
      const int64_t rows = 9;
      std::vector<float> o(rows * 2 * out), y(rows * out), mx(out), mn(out);
      for (auto& v : o) v = nd(rng);
      for (int64_t j = 0; j < rows; ++j) {
        for (int64_t k = 0; k < out; ++k) o[j * 2 * out + out + k] += raw_shift + 5.0f * nd(rng);
      }
      for (auto& v : y) v = 3.0f * nd(rng);
      for (int64_t k = 0; k < out; ++k) {
        mx[k] = 0.5f + 0.1f * nd(rng);
        mn[k] = -8.0f + nd(rng);
      }
      const float g = 1.0f / static_cast<float>(rows * out);
      std::vector<float> d1(o.size()), d2(o.size());
      std::vector<double> gx1(out, 0.1), gn1(out, -0.2), gx2 = gx1, gn2 = gn1;
      double l1 = 0.5, l2 = 0.5;
      cpu::ensemble_loss_scalar(o.data(), y.data(), rows, out, mx.data(), mn.data(), g, d1.data(), &l1, gx1.data(),
                                gn1.data());
      cpu::ensemble_loss_avx512(o.data(), y.data(), rows, out, mx.data(), mn.data(), g, d2.data(), &l2, gx2.data(),
                                gn2.data());
      CHECK_NEAR(l2, l1, 1e-6 * std::fabs(l1));
      double scale = 0.0;
      for (float v : d1) scale = std::max(scale, static_cast<double>(std::fabs(v)));
      for (size_t k = 0; k < d1.size(); ++k) CHECK_NEAR(d2[k], d1[k], 2e-5 * std::fabs(d1[k]) + 1e-7 * scale);
      for (int64_t k = 0; k < out; ++k) {
        // the bounds' gradient is a difference of two float32 terms (see the Python tests)
        CHECK_NEAR(gx2[k], gx1[k], 1e-3 * std::fabs(gx1[k]) + 1e-5 * scale);
        CHECK_NEAR(gn2[k], gn1[k], 1e-3 * std::fabs(gn1[k]) + 1e-5 * scale);
      }
    }
  }
}

MBPO_TEST_MAIN

// Python bindings of the native SAC learner (csrc/include/mbpo_fast/sac_learner.h).
//
// _C.SacLearner works in place on numpy views of the torch tensors (parameters, target
// parameters, Adam state): zero-copy, every array checked for dtype float32, shape,
// C-contiguity and writeability, and kept alive by the learner object.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "mbpo_fast/sac_learner.h"
#include "python_bridge.h"

namespace py = pybind11;
using mbpo_fast_python::shape_of;
using mbpo_fast_python::shape_str;
using mbpo_fast_python::type_name;
using namespace mbpo_fast;

namespace {

// A writable, C-contiguous float32 array of exactly `shape`, borrowed (never copied).
py::array borrow_f32(py::handle obj, const std::string& name, const std::vector<int64_t>& shape) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(name + ": expected a numpy array, got " +
                         type_name(obj));
  }
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<float>())) {
    throw py::type_error(name + ": expected dtype float32, got " + std::string(py::str(a.dtype())));
  }
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = a.shape(i) == shape[i];
  if (!ok) {
    py::tuple want(shape.size());
    for (size_t i = 0; i < shape.size(); ++i) want[i] = shape[i];
    throw py::value_error(name + ": expected shape " + std::string(py::str(want)) + ", got " +
                          shape_str(a));
  }
  if (!(a.flags() & py::array::c_style)) throw py::value_error(name + ": must be C-contiguous");
  if (!a.writeable()) throw py::value_error(name + ": must be writeable");
  return a;
}

// A C-contiguous input array of `dtype` whose shape matches `shape` (-1: any size), not
// copied; `spelled` names the expected shape in errors, e.g. "(K, B, 11)".
py::array input_array(py::handle obj, const std::string& name, const py::dtype& dtype,
                      const std::vector<int64_t>& shape, const std::string& spelled) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(name + ": expected a numpy array, got " +
                         type_name(obj));
  }
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(dtype)) {
    throw py::type_error(name + ": expected dtype " + std::string(py::str(dtype)) + ", got " +
                         std::string(py::str(a.dtype())));
  }
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || shape[i] == a.shape(i);
  if (!ok) throw py::value_error(name + ": expected shape " + spelled + ", got " + shape_str(a));
  if (!(a.flags() & py::array::c_style)) throw py::value_error(name + ": must be C-contiguous");
  return a;
}

float* ptr(py::array& a) { return static_cast<float*>(a.mutable_data()); }

// The learner plus the arrays whose memory it borrows.
class PySacLearner {
 public:
  PySacLearner(int64_t obs_dim, int64_t act_dim, int64_t hidden_size, int num_layers, double gamma,
               double tau, double target_entropy, double lr, double beta1, double beta2,
               double adam_eps, std::vector<float> action_scale, std::vector<float> action_bias,
               bool bf16, const py::sequence& actor, const py::sequence& critic,
               const py::sequence& critic_target, const py::sequence& log_alpha,
               uint64_t noise_seed) {
    SacConfig cfg;
    cfg.obs_dim = obs_dim;
    cfg.act_dim = act_dim;
    cfg.hidden_size = hidden_size;
    cfg.num_layers = num_layers;
    cfg.gamma = gamma;
    cfg.tau = tau;
    cfg.target_entropy = target_entropy;
    cfg.adam = AdamConfig{lr, beta1, beta2, adam_eps};
    cfg.action_scale = std::move(action_scale);
    cfg.action_bias = std::move(action_bias);
    cfg.precision = bf16 ? MatmulPrecision::kBf16 : MatmulPrecision::kFloat32;
    cfg.validate();  // shapes below depend on it
    const int nl = num_layers + 1;
    const size_t n_tensors = 2 * static_cast<size_t>(nl);
    auto check_len = [&](const py::sequence& seq, const char* name) {
      if (py::len(seq) != n_tensors) {
        throw py::value_error(std::string(name) + ": expected " + std::to_string(n_tensors) +
                              " tensors (weight and bias per layer), got " +
                              std::to_string(py::len(seq)));
      }
    };
    check_len(actor, "actor");
    check_len(critic, "critic");
    check_len(critic_target, "critic_target");
    auto adam_tensor = [&](py::handle item, const std::string& name,
                           const std::vector<int64_t>& shape) {
      py::sequence parts = py::reinterpret_borrow<py::sequence>(item);
      if (!py::isinstance<py::sequence>(item) || py::len(parts) != 4) {
        throw py::type_error(name + ": expected (param, exp_avg, exp_avg_sq, step)");
      }
      AdamTensor t;
      py::array p = borrow_f32(parts[0], name + ".param", shape);
      py::array m = borrow_f32(parts[1], name + ".exp_avg", shape);
      py::array v = borrow_f32(parts[2], name + ".exp_avg_sq", shape);
      py::array s = borrow_f32(parts[3], name + ".step", {});
      t.param = ptr(p);
      t.exp_avg = ptr(m);
      t.exp_avg_sq = ptr(v);
      t.step = ptr(s);
      keep_.insert(keep_.end(), {p, m, v, s});
      return t;
    };
    SacStorage storage;
    for (int i = 0; i < nl; ++i) {
      const int64_t ai = cfg.actor_in(i), ao = cfg.actor_out(i);
      const int64_t ci = cfg.critic_in(i), co = cfg.critic_out(i);
      const std::string li = "[" + std::to_string(2 * i) + "]", lb = "[" + std::to_string(2 * i + 1) + "]";
      storage.actor.push_back(adam_tensor(actor[2 * i], "actor" + li, {1, ai, ao}));
      storage.actor.push_back(adam_tensor(actor[2 * i + 1], "actor" + lb, {1, ao}));
      storage.critic.push_back(adam_tensor(critic[2 * i], "critic" + li, {2, ci, co}));
      storage.critic.push_back(adam_tensor(critic[2 * i + 1], "critic" + lb, {2, co}));
      py::array tw = borrow_f32(critic_target[2 * i], "critic_target" + li, {2, ci, co});
      py::array tb = borrow_f32(critic_target[2 * i + 1], "critic_target" + lb, {2, co});
      storage.critic_target.push_back(ptr(tw));
      storage.critic_target.push_back(ptr(tb));
      keep_.insert(keep_.end(), {tw, tb});
    }
    storage.log_alpha = adam_tensor(log_alpha, "log_alpha", {});
    learner_ = std::make_unique<SacLearner>(std::move(cfg), std::move(storage), noise_seed);
  }

  py::dict update_block(py::handle obs_h, py::handle act_h, py::handle rew_h, py::handle next_h,
                        py::handle term_h, py::handle eps_h) {
    const SacConfig& cfg = learner_->config();
    const auto f32 = py::dtype::of<float>();
    const std::string O = std::to_string(cfg.obs_dim), A = std::to_string(cfg.act_dim);
    py::array obs = input_array(obs_h, "obs", f32, {-1, -1, cfg.obs_dim}, "(K, B, " + O + ")");
    const int64_t k = obs.shape(0), b = obs.shape(1);
    if (k < 1 || b < 1) {
      throw py::value_error("obs: expected shape (K, B, " + O + ") with K, B >= 1, got " +
                            shape_str(obs));
    }
    const std::string K = std::to_string(k), B = std::to_string(b);
    py::array act = input_array(act_h, "act", f32, {k, b, cfg.act_dim},
                                "(" + K + ", " + B + ", " + A + ")");
    py::array rew = input_array(rew_h, "rew", f32, {k, b}, "(" + K + ", " + B + ")");
    py::array next = input_array(next_h, "next_obs", f32, {k, b, cfg.obs_dim},
                                 "(" + K + ", " + B + ", " + O + ")");
    const bool is_bool = py::isinstance<py::array>(term_h) &&
                         py::reinterpret_borrow<py::array>(term_h).dtype().is(py::dtype::of<bool>());
    if (!is_bool && py::isinstance<py::array>(term_h) &&
        !py::reinterpret_borrow<py::array>(term_h).dtype().is(py::dtype::of<uint8_t>())) {
      throw py::type_error("terminated: expected dtype bool or uint8, got " +
                           std::string(py::str(py::reinterpret_borrow<py::array>(term_h).dtype())));
    }
    py::array term = input_array(term_h, "terminated",
                                 is_bool ? py::dtype::of<bool>() : py::dtype::of<uint8_t>(), {k, b},
                                 "(" + K + ", " + B + ")");
    const float* eps = nullptr;
    py::array eps_arr;
    if (!eps_h.is_none()) {
      eps_arr = input_array(eps_h, "eps", f32, {k, 2, b, cfg.act_dim},
                            "(" + K + ", 2, " + B + ", " + A + ")");
      eps = static_cast<const float*>(eps_arr.data());
    }
    std::vector<SacStats> stats(static_cast<size_t>(k));
    {
      py::gil_scoped_release release;
      learner_->update_block(k, b, static_cast<const float*>(obs.data()),
                             static_cast<const float*>(act.data()),
                             static_cast<const float*>(rew.data()),
                             static_cast<const float*>(next.data()),
                             static_cast<const uint8_t*>(term.data()), eps, stats.data());
    }
    py::array_t<float> critic_loss(k), actor_loss(k), alpha(k), entropy(k), mean_q(k);
    for (int64_t i = 0; i < k; ++i) {
      critic_loss.mutable_at(i) = stats[i].critic_loss;
      actor_loss.mutable_at(i) = stats[i].actor_loss;
      alpha.mutable_at(i) = stats[i].alpha;
      entropy.mutable_at(i) = stats[i].entropy;
      mean_q.mutable_at(i) = stats[i].mean_q;
    }
    py::dict out;
    out["critic_loss"] = critic_loss;
    out["actor_loss"] = actor_loss;
    out["alpha"] = alpha;
    out["entropy"] = entropy;
    out["mean_q"] = mean_q;
    return out;
  }

  int64_t update_macs(int64_t batch) const { return learner_->update_macs(batch); }
  uint64_t noise_offset() const { return learner_->noise_offset(); }

 private:
  std::unique_ptr<SacLearner> learner_;
  std::vector<py::array> keep_;
};

}  // namespace

void bind_sac_learner(py::module_& m) {
  py::class_<PySacLearner>(m, "SacLearner", R"doc(
Native SAC trainer working in place on borrowed float32 numpy views (see
csrc/include/mbpo_fast/sac_learner.h for the math).

SacLearner(obs_dim, act_dim, hidden_size, num_layers, gamma, tau, target_entropy, lr, beta1,
           beta2, adam_eps, action_scale, action_bias, bf16, actor, critic, critic_target,
           log_alpha, noise_seed=0)
  actor, critic: 2 * (num_layers + 1) tuples (param, exp_avg, exp_avg_sq, step) in the
  modules' parameters() order; actor weight [1, in, out], bias [1, out]; critic weight
  [2, in, out], bias [2, out]; step: 0-d float32. critic_target: the critic's shapes.
  log_alpha: (param, exp_avg, exp_avg_sq, step), all 0-d. Every array float32,
  C-contiguous, writeable; they are borrowed (zero-copy) and kept alive by the learner.
)doc")
      .def(py::init<int64_t, int64_t, int64_t, int, double, double, double, double, double, double,
                    double, std::vector<float>, std::vector<float>, bool, const py::sequence&,
                    const py::sequence&, const py::sequence&, const py::sequence&, uint64_t>(),
           py::arg("obs_dim"), py::arg("act_dim"), py::arg("hidden_size"), py::arg("num_layers"),
           py::arg("gamma"), py::arg("tau"), py::arg("target_entropy"), py::arg("lr"),
           py::arg("beta1"), py::arg("beta2"), py::arg("adam_eps"), py::arg("action_scale"),
           py::arg("action_bias"), py::arg("bf16"), py::arg("actor"), py::arg("critic"),
           py::arg("critic_target"), py::arg("log_alpha"), py::arg("noise_seed") = 0)
      .def("update_block", &PySacLearner::update_block, py::arg("obs"), py::arg("act"),
           py::arg("rew"), py::arg("next_obs"), py::arg("terminated"), py::arg("eps") = py::none(),
           R"doc(K SAC updates in one call (GIL released).

obs, next_obs float32 [K, B, obs_dim]; act float32 [K, B, act_dim]; rew float32 [K, B];
terminated bool or uint8 [K, B]; eps float32 [K, 2, B, act_dim] (eps[k, 0]: next-state
actions, eps[k, 1]: policy actions) or None (drawn from Philox). All C-contiguous.
Returns {critic_loss, actor_loss, alpha, entropy, mean_q}: float32 [K] each.)doc")
      .def("update_macs", &PySacLearner::update_macs, py::arg("batch"),
           "Matmul multiply-adds of one update at this batch size.")
      .def_property_readonly("noise_offset", &PySacLearner::noise_offset);
}

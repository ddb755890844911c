// Python bindings of the MPC planner (csrc/include/mbpo_fast/planner.h) and the built-in
// rewards (reward.h). The ensemble's parameters are borrowed per call (as for the ensemble
// ops); the whole plan runs in one call with the GIL released (a Python reward or
// termination callable re-acquires it once per horizon step).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "mbpo_fast/planner.h"
#include "mbpo_fast/reward.h"
#include "python_bridge.h"

namespace py = pybind11;
using mbpo_fast_python::shape_of;
using mbpo_fast_python::shape_str;
using mbpo_fast_python::type_name;
using namespace mbpo_fast;
using mbpo_fast_python::BorrowedEnsemble;
using mbpo_fast_python::finite_f32;

namespace {

bool is_int(py::handle h) { return PyLong_Check(h.ptr()) && !PyBool_Check(h.ptr()); }

// fn(obs, act, next_obs) -> float [n], called with the GIL and copies of the rows.
RewardCallback reward_from_python(py::function fn, int64_t od, int64_t ad) {
  return [fn = std::move(fn), od, ad](const float* o, const float* a, const float* next, int64_t n, float* out) {
    py::gil_scoped_acquire gil;
    py::array arr = mbpo_fast_python::call_rows_callback(fn, o, a, next, n, od, ad, "reward", "fiu", "float");
    auto f = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(arr);
    std::memcpy(out, f.data(), sizeof(float) * static_cast<size_t>(n));
  };
}

// reward: an int (0 = the model's reward, else a RewardId) or a callable;
// termination: an int (TerminationId) or a callable. Validated against the model's dims.
PlanObjective objective_from_python(py::handle reward, py::handle termination, const EnsembleView& v) {
  PlanObjective o;
  if (is_int(reward)) {
    const int32_t id = reward.cast<int32_t>();
    check_reward_args(id, v.obs_dim, v.act_dim, "reward");
    o.reward = static_cast<RewardId>(id);
  } else if (PyCallable_Check(reward.ptr())) {
    o.reward_callback = reward_from_python(py::reinterpret_borrow<py::function>(reward), v.obs_dim, v.act_dim);
  } else {
    throw py::type_error("reward: expected a built-in reward id (int, 0 = the model's reward) or a callable "
                         "(obs, act, next_obs) -> float [n], got " +
                         type_name(reward));
  }
  if (is_int(termination)) {
    const int32_t id = termination.cast<int32_t>();
    check_termination_args(id, v.obs_dim, "termination");
    o.termination = static_cast<TerminationId>(id);
  } else if (PyCallable_Check(termination.ptr())) {
    o.termination_callback = mbpo_fast_python::termination_from_python(
        py::reinterpret_borrow<py::function>(termination), v.obs_dim, v.act_dim);
  } else {
    throw py::type_error("termination: expected a built-in termination id (int) or a callable "
                         "(obs, act, next_obs) -> bool [n], got " +
                         type_name(termination));
  }
  return o;
}

PlanOptimizer optimizer_arg(const std::string& s) {
  if (s == "cem") return PlanOptimizer::kCem;
  if (s == "random") return PlanOptimizer::kRandom;
  throw py::value_error("optimizer: expected 'cem' or 'random', got '" + s + "'");
}

Propagation propagation_arg(const std::string& s) {
  if (s == "ts_inf") return Propagation::kTsInf;
  if (s == "ts_1") return Propagation::kTs1;
  throw py::value_error("propagation: expected 'ts_inf' or 'ts_1', got '" + s + "'");
}

BorrowedEnsemble planning_model(py::handle input_mean, py::handle input_std, const py::sequence& weights,
                                const py::sequence& biases, py::handle max_logvar, py::handle min_logvar,
                                py::handle elites, py::handle weights_bf16) {
  if (elites.is_none()) throw py::value_error("elites: planning needs the elite indices, got None");
  BorrowedEnsemble m = mbpo_fast_python::borrow_ensemble(input_mean, input_std, weights, biases, max_logvar,
                                                         min_logvar, elites, weights_bf16);
  if (m.view.num_elites < 1) throw py::value_error("elites: expected at least one elite index, got none");
  return m;
}

}  // namespace

namespace mbpo_fast_python {

py::array_t<float, py::array::c_style | py::array::forcecast> finite_f32(py::handle obj, const char* name,
                                                                         const std::vector<int64_t>& shape) {
  py::array a = py::array::ensure(obj);
  if (!a) {
    throw py::type_error(std::string(name) + ": expected a numeric array, got " +
                         type_name(obj));
  }
  const char k = a.dtype().kind();
  if (k != 'f' && k != 'i' && k != 'u') {
    throw py::type_error(std::string(name) + ": expected a real numeric dtype (float32 preferred), got " +
                         std::string(py::str(a.dtype())));
  }
  const auto got = shape_of(a);
  bool ok = got.size() == shape.size();
  for (size_t i = 0; ok && i < got.size(); ++i) ok = shape[i] < 0 || shape[i] == got[i];
  if (!ok) throw py::value_error(std::string(name) + ": expected shape " + shape_str(shape) + ", got " + shape_str(got));
  auto out = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a);
  if (!out) throw py::error_already_set();
  const float* p = out.data();
  for (py::ssize_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(p[i])) {
      throw py::value_error(std::string(name) + ": contains a non-finite value (NaN or Inf) at flat index " +
                            std::to_string(i));
    }
  }
  return out;
}

PlannerConfig planner_config_from_python(int64_t act_dim, int64_t horizon, PlanOptimizer optimizer,
                                         int64_t population, int64_t elites, int64_t iterations, double alpha,
                                         int64_t particles, Propagation propagation, py::handle action_low,
                                         py::handle action_high) {
  PlannerConfig cfg;
  cfg.horizon = horizon;
  cfg.optimizer = optimizer;
  cfg.population = population;
  cfg.elites = elites;
  cfg.iterations = iterations;
  cfg.alpha = alpha;
  cfg.particles = particles;
  cfg.propagation = propagation;
  auto lo = finite_f32(action_low, "action_low", {act_dim});
  auto hi = finite_f32(action_high, "action_high", {act_dim});
  cfg.action_low.assign(lo.data(), lo.data() + act_dim);
  cfg.action_high.assign(hi.data(), hi.data() + act_dim);
  cfg.validate(act_dim);
  return cfg;
}

PlanOptimizer optimizer_from_id(int32_t id) {
  if (id == static_cast<int32_t>(PlanOptimizer::kCem)) return PlanOptimizer::kCem;
  if (id == static_cast<int32_t>(PlanOptimizer::kRandom)) return PlanOptimizer::kRandom;
  throw py::value_error("optimizer: expected 0 (cem) or 1 (random), got " + std::to_string(id));
}

Propagation propagation_from_id(int32_t id) {
  if (id == static_cast<int32_t>(Propagation::kTsInf)) return Propagation::kTsInf;
  if (id == static_cast<int32_t>(Propagation::kTs1)) return Propagation::kTs1;
  throw py::value_error("propagation: expected 0 (ts_inf) or 1 (ts_1), got " + std::to_string(id));
}

}  // namespace mbpo_fast_python

void bind_planner(py::module_& m) {
  m.attr("STREAM_PLAN_SEED") = py::int_(kStreamPlanSeed);
  m.attr("STREAM_PLAN_ACTION") = py::int_(kStreamPlanAction);
  m.def(
      "derive_seed",
      [](py::handle seed, py::handle stream, py::handle index) {
        return derive_seed(mbpo_fast_python::seed_from_python(seed), mbpo_fast_python::seed_from_python(stream),
                           mbpo_fast_python::seed_from_python(index));
      },
      py::arg("seed"), py::arg("stream"), py::arg("index"),
      "(v1 << 32) | v0 of philox_block(seed, stream, index): the planner's call and iteration seeds.");
  m.def(
      "reward_id",
      [](const std::string& env_id) { return static_cast<int32_t>(reward_id_from_env(env_id)); },
      py::arg("env_id"), "The built-in reward id of a gymnasium env id (ValueError listing the known ids).");
  m.def("reward_env_ids", [] {
    std::vector<std::string> out;
    std::string s = known_reward_envs();
    for (size_t p = 0; p < s.size();) {
      const size_t q = s.find(", ", p);
      out.push_back(s.substr(p, q == std::string::npos ? std::string::npos : q - p));
      p = q == std::string::npos ? s.size() : q + 2;
    }
    return out;
  });
  m.def(
      "reward",
      [](int32_t id, py::handle obs, py::handle act, py::handle next_obs) {
        if (id == static_cast<int32_t>(RewardId::kModel)) {
          throw py::value_error("reward_id: 0 is the model's reward, not a function of (obs, act, next_obs)");
        }
        auto o = finite_f32(obs, "obs", {-1, -1});
        const int64_t n = o.shape(0), od = o.shape(1);
        auto a = finite_f32(act, "act", {n, -1});
        const int64_t ad = a.shape(1);
        auto nx = finite_f32(next_obs, "next_obs", {n, od});
        check_reward_args(id, od, ad, "reward_id");
        py::array_t<float> out(static_cast<py::ssize_t>(n));
        float* po = out.mutable_data();
        {
          py::gil_scoped_release release;
          rewards(static_cast<RewardId>(id), o.data(), a.data(), nx.data(), n, static_cast<int>(od),
                  static_cast<int>(ad), po);
        }
        return out;
      },
      py::arg("reward_id"), py::arg("obs"), py::arg("act"), py::arg("next_obs"),
      "Built-in reward per row: obs f32 [n, obs_dim], act f32 [n, act_dim], next_obs f32 [n, obs_dim] -> f32 [n].");
  m.def(
      "mpc_plan",
      [](py::handle obs, py::handle mean, py::handle action_low, py::handle action_high, py::handle input_mean,
         py::handle input_std, py::sequence weights, py::sequence biases, py::handle max_logvar,
         py::handle min_logvar, py::handle elites, py::handle reward, py::handle termination,
         const std::string& optimizer, int64_t population, int64_t num_elites, int64_t iterations, double alpha,
         int64_t particles, const std::string& propagation, int64_t horizon, py::handle seed, py::handle call,
         py::handle weights_bf16) {
        BorrowedEnsemble model = planning_model(input_mean, input_std, weights, biases, max_logvar, min_logvar,
                                                elites, weights_bf16);
        const EnsembleView& v = model.view;
        const PlannerConfig cfg = mbpo_fast_python::planner_config_from_python(
            v.act_dim, horizon, optimizer_arg(optimizer), population, num_elites, iterations, alpha, particles,
            propagation_arg(propagation), action_low, action_high);
        auto o = finite_f32(obs, "obs", {v.obs_dim});
        auto mu = finite_f32(mean, "mean", {horizon, v.act_dim});
        PlanObjective obj = objective_from_python(reward, termination, v);
        const uint64_t call_seed = derive_seed(mbpo_fast_python::seed_from_python(seed), kStreamPlanSeed,
                                               mbpo_fast_python::seed_from_python(call));
        return mbpo_fast_python::run_plan(horizon, v.act_dim, [&](float* pa, float* pm) {
          return plan_optimize(v, cfg, obj, o.data(), mu.data(), call_seed, pa, pm);
        });
      },
      py::arg("obs"), py::arg("mean"), py::arg("action_low"), py::arg("action_high"), py::arg("input_mean"),
      py::arg("input_std"), py::arg("weights"), py::arg("biases"), py::arg("max_logvar"), py::arg("min_logvar"),
      py::arg("elites"), py::arg("reward") = 0, py::arg("termination") = 0, py::arg("optimizer") = "cem",
      py::arg("population") = 500, py::arg("num_elites") = 50, py::arg("iterations") = 5, py::arg("alpha") = 0.1,
      py::arg("particles") = 20, py::arg("propagation") = "ts_inf", py::arg("horizon") = 30, py::arg("seed") = 0,
      py::arg("call") = 0, py::arg("weights_bf16") = py::none(),
      "One MPC plan (planner.h), GIL released: obs f32 [obs_dim], mean f32 [horizon, act_dim] (warm start),\n"
      "action_low/high f32 [act_dim]; reward: 0 (model), a built-in id or a callable; termination: id or callable.\n"
      "Call seed: derive_seed(seed, STREAM_PLAN_SEED, call). Returns (action f32 [act_dim], final mean f32\n"
      "[horizon, act_dim] (unshifted), stats dict: best_value, elite_value, failed, iterations, seconds).");
  m.def(
      "mpc_evaluate",
      [](py::handle obs, py::handle actions, py::handle input_mean, py::handle input_std, py::sequence weights,
         py::sequence biases, py::handle max_logvar, py::handle min_logvar, py::handle elites, py::handle reward,
         py::handle termination, int64_t particles, const std::string& propagation, py::handle seed,
         py::handle weights_bf16) {
        BorrowedEnsemble model = planning_model(input_mean, input_std, weights, biases, max_logvar, min_logvar,
                                                elites, weights_bf16);
        const EnsembleView& v = model.view;
        auto o = finite_f32(obs, "obs", {v.obs_dim});
        auto x = finite_f32(actions, "actions", {-1, -1, v.act_dim});
        const int64_t N = x.shape(0), H = x.shape(1);
        if (N < 1 || H < 1) {
          throw py::value_error("actions: expected shape (N >= 1, horizon >= 1, " + std::to_string(v.act_dim) +
                                "), got " + shape_str(shape_of(x)));
        }
        if (particles < 1) throw py::value_error("particles: expected >= 1, got " + std::to_string(particles));
        const Propagation prop = propagation_arg(propagation);
        PlanObjective obj = objective_from_python(reward, termination, v);
        const uint64_t s = mbpo_fast_python::seed_from_python(seed);
        py::array_t<double> values(static_cast<py::ssize_t>(N));
        py::array_t<int64_t> members({static_cast<py::ssize_t>(H), static_cast<py::ssize_t>(N * particles)});
        double* pv = values.mutable_data();
        int64_t* pm = members.mutable_data();
        {
          py::gil_scoped_release release;
          plan_evaluate(v, obj, o.data(), x.data(), N, H, particles, prop, s, pv, pm);
        }
        return py::make_tuple(values, members);
      },
      py::arg("obs"), py::arg("actions"), py::arg("input_mean"), py::arg("input_std"), py::arg("weights"),
      py::arg("biases"), py::arg("max_logvar"), py::arg("min_logvar"), py::arg("elites"), py::arg("reward") = 0,
      py::arg("termination") = 0, py::arg("particles") = 20, py::arg("propagation") = "ts_inf",
      py::arg("seed") = 0, py::arg("weights_bf16") = py::none(),
      "Scores action sequences f32 [N, horizon, act_dim] from obs f32 [obs_dim] with `particles` model rollouts\n"
      "each (planner.h, plan_evaluate; `seed` is the iteration seed). Returns (values f64 [N]: mean return over\n"
      "particles, -inf when one failed; members int64 [horizon, N * particles]: the member of every row).");
}

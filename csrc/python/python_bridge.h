// Helpers shared by csrc/python/bindings.cpp and the bind_*.cpp files (only these files
// include pybind11): shape and type spellings for error messages, borrowing an ensemble's
// parameters as an EnsembleView, finite float32 arrays, planner settings, seeds, and calling
// Python reward/termination callables, with one set of validation and error messages.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "mbpo_fast/ensemble.h"
#include "mbpo_fast/planner.h"
#include "mbpo_fast/rollout.h"

namespace mbpo_fast_python {

// Python's spelling of a shape, "(2, 3)" / "(5,)"; a negative extent (any size) prints "*".
inline std::string shape_str(const std::vector<int64_t>& shape) { return mbpo_fast::shape_string(shape); }

inline std::vector<int64_t> shape_of(const pybind11::array& a) {
  return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}

inline std::string shape_str(const pybind11::array& a) { return shape_str(shape_of(a)); }

// The name of obj's type, for "expected ..., got <type>" messages.
inline std::string type_name(pybind11::handle obj) {
  return pybind11::str(pybind11::type::handle_of(obj).attr("__name__"));
}

// The borrowed parameters of one call: `keep` holds the arrays the view points into.
struct BorrowedEnsemble {
  std::vector<pybind11::object> keep;
  mbpo_fast::EnsembleView view;
};

// As the ensemble ops: input_mean/std f32 [in], weights[i] f32 [E, in_i, out_i], biases[i]
// f32 [E, out_i], max/min_logvar f32 [obs_dim + 1], elites int [K] or None, weights_bf16 a
// list of packed arrays or None. Raises TypeError/ValueError naming the argument.
BorrowedEnsemble borrow_ensemble(pybind11::handle input_mean, pybind11::handle input_std,
                                 const pybind11::sequence& weights, const pybind11::sequence& biases,
                                 pybind11::handle max_logvar, pybind11::handle min_logvar, pybind11::handle elites,
                                 pybind11::handle weights_bf16);

// A seed in [0, 2**64) from any Python integer (TypeError/ValueError otherwise).
uint64_t seed_from_python(pybind11::handle seed);

// Calls fn(obs, act, next_obs) with fresh float32 copies of n rows (the caller holds the GIL;
// the callee may keep the copies) and returns its result, checked to be a 1-D array of n
// entries whose dtype kind is one of `kinds` (e.g. "fiu"): TypeError "<what>: the callable
// must return a <kind_text> array, got <dtype>" / ValueError naming the shape otherwise.
pybind11::array call_rows_callback(const pybind11::function& fn, const float* obs, const float* act,
                                   const float* next_obs, int64_t n, int64_t obs_dim, int64_t act_dim,
                                   const char* what, const char* kinds, const char* kind_text);

// fn(obs, act, next_obs) -> bool [n], called with the GIL (copies of the rows).
mbpo_fast::TerminationCallback termination_from_python(pybind11::function fn, int64_t obs_dim, int64_t act_dim);

// A C-contiguous float32 copy/view of a real-valued array of `shape` (-1: any size) whose
// every entry is finite. TypeError (not numeric) / ValueError (shape, NaN or Inf) naming `name`.
pybind11::array_t<float, pybind11::array::c_style | pybind11::array::forcecast> finite_f32(
    pybind11::handle obj, const char* name, const std::vector<int64_t>& shape);

// A planner's settings from Python, validated as mbpo_fast::PlannerConfig::validate does
// (ValueError naming the setting): the CPU and the CUDA planner bindings share it.
// action_low/high: finite float [act_dim].
mbpo_fast::PlannerConfig planner_config_from_python(int64_t act_dim, int64_t horizon, mbpo_fast::PlanOptimizer optimizer,
                                                    int64_t population, int64_t elites, int64_t iterations,
                                                    double alpha, int64_t particles,
                                                    mbpo_fast::Propagation propagation, pybind11::handle action_low,
                                                    pybind11::handle action_high);

// The enums from their integer ids (0 = cem, 1 = random; 0 = ts_inf, 1 = ts_1); ValueError
// naming the argument for any other value.
mbpo_fast::PlanOptimizer optimizer_from_id(int32_t id);
mbpo_fast::Propagation propagation_from_id(int32_t id);

// The stats dict of one plan (CPU and CUDA planners): best_value, elite_value, failed,
// iterations, seconds.
inline pybind11::dict plan_stats(const mbpo_fast::PlanResult& r) {
  pybind11::dict stats;
  stats["best_value"] = r.best_value;
  stats["elite_value"] = r.elite_value;
  stats["failed"] = r.failed;
  stats["iterations"] = r.iterations;
  stats["seconds"] = r.seconds;
  return stats;
}

// One plan into fresh outputs with the GIL released, for the CPU and CUDA planner bindings:
// plan(action f32 [act_dim], final mean f32 [horizon, act_dim]) -> PlanResult. Returns
// (action, final mean, plan_stats).
template <typename Plan>
pybind11::tuple run_plan(int64_t horizon, int64_t act_dim, Plan&& plan) {
  pybind11::array_t<float> action(static_cast<pybind11::ssize_t>(act_dim));
  pybind11::array_t<float> mean_out(
      {static_cast<pybind11::ssize_t>(horizon), static_cast<pybind11::ssize_t>(act_dim)});
  float* pa = action.mutable_data();
  float* pm = mean_out.mutable_data();
  mbpo_fast::PlanResult r;
  {
    pybind11::gil_scoped_release release;
    r = plan(pa, pm);
  }
  return pybind11::make_tuple(action, mean_out, plan_stats(r));
}

}  // namespace mbpo_fast_python

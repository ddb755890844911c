// The only file that includes pybind11: converts and validates arrays, releases the GIL
// and calls one raw-pointer implementation of the C++ core per op.
//
// Conventions for every binding in this file:
//   * arrays are validated with the helpers below (dtype kind, rank, shape, finiteness);
//     a mismatch raises ValueError/TypeError naming the argument, expected and actual;
//   * float64 / non-contiguous inputs are converted (copied) to contiguous float32;
//   * long calls release the GIL (py::gil_scoped_release) after validation.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "mbpo_fast/parallel.h"
#include "mbpo_fast/common.h"
#include "mbpo_fast/cuda.h"
#include "mbpo_fast/ensemble.h"
#include "mbpo_fast/rng.h"
#include "mbpo_fast/termination.h"

namespace py = pybind11;
using namespace mbpo_fast;

namespace {

// ------------------------------------------------------------------ validation helpers

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) os << ", ";
    if (shape[i] < 0) os << "*"; else os << shape[i];
  }
  if (shape.size() == 1) os << ",";
  os << ")";
  return os.str();
}

std::vector<int64_t> shape_of(const py::array& a) {
  return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}

// Converts `obj` to a C-contiguous float32 array whose shape matches `expected`
// (-1 = any size). Raises TypeError for non-numeric input and ValueError for a
// wrong shape. Copies only when the input is not already contiguous float32.
py::array_t<float, py::array::c_style> as_f32(py::handle obj, const char* name,
                                              const std::vector<int64_t>& expected) {
  py::array arr = py::array::ensure(obj);
  if (!arr) throw py::type_error(std::string(name) + ": expected a numeric array, got " +
                                 std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
  const char kind = arr.dtype().kind();
  if (kind != 'f' && kind != 'i' && kind != 'u' && kind != 'b') {
    throw py::type_error(std::string(name) + ": expected a real numeric dtype (float32 preferred), got " +
                         std::string(py::str(arr.dtype())));
  }
  const auto got = shape_of(arr);
  bool ok = got.size() == expected.size();
  for (size_t i = 0; ok && i < got.size(); ++i) ok = expected[i] < 0 || expected[i] == got[i];
  if (!ok) {
    throw py::value_error(std::string(name) + ": expected shape " + shape_str(expected) + ", got " +
                          shape_str(got));
  }
  return py::array_t<float, py::array::c_style>::ensure(arr);
}

// Raises ValueError when any of the n values is NaN or infinite.
void require_finite(const float* p, int64_t n, const char* name) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(p[i])) {
      throw py::value_error(std::string(name) + ": contains a non-finite value (NaN or Inf) at flat index " +
                            std::to_string(i));
    }
  }
}

template <typename T>
py::array_t<T> new_array(const std::vector<int64_t>& shape) {
  std::vector<py::ssize_t> s(shape.begin(), shape.end());
  return py::array_t<T>(s);
}

// ------------------------------------------------------------------ section: rng / build

void bind_core(py::module_& m) {
  m.def("version", [] { return std::string(mbpo_fast::version()); });
  m.def("build_info", [] {
    py::dict info;
    info["version"] = std::string(mbpo_fast::version());
    info["cuda_compiled"] = cuda_compiled();
    std::vector<std::string> archs;
    std::string all = cuda_architectures(), item;
    std::istringstream is(all);
    while (std::getline(is, item, ',')) if (!item.empty()) archs.push_back(item);
    info["cuda_architectures"] = archs;
    info["compiler"] = std::string(MBPO_FAST_COMPILER);
    info["simd"] = std::string(MBPO_FAST_SIMD_FLAGS);
    info["num_threads"] = num_threads();
    return info;
  });
  m.def("cuda_device_count", &cuda_device_count);
  m.def("num_threads", &num_threads, "Threads used by the native CPU kernels.");
  m.def("set_num_threads", &set_num_threads, py::arg("n"),
        "Sets the threads used by the native CPU kernels (>= 1).");

  m.attr("STREAM_USER") = py::int_(kStreamUser);
  m.attr("STREAM_POOL_SAMPLE") = py::int_(kStreamPoolSample);
  m.attr("STREAM_MEMBER_CHOICE") = py::int_(kStreamMemberChoice);
  m.attr("STREAM_MODEL_NOISE") = py::int_(kStreamModelNoise);
  m.attr("STREAM_POLICY_NOISE") = py::int_(kStreamPolicyNoise);
  m.attr("STREAM_ROLLOUT_START") = py::int_(kStreamRolloutStart);

  m.def(
      "philox4x32_10",
      [](std::vector<uint32_t> counter, std::vector<uint32_t> key) {
        if (counter.size() != 4) throw py::value_error("counter: expected 4 words, got " + std::to_string(counter.size()));
        if (key.size() != 2) throw py::value_error("key: expected 2 words, got " + std::to_string(key.size()));
        const Philox4x32 r = philox4x32_10(counter[0], counter[1], counter[2], counter[3], key[0], key[1]);
        return py::make_tuple(r.v[0], r.v[1], r.v[2], r.v[3]);
      },
      py::arg("counter"), py::arg("key"), "One Philox4x32-10 block: 4 uint32 words.");
  m.def(
      "philox_fill_u32",
      [](uint64_t seed, uint64_t stream, uint64_t offset, int64_t n) {
        if (n < 0) throw py::value_error("n: expected n >= 0, got " + std::to_string(n));
        auto out = new_array<uint32_t>({n});
        uint32_t* p = out.mutable_data();
        py::gil_scoped_release release;
        philox_fill_u32(seed, stream, offset, n, p);
        return out;
      },
      py::arg("seed"), py::arg("stream"), py::arg("offset"), py::arg("n"),
      "uint32 words number offset..offset+n-1 of (seed, stream).");
  m.def(
      "philox_fill_normal",
      [](uint64_t seed, uint64_t stream, uint64_t offset, int64_t n) {
        if (n < 0) throw py::value_error("n: expected n >= 0, got " + std::to_string(n));
        auto out = new_array<float>({n});
        float* p = out.mutable_data();
        py::gil_scoped_release release;
        philox_fill_normal(seed, stream, offset, n, p);
        return out;
      },
      py::arg("seed"), py::arg("stream"), py::arg("offset"), py::arg("n"),
      "float32 standard normals number offset..offset+n-1 of (seed, stream).");
  m.def(
      "cuda_philox_fill_normal",
      [](uint64_t seed, uint64_t stream, uint64_t offset, int64_t n, uintptr_t out_ptr, uintptr_t cuda_stream) {
        if (n < 0) throw py::value_error("n: expected n >= 0, got " + std::to_string(n));
        if (n > 0 && out_ptr == 0) throw py::value_error("out_ptr: expected a device pointer, got 0");
        py::gil_scoped_release release;
        cuda_philox_fill_normal(seed, stream, offset, n, reinterpret_cast<float*>(out_ptr),
                                reinterpret_cast<void*>(cuda_stream));
      },
      py::arg("seed"), py::arg("stream"), py::arg("offset"), py::arg("n"), py::arg("out_ptr"),
      py::arg("cuda_stream") = 0,
      "Fills n floats of device memory at out_ptr (e.g. torch.Tensor.data_ptr()) on the GPU.");
}


// ------------------------------------------------------------------ section: ensemble

// Converts `obj` to a C-contiguous int64 array of shape [n] (n < 0: any length). Integer
// dtypes only (TypeError otherwise): a float member index is a bug, not a conversion.
py::array_t<int64_t, py::array::c_style> as_i64_vector(py::handle obj, const char* name, int64_t n) {
  py::array arr = py::array::ensure(obj);
  if (!arr) throw py::type_error(std::string(name) + ": expected an integer array, got " +
                                 std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
  const char kind = arr.dtype().kind();
  if (kind != 'i' && kind != 'u') {
    throw py::type_error(std::string(name) + ": expected an integer dtype (int64 preferred), got " +
                         std::string(py::str(arr.dtype())));
  }
  const auto got = shape_of(arr);
  if (got.size() != 1 || (n >= 0 && got[0] != n)) {
    throw py::value_error(std::string(name) + ": expected shape " + shape_str({n}) + ", got " + shape_str(got));
  }
  return py::array_t<int64_t, py::array::c_style>::ensure(arr);
}

// The borrowed parameters of one call: the arrays (kept alive for the call, zero-copy
// when they already are contiguous float32) and the raw-pointer view over them.
struct EnsembleArgs {
  std::vector<py::array_t<float, py::array::c_style>> keep;
  py::array_t<int64_t, py::array::c_style> elites;
  EnsembleView view;
};

int64_t dim(const py::array& a, int i) { return static_cast<int64_t>(a.shape(i)); }

EnsembleArgs ensemble_args(py::handle input_mean, py::handle input_std, const py::sequence& weights,
                           const py::sequence& biases, py::handle max_logvar, py::handle min_logvar,
                           py::handle elites) {
  EnsembleArgs args;
  EnsembleView& v = args.view;
  const auto n_layers = static_cast<int64_t>(py::len(weights));
  if (n_layers < 1 || n_layers > kEnsembleMaxLayers) {
    throw py::value_error("weights: expected a list of 1.." + std::to_string(kEnsembleMaxLayers) +
                          " layer weights, got " + std::to_string(n_layers));
  }
  if (static_cast<int64_t>(py::len(biases)) != n_layers) {
    throw py::value_error("biases: expected " + std::to_string(n_layers) + " arrays (one per weight), got " +
                          std::to_string(py::len(biases)));
  }
  args.keep.reserve(static_cast<size_t>(2 * n_layers + 4));
  auto mean = as_f32(input_mean, "input_mean", {-1});
  const int64_t in = dim(mean, 0);
  auto std_ = as_f32(input_std, "input_std", {in});
  auto last = as_f32(weights[static_cast<size_t>(n_layers - 1)], "weights[-1]", {-1, -1, -1});
  const int64_t out_width = dim(last, 2);
  if (out_width < 4 || out_width % 2 != 0) {
    throw py::value_error("weights[-1]: the output width must be 2 * (obs_dim + 1) (even, >= 4), got " +
                          std::to_string(out_width));
  }
  v.obs_dim = out_width / 2 - 1;
  v.act_dim = in - v.obs_dim;
  if (v.act_dim < 0) {
    throw py::value_error("input_mean: length " + std::to_string(in) + " is smaller than obs_dim = " +
                          std::to_string(v.obs_dim) + " (from weights[-1])");
  }
  v.num_layers = static_cast<int>(n_layers);
  v.widths[0] = in;
  int64_t E = -1;
  for (int64_t i = 0; i < n_layers; ++i) {
    const std::string wname = "weights[" + std::to_string(i) + "]";
    const std::string bname = "biases[" + std::to_string(i) + "]";
    auto w = as_f32(weights[static_cast<size_t>(i)], wname.c_str(), {E, v.widths[i], -1});
    if (E < 0) E = dim(w, 0);
    const int64_t n = dim(w, 2);
    if (E < 1 || n < 1) throw py::value_error(wname + ": expected non-empty dimensions, got " + shape_str(shape_of(w)));
    auto b = as_f32(biases[static_cast<size_t>(i)], bname.c_str(), {E, n});
    v.widths[i + 1] = n;
    v.weights[i] = w.data();
    v.biases[i] = b.data();
    args.keep.push_back(std::move(w));
    args.keep.push_back(std::move(b));
  }
  v.ensemble_size = E;
  auto maxlv = as_f32(max_logvar, "max_logvar", {v.obs_dim + 1});
  auto minlv = as_f32(min_logvar, "min_logvar", {v.obs_dim + 1});
  require_finite(mean.data(), in, "input_mean");
  require_finite(std_.data(), in, "input_std");
  for (int64_t c = 0; c < in; ++c) {
    if (!(std_.data()[c] > 0.0f)) {
      throw py::value_error("input_std: every entry must be > 0, got " + std::to_string(std_.data()[c]) +
                            " at index " + std::to_string(c));
    }
  }
  require_finite(maxlv.data(), v.obs_dim + 1, "max_logvar");
  require_finite(minlv.data(), v.obs_dim + 1, "min_logvar");
  v.input_mean = mean.data();
  v.input_std = std_.data();
  v.max_logvar = maxlv.data();
  v.min_logvar = minlv.data();
  args.keep.push_back(std::move(mean));
  args.keep.push_back(std::move(std_));
  args.keep.push_back(std::move(maxlv));
  args.keep.push_back(std::move(minlv));
  if (!elites.is_none()) {
    args.elites = as_i64_vector(elites, "elites", -1);
    v.elites = args.elites.data();
    v.num_elites = dim(args.elites, 0);
  }
  v.validate(false);  // elite range, widths: InvalidArgument -> ValueError
  return args;
}

// obs [B, obs_dim] and act [B, act_dim], finite.
std::pair<py::array_t<float, py::array::c_style>, py::array_t<float, py::array::c_style>> ensemble_inputs(
    py::handle obs, py::handle act, const EnsembleView& v) {
  auto o = as_f32(obs, "obs", {-1, v.obs_dim});
  const int64_t B = dim(o, 0);
  auto a = as_f32(act, "act", {B, v.act_dim});
  require_finite(o.data(), B * v.obs_dim, "obs");
  require_finite(a.data(), B * v.act_dim, "act");
  return {std::move(o), std::move(a)};
}

void bind_ensemble(py::module_& m) {
  m.def(
      "ensemble_step",
      [](py::handle obs, py::handle act, py::handle input_mean, py::handle input_std, py::sequence weights,
         py::sequence biases, py::handle max_logvar, py::handle min_logvar, py::handle elites, py::handle members,
         uint64_t seed, bool deterministic) {
        EnsembleArgs args = ensemble_args(input_mean, input_std, weights, biases, max_logvar, min_logvar, elites);
        const EnsembleView& v = args.view;
        auto [o, a] = ensemble_inputs(obs, act, v);
        const int64_t B = dim(o, 0);
        py::array_t<int64_t, py::array::c_style> mem;
        const int64_t* mem_ptr = nullptr;
        if (!members.is_none()) {
          mem = as_i64_vector(members, "members", B);
          mem_ptr = mem.data();
          for (int64_t i = 0; i < B; ++i) {
            if (mem_ptr[i] < 0 || mem_ptr[i] >= v.ensemble_size) {
              throw py::value_error("members: entry " + std::to_string(i) + " = " + std::to_string(mem_ptr[i]) +
                                    " is out of range [0, " + std::to_string(v.ensemble_size) + ")");
            }
          }
        } else if (v.num_elites < 1) {
          throw py::value_error("elites: expected at least one elite index when members is None, got " +
                                std::to_string(v.num_elites));
        }
        auto next_obs = new_array<float>({B, v.obs_dim});
        auto rew = new_array<float>({B});
        auto used = new_array<int64_t>({B});
        float* pn = next_obs.mutable_data();
        float* pr = rew.mutable_data();
        int64_t* pu = used.mutable_data();
        {
          py::gil_scoped_release release;
          ensemble_step(v, o.data(), a.data(), B, seed, deterministic, mem_ptr, pn, pr, pu);
        }
        return py::make_tuple(next_obs, rew, used);
      },
      py::arg("obs"), py::arg("act"), py::arg("input_mean"), py::arg("input_std"), py::arg("weights"),
      py::arg("biases"), py::arg("max_logvar"), py::arg("min_logvar"), py::arg("elites"),
      py::arg("members") = py::none(), py::arg("seed") = 0, py::arg("deterministic") = false,
      "One sampled model step per row, running only the chosen member.\n"
      "obs f32 [B, obs_dim], act f32 [B, act_dim]; weights[i] f32 [E, in_i, out_i], biases[i] f32 [E, out_i];\n"
      "elites int64 [K]; members None (uniform elite per row from Philox) or int64 [B].\n"
      "Returns (next_obs f32 [B, obs_dim], reward f32 [B], members_used int64 [B]).");
  m.def(
      "ensemble_predict",
      [](py::handle obs, py::handle act, py::handle input_mean, py::handle input_std, py::sequence weights,
         py::sequence biases, py::handle max_logvar, py::handle min_logvar) {
        EnsembleArgs args =
            ensemble_args(input_mean, input_std, weights, biases, max_logvar, min_logvar, py::none());
        const EnsembleView& v = args.view;
        auto [o, a] = ensemble_inputs(obs, act, v);
        const int64_t B = dim(o, 0);
        auto mean = new_array<float>({v.ensemble_size, B, v.obs_dim + 1});
        auto var = new_array<float>({v.ensemble_size, B, v.obs_dim + 1});
        float* pm = mean.mutable_data();
        float* pv = var.mutable_data();
        {
          py::gil_scoped_release release;
          ensemble_predict(v, o.data(), a.data(), B, pm, pv);
        }
        return py::make_tuple(mean, var);
      },
      py::arg("obs"), py::arg("act"), py::arg("input_mean"), py::arg("input_std"), py::arg("weights"),
      py::arg("biases"), py::arg("max_logvar"), py::arg("min_logvar"),
      "Every member on every row: (mean, var) f32 [E, B, obs_dim + 1] (Δobs, reward).");
  m.def(
      "ensemble_disagreement",
      [](py::handle obs, py::handle act, py::handle input_mean, py::handle input_std, py::sequence weights,
         py::sequence biases, py::handle max_logvar, py::handle min_logvar, py::handle members) {
        EnsembleArgs args =
            ensemble_args(input_mean, input_std, weights, biases, max_logvar, min_logvar, py::none());
        const EnsembleView& v = args.view;
        auto [o, a] = ensemble_inputs(obs, act, v);
        const int64_t B = dim(o, 0);
        auto mem = as_i64_vector(members, "members", -1);
        const int64_t M = dim(mem, 0);
        if (M < 1) throw py::value_error("members: expected at least one member index, got an empty array");
        for (int64_t i = 0; i < M; ++i) {
          if (mem.data()[i] < 0 || mem.data()[i] >= v.ensemble_size) {
            throw py::value_error("members: entry " + std::to_string(i) + " = " + std::to_string(mem.data()[i]) +
                                  " is out of range [0, " + std::to_string(v.ensemble_size) + ")");
          }
        }
        auto out = new_array<float>({B});
        float* po = out.mutable_data();
        {
          py::gil_scoped_release release;
          ensemble_disagreement(v, o.data(), a.data(), B, mem.data(), M, po);
        }
        return out;
      },
      py::arg("obs"), py::arg("act"), py::arg("input_mean"), py::arg("input_std"), py::arg("weights"),
      py::arg("biases"), py::arg("max_logvar"), py::arg("min_logvar"), py::arg("members"),
      "Per-row disagreement f32 [B]: the population std across `members` (int64 [M]) of the\n"
      "predicted means, averaged over the obs_dim + 1 outputs.");
  m.def("ensemble_set_kernel", &ensemble_set_kernel, py::arg("name"),
        "CPU kernel of the ensemble ops: 'auto', 'avx512' or 'portable' (tests, benchmarks).");
  m.def("ensemble_kernel", &ensemble_kernel, "The CPU kernel the ensemble ops use now.");
}
// ------------------------------------------------------------------ section: termination

void bind_termination(py::module_& m) {
  m.def(
      "termination",
      [](int32_t termination_id, py::handle next_obs) -> py::array {
        // float64 observations (what gymnasium returns) are checked in float64, never rounded
        // to float32 first; everything else goes through the float32 path.
        py::array arr = py::array::ensure(next_obs);
        if (!arr) {
          throw py::type_error("next_obs: expected a numeric array, got " +
                               std::string(py::str(py::type::handle_of(next_obs).attr("__name__"))));
        }
        if (arr.ndim() != 2) {
          throw py::value_error("next_obs: expected shape (batch, obs_dim), got " + shape_str(shape_of(arr)));
        }
        const int64_t batch = arr.shape(0), obs_dim = arr.shape(1);
        check_termination_args(termination_id, obs_dim, "next_obs");
        const auto id = static_cast<TerminationId>(termination_id);
        auto out = new_array<bool>({batch});
        auto* o = reinterpret_cast<uint8_t*>(out.mutable_data());
        if (arr.dtype().kind() == 'f' && arr.dtype().itemsize() == 8) {
          auto a = py::array_t<double, py::array::c_style>::ensure(arr);
          const double* p = a.data();
          py::gil_scoped_release release;
          terminations(id, p, batch, static_cast<int>(obs_dim), o);
        } else {
          auto a = as_f32(arr, "next_obs", {-1, -1});
          const float* p = a.data();
          py::gil_scoped_release release;
          terminations(id, p, batch, static_cast<int>(obs_dim), o);
        }
        return out;
      },
      py::arg("termination_id"), py::arg("next_obs"),
      "terminated flags bool[B] of next_obs [B, obs_dim] (float32, or float64 checked in float64) "
      "for a built-in termination id (see termination_id). ValueError for an unknown id or an "
      "observation width the task does not produce.");
  m.def(
      "termination_id",
      [](const std::string& env_id) { return static_cast<int32_t>(termination_id_from_env(env_id)); },
      py::arg("env_id"),
      "The built-in termination id of a gymnasium env id; ValueError listing the known ids otherwise.");
  m.def("termination_env_ids", [] {
    std::vector<std::string> ids;
    std::string all = known_termination_envs(), item;
    std::istringstream is(all);
    while (std::getline(is, item, ',')) ids.push_back(item.substr(item.find_first_not_of(' ')));
    return ids;
  }, "The gymnasium env ids with a built-in termination function.");
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "mbpo_fast native kernels (C++ core, optional CUDA)";
  py::register_exception<FormatError>(m, "FormatError", PyExc_ValueError);
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const IoError& e) {
      PyErr_SetString(PyExc_OSError, e.what());
    }
  });
  bind_core(m);
  bind_ensemble(m);
  bind_termination(m);
}

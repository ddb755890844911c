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
#include <initializer_list>
#include <sstream>
#include <string>
#include <vector>

#include "mbpo_fast/parallel.h"
#include "mbpo_fast/common.h"
#include "mbpo_fast/cuda.h"
#include "mbpo_fast/ensemble.h"
#include "mbpo_fast/rng.h"

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
  if (py::isinstance<py::array>(obj)) {  // fast path: already a contiguous int64 vector
    auto a = py::reinterpret_borrow<py::array>(obj);
    if (a.dtype().kind() == 'i' && a.itemsize() == 8 && a.ndim() == 1 &&
        (a.flags() & py::array::c_style) == py::array::c_style && (n < 0 || a.shape(0) == n)) {
      return py::reinterpret_borrow<py::array_t<int64_t, py::array::c_style>>(obj);
    }
  }
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

// as_f32 with a fast path for the common case (already a C-contiguous float32 ndarray:
// borrowed with a shape check, no conversion machinery): the per-call overhead of the
// ensemble ops is ~14 such arrays, which matters at B = 1.
py::array_t<float, py::array::c_style> borrow_f32(py::handle obj, const char* name,
                                                  std::initializer_list<int64_t> expected) {
  if (py::isinstance<py::array>(obj)) {
    auto arr = py::reinterpret_borrow<py::array>(obj);
    if (arr.dtype().num() == py::detail::npy_api::NPY_FLOAT_ &&
        (arr.flags() & py::array::c_style) == py::array::c_style &&
        arr.ndim() == static_cast<py::ssize_t>(expected.size())) {
      bool ok = true;
      py::ssize_t i = 0;
      for (int64_t e : expected) ok = ok && (e < 0 || e == arr.shape(i++));
      if (ok) return py::reinterpret_borrow<py::array_t<float, py::array::c_style>>(obj);
    }
  }
  return as_f32(obj, name, std::vector<int64_t>(expected));  // converts, or raises the standard messages
}

// The borrowed parameters of one call: the arrays (kept alive for the call, zero-copy
// when they already are contiguous float32) and the raw-pointer view over them.
struct EnsembleArgs {
  std::vector<py::array_t<float, py::array::c_style>> keep;
  std::vector<py::array> keep_any;  // packed bf16 weights
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
  auto mean = borrow_f32(input_mean, "input_mean", {-1});
  const int64_t in = dim(mean, 0);
  auto std_ = borrow_f32(input_std, "input_std", {in});
  auto last = borrow_f32(weights[static_cast<size_t>(n_layers - 1)], "weights[-1]", {-1, -1, -1});
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
  // Argument names for the messages, built once (not per call).
  static const auto names = [] {
    std::vector<std::string> out;
    for (int i = 0; i < kEnsembleMaxLayers; ++i) out.push_back("weights[" + std::to_string(i) + "]");
    for (int i = 0; i < kEnsembleMaxLayers; ++i) out.push_back("biases[" + std::to_string(i) + "]");
    return out;
  }();
  for (int64_t i = 0; i < n_layers; ++i) {
    const std::string& wname = names[static_cast<size_t>(i)];
    const std::string& bname = names[static_cast<size_t>(kEnsembleMaxLayers + i)];
    auto w = borrow_f32(weights[static_cast<size_t>(i)], wname.c_str(), {E, v.widths[i], -1});
    if (E < 0) E = dim(w, 0);
    const int64_t n = dim(w, 2);
    if (E < 1 || n < 1) throw py::value_error(wname + ": expected non-empty dimensions, got " + shape_str(shape_of(w)));
    auto b = borrow_f32(biases[static_cast<size_t>(i)], bname.c_str(), {E, n});
    v.widths[i + 1] = n;
    v.weights[i] = w.data();
    v.biases[i] = b.data();
    args.keep.push_back(std::move(w));
    args.keep.push_back(std::move(b));
  }
  v.ensemble_size = E;
  auto maxlv = borrow_f32(max_logvar, "max_logvar", {v.obs_dim + 1});
  auto minlv = borrow_f32(min_logvar, "min_logvar", {v.obs_dim + 1});
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

// Attaches optional packed bf16 weights (ensemble_pack_bf16): a list of uint16 arrays
// [E, ceil(in_i / 2), out_i, 2], one per layer, kept alive in args.
void attach_bf16(EnsembleArgs& args, py::handle weights_bf16) {
  if (weights_bf16.is_none()) return;
  EnsembleView& v = args.view;
  auto seq = py::reinterpret_borrow<py::sequence>(weights_bf16);
  if (!py::isinstance<py::sequence>(weights_bf16) || static_cast<int64_t>(py::len(seq)) != v.num_layers) {
    throw py::value_error("weights_bf16: expected a list of " + std::to_string(v.num_layers) +
                          " packed arrays (ensemble_pack_bf16(weights)) or None");
  }
  for (int i = 0; i < v.num_layers; ++i) {
    const std::string name = "weights_bf16[" + std::to_string(i) + "]";
    py::handle item = seq[static_cast<size_t>(i)];
    if (!py::isinstance<py::array_t<uint16_t>>(item)) {
      throw py::type_error(name + ": expected a uint16 numpy array from ensemble_pack_bf16");
    }
    auto arr = py::reinterpret_borrow<py::array>(item);
    const std::vector<int64_t> expected{v.ensemble_size, ((v.widths[i] + 1) / 2 + 15) / 16 * 16,
                                        (v.widths[i + 1] + 15) / 16 * 16, 2};
    if (shape_of(arr) != expected || (arr.flags() & py::array::c_style) != py::array::c_style) {
      throw py::value_error(name + ": expected a C-contiguous array of shape " + shape_str(expected) + ", got " +
                            shape_str(shape_of(arr)));
    }
    v.weights_bf16[i] = static_cast<const uint16_t*>(arr.data());
    args.keep_any.push_back(arr);
  }
}

// obs [B, obs_dim] and act [B, act_dim], finite.
std::pair<py::array_t<float, py::array::c_style>, py::array_t<float, py::array::c_style>> ensemble_inputs(
    py::handle obs, py::handle act, const EnsembleView& v) {
  auto o = borrow_f32(obs, "obs", {-1, v.obs_dim});
  const int64_t B = dim(o, 0);
  auto a = borrow_f32(act, "act", {B, v.act_dim});
  require_finite(o.data(), B * v.obs_dim, "obs");
  require_finite(a.data(), B * v.act_dim, "act");
  return {std::move(o), std::move(a)};
}

void bind_ensemble(py::module_& m) {
  m.def(
      "ensemble_step",
      [](py::handle obs, py::handle act, py::handle input_mean, py::handle input_std, py::sequence weights,
         py::sequence biases, py::handle max_logvar, py::handle min_logvar, py::handle elites, py::handle members,
         uint64_t seed, bool deterministic, py::handle weights_bf16) {
        EnsembleArgs args = ensemble_args(input_mean, input_std, weights, biases, max_logvar, min_logvar, elites);
        attach_bf16(args, weights_bf16);
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
      py::arg("weights_bf16") = py::none(),
      "One sampled model step per row, running only the chosen member.\n"
      "obs f32 [B, obs_dim], act f32 [B, act_dim]; weights[i] f32 [E, in_i, out_i], biases[i] f32 [E, out_i];\n"
      "elites int64 [K]; members None (uniform elite per row from Philox) or int64 [B].\n"
      "Returns (next_obs f32 [B, obs_dim], reward f32 [B], members_used int64 [B]).");
  m.def(
      "ensemble_predict",
      [](py::handle obs, py::handle act, py::handle input_mean, py::handle input_std, py::sequence weights,
         py::sequence biases, py::handle max_logvar, py::handle min_logvar, py::handle weights_bf16) {
        EnsembleArgs args =
            ensemble_args(input_mean, input_std, weights, biases, max_logvar, min_logvar, py::none());
        attach_bf16(args, weights_bf16);
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
      py::arg("biases"), py::arg("max_logvar"), py::arg("min_logvar"), py::arg("weights_bf16") = py::none(),
      "Every member on every row: (mean, var) f32 [E, B, obs_dim + 1] (Δobs, reward).");
  m.def(
      "ensemble_disagreement",
      [](py::handle obs, py::handle act, py::handle input_mean, py::handle input_std, py::sequence weights,
         py::sequence biases, py::handle max_logvar, py::handle min_logvar, py::handle members,
         py::handle weights_bf16) {
        EnsembleArgs args =
            ensemble_args(input_mean, input_std, weights, biases, max_logvar, min_logvar, py::none());
        attach_bf16(args, weights_bf16);
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
      py::arg("weights_bf16") = py::none(),
      "Per-row disagreement f32 [B]: the population std across `members` (int64 [M]) of the\n"
      "predicted means, averaged over the obs_dim + 1 outputs.");
  m.def(
      "ensemble_pack_bf16",
      [](py::sequence weights) {
        py::list out;
        for (size_t i = 0; i < py::len(weights); ++i) {
          const std::string name = "weights[" + std::to_string(i) + "]";
          auto w = as_f32(weights[i], name.c_str(), {-1, -1, -1});
          const int64_t E = dim(w, 0), in = dim(w, 1), n = dim(w, 2);
          if (E < 1 || in < 1 || n < 1) throw py::value_error(name + ": expected non-empty dimensions");
          require_finite(w.data(), E * in * n, name.c_str());
          auto packed = new_array<uint16_t>({E, ((in + 1) / 2 + 15) / 16 * 16, (n + 15) / 16 * 16, 2});
          uint16_t* p = packed.mutable_data();
          {
            py::gil_scoped_release release;
            ensemble_pack_bf16(w.data(), E, in, n, p);
          }
          out.append(packed);
        }
        return out;
      },
      py::arg("weights"),
      "Packs float32 weights [E, in, out] into bf16 [E, P, C, 2], P = ceil(ceil(in/2)/16)*16,\n"
      "C = ceil(out/16)*16 (k pairs interleaved, zero padding, round to nearest even) for the\n"
      "weights_bf16 argument of the ensemble ops. A snapshot: pack again after the weights change.");
  m.def("ensemble_bf16_native", &ensemble_bf16_native,
        "True when bf16 weights run on AVX512_BF16/AMX instructions (else a slow portable emulation).");
  m.def("ensemble_bf16_amx", &ensemble_bf16_amx,
        "True when tiles of >= 16 rows with bf16 weights run on AMX tiles.");
  m.def("ensemble_set_kernel", &ensemble_set_kernel, py::arg("name"),
        "CPU kernel of the ensemble ops: 'auto', 'avx512' or 'portable' (tests, benchmarks).");
  m.def("ensemble_kernel", &ensemble_kernel, "The CPU kernel the ensemble ops use now.");
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
}

// The Python module (with csrc/python/bind_*.cpp, the only files that include pybind11): converts and validates arrays, releases the GIL
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
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <initializer_list>
#include <sstream>
#include <string>
#include <vector>

#include "mbpo_fast/actor.h"
#include "mbpo_fast/parallel.h"
#include "mbpo_fast/common.h"
#include "mbpo_fast/cuda.h"
#include "mbpo_fast/cuda_ops.h"
#include "mbpo_fast/planner.h"
#include "mbpo_fast/ensemble.h"
#include "mbpo_fast/replay_pool.h"
#include "mbpo_fast/rng.h"
#include "mbpo_fast/rollout.h"
#include "mbpo_fast/termination.h"
#include "mbpo_fast/termination_model.h"
#include "python_bridge.h"

namespace py = pybind11;
using mbpo_fast_python::shape_of;
using mbpo_fast_python::shape_str;
using mbpo_fast_python::type_name;
using namespace mbpo_fast;

// Defined in csrc/python/bind_*.cpp (one file per native trainer).
void bind_train_ops(py::module_& m);
void bind_sac_learner(py::module_& m);
void bind_ensemble_trainer(py::module_& m);
void bind_planner(py::module_& m);

namespace {

// ------------------------------------------------------------------ validation helpers

// Converts `obj` to a C-contiguous float32 array whose shape matches `expected`
// (-1 = any size). Raises TypeError for non-numeric input and ValueError for a
// wrong shape. Copies only when the input is not already contiguous float32.
py::array_t<float, py::array::c_style | py::array::forcecast> as_f32(py::handle obj, const char* name,
                                              const std::vector<int64_t>& expected) {
  py::array arr = py::array::ensure(obj);
  if (!arr) throw py::type_error(std::string(name) + ": expected a numeric array, got " +
                                 type_name(obj));
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
  // forcecast: int64/float64 -> float32 is not a "safe" numpy cast, and without the flag
  // ensure() returns a null array (whose data() then crashes) instead of converting.
  auto out = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(arr);
  if (!out) throw py::error_already_set();
  return out;
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

// A new C-contiguous float32 array [d0] (d1 < 0) or [d0, d1] straight from numpy's C API:
// py::array_t's constructor builds shape and stride vectors on the heap, which is a visible
// part of a one-row ensemble step's per-call cost (two outputs of ~5 us of work).
py::array_t<float> new_f32(int64_t d0, int64_t d1 = -1) {
  const auto& api = py::detail::npy_api::get();
  Py_intptr_t dims[2] = {static_cast<Py_intptr_t>(d0), static_cast<Py_intptr_t>(d1)};
  PyObject* descr = api.PyArray_DescrFromType_(py::detail::npy_api::NPY_FLOAT_);
  if (descr == nullptr) throw py::error_already_set();
  PyObject* arr = api.PyArray_NewFromDescr_(api.PyArray_Type_, descr, d1 < 0 ? 1 : 2, dims, nullptr, nullptr, 0,
                                            nullptr);  // steals descr
  if (arr == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::array_t<float>>(arr);
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
                                 type_name(obj));
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

// A writeable C-contiguous float32 output of exactly `shape`, supplied by the caller.
uint64_t seed_arg(py::handle seed);  // (section: rollout)

py::array_t<float> out_f32(py::handle obj, const char* name, std::initializer_list<int64_t> expected) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string(name) + ": expected a float32 numpy array, got " +
                         type_name(obj));
  }
  auto arr = py::reinterpret_borrow<py::array>(obj);
  if (arr.dtype().num() != py::detail::npy_api::NPY_FLOAT_) {
    throw py::type_error(std::string(name) + ": expected dtype float32, got " + std::string(py::str(arr.dtype())));
  }
  bool same = arr.ndim() == static_cast<py::ssize_t>(expected.size());  // checked without heap vectors
  for (py::ssize_t i = 0; same && i < arr.ndim(); ++i) same = arr.shape(i) == expected.begin()[i];
  if (!same) {
    const std::vector<int64_t> shape(expected);
    throw py::value_error(std::string(name) + ": expected shape " + shape_str(shape) + ", got " +
                          shape_str(shape_of(arr)));
  }
  if ((arr.flags() & py::array::c_style) != py::array::c_style || !arr.writeable()) {
    throw py::value_error(std::string(name) + ": expected a writeable C-contiguous array");
  }
  return py::reinterpret_borrow<py::array_t<float>>(obj);
}

// The per-row members of a step (None: nullptr, the elites are sampled), each checked to be
// in [0, E); `keep` holds the converted array alive. (A py::object, not a default-constructed
// py::array_t, which would allocate an empty numpy array on every call.)
const int64_t* member_choices(py::handle members, int64_t B, int64_t E, py::object& keep) {
  if (members.is_none()) return nullptr;
  auto arr = as_i64_vector(members, "members", B);
  const int64_t* p = arr.data();
  keep = std::move(arr);
  for (int64_t i = 0; i < B; ++i) {
    if (p[i] < 0 || p[i] >= E) {
      throw py::value_error("members: entry " + std::to_string(i) + " = " + std::to_string(p[i]) +
                            " is out of range [0, " + std::to_string(E) + ")");
    }
  }
  return p;
}

bool overlaps(const py::array& a, const py::array& b) {
  const auto* pa = static_cast<const char*>(a.data());
  const auto* pb = static_cast<const char*>(b.data());
  return pa < pb + b.nbytes() && pb < pa + a.nbytes();
}

// The ensemble's parameters parsed once and held by reference (EnsembleInference.handle()), so
// that a call parses only its rows: the per-call fast path of EnsembleDynamics.step. The
// arrays must be C-contiguous float32 (int64 elites) so that they are borrowed, never copied:
// in-place parameter updates are seen by the next call; a replaced array object is not (make
// a new handle then).
class EnsembleHandle {
 public:
  // Batches up to this many rows run with the GIL held (one row takes ~5 us).
  static constexpr int64_t kHoldGilRows = 4;

  EnsembleHandle(py::handle input_mean, py::handle input_std, const py::sequence& weights,
                 const py::sequence& biases, py::handle max_logvar, py::handle min_logvar, py::handle elites,
                 py::handle weights_bf16) {
    auto borrowed = [](py::handle h, const std::string& name) {
      if (!py::isinstance<py::array>(h) ||
          py::reinterpret_borrow<py::array>(h).dtype().num() != py::detail::npy_api::NPY_FLOAT_ ||
          (py::reinterpret_borrow<py::array>(h).flags() & py::array::c_style) != py::array::c_style) {
        throw py::type_error(name + ": expected a C-contiguous float32 numpy array (held by reference, never "
                             "copied)");
      }
    };
    borrowed(input_mean, "input_mean");
    borrowed(input_std, "input_std");
    borrowed(max_logvar, "max_logvar");
    borrowed(min_logvar, "min_logvar");
    for (size_t i = 0; i < py::len(weights); ++i) borrowed(weights[i], "weights[" + std::to_string(i) + "]");
    for (size_t i = 0; i < py::len(biases); ++i) borrowed(biases[i], "biases[" + std::to_string(i) + "]");
    args_ = ensemble_args(input_mean, input_std, weights, biases, max_logvar, min_logvar, elites);
    attach_bf16(args_, weights_bf16);
    if (args_.view.num_elites < 1) {
      throw py::value_error("elites: expected at least one elite index, got none");
    }
  }

  int64_t obs_dim() const { return args_.view.obs_dim; }
  int64_t act_dim() const { return args_.view.act_dim; }

  py::tuple step(py::handle obs, py::handle act, py::handle seed, bool deterministic, py::handle members,
                 py::handle out_next_obs, py::handle out_rew, bool return_members) const {
    return step_call(args_.view, obs, act, seed_arg(seed), deterministic, members, out_next_obs, out_rew,
                     return_members, kHoldGilRows);
  }

  // The body of EnsembleHandle.step and of the functional ensemble_step op: checks the rows,
  // the members and the outputs (new arrays, or the caller's `out`), runs ensemble_step (with
  // the GIL released above `hold_gil_rows` rows) and returns (next_obs, rew[, members_used]).
  static py::tuple step_call(const EnsembleView& v, py::handle obs, py::handle act, uint64_t s, bool deterministic,
                             py::handle members, py::handle out_next_obs, py::handle out_rew, bool return_members,
                             int64_t hold_gil_rows) {
    auto [o, a] = ensemble_inputs(obs, act, v);
    const int64_t B = dim(o, 0);
    py::object mem;
    const int64_t* mem_ptr = member_choices(members, B, v.ensemble_size, mem);
    if (mem_ptr == nullptr && v.num_elites < 1) {
      throw py::value_error("elites: expected at least one elite index when members is None, got " +
                            std::to_string(v.num_elites));
    }
    auto next_obs = out_next_obs.is_none() ? new_f32(B, v.obs_dim)
                                           : out_f32(out_next_obs, "out[0] (next_obs)", {B, v.obs_dim});
    auto rew = out_rew.is_none() ? new_f32(B) : out_f32(out_rew, "out[1] (rew)", {B});
    if (!out_next_obs.is_none() || !out_rew.is_none()) {
      for (const py::array* in : {static_cast<const py::array*>(&o), static_cast<const py::array*>(&a)}) {
        if (overlaps(next_obs, *in) || overlaps(rew, *in)) {
          throw py::value_error("out: the outputs must not share memory with obs or act");
        }
      }
      if (overlaps(next_obs, rew)) throw py::value_error("out: next_obs and rew must not share memory");
    }
    py::object used;  // (see member_choices: no empty array per call)
    int64_t* pu = nullptr;
    if (return_members) {
      auto u = new_array<int64_t>({B});
      pu = u.mutable_data();
      used = std::move(u);
    }
    float* pn = next_obs.mutable_data();
    float* pr = rew.mutable_data();
    if (B <= hold_gil_rows) {  // a few microseconds: releasing the GIL would cost more than it frees
      ensemble_step(v, o.data(), a.data(), B, s, deterministic, mem_ptr, pn, pr, pu);
    } else {
      py::gil_scoped_release release;
      ensemble_step(v, o.data(), a.data(), B, s, deterministic, mem_ptr, pn, pr, pu);
    }
    if (return_members) return py::make_tuple(next_obs, rew, used);
    PyObject* pair = PyTuple_New(2);  // steals both references below
    if (pair == nullptr) throw py::error_already_set();
    PyTuple_SET_ITEM(pair, 0, next_obs.release().ptr());
    PyTuple_SET_ITEM(pair, 1, rew.release().ptr());
    return py::reinterpret_steal<py::tuple>(pair);
  }

  // The common call (sampled step, no members, fresh outputs) with fewer arguments to parse.
  py::tuple sample(py::handle obs, py::handle act, py::handle seed) const {
    return step(obs, act, seed, false, py::none(), py::none(), py::none(), false);
  }

  // The common call into preallocated outputs (EnsembleDynamics.step(..., out=(n, r))).
  py::tuple sample_into(py::handle obs, py::handle act, py::handle seed, py::handle out_next_obs,
                        py::handle out_rew) const {
    return step(obs, act, seed, false, py::none(), out_next_obs, out_rew, false);
  }

 private:
  EnsembleArgs args_;
};

void bind_ensemble(py::module_& m) {
  m.def(
      "ensemble_step",
      [](py::handle obs, py::handle act, py::handle input_mean, py::handle input_std, py::sequence weights,
         py::sequence biases, py::handle max_logvar, py::handle min_logvar, py::handle elites, py::handle members,
         uint64_t seed, bool deterministic, py::handle weights_bf16) {
        EnsembleArgs args = ensemble_args(input_mean, input_std, weights, biases, max_logvar, min_logvar, elites);
        attach_bf16(args, weights_bf16);
        return EnsembleHandle::step_call(args.view, obs, act, seed, deterministic, members, py::none(), py::none(),
                                         /*return_members=*/true, /*hold_gil_rows=*/0);
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
      "ensemble_step_uncertainty",
      [](py::handle obs, py::handle act, py::handle input_mean, py::handle input_std, py::sequence weights,
         py::sequence biases, py::handle max_logvar, py::handle min_logvar, py::handle elites, uint64_t seed,
         bool deterministic, py::handle weights_bf16) {
        if (elites.is_none()) throw py::value_error("elites: expected int64 [K] with K >= 2, got None");
        EnsembleArgs args = ensemble_args(input_mean, input_std, weights, biases, max_logvar, min_logvar, elites);
        attach_bf16(args, weights_bf16);
        const EnsembleView& v = args.view;
        if (v.num_elites < 2) {
          throw py::value_error("elites: the disagreement d needs at least 2 elites, got " +
                                std::to_string(v.num_elites));
        }
        auto [o, a] = ensemble_inputs(obs, act, v);
        const int64_t B = dim(o, 0);
        auto next_obs = new_array<float>({B, v.obs_dim});
        auto rew = new_array<float>({B});
        auto d = new_array<float>({B});
        float* pn = next_obs.mutable_data();
        float* pr = rew.mutable_data();
        float* pd = d.mutable_data();
        {
          py::gil_scoped_release release;
          ensemble_step_uncertainty(v, o.data(), a.data(), B, seed, deterministic, pn, pr, pd);
        }
        return py::make_tuple(next_obs, rew, d);
      },
      py::arg("obs"), py::arg("act"), py::arg("input_mean"), py::arg("input_std"), py::arg("weights"),
      py::arg("biases"), py::arg("max_logvar"), py::arg("min_logvar"), py::arg("elites"), py::arg("seed") = 0,
      py::arg("deterministic") = false, py::arg("weights_bf16") = py::none(),
      "ensemble_step's transition (same members and noise) from ONE pass of every elite, plus\n"
      "d f32 [B] = mean over the obs dims of the unbiased variance across the elites (K >= 2) of their\n"
      "predicted mean next state. Returns (next_obs f32 [B, obs_dim], reward f32 [B], d f32 [B]).");
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
  py::class_<EnsembleHandle>(m, "EnsembleHandle",
                             "An ensemble's parameters parsed once and held by reference (C-contiguous float32\n"
                             "arrays, int64 elites, optional packed bf16 weights): the per-call fast path of\n"
                             "EnsembleDynamics.step. In-place parameter updates are seen by the next call.")
      .def(py::init<py::handle, py::handle, const py::sequence&, const py::sequence&, py::handle, py::handle,
                    py::handle, py::handle>(),
           py::arg("input_mean"), py::arg("input_std"), py::arg("weights"), py::arg("biases"),
           py::arg("max_logvar"), py::arg("min_logvar"), py::arg("elites"), py::arg("weights_bf16") = py::none())
      .def_property_readonly("obs_dim", &EnsembleHandle::obs_dim)
      .def_property_readonly("act_dim", &EnsembleHandle::act_dim)
      .def("sample", &EnsembleHandle::sample, py::arg("obs"), py::arg("act"), py::arg("seed"),
           "step(obs, act, seed) with the defaults (sampled, elites drawn, new outputs): (next_obs, rew).")
      .def("sample_into", &EnsembleHandle::sample_into, py::arg("obs"), py::arg("act"), py::arg("seed"),
           py::arg("out_next_obs"), py::arg("out_rew"),
           "step(obs, act, seed, out_next_obs=..., out_rew=...) with the other defaults: writes and returns\n"
           "(out_next_obs, out_rew).")
      .def("step", &EnsembleHandle::step, py::arg("obs"), py::arg("act"), py::arg("seed") = 0,
           py::arg("deterministic") = false, py::arg("members") = py::none(), py::arg("out_next_obs") = py::none(),
           py::arg("out_rew") = py::none(), py::arg("return_members") = false,
           "ensemble_step on the held parameters: obs f32 [B, obs_dim], act f32 [B, act_dim] -> (next_obs f32\n"
           "[B, obs_dim], rew f32 [B][, members_used int64 [B]]), written into out_next_obs / out_rew when given\n"
           "(writeable C-contiguous float32 of exactly those shapes, not overlapping the inputs).");
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
                               type_name(next_obs));
        }
        const char kind = arr.dtype().kind();
        if (kind != 'f' && kind != 'i' && kind != 'u' && kind != 'b') {
          throw py::type_error("next_obs: expected a real numeric dtype (float32 preferred), got " +
                               std::string(py::str(arr.dtype())));
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
          auto a = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(arr);
          if (!a) throw py::error_already_set();
          const double* p = a.data();
          py::gil_scoped_release release;
          terminations(id, p, batch, static_cast<int>(obs_dim), o);
        } else {
          // Local conversion (not as_f32) so this section does not depend on that helper.
          auto a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(arr);
          if (!a) throw py::error_already_set();
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
  m.def(
      "cuda_termination",
      [](int32_t termination_id, uintptr_t next_obs_ptr, int64_t batch, int64_t obs_dim, uintptr_t out_ptr,
         uintptr_t cuda_stream) {
        if (batch < 0) throw py::value_error("batch: expected >= 0, got " + std::to_string(batch));
        check_termination_args(termination_id, obs_dim, "next_obs");
        if (batch > 0 && (next_obs_ptr == 0 || out_ptr == 0)) {
          throw py::value_error("next_obs_ptr/out_ptr: expected device pointers, got 0");
        }
        py::gil_scoped_release release;
        cuda_terminations(static_cast<TerminationId>(termination_id), reinterpret_cast<const float*>(next_obs_ptr),
                          batch, static_cast<int>(obs_dim), reinterpret_cast<uint8_t*>(out_ptr),
                          reinterpret_cast<void*>(cuda_stream));
      },
      py::arg("termination_id"), py::arg("next_obs_ptr"), py::arg("batch"), py::arg("obs_dim"), py::arg("out_ptr"),
      py::arg("cuda_stream") = 0,
      "GPU terminations: float32 [batch, obs_dim] at next_obs_ptr -> uint8/bool [batch] at out_ptr "
      "(device pointers, e.g. torch.Tensor.data_ptr()), asynchronous on cuda_stream.");
  m.def("termination_env_ids", [] {
    std::vector<std::string> ids;
    std::string all = known_termination_envs(), item;
    std::istringstream is(all);
    while (std::getline(is, item, ',')) ids.push_back(item.substr(item.find_first_not_of(' ')));
    return ids;
  }, "The gymnasium env ids with a built-in termination function.");
}

// ------------------------------------------------------------------ section: replay pool

// The Python-facing pool: the C++ pool plus a mutex, because long calls release the GIL
// and another Python thread could otherwise resize or free the storage mid-copy.
struct NativePool {
  explicit NativePool(ReplayPool&& p) : pool(std::move(p)) {}
  NativePool(int64_t capacity, int64_t obs_dim, int64_t act_dim, uint64_t seed)
      : pool(capacity, obs_dim, act_dim, seed) {}
  ReplayPool pool;
  std::mutex mu;
};

// Calls above this many bytes of row data release the GIL (below it the release costs
// more than it frees).
constexpr int64_t kPoolGilBytes = 1 << 16;

// Runs fn() with the GIL released when `release` (large work); the GIL is back before
// anything is returned to Python.
template <typename F>
void maybe_without_gil(bool release, F&& fn) {
  if (release) {
    py::gil_scoped_release unlocked;
    fn();
  } else {
    fn();
  }
}

// Locks one pool, or two distinct pools without lock-order deadlocks. Waiting happens
// with the GIL released; the locks are dropped after the GIL is re-acquired at return,
// which is safe because a waiter never holds the GIL.
class PoolLock {
 public:
  explicit PoolLock(NativePool& a, NativePool* b = nullptr) : a_(a.mu, std::defer_lock), b_() {
    if (b == nullptr || b == &a) {
      if (!a_.try_lock()) {
        py::gil_scoped_release release;
        a_.lock();
      }
      return;
    }
    b_ = std::unique_lock<std::mutex>(b->mu, std::defer_lock);
    if (std::try_lock(a_, b_) != -1) {
      py::gil_scoped_release release;
      std::lock(a_, b_);
    }
  }

 private:
  std::unique_lock<std::mutex> a_, b_;
};

// A seed in [0, 2**64) from any integer (Python int, numpy integer); floats are refused.
uint64_t seed_arg(py::handle seed) {
  if (!PyIndex_Check(seed.ptr()) || PyBool_Check(seed.ptr())) {
    throw py::type_error("seed: expected an int in [0, 2**64), got " +
                         type_name(seed));
  }
  const py::object value = py::reinterpret_steal<py::object>(PyNumber_Index(seed.ptr()));
  if (!value) throw py::error_already_set();
  int overflow = 0;
  const long long s = PyLong_AsLongLongAndOverflow(value.ptr(), &overflow);
  if (overflow == 0 && s >= 0) return static_cast<uint64_t>(s);
  if (overflow > 0) {
    const unsigned long long u = PyLong_AsUnsignedLongLong(value.ptr());
    if (!PyErr_Occurred()) return u;
    PyErr_Clear();
  }
  throw py::value_error("seed: expected an int in [0, 2**64), got " + std::string(py::str(value)));
}

// Shapes with the batch dimension (-1) printed as "B": "(B, 11)".
std::string pool_shape_str(const std::vector<int64_t>& shape) {
  std::string s = shape_str(shape);
  for (size_t p = s.find('*'); p != std::string::npos; p = s.find('*')) s[p] = 'B';
  return s;
}

// `arr` as a C-contiguous T array (forcecast: float64 -> float32 is what callers want;
// array_t<T>::ensure without it returns null for such "unsafe" casts).
template <typename T>
py::array pool_cast(const py::array& arr) {
  auto out = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(arr);
  if (!out) throw py::error_already_set();
  return std::move(out);
}

// Checks dtype kind and shape, then converts to contiguous float32 (copying only when
// needed). `note` is appended to a shape error (e.g. where B comes from).
py::array_t<float, py::array::c_style> pool_f32(py::handle obj, const char* name,
                                                const std::vector<int64_t>& expected,
                                                const std::string& note = "") {
  py::array arr = py::array::ensure(obj);
  if (!arr) return as_f32(obj, name, expected);  // raises the TypeError
  const char kind = arr.dtype().kind();
  if (kind != 'f' && kind != 'i' && kind != 'u' && kind != 'b') return as_f32(arr, name, expected);
  const auto got = shape_of(arr);
  bool ok = got.size() == expected.size();
  for (size_t i = 0; ok && i < got.size(); ++i) ok = expected[i] < 0 || expected[i] == got[i];
  if (!ok) {
    throw py::value_error(std::string(name) + ": expected shape " + pool_shape_str(expected) +
                          note + ", got " + pool_shape_str(got));
  }
  return as_f32(arr, name, got);  // shape already checked: converts only
}

// The data of `o` when it is already an aligned, C-contiguous, native-order float32
// ndarray of shape (n,); nullptr otherwise. Reads numpy's struct directly: this runs on
// every single-row add and must cost nanoseconds, not a dtype object allocation.
const float* f32_vector_or_null(PyObject* o, int64_t n) {
  const auto& api = py::detail::npy_api::get();
  if (!api.PyArray_Check_(o)) return nullptr;
  const auto* a = py::detail::array_proxy(o);
  const auto* d = py::detail::array_descriptor_proxy(a->descr);
  constexpr int kFlags =
      py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ | py::detail::npy_api::NPY_ARRAY_ALIGNED_;
  if (a->nd != 1 || a->dimensions[0] != n || d->type_num != py::detail::npy_api::NPY_FLOAT_ ||
      d->byteorder == '>' || (a->flags & kFlags) != kFlags) {
    return nullptr;
  }
  return reinterpret_cast<const float*>(a->data);
}

// A 0/1 flag from a Python bool, numpy bool/int/float scalar or 0-d array.
bool flag_arg(py::handle obj, const char* name) {
  if (obj.ptr() == Py_True) return true;
  if (obj.ptr() == Py_False) return false;
  py::array arr = py::array::ensure(obj);
  const char kind = arr ? arr.dtype().kind() : '?';
  if (!arr || (kind != 'b' && kind != 'i' && kind != 'u' && kind != 'f')) {
    throw py::type_error(std::string(name) + ": expected a bool, got " +
                         type_name(obj));
  }
  if (arr.ndim() != 0) {
    throw py::value_error(std::string(name) + ": expected a scalar (shape ()), got shape " +
                          shape_str(shape_of(arr)));
  }
  const double v = *py::array_t<double, py::array::c_style>(pool_cast<double>(arr)).data();
  if (v != 0.0 && v != 1.0) {
    throw py::value_error(std::string(name) + ": expected 0 or 1 (a bool), got " +
                          std::to_string(v));
  }
  return v != 0.0;
}

float scalar_arg(py::handle obj, const char* name) {
  if (PyFloat_Check(obj.ptr())) return static_cast<float>(PyFloat_AS_DOUBLE(obj.ptr()));
  auto arr = pool_f32(obj, name, {});
  return *arr.data();
}

// terminated[B] as 0/1 bytes: bool arrays are used in place, numbers must be exactly 0 or 1.
py::array_t<uint8_t, py::array::c_style> flags_arg(py::handle obj, const char* name, int64_t n,
                                                   const std::string& note) {
  py::array arr = py::array::ensure(obj);
  const char kind = arr ? arr.dtype().kind() : '?';
  if (!arr || (kind != 'b' && kind != 'i' && kind != 'u' && kind != 'f')) {
    throw py::type_error(std::string(name) + ": expected a bool array, got " +
                         (arr ? std::string(py::str(arr.dtype()))
                              : type_name(obj)));
  }
  if (arr.ndim() != 1 || arr.shape(0) != n) {
    throw py::value_error(std::string(name) + ": expected shape " + shape_str({n}) + note +
                          ", got " + shape_str(shape_of(arr)));
  }
  if (kind == 'b')
    return py::array_t<uint8_t, py::array::c_style>(pool_cast<uint8_t>(arr.view("uint8")));
  py::array_t<double, py::array::c_style> values(pool_cast<double>(arr));
  py::array_t<uint8_t, py::array::c_style> out(n);
  uint8_t* o = out.mutable_data();
  const double* v = values.data();
  for (int64_t i = 0; i < n; ++i) {
    if (v[i] != 0.0 && v[i] != 1.0) {
      throw py::value_error(std::string(name) + ": expected 0 or 1 (bools), got " +
                            std::to_string(v[i]) + " at index " + std::to_string(i));
    }
    o[i] = v[i] != 0.0;
  }
  return out;
}

int64_t positive_arg(int64_t v, const char* name) {
  if (v < 1)
    throw py::value_error(std::string(name) + ": expected " + name + " >= 1, got " +
                          std::to_string(v));
  return v;
}

// Output arrays of a sample: leading dims `lead` ([n] or [num_batches, batch_size]).
struct PoolBatch {
  py::array_t<float> obs, act, rew, next_obs;
  py::array_t<bool> term;
  // Initialized in the member list: a default-constructed py::array_t allocates an empty
  // numpy array, five wasted allocations per sample.
  PoolBatch(const std::vector<int64_t>& lead, int64_t od, int64_t ad)
      : obs(new_array<float>(with(lead, od))),
        act(new_array<float>(with(lead, ad))),
        rew(new_array<float>(lead)),
        next_obs(new_array<float>(with(lead, od))),
        term(new_array<bool>(lead)) {}
  static std::vector<int64_t> with(std::vector<int64_t> lead, int64_t d) {
    lead.push_back(d);
    return lead;
  }
  float* o() { return obs.mutable_data(); }
  float* a() { return act.mutable_data(); }
  float* r() { return rew.mutable_data(); }
  float* n() { return next_obs.mutable_data(); }
  uint8_t* t() { return reinterpret_cast<uint8_t*>(term.mutable_data()); }
  py::tuple tuple() const { return py::make_tuple(obs, act, rew, next_obs, term); }
};

std::vector<int64_t> lead_dims(int64_t batch_size, const py::object& num_batches, int64_t& total) {
  positive_arg(batch_size, "batch_size");
  if (num_batches.is_none()) {
    total = batch_size;
    return {batch_size};
  }
  if (!PyIndex_Check(num_batches.ptr()) || PyBool_Check(num_batches.ptr())) {
    throw py::type_error("num_batches: expected an int or None, got " +
                         type_name(num_batches));
  }
  const int64_t k = positive_arg(num_batches.cast<int64_t>(), "num_batches");
  total = k * batch_size;
  return {k, batch_size};
}

void bind_replay_pool(py::module_& m) {
  py::class_<NativePool>(
      m, "ReplayPool", "Native ring-buffer pool (see mbpo_fast.ReplayPool for the documented API).")
      .def(py::init([](int64_t capacity, int64_t obs_dim, int64_t act_dim, py::handle seed) {
             return std::make_unique<NativePool>(capacity, obs_dim, act_dim, seed_arg(seed));
           }),
           py::arg("capacity"), py::arg("obs_dim"), py::arg("act_dim"), py::arg("seed") = 0)
      .def_property_readonly("size", [](NativePool& p) { return p.pool.size(); })
      .def("__len__", [](NativePool& p) { return p.pool.size(); })
      .def_property_readonly("capacity", [](NativePool& p) { return p.pool.capacity(); })
      .def_property_readonly("obs_dim", [](NativePool& p) { return p.pool.obs_dim(); })
      .def_property_readonly("act_dim", [](NativePool& p) { return p.pool.act_dim(); })
      .def_property_readonly("write_pos", [](NativePool& p) { return p.pool.write_pos(); })
      .def_property_readonly("seed", [](NativePool& p) { return p.pool.seed(); })
      .def_property_readonly("rng_counter", [](NativePool& p) { return p.pool.rng_counter(); })
      .def_property_readonly("nbytes", [](NativePool& p) { return p.pool.nbytes(); })
      .def(
          "add",
          [](NativePool& p, py::handle obs, py::handle act, py::handle rew, py::handle next_obs,
             py::handle terminated) {
            const int64_t od = p.pool.obs_dim(), ad = p.pool.act_dim();
            // Fast path: float32 vectors used in place; anything else is converted.
            py::array_t<float, py::array::c_style> hold_o, hold_a, hold_n;
            const float* o = f32_vector_or_null(obs.ptr(), od);
            if (!o) o = (hold_o = pool_f32(obs, "obs", {od})).data();
            const float* a = f32_vector_or_null(act.ptr(), ad);
            if (!a) a = (hold_a = pool_f32(act, "act", {ad})).data();
            const float r = scalar_arg(rew, "rew");
            const float* n = f32_vector_or_null(next_obs.ptr(), od);
            if (!n) n = (hold_n = pool_f32(next_obs, "next_obs", {od})).data();
            const bool t = flag_arg(terminated, "terminated");
            PoolLock lock(p);
            p.pool.add(o, a, r, n, t);
          },
          py::arg("obs"), py::arg("act"), py::arg("rew"), py::arg("next_obs"),
          py::arg("terminated"))
      .def(
          "add_batch",
          [](NativePool& p, py::handle obs, py::handle act, py::handle rew, py::handle next_obs,
             py::handle terminated) {
            const int64_t od = p.pool.obs_dim(), ad = p.pool.act_dim();
            auto o = pool_f32(obs, "obs", {-1, od});
            const int64_t b = o.shape(0);
            const std::string note = " (B = " + std::to_string(b) + " rows, from obs)";
            auto a = pool_f32(act, "act", {b, ad}, note);
            auto r = pool_f32(rew, "rew", {b}, note);
            auto n = pool_f32(next_obs, "next_obs", {b, od}, note);
            auto t = flags_arg(terminated, "terminated", b, note);
            PoolLock lock(p);
            maybe_without_gil(b * p.pool.row_bytes() > kPoolGilBytes, [&] {
              p.pool.add_batch(o.data(), a.data(), r.data(), n.data(), t.data(), b);
            });
          },
          py::arg("obs"), py::arg("act"), py::arg("rew"), py::arg("next_obs"),
          py::arg("terminated"))
      .def(
          "sample",
          [](NativePool& p, int64_t batch_size, const py::object& num_batches) {
            int64_t total = 0;
            const auto lead = lead_dims(batch_size, num_batches, total);
            PoolLock lock(p);
            PoolBatch out(lead, p.pool.obs_dim(), p.pool.act_dim());
            maybe_without_gil(total * p.pool.row_bytes() > kPoolGilBytes, [&] {
              p.pool.sample(total, out.o(), out.a(), out.r(), out.n(), out.t());
            });
            return out.tuple();
          },
          py::arg("batch_size"), py::arg("num_batches") = py::none())
      .def(
          "sample_obs",
          [](NativePool& p, int64_t n) {
            positive_arg(n, "n");
            PoolLock lock(p);
            auto out = new_array<float>({n, p.pool.obs_dim()});
            float* o = out.mutable_data();
            maybe_without_gil(n * p.pool.obs_dim() * 4 > kPoolGilBytes,
                              [&] { p.pool.sample_obs(n, o); });
            return out;
          },
          py::arg("n"))
      .def(
          "peek_indices",
          [](NativePool& p, int64_t n) {
            if (n < 0) throw py::value_error("n: expected n >= 0, got " + std::to_string(n));
            PoolLock lock(p);
            auto out = new_array<int64_t>({n});
            p.pool.peek_indices(n, out.mutable_data());
            return out;
          },
          py::arg("n"))
      .def(
          "gather",
          [](NativePool& p, py::handle rows) {
            py::array arr = py::array::ensure(rows);
            if (!arr || (arr.dtype().kind() != 'i' && arr.dtype().kind() != 'u')) {
              throw py::type_error(
                  "rows: expected an integer array, got " +
                  (arr ? std::string(py::str(arr.dtype())) : std::string("a non-array")));
            }
            if (arr.ndim() != 1) {
              throw py::value_error("rows: expected shape (n,), got " + shape_str(shape_of(arr)));
            }
            py::array_t<int64_t, py::array::c_style> idx(pool_cast<int64_t>(arr));
            const int64_t n = idx.shape(0);
            PoolLock lock(p);
            PoolBatch out({n}, p.pool.obs_dim(), p.pool.act_dim());
            p.pool.gather(idx.data(), n, out.o(), out.a(), out.r(), out.n(), out.t());
            return out.tuple();
          },
          py::arg("rows"))
      .def("transitions",
           [](NativePool& p) {
             PoolLock lock(p);
             PoolBatch out({p.pool.size()}, p.pool.obs_dim(), p.pool.act_dim());
             {  // the GIL must be held again before out.tuple() builds Python objects
               std::optional<py::gil_scoped_release> release;
               if (p.pool.size() * p.pool.row_bytes() > kPoolGilBytes) release.emplace();
               p.pool.transitions(out.o(), out.a(), out.r(), out.n(), out.t());
             }
             maybe_without_gil(p.pool.size() * p.pool.row_bytes() > kPoolGilBytes, [&] {
               p.pool.transitions(out.o(), out.a(), out.r(), out.n(), out.t());
             });
             return out.tuple();
           })
      .def(
          "resize",
          [](NativePool& p, int64_t new_capacity) {
            positive_arg(new_capacity, "new_capacity");
            PoolLock lock(p);
            py::gil_scoped_release release;
            p.pool.resize(new_capacity);
          },
          py::arg("new_capacity"))
      .def("clear",
           [](NativePool& p) {
             PoolLock lock(p);
             p.pool.clear();
           })
      .def(
          "save",
          [](NativePool& p, const py::object& path) {
            const std::string s = py::str(py::module_::import("os").attr("fspath")(path));
            PoolLock lock(p);
            py::gil_scoped_release release;
            p.pool.save(s);
          },
          py::arg("path"))
      .def_static(
          "load",
          [](const py::object& path) {
            const std::string s = py::str(py::module_::import("os").attr("fspath")(path));
            py::gil_scoped_release release;
            return std::make_unique<NativePool>(ReplayPool::load(s));
          },
          py::arg("path"));

  m.def(
      "sample_mixed",
      [](NativePool& real, NativePool& model, int64_t batch_size, double real_ratio,
         const py::object& num_batches) {
        int64_t total = 0;
        const auto lead = lead_dims(batch_size, num_batches, total);
        mixed_real_rows(batch_size, real_ratio);  // validates real_ratio before locking
        PoolLock lock(real, &model);
        PoolBatch out(lead, real.pool.obs_dim(), real.pool.act_dim());
        maybe_without_gil(total * real.pool.row_bytes() > kPoolGilBytes, [&] {
          sample_mixed(real.pool, model.pool, batch_size, real_ratio, total / batch_size, out.o(),
                       out.a(), out.r(), out.n(), out.t());
        });
        return out.tuple();
      },
      py::arg("real_pool"), py::arg("model_pool"), py::arg("batch_size"), py::arg("real_ratio"),
      py::arg("num_batches") = py::none(),
      "Batches mixing floor(batch_size * real_ratio) rows of real_pool (first) with rows of "
      "model_pool.");
}

// ------------------------------------------------------------------ section: rollout

// The borrowed actor parameters of one call and the raw-pointer view over them.
struct ActorArgs {
  std::vector<py::array_t<float, py::array::c_style | py::array::forcecast>> keep;
  ActorView view;
};

// weights[i]: [in_i, out_i] or the ensemble-of-one layout [1, in_i, out_i] (SAC.actor_weights);
// biases[i]: [out_i] or [1, out_i].
ActorArgs actor_args(const py::sequence& weights, const py::sequence& biases, py::handle action_scale,
                     py::handle action_bias, py::handle action_low, py::handle action_high,
                     double log_std_min, double log_std_max, const char* wname = "actor_weights",
                     const char* bname = "actor_biases") {
  ActorArgs args;
  ActorView& v = args.view;
  const auto L = static_cast<int64_t>(py::len(weights));
  if (L < 1 || L > kActorMaxLayers) {
    throw py::value_error(std::string(wname) + ": expected a list of 1.." + std::to_string(kActorMaxLayers) +
                          " layer weights, got " + std::to_string(L));
  }
  if (static_cast<int64_t>(py::len(biases)) != L) {
    throw py::value_error(std::string(bname) + ": expected " + std::to_string(L) +
                          " arrays (one per weight), got " + std::to_string(py::len(biases)));
  }
  v.num_layers = static_cast<int>(L);
  args.keep.reserve(static_cast<size_t>(2 * L + 4));
  for (int64_t i = 0; i < L; ++i) {
    const std::string wn = std::string(wname) + "[" + std::to_string(i) + "]";
    const std::string bn = std::string(bname) + "[" + std::to_string(i) + "]";
    py::array w = py::array::ensure(weights[static_cast<size_t>(i)]);
    const bool batched = w && w.ndim() == 3;
    const int64_t k_expected = i == 0 ? -1 : v.widths[i];
    auto wa = batched ? as_f32(w, wn.c_str(), {1, k_expected, -1})
                      : as_f32(weights[static_cast<size_t>(i)], wn.c_str(), {k_expected, -1});
    const int64_t k = wa.shape(batched ? 1 : 0), n = wa.shape(batched ? 2 : 1);
    if (k < 1 || n < 1)
      throw py::value_error(wn + ": expected non-empty dimensions, got " + shape_str(shape_of(wa)));
    auto ba = batched ? as_f32(biases[static_cast<size_t>(i)], bn.c_str(), {1, n})
                      : as_f32(biases[static_cast<size_t>(i)], bn.c_str(), {n});
    if (i == 0) v.widths[0] = k;
    v.widths[i + 1] = n;
    v.weights[i] = wa.data();
    v.biases[i] = ba.data();
    args.keep.push_back(std::move(wa));
    args.keep.push_back(std::move(ba));
  }
  v.obs_dim = v.widths[0];
  const int64_t out = v.widths[L];
  if (out < 2 || out % 2 != 0) {
    throw py::value_error(std::string(wname) +
                          "[-1]: the output width must be 2 * act_dim (mean, log_std), got " +
                          std::to_string(out));
  }
  v.act_dim = out / 2;
  auto scale = as_f32(action_scale, "action_scale", {v.act_dim});
  auto bias = as_f32(action_bias, "action_bias", {v.act_dim});
  v.action_scale = scale.data();
  v.action_bias = bias.data();
  args.keep.push_back(std::move(scale));
  args.keep.push_back(std::move(bias));
  if (action_low.is_none() != action_high.is_none()) {
    throw py::value_error("action_low, action_high: give both or neither");
  }
  if (!action_low.is_none()) {
    auto lo = as_f32(action_low, "action_low", {v.act_dim});
    auto hi = as_f32(action_high, "action_high", {v.act_dim});
    v.action_low = lo.data();
    v.action_high = hi.data();
    args.keep.push_back(std::move(lo));
    args.keep.push_back(std::move(hi));
  }
  v.log_std_min = static_cast<float>(log_std_min);
  v.log_std_max = static_cast<float>(log_std_max);
  v.validate();  // InvalidArgument -> ValueError
  return args;
}

NativePool& native_pool_arg(py::handle obj, const char* name) {
  if (!py::isinstance<NativePool>(obj)) {
    throw py::type_error(std::string(name) +
                         ": expected a native pool (mbpo_fast._C.ReplayPool, e.g. "
                         "mbpo_fast.ReplayPool(...)._impl on the native backend), got " +
                         type_name(obj));
  }
  return obj.cast<NativePool&>();
}

py::dict rollout_stats_dict(const RolloutStats& s) {
  py::dict d;
  d["num_starts"] = s.num_starts;
  d["rows_added"] = s.rows_added;
  d["mean_length"] = s.mean_length;
  d["frac_terminated"] = s.frac_terminated;
  d["num_terminated"] = s.num_terminated;
  d["nonfinite"] = s.nonfinite;
  d["mean_disagreement"] = s.mean_disagreement;
  d["disagreement_rows"] = s.disagreement_rows;
  d["steps_run"] = s.steps_run;
  d["seconds"] = s.seconds;
  d["num_stopped"] = s.num_stopped;
  d["frac_stopped"] = s.frac_stopped;
  d["mean_uncertainty"] = s.mean_uncertainty;
  d["mean_penalty"] = s.mean_penalty;
  d["disagreement_threshold"] = s.disagreement_threshold;
  return d;
}

}  // namespace

py::array mbpo_fast_python::call_rows_callback(const py::function& fn, const float* obs, const float* act,
                                               const float* next_obs, int64_t n, int64_t obs_dim, int64_t act_dim,
                                               const char* what, const char* kinds, const char* kind_text) {
  auto copy = [](const float* p, int64_t rows, int64_t cols) {
    auto arr = new_array<float>({rows, cols});
    std::memcpy(arr.mutable_data(), p, sizeof(float) * static_cast<size_t>(rows * cols));
    return arr;
  };
  py::object res = fn(copy(obs, n, obs_dim), copy(act, n, act_dim), copy(next_obs, n, obs_dim));
  py::array arr = py::array::ensure(res);
  if (!arr || std::strchr(kinds, arr.dtype().kind()) == nullptr) {
    throw py::type_error(std::string(what) + ": the callable must return a " + kind_text + " array, got " +
                         (arr ? std::string(py::str(arr.dtype())) : type_name(res)));
  }
  if (arr.ndim() != 1 || arr.shape(0) != n) {
    throw py::value_error(std::string(what) + ": the callable must return shape " + shape_str({n}) + ", got " +
                          shape_str(arr));
  }
  return arr;
}

namespace {

// A custom termination written in Python: fn(obs, act, next_obs) -> bool [n]. Called with
// the GIL held and fresh copies of the rows (the callee may keep them).
TerminationCallback python_termination(py::function fn, int64_t od, int64_t ad) {
  return [fn = std::move(fn), od, ad](const float* o, const float* a, const float* next, int64_t n,
                                      uint8_t* out) {
    py::gil_scoped_acquire gil;
    py::array arr = mbpo_fast_python::call_rows_callback(fn, o, a, next, n, od, ad, "termination", "biu", "bool");
    auto flags = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(arr);
    const int64_t* f = flags.data();
    for (int64_t i = 0; i < n; ++i) {
      if (f[i] != 0 && f[i] != 1) {
        throw py::value_error("termination: the callable must return 0/1 flags, got " + std::to_string(f[i]) +
                              " at row " + std::to_string(i));
      }
      out[i] = static_cast<uint8_t>(f[i]);
    }
  };
}

// A learned termination MLP (termination_model.h) from numpy arrays: weights[i] [in_i, out_i],
// biases[i] [out_i], last width 1; input_mean / input_std [2 * obs_dim + act_dim].
struct TerminationMLPArgs {
  std::vector<py::array_t<float, py::array::c_style | py::array::forcecast>> keep;
  TerminationMLPView view;
};

TerminationMLPArgs termination_mlp_args(int64_t obs_dim, int64_t act_dim, py::handle input_mean,
                                        py::handle input_std, const py::sequence& weights,
                                        const py::sequence& biases) {
  TerminationMLPArgs args;
  TerminationMLPView& v = args.view;
  v.obs_dim = obs_dim;
  v.act_dim = act_dim;
  const auto L = static_cast<int64_t>(py::len(weights));
  if (L < 1 || L > kTerminationMaxLayers || static_cast<int64_t>(py::len(biases)) != L) {
    throw py::value_error("termination_weights: expected 1.." + std::to_string(kTerminationMaxLayers) +
                          " layer weights and as many biases, got " + std::to_string(L) + " and " +
                          std::to_string(py::len(biases)));
  }
  v.num_layers = static_cast<int>(L);
  const int64_t in = v.in_dim();
  args.keep.push_back(as_f32(input_mean, "termination_input_mean", {in}));
  args.keep.push_back(as_f32(input_std, "termination_input_std", {in}));
  v.input_mean = args.keep[0].data();
  v.input_std = args.keep[1].data();
  require_finite(v.input_mean, in, "termination_input_mean");
  for (int64_t c = 0; c < in; ++c) {
    if (!(v.input_std[c] > 0.0f)) {
      throw py::value_error("termination_input_std: every entry must be > 0, got " +
                            std::to_string(v.input_std[c]) + " at index " + std::to_string(c));
    }
  }
  v.widths[0] = in;
  for (int64_t i = 0; i < L; ++i) {
    const std::string wn = "termination_weights[" + std::to_string(i) + "]";
    const std::string bn = "termination_biases[" + std::to_string(i) + "]";
    args.keep.push_back(as_f32(weights[i], wn.c_str(), {v.widths[i], i + 1 == L ? 1 : -1}));
    const int64_t m = args.keep.back().shape(1);
    v.weights[i] = args.keep.back().data();
    require_finite(v.weights[i], v.widths[i] * m, wn.c_str());
    args.keep.push_back(as_f32(biases[i], bn.c_str(), {m}));
    v.biases[i] = args.keep.back().data();
    require_finite(v.biases[i], m, bn.c_str());
    v.widths[i + 1] = m;
  }
  v.validate();
  return args;
}

void bind_rollout(py::module_& m) {
  m.def(
      "termination_mlp",
      [](py::handle obs, py::handle act, py::handle next_obs, py::handle input_mean, py::handle input_std,
         py::sequence weights, py::sequence biases) {
        auto o = as_f32(obs, "obs", {-1, -1});
        const int64_t B = o.shape(0), od = o.shape(1);
        auto a = as_f32(act, "act", {B, -1});
        auto nx = as_f32(next_obs, "next_obs", {B, od});
        TerminationMLPArgs args = termination_mlp_args(od, a.shape(1), input_mean, input_std, weights, biases);
        auto flags = new_array<bool>({B});
        auto logits = new_array<float>({B});
        auto* pf = reinterpret_cast<uint8_t*>(flags.mutable_data());
        float* pl = logits.mutable_data();
        {
          py::gil_scoped_release release;
          termination_mlp(args.view, o.data(), a.data(), nx.data(), B, pf, pl);
        }
        return py::make_tuple(flags, logits);
      },
      py::arg("obs"), py::arg("act"), py::arg("next_obs"), py::arg("input_mean"), py::arg("input_std"),
      py::arg("weights"), py::arg("biases"),
      "Learned termination MLP (termination_model.h): obs, next_obs f32 [B, obs_dim], act f32 [B, act_dim];\n"
      "weights[i] f32 [in_i, out_i] (last out 1), biases[i] f32 [out_i], input_mean/std f32 [2*obs_dim+act_dim].\n"
      "SiLU hidden layers. Returns (terminated bool [B] = logit > 0, logit f32 [B]).");

  m.def(
      "actor_act",
      [](py::handle obs, py::sequence weights, py::sequence biases, py::handle action_scale,
         py::handle action_bias, py::handle seed, uint64_t noise_offset, bool deterministic,
         py::handle action_low, py::handle action_high, double log_std_min, double log_std_max) {
        ActorArgs args = actor_args(weights, biases, action_scale, action_bias, action_low, action_high,
                                    log_std_min, log_std_max, "weights", "biases");
        const ActorView& v = args.view;
        const uint64_t s = seed_arg(seed);
        auto o = as_f32(obs, "obs", {-1, v.obs_dim});
        const int64_t B = o.shape(0);
        require_finite(o.data(), B * v.obs_dim, "obs");
        auto act = new_array<float>({B, v.act_dim});
        auto lp = new_array<float>({B});
        float* pa = act.mutable_data();
        float* pl = lp.mutable_data();
        {
          py::gil_scoped_release release;
          actor_act(v, o.data(), B, s, noise_offset, deterministic, pa, pl);
        }
        return py::make_tuple(act, lp);
      },
      py::arg("obs"), py::arg("weights"), py::arg("biases"), py::arg("action_scale"), py::arg("action_bias"),
      py::arg("seed") = 0, py::arg("noise_offset") = 0, py::arg("deterministic") = false,
      py::arg("action_low") = py::none(), py::arg("action_high") = py::none(), py::arg("log_std_min") = -20.0,
      py::arg("log_std_max") = 2.0,
      "SAC policy actions: obs f32 [B, obs_dim]; weights[i] f32 [in_i, out_i] or [1, in_i, out_i]; "
      "biases[i]\n"
      "[out_i] or [1, out_i] (last width 2 * act_dim: mean, log_std); action_scale/bias f32 [act_dim].\n"
      "Noise of element j of row i: random_normal(seed, STREAM_POLICY_NOISE, noise_offset + i*act_dim + j).\n"
      "action_low/high: the clamp box (default bias -/+ scale). Returns (act f32 [B, act_dim], log_prob f32 "
      "[B]).");

  py::class_<Actor>(
      m, "Actor",
      "A SAC actor that owns its weights, loaded from a file SAC.export_actor wrote (C++ mbpo_fast::Actor).")
      .def_static(
          "load",
          [](const py::object& path) {
            const std::string s = py::str(py::module_::import("os").attr("fspath")(path));
            py::gil_scoped_release release;
            return Actor::load(s);
          },
          py::arg("path"))
      .def_property_readonly("obs_dim", &Actor::obs_dim)
      .def_property_readonly("act_dim", &Actor::act_dim)
      .def_property_readonly("widths", [](const Actor& a) { return a.widths(); })
      .def(
          "act",
          [](const Actor& a, py::handle obs, py::handle seed, uint64_t noise_offset, bool deterministic) {
            auto o = as_f32(obs, "obs", {-1, a.obs_dim()});
            const int64_t B = o.shape(0);
            require_finite(o.data(), B * a.obs_dim(), "obs");
            const uint64_t s = seed_arg(seed);
            auto act = new_array<float>({B, a.act_dim()});
            auto lp = new_array<float>({B});
            float* pa = act.mutable_data();
            float* pl = lp.mutable_data();
            {
              py::gil_scoped_release release;
              a.act(o.data(), B, s, noise_offset, deterministic, pa, pl);
            }
            return py::make_tuple(act, lp);
          },
          py::arg("obs"), py::arg("seed") = 0, py::arg("noise_offset") = 0, py::arg("deterministic") = false,
          "Like actor_act: (act f32 [B, act_dim], log_prob f32 [B]).");

  m.def(
      "rollout_step_seed",
      [](py::handle seed, int64_t step) {
        if (step < 0) throw py::value_error("step: expected step >= 0, got " + std::to_string(step));
        return rollout_step_seed(seed_arg(seed), step);
      },
      py::arg("seed"), py::arg("step"),
      "The seed of rollout step `step`: words 0 and 1 of (seed, STREAM_ROLLOUT_START + 1 + step), w1 << 32 | "
      "w0.");

  m.def(
      "branched_rollout",
      [](py::handle real_pool, py::handle model_pool, py::sequence actor_weights, py::sequence actor_biases,
         py::handle action_scale, py::handle action_bias, py::handle input_mean, py::handle input_std,
         py::sequence weights, py::sequence biases, py::handle max_logvar, py::handle min_logvar,
         py::handle elites, py::handle termination, int64_t num_starts, int64_t horizon, py::handle seed,
         bool compute_disagreement, int64_t disagreement_rows, py::handle action_low, py::handle action_high,
         double log_std_min, double log_std_max, py::handle weights_bf16, double max_disagreement,
         double disagreement_quantile, double uncertainty_penalty, py::handle termination_weights,
         py::handle termination_biases, py::handle termination_input_mean, py::handle termination_input_std) {
        RolloutUncertainty unc;
        unc.max_disagreement = max_disagreement;
        unc.quantile = disagreement_quantile;
        unc.uncertainty_penalty = uncertainty_penalty;
        unc.validate();
        NativePool& real = native_pool_arg(real_pool, "real_pool");
        NativePool& model = native_pool_arg(model_pool, "model_pool");
        ActorArgs actor = actor_args(actor_weights, actor_biases, action_scale, action_bias, action_low,
                                     action_high, log_std_min, log_std_max);
        if (elites.is_none()) throw py::value_error("elites: a rollout needs the elite indices, got None");
        EnsembleArgs ens =
            ensemble_args(input_mean, input_std, weights, biases, max_logvar, min_logvar, elites);
        if (ens.view.num_elites < 1)
          throw py::value_error("elites: expected at least one elite index, got none");
        attach_bf16(ens, weights_bf16);
        const uint64_t s = seed_arg(seed);
        if (num_starts < 0)
          throw py::value_error("num_starts: expected num_starts >= 0, got " + std::to_string(num_starts));
        if (horizon < 0)
          throw py::value_error("horizon: expected horizon >= 0, got " + std::to_string(horizon));
        const bool learned = !termination_weights.is_none();
        const bool builtin = !learned && PyLong_Check(termination.ptr()) && !PyBool_Check(termination.ptr());
        TerminationMLPArgs mlp;
        if (learned) {
          if (termination_biases.is_none() || termination_input_mean.is_none() || termination_input_std.is_none()) {
            throw py::value_error("termination_weights: a learned termination also needs termination_biases, "
                                  "termination_input_mean and termination_input_std");
          }
          mlp = termination_mlp_args(ens.view.obs_dim, ens.view.act_dim, termination_input_mean,
                                     termination_input_std, py::reinterpret_borrow<py::sequence>(termination_weights),
                                     py::reinterpret_borrow<py::sequence>(termination_biases));
        } else if (!builtin && !PyCallable_Check(termination.ptr())) {
          throw py::type_error(
              "termination: expected a built-in termination id (int, see termination_id) or a "
              "callable (obs, act, next_obs) -> bool [n], got " +
              type_name(termination));
        }
        int32_t tid = 0;
        if (builtin) {
          tid = termination.cast<int32_t>();
          check_termination_args(tid, ens.view.obs_dim, "model obs_dim");
        }
        RolloutStats stats;
        PoolLock lock(real, &model);
        if (learned) {  // native MLP: no Python per step
          const TerminationMLPView tv = mlp.view;
          TerminationCallback cb = [tv](const float* o, const float* a, const float* nx, int64_t n, uint8_t* out) {
            termination_mlp(tv, o, a, nx, n, out, nullptr);
          };
          py::gil_scoped_release release;
          stats = branched_rollout(actor.view, ens.view, cb, real.pool, model.pool, num_starts, horizon, s,
                                   compute_disagreement, disagreement_rows, unc);
        } else if (builtin) {
          py::gil_scoped_release release;
          stats =
              branched_rollout(actor.view, ens.view, static_cast<TerminationId>(tid), real.pool, model.pool,
                               num_starts, horizon, s, compute_disagreement, disagreement_rows, unc);
        } else {
          TerminationCallback cb = python_termination(py::reinterpret_borrow<py::function>(termination),
                                                      ens.view.obs_dim, ens.view.act_dim);
          py::gil_scoped_release release;
          stats = branched_rollout(actor.view, ens.view, cb, real.pool, model.pool, num_starts, horizon, s,
                                   compute_disagreement, disagreement_rows, unc);
        }
        return rollout_stats_dict(stats);
      },
      py::arg("real_pool"), py::arg("model_pool"), py::arg("actor_weights"), py::arg("actor_biases"),
      py::arg("action_scale"), py::arg("action_bias"), py::arg("input_mean"), py::arg("input_std"),
      py::arg("weights"), py::arg("biases"), py::arg("max_logvar"), py::arg("min_logvar"), py::arg("elites"),
      py::arg("termination"), py::arg("num_starts"), py::arg("horizon"), py::arg("seed") = 0,
      py::arg("compute_disagreement") = false, py::arg("disagreement_rows") = -1,
      py::arg("action_low") = py::none(), py::arg("action_high") = py::none(), py::arg("log_std_min") = -20.0,
      py::arg("log_std_max") = 2.0, py::arg("weights_bf16") = py::none(),
      py::arg("max_disagreement") = std::numeric_limits<double>::infinity(),
      py::arg("disagreement_quantile") = -1.0, py::arg("uncertainty_penalty") = 0.0,
      py::arg("termination_weights") = py::none(), py::arg("termination_biases") = py::none(),
      py::arg("termination_input_mean") = py::none(), py::arg("termination_input_std") = py::none(),
      "MBPO branched rollout in one call (GIL released): num_starts start states from real_pool, `horizon` "
      "steps of\n"
      "actor -> one random elite -> termination, transitions appended to model_pool (native ReplayPool "
      "objects).\n"
      "termination: a built-in id (int) or a callable (obs, act, next_obs) -> bool [n] (called per step with "
      "the\n"
      "GIL; it must not use the pools). Returns a dict: num_starts, rows_added, mean_length, "
      "frac_terminated,\n"
      "num_terminated, nonfinite, mean_disagreement (NaN unless compute_disagreement; measured per step on "
      "the first\n"
      "disagreement_rows >= 0 stored rows, every stored row (-1) or one stored row in 256, at least one "
      "(-2)),\n"
      "disagreement_rows (rows measured), steps_run, seconds.\n"
      "weights_bf16: optional packed bf16 ensemble weights (ensemble_pack_bf16), as for the ensemble ops.\n"
      "Uncertainty (rollout.h step 4): max_disagreement (inf: no stop), disagreement_quantile (in [0, 1]: the\n"
      "threshold is that quantile of d over step 0's rows; < 0: unused), uncertainty_penalty (>= 0); the dict\n"
      "then also reports num_stopped, frac_stopped, mean_uncertainty, mean_penalty, disagreement_threshold.\n"
      "termination_weights/biases/input_mean/input_std: a learned termination MLP (termination_mlp), run\n"
      "natively per step (then `termination` is ignored).\n"
      "The exact randomness is documented in csrc/include/mbpo_fast/rollout.h.");
}

// ------------------------------------------------------------------ section: CUDA ops
//
// Device arrays cross as raw pointers (torch.Tensor.data_ptr()) plus the caller's stream
// (torch.cuda.current_stream().cuda_stream); mbpo_fast/cuda_ops.py validates the tensors
// (device, dtype, contiguity, shape; errors name the argument) before calling these. 0 is
// a null pointer. The launches are asynchronous; the GIL is released around them.

// An EnsembleView over DEVICE parameter pointers plus the host copy of the elites.
struct CudaEnsembleHandle {
  EnsembleView view;
  std::vector<int64_t> elites;
  CudaEnsembleHandle() = default;
  // view.elites points into `elites`: a copy or move must re-point it at its own vector
  // (the implicit copy would keep the source's pointer, dangling once the source dies).
  CudaEnsembleHandle(const CudaEnsembleHandle& o) : view(o.view), elites(o.elites) { repoint(); }
  CudaEnsembleHandle(CudaEnsembleHandle&& o) noexcept : view(o.view), elites(std::move(o.elites)) { repoint(); }
  CudaEnsembleHandle& operator=(const CudaEnsembleHandle& o) {
    view = o.view;
    elites = o.elites;
    repoint();
    return *this;
  }
  CudaEnsembleHandle& operator=(CudaEnsembleHandle&& o) noexcept {
    view = o.view;
    elites = std::move(o.elites);
    repoint();
    return *this;
  }
  void repoint() noexcept { view.elites = elites.empty() ? nullptr : elites.data(); }
  // Validates first: bad elites raise and leave the handle as it was.
  void set_elites(std::vector<int64_t> e) {
    EnsembleView candidate = view;
    candidate.elites = e.empty() ? nullptr : e.data();
    candidate.num_elites = static_cast<int64_t>(e.size());
    candidate.validate(false);
    elites = std::move(e);
    view.num_elites = static_cast<int64_t>(elites.size());
    repoint();
  }
};

template <typename T>
T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

// The layer fields shared by EnsembleView and TerminationMLPView from device pointers
// (uintptr_t from torch's data_ptr()): checks the counts, then widths, weights and biases.
template <typename View>
void fill_device_layers(View& v, const char* what, int64_t max_layers, const std::vector<int64_t>& widths,
                        const std::vector<uintptr_t>& weights, const std::vector<uintptr_t>& biases) {
  const int64_t layers = static_cast<int64_t>(weights.size());
  if (layers < 1 || layers > max_layers || static_cast<int64_t>(biases.size()) != layers ||
      static_cast<int64_t>(widths.size()) != layers + 1) {
    throw py::value_error(std::string(what) + ": expected 1.." + std::to_string(max_layers) +
                          " layers with one bias per weight and layers + 1 widths");
  }
  v.num_layers = static_cast<int>(layers);
  for (int64_t i = 0; i <= layers; ++i) v.widths[i] = widths[static_cast<size_t>(i)];
  for (int64_t i = 0; i < layers; ++i) {
    v.weights[i] = ptr<const float>(weights[static_cast<size_t>(i)]);
    v.biases[i] = ptr<const float>(biases[static_cast<size_t>(i)]);
  }
}

void bind_cuda(py::module_& m) {
  m.attr("CUDA_ENSEMBLE_TILE_ROWS") = py::int_(kCudaEnsembleTileRows);
  m.attr("CUDA_MAX_MEMBERS") = py::int_(kCudaMaxMembers);

  py::class_<CudaEnsembleHandle>(m, "CudaEnsembleView",
                                 "Raw device pointers of an ensemble's parameters (borrowed, never freed) and "
                                 "a host copy of the elites.")
      .def(py::init([](int64_t obs_dim, int64_t act_dim, int64_t ensemble_size, std::vector<int64_t> widths,
                       uintptr_t input_mean, uintptr_t input_std, std::vector<uintptr_t> weights,
                       std::vector<uintptr_t> biases, uintptr_t max_logvar, uintptr_t min_logvar,
                       std::vector<int64_t> elites) {
             CudaEnsembleHandle h;
             EnsembleView& v = h.view;
             fill_device_layers(v, "CudaEnsembleView", kEnsembleMaxLayers, widths, weights, biases);
             v.obs_dim = obs_dim;
             v.act_dim = act_dim;
             v.ensemble_size = ensemble_size;
             v.input_mean = ptr<const float>(input_mean);
             v.input_std = ptr<const float>(input_std);
             v.max_logvar = ptr<const float>(max_logvar);
             v.min_logvar = ptr<const float>(min_logvar);
             h.set_elites(std::move(elites));
             return h;
           }),
           py::arg("obs_dim"), py::arg("act_dim"), py::arg("ensemble_size"), py::arg("widths"),
           py::arg("input_mean"), py::arg("input_std"), py::arg("weights"), py::arg("biases"),
           py::arg("max_logvar"), py::arg("min_logvar"), py::arg("elites"))
      .def("set_elites", &CudaEnsembleHandle::set_elites, py::arg("elites"))
      .def_property_readonly("elites", [](const CudaEnsembleHandle& h) { return h.elites; });

  py::class_<TerminationMLPView>(m, "CudaTerminationMLPView",
                                 "Raw device pointers of a learned termination MLP (termination_model.h), "
                                 "borrowed, never freed: keep the tensors alive while it is used.")
      .def(py::init([](int64_t obs_dim, int64_t act_dim, std::vector<int64_t> widths, uintptr_t input_mean,
                       uintptr_t input_std, std::vector<uintptr_t> weights, std::vector<uintptr_t> biases) {
             TerminationMLPView v;
             fill_device_layers(v, "CudaTerminationMLPView", kTerminationMaxLayers, widths, weights, biases);
             v.obs_dim = obs_dim;
             v.act_dim = act_dim;
             v.input_mean = ptr<const float>(input_mean);
             v.input_std = ptr<const float>(input_std);
             v.validate();
             return v;
           }),
           py::arg("obs_dim"), py::arg("act_dim"), py::arg("widths"), py::arg("input_mean"), py::arg("input_std"),
           py::arg("weights"), py::arg("biases"));
  m.def(
      "cuda_termination_mlp",
      [](const TerminationMLPView& v, uintptr_t obs, uintptr_t act, uintptr_t next_obs, int64_t n, uintptr_t out,
         uintptr_t logits, uintptr_t cuda_stream) {
        py::gil_scoped_release release;
        cuda_termination_mlp(v, ptr<const float>(obs), ptr<const float>(act), ptr<const float>(next_obs), n,
                             ptr<uint8_t>(out), ptr<float>(logits), ptr<void>(cuda_stream));
      },
      py::arg("view"), py::arg("obs"), py::arg("act"), py::arg("next_obs"), py::arg("n"), py::arg("out"),
      py::arg("logits"), py::arg("cuda_stream"),
      "termination_mlp on device pointers: out uint8 [n] (logit > 0), logits f32 [n] (0: not written).");
  m.def("cuda_ensemble_step_uncertainty_workspace_bytes", &cuda_ensemble_step_uncertainty_workspace_bytes,
        py::arg("batch"), py::arg("num_elites"), py::arg("obs_dim"));
  m.def(
      "cuda_ensemble_step_uncertainty",
      [](const CudaEnsembleHandle& h, uintptr_t obs, uintptr_t act, int64_t batch, uint64_t seed, bool deterministic,
         uintptr_t next_obs, uintptr_t reward, uintptr_t disagreement, uintptr_t workspace, size_t workspace_bytes,
         uintptr_t cuda_stream) {
        py::gil_scoped_release release;
        cuda_ensemble_step_uncertainty(h.view, ptr<const float>(obs), ptr<const float>(act), batch, seed,
                                       deterministic, ptr<float>(next_obs), ptr<float>(reward),
                                       ptr<float>(disagreement), ptr<void>(workspace), workspace_bytes,
                                       ptr<void>(cuda_stream));
      },
      py::arg("view"), py::arg("obs"), py::arg("act"), py::arg("batch"), py::arg("seed"), py::arg("deterministic"),
      py::arg("next_obs"), py::arg("reward"), py::arg("disagreement"), py::arg("workspace"),
      py::arg("workspace_bytes"), py::arg("cuda_stream"),
      "ensemble_step_uncertainty on device pointers (cuda_ops.h): the step's transition and d [batch].");
  m.def("cuda_ensemble_step_workspace_bytes", &cuda_ensemble_step_workspace_bytes, py::arg("batch"),
        py::arg("ensemble_size"));
  m.def("cuda_ensemble_disagreement_workspace_bytes", &cuda_ensemble_disagreement_workspace_bytes,
        py::arg("batch"), py::arg("n_members"), py::arg("obs_dim"));
  m.def(
      "cuda_ensemble_step",
      [](const CudaEnsembleHandle& h, uintptr_t obs, uintptr_t act, int64_t batch, uint64_t seed, bool deterministic,
         uintptr_t members, uintptr_t next_obs, uintptr_t reward, uintptr_t members_out, uintptr_t workspace,
         size_t workspace_bytes, uintptr_t cuda_stream) {
        py::gil_scoped_release release;
        cuda_ensemble_step(h.view, ptr<const float>(obs), ptr<const float>(act), batch, seed, deterministic,
                           ptr<const int64_t>(members), ptr<float>(next_obs), ptr<float>(reward),
                           ptr<int64_t>(members_out), ptr<void>(workspace), workspace_bytes, ptr<void>(cuda_stream));
      },
      py::arg("view"), py::arg("obs"), py::arg("act"), py::arg("batch"), py::arg("seed"), py::arg("deterministic"),
      py::arg("members"), py::arg("next_obs"), py::arg("reward"), py::arg("members_out"), py::arg("workspace"),
      py::arg("workspace_bytes"), py::arg("cuda_stream"),
      "ensemble_step on device pointers (see csrc/include/mbpo_fast/cuda_ops.h); asynchronous on cuda_stream.");
  m.def(
      "cuda_ensemble_predict",
      [](const CudaEnsembleHandle& h, uintptr_t obs, uintptr_t act, int64_t batch, uintptr_t mean, uintptr_t var,
         uintptr_t cuda_stream) {
        py::gil_scoped_release release;
        cuda_ensemble_predict(h.view, ptr<const float>(obs), ptr<const float>(act), batch, ptr<float>(mean),
                              ptr<float>(var), ptr<void>(cuda_stream));
      },
      py::arg("view"), py::arg("obs"), py::arg("act"), py::arg("batch"), py::arg("mean"), py::arg("var"),
      py::arg("cuda_stream"), "ensemble_predict on device pointers: mean, var [E, B, obs_dim + 1].");
  m.def(
      "cuda_ensemble_disagreement",
      [](const CudaEnsembleHandle& h, uintptr_t obs, uintptr_t act, int64_t batch, std::vector<int64_t> members,
         uintptr_t out, uintptr_t workspace, size_t workspace_bytes, uintptr_t cuda_stream) {
        py::gil_scoped_release release;
        cuda_ensemble_disagreement(h.view, ptr<const float>(obs), ptr<const float>(act), batch,
                                   members.empty() ? nullptr : members.data(), static_cast<int64_t>(members.size()),
                                   ptr<float>(out), ptr<void>(workspace), workspace_bytes, ptr<void>(cuda_stream));
      },
      py::arg("view"), py::arg("obs"), py::arg("act"), py::arg("batch"), py::arg("members"), py::arg("out"),
      py::arg("workspace"), py::arg("workspace_bytes"), py::arg("cuda_stream"),
      "ensemble_disagreement on device pointers; members: host list (empty: the elites).");

  m.def(
      "ensemble_step_plan",
      [](int64_t batch, uint64_t seed, py::handle input_mean, py::handle input_std, py::sequence weights,
         py::sequence biases, py::handle max_logvar, py::handle min_logvar, py::handle elites, py::handle members,
         int64_t tile_rows) {
        EnsembleArgs args = ensemble_args(input_mean, input_std, weights, biases, max_logvar, min_logvar, elites);
        py::array_t<int64_t, py::array::c_style> mem;
        const int64_t* mem_ptr = nullptr;
        if (!members.is_none()) {
          mem = as_i64_vector(members, "members", batch);
          mem_ptr = mem.data();
        }
        EnsembleStepPlan plan;
        {
          py::gil_scoped_release release;
          plan = ensemble_step_plan(args.view, batch, seed, mem_ptr, tile_rows);
        }
        auto arr = [](const std::vector<int64_t>& v) {
          auto a = new_array<int64_t>({static_cast<int64_t>(v.size())});
          if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(int64_t));
          return a;
        };
        py::dict d;
        d["member"] = arr(plan.member);
        d["start"] = arr(plan.start);
        d["order"] = arr(plan.order);
        d["tile_member"] = arr(plan.tile_member);
        d["tile_first"] = arr(plan.tile_first);
        d["tile_rows"] = arr(plan.tile_rows);
        return d;
      },
      py::arg("batch"), py::arg("seed"), py::arg("input_mean"), py::arg("input_std"), py::arg("weights"),
      py::arg("biases"), py::arg("max_logvar"), py::arg("min_logvar"), py::arg("elites"),
      py::arg("members") = py::none(), py::arg("tile_rows") = kCudaEnsembleTileRows,
      "The row grouping of ensemble_step (CPU and CUDA): dict of int64 arrays member [B], start [E+1], order [B],\n"
      "tile_member, tile_first, tile_rows [T] (kernels/ensemble_grouping.h).");

  py::class_<CudaReplayPool>(m, "CudaReplayPool",
                             "Replay pool in device memory (cuda_ops.h); data arguments are device pointers.")
      .def(py::init<int64_t, int64_t, int64_t, uint64_t>(), py::arg("capacity"), py::arg("obs_dim"),
           py::arg("act_dim"), py::arg("seed") = 0)
      .def_property_readonly("size", &CudaReplayPool::size)
      .def_property_readonly("capacity", &CudaReplayPool::capacity)
      .def_property_readonly("obs_dim", &CudaReplayPool::obs_dim)
      .def_property_readonly("act_dim", &CudaReplayPool::act_dim)
      .def_property_readonly("write_pos", &CudaReplayPool::write_pos)
      .def_property_readonly("seed", &CudaReplayPool::seed)
      .def_property_readonly("rng_counter", &CudaReplayPool::rng_counter)
      .def_property_readonly("nbytes", &CudaReplayPool::nbytes)
      .def_property_readonly("device", &CudaReplayPool::device)
      .def("clear", &CudaReplayPool::clear)
      .def(
          "resize",
          [](CudaReplayPool& p, int64_t new_capacity, uintptr_t cuda_stream) {
            p.resize(new_capacity, ptr<void>(cuda_stream));
          },
          py::arg("new_capacity"), py::arg("cuda_stream"))
      // The pool calls keep the GIL: they only enqueue work (add_batch waits for a tiny
      // validation copy), and holding it serializes concurrent Python callers of one pool.
      .def(
          "add_batch",
          [](CudaReplayPool& p, uintptr_t obs, uintptr_t act, uintptr_t rew, uintptr_t next_obs, uintptr_t term,
             int64_t n, uintptr_t cuda_stream) {
            p.add_batch(ptr<const float>(obs), ptr<const float>(act), ptr<const float>(rew),
                        ptr<const float>(next_obs), ptr<const uint8_t>(term), n, ptr<void>(cuda_stream));
          },
          py::arg("obs"), py::arg("act"), py::arg("rew"), py::arg("next_obs"), py::arg("terminated"), py::arg("n"),
          py::arg("cuda_stream"))
      .def(
          "sample",
          [](CudaReplayPool& p, int64_t n, uintptr_t obs, uintptr_t act, uintptr_t rew, uintptr_t next_obs,
             uintptr_t term, uintptr_t cuda_stream) {
            p.sample(n, ptr<float>(obs), ptr<float>(act), ptr<float>(rew), ptr<float>(next_obs), ptr<uint8_t>(term),
                     ptr<void>(cuda_stream));
          },
          py::arg("n"), py::arg("obs"), py::arg("act"), py::arg("rew"), py::arg("next_obs"), py::arg("terminated"),
          py::arg("cuda_stream"))
      .def(
          "transitions",
          [](const CudaReplayPool& p, uintptr_t obs, uintptr_t act, uintptr_t rew, uintptr_t next_obs, uintptr_t term,
             uintptr_t cuda_stream) {
            p.transitions(ptr<float>(obs), ptr<float>(act), ptr<float>(rew), ptr<float>(next_obs), ptr<uint8_t>(term),
                          ptr<void>(cuda_stream));
          },
          py::arg("obs"), py::arg("act"), py::arg("rew"), py::arg("next_obs"), py::arg("terminated"),
          py::arg("cuda_stream"))
      .def(
          "gather",
          [](const CudaReplayPool& p, uintptr_t rows, int64_t n, uintptr_t obs, uintptr_t act, uintptr_t rew,
             uintptr_t next_obs, uintptr_t term, uintptr_t cuda_stream) {
            p.gather(ptr<const int64_t>(rows), n, ptr<float>(obs), ptr<float>(act), ptr<float>(rew),
                     ptr<float>(next_obs), ptr<uint8_t>(term), ptr<void>(cuda_stream));
          },
          py::arg("rows"), py::arg("n"), py::arg("obs"), py::arg("act"), py::arg("rew"), py::arg("next_obs"),
          py::arg("terminated"), py::arg("cuda_stream"),
          "Logical rows rows[0..n) (device int64, validated by the caller) into device outputs.")
      // save/load copy through the host and use the CPU pool's file code (same format). They
      // keep the GIL, like the other pool calls (serializes callers of one pool).
      .def(
          "save",
          [](const CudaReplayPool& p, const std::string& path, uintptr_t cuda_stream) {
            p.save(path, ptr<void>(cuda_stream));
          },
          py::arg("path"), py::arg("cuda_stream"),
          "Writes the pool in the CPU pool's file format (one device-to-host copy; syncs cuda_stream).")
      .def_static(
          "load",
          [](const std::string& path, uintptr_t cuda_stream) {
            return CudaReplayPool::load(path, ptr<void>(cuda_stream));
          },
          py::arg("path"), py::arg("cuda_stream"),
          "Reads a pool file written by any backend into a new pool on the current device.");
  m.def(
      "cuda_branched_rollout",
      [](CudaReplayPool& real, CudaReplayPool& model_pool, const CudaEnsembleHandle& model,
         std::vector<uintptr_t> actor_weights, std::vector<uintptr_t> actor_biases, std::vector<int64_t> actor_widths,
         py::handle action_scale, py::handle action_bias, py::handle action_low, py::handle action_high,
         float log_std_min, float log_std_max, int32_t termination, int64_t num_starts, int64_t horizon,
         uint64_t seed, uintptr_t cuda_stream, double max_disagreement, double disagreement_quantile,
         double uncertainty_penalty, py::handle termination_mlp) {
        RolloutUncertainty unc;
        unc.max_disagreement = max_disagreement;
        unc.quantile = disagreement_quantile;
        unc.uncertainty_penalty = uncertainty_penalty;
        unc.validate();
        const int64_t layers = static_cast<int64_t>(actor_weights.size());
        if (layers < 1 || layers > kActorMaxLayers || static_cast<int64_t>(actor_biases.size()) != layers ||
            static_cast<int64_t>(actor_widths.size()) != layers + 1) {
          throw py::value_error("actor_weights: expected 1.." + std::to_string(kActorMaxLayers) +
                                " layers, one bias per weight and layers + 1 widths");
        }
        ActorView a;
        a.obs_dim = actor_widths.front();
        a.act_dim = actor_widths.back() / 2;
        a.num_layers = static_cast<int>(layers);
        for (int64_t i = 0; i <= layers; ++i) a.widths[i] = actor_widths[static_cast<size_t>(i)];
        for (int64_t i = 0; i < layers; ++i) {
          a.weights[i] = ptr<const float>(actor_weights[static_cast<size_t>(i)]);
          a.biases[i] = ptr<const float>(actor_biases[static_cast<size_t>(i)]);
        }
        auto scale = borrow_f32(action_scale, "action_scale", {a.act_dim});
        auto bias = borrow_f32(action_bias, "action_bias", {a.act_dim});
        py::array_t<float, py::array::c_style> low, high;
        if (action_low.is_none() != action_high.is_none()) {
          throw py::value_error("action_low, action_high: give both or neither");
        }
        if (!action_low.is_none()) {
          low = borrow_f32(action_low, "action_low", {a.act_dim});
          high = borrow_f32(action_high, "action_high", {a.act_dim});
          a.action_low = low.data();
          a.action_high = high.data();
        }
        a.action_scale = scale.data();
        a.action_bias = bias.data();
        a.log_std_min = log_std_min;
        a.log_std_max = log_std_max;
        // Keeps the GIL, like the pool methods: the rollout reads the pools' host-side ring
        // state at the start and advances model_pool's at the end, so a Python thread calling
        // model_pool.add_batch in between (GIL released) would write the same slots and lose
        // its rows from the counters. The GIL is what serializes calls on a device pool.
        const RolloutStats st =
            termination_mlp.is_none()
                ? cuda_branched_rollout(a, model.view, static_cast<TerminationId>(termination), real, model_pool,
                                        num_starts, horizon, seed, ptr<void>(cuda_stream), unc)
                : cuda_branched_rollout(a, model.view, termination_mlp.cast<const TerminationMLPView&>(), real,
                                        model_pool, num_starts, horizon, seed, ptr<void>(cuda_stream), unc);
        return rollout_stats_dict(st);
      },
      py::arg("real"), py::arg("model_pool"), py::arg("model"), py::arg("actor_weights"), py::arg("actor_biases"),
      py::arg("actor_widths"), py::arg("action_scale"), py::arg("action_bias"), py::arg("action_low") = py::none(),
      py::arg("action_high") = py::none(), py::arg("log_std_min") = -20.0f, py::arg("log_std_max") = 2.0f,
      py::arg("termination") = 0, py::arg("num_starts") = 0, py::arg("horizon") = 1, py::arg("seed") = 0,
      py::arg("cuda_stream") = 0, py::arg("max_disagreement") = std::numeric_limits<double>::infinity(),
      py::arg("disagreement_quantile") = -1.0, py::arg("uncertainty_penalty") = 0.0,
      py::arg("termination_mlp") = py::none(),
      "branched_rollout on the device (cuda_ops.h): device pools, device weights (pointers), host action box.\n"
      "max_disagreement / disagreement_quantile / uncertainty_penalty: rollout.h step 4 (as branched_rollout).\n"
      "termination_mlp: a CudaTerminationMLPView (learned termination on the device; then `termination` is "
      "ignored).");
  // The MPC planner on the device (cuda_ops.h); mbpo_fast/cuda_ops.py mpc_plan / mpc_evaluate
  // resolve the strings and ids. Host numpy arrays in and out, the model's device pointers.
  auto objective = [](const EnsembleView& v, int32_t reward, int32_t termination) {
    check_reward_args(reward, v.obs_dim, v.act_dim, "reward");
    check_termination_args(termination, v.obs_dim, "termination");
    PlanObjective o;
    o.reward = static_cast<RewardId>(reward);
    o.termination = static_cast<TerminationId>(termination);
    return o;
  };
  m.def(
      "cuda_mpc_plan",
      [objective](const CudaEnsembleHandle& model, py::handle obs, py::handle mean, py::handle action_low,
                  py::handle action_high, int32_t reward, int32_t termination, int32_t optimizer, int64_t population,
                  int64_t num_elites, int64_t iterations, double alpha, int64_t particles, int32_t propagation,
                  int64_t horizon, uint64_t call_seed, uintptr_t cuda_stream) {
        const EnsembleView& v = model.view;
        const PlannerConfig cfg = mbpo_fast_python::planner_config_from_python(
            v.act_dim, horizon, mbpo_fast_python::optimizer_from_id(optimizer), population, num_elites,
            iterations, alpha, particles, mbpo_fast_python::propagation_from_id(propagation), action_low,
            action_high);
        auto o = mbpo_fast_python::finite_f32(obs, "obs", {v.obs_dim});
        auto mu = mbpo_fast_python::finite_f32(mean, "mean", {horizon, v.act_dim});
        const PlanObjective obj = objective(v, reward, termination);
        return mbpo_fast_python::run_plan(horizon, v.act_dim, [&](float* pa, float* pm) {
          return cuda_plan_optimize(v, cfg, obj, o.data(), mu.data(), call_seed, pa, pm, ptr<void>(cuda_stream));
        });
      },
      py::arg("model"), py::arg("obs"), py::arg("mean"), py::arg("action_low"), py::arg("action_high"),
      py::arg("reward"), py::arg("termination"), py::arg("optimizer"), py::arg("population"), py::arg("num_elites"),
      py::arg("iterations"), py::arg("alpha"), py::arg("particles"), py::arg("propagation"), py::arg("horizon"),
      py::arg("call_seed"), py::arg("cuda_stream"),
      "One MPC plan with the particle rollouts on the device (cuda_plan_optimize); optimizer 0 = cem, 1 = random;\n"
      "propagation 0 = ts_inf, 1 = ts_1; reward 0 = the model's or a built-in id; termination a built-in id.\n"
      "Returns (action f32 [act_dim], final mean f32 [horizon, act_dim], stats dict) as mpc_plan.");
  m.def(
      "cuda_mpc_evaluate",
      [objective](const CudaEnsembleHandle& model, py::handle obs, py::handle actions, int32_t reward,
                  int32_t termination, int64_t particles, int32_t propagation, uint64_t seed, uintptr_t cuda_stream) {
        const EnsembleView& v = model.view;
        auto o = mbpo_fast_python::finite_f32(obs, "obs", {v.obs_dim});
        auto x = mbpo_fast_python::finite_f32(actions, "actions", {-1, -1, v.act_dim});
        const int64_t N = dim(x, 0), H = dim(x, 1);
        if (N < 1 || H < 1) throw py::value_error("actions: expected N >= 1 sequences of horizon >= 1");
        if (particles < 1) throw py::value_error("particles: expected >= 1, got " + std::to_string(particles));
        const Propagation prop = mbpo_fast_python::propagation_from_id(propagation);
        const PlanObjective obj = objective(v, reward, termination);
        py::array_t<double> values(static_cast<py::ssize_t>(N));
        py::array_t<int64_t> members({static_cast<py::ssize_t>(H), static_cast<py::ssize_t>(N * particles)});
        double* pv = values.mutable_data();
        int64_t* pm = members.mutable_data();
        {
          py::gil_scoped_release release;
          cuda_plan_evaluate(v, obj, o.data(), x.data(), N, H, particles, prop, seed,
                             pv, pm, ptr<void>(cuda_stream));
        }
        return py::make_tuple(values, members);
      },
      py::arg("model"), py::arg("obs"), py::arg("actions"), py::arg("reward"), py::arg("termination"),
      py::arg("particles"), py::arg("propagation"), py::arg("seed"), py::arg("cuda_stream"),
      "plan_evaluate with the particle rollouts on the device: (values f64 [N], members int64 [H, N * P]).");
  m.def(
      "cuda_sample_mixed",
      [](CudaReplayPool& real, CudaReplayPool& model, int64_t batch_size, double real_ratio, int64_t num_batches,
         uintptr_t obs, uintptr_t act, uintptr_t rew, uintptr_t next_obs, uintptr_t term, uintptr_t cuda_stream) {
        cuda_sample_mixed(real, model, batch_size, real_ratio, num_batches, ptr<float>(obs), ptr<float>(act),
                          ptr<float>(rew), ptr<float>(next_obs), ptr<uint8_t>(term), ptr<void>(cuda_stream));
      },
      py::arg("real"), py::arg("model"), py::arg("batch_size"), py::arg("real_ratio"), py::arg("num_batches"),
      py::arg("obs"), py::arg("act"), py::arg("rew"), py::arg("next_obs"), py::arg("terminated"),
      py::arg("cuda_stream"));
}

}  // namespace

// ------------------------------------------------------------------ shared with bind_*.cpp

namespace mbpo_fast_python {

BorrowedEnsemble borrow_ensemble(py::handle input_mean, py::handle input_std, const py::sequence& weights,
                                 const py::sequence& biases, py::handle max_logvar, py::handle min_logvar,
                                 py::handle elites, py::handle weights_bf16) {
  EnsembleArgs args = ensemble_args(input_mean, input_std, weights, biases, max_logvar, min_logvar, elites);
  attach_bf16(args, weights_bf16);
  BorrowedEnsemble out;
  for (auto& a : args.keep) out.keep.push_back(a);
  for (auto& a : args.keep_any) out.keep.push_back(a);
  if (args.elites) out.keep.push_back(args.elites);
  out.view = args.view;
  return out;
}

uint64_t seed_from_python(py::handle seed) { return seed_arg(seed); }

TerminationCallback termination_from_python(py::function fn, int64_t obs_dim, int64_t act_dim) {
  return python_termination(std::move(fn), obs_dim, act_dim);
}

}  // namespace mbpo_fast_python

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
  bind_replay_pool(m);
  bind_rollout(m);
  bind_cuda(m);
  bind_train_ops(m);
  bind_sac_learner(m);
  bind_ensemble_trainer(m);
  bind_planner(m);
}

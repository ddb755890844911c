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
py::array_t<float, py::array::c_style | py::array::forcecast> as_f32(py::handle obj, const char* name,
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
          auto a = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(arr);
          if (!a) throw py::error_already_set();
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
  bind_termination(m);
}

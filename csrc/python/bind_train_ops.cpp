// Python bindings of the trainer building blocks (csrc/include/mbpo_fast/train_ops.h), for
// tests and benchmarks of the kernels themselves: the submodule mbpo_fast._C.train_ops.
//
// Conventions: every array argument must already be float32 with unit stride along its
// last axis (a row stride wider than the row is allowed and passed to the kernel as the
// leading dimension, so slices such as big[:, :k] exercise lda > width); outputs are
// written in place and must be writable; a mismatch raises TypeError (dtype, type) or
// ValueError (shape, strides, overlap, configuration) naming the argument, before anything
// is written. Nothing is converted or copied, so a call measures the kernel. The GIL is
// released around the computation.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <tuple>

#include "mbpo_fast/train_ops.h"
#include "python_bridge.h"

namespace py = pybind11;
using mbpo_fast_python::shape_of;
using mbpo_fast_python::shape_str;
using mbpo_fast_python::type_name;
using namespace mbpo_fast;

namespace {

// A float32 matrix view: rows x cols, row stride ld (elements).
struct Mat {
  float* data = nullptr;
  int64_t rows = 0, cols = 0, ld = 1;
  py::array keep;  // holds the numpy array alive
  const char* lo() const { return reinterpret_cast<const char*>(data); }
  const char* hi() const {  // one past the last element this view covers
    return rows == 0 || cols == 0 ? lo() : reinterpret_cast<const char*>(data + (rows - 1) * ld + cols);
  }
};

py::array float32_array(py::handle obj, const char* name, bool writable) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string(name) + ": expected a numpy.ndarray of float32, got " + type_name(obj));
  }
  py::array arr = py::reinterpret_borrow<py::array>(obj);
  if (!arr.dtype().is(py::dtype::of<float>())) {
    throw py::type_error(std::string(name) + ": expected dtype float32, got " + std::string(py::str(arr.dtype())));
  }
  if (writable && !arr.writeable()) throw py::value_error(std::string(name) + ": must be writable (it is an output)");
  return arr;
}

// A 2-D float32 array with unit column stride and a non-negative row stride >= cols.
Mat matrix(py::handle obj, const char* name, bool writable) {
  py::array arr = float32_array(obj, name, writable);
  if (arr.ndim() != 2) {
    throw py::value_error(std::string(name) + ": expected a 2-D array, got shape " + shape_str(arr));
  }
  Mat m;
  m.rows = arr.shape(0);
  m.cols = arr.shape(1);
  const int64_t s0 = arr.strides(0), s1 = arr.strides(1);
  if (m.cols > 1 && s1 != static_cast<int64_t>(sizeof(float))) {
    throw py::value_error(std::string(name) + ": the last axis must be contiguous (stride 4 bytes), got stride " +
                          std::to_string(s1));
  }
  if (m.rows > 1) {
    if (s0 % static_cast<int64_t>(sizeof(float)) != 0 || s0 / static_cast<int64_t>(sizeof(float)) < m.cols ||
        s0 <= 0) {
      throw py::value_error(std::string(name) + ": row stride " + std::to_string(s0) +
                            " bytes must be a positive multiple of 4 and at least " + std::to_string(4 * m.cols));
    }
    m.ld = s0 / static_cast<int64_t>(sizeof(float));
  } else {
    m.ld = std::max<int64_t>(1, m.cols);
  }
  m.data = static_cast<float*>(arr.request(writable).ptr);
  m.keep = arr;
  return m;
}

// A contiguous float32 array of exactly n elements (any shape).
float* flat(py::handle obj, const char* name, int64_t n, bool writable, py::array* keep) {
  py::array arr = float32_array(obj, name, writable);
  if (!(arr.flags() & py::array::c_style)) throw py::value_error(std::string(name) + ": must be C-contiguous");
  if (arr.size() != n) {
    throw py::value_error(std::string(name) + ": expected " + std::to_string(n) + " elements, got shape " +
                          shape_str(arr) + " (" + std::to_string(arr.size()) + " elements)");
  }
  *keep = arr;
  return static_cast<float*>(arr.request(writable).ptr);
}

void require_shape(const Mat& m, const char* name, int64_t rows, int64_t cols) {
  if (m.rows != rows || m.cols != cols) {
    throw py::value_error(std::string(name) + ": expected shape (" + std::to_string(rows) + ", " +
                          std::to_string(cols) + "), got (" + std::to_string(m.rows) + ", " +
                          std::to_string(m.cols) + ")");
  }
}

bool overlap(const char* a_lo, const char* a_hi, const char* b_lo, const char* b_hi) {
  return a_lo < b_hi && b_lo < a_hi;
}

void require_disjoint(const Mat& out, const char* out_name, const Mat& in, const char* in_name) {
  if (overlap(out.lo(), out.hi(), in.lo(), in.hi())) {
    throw py::value_error(std::string(out_name) + ": must not overlap " + in_name + " in memory");
  }
}

py::array_t<float> zeros(int64_t rows, int64_t cols) {
  py::array_t<float> out({rows, cols});
  std::fill(out.mutable_data(), out.mutable_data() + rows * cols, 0.0f);
  return out;
}

// C = beta * C + op(A) @ op(B), `repeats` times (benchmarks: time the kernel without the
// Python call overhead; with beta != 0 C accumulates each time).
py::object gemm(py::handle a_obj, py::handle b_obj, py::object c_obj, bool trans_a, bool trans_b, float beta,
                int64_t repeats, bool bf16, bool portable) {
  const Mat a = matrix(a_obj, "a", false), b = matrix(b_obj, "b", false);
  const int64_t m = trans_a ? a.cols : a.rows, k = trans_a ? a.rows : a.cols;
  const int64_t kb = trans_b ? b.cols : b.rows, n = trans_b ? b.rows : b.cols;
  if (kb != k) {
    throw py::value_error("b: inner dimensions differ: op(a) is (" + std::to_string(m) + ", " + std::to_string(k) +
                          ") but op(b) is (" + std::to_string(kb) + ", " + std::to_string(n) + ")");
  }
  if (repeats < 1) throw py::value_error("repeats: must be >= 1, got " + std::to_string(repeats));
  if (!std::isfinite(beta)) throw py::value_error("beta: must be finite");
  if (c_obj.is_none()) {
    if (beta != 0.0f) throw py::value_error("c: required when beta != 0 (C is read)");
    c_obj = zeros(m, n);
  }
  const Mat c = matrix(c_obj, "c", true);
  require_shape(c, "c", m, n);
  require_disjoint(c, "c", a, "a");
  require_disjoint(c, "c", b, "b");
  using Fn = void (*)(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float,
                      float*, int64_t);
  const Fn fn = bf16 ? (portable ? &sgemm_bf16_portable : &sgemm_bf16) : (portable ? &sgemm_portable : &sgemm);
  {
    py::gil_scoped_release release;
    for (int64_t r = 0; r < repeats; ++r) fn(trans_a, trans_b, m, n, k, a.data, a.ld, b.data, b.ld, beta, c.data, c.ld);
  }
  return c_obj;
}

const char* const kGemmDoc = R"(C = beta * C + op(a) @ op(b) through the native GEMM (row-major).

a: float32 [m, k] ([k, m] when trans_a); b: float32 [k, n] ([n, k] when trans_b); unit stride
along the last axis, any row stride >= the row width (passed as lda / ldb / ldc).
c: float32 [m, n], written in place (returned); None allocates a new array (beta must be 0).
beta == 0 never reads c. repeats runs the same call that many times without returning to
Python (benchmarks). portable=True runs the portable reference kernel.)";

const char* const kGemmBf16Doc = R"(C = beta * C + bf16(op(a)) @ bf16(op(b)): the inputs rounded to bf16 (round to
nearest even), products accumulated in float32. Arguments as sgemm.)";

}  // namespace

void bind_train_ops(py::module_& m) {
  py::module_ t = m.def_submodule("train_ops", "Trainer building blocks (train_ops.h): GEMM, dense layer, "
                                               "activations, Adam. Float32 numpy arrays only; no copies.");
  t.def(
      "sgemm",
      [](py::handle a, py::handle b, py::object c, bool trans_a, bool trans_b, float beta, int64_t repeats,
         bool portable) { return gemm(a, b, std::move(c), trans_a, trans_b, beta, repeats, false, portable); },
      py::arg("a"), py::arg("b"), py::arg("c") = py::none(), py::kw_only(), py::arg("trans_a") = false,
      py::arg("trans_b") = false, py::arg("beta") = 0.0f, py::arg("repeats") = 1, py::arg("portable") = false,
      kGemmDoc);
  t.def(
      "sgemm_bf16",
      [](py::handle a, py::handle b, py::object c, bool trans_a, bool trans_b, float beta, int64_t repeats,
         bool portable) { return gemm(a, b, std::move(c), trans_a, trans_b, beta, repeats, true, portable); },
      py::arg("a"), py::arg("b"), py::arg("c") = py::none(), py::kw_only(), py::arg("trans_a") = false,
      py::arg("trans_b") = false, py::arg("beta") = 0.0f, py::arg("repeats") = 1, py::arg("portable") = false,
      kGemmBf16Doc);
  t.def("sgemm_kernel_name", [] { return std::string(sgemm_kernel_name()); },
        "The kernel sgemm runs on this CPU: 'avx512' or 'portable'.");
  t.def("sgemm_bf16_kernel_name", [] { return std::string(sgemm_bf16_kernel_name()); },
        "The kernel sgemm_bf16 runs on this CPU: 'avx512_bf16' or 'portable'.");

  t.def(
      "linear_forward",
      [](py::handle x_obj, py::handle w_obj, py::handle b_obj, bool bf16) {
        const Mat x = matrix(x_obj, "x", false), w = matrix(w_obj, "w", false);
        if (w.rows != x.cols) {
          throw py::value_error("w: expected shape (" + std::to_string(x.cols) + ", out) for x of width " +
                                std::to_string(x.cols) + ", got (" + std::to_string(w.rows) + ", " +
                                std::to_string(w.cols) + ")");
        }
        if (w.ld != w.cols) throw py::value_error("w: must be C-contiguous [in, out]");
        py::array keep_b;
        const float* b = flat(b_obj, "b", w.cols, false, &keep_b);
        py::array_t<float> y = zeros(x.rows, w.cols);
        float* yp = y.mutable_data();
        {
          py::gil_scoped_release release;
          linear_forward(x.data, x.ld, x.rows, w.data, b, w.rows, w.cols, yp, std::max<int64_t>(1, w.cols),
                         bf16 ? MatmulPrecision::kBf16 : MatmulPrecision::kFloat32);
        }
        return y;
      },
      py::arg("x"), py::arg("w"), py::arg("b"), py::kw_only(), py::arg("bf16") = false,
      "y[rows, out] = x[rows, in] @ w[in, out] + b[out] (float32; bf16=True rounds x and w to bf16).");

  t.def(
      "linear_backward",
      [](py::handle x_obj, py::handle w_obj, py::handle dy_obj, py::object dw_obj, py::object db_obj,
         bool need_dx, bool accumulate, bool bf16) {
        const Mat x = matrix(x_obj, "x", false), w = matrix(w_obj, "w", false), dy = matrix(dy_obj, "dy", false);
        const int64_t rows = x.rows, in = x.cols, out = w.cols;
        require_shape(w, "w", in, out);
        if (w.ld != w.cols) throw py::value_error("w: must be C-contiguous [in, out]");
        require_shape(dy, "dy", rows, out);
        if (accumulate && (dw_obj.is_none() || db_obj.is_none())) {
          throw py::value_error("accumulate=True needs dw and db (the gradients to add to)");
        }
        if (dw_obj.is_none()) dw_obj = zeros(in, out);
        if (db_obj.is_none()) db_obj = py::array_t<float>(out);
        const Mat dw = matrix(dw_obj, "dw", true);
        require_shape(dw, "dw", in, out);
        if (dw.ld != dw.cols) throw py::value_error("dw: must be C-contiguous [in, out]");
        py::array keep_db;
        float* db = flat(db_obj, "db", out, true, &keep_db);
        py::object dx_obj = need_dx ? py::object(zeros(rows, in)) : py::object(py::none());
        float* dx = need_dx ? py::cast<py::array_t<float>>(dx_obj).mutable_data() : nullptr;
        const Mat db_view{db, 1, out, out, keep_db};
        for (const Mat* in_view : {&x, &w, &dy}) {
          require_disjoint(dw, "dw", *in_view, "an input");
          require_disjoint(db_view, "db", *in_view, "an input");
        }
        require_disjoint(dw, "dw", db_view, "db");
        {
          py::gil_scoped_release release;
          linear_backward(x.data, x.ld, rows, w.data, in, out, dy.data, dy.ld, dw.data, db, dx,
                          std::max<int64_t>(1, in), accumulate, bf16 ? MatmulPrecision::kBf16 : MatmulPrecision::kFloat32);
        }
        return py::make_tuple(dw_obj, db_obj, dx_obj);
      },
      py::arg("x"), py::arg("w"), py::arg("dy"), py::kw_only(), py::arg("dw") = py::none(),
      py::arg("db") = py::none(), py::arg("need_dx") = true, py::arg("accumulate") = false,
      py::arg("bf16") = false,
      R"(Backward of y = x @ w + b given dy [rows, out]: returns (dw [in, out], db [out], dx [rows, in]).

dw = x^T @ dy, db = sum over rows of dy, dx = dy @ w^T (None when need_dx=False). dw/db given:
written in place (accumulate=True adds to them). bf16=True rounds the GEMM inputs to bf16.)");

  t.def(
      "activation_forward",
      [](py::handle x_obj, const std::string& kind, py::object pre_obj) {
        if (kind != "relu" && kind != "silu") {
          throw py::value_error("kind: expected 'relu' or 'silu', got '" + kind + "'");
        }
        py::array arr = float32_array(x_obj, "x", true);
        py::array keep, keep_pre;
        const int64_t n = arr.size();
        float* x = flat(x_obj, "x", n, true, &keep);
        if (kind == "relu") {
          if (!pre_obj.is_none()) throw py::value_error("pre: only silu saves its input");
          {
            // Scoped: the None returned below is a Python object (its refcount needs the GIL).
            py::gil_scoped_release release;
            relu_forward(x, n);
          }
          return py::object(py::none());
        }
        if (pre_obj.is_none()) pre_obj = py::array_t<float>(std::vector<py::ssize_t>(arr.shape(), arr.shape() + arr.ndim()));
        float* pre = flat(pre_obj, "pre", n, true, &keep_pre);
        if (overlap(reinterpret_cast<const char*>(pre), reinterpret_cast<const char*>(pre + n),
                    reinterpret_cast<const char*>(x), reinterpret_cast<const char*>(x + n))) {
          throw py::value_error("pre: must not overlap x in memory");
        }
        {
          py::gil_scoped_release release;
          silu_forward(x, pre, n);
        }
        return pre_obj;
      },
      py::arg("x"), py::arg("kind"), py::arg("pre") = py::none(),
      "In place on a C-contiguous float32 array: relu (returns None) or silu (returns pre, the "
      "input the backward needs; written into `pre` when given, else a new array).");

  t.def(
      "activation_backward",
      [](py::handle saved_obj, py::handle g_obj, const std::string& kind) {
        py::array g_arr = float32_array(g_obj, "g", true);
        py::array keep_g, keep_s;
        const int64_t n = g_arr.size();
        float* g = flat(g_obj, "g", n, true, &keep_g);
        const float* s = flat(saved_obj, "saved", n, false, &keep_s);
        if (kind != "relu" && kind != "silu") {
          throw py::value_error("kind: expected 'relu' or 'silu', got '" + kind + "'");
        }
        py::gil_scoped_release release;
        if (kind == "relu") {
          relu_backward(s, g, n);
        } else {
          silu_backward(s, g, n);
        }
      },
      py::arg("saved"), py::arg("g"), py::arg("kind"),
      "g (in place) times the activation's derivative; saved: relu's OUTPUT or silu's input.");

  t.def(
      "adam_step",
      [](py::handle p_obj, py::handle g_obj, py::handle m_obj, py::handle v_obj, py::handle step_obj, double lr,
         double beta1, double beta2, double eps, double weight_decay) {
        py::array p_arr = float32_array(p_obj, "param", true);
        const int64_t n = p_arr.size();
        py::array kp, kg, km, kv, ks;
        float* p = flat(p_obj, "param", n, true, &kp);
        const float* g = flat(g_obj, "grad", n, false, &kg);
        float* m = flat(m_obj, "exp_avg", n, true, &km);
        float* v = flat(v_obj, "exp_avg_sq", n, true, &kv);
        float* step = flat(step_obj, "step", 1, true, &ks);
        if (!(lr >= 0.0) || !std::isfinite(lr)) throw py::value_error("lr: must be finite and >= 0");
        if (!(beta1 >= 0.0 && beta1 < 1.0)) throw py::value_error("beta1: must be in [0, 1)");
        if (!(beta2 >= 0.0 && beta2 < 1.0)) throw py::value_error("beta2: must be in [0, 1)");
        if (!(eps >= 0.0) || !std::isfinite(eps)) throw py::value_error("eps: must be finite and >= 0");
        if (!(weight_decay >= 0.0) || !std::isfinite(weight_decay)) {
          throw py::value_error("weight_decay: must be finite and >= 0");
        }
        const char* names[] = {"param", "grad", "exp_avg", "exp_avg_sq", "step"};
        const char* lo[] = {reinterpret_cast<const char*>(p), reinterpret_cast<const char*>(g),
                            reinterpret_cast<const char*>(m), reinterpret_cast<const char*>(v),
                            reinterpret_cast<const char*>(step)};
        const int64_t len[] = {n, n, n, n, 1};
        for (int i = 0; i < 5; ++i) {
          for (int j = i + 1; j < 5; ++j) {
            if (len[i] > 0 && len[j] > 0 &&
                overlap(lo[i], lo[i] + 4 * len[i], lo[j], lo[j] + 4 * len[j])) {
              throw py::value_error(std::string(names[j]) + ": must not overlap " + names[i] + " in memory");
            }
          }
        }
        AdamConfig cfg;
        cfg.lr = lr;
        cfg.beta1 = beta1;
        cfg.beta2 = beta2;
        cfg.eps = eps;
        py::gil_scoped_release release;
        adam_step(p, g, m, v, step, n, cfg, weight_decay);
      },
      py::arg("param"), py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("step"),
      py::kw_only(), py::arg("lr") = 1e-3, py::arg("beta1") = 0.9, py::arg("beta2") = 0.999, py::arg("eps") = 1e-8,
      py::arg("weight_decay") = 0.0,
      R"(One torch fused-Adam step in place (float32, C-contiguous; amsgrad/maximize off).

step: a 1-element float32 array (torch's state['step'].numpy()), incremented first;
weight_decay is coupled L2 (grad + weight_decay * param), as torch.optim.Adam applies it.)");
}

// Python bindings of the native ensemble trainer (csrc/include/mbpo_fast/ensemble_trainer.h).
//
// _C.EnsembleTrainer borrows zero-copy numpy views of torch tensors (the parameters and
// torch.optim.Adam's exp_avg / exp_avg_sq / step state) and keeps references to them, so the
// storage outlives the trainer. Every array is checked (float32, C-contiguous, writeable,
// shape) before anything is built; the epoch and the holdout evaluation release the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "mbpo_fast/ensemble_trainer.h"
#include "python_bridge.h"

namespace py = pybind11;
using mbpo_fast_python::shape_of;
using mbpo_fast_python::shape_str;
using mbpo_fast_python::type_name;
using namespace mbpo_fast;

namespace {

// A borrowed, writeable float32 C-contiguous array of exactly `shape` (no conversion: the
// trainer writes into it).
float* borrow_f32(const py::handle& obj, const std::string& name, const std::vector<int64_t>& shape) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(name + ": expected a numpy float32 array, got " +
                         type_name(obj));
  }
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<float>())) {
    throw py::type_error(name + ": expected dtype float32, got " + std::string(py::str(a.dtype())));
  }
  if (shape_of(a) != shape) {
    throw py::value_error(name + ": expected shape " + shape_str(shape) + ", got " + shape_str(shape_of(a)));
  }
  if (!(a.flags() & py::array::c_style)) throw py::value_error(name + ": expected a C-contiguous array");
  if (!a.writeable()) throw py::value_error(name + ": expected a writeable array (the trainer updates it in place)");
  return static_cast<float*>(a.mutable_data());
}

// Read-only input: converted to contiguous float32 / int64 when needed (a copy), shape-checked
// (-1 = any extent).
template <typename T>
py::array_t<T, py::array::c_style | py::array::forcecast> input(const py::handle& obj, const char* name,
                                                                 const std::vector<int64_t>& shape, char kind) {
  py::array a = py::array::ensure(obj);
  if (!a) throw py::type_error(std::string(name) + ": expected a numeric array");
  const char k = a.dtype().kind();
  if (kind == 'f' ? k != 'f' : (k != 'i' && k != 'u')) {
    throw py::type_error(std::string(name) + ": expected " + (kind == 'f' ? "a float32" : "an int64") +
                         " array, got dtype " + std::string(py::str(a.dtype())));
  }
  const auto got = shape_of(a);
  bool ok = got.size() == shape.size();
  for (size_t i = 0; ok && i < got.size(); ++i) ok = shape[i] < 0 || shape[i] == got[i];
  if (!ok) {
    std::vector<int64_t> shown = shape;
    std::ostringstream os;
    os << "(";
    for (size_t i = 0; i < shown.size(); ++i) {
      os << (i ? ", " : "");
      if (shown[i] < 0) os << "*"; else os << shown[i];
    }
    os << (shown.size() == 1 ? ",)" : ")");
    throw py::value_error(std::string(name) + ": expected shape " + os.str() + ", got " + shape_str(got));
  }
  auto out = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(a);
  if (!out) throw py::error_already_set();
  return out;
}

class PyEnsembleTrainer {
 public:
  PyEnsembleTrainer(int64_t obs_dim, int64_t act_dim, int64_t ensemble_size, int64_t hidden_size,
                    int num_hidden_layers, std::vector<double> weight_decays, double lr, double beta1, double beta2,
                    double eps, bool bf16, const py::list& params, const py::list& exp_avg, const py::list& exp_avg_sq,
                    const py::list& step, int row_parts) {
    cfg_.obs_dim = obs_dim;
    cfg_.act_dim = act_dim;
    cfg_.ensemble_size = ensemble_size;
    cfg_.hidden_size = hidden_size;
    cfg_.num_hidden_layers = num_hidden_layers;
    cfg_.weight_decays = std::move(weight_decays);
    cfg_.adam.lr = lr;
    cfg_.adam.beta1 = beta1;
    cfg_.adam.beta2 = beta2;
    cfg_.adam.eps = eps;
    cfg_.precision = bf16 ? MatmulPrecision::kBf16 : MatmulPrecision::kFloat32;
    cfg_.row_parts = row_parts;
    cfg_.validate();
    const int n_lin = cfg_.num_linear();
    const size_t n_t = static_cast<size_t>(2 * n_lin + 2);
    for (const auto& [list, what] : {std::pair<const py::list*, const char*>{&params, "params"},
                                     {&exp_avg, "exp_avg"},
                                     {&exp_avg_sq, "exp_avg_sq"},
                                     {&step, "step"}}) {
      if (list->size() != n_t) {
        throw py::value_error(std::string(what) + ": expected " + std::to_string(n_t) +
                              " arrays ([w0, b0, ..., w" + std::to_string(n_lin - 1) + ", b" +
                              std::to_string(n_lin - 1) + ", max_logvar, min_logvar]), got " +
                              std::to_string(list->size()));
      }
    }
    EnsembleTrainerStorage st;
    const int64_t E = ensemble_size, out = cfg_.out_dim();
    for (size_t t = 0; t < n_t; ++t) {
      std::string name;
      std::vector<int64_t> shape;
      if (t < static_cast<size_t>(2 * n_lin)) {
        const int i = static_cast<int>(t / 2);
        const bool weight = t % 2 == 0;
        name = "layers." + std::to_string(i) + (weight ? ".weight" : ".bias");
        shape = weight ? std::vector<int64_t>{E, cfg_.layer_in(i), cfg_.layer_out(i)}
                       : std::vector<int64_t>{E, cfg_.layer_out(i)};
      } else {
        name = t == n_t - 2 ? "max_logvar" : "min_logvar";
        shape = {out};
      }
      const std::string at = "[" + std::to_string(t) + "] (" + name + ")";
      AdamTensor tt{borrow_f32(params[t], "params" + at, shape), borrow_f32(exp_avg[t], "exp_avg" + at, shape),
                         borrow_f32(exp_avg_sq[t], "exp_avg_sq" + at, shape),
                         borrow_f32(step[t], "step" + at, {})};
      if (t < static_cast<size_t>(2 * n_lin)) {
        (t % 2 == 0 ? st.weights[t / 2] : st.biases[t / 2]) = tt;
      } else {
        (t == n_t - 2 ? st.max_logvar : st.min_logvar) = tt;
      }
    }
    trainer_ = std::make_unique<EnsembleTrainer>(cfg_, st);
    keep_ = py::make_tuple(params, exp_avg, exp_avg_sq, step);  // the storage outlives the trainer
  }

  double train_epoch(const py::handle& x, const py::handle& y, const py::handle& idx, int64_t batch_size) {
    const int64_t in = cfg_.in_dim(), out = cfg_.out_dim(), E = cfg_.ensemble_size;
    auto xa = input<float>(x, "x", {-1, in}, 'f');
    const int64_t rows = xa.shape(0);
    auto ya = input<float>(y, "y", {rows, out}, 'f');
    auto ia = input<int64_t>(idx, "idx", {E, -1}, 'i');
    if (rows < 1) throw py::value_error("x: expected at least one row");
    if (ia.shape(1) < 1) throw py::value_error("idx: expected at least one column");
    if (batch_size < 1) throw py::value_error("batch_size: expected >= 1, got " + std::to_string(batch_size));
    const float* xp = xa.data();
    const float* yp = ya.data();
    const int64_t* ip = ia.data();
    const int64_t cols = ia.shape(1);
    py::gil_scoped_release release;
    return trainer_->train_epoch(xp, yp, rows, ip, cols, batch_size);
  }

  py::array_t<double> member_mse(const py::handle& x, const py::handle& y) const {
    const int64_t in = cfg_.in_dim(), out = cfg_.out_dim();
    auto xa = input<float>(x, "x", {-1, in}, 'f');
    const int64_t rows = xa.shape(0);
    auto ya = input<float>(y, "y", {rows, out}, 'f');
    if (rows < 1) throw py::value_error("x: expected at least one row");
    py::array_t<double> res(static_cast<py::ssize_t>(cfg_.ensemble_size));
    double* rp = res.mutable_data();
    const float* xp = xa.data();
    const float* yp = ya.data();
    {
      py::gil_scoped_release release;
      trainer_->member_mse(xp, yp, rows, rp);
    }
    return res;
  }

  bool bf16() const { return cfg_.precision == MatmulPrecision::kBf16; }

 private:
  EnsembleTrainerConfig cfg_;
  std::unique_ptr<EnsembleTrainer> trainer_;
  py::object keep_;
};

}  // namespace

void bind_ensemble_trainer(py::module_& m) {
  py::class_<PyEnsembleTrainer>(m, "EnsembleTrainer",
                                "Native epoch of MBPO's ensemble fit on borrowed float32 storage "
                                "(csrc/include/mbpo_fast/ensemble_trainer.h).")
      .def(py::init<int64_t, int64_t, int64_t, int64_t, int, std::vector<double>, double, double, double, double,
                    bool, const py::list&, const py::list&, const py::list&, const py::list&, int>(),
           py::arg("obs_dim"), py::arg("act_dim"), py::arg("ensemble_size"), py::arg("hidden_size"),
           py::arg("num_hidden_layers"), py::arg("weight_decays"), py::arg("lr"), py::arg("beta1"),
           py::arg("beta2"), py::arg("eps"), py::arg("bf16"), py::arg("params"), py::arg("exp_avg"),
           py::arg("exp_avg_sq"), py::arg("step"), py::arg("row_parts") = 0,
           "params / exp_avg / exp_avg_sq: float32 arrays [w0, b0, ..., wL, bL, max_logvar, min_logvar] "
           "(w_i [E, in_i, out_i], b_i [E, out_i], bounds [obs_dim + 1]); step: 0-d float32 arrays. "
           "All borrowed and updated in place. row_parts: rows split per member (0 = automatic).")
      .def("train_epoch", &PyEnsembleTrainer::train_epoch, py::arg("x"), py::arg("y"), py::arg("idx"),
           py::arg("batch_size"),
           "One epoch: x float32 [N, in], y float32 [N, obs_dim + 1], idx int64 [E, M] in [0, N); one Adam "
           "step per slice idx[:, s:s+batch_size]. Returns the mean batch loss (before each step).")
      .def("member_mse", &PyEnsembleTrainer::member_mse, py::arg("x"), py::arg("y"),
           "Per-member MSE (float64 [E]) of the predicted mean on x float32 [N, in] against y [N, obs_dim + 1].")
      .def_property_readonly("bf16", &PyEnsembleTrainer::bf16);
}

// Python bindings of the native ensemble trainer (csrc/include/mbpo_fast/ensemble_trainer.h).
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_ensemble_trainer(py::module_& m) { (void)m; }

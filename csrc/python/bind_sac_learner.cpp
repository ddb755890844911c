// Python bindings of the native sac learner (csrc/include/mbpo_fast/sac_learner.h).
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_sac_learner(py::module_& m) { (void)m; }

// Bindings of the sphere kernels (to be written).
#include "bind_common.h"

namespace glann_py {
void register_sphere(py::module_& m) {}
}  // namespace glann_py

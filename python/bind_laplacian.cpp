// Bindings of the laplacian kernels (to be written).
#include "bind_common.h"

namespace glann_py {
void register_laplacian(py::module_& m) {}
}  // namespace glann_py

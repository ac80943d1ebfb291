// Bindings of the nn_argmin kernels (to be written).
#include "bind_common.h"

namespace glann_py {
void register_nn_argmin(py::module_& m) {}
}  // namespace glann_py

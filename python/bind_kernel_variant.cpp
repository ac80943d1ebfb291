// Bindings of the legacy/Hopper CUDA kernel switch (csrc/common/kernel_variant.h).
#include <string>

#include "bind_common.h"
#include "common/kernel_variant.h"

namespace glann_py {

void register_kernel_variant(py::module_& m) {
  m.def(
      "cuda_kernels",
      [] {
        const std::string error = glann::cuda_kernels_env_error();
        if (!error.empty()) throw py::value_error(error);
        return glann::cuda_kernels_name(glann::hopper_ops());
      },
      "The CUDA kernels the ops run: 'legacy', 'hopper' or 'hopper:OP[,OP...]' (GLANN_EXT_CUDA_KERNELS, or "
      "the last set_cuda_kernels); raises ValueError for an unparsable GLANN_EXT_CUDA_KERNELS.");
  m.def(
      "default_cuda_kernels", [] { return glann::cuda_kernels_name(glann::kDefaultHopperOps); },
      "The CUDA kernels the ops run without GLANN_EXT_CUDA_KERNELS, in cuda_kernels' spelling.");
  m.def(
      "set_cuda_kernels",
      [](const std::string& spec) {
        if (!glann::set_cuda_kernels(spec.c_str()))
          throw py::value_error(
              "cuda kernels must be legacy, hopper or hopper:OP[,OP...] with OP in nn_argmin, "
              "laplacian, project; got '" +
              spec + "'");
      },
      py::arg("spec"), "Chooses the CUDA kernels for the rest of the process (tests and benchmarks).");
}

}  // namespace glann_py

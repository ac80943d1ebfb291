// glann_ext._C: the compiled module. Each kernel family registers its functions from its own file.
// Every function exists in every build (glann_ext/_C.pyi holds for all); CUDA entry points of a build
// without CUDA raise StatusError UNSUPPORTED.
#include <pybind11/pybind11.h>

#include "bind_common.h"
#include "common/cpu_features.h"
#include "common/parallel.h"

#ifdef GLANN_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#ifndef GLANN_EXT_VERSION
#define GLANN_EXT_VERSION "dev"
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "glann_ext native kernels (framework-free; tensors are passed as pointers by glann_ext.ops)";
  m.attr("__version__") = GLANN_EXT_VERSION;
#ifdef GLANN_WITH_CUDA
  m.attr("cuda_compiled") = true;
#else
  m.attr("cuda_compiled") = false;
#endif
  m.def(
      "cuda_runtime_version",
      [] {
        int v = 0;
#ifdef GLANN_WITH_CUDA
        cudaRuntimeGetVersion(&v);
#endif
        return v;
      },
      "CUDA runtime version the module was built with (e.g. 13000); 0 in a build without CUDA.");
  m.def(
      "cpu_isa",
      [] {
        const std::string error = glann::cpu_isa_env_error();
        if (!error.empty()) throw py::value_error(error);
        return glann::cpu_isa_name(glann::best_cpu_isa());
      },
      "SIMD level the CPU kernels use on this machine: baseline, avx2 or avx512; raises ValueError for an "
      "unknown GLANN_EXT_CPU_ISA.");
  m.def("hardware_threads", &glann::hardware_threads, "Hardware threads available to the process.");

  glann_py::register_status(m);
  glann_py::register_nn_argmin(m);
  glann_py::register_laplacian(m);
  glann_py::register_sphere(m);
  glann_py::register_kernel_variant(m);
}

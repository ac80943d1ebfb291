// glann_ext._C: the compiled module. Each kernel family registers its functions from its own file.
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
  m.def("cuda_runtime_version", [] {
    int v = 0;
    cudaRuntimeGetVersion(&v);
    return v;
  }, "CUDA runtime version the module was built with (e.g. 13000).");
  m.def("cuda_device_count", [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    return n;
  }, "CUDA devices visible to the module's runtime (0 when there is no driver or GPU).");
#else
  m.attr("cuda_compiled") = false;
  m.def("cuda_runtime_version", [] { return 0; });
  m.def("cuda_device_count", [] { return 0; });
#endif
  m.def("cpu_isa", [] { return glann::cpu_isa_name(glann::best_cpu_isa()); },
        "SIMD level the CPU kernels use on this machine: baseline, avx2 or avx512.");
  m.def("hardware_threads", &glann::hardware_threads);

  glann_py::register_nn_argmin(m);
  glann_py::register_laplacian(m);
  glann_py::register_sphere(m);
}

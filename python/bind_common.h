// Shared helpers of the binding layer: the only code that knows Python. It converts, it does not
// decide: argument checking happens in glann_ext/ops/, the kernels report failures as glann::Status,
// raised here as glann_ext._C.StatusError (code, message, detail) for glann_ext/ops/_native.py to type.
#pragma once
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <string>
#include <tuple>

#include "common/dtype.h"
#include "common/exec.h"
#include "common/status.h"

namespace glann_py {

namespace py = pybind11;

// Raises s as glann_ext._C.StatusError unless it is ok.
void throw_if_error(const glann::Status& s);

// The one answer of every CUDA entry point in a build without CUDA kernels.
glann::Status no_cuda_status();

// The CUDA launcher `fn`, or a null pointer of its type in a build without CUDA kernels (csrc/ then
// declares it but does not define it).
#ifdef GLANN_WITH_CUDA
#define GLANN_CUDA_ENTRY(fn) (&fn)
#else
#define GLANN_CUDA_ENTRY(fn) static_cast<decltype(&fn)>(nullptr)
#endif

// Runs the CPU or the CUDA launcher (by p.exec.cuda) without the GIL; raises a failed Status.
template <typename P>
void launch(const P& p, glann::Status (*cpu)(const P&), glann::Status (*cuda)(const P&)) {
  glann::Status s;
  {
    py::gil_scoped_release nogil;
    s = !p.exec.cuda ? cpu(p) : (cuda != nullptr ? cuda(p) : no_cuda_status());
  }
  throw_if_error(s);
}

// ExecContext as Python passes it: (cuda, device, stream, num_threads), built by
// glann_ext.ops._native.exec_context().
using ExecArgs = std::tuple<bool, int, std::uintptr_t, int>;
glann::ExecContext to_exec(const ExecArgs& a);

template <typename T>
inline T* as_ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

glann::DType as_dtype(int code);

// Copies Python's strides (a sequence of ints) into a params struct's `<tensor>_strides` array.
template <std::size_t N>
void set_strides(int64_t (&dst)[N], const std::array<int64_t, N>& src) {
  for (std::size_t i = 0; i < N; ++i) dst[i] = src[i];
}

// Registration hooks, one per kernel family (python/bind_<kernel>.cpp).
void register_status(py::module_& m);
void register_nn_argmin(py::module_& m);
void register_laplacian(py::module_& m);
void register_sphere(py::module_& m);
void register_kernel_variant(py::module_& m);

}  // namespace glann_py

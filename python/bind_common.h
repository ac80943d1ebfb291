// Shared helpers of the binding layer: the only code that knows Python. It converts, it does not
// decide: argument checking happens in glann_ext/ops/, the kernels report failures as glann::Status.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/dtype.h"
#include "common/status.h"

namespace glann_py {

namespace py = pybind11;

// Turns a failed Status into the matching Python exception.
inline void throw_if_error(const glann::Status& s) {
  if (s.ok()) return;
  switch (s.code) {
    case glann::StatusCode::kInvalidArgument:
    case glann::StatusCode::kNonFinite:
      throw py::value_error(s.message);
    default:
      throw std::runtime_error(s.message);
  }
}

template <typename T>
inline T* as_ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

inline glann::DType as_dtype(int code) {
  if (code < 0 || code > static_cast<int>(glann::DType::kInt64))
    throw py::value_error("glann_ext._C: unknown dtype code " + std::to_string(code));
  return static_cast<glann::DType>(code);
}

// Registration hooks, one per kernel family (python/bind_<kernel>.cpp).
void register_nn_argmin(py::module_& m);
void register_laplacian(py::module_& m);
void register_sphere(py::module_& m);

}  // namespace glann_py

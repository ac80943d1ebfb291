// The Status exception, the ExecContext conversion and the "built without CUDA" answer.
#include "bind_common.h"

namespace glann_py {

namespace {
// glann_ext._C.StatusError, created once at import (the module keeps it alive for the process).
PyObject* status_error_type = nullptr;
}  // namespace

void throw_if_error(const glann::Status& s) {
  if (s.ok()) return;
  py::object err = py::reinterpret_borrow<py::object>(status_error_type)(s.message);
  err.attr("code") = s.code;
  err.attr("message") = s.message;
  err.attr("detail") = s.detail;
  err.attr("input") = s.input;
  PyErr_SetObject(status_error_type, err.ptr());
  throw py::error_already_set();
}

glann::Status no_cuda_status() {
  return glann::Status::Error(glann::StatusCode::kUnsupported,
                              "glann_ext was built without CUDA kernels; move the tensors to the CPU or rebuild "
                              "with GLANN_EXT_CUDA=ON");
}

glann::ExecContext to_exec(const ExecArgs& a) {
  glann::ExecContext e;
  e.cuda = std::get<0>(a);
  e.device = std::get<1>(a);
  e.stream = as_ptr<void>(std::get<2>(a));
  e.num_threads = std::get<3>(a);
  return e;
}

glann::DType as_dtype(int code) {
  if (code < 0 || code > static_cast<int>(glann::DType::kInt64))
    throw py::value_error("glann_ext._C: unknown dtype code " + std::to_string(code));
  return static_cast<glann::DType>(code);
}

void register_status(py::module_& m) {
  py::enum_<glann::StatusCode>(m, "StatusCode", "glann::StatusCode (csrc/common/status.h).")
      .value("OK", glann::StatusCode::kOk)
      .value("INVALID_ARGUMENT", glann::StatusCode::kInvalidArgument)
      .value("NON_FINITE", glann::StatusCode::kNonFinite)
      .value("CUDA_ERROR", glann::StatusCode::kCudaError)
      .value("UNSUPPORTED", glann::StatusCode::kUnsupported);
  status_error_type = PyErr_NewExceptionWithDoc(
      "glann_ext._C.StatusError",
      "A kernel launcher failed: code (StatusCode), message, detail (e.g. the lowest offending row, -1 if none), "
      "input (for NON_FINITE: which input of the launcher the row belongs to, 0 = the first; -1 if none).",
      PyExc_RuntimeError, nullptr);
  if (status_error_type == nullptr) throw py::error_already_set();
  m.add_object("StatusError", py::handle(status_error_type));  // the module holds the reference
}

}  // namespace glann_py

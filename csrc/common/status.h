// Error reporting for kernel launchers: they return a Status instead of throwing, and the binding
// layer (python/) turns a failed Status into a Python exception. csrc/ knows nothing of Python.
#pragma once
#include <string>
#include <utility>

namespace glann {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument = 1,  // a precondition the Python layer should have caught
  kNonFinite = 2,        // NaN/Inf met in the data; message names the row/argument
  kCudaError = 3,        // a CUDA runtime error; message carries cudaGetErrorString
  kUnsupported = 4,      // e.g. CUDA requested in a CPU-only build
};

struct Status {
  StatusCode code = StatusCode::kOk;
  std::string message;
  long long detail = -1;  // optional payload, e.g. first offending row

  bool ok() const { return code == StatusCode::kOk; }
  static Status Ok() { return {}; }
  static Status Error(StatusCode c, std::string msg, long long detail = -1) {
    Status s;
    s.code = c;
    s.message = std::move(msg);
    s.detail = detail;
    return s;
  }
};

}  // namespace glann

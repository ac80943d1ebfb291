// Error reporting for kernel launchers: they return a Status instead of throwing, and the binding
// layer (python/) raises it as glann_ext._C.StatusError with code, message and detail; glann_ext/ops
// turns that into the typed error. csrc/ knows nothing of Python.
#pragma once
#include <cstdint>
#include <string>
#include <utility>

namespace glann {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument = 1,  // a precondition the Python layer should have caught
  kNonFinite = 2,        // NaN/Inf met in the data; detail = the lowest offending row
  kCudaError = 3,        // a CUDA runtime error; message carries cudaGetErrorString
  kUnsupported = 4,      // e.g. CUDA requested in a CPU-only build
};

struct Status {
  StatusCode code = StatusCode::kOk;
  std::string message;
  int64_t detail = -1;  // optional payload, e.g. the lowest offending row
  // kNonFinite: which input of the launcher `detail` refers to, in the order its params struct lists
  // them (0: queries, x, z or grad; 1: keys or y); -1 when it does not apply.
  int input = -1;

  bool ok() const { return code == StatusCode::kOk; }
  static Status Ok() { return {}; }
  static Status Error(StatusCode c, std::string msg, int64_t detail = -1, int input = -1) {
    Status s;
    s.code = c;
    s.message = std::move(msg);
    s.detail = detail;
    s.input = input;
    return s;
  }
};

}  // namespace glann

// Helpers for CUDA launchers (included from .cu files only).
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "common/status.h"

namespace glann {

// Status for the last launch on this thread (cudaGetLastError also clears sticky-free errors).
inline Status cuda_last_status(const char* what) {
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return Status::Ok();
  return Status::Error(StatusCode::kCudaError, std::string(what) + ": " + cudaGetErrorString(err));
}

inline int ceil_div_int(long long a, long long b) { return static_cast<int>((a + b - 1) / b); }

}  // namespace glann

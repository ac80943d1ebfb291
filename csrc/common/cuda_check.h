// Helpers for CUDA launchers (included from .cu files only).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "common/status.h"

namespace glann {

// Status for the last launch on this thread (cudaGetLastError also clears sticky-free errors).
inline Status cuda_last_status(const char* what) {
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return Status::Ok();
  return Status::Error(StatusCode::kCudaError, std::string(what) + ": " + cudaGetErrorString(err));
}

// Makes the tensors' device current for the launch and restores the previous device on exit. The
// module links its own (static) CUDA runtime, whose current device is not torch's: every CUDA launcher
// opens one of these first and returns status() if it is not ok.
class CudaDeviceGuard {
 public:
  explicit CudaDeviceGuard(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) {
      status_ = cuda_last_status("cudaGetDevice");
      return;
    }
    if (previous_ == device) return;
    if (cudaSetDevice(device) != cudaSuccess) {
      status_ = cuda_last_status("cudaSetDevice");
      return;
    }
    restore_ = true;
  }
  ~CudaDeviceGuard() {
    if (restore_) cudaSetDevice(previous_);
  }
  CudaDeviceGuard(const CudaDeviceGuard&) = delete;
  CudaDeviceGuard& operator=(const CudaDeviceGuard&) = delete;

  const Status& status() const { return status_; }

 private:
  int previous_ = 0;
  bool restore_ = false;
  Status status_;
};

inline int ceil_div_int(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

#ifdef __CUDACC__
// atomicMin on a non-negative int64: CUDA declares its 64-bit atomics on unsigned long long only.
__device__ __forceinline__ void atomic_min_nonnegative(int64_t* address, int64_t value) {
  using u64 = unsigned long long;  // the one spelling of this type in csrc/: CUDA's atomics need it
  static_assert(sizeof(u64) == sizeof(int64_t), "64-bit atomics");
  atomicMin(reinterpret_cast<u64*>(address), static_cast<u64>(value));
}
#endif

}  // namespace glann

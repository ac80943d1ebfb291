// Dynamic shared memory past 48 KB for the Hopper kernels (included from .cu files only).
#pragma once
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <utility>

namespace glann {

// Raises `kernel`'s dynamic shared-memory limit on the current device to at least `bytes`, calling
// cudaFuncSetAttribute only the first time a (kernel, device) needs more: a CUDA-graph capture after a
// warm-up call then holds only the launches. Returns false if the attribute could not be set (the launch
// then fails and its status says why).
inline bool raise_smem_limit(const void* kernel, int bytes) {
  if (bytes <= 48 * 1024) return true;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, int> limits;
  const std::lock_guard<std::mutex> lock(mutex);
  int& limit = limits[{kernel, device}];
  if (bytes <= limit) return true;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) != cudaSuccess) return false;
  limit = bytes;
  return true;
}

}  // namespace glann

// Element conversions of the CUDA kernels (included from .cu files only): every storage type to and
// from the compute type, half and bfloat16 through float with round-to-nearest-even.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace glann {
namespace cvt {

template <typename To>
__device__ __forceinline__ To to(float v) {
  return static_cast<To>(v);
}
template <typename To>
__device__ __forceinline__ To to(double v) {
  return static_cast<To>(v);
}
template <typename To>
__device__ __forceinline__ To to(__half v) {
  return static_cast<To>(__half2float(v));
}
template <typename To>
__device__ __forceinline__ To to(__nv_bfloat16 v) {
  return static_cast<To>(__bfloat162float(v));
}
template <>
__device__ __forceinline__ __half to<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __half to<__half>(double v) {
  return __float2half_rn(static_cast<float>(v));
}
template <>
__device__ __forceinline__ __nv_bfloat16 to<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 to<__nv_bfloat16>(double v) {
  return __float2bfloat16_rn(static_cast<float>(v));
}

}  // namespace cvt
}  // namespace glann

// Helpers of the GLANN_HD code of the Hopper kernels (the *_math.h headers of laplacian_fused, nn_argmin_mma
// and sphere_vec), beside common/host_device.h's GLANN_HD.
#pragma once

#include "common/host_device.h"

// Fully unrolls the next loop on the device, so that arrays indexed by its counter stay in registers (a
// run-time index puts them in local memory); nothing on the host, nvcc's host pass included (g++ -Wall
// warns of an unknown pragma).
#if defined(__CUDA_ARCH__)
#define GLANN_UNROLL _Pragma("unroll")
#else
#define GLANN_UNROLL
#endif

// Member functions shared by host and device (GLANN_HD is `static` on the host, which members cannot be).
#if defined(__CUDACC__)
#define GLANN_HD_MEMBER __host__ __device__ __forceinline__
#else
#define GLANN_HD_MEMBER inline
#endif

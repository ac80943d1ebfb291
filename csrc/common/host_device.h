// GLANN_HD marks the math that the CPU and the CUDA kernels share (the *_math.h headers).
//
// On the host it is `static inline`: internal linkage, so every CPU translation unit (the baseline,
// AVX2 and AVX-512 copies of a kernel family, see cpu_dispatch.h) keeps its own copy and the linker can
// never hand a copy compiled with AVX flags to code that runs on a CPU without them.
#pragma once

#if defined(__CUDACC__)
#define GLANN_HD __host__ __device__ __forceinline__
#else
#define GLANN_HD static inline
#endif

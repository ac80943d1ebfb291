// nn_argmin on tensor cores (Hopper kernels of issue 15): mma.sync with fp32 accumulation for
// float16/bfloat16 inputs, 3xTF32 for float32, a 4-stage cp.async pipeline (or a scalar loader for
// strided, unaligned or odd-width inputs), int32 in-split indices, the fused argmin epilogue and the same
// (score, index) rule (nn_argmin_mma_math.h). nn_argmin.cu's launchers call these when
// use_hopper_kernels() says so; the contract is NnArgminParams' (fold into the running best from
// key_offset). Defined only with GLANN_WITH_CUDA.
#pragma once
#include <cstdint>

#include "nn_argmin/nn_argmin.h"

namespace glann {

int64_t nn_argmin_mma_workspace_bytes(int64_t n_queries, int64_t n_keys, int64_t dim, int device);
Status nn_argmin_cuda_mma(const NnArgminParams& p);

}  // namespace glann

// Exact nearest-neighbour argmin in squared L2, tiled and fused: for every query row the index of the
// nearest key row, without ever materialising the N x M distance matrix.
//
// Candidates are ranked by the score s(q, k) = ||k||^2 - 2 q.k (||q||^2 is the same for every key of a
// row, so it is left out); the Python layer recomputes the winner's distance exactly as sum((q-k)^2).
// Ties (equal scores) go to the lowest key index, on every path and for every thread count: the score
// of a (q, k) pair is computed by the same instruction sequence wherever the pair falls in the tiling.
#pragma once
#include <cstdint>

#include "common/dtype.h"
#include "common/status.h"

namespace glann {

struct NnArgminParams {
  // queries (n, d) and keys (m, d), element strides (any layout; no copies are made).
  const void* queries = nullptr;
  int64_t n = 0, d = 0;
  int64_t q_stride_row = 0, q_stride_col = 1;
  const void* keys = nullptr;
  int64_t m = 0;
  int64_t k_stride_row = 0, k_stride_col = 1;
  DType dtype = DType::kFloat32;  // of queries and keys; CPU: float32; CUDA: float32/float16/bfloat16

  // Outputs (n): best score and its key index (0-based within this call's keys).
  float* best_score = nullptr;
  int64_t* best_index = nullptr;

  // Caller-allocated scratch (see nn_argmin_*_workspace_bytes), 64-byte aligned.
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;

  int num_threads = 1;       // CPU: threads to use (torch.get_num_threads())
  void* cuda_stream = nullptr;  // CUDA: the cudaStream_t to launch on
  int cuda_device = 0;          // CUDA: the device of the tensors (made current for the launch)
};

// CPU path (float32). Workspace size depends on the shapes and the thread count.
int64_t nn_argmin_cpu_workspace_bytes(int64_t n, int64_t m, int64_t d, int num_threads);
Status nn_argmin_cpu(const NnArgminParams& p);
// Name of the SIMD code path the CPU kernel uses on this machine.
const char* nn_argmin_cpu_path();

#ifdef GLANN_WITH_CUDA
int64_t nn_argmin_cuda_workspace_bytes(int64_t n, int64_t m, int64_t d, int device);
Status nn_argmin_cuda(const NnArgminParams& p);
#endif

}  // namespace glann

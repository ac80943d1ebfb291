// Exact nearest-neighbour argmin in squared L2, tiled and fused: for every query row the index of the
// nearest key row, without ever materialising the n_queries x n_keys distance matrix.
//
// Candidates are ranked by the score s(q, k) = ||k||^2 - 2 q.k (||q||^2 is the same for every key of a
// row, so it is left out); the Python layer recomputes the winner's distance exactly as sum((q-k)^2).
// Ties (equal scores) go to the lowest key index, on every path and for every thread count: the score
// of a (q, k) pair is computed by the same instruction sequence wherever the pair falls in the tiling,
// and every merge of partial results uses one rule (nn_argmin_math.h).
//
// The launchers fold keys into a running best: keys may come in chunks, in any order, each with the
// global index of its first row (key_offset); the result equals one search over all keys in index order.
#pragma once
#include <cstdint>

#include "common/dtype.h"
#include "common/exec.h"
#include "common/status.h"

namespace glann {

struct NnArgminParams {
  ExecContext exec;
  // Of queries and keys. CPU: float32 or float64; CUDA: float32, float64, float16 or bfloat16. float64 is
  // searched in float64 (scores and best_score are double); every other dtype in float32.
  DType dtype = DType::kFloat32;
  // queries (n_queries, dim) and keys (n_keys, dim), element strides (any layout; no copies are made).
  const void* queries = nullptr;
  int64_t n_queries = 0, dim = 0;
  int64_t queries_strides[2] = {0, 1};
  const void* keys = nullptr;
  int64_t n_keys = 0;
  int64_t keys_strides[2] = {0, 1};
  int64_t key_offset = 0;  // global index of keys row 0

  // In/out (n_queries, contiguous): the running best score (float, or double for float64 inputs) and its
  // global key index, lowered in place by the (score, index) rule. Start from (+inf, INT64_MAX), the
  // rule's identity.
  void* best_score = nullptr;
  int64_t* best_index = nullptr;

  // NaN/Inf in the rows the kernels read (the NaN policy of glann_ext.ops): with check_queries /
  // check_keys set, the CPU launcher returns Status kNonFinite with input 0 (queries) or 1 (keys) and
  // detail = the lowest offending row (of this call's keys), queries first; the CUDA launcher lowers
  // nonfinite_rows[0] (queries) and nonfinite_rows[1] (keys) to rows holding NaN/Inf, and
  // nonfinite_rows[2] (queries) and [3] (keys) to rows of finite values whose squared norm is above
  // nn::max_squared_norm (their scores could overflow), four device int64s the caller set to INT64_MAX,
  // and returns without waiting (the caller reads them when it wants). The results are unspecified then.
  // (The CPU launcher reports a key above the norm bound as kNonFinite too; the caller looks at the row.)
  bool check_queries = false, check_keys = false;
  int64_t* nonfinite_rows = nullptr;

  // Caller-allocated scratch (see nn_argmin_*_workspace_bytes), 64-byte aligned.
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};

// Folds precomputed candidates (one per query row: score and an index local to its chunk of keys) into
// the running best with the same rule: for a scorer other than the fused kernels.
struct NnArgminMergeParams {
  ExecContext exec;
  DType score_dtype = DType::kFloat32;  // of score and best_score: float32 or float64
  int64_t n_queries = 0;
  const void* score = nullptr;     // (n_queries,) contiguous
  const int64_t* index = nullptr;  // (n_queries,) contiguous, local to the chunk
  int64_t key_offset = 0;          // global index of the chunk's row 0
  void* best_score = nullptr;      // in/out, as in NnArgminParams
  int64_t* best_index = nullptr;
};

// CPU path (float32, float64). Workspace size depends on the shapes, the dtype and the thread count.
int64_t nn_argmin_cpu_workspace_bytes(int64_t n_queries, int64_t n_keys, int64_t dim, DType dtype, int num_threads);
Status nn_argmin_cpu(const NnArgminParams& p);
Status nn_argmin_merge_cpu(const NnArgminMergeParams& p);
// Name of the SIMD code path the CPU kernel uses on this machine.
const char* nn_argmin_cpu_path();

// Defined in nn_argmin.cu, built only with GLANN_WITH_CUDA (the bindings guard every call).
int64_t nn_argmin_cuda_workspace_bytes(int64_t n_queries, int64_t n_keys, int64_t dim, int device);
Status nn_argmin_cuda(const NnArgminParams& p);
Status nn_argmin_merge_cuda(const NnArgminMergeParams& p);

}  // namespace glann

// nn_argmin on CUDA: a tiled SIMT kernel with the argmin fused into the GEMM epilogue.
//
//  0. row_check:   (when asked) the lowest query row holding NaN/Inf lowered into nonfinite_rows[0], the
//                  lowest finite one whose squared norm is above max_squared_norm into nonfinite_rows[2].
//  1. key_norms:   ||k||^2 per key into the workspace (fma over d in order); when asked, a key whose norm
//                  is above max_squared_norm (or NaN) is looked at: if it holds NaN/Inf it lowers
//                  nonfinite_rows[1], otherwise nonfinite_rows[3] (its scores could overflow).
//  2. argmin_tile: a block owns 128 query rows and one contiguous split of the keys; it walks 128-key
//                  tiles, accumulating q.k in registers (8 x 8 per thread, d in chunks of 16 through
//                  shared memory), turns them into scores ||k||^2 - 2 q.k (fmaf) and keeps a running
//                  (score, index) per row and thread. At the end the 16 threads sharing a row reduce
//                  with warp shuffles, lowest index first on ties, and write one partial per split.
//  3. merge:       per row, the splits folded into the running best (nn::fold_row, the shared rule).
// The N x M matrix never exists; the workspace is O(M + splits * N). Kernels launch on the caller's
// stream, allocate nothing and never synchronise. Acc, the type of every product, sum and score, is
// double for float64 inputs and float otherwise.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/cuda_check.h"
#include "common/kernel_variant.h"
#include "nn_argmin/nn_argmin.h"
#include "nn_argmin/nn_argmin_math.h"
#include "nn_argmin/nn_argmin_mma.h"

namespace glann {
namespace {

constexpr int kBM = 128;                             // query rows per block
constexpr int kBN = 128;                             // keys per tile
constexpr int kBK = 16;                              // d per shared-memory stage
constexpr int kTM = 8;                               // rows per thread
constexpr int kTN = 8;                               // keys per thread
constexpr int kThreads = (kBM / kTM) * (kBN / kTN);  // 256
constexpr int kPad = 4;                              // keeps float4 alignment and spreads banks

// The accumulation type of an input type: double for double, float for the rest.
template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

__device__ __forceinline__ float fma_acc(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fma_acc(double a, double b, double c) { return fma(a, b, c); }

template <typename A>
__device__ __forceinline__ A inf_acc() {
  return static_cast<A>(__int_as_float(0x7f800000));  // +inf
}

// Eight consecutive values from shared memory (16-byte aligned) in vector loads.
__device__ __forceinline__ void load8(const float* p, float (&out)[8]) {
  const float4 a = *reinterpret_cast<const float4*>(p);
  const float4 b = *reinterpret_cast<const float4*>(p + 4);
  // clang-format off
  out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w; out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
  // clang-format on
}
__device__ __forceinline__ void load8(const double* p, double (&out)[8]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const double2 v = reinterpret_cast<const double2*>(p)[i];
    out[2 * i] = v.x;
    out[2 * i + 1] = v.y;
  }
}

// Whether a row holds NaN or Inf: v * 0 is 0 for every finite v and NaN otherwise.
template <typename T>
__device__ bool row_not_finite(const T* row, int64_t d, int64_t s1) {
  using A = typename AccOf<T>::type;
  A zero = A(0);
  for (int64_t c = 0; c < d; ++c) zero += to_acc(row[c * s1]) * A(0);
  return zero != A(0);
}

// Lowers *first_bad to the lowest row holding NaN/Inf, and *first_overflow to the lowest row of finite
// values whose squared norm is above max_squared_norm (nn::RowCheck, in one read).
template <typename T>
__global__ void row_check_kernel(const T* __restrict__ x, int64_t rows, int64_t d, int64_t s0, int64_t s1,
                                 int64_t* __restrict__ first_bad, int64_t* __restrict__ first_overflow) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= rows) return;
  const T* row = x + j * s0;
  nn::RowCheck<typename AccOf<T>::type> check;
  for (int64_t c = 0; c < d; ++c) nn::row_check_add(check, to_acc(row[c * s1]));
  const nn::RowStatus status = nn::row_check_status(check);
  if (status == nn::kRowNonFinite) atomic_min_nonnegative(first_bad, j);
  if (status == nn::kRowNormOverflow) atomic_min_nonnegative(first_overflow, j);
}

// ||k||^2 per key; with first_bad, a key whose norm is above max_squared_norm (NaN/Inf, or finite values
// whose scores could overflow) is looked at: NaN/Inf lowers first_bad[0], finite values first_bad[2]. The
// caller passes nonfinite_rows + 1, so these are the keys' slots [1] and [3] of nn_argmin.h's flags.
template <typename T>
__global__ void key_norms_kernel(const T* __restrict__ keys, int64_t m, int64_t d, int64_t s0, int64_t s1,
                                 typename AccOf<T>::type* __restrict__ norms, int64_t* __restrict__ first_bad) {
  using A = typename AccOf<T>::type;
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= m) return;
  const T* row = keys + j * s0;
  A acc = A(0);
  for (int64_t c = 0; c < d; ++c) {
    const A v = to_acc(row[c * s1]);
    acc = fma_acc(v, v, acc);
  }
  norms[j] = acc;
  if (first_bad != nullptr && !(acc <= nn::max_squared_norm<A>()))
    atomic_min_nonnegative(row_not_finite(row, d, s1) ? first_bad : first_bad + 2, j);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    argmin_tile_kernel(const T* __restrict__ q, int64_t n, int64_t d, int64_t qs0, int64_t qs1, const T* __restrict__ k,
                       int64_t m, int64_t ks0, int64_t ks1, const typename AccOf<T>::type* __restrict__ norms,
                       int64_t keys_per_split, typename AccOf<T>::type* __restrict__ part_score,
                       int64_t* __restrict__ part_index) {
  using A = typename AccOf<T>::type;
  __shared__ __align__(16) A qs[kBK][kBM + kPad];
  __shared__ __align__(16) A ks[kBK][kBN + kPad];

  const int tid = threadIdx.x;
  const int tx = tid % (kBN / kTN);  // key group: the 16 threads of a row group are adjacent lanes
  const int ty = tid / (kBN / kTN);  // row group
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int64_t split = blockIdx.y;
  const int64_t key_begin = split * keys_per_split;
  const int64_t key_end = min(m, key_begin + keys_per_split);

  A best[kTM];
  int64_t best_idx[kTM];
#pragma unroll
  for (int i = 0; i < kTM; ++i) {
    best[i] = inf_acc<A>();
    best_idx[i] = key_begin;
  }

  // Loader mapping: each thread fills 8 consecutive d of one row (of queries and of keys) per stage.
  const int load_row = tid / 2;
  const int load_c0 = (tid % 2) * (kBK / 2);

  for (int64_t tile = key_begin; tile < key_end; tile += kBN) {
    A acc[kTM][kTN];
#pragma unroll
    for (int i = 0; i < kTM; ++i)
#pragma unroll
      for (int j = 0; j < kTN; ++j) acc[i][j] = A(0);

    for (int64_t c0 = 0; c0 < d; c0 += kBK) {
      {
        const int64_t qr = row0 + load_row;
        const int64_t kr = tile + load_row;
#pragma unroll
        for (int c = 0; c < kBK / 2; ++c) {
          const int64_t col = c0 + load_c0 + c;
          qs[load_c0 + c][load_row] = (qr < n && col < d) ? to_acc(q[qr * qs0 + col * qs1]) : A(0);
          ks[load_c0 + c][load_row] = (kr < key_end && col < d) ? to_acc(k[kr * ks0 + col * ks1]) : A(0);
        }
      }
      __syncthreads();
#pragma unroll
      for (int c = 0; c < kBK; ++c) {
        A a[kTM], b[kTN];
        load8(&qs[c][ty * kTM], a);
        load8(&ks[c][tx * kTN], b);
#pragma unroll
        for (int i = 0; i < kTM; ++i)
#pragma unroll
          for (int j = 0; j < kTN; ++j) acc[i][j] = fma_acc(a[i], b[j], acc[i][j]);
      }
      __syncthreads();
    }

    // Epilogue: keys of this thread in increasing index order, strict < keeps the first minimum.
#pragma unroll
    for (int j = 0; j < kTN; ++j) {
      const int64_t key = tile + tx * kTN + j;
      const A kn = key < key_end ? norms[key] : inf_acc<A>();
#pragma unroll
      for (int i = 0; i < kTM; ++i) {
        const A s = fma_acc(acc[i][j], A(-2), kn);
        if (s < best[i]) {
          best[i] = s;
          best_idx[i] = key;
        }
      }
    }
  }

  // Reduce over the 16 adjacent lanes that share these rows.
#pragma unroll
  for (int i = 0; i < kTM; ++i) {
    A s = best[i];
    int64_t idx = best_idx[i];
#pragma unroll
    for (int off = (kBN / kTN) / 2; off > 0; off /= 2) {
      const A os = __shfl_xor_sync(0xffffffffu, s, off);
      const int64_t oi = __shfl_xor_sync(0xffffffffu, idx, off);
      if (nn::better(os, oi, s, idx)) {
        s = os;
        idx = oi;
      }
    }
    const int64_t row = row0 + ty * kTM + i;
    if (tx == 0 && row < n) {
      part_score[split * n + row] = s;
      part_index[split * n + row] = idx;
    }
  }
}

template <typename A>
__global__ void merge_kernel(const A* __restrict__ part_score, const int64_t* __restrict__ part_index, int64_t n,
                             int64_t splits, int64_t offset, A* __restrict__ best_score,
                             int64_t* __restrict__ best_index) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= n) return;
  nn::fold_row(r, n, splits, part_score, part_index, offset, best_score, best_index);
}

struct CudaPlan {
  int64_t splits, keys_per_split;
  int64_t norms_bytes, part_bytes;
  int64_t total() const { return norms_bytes + 2 * part_bytes + 256; }
};

int64_t round_up(int64_t x, int64_t a) { return (x + a - 1) / a * a; }

CudaPlan make_plan(int64_t n, int64_t m, int device) {
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) {
    cudaGetLastError();
    sms = 80;
  }
  const int64_t q_blocks = (n + kBM - 1) / kBM;
  const int64_t key_tiles = (m + kBN - 1) / kBN;
  int64_t splits = (int64_t{4} * sms + q_blocks - 1) / q_blocks;  // about 4 blocks per SM in total
  splits = splits < 1 ? 1 : (splits > key_tiles ? key_tiles : splits);
  splits = splits > 65535 ? 65535 : splits;  // gridDim.y limit
  const int64_t tiles_per_split = (key_tiles + splits - 1) / splits;
  CudaPlan p;
  p.keys_per_split = tiles_per_split * kBN;
  p.splits = (m + p.keys_per_split - 1) / p.keys_per_split;
  p.norms_bytes = round_up(m * 8, 256);            // float norms use the first half (double: all of it)
  p.part_bytes = round_up(p.splits * n * 8, 256);  // int64 partial indices; float scores use the first half
  return p;
}

template <typename T>
Status launch(const NnArgminParams& p, const CudaPlan& plan, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  char* base = reinterpret_cast<char*>(round_up(reinterpret_cast<std::uintptr_t>(p.workspace), 256));
  A* norms = reinterpret_cast<A*>(base);
  A* part_score = reinterpret_cast<A*>(base + plan.norms_bytes);
  int64_t* part_index = reinterpret_cast<int64_t*>(base + plan.norms_bytes + plan.part_bytes);
  const T* q = static_cast<const T*>(p.queries);
  const T* k = static_cast<const T*>(p.keys);
  const int64_t* qs = p.queries_strides;
  const int64_t* ks = p.keys_strides;

  if (p.check_queries)
    row_check_kernel<T><<<ceil_div_int(p.n_queries, 256), 256, 0, stream>>>(q, p.n_queries, p.dim, qs[0], qs[1],
                                                                            p.nonfinite_rows, p.nonfinite_rows + 2);
  key_norms_kernel<T><<<ceil_div_int(p.n_keys, 256), 256, 0, stream>>>(k, p.n_keys, p.dim, ks[0], ks[1], norms,
                                                                       p.check_keys ? p.nonfinite_rows + 1 : nullptr);
  dim3 grid(ceil_div_int(p.n_queries, kBM), static_cast<unsigned>(plan.splits));
  argmin_tile_kernel<T><<<grid, kThreads, 0, stream>>>(q, p.n_queries, p.dim, qs[0], qs[1], k, p.n_keys, ks[0], ks[1],
                                                       norms, plan.keys_per_split, part_score, part_index);
  merge_kernel<A><<<ceil_div_int(p.n_queries, 256), 256, 0, stream>>>(
      part_score, part_index, p.n_queries, plan.splits, p.key_offset, static_cast<A*>(p.best_score), p.best_index);
  return cuda_last_status("nn_argmin (CUDA)");
}

// The NaN/Inf and norm checks the tensor-core path does not fold in: one read of the rows asked for.
template <typename T>
Status row_checks(const NnArgminParams& p) {
  if ((p.check_queries || p.check_keys) && p.nonfinite_rows == nullptr)
    return Status::Error(StatusCode::kInvalidArgument, "nn_argmin (CUDA): a NaN/Inf check needs nonfinite_rows");
  const CudaDeviceGuard guard(p.exec.device);
  if (!guard.status().ok()) return guard.status();
  cudaStream_t stream = static_cast<cudaStream_t>(p.exec.stream);
  const int64_t* qs = p.queries_strides;
  const int64_t* ks = p.keys_strides;
  if (p.check_queries && p.n_queries > 0)
    row_check_kernel<T><<<ceil_div_int(p.n_queries, 256), 256, 0, stream>>>(
        static_cast<const T*>(p.queries), p.n_queries, p.dim, qs[0], qs[1], p.nonfinite_rows, p.nonfinite_rows + 2);
  if (p.check_keys && p.n_keys > 0)
    row_check_kernel<T><<<ceil_div_int(p.n_keys, 256), 256, 0, stream>>>(
        static_cast<const T*>(p.keys), p.n_keys, p.dim, ks[0], ks[1], p.nonfinite_rows + 1, p.nonfinite_rows + 3);
  return cuda_last_status("nn_argmin (CUDA, row checks)");
}

// The tensor-core kernels serve float32/float16/bfloat16; float64 keeps the legacy kernel.
bool use_mma(const ExecContext& exec, DType dtype) {
  return dtype != DType::kFloat64 && use_hopper_kernels(exec, HopperOp::kNnArgmin);
}

}  // namespace

int64_t nn_argmin_cuda_workspace_bytes(int64_t n_queries, int64_t n_keys, int64_t dim, int device) {
  if (n_queries <= 0 || n_keys <= 0 || dim <= 0) return 0;
  const int64_t legacy = make_plan(n_queries, n_keys, device).total();
  if (!use_hopper_kernels(ExecContext{true, device}, HopperOp::kNnArgmin)) return legacy;
  const int64_t mma = nn_argmin_mma_workspace_bytes(n_queries, n_keys, dim, device);
  return mma > legacy ? mma : legacy;  // no dtype here: enough for either kernel
}

Status nn_argmin_cuda(const NnArgminParams& p) {
  if (use_mma(p.exec, p.dtype)) {
    Status checks = Status::Ok();
    if (p.dtype == DType::kFloat32) checks = row_checks<float>(p);
    if (p.dtype == DType::kFloat16) checks = row_checks<__half>(p);
    if (p.dtype == DType::kBFloat16) checks = row_checks<__nv_bfloat16>(p);
    return checks.ok() ? nn_argmin_cuda_mma(p) : checks;
  }
  if (p.n_queries == 0) return Status::Ok();
  if (p.n_keys <= 0 || p.dim <= 0)
    return Status::Error(StatusCode::kInvalidArgument, "nn_argmin: keys must be non-empty");
  if ((p.n_queries + kBM - 1) / kBM > int64_t{2147483647})
    return Status::Error(StatusCode::kInvalidArgument, "nn_argmin (CUDA): too many queries for one call");
  const CudaDeviceGuard guard(p.exec.device);
  if (!guard.status().ok()) return guard.status();
  const CudaPlan plan = make_plan(p.n_queries, p.n_keys, p.exec.device);
  if (p.workspace_bytes < plan.total())
    return Status::Error(StatusCode::kInvalidArgument, "nn_argmin (CUDA): workspace too small");
  if ((p.check_queries || p.check_keys) && p.nonfinite_rows == nullptr)
    return Status::Error(StatusCode::kInvalidArgument, "nn_argmin (CUDA): a NaN/Inf check needs nonfinite_rows");
  cudaStream_t stream = static_cast<cudaStream_t>(p.exec.stream);
  switch (p.dtype) {
    case DType::kFloat32:
      return launch<float>(p, plan, stream);
    case DType::kFloat64:
      return launch<double>(p, plan, stream);
    case DType::kFloat16:
      return launch<__half>(p, plan, stream);
    case DType::kBFloat16:
      return launch<__nv_bfloat16>(p, plan, stream);
    default:
      return Status::Error(StatusCode::kInvalidArgument,
                           "nn_argmin (CUDA): float32, float64, float16 or bfloat16 only");
  }
}

Status nn_argmin_merge_cuda(const NnArgminMergeParams& p) {
  if (p.n_queries == 0) return Status::Ok();
  const CudaDeviceGuard guard(p.exec.device);
  if (!guard.status().ok()) return guard.status();
  const cudaStream_t stream = static_cast<cudaStream_t>(p.exec.stream);
  const int blocks = ceil_div_int(p.n_queries, 256);
  if (p.score_dtype == DType::kFloat64)
    merge_kernel<double><<<blocks, 256, 0, stream>>>(static_cast<const double*>(p.score), p.index, p.n_queries, 1,
                                                     p.key_offset, static_cast<double*>(p.best_score), p.best_index);
  else
    merge_kernel<float><<<blocks, 256, 0, stream>>>(static_cast<const float*>(p.score), p.index, p.n_queries, 1,
                                                    p.key_offset, static_cast<float*>(p.best_score), p.best_index);
  return cuda_last_status("nn_argmin merge (CUDA)");
}

}  // namespace glann

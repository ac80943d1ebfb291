// nn_argmin on CUDA: a tiled SIMT kernel with the argmin fused into the GEMM epilogue.
//
//  1. key_norms:   ||k||^2 per key into the workspace (fmaf over d in order, as the CPU kernel does).
//  2. argmin_tile: a block owns 128 query rows and one contiguous split of the keys; it walks 128-key
//                  tiles, accumulating q.k in registers (8 x 8 per thread, d in chunks of 16 through
//                  shared memory), turns them into scores ||k||^2 - 2 q.k (fmaf) and keeps a running
//                  (score, index) per row and thread. At the end the 16 threads sharing a row reduce
//                  with warp shuffles, lowest index first on ties, and write one partial per split.
//  3. merge:       per row, the splits folded into the running best (nn::fold_row, the shared rule).
// The N x M matrix never exists; the workspace is O(M + splits * N). Kernels launch on the caller's
// stream and allocate nothing.
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

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__global__ void key_norms_kernel(const T* __restrict__ keys, int64_t m, int64_t d, int64_t s0, int64_t s1,
                                 float* __restrict__ norms) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= m) return;
  const T* row = keys + j * s0;
  float acc = 0.0f;
  for (int64_t c = 0; c < d; ++c) {
    const float v = to_float(row[c * s1]);
    acc = fmaf(v, v, acc);
  }
  norms[j] = acc;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    argmin_tile_kernel(const T* __restrict__ q, int64_t n, int64_t d, int64_t qs0, int64_t qs1, const T* __restrict__ k,
                       int64_t m, int64_t ks0, int64_t ks1, const float* __restrict__ norms, int64_t keys_per_split,
                       float* __restrict__ part_score, int64_t* __restrict__ part_index) {
  __shared__ __align__(16) float qs[kBK][kBM + kPad];
  __shared__ __align__(16) float ks[kBK][kBN + kPad];

  const int tid = threadIdx.x;
  const int tx = tid % (kBN / kTN);  // key group: the 16 threads of a row group are adjacent lanes
  const int ty = tid / (kBN / kTN);  // row group
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int64_t split = blockIdx.y;
  const int64_t key_begin = split * keys_per_split;
  const int64_t key_end = min(m, key_begin + keys_per_split);

  float best[kTM];
  int64_t best_idx[kTM];
#pragma unroll
  for (int i = 0; i < kTM; ++i) {
    best[i] = __int_as_float(0x7f800000);  // +inf
    best_idx[i] = key_begin;
  }

  // Loader mapping: each thread fills 8 consecutive d of one row (of queries and of keys) per stage.
  const int load_row = tid / 2;
  const int load_c0 = (tid % 2) * (kBK / 2);

  for (int64_t tile = key_begin; tile < key_end; tile += kBN) {
    float acc[kTM][kTN];
#pragma unroll
    for (int i = 0; i < kTM; ++i)
#pragma unroll
      for (int j = 0; j < kTN; ++j) acc[i][j] = 0.0f;

    for (int64_t c0 = 0; c0 < d; c0 += kBK) {
      {
        const int64_t qr = row0 + load_row;
        const int64_t kr = tile + load_row;
#pragma unroll
        for (int c = 0; c < kBK / 2; ++c) {
          const int64_t col = c0 + load_c0 + c;
          qs[load_c0 + c][load_row] = (qr < n && col < d) ? to_float(q[qr * qs0 + col * qs1]) : 0.0f;
          ks[load_c0 + c][load_row] = (kr < key_end && col < d) ? to_float(k[kr * ks0 + col * ks1]) : 0.0f;
        }
      }
      __syncthreads();
#pragma unroll
      for (int c = 0; c < kBK; ++c) {
        float a[kTM], b[kTN];
        const float4 a0 = *reinterpret_cast<const float4*>(&qs[c][ty * kTM]);
        const float4 a1 = *reinterpret_cast<const float4*>(&qs[c][ty * kTM + 4]);
        const float4 b0 = *reinterpret_cast<const float4*>(&ks[c][tx * kTN]);
        const float4 b1 = *reinterpret_cast<const float4*>(&ks[c][tx * kTN + 4]);
        // clang-format off
        a[0] = a0.x; a[1] = a0.y; a[2] = a0.z; a[3] = a0.w; a[4] = a1.x; a[5] = a1.y; a[6] = a1.z; a[7] = a1.w;
        b[0] = b0.x; b[1] = b0.y; b[2] = b0.z; b[3] = b0.w; b[4] = b1.x; b[5] = b1.y; b[6] = b1.z; b[7] = b1.w;
        // clang-format on
#pragma unroll
        for (int i = 0; i < kTM; ++i)
#pragma unroll
          for (int j = 0; j < kTN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
      __syncthreads();
    }

    // Epilogue: keys of this thread in increasing index order, strict < keeps the first minimum.
#pragma unroll
    for (int j = 0; j < kTN; ++j) {
      const int64_t key = tile + tx * kTN + j;
      const float kn = key < key_end ? norms[key] : __int_as_float(0x7f800000);
#pragma unroll
      for (int i = 0; i < kTM; ++i) {
        const float s = fmaf(acc[i][j], -2.0f, kn);
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
    float s = best[i];
    int64_t idx = best_idx[i];
#pragma unroll
    for (int off = (kBN / kTN) / 2; off > 0; off /= 2) {
      const float os = __shfl_xor_sync(0xffffffffu, s, off);
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

__global__ void merge_kernel(const float* __restrict__ part_score, const int64_t* __restrict__ part_index, int64_t n,
                             int64_t splits, int64_t offset, float* __restrict__ best_score,
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
  p.norms_bytes = round_up(m * 4, 256);
  p.part_bytes = round_up(p.splits * n * 8, 256);  // int64 partial indices; scores use the first half
  return p;
}

template <typename T>
Status launch(const NnArgminParams& p, const CudaPlan& plan, cudaStream_t stream) {
  char* base = reinterpret_cast<char*>(round_up(reinterpret_cast<std::uintptr_t>(p.workspace), 256));
  float* norms = reinterpret_cast<float*>(base);
  float* part_score = reinterpret_cast<float*>(base + plan.norms_bytes);
  int64_t* part_index = reinterpret_cast<int64_t*>(base + plan.norms_bytes + plan.part_bytes);
  const T* q = static_cast<const T*>(p.queries);
  const T* k = static_cast<const T*>(p.keys);
  const int64_t* qs = p.queries_strides;
  const int64_t* ks = p.keys_strides;

  key_norms_kernel<T><<<ceil_div_int(p.n_keys, 256), 256, 0, stream>>>(k, p.n_keys, p.dim, ks[0], ks[1], norms);
  dim3 grid(ceil_div_int(p.n_queries, kBM), static_cast<unsigned>(plan.splits));
  argmin_tile_kernel<T><<<grid, kThreads, 0, stream>>>(q, p.n_queries, p.dim, qs[0], qs[1], k, p.n_keys, ks[0], ks[1],
                                                       norms, plan.keys_per_split, part_score, part_index);
  merge_kernel<<<ceil_div_int(p.n_queries, 256), 256, 0, stream>>>(part_score, part_index, p.n_queries, plan.splits,
                                                                   p.key_offset, p.best_score, p.best_index);
  return cuda_last_status("nn_argmin (CUDA)");
}

}  // namespace

int64_t nn_argmin_cuda_workspace_bytes(int64_t n_queries, int64_t n_keys, int64_t dim, int device) {
  if (use_hopper_kernels(ExecContext{true, device}, HopperOp::kNnArgmin))
    return nn_argmin_mma_workspace_bytes(n_queries, n_keys, dim, device);
  if (n_queries <= 0 || n_keys <= 0 || dim <= 0) return 0;
  return make_plan(n_queries, n_keys, device).total();
}

Status nn_argmin_cuda(const NnArgminParams& p) {
  if (use_hopper_kernels(p.exec, HopperOp::kNnArgmin)) return nn_argmin_cuda_mma(p);
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
  cudaStream_t stream = static_cast<cudaStream_t>(p.exec.stream);
  switch (p.dtype) {
    case DType::kFloat32:
      return launch<float>(p, plan, stream);
    case DType::kFloat16:
      return launch<__half>(p, plan, stream);
    case DType::kBFloat16:
      return launch<__nv_bfloat16>(p, plan, stream);
    default:
      return Status::Error(StatusCode::kInvalidArgument, "nn_argmin (CUDA): float32, float16 or bfloat16 only");
  }
}

Status nn_argmin_merge_cuda(const NnArgminMergeParams& p) {
  if (p.n_queries == 0) return Status::Ok();
  const CudaDeviceGuard guard(p.exec.device);
  if (!guard.status().ok()) return guard.status();
  merge_kernel<<<ceil_div_int(p.n_queries, 256), 256, 0, static_cast<cudaStream_t>(p.exec.stream)>>>(
      p.score, p.index, p.n_queries, 1, p.key_offset, p.best_score, p.best_index);
  return cuda_last_status("nn_argmin merge (CUDA)");
}

}  // namespace glann

// CUDA kernels of the sphere family: one warp per row, grid-stride over rows, no allocation, launched
// on the caller's stream. Same semantics as the CPU kernels (csrc/sphere/sphere.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "common/cuda_check.h"
#include "common/cuda_convert.h"
#include "common/kernel_variant.h"
#include "sphere/sphere.h"
#include "sphere/sphere_math.h"
#include "sphere/sphere_vec.h"

namespace glann {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / kWarp;
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride beyond this

// Accumulation type: double for float32/float64 rows (as on the CPU), float for 16-bit rows.
template <typename T>
struct Acc {
  using type = double;
};
template <>
struct Acc<__half> {
  using type = float;
};
template <>
struct Acc<__nv_bfloat16> {
  using type = float;
};

// To the accumulation type and back (half and bfloat16 through float, round-to-nearest-even).
template <typename A, typename X>
__device__ __forceinline__ A to_acc(X x) {
  return cvt::to<A>(x);
}
template <typename T, typename X>
__device__ __forceinline__ T from_acc(X x) {
  return cvt::to<T>(x);
}

// Butterfly reductions: every lane ends with the same value, in a fixed order (deterministic).
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <typename A>
__device__ __forceinline__ A warp_max(A v) {
  for (int o = kWarp / 2; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The lanes of a warp share a row: lane l takes elements l, l + 32, ... (see sphere::project_row_rescaled).
struct WarpLanes {
  int64_t first, step;
  __device__ bool any(bool b) const { return __any_sync(0xffffffffu, b); }
  template <typename A>
  __device__ A max(A v) const {
    return warp_max(v);
  }
  template <typename A>
  __device__ A sum(A v) const {
    return warp_sum(v);
  }
};

// A strided row read and written in the accumulation type A.
template <typename T>
struct StridedRow {
  using A = typename Acc<T>::type;
  const T* x;
  int64_t xs;
  T* y;
  int64_t ys;
  int64_t n;
  __device__ A load(int64_t j) const { return to_acc<A>(x[j * xs]); }
  __device__ void store(int64_t j, A v) const { y[j * ys] = from_acc<T>(v); }
};

// Writes x / ||x|| to y given the warp-reduced sum of squares s (every lane of the warp calls it).
// Returns false, writing nothing, for a row with NaN/Inf. Zero rows become (1, ..., 1) / sqrt(n).
template <typename T>
__device__ bool project_row_warp(const T* x, int64_t xs, T* y, int64_t ys, int64_t n, typename Acc<T>::type s,
                                 int lane) {
  using A = typename Acc<T>::type;
  if (sphere::sum_is_safe(s)) {
    const A inv = A(1) / sqrt(s);
    for (int64_t j = lane; j < n; j += kWarp) y[j * ys] = from_acc<T>(to_acc<A>(x[j * xs]) * inv);
    return true;
  }
  return sphere::project_row_rescaled<A>(StridedRow<T>{x, xs, y, ys, n}, WarpLanes{lane, kWarp});
}

template <typename T>
__global__ void __launch_bounds__(kThreads) project_kernel(const T* in, T* out, int64_t rows, int64_t dim, int64_t irs,
                                                           int64_t ics, int64_t ors, int64_t ocs, int64_t* first_bad) {
  using A = typename Acc<T>::type;
  const int lane = threadIdx.x % kWarp;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp; row < rows; row += step) {
    const T* x = in + row * irs;
    A s = 0;
    for (int64_t j = lane; j < dim; j += kWarp) {
      const A v = to_acc<A>(x[j * ics]);
      s += v * v;
    }
    s = warp_sum(s);
    if (!project_row_warp<T>(x, ics, out + row * ors, ocs, dim, s, lane) && lane == 0)
      atomic_min_nonnegative(first_bad, row);
  }
}

template <typename T, bool kAdam>
__global__ void __launch_bounds__(kThreads)
    latent_kernel(T* table, T* exp_avg, T* exp_avg_sq, int64_t table_rows, int64_t dim, int64_t trs,
                  const int64_t* indices, int64_t istride, const T* grad, int64_t grs, int64_t gcs, int64_t batch,
                  sphere::AdamScalars<T> s, T neg_lr, bool project) {
  using A = typename Acc<T>::type;
  const int lane = threadIdx.x % kWarp;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp; i < batch; i += step) {
    const int64_t r = indices[i * istride];
    if (r < 0 || r >= table_rows) continue;  // checked by the caller; never write out of bounds
    T* w = table + r * trs;
    const T* g = grad + i * grs;
    A sq = 0;
    for (int64_t j = lane; j < dim; j += kWarp) {
      T nw;
      if (kAdam) {
        T m = exp_avg[r * trs + j], v = exp_avg_sq[r * trs + j];
        nw = sphere::adam_element(w[j], g[j * gcs], m, v, s);
        exp_avg[r * trs + j] = m;
        exp_avg_sq[r * trs + j] = v;
      } else {
        nw = sphere::sgd_element(w[j], g[j * gcs], neg_lr);
      }
      w[j] = nw;  // each lane re-reads only its own elements below
      sq += static_cast<A>(nw) * static_cast<A>(nw);
    }
    if (project) project_row_warp<T>(w, 1, w, 1, dim, warp_sum(sq), lane);
  }
}

int blocks_for(int64_t rows) {
  return static_cast<int>(std::min<int64_t>(kMaxBlocks, (rows + kRowsPerBlock - 1) / kRowsPerBlock));
}

template <typename T>
void launch_project(const ProjectParams& p, cudaStream_t st) {
  project_kernel<T><<<blocks_for(p.rows), kThreads, 0, st>>>(static_cast<const T*>(p.in), static_cast<T*>(p.out),
                                                             p.rows, p.dim, p.in_strides[0], p.in_strides[1],
                                                             p.out_strides[0], p.out_strides[1], p.first_bad_row);
}

template <typename T>
void launch_latent(const LatentStepParams& p, cudaStream_t st) {
  const sphere::AdamScalars<T> s{static_cast<T>(p.one_minus_beta1), static_cast<T>(p.one_minus_beta2),
                                 static_cast<T>(p.eps), static_cast<T>(p.neg_step_size)};
  const int64_t* gs = p.grad_strides;
  if (p.optimizer == LatentOptimizer::kAdam)
    latent_kernel<T, true><<<blocks_for(p.batch), kThreads, 0, st>>>(
        static_cast<T*>(p.table), static_cast<T*>(p.exp_avg), static_cast<T*>(p.exp_avg_sq), p.table_rows, p.dim,
        p.table_strides[0], p.indices, p.indices_strides[0], static_cast<const T*>(p.grad), gs[0], gs[1], p.batch, s,
        static_cast<T>(p.neg_lr), p.project);
  else
    latent_kernel<T, false><<<blocks_for(p.batch), kThreads, 0, st>>>(
        static_cast<T*>(p.table), nullptr, nullptr, p.table_rows, p.dim, p.table_strides[0], p.indices,
        p.indices_strides[0], static_cast<const T*>(p.grad), gs[0], gs[1], p.batch, s, static_cast<T>(p.neg_lr),
        p.project);
}

}  // namespace

Status project_to_sphere_cuda(const ProjectParams& p) {
  if (use_hopper_kernels(p.exec, HopperOp::kProject) && project_vec_fits(p)) return project_to_sphere_cuda_vec(p);
  if (p.rows == 0) return Status::Ok();
  if (p.dim <= 0 || p.first_bad_row == nullptr)
    return Status::Error(StatusCode::kInvalidArgument, "project_to_sphere (CUDA): dim <= 0 or no first_bad_row");
  const CudaDeviceGuard guard(p.exec.device);
  if (!guard.status().ok()) return guard.status();
  cudaStream_t st = static_cast<cudaStream_t>(p.exec.stream);
  switch (p.dtype) {
    case DType::kFloat32:
      launch_project<float>(p, st);
      break;
    case DType::kFloat64:
      launch_project<double>(p, st);
      break;
    case DType::kFloat16:
      launch_project<__half>(p, st);
      break;
    case DType::kBFloat16:
      launch_project<__nv_bfloat16>(p, st);
      break;
    default:
      return Status::Error(StatusCode::kInvalidArgument,
                           std::string("project_to_sphere (CUDA): unsupported dtype ") + dtype_name(p.dtype));
  }
  return cuda_last_status("project_to_sphere (CUDA)");
}

Status latent_step_cuda(const LatentStepParams& p) {
  if (p.batch == 0) return Status::Ok();
  if (p.dim <= 0) return Status::Error(StatusCode::kInvalidArgument, "latent step (CUDA): dim must be positive");
  if (p.table_strides[1] != 1)
    return Status::Error(StatusCode::kInvalidArgument, "latent step (CUDA): the table's column stride must be 1");
  if (p.optimizer == LatentOptimizer::kAdam && (p.exp_avg == nullptr || p.exp_avg_sq == nullptr))
    return Status::Error(StatusCode::kInvalidArgument, "latent Adam step (CUDA): exp_avg/exp_avg_sq missing");
  const CudaDeviceGuard guard(p.exec.device);
  if (!guard.status().ok()) return guard.status();
  cudaStream_t st = static_cast<cudaStream_t>(p.exec.stream);
  switch (p.dtype) {
    case DType::kFloat32:
      launch_latent<float>(p, st);
      break;
    case DType::kFloat64:
      launch_latent<double>(p, st);
      break;
    default:
      return Status::Error(StatusCode::kInvalidArgument,
                           std::string("latent step (CUDA): unsupported dtype ") + dtype_name(p.dtype));
  }
  return cuda_last_status("latent step (CUDA)");
}

}  // namespace glann

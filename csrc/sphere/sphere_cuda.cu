// CUDA kernels of the sphere family: one warp per row, grid-stride over rows, no allocation, launched
// on the caller's stream. Same semantics as the CPU kernels (csrc/sphere/sphere.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "common/cuda_check.h"
#include "sphere/sphere.h"
#include "sphere/sphere_math.h"

namespace glann {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / kWarp;
constexpr long long kMaxBlocks = 1 << 20;  // grid-stride beyond this

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

template <typename A>
struct Limits;
template <>
struct Limits<double> {
  static constexpr double kLow = sphere::kSafeLow, kHigh = sphere::kSafeHigh, kMax = 1.7976931348623157e308;
};
template <>
struct Limits<float> {
  static constexpr float kLow = 0x1p-100f, kHigh = 0x1p+100f, kMax = 3.4028234663852886e38f;
};

template <typename A>
__device__ __forceinline__ A to_acc(float x) { return static_cast<A>(x); }
template <typename A>
__device__ __forceinline__ A to_acc(double x) { return static_cast<A>(x); }
template <typename A>
__device__ __forceinline__ A to_acc(__half x) { return static_cast<A>(__half2float(x)); }
template <typename A>
__device__ __forceinline__ A to_acc(__nv_bfloat16 x) { return static_cast<A>(__bfloat162float(x)); }

template <typename T>
__device__ __forceinline__ T from_acc(double x) { return static_cast<T>(x); }
template <>
__device__ __forceinline__ __half from_acc<__half>(double x) { return __float2half_rn(static_cast<float>(x)); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(double x) {
  return __float2bfloat16_rn(static_cast<float>(x));
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

// Writes x / ||x|| to y given the warp-reduced sum of squares s (every lane of the warp calls it).
// Returns false, writing nothing, for a row with NaN/Inf. Zero rows become (1, ..., 1) / sqrt(n).
template <typename T>
__device__ bool project_row_warp(const T* x, long long xs, T* y, long long ys, long long n,
                                 typename Acc<T>::type s, int lane) {
  using A = typename Acc<T>::type;
  if (s >= Limits<A>::kLow && s <= Limits<A>::kHigh) {
    const A inv = A(1) / sqrt(s);
    for (long long j = lane; j < n; j += kWarp) y[j * ys] = from_acc<T>(to_acc<A>(x[j * xs]) * inv);
    return true;
  }
  // Rare path: zero, non-finite, or a sum of squares out of the safe range: rescale by a power of two.
  A amax = 0;
  bool bad = false;
  for (long long j = lane; j < n; j += kWarp) {
    const A a = fabs(to_acc<A>(x[j * xs]));
    bad |= !(a <= Limits<A>::kMax);
    amax = max(amax, a);
  }
  if (__any_sync(0xffffffffu, bad)) return false;
  amax = warp_max(amax);
  if (amax == A(0)) {
    const T fill = from_acc<T>(1.0 / sqrt(static_cast<double>(n)));
    for (long long j = lane; j < n; j += kWarp) y[j * ys] = fill;
    return true;
  }
  int e = 0;
  frexp(amax, &e);
  A s2 = 0;
  for (long long j = lane; j < n; j += kWarp) {
    const A v = ldexp(to_acc<A>(x[j * xs]), -e);
    s2 += v * v;
  }
  const A inv = A(1) / sqrt(warp_sum(s2));
  for (long long j = lane; j < n; j += kWarp) y[j * ys] = from_acc<T>(ldexp(to_acc<A>(x[j * xs]), -e) * inv);
  return true;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) project_kernel(const T* in, T* out, long long rows, long long dim,
                                                           long long irs, long long ics, long long ors, long long ocs,
                                                           unsigned long long* first_bad) {
  using A = typename Acc<T>::type;
  const int lane = threadIdx.x % kWarp;
  const long long step = static_cast<long long>(gridDim.x) * kRowsPerBlock;
  for (long long row = static_cast<long long>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp; row < rows;
       row += step) {
    const T* x = in + row * irs;
    A s = 0;
    for (long long j = lane; j < dim; j += kWarp) {
      const A v = to_acc<A>(x[j * ics]);
      s += v * v;
    }
    s = warp_sum(s);
    if (!project_row_warp<T>(x, ics, out + row * ors, ocs, dim, s, lane) && lane == 0)
      atomicMin(first_bad, static_cast<unsigned long long>(row));
  }
}

template <typename T, bool kAdam>
__global__ void __launch_bounds__(kThreads)
    latent_kernel(T* table, T* exp_avg, T* exp_avg_sq, long long table_rows, long long dim, long long trs,
                  const long long* indices, long long istride, const T* grad, long long grs, long long gcs,
                  long long batch, sphere::AdamScalars<T> s, T neg_lr, bool project) {
  using A = typename Acc<T>::type;
  const int lane = threadIdx.x % kWarp;
  const long long step = static_cast<long long>(gridDim.x) * kRowsPerBlock;
  for (long long i = static_cast<long long>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp; i < batch;
       i += step) {
    const long long r = indices[i * istride];
    if (r < 0 || r >= table_rows) continue;  // checked by the caller; never write out of bounds
    T* w = table + r * trs;
    const T* g = grad + i * grs;
    A sq = 0;
    for (long long j = lane; j < dim; j += kWarp) {
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

int blocks_for(long long rows) {
  return static_cast<int>(std::min<long long>(kMaxBlocks, (rows + kRowsPerBlock - 1) / kRowsPerBlock));
}

template <typename T>
void launch_project(const ProjectParams& p, cudaStream_t st) {
  project_kernel<T><<<blocks_for(p.rows), kThreads, 0, st>>>(
      static_cast<const T*>(p.in), static_cast<T*>(p.out), p.rows, p.dim, p.in_row_stride, p.in_col_stride,
      p.out_row_stride, p.out_col_stride, reinterpret_cast<unsigned long long*>(p.first_bad_row));
}

template <typename T>
void launch_latent(const LatentStepParams& p, cudaStream_t st) {
  const sphere::AdamScalars<T> s{static_cast<T>(p.one_minus_beta1), static_cast<T>(p.one_minus_beta2),
                                 static_cast<T>(p.eps), static_cast<T>(p.neg_step_size)};
  const auto* idx = reinterpret_cast<const long long*>(p.indices);
  if (p.optimizer == LatentOptimizer::kAdam)
    latent_kernel<T, true><<<blocks_for(p.batch), kThreads, 0, st>>>(
        static_cast<T*>(p.table), static_cast<T*>(p.exp_avg), static_cast<T*>(p.exp_avg_sq), p.table_rows, p.dim,
        p.table_row_stride, idx, p.index_stride, static_cast<const T*>(p.grad), p.grad_row_stride,
        p.grad_col_stride, p.batch, s, static_cast<T>(p.neg_lr), p.project);
  else
    latent_kernel<T, false><<<blocks_for(p.batch), kThreads, 0, st>>>(
        static_cast<T*>(p.table), nullptr, nullptr, p.table_rows, p.dim, p.table_row_stride, idx, p.index_stride,
        static_cast<const T*>(p.grad), p.grad_row_stride, p.grad_col_stride, p.batch, s, static_cast<T>(p.neg_lr),
        p.project);
}

}  // namespace

Status project_to_sphere_cuda(const ProjectParams& p) {
  if (p.rows == 0) return Status::Ok();
  if (p.dim <= 0 || p.first_bad_row == nullptr)
    return Status::Error(StatusCode::kInvalidArgument, "project_to_sphere (CUDA): dim <= 0 or no first_bad_row");
  cudaStream_t st = static_cast<cudaStream_t>(p.stream);
  switch (p.dtype) {
    case DType::kFloat32: launch_project<float>(p, st); break;
    case DType::kFloat64: launch_project<double>(p, st); break;
    case DType::kFloat16: launch_project<__half>(p, st); break;
    case DType::kBFloat16: launch_project<__nv_bfloat16>(p, st); break;
    default:
      return Status::Error(StatusCode::kInvalidArgument,
                           std::string("project_to_sphere (CUDA): unsupported dtype ") + dtype_name(p.dtype));
  }
  return cuda_last_status("project_to_sphere (CUDA)");
}

Status latent_step_cuda(const LatentStepParams& p) {
  if (p.batch == 0) return Status::Ok();
  if (p.dim <= 0) return Status::Error(StatusCode::kInvalidArgument, "latent step (CUDA): dim must be positive");
  if (p.optimizer == LatentOptimizer::kAdam && (p.exp_avg == nullptr || p.exp_avg_sq == nullptr))
    return Status::Error(StatusCode::kInvalidArgument, "latent Adam step (CUDA): exp_avg/exp_avg_sq missing");
  cudaStream_t st = static_cast<cudaStream_t>(p.stream);
  switch (p.dtype) {
    case DType::kFloat32: launch_latent<float>(p, st); break;
    case DType::kFloat64: launch_latent<double>(p, st); break;
    default:
      return Status::Error(StatusCode::kInvalidArgument,
                           std::string("latent step (CUDA): unsupported dtype ") + dtype_name(p.dtype));
  }
  return cuda_last_status("latent step (CUDA)");
}

}  // namespace glann

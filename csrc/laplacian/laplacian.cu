// CUDA launchers of the Laplacian-pyramid loss: level by level, per-pixel math from laplacian_math.h.
//
// Forward: diff -> (down) x (J-1) -> per level |L| with per-block partial sums -> fixed-order reduce
// per sample -> the loss (summed over samples or not). Backward: the per-sample gradient scales, then one
// kernel per level, coarsest first: acc_l = s_l + D^T acc_{l+1} - U^T s_{l-1}, level 0 written straight
// into grad. No atomics in the sums, so results are deterministic run to run;
// NaN/Inf propagate into the loss, and with check_finite a last kernel looks at the inputs of every sample
// whose loss is not finite and lowers nonfinite_samples (no host synchronisation). Everything runs on
// p.exec.stream.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/cuda_check.h"
#include "common/kernel_variant.h"
#include "laplacian/laplacian.h"
#include "laplacian/laplacian_fused.h"
#include "laplacian/laplacian_math.h"

namespace glann {
namespace {

using lap::Geometry;
constexpr int kThreads = lap::kCudaThreads;
constexpr int kMaxGridY = 65535;

template <typename T, typename In>
__device__ __forceinline__ T to_compute(In v) {
  return static_cast<T>(static_cast<float>(v));
}
template <>
__device__ __forceinline__ double to_compute<double, double>(double v) {
  return v;
}
template <typename Out, typename T>
__device__ __forceinline__ Out from_compute(T v) {
  return static_cast<Out>(v);
}
template <>
__device__ __forceinline__ __half from_compute<__half, float>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_compute<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}

struct Dims {
  int64_t batch, channels, planes;
};

template <typename In, typename T>
__global__ void diff_kernel(const In* __restrict__ x, const In* __restrict__ y, Dims d, Geometry g, int64_t xs0,
                            int64_t xs1, int64_t xs2, int64_t xs3, int64_t ys0, int64_t ys1, int64_t ys2, int64_t ys3,
                            T* __restrict__ pyr) {
  const int64_t hw = g.h[0] * g.w[0];
  const int64_t q = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= hw) return;
  const int64_t i = q / g.w[0], k = q % g.w[0];
  for (int64_t plane = blockIdx.y; plane < d.planes; plane += gridDim.y) {
    const int64_t b = plane / d.channels, c = plane % d.channels;
    const T xv = to_compute<T>(x[b * xs0 + c * xs1 + i * xs2 + k * xs3]);
    const T yv = to_compute<T>(y[b * ys0 + c * ys1 + i * ys2 + k * ys3]);
    pyr[plane * g.total + q] = xv - yv;
  }
}

template <typename T>
__global__ void down_kernel(T* __restrict__ pyr, Dims d, Geometry g, int j) {
  const int64_t hm = g.h[j + 1], wm = g.w[j + 1];
  const int64_t q = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= hm * wm) return;
  for (int64_t plane = blockIdx.y; plane < d.planes; plane += gridDim.y) {
    T* base = pyr + plane * g.total;
    base[g.off[j + 1] + q] = lap::down_pixel(base + g.off[j], g.h[j], g.w[j], q / wm, q % wm);
  }
}

// |L^j| summed per block (fixed shared-memory tree), times w_j, into partials[plane][part_off + block].
template <typename T>
__global__ void level_kernel(const T* __restrict__ pyr, int8_t* __restrict__ signs, double* __restrict__ partials,
                             Dims d, Geometry g, int j, double level_w, int64_t part_off, int64_t parts_per_plane) {
  __shared__ T red[kThreads];
  const int64_t hn = g.h[j], wn = g.w[j];
  const int64_t q = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t plane = blockIdx.y; plane < d.planes; plane += gridDim.y) {
    const T* base = pyr + plane * g.total;
    T v = T(0);
    if (q < hn * wn) {
      const T l = j + 1 < g.levels ? lap::laplacian_pixel(base + g.off[j], base + g.off[j + 1], hn, wn, q / wn, q % wn)
                                   : base[g.off[j] + q];
      signs[plane * g.total + g.off[j] + q] = lap::sign_of(l);
      v = fabs(l);
    }
    red[threadIdx.x] = v;
    __syncthreads();
    for (int s = kThreads / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
      __syncthreads();
    }
    if (threadIdx.x == 0) partials[plane * parts_per_plane + part_off + blockIdx.x] = level_w * double(red[0]);
    __syncthreads();
  }
}

// One block per sample: the partials of its C planes, each thread a fixed strided subset, then a tree.
template <typename T>
__global__ void final_kernel(const double* __restrict__ partials, Dims d, int64_t parts_per_plane,
                             T* __restrict__ per_sample) {
  __shared__ double red[kThreads];
  const int64_t n = d.channels * parts_per_plane;
  for (int64_t b = blockIdx.x; b < d.batch; b += gridDim.x) {
    const double* src = partials + b * n;
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += src[i];
    red[threadIdx.x] = s;
    __syncthreads();
    for (int k = kThreads / 2; k > 0; k >>= 1) {
      if (threadIdx.x < k) red[threadIdx.x] += red[threadIdx.x + k];
      __syncthreads();
    }
    if (threadIdx.x == 0) per_sample[b] = T(red[0]);
    __syncthreads();
  }
}

// Whether the plane holds NaN or Inf (v * 0 is 0 for finite v, NaN otherwise), by one block: every
// thread a strided share, then the block's OR in one barrier (every thread of the block calls it).
template <typename T, typename In>
__device__ bool plane_not_finite(const In* x, int64_t s2, int64_t s3, int64_t h, int64_t w) {
  T zero = T(0);
  for (int64_t q = threadIdx.x; q < h * w; q += blockDim.x)
    zero += to_compute<T>(x[(q / w) * s2 + (q % w) * s3]) * T(0);
  return __syncthreads_or(zero != T(0)) != 0;
}

// One block per sample: if its loss is not finite, lowers bad[0] (NaN/Inf in x) and bad[1] (in y) to it.
template <typename In, typename T>
__global__ void nonfinite_kernel(const T* __restrict__ per_sample, const In* __restrict__ x, const In* __restrict__ y,
                                 Dims d, int64_t h, int64_t w, int64_t xs0, int64_t xs1, int64_t xs2, int64_t xs3,
                                 int64_t ys0, int64_t ys1, int64_t ys2, int64_t ys3, int64_t* __restrict__ bad) {
  for (int64_t b = blockIdx.x; b < d.batch; b += gridDim.x) {
    const T loss = per_sample[b];
    if (loss - loss == T(0)) continue;  // finite: the inputs are finite (uniform across the block)
    bool bad_x = false, bad_y = false;
    for (int64_t c = 0; c < d.channels; ++c) {
      bad_x |= plane_not_finite<T>(x + b * xs0 + c * xs1, xs2, xs3, h, w);
      bad_y |= plane_not_finite<T>(y + b * ys0 + c * ys1, ys2, ys3, h, w);
    }
    if (threadIdx.x == 0 && bad_x) atomic_min_nonnegative(bad, b);
    if (threadIdx.x == 0 && bad_y) atomic_min_nonnegative(bad + 1, b);
  }
}

template <typename T, typename Out>
__global__ void backward_kernel(const int8_t* __restrict__ signs, const T* __restrict__ scale, T* __restrict__ acc,
                                Out* __restrict__ grad, Dims d, Geometry g, int l, T level_w, T level_w_prev) {
  const int64_t h = g.h[l], w = g.w[l];
  const int64_t q = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= h * w) return;
  for (int64_t plane = blockIdx.y; plane < d.planes; plane += gridDim.y) {
    T* base = acc + plane * g.total;
    const T* next = l + 1 < g.levels ? base + g.off[l + 1] : nullptr;
    const T s = scale[plane / d.channels];
    const T v = lap::backward_pixel(g, l, signs + plane * g.total, next, s * level_w, s * level_w_prev, q / w, q % w);
    if (l == 0)
      grad[plane * h * w + q] = from_compute<Out>(v);
    else
      base[g.off[l] + q] = v;
  }
}

// The op's loss from the per-sample sums (LaplacianForwardParams::loss). Summed: one block, each thread a
// fixed strided subset in double, then a tree (the same bits every run); per sample: one value a thread.
template <typename T>
__global__ void loss_kernel(const T* per_sample, int64_t batch, bool sum_samples, double divisor,
                            T* loss) {  // loss may be per_sample (not restrict)
  if (!sum_samples) {
    for (int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; b < batch; b += int64_t(gridDim.x) * blockDim.x)
      loss[b] = per_sample[b] / T(divisor);
    return;
  }
  __shared__ double red[kThreads];
  double s = 0.0;
  for (int64_t b = threadIdx.x; b < batch; b += blockDim.x) s += double(per_sample[b]);
  red[threadIdx.x] = s;
  __syncthreads();
  for (int k = kThreads / 2; k > 0; k >>= 1) {
    if (threadIdx.x < k) red[threadIdx.x] += red[threadIdx.x + k];
    __syncthreads();
  }
  if (threadIdx.x == 0) loss[0] = T(red[0] / divisor);
}

// d loss / d per_sample[b] of every sample (LaplacianBackwardParams::grad_loss), for the backward kernels.
template <typename T>
__global__ void grad_scale_kernel(const T* __restrict__ grad_loss, int64_t stride, double divisor, int64_t batch,
                                  T* __restrict__ scale) {
  for (int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; b < batch; b += int64_t(gridDim.x) * blockDim.x)
    scale[b] = lap::sample_grad_scale(grad_loss, stride, divisor, b);
}

unsigned blocks_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < kMaxGridY ? blocks : kMaxGridY);
}

dim3 grid_for(int64_t pixels, int64_t planes) {
  return dim3(static_cast<unsigned>((pixels + kThreads - 1) / kThreads),
              static_cast<unsigned>(planes < kMaxGridY ? planes : kMaxGridY));
}

template <typename In, typename T>
Status forward_impl(const LaplacianForwardParams& p) {
  if (p.check_finite && p.nonfinite_samples == nullptr)
    return Status::Error(StatusCode::kInvalidArgument, "laplacian_forward_cuda: check_finite needs nonfinite_samples");
  const Geometry g = lap::make_geometry(p.height, p.width, p.levels);
  const Dims d{p.batch, p.channels, p.batch * p.channels};
  const int64_t parts = lap::cuda_partials_per_plane(g);
  const int64_t pyr_bytes = lap::align64(d.planes * g.total * int64_t(sizeof(T)));
  if (p.workspace_bytes < pyr_bytes + d.planes * parts * int64_t(sizeof(double)))
    return Status::Error(StatusCode::kInvalidArgument, "laplacian_forward_cuda: workspace too small");
  cudaStream_t stream = static_cast<cudaStream_t>(p.exec.stream);
  char* ws = static_cast<char*>(p.workspace);
  T* pyr = reinterpret_cast<T*>(ws);
  double* partials = reinterpret_cast<double*>(ws + pyr_bytes);
  const int64_t* xs = p.x_strides;
  const int64_t* ys = p.y_strides;
  diff_kernel<In, T><<<grid_for(p.height * p.width, d.planes), kThreads, 0, stream>>>(
      static_cast<const In*>(p.x), static_cast<const In*>(p.y), d, g, xs[0], xs[1], xs[2], xs[3], ys[0], ys[1], ys[2],
      ys[3], pyr);
  for (int j = 0; j + 1 < g.levels; ++j)
    down_kernel<T><<<grid_for(g.h[j + 1] * g.w[j + 1], d.planes), kThreads, 0, stream>>>(pyr, d, g, j);
  int64_t part_off = 0;
  for (int j = 0; j < g.levels; ++j) {
    const int64_t pix = g.h[j] * g.w[j];
    level_kernel<T><<<grid_for(pix, d.planes), kThreads, 0, stream>>>(pyr, p.signs, partials, d, g, j,
                                                                      p.level_weights[j], part_off, parts);
    part_off += (pix + kThreads - 1) / kThreads;
  }
  const unsigned blocks = static_cast<unsigned>(p.batch < kMaxGridY ? p.batch : kMaxGridY);
  final_kernel<T><<<blocks, kThreads, 0, stream>>>(partials, d, parts, static_cast<T*>(p.per_sample));
  if (p.check_finite)
    nonfinite_kernel<In, T><<<blocks, kThreads, 0, stream>>>(
        static_cast<const T*>(p.per_sample), static_cast<const In*>(p.x), static_cast<const In*>(p.y), d, p.height,
        p.width, xs[0], xs[1], xs[2], xs[3], ys[0], ys[1], ys[2], ys[3], p.nonfinite_samples);
  return cuda_last_status("laplacian_forward_cuda");
}

// The fused (Hopper) forward writes per_sample and signs only; the non-finite flags come from the same
// kernel as the legacy path's, so both report the same rows.
template <typename In, typename T>
Status fused_forward_impl(const LaplacianForwardParams& p) {
  if (p.check_finite && p.nonfinite_samples == nullptr)
    return Status::Error(StatusCode::kInvalidArgument, "laplacian_forward_cuda: check_finite needs nonfinite_samples");
  const Status fused = laplacian_forward_fused(p);
  if (!fused.ok() || !p.check_finite) return fused;
  const Dims d{p.batch, p.channels, p.batch * p.channels};
  const int64_t* xs = p.x_strides;
  const int64_t* ys = p.y_strides;
  const unsigned blocks = static_cast<unsigned>(p.batch < kMaxGridY ? p.batch : kMaxGridY);
  nonfinite_kernel<In, T><<<blocks, kThreads, 0, static_cast<cudaStream_t>(p.exec.stream)>>>(
      static_cast<const T*>(p.per_sample), static_cast<const In*>(p.x), static_cast<const In*>(p.y), d, p.height,
      p.width, xs[0], xs[1], xs[2], xs[3], ys[0], ys[1], ys[2], ys[3], p.nonfinite_samples);
  return cuda_last_status("laplacian_forward_cuda");
}

// The fused (Hopper) forward when it was chosen and fits, else the legacy one.
template <typename In, typename T>
Status forward_for(const LaplacianForwardParams& p, bool fused) {
  const Status s = fused ? fused_forward_impl<In, T>(p) : forward_impl<In, T>(p);
  if (!s.ok() || p.loss == nullptr) return s;
  loss_kernel<T><<<p.sum_samples ? 1u : blocks_for(p.batch), kThreads, 0, static_cast<cudaStream_t>(p.exec.stream)>>>(
      static_cast<const T*>(p.per_sample), p.batch, p.sum_samples, p.loss_divisor, static_cast<T*>(p.loss));
  return cuda_last_status("laplacian_forward_cuda (loss)");
}

template <typename Out, typename T>
Status backward_impl(const LaplacianBackwardParams& p, const T* scale) {
  const Geometry g = lap::make_geometry(p.height, p.width, p.levels);
  const Dims d{p.batch, p.channels, p.batch * p.channels};
  if (p.workspace_bytes < d.planes * g.total * int64_t(sizeof(T)))
    return Status::Error(StatusCode::kInvalidArgument, "laplacian_backward_cuda: workspace too small");
  cudaStream_t stream = static_cast<cudaStream_t>(p.exec.stream);
  for (int l = g.levels - 1; l >= 0; --l)
    backward_kernel<T, Out><<<grid_for(g.h[l] * g.w[l], d.planes), kThreads, 0, stream>>>(
        p.signs, scale, static_cast<T*>(p.workspace), static_cast<Out*>(p.grad), d, g, l, T(p.level_weights[l]),
        l > 0 ? T(p.level_weights[l - 1]) : T(0));
  return cuda_last_status("laplacian_backward_cuda");
}

// The per-sample gradient scales into the front of the workspace (laplacian_workspace_bytes counts them),
// then the fused (Hopper) backward when it was chosen and fits the rest, else the legacy one.
template <typename Out, typename T>
Status backward_for(const LaplacianBackwardParams& p) {
  const int64_t scale_bytes = lap::cuda_backward_scale_bytes(p.batch);
  if (p.workspace_bytes < scale_bytes)
    return Status::Error(StatusCode::kInvalidArgument, "laplacian_backward_cuda: workspace too small");
  T* scale = static_cast<T*>(p.workspace);
  LaplacianBackwardParams q = p;
  q.workspace = static_cast<char*>(p.workspace) + scale_bytes;
  q.workspace_bytes = p.workspace_bytes - scale_bytes;
  grad_scale_kernel<T><<<blocks_for(p.batch), kThreads, 0, static_cast<cudaStream_t>(p.exec.stream)>>>(
      static_cast<const T*>(p.grad_loss), p.grad_loss_stride, p.loss_divisor, p.batch, scale);
  const Status launched = cuda_last_status("laplacian_backward_cuda (scale)");
  if (!launched.ok()) return launched;
  if (use_hopper_kernels(p.exec, HopperOp::kLaplacian) && laplacian_fused_fits(q))
    return laplacian_backward_fused(q, scale);
  return backward_impl<Out, T>(q, scale);
}

}  // namespace

Status laplacian_forward_cuda(const LaplacianForwardParams& p) {
  const CudaDeviceGuard guard(p.exec.device);
  if (!guard.status().ok()) return guard.status();
  const bool fused = use_hopper_kernels(p.exec, HopperOp::kLaplacian) && laplacian_fused_fits(p);
  switch (p.dtype) {
    case DType::kFloat32:
      return forward_for<float, float>(p, fused);
    case DType::kFloat64:
      return forward_for<double, double>(p, fused);
    case DType::kFloat16:
      return forward_for<__half, float>(p, fused);
    case DType::kBFloat16:
      return forward_for<__nv_bfloat16, float>(p, fused);
    default:
      return Status::Error(StatusCode::kInvalidArgument, "laplacian_forward_cuda: unsupported dtype");
  }
}

Status laplacian_backward_cuda(const LaplacianBackwardParams& p) {
  const CudaDeviceGuard guard(p.exec.device);
  if (!guard.status().ok()) return guard.status();
  switch (p.dtype) {
    case DType::kFloat32:
      return backward_for<float, float>(p);
    case DType::kFloat64:
      return backward_for<double, double>(p);
    case DType::kFloat16:
      return backward_for<__half, float>(p);
    case DType::kBFloat16:
      return backward_for<__nv_bfloat16, float>(p);
    default:
      return Status::Error(StatusCode::kInvalidArgument, "laplacian_backward_cuda: unsupported dtype");
  }
}

}  // namespace glann

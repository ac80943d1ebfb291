// The fused (Hopper) Laplacian-pyramid kernels: thin __global__ wrappers around the block bodies of
// laplacian_fused_math.h (one block per plane, or per 64 x 64 level-0 tile with halos), their launchers
// and the fixed-order per-sample sum. No atomics: the loss is the same bits run to run. Everything runs on
// p.exec.stream and allocates nothing.
//
//   forward,  j0 = 0: plane_forward (signs, one double per plane) -> sample_sum          2 launches
//   forward,  j0 = 1: tile_forward (level 0, G^1) -> plane_forward (levels >= 1) -> sum  3 launches
//   backward, j0 = 0: plane_backward (grad)                                              1 launch
//   backward, j0 = 1: tile_up_adjoint (U^T s_0) -> plane_backward (acc_1) -> tile_down_adjoint (grad)
#include <cuda_runtime.h>

#include "common/cuda_check.h"
#include "common/cuda_convert.h"
#include "common/cuda_smem.h"
#include "laplacian/laplacian_fused.h"
#include "laplacian/laplacian_fused_math.h"

namespace glann {
namespace {

using lapf::FusedPlan;
constexpr int kMaxGrid = 1 << 30;  // blocks past this loop (block-stride)

struct BlockSync {
  __device__ void operator()() const { __syncthreads(); }
};

struct Strides4 {
  int64_t s[4];
};

// x - y of one plane through the element strides, in the compute type.
template <typename In, typename T>
struct DiffSource {
  const In* x;
  const In* y;
  int64_t xr, xc, yr, yc;
  __device__ T operator()(int r, int c) const {
    return cvt::to<T>(x[r * xr + c * xc]) - cvt::to<T>(y[r * yr + c * yc]);
  }
};

template <typename In, typename T>
__device__ DiffSource<In, T> diff_source(const In* x, const In* y, const Strides4& xs, const Strides4& ys,
                                         int64_t plane, int64_t channels) {
  const int64_t b = plane / channels, c = plane % channels;
  return DiffSource<In, T>{
      x + b * xs.s[0] + c * xs.s[1], y + b * ys.s[0] + c * ys.s[1], xs.s[2], xs.s[3], ys.s[2], ys.s[3]};
}

// A packed row-major plane (the G^1, U^T s_0 and acc_1 levels of the j0 = 1 path).
template <typename T>
struct Packed {
  T* p;
  int w;
  __device__ T operator()(int r, int c) const { return p[int64_t(r) * w + c]; }
};

// Plane forward from level kJ0: levels kJ0..J-1 in shared memory. Its partial is the plane's last slot.
// Launch bounds: two plane blocks of 512 threads (or four tile blocks) per SM, so at most 64 registers.
template <typename In, typename T, int kJ0>
__global__ void __launch_bounds__(lapf::kMaxPlaneThreads, 2)
    plane_forward_kernel(const In* __restrict__ x, const In* __restrict__ y, Strides4 xs, Strides4 ys, int64_t channels,
                         int h, int w, int levels, int64_t total, const T* __restrict__ g1, int8_t* __restrict__ signs,
                         double* __restrict__ partials, int64_t slots) {
  extern __shared__ __align__(16) char smem[];
  const int64_t plane = blockIdx.x;
  const lapf::Level l = lapf::level_at(h, w, kJ0);
  double s;
  if constexpr (kJ0 == 0) {
    s = lapf::plane_forward<T>(l.h, l.w, 0, levels, 0, diff_source<In, T>(x, y, xs, ys, plane, channels),
                               signs + plane * total, smem, threadIdx.x, blockDim.x, BlockSync{});
  } else {
    const Packed<const T> src{g1 + plane * l.h * l.w, l.w};
    s = lapf::plane_forward<T>(l.h, l.w, kJ0, levels - kJ0, l.off, src, signs + plane * total, smem, threadIdx.x,
                               blockDim.x, BlockSync{});
  }
  if (threadIdx.x == 0) partials[plane * slots + slots - 1] = s;
}

// Level-0 tiles (j0 = 1): block b is tile b % tiles of plane b / tiles; its partial is slot b % tiles.
template <typename In, typename T>
__global__ void __launch_bounds__(lapf::kTileThreads, 4)
    tile_forward_kernel(const In* __restrict__ x, const In* __restrict__ y, Strides4 xs, Strides4 ys, int64_t channels,
                        int h, int w, int tiles_w, int64_t tiles, int64_t blocks, int64_t total, T* __restrict__ g1,
                        int8_t* __restrict__ signs, double* __restrict__ partials, int64_t slots) {
  extern __shared__ __align__(16) char smem[];
  const lapf::Level c = lapf::level_at(h, w, 1);
  for (int64_t b = blockIdx.x; b < blocks; b += gridDim.x) {
    const lapf::TileAt t = lapf::tile_at(b, tiles, tiles_w);
    const double s = lapf::tile_forward<T>(h, w, t.i0, t.k0, diff_source<In, T>(x, y, xs, ys, t.plane, channels),
                                           signs + t.plane * total, g1 + t.plane * c.h * c.w, smem, threadIdx.x,
                                           blockDim.x, BlockSync{});
    if (threadIdx.x == 0) partials[t.plane * slots + t.tile] = s;
    __syncthreads();  // the next tile reuses the shared memory
  }
}

// per_sample[b] = the partials of its planes, channel by channel and slot by slot (a fixed order).
template <typename T>
__global__ void sample_sum_kernel(const double* __restrict__ partials, int64_t batch, int64_t per_sample_parts,
                                  T* __restrict__ per_sample) {
  const int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (b >= batch) return;
  const double* src = partials + b * per_sample_parts;
  double s = 0.0;
  for (int64_t i = 0; i < per_sample_parts; ++i) s += src[i];
  per_sample[b] = T(s);
}

template <typename T>
__global__ void __launch_bounds__(lapf::kTileThreads, 4)
    tile_up_adjoint_kernel(const int8_t* __restrict__ signs, int h, int w, int tiles_w, int64_t tiles, int64_t blocks,
                           int64_t total, T* __restrict__ z) {
  extern __shared__ __align__(16) char smem[];
  const lapf::Level c = lapf::level_at(h, w, 1);
  for (int64_t b = blockIdx.x; b < blocks; b += gridDim.x) {
    const lapf::TileAt t = lapf::tile_at(b, tiles, tiles_w);
    lapf::tile_up_adjoint<T>(h, w, t.i0, t.k0, signs + t.plane * total, z + t.plane * c.h * c.w, smem, threadIdx.x,
                             blockDim.x, BlockSync{});
    __syncthreads();
  }
}

// Writes a value of the compute type T to a contiguous plane of Out.
template <typename Out, typename T>
struct PlaneOut {
  Out* p;
  int w;
  __device__ void operator()(int r, int c, T v) const { p[int64_t(r) * w + c] = cvt::to<Out>(v); }
};

struct NoZ {
  template <typename... A>
  __device__ float operator()(A...) const {
    return 0.0f;
  }
};

// Plane backward from level kJ0: grad (kJ0 = 0) or acc_1 (kJ0 = 1, with z = U^T s_0).
template <typename Out, typename T, int kJ0>
__global__ void __launch_bounds__(lapf::kMaxPlaneThreads, 2)
    plane_backward_kernel(const int8_t* __restrict__ signs, const T* __restrict__ scale, int64_t channels, int h, int w,
                          int levels, int64_t total, const T* __restrict__ z, T* __restrict__ acc1,
                          Out* __restrict__ grad) {
  extern __shared__ __align__(16) char smem[];
  const int64_t plane = blockIdx.x;
  const lapf::Level l = lapf::level_at(h, w, kJ0);
  const T sc = scale[plane / channels];
  const int64_t n = int64_t(l.h) * l.w;
  if constexpr (kJ0 == 0) {
    lapf::plane_backward<T>(l.h, l.w, 0, levels, 0, signs + plane * total, sc, NoZ{},
                            PlaneOut<Out, T>{grad + plane * n, l.w}, smem, threadIdx.x, blockDim.x, BlockSync{});
  } else {
    lapf::plane_backward<T>(l.h, l.w, kJ0, levels - kJ0, l.off, signs + plane * total, sc,
                            Packed<const T>{z + plane * n, l.w}, PlaneOut<T, T>{acc1 + plane * n, l.w}, smem,
                            threadIdx.x, blockDim.x, BlockSync{});
  }
}

template <typename Out, typename T>
__global__ void __launch_bounds__(lapf::kTileThreads, 4)
    tile_down_adjoint_kernel(const int8_t* __restrict__ signs, const T* __restrict__ scale, int64_t channels, int h,
                             int w, int tiles_w, int64_t tiles, int64_t blocks, int64_t total,
                             const T* __restrict__ acc1, Out* __restrict__ grad) {
  extern __shared__ __align__(16) char smem[];
  const lapf::Level c = lapf::level_at(h, w, 1);
  for (int64_t b = blockIdx.x; b < blocks; b += gridDim.x) {
    const lapf::TileAt t = lapf::tile_at(b, tiles, tiles_w);
    lapf::tile_down_adjoint<T>(h, w, t.i0, t.k0, signs + t.plane * total, acc1 + t.plane * c.h * c.w,
                               scale[t.plane / channels], PlaneOut<Out, T>{grad + t.plane * int64_t(h) * w, w}, smem,
                               threadIdx.x, blockDim.x, BlockSync{});
    __syncthreads();
  }
}

// ---- launchers -------------------------------------------------------------------------------------

int64_t smem_limit(int device) {
  int bytes = 0;
  if (cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return bytes;
}

int elem_of(DType t) { return t == DType::kFloat64 ? 8 : 4; }  // f16/bf16 are computed in float

bool dtype_ok(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat64 || t == DType::kFloat16 || t == DType::kBFloat16;
}

// The plan, or ok = false when the tile kernels' shared memory does not fit either (j0 = 1 only).
FusedPlan plan_for(int64_t planes, int64_t h, int64_t w, int levels, DType dtype, int device) {
  const int64_t limit = smem_limit(device);
  FusedPlan p = lapf::make_fused_plan(planes, h, w, levels, elem_of(dtype), limit);
  if (p.ok && p.j0 == 1) {
    const int e = elem_of(dtype);
    const int64_t tile_smem = lapf::tile_forward_bytes(e);
    if (tile_smem > limit || lapf::tile_up_adj_bytes(e) > limit || lapf::tile_down_adj_bytes(e) > limit) p.ok = false;
  }
  return p;
}

// Launches `kernel` with `smem` bytes of dynamic shared memory (raising the kernel's limit past the
// default 48 KB the first time it is needed).
template <typename Kernel, typename... Args>
void launch(Kernel kernel, int64_t blocks, int threads, int64_t smem, cudaStream_t stream, Args... args) {
  raise_smem_limit(reinterpret_cast<const void*>(kernel), int(smem));
  const unsigned grid = static_cast<unsigned>(blocks < kMaxGrid ? blocks : kMaxGrid);
  kernel<<<grid, threads, smem, stream>>>(args...);
}

template <typename In, typename T>
Status forward_impl(const LaplacianForwardParams& p, const FusedPlan& plan) {
  const int64_t planes = p.batch * p.channels;
  const int64_t total = lap::make_geometry(p.height, p.width, p.levels).total;
  cudaStream_t stream = static_cast<cudaStream_t>(p.exec.stream);
  char* ws = static_cast<char*>(p.workspace);
  T* g1 = reinterpret_cast<T*>(ws);
  double* partials = reinterpret_cast<double*>(ws + plan.g1_bytes);
  const In* x = static_cast<const In*>(p.x);
  const In* y = static_cast<const In*>(p.y);
  Strides4 xs{{p.x_strides[0], p.x_strides[1], p.x_strides[2], p.x_strides[3]}};
  Strides4 ys{{p.y_strides[0], p.y_strides[1], p.y_strides[2], p.y_strides[3]}};
  const int h = int(p.height), w = int(p.width);
  if (plan.j0 == 0) {
    launch(plane_forward_kernel<In, T, 0>, planes, plan.plane_threads, plan.forward_smem, stream, x, y, xs, ys,
           p.channels, h, w, p.levels, total, static_cast<const T*>(nullptr), p.signs, partials, plan.slots);
  } else {
    const int64_t tiles = plan.slots - 1;
    launch(tile_forward_kernel<In, T>, planes * tiles, lapf::kTileThreads, lapf::tile_forward_bytes(sizeof(T)), stream,
           x, y, xs, ys, p.channels, h, w, plan.tiles_w, tiles, planes * tiles, total, g1, p.signs, partials,
           plan.slots);
    launch(plane_forward_kernel<In, T, 1>, planes, plan.plane_threads, plan.forward_smem, stream, x, y, xs, ys,
           p.channels, h, w, p.levels, total, static_cast<const T*>(g1), p.signs, partials, plan.slots);
  }
  launch(sample_sum_kernel<T>, ceil_div_int(p.batch, 256), 256, 0, stream, static_cast<const double*>(partials),
         p.batch, p.channels * plan.slots, static_cast<T*>(p.per_sample));
  return cuda_last_status("laplacian_forward_cuda (fused)");
}

template <typename Out, typename T>
Status backward_impl(const LaplacianBackwardParams& p, const FusedPlan& plan, const T* scale) {
  const int64_t planes = p.batch * p.channels;
  const int64_t total = lap::make_geometry(p.height, p.width, p.levels).total;
  cudaStream_t stream = static_cast<cudaStream_t>(p.exec.stream);
  Out* grad = static_cast<Out*>(p.grad);
  const int h = int(p.height), w = int(p.width);
  if (plan.j0 == 0) {
    launch(plane_backward_kernel<Out, T, 0>, planes, plan.plane_threads, plan.backward_smem, stream, p.signs, scale,
           p.channels, h, w, p.levels, total, static_cast<const T*>(nullptr), static_cast<T*>(nullptr), grad);
  } else {
    char* ws = static_cast<char*>(p.workspace);
    T* z = reinterpret_cast<T*>(ws);
    T* acc1 = reinterpret_cast<T*>(ws + plan.g1_bytes);
    const int64_t tiles = plan.slots - 1;
    launch(tile_up_adjoint_kernel<T>, planes * tiles, lapf::kTileThreads, lapf::tile_up_adj_bytes(sizeof(T)), stream,
           p.signs, h, w, plan.tiles_w, tiles, planes * tiles, total, z);
    launch(plane_backward_kernel<Out, T, 1>, planes, plan.plane_threads, plan.backward_smem, stream, p.signs, scale,
           p.channels, h, w, p.levels, total, static_cast<const T*>(z), acc1, grad);
    launch(tile_down_adjoint_kernel<Out, T>, planes * tiles, lapf::kTileThreads, lapf::tile_down_adj_bytes(sizeof(T)),
           stream, p.signs, scale, p.channels, h, w, plan.tiles_w, tiles, planes * tiles, total,
           static_cast<const T*>(acc1), grad);
  }
  return cuda_last_status("laplacian_backward_cuda (fused)");
}

// The fused kernels bake in the GLO paper's level weights 4^j; other weights take the legacy kernels.
bool paper_weights(const double* level_weights, int levels) {
  for (int j = 0; j < levels; ++j)
    if (level_weights[j] != static_cast<double>(int64_t(1) << (2 * j))) return false;
  return true;
}

}  // namespace

bool laplacian_fused_fits(const LaplacianForwardParams& p) {
  if (!dtype_ok(p.dtype) || p.pixel_path || !paper_weights(p.level_weights, p.levels)) return false;
  const FusedPlan plan = plan_for(p.batch * p.channels, p.height, p.width, p.levels, p.dtype, p.exec.device);
  return plan.ok && p.workspace_bytes >= plan.forward_bytes;
}

bool laplacian_fused_fits(const LaplacianBackwardParams& p) {
  if (!dtype_ok(p.dtype) || p.pixel_path || !paper_weights(p.level_weights, p.levels)) return false;
  const FusedPlan plan = plan_for(p.batch * p.channels, p.height, p.width, p.levels, p.dtype, p.exec.device);
  return plan.ok && p.workspace_bytes >= plan.backward_bytes;
}

Status laplacian_forward_fused(const LaplacianForwardParams& p) {
  const CudaDeviceGuard guard(p.exec.device);
  if (!guard.status().ok()) return guard.status();
  const FusedPlan plan = plan_for(p.batch * p.channels, p.height, p.width, p.levels, p.dtype, p.exec.device);
  if (!plan.ok || p.workspace_bytes < plan.forward_bytes)
    return Status::Error(StatusCode::kInvalidArgument, "laplacian_forward_cuda (fused): shapes or workspace unfit");
  switch (p.dtype) {
    case DType::kFloat32:
      return forward_impl<float, float>(p, plan);
    case DType::kFloat64:
      return forward_impl<double, double>(p, plan);
    case DType::kFloat16:
      return forward_impl<__half, float>(p, plan);
    case DType::kBFloat16:
      return forward_impl<__nv_bfloat16, float>(p, plan);
    default:
      return Status::Error(StatusCode::kInvalidArgument, "laplacian_forward_cuda (fused): unsupported dtype");
  }
}

Status laplacian_backward_fused(const LaplacianBackwardParams& p, const void* scale) {
  const CudaDeviceGuard guard(p.exec.device);
  if (!guard.status().ok()) return guard.status();
  const FusedPlan plan = plan_for(p.batch * p.channels, p.height, p.width, p.levels, p.dtype, p.exec.device);
  if (!plan.ok || p.workspace_bytes < plan.backward_bytes)
    return Status::Error(StatusCode::kInvalidArgument, "laplacian_backward_cuda (fused): shapes or workspace unfit");
  switch (p.dtype) {
    case DType::kFloat32:
      return backward_impl<float, float>(p, plan, static_cast<const float*>(scale));
    case DType::kFloat64:
      return backward_impl<double, double>(p, plan, static_cast<const double*>(scale));
    case DType::kFloat16:
      return backward_impl<__half, float>(p, plan, static_cast<const float*>(scale));
    case DType::kBFloat16:
      return backward_impl<__nv_bfloat16, float>(p, plan, static_cast<const float*>(scale));
    default:
      return Status::Error(StatusCode::kInvalidArgument, "laplacian_backward_cuda (fused): unsupported dtype");
  }
}

}  // namespace glann

// The vectorised projection kernel: sphere_vec_math.h's project_row_vec per segment of lanes, a
// grid-stride loop over groups of rows, the lowest non-finite row reported through atomicMin (as the
// legacy kernel). Launched on the caller's stream; nothing is allocated.
#include <cuda_runtime.h>

#include <algorithm>

#include "common/cuda_check.h"
#include "common/cuda_convert.h"
#include "sphere/sphere_vec.h"
#include "sphere/sphere_vec_math.h"

namespace glann {
namespace {

using sphv::VecMap;
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride beyond this

template <typename T>
struct AccOf {
  using type = double;  // float32 and float64 rows: double, as the CPU kernels
};
template <>
struct AccOf<__half> {
  using type = float;
};
template <>
struct AccOf<__nv_bfloat16> {
  using type = float;
};

struct DeviceCvt {
  template <typename To, typename From>
  __device__ static To to(From v) {
    return cvt::to<To>(v);
  }
};

// The lanes of one row: shuffles and votes over the segment's lanes only, so segments of a warp may take
// different branches.
struct Segment {
  int lane, width;
  unsigned mask;
  __device__ bool any(bool b) const { return __any_sync(mask, b); }
  template <typename A>
  __device__ A shfl_xor(A v, int offset) const {
    return __shfl_xor_sync(mask, v, offset);
  }
};

template <typename T, int kKeep>
__global__ void __launch_bounds__(sphv::kThreads)
    project_vec_kernel(const T* in, T* out, int64_t rows, int64_t dim, int64_t in_row, int64_t out_row, VecMap m,
                       int64_t* first_bad) {
  using A = typename AccOf<T>::type;
  const int lane = threadIdx.x % sphv::kWarp;
  const int seg = lane / m.lanes;
  const unsigned mask = m.lanes == sphv::kWarp ? 0xffffffffu : ((1u << m.lanes) - 1u) << (seg * m.lanes);
  const Segment s{lane % m.lanes, m.lanes, mask};
  const int64_t warps = int64_t(gridDim.x) * (sphv::kThreads / sphv::kWarp);
  for (int64_t g = blockIdx.x * int64_t(sphv::kThreads / sphv::kWarp) + threadIdx.x / sphv::kWarp; g * m.rows < rows;
       g += warps) {
    const int64_t row = g * m.rows + seg;
    if (row >= rows) continue;  // the whole segment
    if (!sphv::project_row_vec<T, A, DeviceCvt, kKeep>(in + row * in_row, out + row * out_row, dim, m, s) &&
        s.lane == 0)
      atomic_min_nonnegative(first_bad, row);
  }
}

int elem_of(DType t) {
  switch (t) {
    case DType::kFloat32:
      return 4;
    case DType::kFloat64:
      return 8;
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
    default:
      return 0;
  }
}

// One kernel instance per register budget (1, 2, 4 or 8 vectors per lane), so D = 64 keeps few registers.
template <typename T>
void launch(const ProjectParams& p, cudaStream_t stream) {
  const VecMap m = sphv::make_vec_map(p.dim, int(sizeof(T)));
  const int64_t warps = (p.rows + m.rows - 1) / m.rows;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(kMaxBlocks, (warps + 7) / 8));
  auto kernel = m.keep == 1 ? project_vec_kernel<T, 1>
                            : (m.keep == 2 ? project_vec_kernel<T, 2>
                                           : (m.keep == 4 ? project_vec_kernel<T, 4> : project_vec_kernel<T, 8>));
  kernel<<<blocks, sphv::kThreads, 0, stream>>>(static_cast<const T*>(p.in), static_cast<T*>(p.out), p.rows, p.dim,
                                                p.in_strides[0], p.out_strides[0], m, p.first_bad_row);
}

}  // namespace

bool project_vec_fits(const ProjectParams& p) {
  const int elem = elem_of(p.dtype);
  return elem > 0 && p.dim > 0 &&
         sphv::vec_applies(reinterpret_cast<uintptr_t>(p.in), p.in_strides[0], p.in_strides[1],
                           reinterpret_cast<uintptr_t>(p.out), p.out_strides[0], p.out_strides[1], p.rows, p.dim, elem);
}

Status project_to_sphere_cuda_vec(const ProjectParams& p) {
  if (p.rows == 0) return Status::Ok();
  if (p.dim <= 0 || p.first_bad_row == nullptr)
    return Status::Error(StatusCode::kInvalidArgument, "project_to_sphere (CUDA): dim <= 0 or no first_bad_row");
  const CudaDeviceGuard guard(p.exec.device);
  if (!guard.status().ok()) return guard.status();
  cudaStream_t stream = static_cast<cudaStream_t>(p.exec.stream);
  switch (p.dtype) {
    case DType::kFloat32:
      launch<float>(p, stream);
      break;
    case DType::kFloat64:
      launch<double>(p, stream);
      break;
    case DType::kFloat16:
      launch<__half>(p, stream);
      break;
    case DType::kBFloat16:
      launch<__nv_bfloat16>(p, stream);
      break;
    default:
      return Status::Error(StatusCode::kInvalidArgument, "project_to_sphere (CUDA, vectorised): unsupported dtype");
  }
  return cuda_last_status("project_to_sphere (CUDA, vectorised)");
}

}  // namespace glann

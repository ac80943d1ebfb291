// CPU launchers of the Laplacian-pyramid loss: ISA dispatch and workspace sizes.
#define GLANN_LAP_ISA_NS baseline
#include "laplacian/laplacian_cpu_impl.h"

#include "common/cpu_features.h"

namespace glann {

// Defined in laplacian_cpu_avx2.cpp / laplacian_cpu_avx512.cpp (x86 builds only).
Status laplacian_forward_cpu_avx2(const LaplacianForwardParams& p);
Status laplacian_backward_cpu_avx2(const LaplacianBackwardParams& p);
Status laplacian_forward_cpu_avx512(const LaplacianForwardParams& p);
Status laplacian_backward_cpu_avx512(const LaplacianBackwardParams& p);

namespace {
int64_t align64(int64_t n) { return (n + 63) / 64 * 64; }
}  // namespace

int64_t laplacian_plane_elems(int64_t height, int64_t width, int levels) {
  return lap::make_geometry(height, width, levels).total;
}

int64_t laplacian_workspace_bytes(int64_t batch, int64_t channels, int64_t height, int64_t width, int levels,
                                  DType dtype, bool cuda, bool backward, int num_threads) {
  const lap::Geometry geom = lap::make_geometry(height, width, levels);
  const int64_t planes = batch * channels;
  const int64_t elem = dtype == DType::kFloat64 ? 8 : 4;  // CUDA computes f16/bf16 in f32
  if (cuda) {
    const int64_t pyramid = align64(planes * geom.total * elem);
    return backward ? pyramid : pyramid + planes * lap::cuda_partials_per_plane(geom) * 8;
  }
  // `planes` bounds the task count of both the grouped row kernels and the per-plane pixel path.
  const int slots = parallel_slots(planes, num_threads);
  const int64_t per_slot = lap::baseline::slot_bytes(geom, elem);
  return (backward ? 0 : align64(planes * 8)) + slots * per_slot;
}

Status laplacian_forward_cpu(const LaplacianForwardParams& p) {
  if (p.dtype != DType::kFloat32 && p.dtype != DType::kFloat64)
    return Status::Error(StatusCode::kInvalidArgument, "laplacian_forward_cpu: dtype must be float32 or float64");
#if defined(GLANN_X86)
  switch (best_cpu_isa()) {
    case CpuIsa::kAvx512: return laplacian_forward_cpu_avx512(p);
    case CpuIsa::kAvx2: return laplacian_forward_cpu_avx2(p);
    default: break;
  }
#endif
  return lap::baseline::forward(p);
}

Status laplacian_backward_cpu(const LaplacianBackwardParams& p) {
  if (p.dtype != DType::kFloat32 && p.dtype != DType::kFloat64)
    return Status::Error(StatusCode::kInvalidArgument, "laplacian_backward_cpu: dtype must be float32 or float64");
#if defined(GLANN_X86)
  switch (best_cpu_isa()) {
    case CpuIsa::kAvx512: return laplacian_backward_cpu_avx512(p);
    case CpuIsa::kAvx2: return laplacian_backward_cpu_avx2(p);
    default: break;
  }
#endif
  return lap::baseline::backward(p);
}

}  // namespace glann

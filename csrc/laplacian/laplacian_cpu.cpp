// CPU launchers of the Laplacian-pyramid loss: ISA dispatch, workspace sizes and Status.
#include "laplacian/laplacian_cpu.h"

#include <string>

#include "common/parallel.h"
#include "laplacian/laplacian.h"

namespace glann {

namespace {
int64_t align64(int64_t n) { return (n + 63) / 64 * 64; }

const lap_cpu::Kernels& kernels() {
  using namespace lap_cpu;
  static const Kernels& k = pick_isa(baseline::kKernels, GLANN_X86_COPY(avx2), GLANN_X86_COPY(avx512));
  return k;
}

Status to_status(const KernelResult& r, const char* what) {
  if (r.code == KernelResult::kOk) return Status::Ok();
  if (r.code == KernelResult::kNonFiniteRow)
    return Status::Error(
        StatusCode::kNonFinite,
        std::string(r.input == 0 ? "x" : "y") + " sample " + std::to_string(r.row) + " contains NaN or Inf", r.row,
        r.input);
  return Status::Error(StatusCode::kInvalidArgument, std::string(what) + ": workspace too small");
}

bool float_dtype(DType t) { return t == DType::kFloat32 || t == DType::kFloat64; }
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
  const int64_t per_slot = lap_cpu::slot_bytes(geom, elem);
  return (backward ? 0 : align64(planes * 8)) + slots * per_slot;
}

Status laplacian_forward_cpu(const LaplacianForwardParams& p) {
  if (p.levels < 1 || p.levels > kLaplacianMaxLevels)
    return Status::Error(StatusCode::kInvalidArgument, "laplacian_forward_cpu: levels must be in [1, 16]");
  if (!float_dtype(p.dtype))
    return Status::Error(StatusCode::kInvalidArgument, "laplacian_forward_cpu: dtype must be float32 or float64");
  return to_status(kernels().forward(p), "laplacian_forward_cpu");
}

Status laplacian_backward_cpu(const LaplacianBackwardParams& p) {
  if (p.levels < 1 || p.levels > kLaplacianMaxLevels)
    return Status::Error(StatusCode::kInvalidArgument, "laplacian_backward_cpu: levels must be in [1, 16]");
  if (!float_dtype(p.dtype))
    return Status::Error(StatusCode::kInvalidArgument, "laplacian_backward_cpu: dtype must be float32 or float64");
  return to_status(kernels().backward(p), "laplacian_backward_cpu");
}

}  // namespace glann

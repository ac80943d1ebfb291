// CPU launchers of the sphere family: validate what the kernels rely on and pick the ISA copy.
// Before any #include, so that every function of this file, std:: ones included, gets the same options
// (GCC does not inline across differing ones): no FMA contraction, for torch-exact optimizer arithmetic
// and the same bits on every ISA. (A per-source -ffp-contract=off in CMake would be the cleaner fix.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif
#include <string>

#include "common/cpu_features.h"
#include "common/parallel.h"
#include "sphere/sphere.h"

#define GLANN_SPHERE_ISA_NS cpu_baseline
#include "sphere/sphere_cpu_kernels.h"
#undef GLANN_SPHERE_ISA_NS

namespace glann {

#if defined(GLANN_X86)
namespace cpu_avx2 {  // sphere_cpu_avx2.cpp
KernelResult project(const ProjectParams& p);
KernelResult latent_step(const LatentStepParams& p);
}  // namespace cpu_avx2
#endif

namespace sphere_detail {
void run_tasks(int64_t tasks, int num_threads, void (*fn)(void* ctx, int64_t task), void* ctx) {
  parallel_for(tasks, num_threads, [fn, ctx](int64_t t, int) { fn(ctx, t); });
}
}  // namespace sphere_detail

namespace {
#if defined(GLANN_X86)
bool use_avx2() { return best_cpu_isa() != CpuIsa::kBaseline; }
#endif
bool float_dtype(DType t) { return t == DType::kFloat32 || t == DType::kFloat64; }
}  // namespace

Status project_to_sphere_cpu(const ProjectParams& p) {
  if (p.rows == 0) return Status::Ok();
  if (p.dim <= 0) return Status::Error(StatusCode::kInvalidArgument, "project_to_sphere: dim must be positive");
  if (!float_dtype(p.dtype))
    return Status::Error(StatusCode::kInvalidArgument,
                         std::string("project_to_sphere (CPU): unsupported dtype ") + dtype_name(p.dtype));
#if defined(GLANN_X86)
  const KernelResult r = use_avx2() ? cpu_avx2::project(p) : cpu_baseline::project(p);
#else
  const KernelResult r = cpu_baseline::project(p);
#endif
  if (r.code == KernelResult::kNonFiniteRow)
    return Status::Error(StatusCode::kNonFinite, "row " + std::to_string(r.row) + " contains NaN or Inf", r.row);
  return Status::Ok();
}

Status latent_step_cpu(const LatentStepParams& p) {
  if (p.batch == 0) return Status::Ok();
  if (p.dim <= 0) return Status::Error(StatusCode::kInvalidArgument, "latent step: dim must be positive");
  if (p.optimizer == LatentOptimizer::kAdam && (p.exp_avg == nullptr || p.exp_avg_sq == nullptr))
    return Status::Error(StatusCode::kInvalidArgument, "latent Adam step: exp_avg/exp_avg_sq missing");
  if (!float_dtype(p.dtype))
    return Status::Error(StatusCode::kInvalidArgument,
                         std::string("latent step (CPU): unsupported dtype ") + dtype_name(p.dtype));
#if defined(GLANN_X86)
  const KernelResult r = use_avx2() ? cpu_avx2::latent_step(p) : cpu_baseline::latent_step(p);
#else
  const KernelResult r = cpu_baseline::latent_step(p);
#endif
  if (r.code == KernelResult::kBadIndex)
    return Status::Error(StatusCode::kInvalidArgument,
                         "indices[" + std::to_string(r.row) + "] = " + std::to_string(p.indices[r.row * p.index_stride]) +
                             " is out of range for a table of " + std::to_string(p.table_rows) + " rows",
                         r.row);
  if (r.code == KernelResult::kNonFiniteRow)
    return Status::Error(StatusCode::kNonFinite, "grad row " + std::to_string(r.row) + " contains NaN or Inf", r.row);
  return Status::Ok();
}

}  // namespace glann

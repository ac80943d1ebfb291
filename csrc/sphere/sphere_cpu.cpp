// CPU launchers of the sphere family: validate what the kernels rely on, pick the ISA copy, and turn
// its KernelResult into a Status.
#include "sphere/sphere_cpu.h"

#include <string>

#include "sphere/sphere.h"

namespace glann {

namespace {
const sphere_cpu::Kernels& kernels() {
  using namespace sphere_cpu;
  static const Kernels& k = pick_isa(baseline::kKernels, GLANN_X86_COPY(avx2), nullptr);
  return k;
}

bool float_dtype(DType t) { return t == DType::kFloat32 || t == DType::kFloat64; }
}  // namespace

Status project_to_sphere_cpu(const ProjectParams& p) {
  if (p.rows == 0) return Status::Ok();
  if (p.dim <= 0) return Status::Error(StatusCode::kInvalidArgument, "project_to_sphere: dim must be positive");
  if (!float_dtype(p.dtype))
    return Status::Error(StatusCode::kInvalidArgument,
                         std::string("project_to_sphere (CPU): unsupported dtype ") + dtype_name(p.dtype));
  const KernelResult r = kernels().project(p);
  if (r.code == KernelResult::kNonFiniteRow)
    return Status::Error(StatusCode::kNonFinite, "row " + std::to_string(r.row) + " contains NaN or Inf", r.row, 0);
  return Status::Ok();
}

Status latent_step_cpu(const LatentStepParams& p) {
  if (p.batch == 0) return Status::Ok();
  if (p.dim <= 0) return Status::Error(StatusCode::kInvalidArgument, "latent step: dim must be positive");
  if (p.table_strides[1] != 1)
    return Status::Error(StatusCode::kInvalidArgument, "latent step: the table's column stride must be 1");
  if (p.optimizer == LatentOptimizer::kAdam && (p.exp_avg == nullptr || p.exp_avg_sq == nullptr))
    return Status::Error(StatusCode::kInvalidArgument, "latent Adam step: exp_avg/exp_avg_sq missing");
  if (!float_dtype(p.dtype))
    return Status::Error(StatusCode::kInvalidArgument,
                         std::string("latent step (CPU): unsupported dtype ") + dtype_name(p.dtype));
  const KernelResult r = kernels().latent_step(p);
  if (r.code == KernelResult::kBadIndex)
    return Status::Error(StatusCode::kInvalidArgument,
                         "indices[" + std::to_string(r.row) +
                             "] = " + std::to_string(p.indices[r.row * p.indices_strides[0]]) +
                             " is out of range for a table of " + std::to_string(p.table_rows) + " rows",
                         r.row);
  if (r.code == KernelResult::kNonFiniteRow)
    return Status::Error(StatusCode::kNonFinite, "grad row " + std::to_string(r.row) + " contains NaN or Inf", r.row,
                         0);
  return Status::Ok();
}

const char* sphere_cpu_path() { return kernels().name; }

}  // namespace glann

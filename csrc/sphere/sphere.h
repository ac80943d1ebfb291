// Unit-sphere projection of rows and the fused sparse optimizer step of a GLO latent table.
//
// Framework-free: plain pointers, element strides and an ExecContext. The Python layer
// (glann_ext/ops/sphere.py) validates every argument before calling these launchers; they return a
// glann::Status and never throw.
#pragma once
#include <cstdint>

#include "common/dtype.h"
#include "common/exec.h"
#include "common/status.h"

namespace glann {

// out[i, :] = in[i, :] / ||in[i, :]||_2 for every row i.
//
// * Norms are accumulated in double for float32/float64 rows and in float for float16/bfloat16 rows
//   (CUDA only). float64 rows whose sum of squares would overflow or underflow are rescaled by a power
//   of two first, so any finite row projects correctly.
// * A row that is exactly zero becomes (1, ..., 1) / sqrt(dim).
// * A row holding NaN or Inf is detected before any of its elements is written and left unwritten
//   (in place: unchanged); every other row is still projected. The launcher reports the lowest such
//   row: on CPU as Status kNonFinite with detail = row; on CUDA through *first_bad_row (see below).
// * in == out (in place) is allowed when both use the same strides.
struct ProjectParams {
  ExecContext exec;
  DType dtype = DType::kFloat32;
  const void* in = nullptr;
  void* out = nullptr;
  int64_t rows = 0;
  int64_t dim = 0;
  int64_t in_strides[2] = {0, 1};  // element strides
  int64_t out_strides[2] = {0, 1};
  // CUDA only: a device int64 the caller initialised to a value >= `rows` (Python: INT64_MAX); the
  // kernel atomically lowers it to the first non-finite row. The caller reads it back after the launch
  // (the kernel cannot report it).
  int64_t* first_bad_row = nullptr;
};

Status project_to_sphere_cpu(const ProjectParams& p);
Status project_to_sphere_cuda(const ProjectParams& p);  // defined only when GLANN_WITH_CUDA
// Name of the SIMD copy the CPU kernels (projection and latent steps) use on this machine.
const char* sphere_cpu_path();

enum class LatentOptimizer : int { kAdam = 0, kSgd = 1 };

// One optimizer step on the rows table[indices[b], :] of a (table_rows, dim) latent table, each row
// optionally re-projected onto the unit sphere in the same pass. The rest of the table is not read.
//
// * indices must be unique and in range (the Python layer coalesces duplicates by summing their grad
//   rows, exactly as torch.optim.SparseAdam's grad.coalesce()).
// * Adam follows torch.optim.SparseAdam op for op in the table's dtype (no fused multiply-add):
//     m_upd = (g - m) * one_minus_beta1;  v_upd = (g*g - v) * one_minus_beta2
//     m += m_upd;  v += v_upd;  p += neg_step_size * (m / (sqrt(v) + eps))
//   with neg_step_size = -lr * sqrt(1 - beta2^step) / (1 - beta1^step) computed by the caller in
//   double exactly as torch does; every scalar is rounded to the table's dtype like torch's scalar ops.
// * SGD: p = p + neg_lr * g (torch.optim.SGD without momentum/weight decay on a sparse grad, i.e.
//   p.index_add_(0, i, g, alpha=-lr)): one fused multiply-add on the CPU, as torch's CPU index_add_
//   rounds; multiply then add on CUDA.
// * sqrt is IEEE correctly rounded everywhere (torch 2.13's CPU torch.sqrt is not always: see
//   glann_ext/ops/sphere.py).
// * CPU: the whole grad is checked for NaN/Inf before anything is written (Status kNonFinite, detail
//   = grad row, nothing modified). CUDA: the caller checks grad before the launch.
// * NaN/Inf already in the touched rows of table/exp_avg/exp_avg_sq are not checked: they propagate.
struct LatentStepParams {
  ExecContext exec;
  DType dtype = DType::kFloat32;  // of table, exp_avg, exp_avg_sq and grad: float32 or float64
  LatentOptimizer optimizer = LatentOptimizer::kAdam;
  void* table = nullptr;       // (table_rows, dim)
  void* exp_avg = nullptr;     // Adam only: same layout as table
  void* exp_avg_sq = nullptr;  // Adam only: same layout as table
  int64_t table_rows = 0;
  int64_t dim = 0;
  int64_t table_strides[2] = {0, 1};  // of table, exp_avg and exp_avg_sq; the column stride must be 1
  const int64_t* indices = nullptr;   // (batch,), unique, in [0, table_rows)
  int64_t indices_strides[1] = {1};
  const void* grad = nullptr;  // (batch, dim)
  int64_t grad_strides[2] = {0, 1};
  int64_t batch = 0;
  // Adam scalars (double here; rounded to dtype by the kernels, as torch rounds Python scalars).
  double one_minus_beta1 = 0.1, one_minus_beta2 = 0.001, eps = 1e-8, neg_step_size = 0.0;
  double neg_lr = 0.0;  // SGD
  bool project = true;
};

Status latent_step_cpu(const LatentStepParams& p);
Status latent_step_cuda(const LatentStepParams& p);  // defined only when GLANN_WITH_CUDA

}  // namespace glann

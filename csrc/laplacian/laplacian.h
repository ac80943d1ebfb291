// Fused Laplacian-pyramid L1 loss: launchers and their plain parameter structs.
//
// Definition (glann_ext.ops.laplacian documents it in full): d = x - y, Gaussian pyramid of d with the
// 5-tap binomial blur and reflect-101 borders, L^j = G^j - up(G^{j+1}), L^{J-1} = G^{J-1}; the kernels
// return per sample sum_j w_j sum |L^j| (unnormalised; w_j = level_weights[j], the GLO paper's 4^j by
// default) and the signs of every L^j, which is all the backward pass needs:
// grad_d = sum_j pyramid-adjoint(w_j * scale_b * sign(L^j)).
//
// Memory: the caller allocates every buffer (outputs and `workspace`, sized by
// laplacian_workspace_bytes); launchers never allocate and report failures as a Status.
#pragma once
#include <cstdint>

#include "common/dtype.h"
#include "common/exec.h"
#include "common/status.h"

namespace glann {

constexpr int kLaplacianMaxLevels = 16;

struct LaplacianForwardParams {
  ExecContext exec;
  int64_t batch = 0, channels = 0, height = 0, width = 0;  // x, y are (B, C, H, W)
  int levels = 1;                                          // 1..16
  double level_weights[kLaplacianMaxLevels] = {};          // w_j of levels 0 (finest) .. levels-1
  DType dtype = DType::kFloat32;  // of x and y; CPU: f32/f64, CUDA: also f16/bf16 (computed in f32)
  const void* x = nullptr;
  const void* y = nullptr;
  int64_t x_strides[4] = {0, 0, 0, 0};  // element strides of x (any, e.g. channels-last)
  int64_t y_strides[4] = {0, 0, 0, 0};  // element strides of y (stride 0 from expand() is fine)
  // Out: (B,) unnormalised per-sample loss sum_j w_j sum|L^j| in the compute type
  // (float64 for float64 inputs, float32 otherwise).
  void* per_sample = nullptr;
  // Out: the loss the op returns, in the compute type, from per_sample: with sum_samples one value,
  // (sum_b per_sample[b]) / loss_divisor (summed in float64 in a fixed order); else (B,) values
  // per_sample[b] / loss_divisor (divided in the compute type; `loss` may be `per_sample` itself). The
  // reduction happens here rather than in torch ops after the call: each op costs a dispatch. Null: none.
  void* loss = nullptr;
  bool sum_samples = true;
  double loss_divisor = 1.0;
  // Out: B*C*P int8 sign(L^j) of every level, P = sum_j h_j * w_j, for the backward pass of the same
  // backend and dtype. The layout is private to the backend: CUDA stores plane after plane, levels
  // finest first; the CPU row kernels interleave the planes of each group (laplacian_cpu_isa.h).
  int8_t* signs = nullptr;
  void* workspace = nullptr;  // laplacian_workspace_bytes(..., backward = false) bytes
  int64_t workspace_bytes = 0;
  // CPU: run the per-pixel (CUDA-shaped) code instead of the row kernels, so the CPU tests check the
  // math the CUDA kernels run. Its sign layout differs: the backward must be given the same value.
  bool pixel_path = false;
  // NaN/Inf in x or y (the NaN policy of glann_ext.ops), found where it costs nothing: a sample whose
  // loss is not finite is looked at (a finite loss needs finite inputs). CPU: Status kNonFinite with
  // input 0 (x) or 1 (y) and detail = the lowest offending sample, x first. CUDA: nonfinite_samples[0]
  // (x) and [1] (y), device int64s the caller set to INT64_MAX, are lowered; the launcher never waits.
  // A non-finite loss of finite inputs (overflow) is no error.
  bool check_finite = false;
  int64_t* nonfinite_samples = nullptr;
};

struct LaplacianBackwardParams {
  ExecContext exec;
  int64_t batch = 0, channels = 0, height = 0, width = 0;
  int levels = 1;
  double level_weights[kLaplacianMaxLevels] = {};  // the forward's
  DType dtype = DType::kFloat32;                   // of grad (the dtype of x)
  const int8_t* signs = nullptr;                   // from the forward pass
  // d loss / d per_sample[b] = grad_loss[b * grad_loss_stride] / loss_divisor, in the compute type:
  // grad_loss is the gradient of the forward's `loss` (one value and stride 0 for a summed loss; (B,) with
  // any stride otherwise), loss_divisor the forward's.
  const void* grad_loss = nullptr;
  int64_t grad_loss_stride = 0;
  double loss_divisor = 1.0;
  void* grad = nullptr;       // out: (B, C, H, W) contiguous, d loss / d x (= -d loss / d y)
  void* workspace = nullptr;  // laplacian_workspace_bytes(..., backward = true) bytes
  int64_t workspace_bytes = 0;
  bool pixel_path = false;  // the forward's
};

// P = sum_j h_j * w_j: the int8 sign elements per plane.
int64_t laplacian_plane_elems(int64_t height, int64_t width, int levels);

// Workspace bytes for one call with these sizes on CPU (num_threads) or CUDA.
int64_t laplacian_workspace_bytes(int64_t batch, int64_t channels, int64_t height, int64_t width, int levels,
                                  DType dtype, bool cuda, bool backward, int num_threads);

Status laplacian_forward_cpu(const LaplacianForwardParams& p);
Status laplacian_backward_cpu(const LaplacianBackwardParams& p);
// Name of the SIMD copy the CPU kernels use on this machine.
const char* laplacian_cpu_path();
// Defined in laplacian.cu, built only with GLANN_WITH_CUDA (the bindings guard every call).
Status laplacian_forward_cuda(const LaplacianForwardParams& p);
Status laplacian_backward_cuda(const LaplacianBackwardParams& p);

}  // namespace glann

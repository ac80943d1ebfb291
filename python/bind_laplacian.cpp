// Bindings of the Laplacian-pyramid loss kernels: pointers, sizes and strides in, the launcher called
// without the GIL. Checks live in glann_ext/ops/laplacian.py.
#include <vector>

#include "bind_common.h"
#include "laplacian/laplacian.h"

namespace glann_py {

using Strides4 = std::array<int64_t, 4>;

namespace {
// Copies one weight per level into a params struct's fixed array (the ops layer checked the count).
void set_level_weights(double (&dst)[glann::kLaplacianMaxLevels], const std::vector<double>& src, int levels) {
  if (levels < 1 || levels > glann::kLaplacianMaxLevels || static_cast<int>(src.size()) != levels)
    throw py::value_error("laplacian: level_weights must hold one weight per level (1..16)");
  for (int j = 0; j < levels; ++j) dst[j] = src[j];
}
}  // namespace

void register_laplacian(py::module_& m) {
  m.def("laplacian_cpu_path", &glann::laplacian_cpu_path, "SIMD copy of the CPU kernels in use.");
  m.def("laplacian_plane_elems", &glann::laplacian_plane_elems, py::arg("height"), py::arg("width"), py::arg("levels"),
        "Sign elements per (b, c) plane: sum_j h_j * w_j.");

  m.def(
      "laplacian_workspace_bytes",
      [](int64_t batch, int64_t channels, int64_t height, int64_t width, int levels, int dtype, bool cuda,
         bool backward, int num_threads) {
        return glann::laplacian_workspace_bytes(batch, channels, height, width, levels, as_dtype(dtype), cuda, backward,
                                                num_threads);
      },
      py::arg("batch"), py::arg("channels"), py::arg("height"), py::arg("width"), py::arg("levels"), py::arg("dtype"),
      py::arg("cuda"), py::arg("backward"), py::arg("num_threads"));

  m.def(
      "laplacian_forward",
      [](int dtype, std::uintptr_t x, Strides4 x_strides, std::uintptr_t y, Strides4 y_strides, int64_t batch,
         int64_t channels, int64_t height, int64_t width, int levels, const std::vector<double>& level_weights,
         std::uintptr_t per_sample, std::uintptr_t loss, bool sum_samples, double loss_divisor, std::uintptr_t signs,
         std::uintptr_t workspace, int64_t workspace_bytes, bool pixel_path, bool check_finite,
         std::uintptr_t nonfinite_samples, const ExecArgs& exec) {
        glann::LaplacianForwardParams p;
        p.exec = to_exec(exec);
        p.dtype = as_dtype(dtype);
        p.batch = batch;
        p.channels = channels;
        p.height = height;
        p.width = width;
        p.levels = levels;
        set_level_weights(p.level_weights, level_weights, levels);
        p.x = as_ptr<const void>(x);
        p.y = as_ptr<const void>(y);
        set_strides(p.x_strides, x_strides);
        set_strides(p.y_strides, y_strides);
        p.per_sample = as_ptr<void>(per_sample);
        p.loss = as_ptr<void>(loss);
        p.sum_samples = sum_samples;
        p.loss_divisor = loss_divisor;
        p.signs = as_ptr<int8_t>(signs);
        p.workspace = as_ptr<void>(workspace);
        p.workspace_bytes = workspace_bytes;
        p.pixel_path = pixel_path;
        p.check_finite = check_finite;
        p.nonfinite_samples = as_ptr<int64_t>(nonfinite_samples);
        launch(p, &glann::laplacian_forward_cpu, GLANN_CUDA_ENTRY(glann::laplacian_forward_cuda));
      },
      py::arg("dtype"), py::arg("x"), py::arg("x_strides"), py::arg("y"), py::arg("y_strides"), py::arg("batch"),
      py::arg("channels"), py::arg("height"), py::arg("width"), py::arg("levels"), py::arg("level_weights"),
      py::arg("per_sample"), py::arg("loss"), py::arg("sum_samples"), py::arg("loss_divisor"), py::arg("signs"),
      py::arg("workspace"), py::arg("workspace_bytes"), py::arg("pixel_path"), py::arg("check_finite"),
      py::arg("nonfinite_samples"), py::arg("exec"),
      "Per-sample sum_j w_j sum|L^j| of x - y into per_sample (B,), the loss from them into loss (their sum, or "
      "each, over loss_divisor), signs of every level into signs; NaN/Inf in a sample with check_finite: CPU "
      "StatusError NON_FINITE (input 0 x, 1 y), CUDA the int64[2] at nonfinite_samples lowered.");

  m.def(
      "laplacian_backward",
      [](int dtype, std::uintptr_t signs, std::uintptr_t grad_loss, int64_t grad_loss_stride, double loss_divisor,
         std::uintptr_t grad, int64_t batch, int64_t channels, int64_t height, int64_t width, int levels,
         const std::vector<double>& level_weights, std::uintptr_t workspace, int64_t workspace_bytes, bool pixel_path,
         const ExecArgs& exec) {
        glann::LaplacianBackwardParams p;
        p.exec = to_exec(exec);
        p.dtype = as_dtype(dtype);
        p.batch = batch;
        p.channels = channels;
        p.height = height;
        p.width = width;
        p.levels = levels;
        set_level_weights(p.level_weights, level_weights, levels);
        p.signs = as_ptr<const int8_t>(signs);
        p.grad_loss = as_ptr<const void>(grad_loss);
        p.grad_loss_stride = grad_loss_stride;
        p.loss_divisor = loss_divisor;
        p.grad = as_ptr<void>(grad);
        p.workspace = as_ptr<void>(workspace);
        p.workspace_bytes = workspace_bytes;
        p.pixel_path = pixel_path;
        launch(p, &glann::laplacian_backward_cpu, GLANN_CUDA_ENTRY(glann::laplacian_backward_cuda));
      },
      py::arg("dtype"), py::arg("signs"), py::arg("grad_loss"), py::arg("grad_loss_stride"), py::arg("loss_divisor"),
      py::arg("grad"), py::arg("batch"), py::arg("channels"), py::arg("height"), py::arg("width"), py::arg("levels"),
      py::arg("level_weights"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("pixel_path"),
      py::arg("exec"),
      "grad (B, C, H, W) contiguous = adjoint of the pyramid applied to the signs, each sample's scaled by "
      "grad_loss[b * grad_loss_stride] / loss_divisor.");
}

}  // namespace glann_py

// Bindings of the Laplacian-pyramid loss kernels: convert pointers and sizes, call the launcher with
// the GIL released, turn a failed Status into an exception. Checks live in glann_ext/ops/laplacian.py.
#include <pybind11/stl.h>

#include <array>
#include <cstdint>

#include "bind_common.h"
#include "laplacian/laplacian.h"

namespace glann_py {

using Strides = std::array<int64_t, 4>;

// The CPU or CUDA launcher, with the GIL released while it runs.
template <typename Params>
glann::Status launch(bool cuda, const Params& p, glann::Status (*cpu)(const Params&),
                     glann::Status (*gpu)(const Params&)) {
  py::gil_scoped_release release;
  if (!cuda) return cpu(p);
  if (gpu == nullptr)
    return glann::Status::Error(glann::StatusCode::kUnsupported, "glann_ext was built without CUDA kernels");
  return gpu(p);
}

#ifdef GLANN_WITH_CUDA
constexpr auto kForwardCuda = &glann::laplacian_forward_cuda;
constexpr auto kBackwardCuda = &glann::laplacian_backward_cuda;
#else
constexpr glann::Status (*kForwardCuda)(const glann::LaplacianForwardParams&) = nullptr;
constexpr glann::Status (*kBackwardCuda)(const glann::LaplacianBackwardParams&) = nullptr;
#endif

void register_laplacian(py::module_& m) {
  m.def("laplacian_plane_elems", &glann::laplacian_plane_elems, py::arg("height"), py::arg("width"),
        py::arg("levels"), "Sign elements per (b, c) plane: sum_j h_j * w_j.");

  m.def(
      "laplacian_workspace_bytes",
      [](int64_t b, int64_t c, int64_t h, int64_t w, int levels, int dtype, bool cuda, bool backward,
         int num_threads) {
        return glann::laplacian_workspace_bytes(b, c, h, w, levels, as_dtype(dtype), cuda, backward, num_threads);
      },
      py::arg("batch"), py::arg("channels"), py::arg("height"), py::arg("width"), py::arg("levels"),
      py::arg("dtype"), py::arg("cuda"), py::arg("backward"), py::arg("num_threads"));

  m.def(
      "laplacian_forward",
      [](std::uintptr_t x, Strides xs, std::uintptr_t y, Strides ys, int64_t b, int64_t c, int64_t h, int64_t w,
         int levels, int dtype, std::uintptr_t per_sample, std::uintptr_t signs, std::uintptr_t workspace,
         int64_t workspace_bytes, int num_threads, bool cuda, std::uintptr_t stream, bool pixel_path) {
        glann::LaplacianForwardParams p;
        p.batch = b;
        p.channels = c;
        p.height = h;
        p.width = w;
        p.levels = levels;
        p.dtype = as_dtype(dtype);
        p.x = as_ptr<const void>(x);
        p.y = as_ptr<const void>(y);
        for (int i = 0; i < 4; ++i) {
          p.x_strides[i] = xs[i];
          p.y_strides[i] = ys[i];
        }
        p.per_sample = as_ptr<void>(per_sample);
        p.signs = as_ptr<int8_t>(signs);
        p.workspace = as_ptr<void>(workspace);
        p.workspace_bytes = workspace_bytes;
        p.num_threads = num_threads;
        p.pixel_path = pixel_path;
        p.stream = as_ptr<void>(stream);
        throw_if_error(launch(cuda, p, &glann::laplacian_forward_cpu, kForwardCuda));
      },
      py::arg("x"), py::arg("x_strides"), py::arg("y"), py::arg("y_strides"), py::arg("batch"),
      py::arg("channels"), py::arg("height"), py::arg("width"), py::arg("levels"), py::arg("dtype"),
      py::arg("per_sample"), py::arg("signs"), py::arg("workspace"), py::arg("workspace_bytes"),
      py::arg("num_threads"), py::arg("cuda"), py::arg("stream"), py::arg("pixel_path") = false,
      "Per-sample sum_j 4^j sum|L^j| of x - y into per_sample (B,), signs of every level into signs.");

  m.def(
      "laplacian_backward",
      [](std::uintptr_t signs, std::uintptr_t grad_scale, std::uintptr_t grad, int64_t b, int64_t c, int64_t h,
         int64_t w, int levels, int dtype, std::uintptr_t workspace, int64_t workspace_bytes, int num_threads,
         bool cuda, std::uintptr_t stream, bool pixel_path) {
        glann::LaplacianBackwardParams p;
        p.batch = b;
        p.channels = c;
        p.height = h;
        p.width = w;
        p.levels = levels;
        p.dtype = as_dtype(dtype);
        p.signs = as_ptr<const int8_t>(signs);
        p.grad_scale = as_ptr<const void>(grad_scale);
        p.grad = as_ptr<void>(grad);
        p.workspace = as_ptr<void>(workspace);
        p.workspace_bytes = workspace_bytes;
        p.num_threads = num_threads;
        p.pixel_path = pixel_path;
        p.stream = as_ptr<void>(stream);
        throw_if_error(launch(cuda, p, &glann::laplacian_backward_cpu, kBackwardCuda));
      },
      py::arg("signs"), py::arg("grad_scale"), py::arg("grad"), py::arg("batch"), py::arg("channels"),
      py::arg("height"), py::arg("width"), py::arg("levels"), py::arg("dtype"), py::arg("workspace"),
      py::arg("workspace_bytes"), py::arg("num_threads"), py::arg("cuda"), py::arg("stream"),
      py::arg("pixel_path") = false, "grad (B, C, H, W) contiguous = adjoint of the pyramid applied to the signs.");
}

}  // namespace glann_py

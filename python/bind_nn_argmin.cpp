// Bindings of the nn_argmin kernels: pointers and sizes in, Status turned into exceptions.
#include <cstdint>

#include "bind_common.h"
#include "nn_argmin/nn_argmin.h"

namespace glann_py {

void register_nn_argmin(py::module_& m) {
  m.def("nn_argmin_cpu_workspace_bytes", &glann::nn_argmin_cpu_workspace_bytes, py::arg("n"), py::arg("m"),
        py::arg("d"), py::arg("num_threads"));
  m.def("nn_argmin_cpu_path", &glann::nn_argmin_cpu_path);
#ifdef GLANN_WITH_CUDA
  m.def("nn_argmin_cuda_workspace_bytes", &glann::nn_argmin_cuda_workspace_bytes, py::arg("n"), py::arg("m"),
        py::arg("d"), py::arg("device"));
#endif
  m.def(
      "nn_argmin",
      [](bool on_cuda, std::uintptr_t queries, int64_t n, int64_t d, int64_t q_stride_row, int64_t q_stride_col,
         std::uintptr_t keys, int64_t m_keys, int64_t k_stride_row, int64_t k_stride_col, int dtype,
         std::uintptr_t best_score, std::uintptr_t best_index, std::uintptr_t workspace, int64_t workspace_bytes,
         int num_threads, std::uintptr_t stream, int device) {
        glann::NnArgminParams p;
        p.queries = as_ptr<const void>(queries);
        p.n = n;
        p.d = d;
        p.q_stride_row = q_stride_row;
        p.q_stride_col = q_stride_col;
        p.keys = as_ptr<const void>(keys);
        p.m = m_keys;
        p.k_stride_row = k_stride_row;
        p.k_stride_col = k_stride_col;
        p.dtype = as_dtype(dtype);
        p.best_score = as_ptr<float>(best_score);
        p.best_index = as_ptr<int64_t>(best_index);
        p.workspace = as_ptr<void>(workspace);
        p.workspace_bytes = workspace_bytes;
        p.num_threads = num_threads;
        p.cuda_stream = as_ptr<void>(stream);
        p.cuda_device = device;
        glann::Status s;
        {
          py::gil_scoped_release nogil;
          if (on_cuda) {
#ifdef GLANN_WITH_CUDA
            s = glann::nn_argmin_cuda(p);
#else
            s = glann::Status::Error(glann::StatusCode::kUnsupported, "glann_ext was built without CUDA");
#endif
          } else {
            s = glann::nn_argmin_cpu(p);
          }
        }
        throw_if_error(s);
      },
      py::arg("on_cuda"), py::arg("queries"), py::arg("n"), py::arg("d"), py::arg("q_stride_row"),
      py::arg("q_stride_col"), py::arg("keys"), py::arg("m"), py::arg("k_stride_row"), py::arg("k_stride_col"),
      py::arg("dtype"), py::arg("best_score"), py::arg("best_index"), py::arg("workspace"),
      py::arg("workspace_bytes"), py::arg("num_threads"), py::arg("stream"), py::arg("device"),
      "Lowest-index argmin of ||k||^2 - 2 q.k over the keys for every query row (see csrc/nn_argmin/nn_argmin.h).");
}

}  // namespace glann_py

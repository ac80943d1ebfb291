// Bindings of the sphere kernels: pointers and integers in, launcher called without the GIL, Status out
// as a Python exception. Argument checking lives in glann_ext/ops/sphere.py.
#include <cstdint>

#include "bind_common.h"
#include "sphere/sphere.h"

namespace glann_py {

namespace {

glann::Status no_cuda() {
  return glann::Status::Error(glann::StatusCode::kUnsupported,
                              "glann_ext was built without CUDA kernels; move the tensors to the CPU or rebuild "
                              "with GLANN_EXT_CUDA=ON");
}

glann::Status run_project(bool cuda, const glann::ProjectParams& p) {
  py::gil_scoped_release nogil;
#ifdef GLANN_WITH_CUDA
  if (cuda) return glann::project_to_sphere_cuda(p);
#else
  if (cuda) return no_cuda();
#endif
  return glann::project_to_sphere_cpu(p);
}

glann::Status run_step(bool cuda, const glann::LatentStepParams& p) {
  py::gil_scoped_release nogil;
#ifdef GLANN_WITH_CUDA
  if (cuda) return glann::latent_step_cuda(p);
#else
  if (cuda) return no_cuda();
#endif
  return glann::latent_step_cpu(p);
}

}  // namespace

void register_sphere(py::module_& m) {
  m.def(
      "project_to_sphere",
      [](int dtype, std::uintptr_t in, std::uintptr_t out, int64_t rows, int64_t dim, int64_t in_row_stride,
         int64_t in_col_stride, int64_t out_row_stride, int64_t out_col_stride, bool cuda, std::uintptr_t stream,
         std::uintptr_t first_bad_row, int num_threads) {
        glann::ProjectParams p;
        p.dtype = as_dtype(dtype);
        p.in = as_ptr<const void>(in);
        p.out = as_ptr<void>(out);
        p.rows = rows;
        p.dim = dim;
        p.in_row_stride = in_row_stride;
        p.in_col_stride = in_col_stride;
        p.out_row_stride = out_row_stride;
        p.out_col_stride = out_col_stride;
        p.first_bad_row = as_ptr<int64_t>(first_bad_row);
        p.stream = as_ptr<void>(stream);
        p.num_threads = num_threads;
        throw_if_error(run_project(cuda, p));
      },
      py::arg("dtype"), py::arg("in_ptr"), py::arg("out_ptr"), py::arg("rows"), py::arg("dim"),
      py::arg("in_row_stride"), py::arg("in_col_stride"), py::arg("out_row_stride"), py::arg("out_col_stride"),
      py::arg("cuda"), py::arg("stream"), py::arg("first_bad_row"), py::arg("num_threads"),
      "Rows to unit L2 norm (see csrc/sphere/sphere.h). CPU: ValueError naming the first non-finite row. "
      "CUDA: the first non-finite row is written to the int64 at first_bad_row (initialised to rows).");

  m.def(
      "latent_step",
      [](int dtype, int optimizer, std::uintptr_t table, std::uintptr_t exp_avg, std::uintptr_t exp_avg_sq,
         int64_t table_rows, int64_t dim, int64_t table_row_stride, std::uintptr_t indices, int64_t index_stride,
         std::uintptr_t grad, int64_t grad_row_stride, int64_t grad_col_stride, int64_t batch,
         double one_minus_beta1, double one_minus_beta2, double eps, double neg_step_size, double neg_lr,
         bool project, bool cuda, std::uintptr_t stream, int num_threads) {
        glann::LatentStepParams p;
        p.dtype = as_dtype(dtype);
        if (optimizer != 0 && optimizer != 1) throw py::value_error("latent_step: optimizer must be 0 (Adam) or 1 (SGD)");
        p.optimizer = static_cast<glann::LatentOptimizer>(optimizer);
        p.table = as_ptr<void>(table);
        p.exp_avg = as_ptr<void>(exp_avg);
        p.exp_avg_sq = as_ptr<void>(exp_avg_sq);
        p.table_rows = table_rows;
        p.dim = dim;
        p.table_row_stride = table_row_stride;
        p.indices = as_ptr<const int64_t>(indices);
        p.index_stride = index_stride;
        p.grad = as_ptr<const void>(grad);
        p.grad_row_stride = grad_row_stride;
        p.grad_col_stride = grad_col_stride;
        p.batch = batch;
        p.one_minus_beta1 = one_minus_beta1;
        p.one_minus_beta2 = one_minus_beta2;
        p.eps = eps;
        p.neg_step_size = neg_step_size;
        p.neg_lr = neg_lr;
        p.project = project;
        p.stream = as_ptr<void>(stream);
        p.num_threads = num_threads;
        throw_if_error(run_step(cuda, p));
      },
      py::arg("dtype"), py::arg("optimizer"), py::arg("table"), py::arg("exp_avg"), py::arg("exp_avg_sq"),
      py::arg("table_rows"), py::arg("dim"), py::arg("table_row_stride"), py::arg("indices"),
      py::arg("index_stride"), py::arg("grad"), py::arg("grad_row_stride"), py::arg("grad_col_stride"),
      py::arg("batch"), py::arg("one_minus_beta1"), py::arg("one_minus_beta2"), py::arg("eps"),
      py::arg("neg_step_size"), py::arg("neg_lr"), py::arg("project"), py::arg("cuda"), py::arg("stream"),
      py::arg("num_threads"),
      "Fused sparse Adam (optimizer=0) or SGD (optimizer=1) step on unique table rows, optionally re-projected "
      "onto the unit sphere (see csrc/sphere/sphere.h).");
}

}  // namespace glann_py

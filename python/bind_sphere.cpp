// Bindings of the sphere kernels: pointers, sizes and strides in, the launcher called without the GIL.
// Argument checking lives in glann_ext/ops/sphere.py.
#include "bind_common.h"
#include "sphere/sphere.h"

namespace glann_py {

using Strides1 = std::array<int64_t, 1>;
using Strides2 = std::array<int64_t, 2>;

void register_sphere(py::module_& m) {
  m.def("sphere_cpu_path", &glann::sphere_cpu_path, "SIMD copy of the CPU kernels in use.");
  m.def(
      "project_to_sphere",
      [](int dtype, std::uintptr_t in, Strides2 in_strides, std::uintptr_t out, Strides2 out_strides, int64_t rows,
         int64_t dim, std::uintptr_t first_bad_row, const ExecArgs& exec) {
        glann::ProjectParams p;
        p.exec = to_exec(exec);
        p.dtype = as_dtype(dtype);
        p.in = as_ptr<const void>(in);
        set_strides(p.in_strides, in_strides);
        p.out = as_ptr<void>(out);
        set_strides(p.out_strides, out_strides);
        p.rows = rows;
        p.dim = dim;
        p.first_bad_row = as_ptr<int64_t>(first_bad_row);
        launch(p, &glann::project_to_sphere_cpu, GLANN_CUDA_ENTRY(glann::project_to_sphere_cuda));
      },
      py::arg("dtype"), py::arg("in_"), py::arg("in_strides"), py::arg("out"), py::arg("out_strides"), py::arg("rows"),
      py::arg("dim"), py::arg("first_bad_row"), py::arg("exec"),
      "Rows to unit L2 norm (see csrc/sphere/sphere.h). CPU: StatusError NON_FINITE, detail = the first "
      "non-finite row. CUDA: that row is written to the int64 at first_bad_row (initialised to rows).");

  m.def(
      "latent_step",
      [](int dtype, int optimizer, std::uintptr_t table, std::uintptr_t exp_avg, std::uintptr_t exp_avg_sq,
         Strides2 table_strides, int64_t table_rows, int64_t dim, std::uintptr_t indices, Strides1 indices_strides,
         std::uintptr_t grad, Strides2 grad_strides, int64_t batch, double one_minus_beta1, double one_minus_beta2,
         double eps, double neg_step_size, double neg_lr, bool project, const ExecArgs& exec) {
        glann::LatentStepParams p;
        p.exec = to_exec(exec);
        p.dtype = as_dtype(dtype);
        if (optimizer != 0 && optimizer != 1)
          throw py::value_error("latent_step: optimizer must be 0 (Adam) or 1 (SGD)");
        p.optimizer = static_cast<glann::LatentOptimizer>(optimizer);
        p.table = as_ptr<void>(table);
        p.exp_avg = as_ptr<void>(exp_avg);
        p.exp_avg_sq = as_ptr<void>(exp_avg_sq);
        set_strides(p.table_strides, table_strides);
        p.table_rows = table_rows;
        p.dim = dim;
        p.indices = as_ptr<const int64_t>(indices);
        set_strides(p.indices_strides, indices_strides);
        p.grad = as_ptr<const void>(grad);
        set_strides(p.grad_strides, grad_strides);
        p.batch = batch;
        p.one_minus_beta1 = one_minus_beta1;
        p.one_minus_beta2 = one_minus_beta2;
        p.eps = eps;
        p.neg_step_size = neg_step_size;
        p.neg_lr = neg_lr;
        p.project = project;
        launch(p, &glann::latent_step_cpu, GLANN_CUDA_ENTRY(glann::latent_step_cuda));
      },
      py::arg("dtype"), py::arg("optimizer"), py::arg("table"), py::arg("exp_avg"), py::arg("exp_avg_sq"),
      py::arg("table_strides"), py::arg("table_rows"), py::arg("dim"), py::arg("indices"), py::arg("indices_strides"),
      py::arg("grad"), py::arg("grad_strides"), py::arg("batch"), py::arg("one_minus_beta1"),
      py::arg("one_minus_beta2"), py::arg("eps"), py::arg("neg_step_size"), py::arg("neg_lr"), py::arg("project"),
      py::arg("exec"),
      "Fused sparse Adam (optimizer=0) or SGD (optimizer=1) step on unique table rows, optionally re-projected "
      "onto the unit sphere (see csrc/sphere/sphere.h).");
}

}  // namespace glann_py

// Bindings of the nn_argmin kernels: pointers, sizes and strides in, the launcher called without the GIL.
#include "bind_common.h"
#include "nn_argmin/nn_argmin.h"

namespace glann_py {

using Strides2 = std::array<int64_t, 2>;

void register_nn_argmin(py::module_& m) {
  m.def(
      "nn_argmin_cpu_workspace_bytes",
      [](int64_t n_queries, int64_t n_keys, int64_t dim, int dtype, int num_threads) {
        return glann::nn_argmin_cpu_workspace_bytes(n_queries, n_keys, dim, as_dtype(dtype), num_threads);
      },
      py::arg("n_queries"), py::arg("n_keys"), py::arg("dim"), py::arg("dtype"), py::arg("num_threads"));
  m.def(
      "nn_argmin_cuda_workspace_bytes",
      [](int64_t n_queries, int64_t n_keys, int64_t dim, int device) {
        const auto fn = GLANN_CUDA_ENTRY(glann::nn_argmin_cuda_workspace_bytes);
        if (fn == nullptr) throw_if_error(no_cuda_status());
        return fn(n_queries, n_keys, dim, device);
      },
      py::arg("n_queries"), py::arg("n_keys"), py::arg("dim"), py::arg("device"),
      "Workspace bytes of one CUDA call (raises StatusError UNSUPPORTED in a build without CUDA).");
  m.def("nn_argmin_cpu_path", &glann::nn_argmin_cpu_path, "SIMD copy of the CPU micro-kernel in use.");
  m.def(
      "nn_argmin",
      [](int dtype, std::uintptr_t queries, int64_t n_queries, int64_t dim, Strides2 queries_strides,
         std::uintptr_t keys, int64_t n_keys, Strides2 keys_strides, int64_t key_offset, std::uintptr_t best_score,
         std::uintptr_t best_index, bool check_queries, bool check_keys, std::uintptr_t nonfinite_rows,
         std::uintptr_t workspace, int64_t workspace_bytes, const ExecArgs& exec) {
        glann::NnArgminParams p;
        p.exec = to_exec(exec);
        p.dtype = as_dtype(dtype);
        p.queries = as_ptr<const void>(queries);
        p.n_queries = n_queries;
        p.dim = dim;
        set_strides(p.queries_strides, queries_strides);
        p.keys = as_ptr<const void>(keys);
        p.n_keys = n_keys;
        set_strides(p.keys_strides, keys_strides);
        p.key_offset = key_offset;
        p.best_score = as_ptr<void>(best_score);
        p.best_index = as_ptr<int64_t>(best_index);
        p.check_queries = check_queries;
        p.check_keys = check_keys;
        p.nonfinite_rows = as_ptr<int64_t>(nonfinite_rows);
        p.workspace = as_ptr<void>(workspace);
        p.workspace_bytes = workspace_bytes;
        launch(p, &glann::nn_argmin_cpu, GLANN_CUDA_ENTRY(glann::nn_argmin_cuda));
      },
      py::arg("dtype"), py::arg("queries"), py::arg("n_queries"), py::arg("dim"), py::arg("queries_strides"),
      py::arg("keys"), py::arg("n_keys"), py::arg("keys_strides"), py::arg("key_offset"), py::arg("best_score"),
      py::arg("best_index"), py::arg("check_queries"), py::arg("check_keys"), py::arg("nonfinite_rows"),
      py::arg("workspace"), py::arg("workspace_bytes"), py::arg("exec"),
      "Folds the keys into the running best (score ||k||^2 - 2 q.k, global index) of every query row; "
      "NaN/Inf in checked rows: CPU StatusError NON_FINITE (input 0 queries, 1 keys), CUDA the int64[4] at "
      "nonfinite_rows lowered (NaN/Inf rows of queries and keys, then rows whose squared norm is too large; "
      "see csrc/nn_argmin/nn_argmin.h).");
  m.def(
      "nn_argmin_merge",
      [](int score_dtype, std::uintptr_t score, std::uintptr_t index, int64_t n_queries, int64_t key_offset,
         std::uintptr_t best_score, std::uintptr_t best_index, const ExecArgs& exec) {
        glann::NnArgminMergeParams p;
        p.exec = to_exec(exec);
        p.score_dtype = as_dtype(score_dtype);
        p.n_queries = n_queries;
        p.score = as_ptr<const void>(score);
        p.index = as_ptr<const int64_t>(index);
        p.key_offset = key_offset;
        p.best_score = as_ptr<void>(best_score);
        p.best_index = as_ptr<int64_t>(best_index);
        launch(p, &glann::nn_argmin_merge_cpu, GLANN_CUDA_ENTRY(glann::nn_argmin_merge_cuda));
      },
      py::arg("score_dtype"), py::arg("score"), py::arg("index"), py::arg("n_queries"), py::arg("key_offset"),
      py::arg("best_score"), py::arg("best_index"), py::arg("exec"),
      "Folds one candidate (score, index + key_offset) per query row into the running best, by the same rule.");
}

}  // namespace glann_py

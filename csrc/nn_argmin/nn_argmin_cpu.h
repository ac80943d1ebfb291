// The CPU kernel table of nn_argmin: filled by every SIMD copy (nn_argmin_cpu_isa.h), picked by
// nn_argmin_cpu.cpp (the scheme: common/cpu_dispatch.h).
#pragma once
#include <cstdint>

#include "common/cpu_dispatch.h"
#include "nn_argmin/nn_argmin.h"

namespace glann {
namespace nn_cpu {

// The kernels of one element type T (float: float32 inputs, double: float64 inputs). Scores are
// ||k||^2 - 2 q.k, accumulated from ||k||^2 with the queries packed doubled (nn_argmin_cpu_isa.h).
template <typename T>
struct TypedKernels {
  int panel_keys;  // keys per packed panel (NR)
  int micro_rows;  // query rows per micro-tile (MR)
  // Packs keys [k0, k0 + nk) into panels with their squared norms. Returns the lowest key index
  // (k0-based, like k0) holding NaN or Inf, or -1.
  int64_t (*pack_block)(const NnArgminParams& p, int64_t k0, int64_t nk, T* buf);
  // Packs query rows [r0, r1), doubled, as micro-tiles. With `check`, returns the lowest row holding NaN or Inf
  // (else, and without `check`, -1).
  int64_t (*pack_queries)(const NnArgminParams& p, int64_t r0, int64_t r1, T* qbuf, bool check);
  // Lowers (best_score, best_index)[r0, r1) where a key of the packed block scores strictly better.
  void (*scan_block)(const NnArgminParams& p, const T* buf, int64_t k0, int64_t nk, int64_t r0, int64_t r1,
                     const T* qbuf, T* best_score, int64_t* best_index);
};

struct Kernels {
  const char* name;
  TypedKernels<float> f32;
  TypedKernels<double> f64;
};

GLANN_DECLARE_ISA_COPIES(Kernels)

}  // namespace nn_cpu
}  // namespace glann

// The CPU kernel table of nn_argmin: filled by every SIMD copy (nn_argmin_cpu_isa.h), picked by
// nn_argmin_cpu.cpp (the scheme: common/cpu_dispatch.h).
#pragma once
#include <cstdint>

#include "common/cpu_dispatch.h"
#include "nn_argmin/nn_argmin.h"

namespace glann {
namespace nn_cpu {

struct Kernels {
  const char* name;
  int panel_keys;  // keys per packed panel (NR)
  int micro_rows;  // query rows per micro-tile (MR)
  // Packs keys [k0, k0 + nk) into panels with their squared norms.
  void (*pack_block)(const NnArgminParams& p, int64_t k0, int64_t nk, float* buf);
  // Packs query rows [r0, r1) as micro-tiles.
  void (*pack_queries)(const NnArgminParams& p, int64_t r0, int64_t r1, float* qbuf);
  // Lowers (best_score, best_index)[r0, r1) where a key of the packed block scores strictly better.
  void (*scan_block)(const NnArgminParams& p, const float* buf, int64_t k0, int64_t nk, int64_t r0, int64_t r1,
                     const float* qbuf, float* best_score, int64_t* best_index);
};

GLANN_DECLARE_ISA_COPIES(Kernels)

}  // namespace nn_cpu
}  // namespace glann

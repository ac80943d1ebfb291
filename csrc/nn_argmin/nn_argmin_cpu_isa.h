// The CPU micro-kernel of nn_argmin, written once with GCC/Clang vector extensions and compiled once
// per SIMD level: each nn_argmin_cpu_<isa>.cpp defines GLANN_ISA (baseline, avx2, avx512) and includes
// this file (the scheme and its no-shared-code rule: common/cpu_dispatch.h). The vector width and the
// micro-tile follow the flags the copy is compiled with; nn_argmin_cpu.cpp picks a copy at run time.
//
// Layout of one packed key block (caller's workspace, 64-byte aligned):
//   panels[p][d][NR]  the keys of panel p transposed, NR = 2 vectors of keys per panel
//   norms[p][NR]      ||k||^2 of each key; +inf for padding lanes past the block's end
// Micro-tile: MR query rows x NR keys accumulate in 2*MR vector registers over d; the epilogue turns
// them into scores ||k||^2 - 2 q.k and keeps a per-lane running minimum (value, index). The N x M
// matrix never exists; a lane keeps the first minimum it sees, and lanes are reduced lowest-index-first.
#include <cstddef>
#include <cstdint>
#include <utility>  // std::index_sequence (types only, no code)

#include "nn_argmin/nn_argmin.h"
#include "nn_argmin/nn_argmin_cpu.h"
#include "nn_argmin/nn_argmin_math.h"

#ifndef GLANN_ISA
#error "define GLANN_ISA (the copy's namespace) before including nn_argmin_cpu_isa.h"
#endif

// Vector bytes and query rows per micro-tile of this copy.
#if defined(__AVX512F__)
#define GLANN_NN_VEC_BYTES 64
#define GLANN_NN_MR 12
#elif defined(__AVX2__)
#define GLANN_NN_VEC_BYTES 32
#define GLANN_NN_MR 6
#else
#define GLANN_NN_VEC_BYTES 16
#define GLANN_NN_MR 6
#endif

namespace glann {
namespace nn_cpu {
namespace GLANN_ISA {

namespace {

constexpr int kW = GLANN_NN_VEC_BYTES / 4;  // floats per vector
constexpr int kNV = 2;                      // vectors of keys per panel
constexpr int kNR = kW * kNV;               // keys per panel
constexpr int kMR = GLANN_NN_MR;            // query rows per micro-tile

typedef float vf __attribute__((vector_size(GLANN_NN_VEC_BYTES)));
typedef int32_t vi __attribute__((vector_size(GLANN_NN_VEC_BYTES)));

template <std::size_t... I>
inline vf splat_impl(float x, std::index_sequence<I...>) {
  return vf{((void)I, x)...};
}
inline vf splat(float x) { return splat_impl(x, std::make_index_sequence<kW>{}); }

template <std::size_t... I>
inline vi iota_impl(int32_t base, std::index_sequence<I...>) {
  return vi{static_cast<int32_t>(base + static_cast<int32_t>(I))...};
}
inline vi iota(int32_t base) { return iota_impl(base, std::make_index_sequence<kW>{}); }

inline vf load(const float* p) { return *reinterpret_cast<const vf*>(p); }  // p is vector-aligned
inline void store(float* p, vf v) { *reinterpret_cast<vf*>(p) = v; }

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

inline const float* key_row(const NnArgminParams& p, int64_t k) {
  return static_cast<const float*>(p.keys) + k * p.keys_strides[0];
}

// acc[i][v] += q[i][k] * keys[k][v*W .. v*W+W) for k in [0, d). q is packed [d][MR].
inline void micro_tile(const float* __restrict qp, const float* __restrict kp, int64_t d, vf (&acc)[kMR][kNV]) {
#pragma GCC unroll 32
  for (int i = 0; i < kMR; ++i) {
    acc[i][0] = splat(0.0f);
    acc[i][1] = splat(0.0f);
  }
  for (int64_t k = 0; k < d; ++k) {
    const vf k0 = load(kp), k1 = load(kp + kW);
#pragma GCC unroll 32
    for (int i = 0; i < kMR; ++i) {
      const vf b = splat(qp[i]);
      acc[i][0] += b * k0;
      acc[i][1] += b * k1;
    }
    qp += kMR;
    kp += kNR;
  }
}

}  // namespace

// Packs keys [k0, k0 + nk) into panels and computes their squared norms.
void pack_block(const NnArgminParams& p, int64_t k0, int64_t nk, float* buf) {
  const int64_t d = p.dim, n_panels = (nk + kNR - 1) / kNR;
  float* norms = buf + n_panels * d * kNR;
  for (int64_t pi = 0; pi < n_panels; ++pi) {
    float* panel = buf + pi * d * kNR;
    for (int j = 0; j < kNR; ++j) {
      const int64_t key = pi * kNR + j;
      if (key < nk) {
        const float* src = key_row(p, k0 + key);
        if (p.keys_strides[1] == 1) {
          for (int64_t c = 0; c < d; ++c) panel[c * kNR + j] = src[c];
        } else {
          for (int64_t c = 0; c < d; ++c) panel[c * kNR + j] = src[c * p.keys_strides[1]];
        }
      } else {
        for (int64_t c = 0; c < d; ++c) panel[c * kNR + j] = 0.0f;
      }
    }
    // Norms in lane order, the same instruction sequence for every key (so equal keys tie exactly).
    vf n0 = splat(0.0f), n1 = splat(0.0f);
    for (int64_t c = 0; c < d; ++c) {
      const vf a = load(panel + c * kNR), b = load(panel + c * kNR + kW);
      n0 += a * a;
      n1 += b * b;
    }
    store(norms + pi * kNR, n0);
    store(norms + pi * kNR + kW, n1);
    for (int j = 0; j < kNR; ++j)
      if (pi * kNR + j >= nk) norms[pi * kNR + j] = __builtin_inff();
  }
}

// Packs query rows [r0, r1) as micro-tiles [tile][d][MR]; the last tile repeats its last row
// (those results are discarded). Done once per task, so a tile is not re-packed for every key block.
void pack_queries(const NnArgminParams& p, int64_t r0, int64_t r1, float* qbuf) {
  const int64_t d = p.dim;
  const float* q = static_cast<const float*>(p.queries);
  for (int64_t r = r0; r < r1; r += kMR) {
    const int64_t rows = imin(kMR, r1 - r);
    float* tile = qbuf + ((r - r0) / kMR) * d * kMR;
    for (int i = 0; i < kMR; ++i) {
      const float* src = q + (r + (i < rows ? i : rows - 1)) * p.queries_strides[0];
      if (p.queries_strides[1] == 1) {
        for (int64_t c = 0; c < d; ++c) tile[c * kMR + i] = src[c];
      } else {
        for (int64_t c = 0; c < d; ++c) tile[c * kMR + i] = src[c * p.queries_strides[1]];
      }
    }
  }
}

// For query rows [r0, r1) (packed by pack_queries into qbuf): scans the packed block of nk keys
// starting at key k0 and lowers (best_score, best_index) where a key scores strictly better.
void scan_block(const NnArgminParams& p, const float* buf, int64_t k0, int64_t nk, int64_t r0, int64_t r1,
                const float* qbuf, float* best_score, int64_t* best_index) {
  const int64_t d = p.dim, n_panels = (nk + kNR - 1) / kNR;
  const float* norms = buf + n_panels * d * kNR;
  const vf minus_two = splat(-2.0f);

  for (int64_t r = r0; r < r1; r += kMR) {
    const int rows = static_cast<int>(imin(kMR, r1 - r));
    const float* tile = qbuf + ((r - r0) / kMR) * d * kMR;
    vf lane_best[kMR][kNV];
    vi lane_index[kMR][kNV];
    for (int i = 0; i < kMR; ++i)
      for (int v = 0; v < kNV; ++v) {
        lane_best[i][v] = splat(__builtin_inff());
        lane_index[i][v] = iota(0);
      }

    for (int64_t pi = 0; pi < n_panels; ++pi) {
      vf acc[kMR][kNV];
      micro_tile(tile, buf + pi * d * kNR, d, acc);
      const vf kn0 = load(norms + pi * kNR), kn1 = load(norms + pi * kNR + kW);
      const vi id0 = iota(static_cast<int32_t>(pi * kNR)), id1 = iota(static_cast<int32_t>(pi * kNR + kW));
#pragma GCC unroll 32
      for (int i = 0; i < kMR; ++i) {
        const vf s0 = acc[i][0] * minus_two + kn0;
        const vf s1 = acc[i][1] * minus_two + kn1;
        const vi m0 = s0 < lane_best[i][0];
        const vi m1 = s1 < lane_best[i][1];
        lane_best[i][0] = m0 ? s0 : lane_best[i][0];
        lane_best[i][1] = m1 ? s1 : lane_best[i][1];
        lane_index[i][0] = m0 ? id0 : lane_index[i][0];
        lane_index[i][1] = m1 ? id1 : lane_index[i][1];
      }
    }

    for (int i = 0; i < rows; ++i) {
      float bv = __builtin_inff();
      int32_t bi = 0;
#pragma GCC unroll 32  // the lanes live in registers
      for (int v = 0; v < kNV; ++v)
#pragma GCC unroll 32
        for (int l = 0; l < kW; ++l) {
          const float s = lane_best[i][v][l];
          const int32_t idx = lane_index[i][v][l];
          if (nn::better(s, idx, bv, bi)) {
            bv = s;
            bi = idx;
          }
        }
      const int64_t row = r + i;
      if (bv < best_score[row]) {
        best_score[row] = bv;
        best_index[row] = k0 + bi;
      }
    }
  }
}

const Kernels kKernels = {GLANN_ISA_NAME, kNR, kMR, pack_block, pack_queries, scan_block};

}  // namespace GLANN_ISA
}  // namespace nn_cpu
}  // namespace glann

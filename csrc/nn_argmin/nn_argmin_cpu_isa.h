// The CPU micro-kernel of nn_argmin, written once with GCC/Clang vector extensions for float and double
// and compiled once per SIMD level: each nn_argmin_cpu_<isa>.cpp defines GLANN_ISA (baseline, avx2,
// avx512) and includes this file (the scheme and its no-shared-code rule: common/cpu_dispatch.h). The
// vector width and the micro-tile follow the flags the copy is compiled with; nn_argmin_cpu.cpp picks a
// copy at run time.
//
// Layout of one packed key block (caller's workspace, 64-byte aligned):
//   panels[p][d][NR]  the keys of panel p transposed, NR = 2 vectors of keys per panel
//   norms[p][NR]      ||k||^2 of each key; +inf for padding lanes past the block's end
// Query tiles are packed doubled (2 q: exact, and within the norm bound it cannot overflow).
// Micro-tile: MR query rows x NR keys in MR*NV vector registers, which start at ||k||^2 and take
// -(2 q[c]) * k[c] for c = 0 .. d-1 (fused negative multiply-adds where the ISA has them): the score
// s(q, k) = ||k||^2 - 2 q.k, by the same instruction sequence for every pair. (Halved scores,
// ||k||^2 / 2 - q.k, would save nothing and round where the half is subnormal: 0.3.9 kept them, and keys
// that near a query could tie.) The epilogue compares each row's minimum over the tile's lanes with that
// row's running best (one compare per vector, one branch per micro-tile); only a strictly lower lane takes
// the slow path, which scans the lanes in key order, so ties keep the lowest index.
// The N x M matrix never exists.
#include <cstddef>
#include <cstdint>
#include <type_traits>  // std::conditional_t (types only, no code)
#include <utility>      // std::index_sequence (types only, no code)

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "nn_argmin/nn_argmin.h"
#include "nn_argmin/nn_argmin_cpu.h"
#include "nn_argmin/nn_argmin_math.h"  // GLANN_HD: internal linkage in every copy

#ifndef GLANN_ISA
#error "define GLANN_ISA (the copy's namespace) before including nn_argmin_cpu_isa.h"
#endif

// Vector bytes, query rows (MR) and key vectors (NV) per micro-tile of this copy: MR * NV accumulators,
// NV key vectors and one broadcast fit the register file. AVX2 takes 6 x 2 vectors (6 x 16 floats, the shape
// of BLIS's Haswell and Zen sgemm kernels): 6 broadcasts and 2 vector loads per 12 FMAs, so each step reads
// 64 key bytes where 4 x 3 reads 96. Whole key panels do not fit L1 at large D (50 KB at D=784) and stream
// from L2, so the smaller stream wins there: on an AMD EPYC Zen 4 capped to this copy
// (GLANN_EXT_CPU_ISA=avx2), one thread, thread CPU time, four interleaved runs: 102.5-104.9 GFLOP/s against
// 94.8-100.6 for 4 x 3 at D=784 (89-91% of the core's peak against 82-87%), 103.2-104.6 against 100.3-103.2
// at D=256, level at D=64 and in float64; bit-identical results (every pair's score is the same instruction
// sequence whatever the tile). An earlier measurement on a family-17h EPYC had 4 x 3 ahead by 2-3%.
// AVX-512 takes 8 x 3 rather than 12 x 2 for the same reason (8 broadcasts and 3 loads per 24 FMAs instead
// of 12 and 2): on an AMD EPYC Zen 4 (one zmm FMA per cycle), 2 threads, best of 5, three interleaved runs:
// 205-207 GFLOP/s against 191-202 at D=784 (89% of the peak), 208-209 against 207-208 at D=64.
#if defined(__AVX512F__)
#define GLANN_NN_VEC_BYTES 64
#define GLANN_NN_MR 8
#define GLANN_NN_NV 3
#elif defined(__AVX2__)
#define GLANN_NN_VEC_BYTES 32
#define GLANN_NN_MR 6
#define GLANN_NN_NV 2
#else
#define GLANN_NN_VEC_BYTES 16
#define GLANN_NN_MR 6
#define GLANN_NN_NV 2
#endif

namespace glann {
namespace nn_cpu {
namespace GLANN_ISA {

namespace {

constexpr int kNV = GLANN_NN_NV;  // vectors of keys per panel
constexpr int kMR = GLANN_NN_MR;  // query rows per micro-tile

// Vector types of element T: V holds kW values, M the same number of int lanes (comparison masks).
template <typename T>
struct Simd {
  static constexpr int kW = GLANN_NN_VEC_BYTES / int(sizeof(T));
  static constexpr int kNR = kW * kNV;  // keys per panel
  typedef T V __attribute__((vector_size(GLANN_NN_VEC_BYTES)));
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> Lane;
  typedef Lane M __attribute__((vector_size(GLANN_NN_VEC_BYTES)));
};

template <typename V, typename T, std::size_t... I>
inline V splat_impl(T x, std::index_sequence<I...>) {
  return V{((void)I, x)...};
}
template <typename T>
inline typename Simd<T>::V splat(T x) {
  return splat_impl<typename Simd<T>::V>(x, std::make_index_sequence<Simd<T>::kW>{});
}

template <typename T>
inline typename Simd<T>::V load(const T* p) {  // p is vector-aligned
  return *reinterpret_cast<const typename Simd<T>::V*>(p);
}
template <typename T>
inline void store(T* p, typename Simd<T>::V v) {
  *reinterpret_cast<typename Simd<T>::V*>(p) = v;
}

// Whether any lane of a comparison mask is set. (GCC and Clang cast between vector types of one size.)
template <typename M>
inline bool any_lane(M m) {
#if GLANN_NN_VEC_BYTES == 64
  return _mm512_test_epi32_mask((__m512i)m, (__m512i)m) != 0;
#elif GLANN_NN_VEC_BYTES == 32
  return !_mm256_testz_si256((__m256i)m, (__m256i)m);
#elif defined(__SSE2__)
  return _mm_movemask_epi8((__m128i)m) != 0;
#else
  bool any = false;
  for (std::size_t l = 0; l < sizeof(M) / sizeof(m[0]); ++l) any |= m[l] != 0;
  return any;
#endif
}

template <typename T>
inline bool not_finite(T x) {
  return !(x - x == T(0));  // NaN and +-Inf give NaN
}

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

template <typename T>
inline const T* key_row(const NnArgminParams& p, int64_t k) {
  return static_cast<const T*>(p.keys) + k * p.keys_strides[0];
}

// acc[i][v] = norms[v] - sum_k q2[i][k] * keys[k][v*W .. v*W+W) for k in [0, d). q2 = 2 q, packed [d][MR].
template <typename T>
inline void micro_tile(const T* __restrict qp, const T* __restrict kp, int64_t d, const T* norms,
                       typename Simd<T>::V (&acc)[kMR][kNV]) {
  using V = typename Simd<T>::V;
  constexpr int kW = Simd<T>::kW, kNR = Simd<T>::kNR;
#pragma GCC unroll 32
  for (int i = 0; i < kMR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) acc[i][v] = load(norms + v * kW);
  for (int64_t k = 0; k < d; ++k) {
    V key[kNV];
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) key[v] = load(kp + v * kW);
#pragma GCC unroll 32
    for (int i = 0; i < kMR; ++i) {
      const V b = splat(qp[i]);
#pragma GCC unroll 4
      for (int v = 0; v < kNV; ++v) acc[i][v] -= b * key[v];
    }
    qp += kMR;
    kp += kNR;
  }
}

// Packs keys [k0, k0 + nk) into panels and computes their squared norms.
template <typename T>
int64_t pack_block_t(const NnArgminParams& p, int64_t k0, int64_t nk, T* buf) {
  using V = typename Simd<T>::V;
  constexpr int kW = Simd<T>::kW, kNR = Simd<T>::kNR;
  const int64_t d = p.dim, n_panels = (nk + kNR - 1) / kNR;
  T* norms = buf + n_panels * d * kNR;
  int64_t first_bad = -1;
  const T kMaxNorm = nn::max_squared_norm<T>();
  constexpr int64_t kColumns = 64;  // columns per pass: the pass's part of a panel (6-12 KB) stays in L1
  for (int64_t pi = 0; pi < n_panels; ++pi) {
    T* panel = buf + pi * d * kNR;
    // Norms in lane order over c, the same instruction sequence for every key (so equal keys tie exactly),
    // each pass's columns while they are in L1.
    V norm[kNV];
    for (int v = 0; v < kNV; ++v) norm[v] = splat(T(0));
    for (int64_t c0 = 0; c0 < d; c0 += kColumns) {
      const int64_t c1 = imin(d, c0 + kColumns);
      for (int j = 0; j < kNR; ++j) {
        const int64_t key = pi * kNR + j;
        if (key < nk) {
          const T* src = key_row<T>(p, k0 + key);
          if (p.keys_strides[1] == 1) {
            for (int64_t c = c0; c < c1; ++c) panel[c * kNR + j] = src[c];
          } else {
            for (int64_t c = c0; c < c1; ++c) panel[c * kNR + j] = src[c * p.keys_strides[1]];
          }
        } else {
          for (int64_t c = c0; c < c1; ++c) panel[c * kNR + j] = T(0);
        }
      }
      for (int64_t c = c0; c < c1; ++c)
        for (int v = 0; v < kNV; ++v) {
          const V a = load(panel + c * kNR + v * kW);
          norm[v] += a * a;
        }
    }
    for (int v = 0; v < kNV; ++v) store(norms + pi * kNR + v * kW, norm[v]);
    for (int j = 0; j < kNR; ++j) {
      const int64_t key = pi * kNR + j;
      if (key >= nk) {
        norms[pi * kNR + j] = __builtin_inf();
      } else if (first_bad < 0 && !(norms[pi * kNR + j] <= kMaxNorm)) {
        // NaN/Inf in the key, or finite values whose squared norm is above max/4: the score ||k||^2 - 2 q.k
        // could overflow (with the queries in the same bound, checked by the caller, |s| <= 3/4 max), and
        // a key scored +inf or NaN never wins. Both are reported; the caller tells them apart by looking at the row.
        first_bad = k0 + key;
      }
    }
  }
  return first_bad;
}

// Packs query rows [r0, r1), doubled, as micro-tiles [tile][d][MR]; the last tile repeats its last row
// (those results are discarded). Done once per task, so a tile is not re-packed for every key block. The
// check reads the row as given: 2 q of a finite q within the norm bound is finite and exact.
template <typename T>
int64_t pack_queries_t(const NnArgminParams& p, int64_t r0, int64_t r1, T* qbuf, bool check) {
  const int64_t d = p.dim;
  const T* q = static_cast<const T*>(p.queries);
  int64_t first_bad = -1;
  for (int64_t r = r0; r < r1; r += kMR) {
    const int64_t rows = imin(kMR, r1 - r);
    T* tile = qbuf + ((r - r0) / kMR) * d * kMR;
    for (int i = 0; i < kMR; ++i) {
      const T* src = q + (r + (i < rows ? i : rows - 1)) * p.queries_strides[0];
      T zero = T(0);  // stays 0 for a finite row; NaN/Inf times 0 is NaN
      if (p.queries_strides[1] == 1) {
        for (int64_t c = 0; c < d; ++c) {
          tile[c * kMR + i] = src[c] * T(2);
          zero += src[c] * T(0);
        }
      } else {
        for (int64_t c = 0; c < d; ++c) {
          const T v = src[c * p.queries_strides[1]];
          tile[c * kMR + i] = v * T(2);
          zero += v * T(0);
        }
      }
      if (check && first_bad < 0 && i < rows && zero != T(0)) first_bad = r + i;
    }
  }
  return first_bad;
}

// For query rows [r0, r1) (packed by pack_queries into qbuf): scans the packed block of nk keys
// starting at key k0 and lowers (best_score, best_index) where a key scores strictly better.
template <typename T>
void scan_block_t(const NnArgminParams& p, const T* buf, int64_t k0, int64_t nk, int64_t r0, int64_t r1, const T* qbuf,
                  T* best_score, int64_t* best_index) {
  using V = typename Simd<T>::V;
  using M = typename Simd<T>::M;
  constexpr int kW = Simd<T>::kW, kNR = Simd<T>::kNR;
  const int64_t d = p.dim, n_panels = (nk + kNR - 1) / kNR;
  const T* norms = buf + n_panels * d * kNR;

  for (int64_t r = r0; r < r1; r += kMR) {
    const int rows = static_cast<int>(imin(kMR, r1 - r));
    const T* tile = qbuf + ((r - r0) / kMR) * d * kMR;
    T best[kMR];
    int64_t best_at[kMR];
    V bar[kMR];  // best[i] in every lane; -inf for the repeated rows of a partial tile (never taken)
    for (int i = 0; i < kMR; ++i) {
      best[i] = i < rows ? best_score[r + i] : -T(__builtin_inf());
      best_at[i] = -1;
      bar[i] = splat(best[i]);
    }

    for (int64_t pi = 0; pi < n_panels; ++pi) {
      V acc[kMR][kNV];
      micro_tile<T>(tile, buf + pi * d * kNR, d, norms + pi * kNR, acc);
      M lower = M{};
#pragma GCC unroll 32
      for (int i = 0; i < kMR; ++i) {
        V low = acc[i][0];
#pragma GCC unroll 4
        for (int v = 1; v < kNV; ++v) low = acc[i][v] < low ? acc[i][v] : low;
        lower |= low < bar[i];
      }
      if (__builtin_expect(any_lane(lower), 0)) {
        // Slow path: some row has a strictly lower score in this panel. Lanes in key order.
        for (int i = 0; i < rows; ++i) {
          for (int v = 0; v < kNV; ++v)
            for (int l = 0; l < kW; ++l) {
              const T s = acc[i][v][l];
              if (s < best[i]) {
                best[i] = s;
                best_at[i] = k0 + pi * kNR + v * kW + l;
              }
            }
          bar[i] = splat(best[i]);
        }
      }
    }

    for (int i = 0; i < rows; ++i)
      if (best_at[i] >= 0) {
        best_score[r + i] = best[i];
        best_index[r + i] = best_at[i];
      }
  }
}

}  // namespace

int64_t pack_block_f32(const NnArgminParams& p, int64_t k0, int64_t nk, float* buf) {
  return pack_block_t<float>(p, k0, nk, buf);
}
int64_t pack_block_f64(const NnArgminParams& p, int64_t k0, int64_t nk, double* buf) {
  return pack_block_t<double>(p, k0, nk, buf);
}
int64_t pack_queries_f32(const NnArgminParams& p, int64_t r0, int64_t r1, float* qbuf, bool check) {
  return pack_queries_t<float>(p, r0, r1, qbuf, check);
}
int64_t pack_queries_f64(const NnArgminParams& p, int64_t r0, int64_t r1, double* qbuf, bool check) {
  return pack_queries_t<double>(p, r0, r1, qbuf, check);
}
void scan_block_f32(const NnArgminParams& p, const float* buf, int64_t k0, int64_t nk, int64_t r0, int64_t r1,
                    const float* qbuf, float* best_score, int64_t* best_index) {
  scan_block_t<float>(p, buf, k0, nk, r0, r1, qbuf, best_score, best_index);
}
void scan_block_f64(const NnArgminParams& p, const double* buf, int64_t k0, int64_t nk, int64_t r0, int64_t r1,
                    const double* qbuf, double* best_score, int64_t* best_index) {
  scan_block_t<double>(p, buf, k0, nk, r0, r1, qbuf, best_score, best_index);
}

const Kernels kKernels = {
    GLANN_ISA_NAME,
    {Simd<float>::kNR, kMR, pack_block_f32, pack_queries_f32, scan_block_f32},
    {Simd<double>::kNR, kMR, pack_block_f64, pack_queries_f64, scan_block_f64},
};

}  // namespace GLANN_ISA
}  // namespace nn_cpu
}  // namespace glann

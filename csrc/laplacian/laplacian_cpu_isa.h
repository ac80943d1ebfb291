// Row-streaming CPU kernels of the Laplacian-pyramid loss, compiled once per SIMD level: each
// laplacian_cpu_<isa>.cpp defines GLANN_ISA (baseline, avx2, avx512) and includes this file (the scheme
// and its no-shared-code rule: common/cpu_dispatch.h); laplacian_cpu.cpp picks a copy at run time.
//
// Layout: one task = a group of kLanes<T> image planes (32 bytes: 8 float or 4 double), interleaved
// so that "element" k of a row is kLanes values, one per plane. Every inner loop then runs over whole
// SIMD vectors whatever the image size (a 28-pixel row, or the 1-pixel rows of the coarse levels,
// would otherwise run mostly in scalar loop tails), and the per-row bookkeeping (reflections, taps)
// is shared by all planes of the group. The group's pyramid stays in a per-thread scratch (L2-sized
// for the usual images). Vertical operators combine whole rows; horizontal ones work on one row
// through a reflect-padded line buffer so their inner loops are branch-free.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>  // std::conditional_t (types only, no code)

#if defined(__SSE2__)
#include <immintrin.h>  // the 8x8 / 4x4 transposes and the sign packs, in the AVX copies only
#endif

#include "common/parallel.h"
#include "laplacian/laplacian.h"
#include "laplacian/laplacian_cpu.h"
#include "laplacian/laplacian_math.h"

#ifndef GLANN_ISA
#error "define GLANN_ISA (the copy's namespace) before including laplacian_cpu_isa.h"
#endif

// The baseline copy has no 32-byte registers: GCC warns that passing the element vectors (El below) by
// value would change an ABI. They only pass between inline functions of this copy, never across it.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

namespace glann {
namespace lap_cpu {
namespace GLANN_ISA {

using namespace lap;  // the per-pixel math shared with CUDA (internal linkage on the host: GLANN_HD)

constexpr double kW0 = 0.0625, kW1 = 0.25, kW2 = 0.375;

template <typename T>
constexpr int kLanes = kGroupBytes / int(sizeof(T));

// ---- horizontal (within one row; element k = p[k*V .. k*V+V)) -------------------------------------

template <typename T, int V>
inline void copy_el(const T* src, T* dst) {
  std::memcpy(dst, src, sizeof(T) * V);  // one 32-byte move
}

// One element (the V lanes of a group) as a 32-byte vector: loads and stores through it read every
// input before writing, so the compiler need not prove that outputs and inputs do not overlap (it did
// not, and fell back to scalar code).
template <typename T, int V>
struct El {
  typedef T Vec __attribute__((vector_size(sizeof(T) * V)));
  static Vec load(const T* p) {
    Vec v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static void store(T* p, const Vec& v) { std::memcpy(p, &v, sizeof(v)); }
};

// out = w0 (s0 + s4) + w1 (s1 + s3) + w2 s2 over five consecutive elements starting at s.
template <typename T, int V>
inline void blur5(const T* s, T w0, T w1, T w2, T* out) {
  using E = El<T, V>;
  const auto s0 = E::load(s), s1 = E::load(s + V), s2 = E::load(s + 2 * V), s3 = E::load(s + 3 * V);
  const auto s4 = E::load(s + 4 * V);
  E::store(out, w0 * (s0 + s4) + w1 * (s1 + s3) + w2 * s2);
}

// out_even = w0 (s[-1] + s[1]) + w2 s[0] and out_odd = w1 (s[0] + s[1]): the even and odd outputs of a
// 5-tap blur of a zero-inserted line, from the coarse elements around s (the polyphase form: no zeros).
template <typename T, int V>
inline void blur_even_odd(const T* s, T w0, T w1, T w2, T* out_even, T* out_odd) {
  using E = El<T, V>;
  const auto a = E::load(s - V), b = E::load(s), c = E::load(s + V);
  E::store(out_even, w0 * (a + c) + w2 * b);
  E::store(out_odd, w1 * (b + c));
}

// Pad positions 0, 1 and n+2, n+3 of a reflect-101 padded line whose interior is pad[2 .. n+2).
template <typename T, int V>
inline void fill_pad_borders(T* pad, int64_t n) {
  const T* z = pad + 2 * V;
  for (int64_t p = 0; p < 2; ++p) copy_el<T, V>(z + reflect101(p - 2, n) * V, pad + p * V);
  for (int64_t p = n + 2; p < n + 4; ++p) copy_el<T, V>(z + reflect101(p - 2, n) * V, pad + p * V);
}

// out[k] = sum_a W[a] in[r(2k + a - 2)], k < ceil(n/2).  Interior outputs read `in` directly; the (at most
// two) outputs whose taps cross a border gather their five taps first.
template <typename T, int V>
void down_row(const T* in, int64_t n, T* out) {
  const int64_t m = (n + 1) / 2;
  const auto edge = [&](int64_t k) {
    T taps[5 * V];
    for (int a = 0; a < 5; ++a) copy_el<T, V>(in + reflect101(2 * k + a - 2, n) * V, taps + a * V);
    blur5<T, V>(taps, T(kW0), T(kW1), T(kW2), out + k * V);
  };
  const int64_t last_inner = (n - 3) / 2;  // 2k + 2 <= n - 1
  edge(0);
  for (int64_t k = 1; k <= last_inner; ++k) blur5<T, V>(in + (2 * k - 2) * V, T(kW0), T(kW1), T(kW2), out + k * V);
  for (int64_t k = last_inner < 1 ? 1 : last_inner + 1; k < m; ++k) edge(k);
}

// out[i] = 2 sum_a W[a] z[r(i + a - 2)], z = zero-insert of in (m) on the fine grid (n).  pad: n + 4.
// For n >= 2 reflect-101 keeps the parity of a fine index, so the odd taps read zeros and the even ones
// coarse elements: the coarse line with one element of margin each side (the zero-inserted line's
// images of the fine positions -2 and 2m) gives every output in the polyphase form.
template <typename T, int V>
void up_row(const T* in, int64_t n, T* out, T* pad) {
  const T w0 = T(2 * kW0), w1 = T(2 * kW1), w2 = T(2 * kW2);
  if (n >= 2) {
    const int64_t m = (n + 1) / 2;
    T* cp = pad + V;
    std::memcpy(cp, in, sizeof(T) * V * m);
    copy_el<T, V>(in + (reflect101(-2, n) >> 1) * V, cp - V);
    copy_el<T, V>(in + (reflect101(2 * m, n) >> 1) * V, cp + m * V);
    const int64_t pairs = n / 2;  // (2k, 2k + 1) both inside
    for (int64_t k = 0; k < pairs; ++k)
      blur_even_odd<T, V>(cp + k * V, w0, w1, w2, out + 2 * k * V, out + (2 * k + 1) * V);
    if (n & 1) {  // the last, even, output
      T odd[V];
      blur_even_odd<T, V>(cp + pairs * V, w0, w1, w2, out + 2 * pairs * V, odd);
    }
    return;
  }
  T* z = pad + 2 * V;  // n == 1: every index reflects to 0
  for (int64_t k = 0; k < n; ++k)
    for (int v = 0; v < V; ++v) z[k * V + v] = (k & 1) ? T(0) : in[(k >> 1) * V + v];
  fill_pad_borders<T, V>(pad, n);
  for (int64_t i = 0; i < n; ++i) blur5<T, V>(pad + i * V, w0, w1, w2, out + i * V);
}

// out += scale * (C^T v)[p], (C^T v)[p] = sum_a W[a] v[p - a] for a pad position p (v: n elements, zero
// outside [0, n)). kZeroInserted: v is the zero-insert of the coarse line `src` on the fine grid of n
// (v[i] = src[i/2] for even i, else 0), read without materialising it; else v is `src` itself.
template <bool kZeroInserted, typename T, int V>
inline void add_valid_transpose_at(const T* src, int64_t n, int64_t p, T scale, T* out) {
  for (int a = 0; a < 5; ++a) {
    const int64_t i = p - a;
    if (i < 0 || i >= n || (kZeroInserted && (i & 1) != 0)) continue;
    const T w = scale * tap_weight<T>(a);
    const T* v = src + (kZeroInserted ? i >> 1 : i) * V;
    for (int l = 0; l < V; ++l) out[l] += w * v[l];
  }
}

inline void border_positions(int64_t n, int64_t out[4]) {
  out[0] = 0;
  out[1] = 1;
  out[2] = n + 2;
  out[3] = n + 3;
}

// out = B^T Z in (D^T along the row): fine n from coarse in (m = ceil(n/2)).  zz: n + 8 elements.
// out[i] = (C^T z)[i + 2] = sum_a W[a] z[i + 2 - a] with z = Z in (zero outside [0, n)): in the polyphase
// form out[2k] = w0 (in[k-1] + in[k+1]) + w2 in[k], out[2k+1] = w1 (in[k] + in[k+1]) over the coarse line
// with a zero margin each side; then the four border pad positions fold back through the reflection.
template <typename T, int V>
void down_adj_row(const T* in, int64_t n, T* out, T* zz) {
  const int64_t m = (n + 1) / 2;
  T* cz = zz + V;
  std::memset(zz, 0, sizeof(T) * V);
  std::memcpy(cz, in, sizeof(T) * V * m);
  std::memset(cz + m * V, 0, sizeof(T) * V);
  const int64_t pairs = n / 2;
  for (int64_t k = 0; k < pairs; ++k)
    blur_even_odd<T, V>(cz + k * V, T(kW0), T(kW1), T(kW2), out + 2 * k * V, out + (2 * k + 1) * V);
  if (n & 1) {
    T odd[V];
    blur_even_odd<T, V>(cz + pairs * V, T(kW0), T(kW1), T(kW2), out + 2 * pairs * V, odd);
  }
  int64_t border[4];
  border_positions(n, border);
  for (int b = 0; b < 4; ++b)
    add_valid_transpose_at<true, T, V>(in, n, border[b], T(1), out + reflect101(border[b] - 2, n) * V);
}

// out = 2 S B^T in (U^T along the row): coarse ceil(n/2) from fine in.  zz: n + 8 elements.
template <typename T, int V>
void up_adj_row(const T* in, int64_t n, T* out, T* zz) {
  std::memset(zz, 0, sizeof(T) * V * 4);
  std::memset(zz + (n + 4) * V, 0, sizeof(T) * V * 4);
  std::memcpy(zz + 4 * V, in, sizeof(T) * V * n);
  const int64_t m = (n + 1) / 2;
  for (int64_t q = 0; q < m; ++q) blur5<T, V>(zz + (2 * q + 2) * V, T(2 * kW0), T(2 * kW1), T(2 * kW2), out + q * V);
  int64_t border[4];
  border_positions(n, border);
  for (int b = 0; b < 4; ++b) {
    const int64_t t = reflect101(border[b] - 2, n);
    if ((t & 1) == 0) add_valid_transpose_at<false, T, V>(in, n, border[b], T(2), out + (t >> 1) * V);
  }
}

// ---- vertical (whole rows of len values) ---------------------------------------------------------

// out[c] = sum_t w[t] rows[t][c] (kAdd: out[c] += ...), in one pass for the usual tap counts (down: 5; up:
// 2 or 3; the adjoints: 2, 3 or 5). The rows never overlap out.
template <bool kAdd, typename T>
inline void put(T* out, T value) {
  if constexpr (kAdd)
    *out += value;
  else
    *out = value;
}

template <bool kAdd, typename T>
void combine_rows(const T* const* rows, const T* w, int count, int64_t len, T* __restrict__ out) {
  if (count == 2) {
    const T *r0 = rows[0], *r1 = rows[1];
    const T w0 = w[0], w1 = w[1];
    for (int64_t c = 0; c < len; ++c) put<kAdd>(out + c, w0 * r0[c] + w1 * r1[c]);
  } else if (count == 3) {
    const T *r0 = rows[0], *r1 = rows[1], *r2 = rows[2];
    const T w0 = w[0], w1 = w[1], w2 = w[2];
    for (int64_t c = 0; c < len; ++c) put<kAdd>(out + c, w0 * r0[c] + w1 * r1[c] + w2 * r2[c]);
  } else if (count == 5) {
    const T *r0 = rows[0], *r1 = rows[1], *r2 = rows[2], *r3 = rows[3], *r4 = rows[4];
    const T w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4];
    for (int64_t c = 0; c < len; ++c)
      put<kAdd>(out + c, w0 * r0[c] + w1 * r1[c] + w2 * r2[c] + w3 * r3[c] + w4 * r4[c]);
  } else {  // the borders of small levels (reflections fold taps together)
    for (int t = 0; t < count; ++t) {
      const T* r = rows[t];
      const T wt = w[t];
      if (t == 0 && !kAdd)
        for (int64_t c = 0; c < len; ++c) out[c] = wt * r[c];
      else
        for (int64_t c = 0; c < len; ++c) out[c] += wt * r[c];
    }
  }
}

// dst[i][v] = wt[v] * signs[i][v] for n elements. restrict: int8 may alias anything.
template <typename T, int V>
void scale_signs(const int8_t* __restrict__ signs, const T* wt, int64_t n, T* __restrict__ dst) {
  for (int64_t i = 0; i < n; ++i)
    for (int v = 0; v < V; ++v) dst[i * V + v] = wt[v] * T(signs[i * V + v]);
}

// One element of a row: the V lanes of a group as one vector (32 bytes), with int lanes of the same
// width for comparison masks and int8 lanes for the signs.
template <typename T, int V>
struct LaneVec {
  typedef T Vec __attribute__((vector_size(sizeof(T) * V)));
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> Int;
  typedef Int Mask __attribute__((vector_size(sizeof(T) * V)));
  typedef int8_t Signs __attribute__((vector_size(V)));
};

// The V int8 values of a mask of -1/0/+1 lanes (as int32 or int64).
template <typename T, int V>
inline void store_signs(const typename LaneVec<T, V>::Mask& s, int8_t* dst) {
#if defined(__AVX__)
  if constexpr (sizeof(T) == 4 && V == 8) {  // two saturating packs (int32 -> int16 -> int8)
    __m256i s32;
    std::memcpy(&s32, &s, sizeof(s32));
    const __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(s32), _mm256_extractf128_si256(s32, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), _mm_packs_epi16(p16, p16));
    return;
  }
#endif
  // Elsewhere the compiler's conversion (on AVX2 it extracts and inserts the bytes one by one).
  const typename LaneVec<T, V>::Signs s8 = __builtin_convertvector(s, typename LaneVec<T, V>::Signs);
  std::memcpy(dst, &s8, sizeof(s8));
}

// l = fine - up over n elements (up == nullptr: l = fine): stores sign(l) and adds sum |l| per lane
// to sums (per row in T, across rows in double). Written with whole-element vectors (a scalar loop over
// lanes did not vectorise: int8 stores next to double sums); each lane adds in the same order as before.
template <typename T, int V>
void laplacian_row(const T* __restrict fine, const T* __restrict up, int64_t n, int8_t* __restrict sign, double* sums) {
  using L = LaneVec<T, V>;
  typename L::Vec lanes = {};
  const typename L::Mask abs_mask = ~(typename L::Mask{} + (typename L::Int(1) << (8 * sizeof(T) - 1)));
  for (int64_t c = 0; c < n; ++c) {
    typename L::Vec l;
    std::memcpy(&l, fine + c * V, sizeof(l));
    if (up != nullptr) {
      typename L::Vec u;
      std::memcpy(&u, up + c * V, sizeof(u));
      l -= u;
    }
    const typename L::Mask s = (l < T(0)) - (l > T(0));  // masks are -1: +1 above 0, -1 below, 0 at 0/NaN
    store_signs<T, V>(s, sign + c * V);
    lanes += (typename L::Vec)((typename L::Mask)l & abs_mask);  // |l|: the sign bit cleared, as fabs
  }
  for (int v = 0; v < V; ++v) sums[v] += double(lanes[v]);
}

// ---- one group of V planes -----------------------------------------------------------------------

// Forward of one group from G^0 in g (interleaved scratch pyramid; line0/line1: line_elems(width)
// elements each). Writes the interleaved signs and adds sum_j w_j sum|L^j| per lane to totals.
template <typename T, int V>
void forward_group(const Geometry& geom, const double* level_weights, int8_t* signs, T* g, T* line0, T* line1,
                   double* totals) {
  const int J = geom.levels;
  for (int j = 0; j + 1 < J; ++j) {  // Gaussian pyramid
    const int64_t hn = geom.h[j], wn = geom.w[j], hm = geom.h[j + 1], wm = geom.w[j + 1];
    const T* fine = g + geom.off[j] * V;
    T* coarse = g + geom.off[j + 1] * V;
    const T* rows[5];
    T wts[5];
    for (int64_t q = 0; q < hm; ++q) {
      for (int a = 0; a < 5; ++a) {
        rows[a] = fine + reflect101(2 * q + a - 2, hn) * wn * V;
        wts[a] = tap_weight<T>(a);
      }
      combine_rows<false>(rows, wts, 5, wn * V, line0);
      down_row<T, V>(line0, wn, coarse + q * wm * V);
    }
  }
  for (int j = 0; j < J; ++j) {  // Laplacian levels, |.| and signs
    const int64_t hn = geom.h[j], wn = geom.w[j];
    const T* fine = g + geom.off[j] * V;
    int8_t* sg = signs + geom.off[j] * V;
    double level_sums[V] = {};
    if (j + 1 == J) {
      for (int64_t i = 0; i < hn; ++i) laplacian_row<T, V>(fine + i * wn * V, nullptr, wn, sg + i * wn * V, level_sums);
    } else {
      const T* coarse = g + geom.off[j + 1] * V;
      const int64_t wm = geom.w[j + 1];
      Taps<T> tr;
      const T* rows[5];
      T* up = line1 + (wn + 8) * V;  // after the n + 4 pad area
      for (int64_t i = 0; i < hn; ++i) {
        up_taps<T>(i, hn, tr);
        for (int t = 0; t < tr.count; ++t) rows[t] = coarse + tr.idx[t] * wm * V;
        combine_rows<false>(rows, tr.w, tr.count, wm * V, line0);
        up_row<T, V>(line0, wn, up, line1);
        laplacian_row<T, V>(fine + i * wn * V, up, wn, sg + i * wn * V, level_sums);
      }
    }
    for (int v = 0; v < V; ++v) totals[v] += level_weights[j] * level_sums[v];
  }
}

// Backward of one group: acc level 0 = sum_j adjoint(w_j scale sign(L^j)), per lane scale[v].
// acc: interleaved scratch pyramid, line0/line1: line_elems(width) elements each, rows: rows_elems.
// Per level, from the coarsest: acc_{j+1} -= U^T s_j, then acc_j = s_j + D^T acc_{j+1}. Each separable
// operator runs along the rows into `rows` first; then every output row gathers its input rows by the
// column taps (down_adj_taps / up_adj_taps, reflections folded in) and is written once.
template <typename T, int V>
void backward_group(const Geometry& geom, const double* level_weights, const int8_t* signs, const T* scale, T* acc,
                    T* line0, T* line1, T* rows) {
  const int J = geom.levels;
  T level_w[V];
  for (int v = 0; v < V; ++v) level_w[v] = scale[v] * T(level_weights[J - 1]);
  scale_signs<T, V>(signs + geom.off[J - 1] * V, level_w, geom.h[J - 1] * geom.w[J - 1], acc + geom.off[J - 1] * V);
  Taps<T> tr;
  const T* src[kMaxTaps];
  for (int j = J - 2; j >= 0; --j) {
    for (int v = 0; v < V; ++v) level_w[v] = scale[v] * T(level_weights[j]);
    const int64_t hn = geom.h[j], wn = geom.w[j], hm = geom.h[j + 1], wm = geom.w[j + 1];
    T* coarse = acc + geom.off[j + 1] * V;
    const int8_t* sj = signs + geom.off[j] * V;
    // acc_{j+1} -= U^T s_j: U^T along every fine row, then per coarse row the column taps of 2 S B^T.
    for (int64_t i = 0; i < hn; ++i) {
      scale_signs<T, V>(sj + i * wn * V, level_w, wn, line0);
      up_adj_row<T, V>(line0, wn, rows + i * wm * V, line1);
    }
    for (int64_t q = 0; q < hm; ++q) {
      up_adj_taps<T>(q, hn, tr);
      for (int t = 0; t < tr.count; ++t) {
        src[t] = rows + tr.idx[t] * wm * V;
        tr.w[t] = -tr.w[t];
      }
      combine_rows<true>(src, tr.w, tr.count, wm * V, coarse + q * wm * V);
    }
    // acc_j = s_j + D^T acc_{j+1}: D^T along every coarse row, then per fine row the column taps of B^T Z.
    for (int64_t k = 0; k < hm; ++k) down_adj_row<T, V>(coarse + k * wm * V, wn, rows + k * wn * V, line1);
    T* fine = acc + geom.off[j] * V;
    for (int64_t i = 0; i < hn; ++i) {
      scale_signs<T, V>(sj + i * wn * V, level_w, wn, fine + i * wn * V);
      down_adj_taps<T>(i, hn, tr);
      for (int t = 0; t < tr.count; ++t) src[t] = rows + tr.idx[t] * wn * V;
      combine_rows<true>(src, tr.w, tr.count, wn * V, fine + i * wn * V);
    }
  }
}

// ---- the per-pixel path: the CUDA kernels' functions, in their level-by-level order -----------------
// Slow; it exists so that the CPU test suite checks the math the CUDA kernels run.

template <typename T>
double forward_plane_pixels(const Geometry& geom, const double* level_weights, int8_t* signs, T* g) {
  for (int j = 0; j + 1 < geom.levels; ++j)
    for (int64_t q1 = 0; q1 < geom.h[j + 1]; ++q1)
      for (int64_t q2 = 0; q2 < geom.w[j + 1]; ++q2)
        g[geom.off[j + 1] + q1 * geom.w[j + 1] + q2] = down_pixel(g + geom.off[j], geom.h[j], geom.w[j], q1, q2);
  double total = 0.0;
  for (int j = 0; j < geom.levels; ++j) {
    double level_sum = 0.0;
    for (int64_t i1 = 0; i1 < geom.h[j]; ++i1)
      for (int64_t i2 = 0; i2 < geom.w[j]; ++i2) {
        const int64_t at = geom.off[j] + i1 * geom.w[j] + i2;
        const T l = j + 1 < geom.levels
                        ? laplacian_pixel(g + geom.off[j], g + geom.off[j + 1], geom.h[j], geom.w[j], i1, i2)
                        : g[at];
        signs[at] = sign_of(l);
        level_sum += std::fabs(double(l));
      }
    total += level_weights[j] * level_sum;
  }
  return total;
}

template <typename T>
void backward_plane_pixels(const Geometry& geom, const double* level_weights, const int8_t* signs, T scale, T* grad,
                           T* acc) {
  for (int l = geom.levels - 1; l >= 0; --l) {
    T* dst = l == 0 ? grad : acc + geom.off[l];
    const T* next = l + 1 < geom.levels ? acc + geom.off[l + 1] : nullptr;
    const T w = scale * T(level_weights[l]), w_prev = l > 0 ? scale * T(level_weights[l - 1]) : T(0);
    for (int64_t q1 = 0; q1 < geom.h[l]; ++q1)
      for (int64_t q2 = 0; q2 < geom.w[l]; ++q2)
        dst[q1 * geom.w[l] + q2] = backward_pixel(geom, l, signs, next, w, w_prev, q1, q2);
  }
}

// ---- (de)interleaving ---------------------------------------------------------------------------
// A VxV block transposition per V elements: in registers on AVX (a third of the kernels' time went to
// the scalar element moves, which the compiler does not turn into shuffles), else element by element.

#if defined(__AVX__)
// r[i] := column i of the 8x8 matrix whose rows are r[0..7].
inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i)
    for (int h = 0; h < 2; ++h) {
      u[4 * i + 2 * h] = _mm256_shuffle_ps(t[4 * i + h], t[4 * i + 2 + h], _MM_SHUFFLE(1, 0, 1, 0));
      u[4 * i + 2 * h + 1] = _mm256_shuffle_ps(t[4 * i + h], t[4 * i + 2 + h], _MM_SHUFFLE(3, 2, 3, 2));
    }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x20);
    r[4 + i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x31);
  }
}

// r[i] := column i of the 4x4 matrix whose rows are r[0..3].
inline void transpose4(__m256d r[4]) {
  const __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
  const __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
  r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
  r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
  r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
  r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
}

// One VxV block: dst[kk * dst_ld + v] = src_v[kk] with src_v = a[v] (- b[v]), kk, v < V.
inline void block_transpose(const float* const* a, const float* const* b, float* dst, int64_t dst_ld) {
  __m256 r[8];
  for (int v = 0; v < 8; ++v)
    r[v] = b ? _mm256_sub_ps(_mm256_loadu_ps(a[v]), _mm256_loadu_ps(b[v])) : _mm256_loadu_ps(a[v]);
  transpose8(r);
  for (int kk = 0; kk < 8; ++kk) _mm256_storeu_ps(dst + kk * dst_ld, r[kk]);
}
inline void block_transpose(const double* const* a, const double* const* b, double* dst, int64_t dst_ld) {
  __m256d r[4];
  for (int v = 0; v < 4; ++v)
    r[v] = b ? _mm256_sub_pd(_mm256_loadu_pd(a[v]), _mm256_loadu_pd(b[v])) : _mm256_loadu_pd(a[v]);
  transpose4(r);
  for (int kk = 0; kk < 4; ++kk) _mm256_storeu_pd(dst + kk * dst_ld, r[kk]);
}
#else
template <typename T>
inline void block_transpose(const T* const* a, const T* const* b, T* dst, int64_t dst_ld) {
  constexpr int V = kLanes<T>;
  for (int v = 0; v < V; ++v)
    for (int kk = 0; kk < V; ++kk) dst[kk * dst_ld + v] = b ? a[v][kk] - b[v][kk] : a[v][kk];
}
#endif

// out[k][v] = x_v[k] - y_v[k] for one row of the V planes (x_v, y_v with unit stride).
template <typename T, int V>
void interleave_diff_row(const T* const* xr, const T* const* yr, int64_t n, T* out) {
  static_assert(V == kLanes<T>, "a group is one 32-byte vector per element");
  int64_t k = 0;
  for (; k + V <= n; k += V) {
    const T* a[V];
    const T* b[V];
    for (int v = 0; v < V; ++v) {
      a[v] = xr[v] + k;
      b[v] = yr[v] + k;
    }
    block_transpose(a, b, out + k * V, V);
  }
  for (; k < n; ++k)
    for (int v = 0; v < V; ++v) out[k * V + v] = xr[v][k] - yr[v][k];
}

// out_v[e] = in[e][v] for e < n, v < count (out_v = out + v * n).
template <typename T, int V>
void deinterleave(const T* in, int64_t n, int64_t count, T* out) {
  int64_t e = 0;
  if (count == V) {
    for (; e + V <= n; e += V) {
      const T* a[V];
      for (int kk = 0; kk < V; ++kk) a[kk] = in + (e + kk) * V;
      block_transpose(a, static_cast<const T* const*>(nullptr), out + e, n);
    }
  }
  for (int64_t v = 0; v < count; ++v)
    for (int64_t i = e; i < n; ++i) out[v * n + i] = in[i * V + v];
}

// ---- NaN/Inf ------------------------------------------------------------------------------------------

template <typename T>
bool plane_not_finite(const T* x, const int64_t* s, int64_t h, int64_t w) {
  T zero = T(0);  // stays 0 for finite values; NaN/Inf times 0 is NaN
  for (int64_t i = 0; i < h; ++i)
    for (int64_t k = 0; k < w; ++k) zero += x[i * s[2] + k * s[3]] * T(0);
  return zero != T(0);
}

// The NaN policy, from the plane sums the forward made anyway: only a plane whose sum is not finite (NaN
// or Inf in it, or an overflow) is looked at. The lowest sample with NaN/Inf in x, else in y.
template <typename T>
KernelResult find_nonfinite(const LaplacianForwardParams& p, const double* plane_sums) {
  const T* inputs[2] = {static_cast<const T*>(p.x), static_cast<const T*>(p.y)};
  const int64_t* strides[2] = {p.x_strides, p.y_strides};
  for (int input = 0; input < 2; ++input)
    for (int64_t plane = 0; plane < p.batch * p.channels; ++plane) {
      if (plane_sums[plane] - plane_sums[plane] == 0.0) continue;
      const int64_t b = plane / p.channels, c = plane % p.channels;
      const int64_t* s = strides[input];
      if (plane_not_finite(inputs[input] + b * s[0] + c * s[1], s, p.height, p.width))
        return {KernelResult::kNonFiniteRow, b, input};
    }
  return {};
}

// ---- drivers ----------------------------------------------------------------------------------------

// The parts of a thread's scratch slot (slot_bytes) after the group's interleaved pyramid at its base: two
// line buffers, the backward's rows buffer and the interleaved int8 signs of a partial group, in that order.
template <typename T>
struct Slot {
  T *line0, *line1, *rows;
  int8_t* signs;
};

template <typename T>
Slot<T> carve_slot(T* base, const Geometry& geom, int64_t width) {
  constexpr int V = kLanes<T>;
  Slot<T> s;
  s.line0 = base + geom.total * V;
  s.line1 = s.line0 + line_elems(width) * V;
  s.rows = s.line1 + line_elems(width) * V;
  s.signs = reinterpret_cast<int8_t*>(s.rows + rows_elems(geom) * V);
  return s;
}

// The planes of group `task`: [first, first + count).
inline int64_t group_count(int64_t task, int64_t planes, int v) {
  const int64_t left = planes - task * v;
  return left < v ? left : v;
}

// How one call is cut into tasks (a plane each on the pixel path, else a group of V planes), and the
// workspace it needs: `head_bytes` first, then the scratch of each thread.
struct Plan {
  Geometry geom;
  int64_t planes, tasks, slot_bytes, workspace_bytes;
};

template <typename T, typename Params>
Plan make_plan(const Params& p, int64_t head_bytes) {
  constexpr int V = kLanes<T>;
  Plan pl;
  pl.geom = make_geometry(p.height, p.width, p.levels);
  pl.planes = p.batch * p.channels;
  pl.tasks = p.pixel_path ? pl.planes : (pl.planes + V - 1) / V;
  pl.slot_bytes = slot_bytes(pl.geom, sizeof(T));
  pl.workspace_bytes = head_bytes + parallel_slots(pl.tasks, p.exec.num_threads) * pl.slot_bytes;
  return pl;
}

template <typename T>
KernelResult forward_all(const LaplacianForwardParams& p) {
  constexpr int V = kLanes<T>;
  const int64_t sums_bytes = (p.batch * p.channels * int64_t(sizeof(double)) + 63) / 64 * 64;
  const Plan pl = make_plan<T>(p, sums_bytes);
  if (p.workspace_bytes < pl.workspace_bytes) return {KernelResult::kWorkspaceTooSmall};
  const Geometry& geom = pl.geom;
  const int64_t planes = pl.planes, tasks = pl.tasks, sb = pl.slot_bytes;
  char* ws = static_cast<char*>(p.workspace);
  double* plane_sums = reinterpret_cast<double*>(ws);
  const T* x = static_cast<const T*>(p.x);
  const T* y = static_cast<const T*>(p.y);
  const int64_t* xs = p.x_strides;
  const int64_t* ys = p.y_strides;
  const int64_t H = p.height, W = p.width, P = geom.total;
  parallel_for_each(tasks, p.exec.num_threads, [&](int64_t task, int slot) {
    T* g = reinterpret_cast<T*>(ws + sums_bytes + slot * sb);
    if (p.pixel_path) {
      const int64_t b = task / p.channels, c = task % p.channels;
      const T* xp = x + b * xs[0] + c * xs[1];
      const T* yp = y + b * ys[0] + c * ys[1];
      for (int64_t i = 0; i < H; ++i)
        for (int64_t k = 0; k < W; ++k) g[i * W + k] = xp[i * xs[2] + k * xs[3]] - yp[i * ys[2] + k * ys[3]];
      plane_sums[task] = forward_plane_pixels(geom, p.level_weights, p.signs + task * P, g);
      return;
    }
    const Slot<T> sl = carve_slot(g, geom, W);
    int8_t* sg = sl.signs;
    const int64_t first = task * V, count = group_count(task, planes, V);
    // G^0 = x - y, interleaved. Lanes past the last plane repeat plane `first` as both x and y:
    // their difference is 0 (NaN for NaN input, harmless: those lanes are never written out).
    const T* xp[V];
    const T* yp[V];
    for (int v = 0; v < V; ++v) {
      const int64_t plane = first + (v < count ? v : 0);
      const int64_t b = plane / p.channels, c = plane % p.channels;
      xp[v] = x + b * xs[0] + c * xs[1];
      yp[v] = v < count ? y + b * ys[0] + c * ys[1] : xp[v];
    }
    if (xs[3] == 1 && ys[3] == 1) {
      const T* xr[V];
      const T* yr[V];
      for (int64_t i = 0; i < H; ++i) {
        for (int v = 0; v < V; ++v) {
          xr[v] = xp[v] + i * xs[2];
          yr[v] = yp[v] + i * (v < count ? ys[2] : xs[2]);
        }
        interleave_diff_row<T, V>(xr, yr, W, g + i * W * V);
      }
    } else {
      for (int v = 0; v < V; ++v) {
        const int64_t* ysv = v < count ? ys : xs;
        for (int64_t i = 0; i < H; ++i)
          for (int64_t k = 0; k < W; ++k)
            g[(i * W + k) * V + v] = xp[v][i * xs[2] + k * xs[3]] - yp[v][i * ysv[2] + k * ysv[3]];
      }
    }
    // Signs layout (private to this backend): the group's planes own signs[first*P, (first+count)*P),
    // element e of lane v at e*count + v. Full groups write it in place; a partial one goes via scratch.
    int8_t* signs = count == V ? p.signs + first * P : sg;
    double totals[V] = {};
    forward_group<T, V>(geom, p.level_weights, signs, g, sl.line0, sl.line1, totals);
    for (int64_t v = 0; v < count; ++v) plane_sums[first + v] = totals[v];
    if (count < V) {
      int8_t* out = p.signs + first * P;
      for (int64_t e = 0; e < P; ++e)
        for (int64_t v = 0; v < count; ++v) out[e * count + v] = sg[e * V + v];
    }
  });
  // Fixed-order reduction: the result does not depend on the thread count or task assignment.
  T* out = static_cast<T*>(p.per_sample);
  for (int64_t b = 0; b < p.batch; ++b) {
    double s = 0.0;
    for (int64_t c = 0; c < p.channels; ++c) s += plane_sums[b * p.channels + c];
    out[b] = T(s);
  }
  return p.check_finite ? find_nonfinite<T>(p, plane_sums) : KernelResult{};
}

template <typename T>
KernelResult backward_all(const LaplacianBackwardParams& p) {
  constexpr int V = kLanes<T>;
  const Plan pl = make_plan<T>(p, 0);
  if (p.workspace_bytes < pl.workspace_bytes) return {KernelResult::kWorkspaceTooSmall};
  const Geometry& geom = pl.geom;
  const int64_t planes = pl.planes, tasks = pl.tasks, sb = pl.slot_bytes;
  char* ws = static_cast<char*>(p.workspace);
  const T* grad_loss = static_cast<const T*>(p.grad_loss);
  const auto scale = [&](int64_t b) { return sample_grad_scale(grad_loss, p.grad_loss_stride, p.loss_divisor, b); };
  T* grad = static_cast<T*>(p.grad);
  const int64_t hw = p.height * p.width, P = geom.total, W = p.width;
  parallel_for_each(tasks, p.exec.num_threads, [&](int64_t task, int slot) {
    T* acc = reinterpret_cast<T*>(ws + slot * sb);
    if (p.pixel_path) {
      backward_plane_pixels(geom, p.level_weights, p.signs + task * P, scale(task / p.channels), grad + task * hw, acc);
      return;
    }
    const Slot<T> sl = carve_slot(acc, geom, W);
    int8_t* sg = sl.signs;
    const int64_t first = task * V, count = group_count(task, planes, V);
    T lane_scale[V] = {};
    for (int64_t v = 0; v < count; ++v) lane_scale[v] = scale((first + v) / p.channels);
    const int8_t* signs = p.signs + first * P;  // layout: see forward_all
    if (count < V) {
      for (int64_t e = 0; e < P; ++e)
        for (int64_t v = 0; v < V; ++v) sg[e * V + v] = v < count ? signs[e * count + v] : int8_t(0);
      signs = sg;
    }
    backward_group<T, V>(geom, p.level_weights, signs, lane_scale, acc, sl.line0, sl.line1, sl.rows);
    deinterleave<T, V>(acc, hw, count, grad + first * hw);
  });
  return {};
}

KernelResult forward(const LaplacianForwardParams& p) {
  return p.dtype == DType::kFloat64 ? forward_all<double>(p) : forward_all<float>(p);
}
KernelResult backward(const LaplacianBackwardParams& p) {
  return p.dtype == DType::kFloat64 ? backward_all<double>(p) : backward_all<float>(p);
}

const Kernels kKernels = {GLANN_ISA_NAME, forward, backward};

}  // namespace GLANN_ISA
}  // namespace lap_cpu
}  // namespace glann

#pragma GCC diagnostic pop

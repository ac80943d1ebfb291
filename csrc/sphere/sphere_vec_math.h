// The vectorised projection kernel (sphere_vec.cu), written once for the device and the host: the lane
// mapping (16-byte vectors, a segment of lanes per row, several rows per warp for small D), when it
// applies, and the per-row body, a function of a segment policy (its lane, its width, its shuffles), so
// that tests/cpp/hopper_emulation.cpp runs it with host threads as lanes.
//
// Semantics are csrc/sphere/sphere.h's: the sum of squares in A (double for float32/float64 rows, float
// for 16-bit rows), the row read completely before anything is written, rows that are zero, non-finite
// or out of range for a plain sum through sphere::project_row_rescaled, a non-finite row left unwritten.
#pragma once
#include <stdint.h>

#include "common/hd_loops.h"
#include "common/host_device.h"
#include "sphere/sphere_math.h"

namespace glann {
namespace sphv {

constexpr int kWarp = 32;
constexpr int kThreads = 256;
constexpr int kMaxVecs = 8;  // 16-byte vectors a lane keeps in registers (D <= 1024 float32); else 2 passes

// The rare path stays out of line on the device, so that the common path keeps few registers.
#if defined(__CUDACC__)
#define GLANN_SPHV_RARE __host__ __device__ __noinline__
#else
#define GLANN_SPHV_RARE static
#endif

// How the lanes of a warp share rows of `dim` elements of `elem` bytes.
struct VecMap {
  int vec;           // elements per 16-byte vector
  int64_t nvec;      // vectors per row
  int lanes;         // lanes per row (a power of two, <= 32): a segment
  int rows;          // rows per warp = 32 / lanes
  int64_t per_lane;  // vectors per lane (lane l of a segment: l, l + lanes, ...)
  int keep;          // 1, 2, 4 or 8 (kMaxVecs): register slots of the kernel instance that runs this map
  bool registers;    // per_lane <= keep: the row stays in registers (one read); else two passes
};

GLANN_HD VecMap make_vec_map(int64_t dim, int elem) {
  VecMap m;
  m.vec = 16 / elem;
  m.nvec = dim / m.vec;
  m.lanes = 1;
  while (m.lanes < kWarp && m.lanes < m.nvec) m.lanes *= 2;
  m.rows = kWarp / m.lanes;
  m.per_lane = (m.nvec + m.lanes - 1) / m.lanes;
  m.keep = 1;
  while (m.keep < kMaxVecs && m.keep < m.per_lane) m.keep *= 2;
  m.registers = m.per_lane <= m.keep;
  return m;
}

// The 16-byte path: unit column strides, 16-byte aligned bases and row pitches, whole vectors per row.
// Everything else takes the legacy kernel.
GLANN_HD bool vec_applies(uintptr_t in, int64_t in_row, int64_t in_col, uintptr_t out, int64_t out_row, int64_t out_col,
                          int64_t rows, int64_t dim, int elem) {
  if (in_col != 1 || out_col != 1 || in % 16 != 0 || out % 16 != 0 || (dim * elem) % 16 != 0) return false;
  return rows <= 1 || ((in_row * elem) % 16 == 0 && (out_row * elem) % 16 == 0);
}

// A row as project_row_rescaled reads it: element j of x (in A), written to y.
template <typename T, typename A, typename Cvt>
struct Row {
  const T* x;
  T* y;
  int64_t n;
  GLANN_HD_MEMBER A load(int64_t j) const { return Cvt::template to<A>(x[j]); }
  GLANN_HD_MEMBER void store(int64_t j, A v) const { y[j] = Cvt::template to<T>(v); }
};

// project_row_rescaled's lanes: the segment's, elements lane, lane + width, ...
template <typename Seg>
struct SegLanes {
  const Seg& seg;
  int64_t first, step;
  GLANN_HD_MEMBER bool any(bool b) const { return seg.any(b); }
  template <typename A>
  GLANN_HD_MEMBER A max(A v) const {
    for (int o = seg.width / 2; o > 0; o >>= 1) {
      const A w = seg.shfl_xor(v, o);
      v = v < w ? w : v;
    }
    return v;
  }
  template <typename A>
  GLANN_HD_MEMBER A sum(A v) const {
    for (int o = seg.width / 2; o > 0; o >>= 1) v += seg.shfl_xor(v, o);
    return v;
  }
};

// 16 bytes of T.
template <typename T>
struct alignas(16) Pack {
  T e[16 / sizeof(T)];
};

template <typename T, typename A, typename Cvt, typename Seg>
GLANN_SPHV_RARE bool project_row_rare(const T* x, T* y, int64_t dim, Seg seg) {
  return sphere::project_row_rescaled<A>(Row<T, A, Cvt>{x, y, dim}, SegLanes<Seg>{seg, seg.lane, seg.width});
}

// Projects one row (x -> y, both 16-byte aligned, m.nvec vectors) with the segment `seg` (seg.lane in
// [0, m.lanes), seg.width == m.lanes, seg.shfl_xor / seg.any over the segment's lanes only), keeping up
// to kKeep vectors per lane in registers (kKeep == m.keep). Every lane of the segment calls it; returns
// false, writing nothing, for a row with NaN or Inf. The butterfly sums leave the same bits in every lane
// (a + b == b + a), so the lanes of a segment agree on every branch.
template <typename T, typename A, typename Cvt, int kKeep, typename Seg>
GLANN_HD bool project_row_vec(const T* x, T* y, int64_t dim, const VecMap& m, const Seg& seg) {
  constexpr int V = 16 / int(sizeof(T));
  const Pack<T>* xv = reinterpret_cast<const Pack<T>*>(x);
  Pack<T>* yv = reinterpret_cast<Pack<T>*>(y);
  A s = A(0);
  Pack<T> keep[kKeep] = {};  // (zeroed only for the host compiler's flow analysis)
  if (m.registers) {
    GLANN_UNROLL
    for (int i = 0; i < kKeep; ++i) {  // every load issued before the first use
      const int64_t v = seg.lane + int64_t(i) * m.lanes;
      if (i < m.per_lane && v < m.nvec) keep[i] = xv[v];
    }
    GLANN_UNROLL
    for (int i = 0; i < kKeep; ++i) {
      const int64_t v = seg.lane + int64_t(i) * m.lanes;
      if (i < m.per_lane && v < m.nvec) GLANN_UNROLL
      for (int e = 0; e < V; ++e) {
        const A a = Cvt::template to<A>(keep[i].e[e]);
        s += a * a;
      }
    }
  } else {
    for (int64_t v = seg.lane; v < m.nvec; v += m.lanes) {
      const Pack<T> p = xv[v];
      GLANN_UNROLL
      for (int e = 0; e < V; ++e) {
        const A a = Cvt::template to<A>(p.e[e]);
        s += a * a;
      }
    }
  }
  for (int o = m.lanes / 2; o > 0; o >>= 1) s += seg.shfl_xor(s, o);
  if (!sphere::sum_is_safe(s)) return project_row_rare<T, A, Cvt>(x, y, dim, seg);
  const A inv = A(1) / sqrt(s);
  if (m.registers) {
    GLANN_UNROLL
    for (int i = 0; i < kKeep; ++i) {
      const int64_t v = seg.lane + int64_t(i) * m.lanes;
      if (i < m.per_lane && v < m.nvec) {
        Pack<T> p;
        GLANN_UNROLL
        for (int e = 0; e < V; ++e) p.e[e] = Cvt::template to<T>(Cvt::template to<A>(keep[i].e[e]) * inv);
        yv[v] = p;
      }
    }
  } else {
    for (int64_t v = seg.lane; v < m.nvec; v += m.lanes) {
      Pack<T> p = xv[v];
      GLANN_UNROLL
      for (int e = 0; e < V; ++e) p.e[e] = Cvt::template to<T>(Cvt::template to<A>(p.e[e]) * inv);
      yv[v] = p;
    }
  }
  return true;
}

}  // namespace sphv
}  // namespace glann

// The fused (Hopper) Laplacian-pyramid kernels, written once for the device and the host.
//
// Everything the kernels of laplacian_fused.cu compute lives here as GLANN_HD code: the int32 index math
// (reflect-101 without a division, the 1-D taps of the four pyramid operators, level sizes and the
// sign-layout offsets), the shared-memory layouts and their budgets, the launch plan, and the block bodies
// themselves, each a function of (tid, threads, sync). A CUDA kernel calls a body with __syncthreads() as
// `sync`; tests/cpp/hopper_emulation.cpp runs the same body on host threads with a barrier (and under
// ThreadSanitizer), so the CPU test suite checks what the GPU will run.
//
// The definitions these implement are laplacian_math.h's (reflect101, down_taps, up_taps,
// down_adj_taps, up_adj_taps, make_geometry): the tests compare the two exhaustively.
//
// Kernels (docs/GPU_KERNELS.md):
//  * plane forward  (one block per (b, c) plane): levels j0..J-1 of the pyramid in shared memory, built
//    with separable 5-tap passes; L^j, its sign and the 4^j-weighted |L^j| sum; one double per plane.
//  * plane backward (one block per plane): the adjoint, coarsest level first, in shared memory; the
//    accumulator of level j0 goes to the output (grad for j0 = 0).
//  * j0 = 1 (planes whose level 0 does not fit): tiles with halos do level 0. Forward: G^1 of the tile
//    into the workspace, signs and |L^0| sums of the tile. Backward: U^T sign(L^0) into the workspace
//    before the plane kernel, then grad = s_0 + D^T acc_1 per tile after it.
#pragma once
#include <stdint.h>

#include "common/hd_loops.h"
#include "common/host_device.h"
#include "laplacian/laplacian_math.h"

namespace glann {
namespace lapf {

// ---- int32 index math ------------------------------------------------------------------------------

// reflect101(i, n) (laplacian_math.h) without a division: exact for |i| <= 2n - 2 when n >= 3, and for
// every i when n <= 2. The kernels ask for i in [-2, n + 1] (taps) and [-4, n + 3] (tile halos, n >= 5).
GLANN_HD int reflect101_near(int i, int n) {
  if (n <= 2) return n == 1 ? 0 : (i & 1);  // period 2: the parity (two's complement: -1 & 1 == 1)
  const int a = i < 0 ? -i : i;
  const int b = 2 * n - 2 - a;
  return a < b ? a : b;
}

// Up to five (index, weight) taps of one output of a 1-D pyramid operator.
template <typename T>
struct Taps5 {
  int count;
  int idx[5];
  T w[5];
};

// No taps (every slot zeroed: taps5_add reads all five).
template <typename T>
GLANN_HD void taps5_clear(Taps5<T>& t) {
  t.count = 0;
  GLANN_UNROLL
  for (int k = 0; k < 5; ++k) {
    t.idx[k] = 0;
    t.w[k] = T(0);
  }
}

// Adds weight to the tap of `index`, or appends one: the adjoint taps below are merged by index, so no
// output has more than five (the tests check it for every size up to 300).
// (Written without an early exit: a shared exit makes the compiler select the slot's address at run
// time, and the taps would live in local memory.)
template <typename T>
GLANN_HD void taps5_add(Taps5<T>& t, int index, T weight) {
  bool found = false;
  GLANN_UNROLL
  for (int k = 0; k < 5; ++k) {
    const bool hit = k < t.count && t.idx[k] == index;
    t.w[k] += hit ? weight : T(0);
    found = found || hit;
  }
  if (found) return;
  GLANN_UNROLL
  for (int k = 0; k < 5; ++k) {
    t.idx[k] = k == t.count ? index : t.idx[k];
    t.w[k] = k == t.count ? weight : t.w[k];
  }
  ++t.count;
}

// f(index, weight) for every tap.
template <typename T, typename F>
GLANN_HD void for_taps(const Taps5<T>& t, const F& f) {
  GLANN_UNROLL
  for (int k = 0; k < 5; ++k)
    if (k < t.count) f(t.idx[k], t.w[k]);
}

// D (blur, keep even samples): coarse output q from a fine line of size n; always five taps.
template <typename T>
GLANN_HD void down_taps5(int q, int n, Taps5<T>& t) {
  t.count = 5;
  GLANN_UNROLL
  for (int a = 0; a < 5; ++a) {
    t.idx[a] = reflect101_near(2 * q + a - 2, n);
    t.w[a] = lap::tap_weight<T>(a);
  }
}

// U (zero-insert, blur with 2W): fine output i (fine size n) from the coarse line. Only taps a of the
// parity of i land on even (nonzero) samples, and reflect-101 keeps the parity for n >= 2: 3 taps for
// even i, 2 for odd i. For n == 1 all five land on sample 0 (weight 2).
template <typename T>
GLANN_HD void up_taps5(int i, int n, Taps5<T>& t) {
  if (n == 1) {
    t.count = 1;
    t.idx[0] = 0;
    t.w[0] = T(2);
    return;
  }
  const int odd = i & 1;
  t.count = 3 - odd;
  GLANN_UNROLL
  for (int k = 0; k < 3; ++k) {
    const int a = odd + 2 * k;  // k == 2 for odd i is past count: its slot is filled but never read
    t.idx[k] = reflect101_near(i + a - 2, n) >> 1;
    t.w[k] = T(2) * lap::tap_weight<T>(a);
  }
}

// D^T: fine output s (fine size n) from the coarse line (size (n + 1) / 2). Away from the borders (no
// reflected tap of D lands on s: those land on 1, 2, n - 3, n - 2) it is the plain transpose; near them,
// every (q, a) of D with reflect(2q + a - 2) == s, for q within 2 of s / 2 (where all such q lie).
template <typename T>
GLANN_HD void down_adj_taps5(int s, int n, Taps5<T>& t) {
  taps5_clear(t);
  if (s >= 3 && s <= n - 4) {
    const int q = s >> 1;
    if ((s & 1) == 0) {
      taps5_add(t, q - 1, lap::tap_weight<T>(4));
      taps5_add(t, q, lap::tap_weight<T>(2));
      taps5_add(t, q + 1, lap::tap_weight<T>(0));
    } else {
      taps5_add(t, q, lap::tap_weight<T>(3));
      taps5_add(t, q + 1, lap::tap_weight<T>(1));
    }
    return;
  }
  const int m = (n + 1) / 2;
  const int q0 = (s >> 1) - 2 > 0 ? (s >> 1) - 2 : 0;
  const int q1 = (s >> 1) + 2 < m - 1 ? (s >> 1) + 2 : m - 1;
  for (int q = q0; q <= q1; ++q)
    for (int a = 0; a < 5; ++a)
      if (reflect101_near(2 * q + a - 2, n) == s) taps5_add(t, q, lap::tap_weight<T>(a));
}

// U^T = 2 S B^T: coarse output q from the fine line of size n. Interior: the five fine samples around
// 2q; near the borders every (s, a) of B with reflect(s + a - 2) == 2q, s within 2 of 2q.
template <typename T>
GLANN_HD void up_adj_taps5(int q, int n, Taps5<T>& t) {
  taps5_clear(t);
  if (q >= 2 && 2 * q <= n - 5) {
    t.count = 5;
    GLANN_UNROLL
    for (int a = 0; a < 5; ++a) {
      t.idx[a] = 2 * q + 2 - a;
      t.w[a] = T(2) * lap::tap_weight<T>(a);
    }
    return;
  }
  const int s0 = 2 * q - 2 > 0 ? 2 * q - 2 : 0;
  const int s1 = 2 * q + 2 < n - 1 ? 2 * q + 2 : n - 1;
  for (int s = s0; s <= s1; ++s)
    for (int a = 0; a < 5; ++a)
      if (reflect101_near(s + a - 2, n) == 2 * q) taps5_add(t, s, T(2) * lap::tap_weight<T>(a));
}

// ---- levels --------------------------------------------------------------------------------------

// One pyramid level: its size and the offset of its first element in a packed pyramid (levels finest
// first, rows packed). The CUDA sign layout is plane * total + off; lap::make_geometry is the same
// recurrence in int64 (the tests compare them).
struct Level {
  int h, w;
  int64_t off;
};

GLANN_HD Level next_level(Level l) { return Level{(l.h + 1) / 2, (l.w + 1) / 2, l.off + int64_t(l.h) * l.w}; }

// Level j of an h x w plane.
GLANN_HD Level level_at(int h, int w, int j) {
  Level l{h, w, 0};
  for (int k = 0; k < j; ++k) l = next_level(l);
  return l;
}

// 4^j in T (exact).
template <typename T>
GLANN_HD T pow4(int j) {
  T v = T(1);
  for (int k = 0; k < j; ++k) v *= T(4);
  return v;
}

// Calls f(r, c) for the pixels e = r * w + c, e = tid, tid + nt, ... of an h x w grid (the same pixels
// in every pass, so a thread that wrote a pixel reads it back without a barrier). One division per call.
template <typename F>
GLANN_HD void for_each_pixel(int h, int w, int tid, int nt, const F& f) {
  if (h <= 0 || w <= 0) return;
  const int dr = nt / w, dc = nt - dr * w;
  int r = tid / w, c = tid - r * w;
  while (r < h) {
    f(r, c);
    c += dc;
    r += dr;
    if (c >= w) {
      c -= w;
      ++r;
    }
  }
}

// Sum of every thread's v in a fixed tree (nt a power of two); every thread gets the sum. `red` holds nt
// doubles; it may be reused after the next barrier.
template <typename Sync>
GLANN_HD double block_sum(double v, double* red, int tid, int nt, const Sync& sync) {
  red[tid] = v;
  sync();
  for (int s = nt / 2; s > 0; s >>= 1) {
    if (tid < s) red[tid] += red[tid + s];
    sync();
  }
  return red[0];
}

// ---- separable passes (all operands in shared memory, rows packed) ---------------------------------

// out (rows x wo) = the 1-D operator `taps` (column o of the output from columns of `in`, wi wide)
// applied to every row of in (rows x wi). taps(o, t) fills the taps of output column o.
template <typename T, typename In, typename TapsFn>
GLANN_HD void row_pass(const In* in, int rows, int wi, T* out, int wo, const TapsFn& taps, int tid, int nt) {
  for_each_pixel(rows, wo, tid, nt, [&](int r, int o) {
    Taps5<T> t;
    taps(o, t);
    const In* line = in + r * wi;
    T v = T(0);
    for_taps(t, [&](int i, T wt) { v += wt * T(line[i]); });
    out[r * wo + o] = v;
  });
}

// sum_k w_k * in[idx_k * w + c]: output row of the 1-D operator `t` along the columns of in.
template <typename T, typename In>
GLANN_HD T column_taps(const Taps5<T>& t, const In* in, int w, int c) {
  T v = T(0);
  for_taps(t, [&](int i, T wt) { v += wt * T(in[i * w + c]); });
  return v;
}

// ---- plane kernels: shared-memory layouts ----------------------------------------------------------

constexpr int kMaxPlaneThreads = 512;

// Threads of a plane block: a power of two, about 16 pixels of the first level per thread, 128 to 512.
GLANN_HD int plane_threads(int h, int w) {
  const int64_t want = (int64_t(h) * w + 15) / 16;
  int t = 128;
  while (t < kMaxPlaneThreads && t < want) t *= 2;
  return t;
}

GLANN_HD int64_t align16(int64_t bytes) { return (bytes + 15) / 16 * 16; }

// Forward: levels j0..J-1 packed (T), one pass buffer (h_j0 x w_j0+1, T), then nt doubles.
struct PlaneForwardLayout {
  int64_t levels_elems;  // elements of T before the pass buffer
  int64_t pass_elems;
  int64_t red_offset;  // bytes
  int64_t bytes;
};

GLANN_HD PlaneForwardLayout plane_forward_layout(int h0, int w0, int nlev, int elem, int nt) {
  PlaneForwardLayout l;
  Level v{h0, w0, 0};
  for (int j = 0; j < nlev; ++j) v = next_level(v);
  l.levels_elems = v.off;
  l.pass_elems = nlev > 1 ? int64_t(h0) * ((w0 + 1) / 2) : 0;
  l.red_offset = align16((l.levels_elems + l.pass_elems) * elem);
  l.bytes = l.red_offset + int64_t(nt) * 8;
  return l;
}

// Backward: accumulators of levels j0+1 (X) and j0+2 (Y) (T), the pass buffer (T), the signs of levels
// j0..J-1 (int8). Level l >= j0 + 1 keeps its accumulator in X when l - j0 is odd, in Y when even.
struct PlaneBackwardLayout {
  int64_t x_elems, y_elems, pass_elems;
  int64_t signs_offset;  // bytes
  int64_t bytes;
};

GLANN_HD PlaneBackwardLayout plane_backward_layout(int h0, int w0, int nlev, int elem) {
  PlaneBackwardLayout l;
  l.x_elems = l.y_elems = l.pass_elems = 0;
  Level v{h0, w0, 0}, prev = v;
  for (int j = 0; j < nlev; ++j) {
    if (j + 1 < nlev) {  // D^T along the columns: h_{j+1} x w_j
      const Level n = next_level(v);
      const int64_t p = int64_t(n.h) * v.w;
      l.pass_elems = p > l.pass_elems ? p : l.pass_elems;
    }
    if (j > 0) {  // U^T of the finer signs along the columns: h_{j-1} x w_j
      const int64_t p = int64_t(prev.h) * v.w;
      l.pass_elems = p > l.pass_elems ? p : l.pass_elems;
    }
    if (j == 1) l.x_elems = int64_t(v.h) * v.w;
    if (j == 2) l.y_elems = int64_t(v.h) * v.w;
    prev = v;
    v = next_level(v);
  }
  l.signs_offset = align16((l.x_elems + l.y_elems + l.pass_elems) * elem);
  l.bytes = l.signs_offset + align16(v.off);  // v.off: the sign elements of levels j0..J-1
  return l;
}

// ---- plane kernels: bodies -------------------------------------------------------------------------

// Forward of one plane from level j0 (size h0 x w0, nlev = J - j0 levels). src(r, c) gives G^j0 (x - y,
// or the G^1 a tile kernel wrote). Writes sign(L^j) to signs (the plane's base: element off_j0 + ... ,
// the legacy CUDA layout) and returns, in every thread, sum_j 4^j sum |L^j| (j counted from 0: j0 is the
// first level's index) in double.
template <typename T, typename Src, typename Sync>
GLANN_HD double plane_forward(int h0, int w0, int j0, int nlev, int64_t sign_off0, const Src& src, int8_t* signs,
                              char* smem, int tid, int nt, const Sync& sync) {
  const PlaneForwardLayout lay = plane_forward_layout(h0, w0, nlev, int(sizeof(T)), nt);
  T* pyr = reinterpret_cast<T*>(smem);
  T* pass = pyr + lay.levels_elems;
  double* red = reinterpret_cast<double*>(smem + lay.red_offset);

  for_each_pixel(h0, w0, tid, nt, [&](int r, int c) { pyr[r * w0 + c] = src(r, c); });
  sync();
  // G^{j+1} = D G^j: along the rows (keep even columns) into pass, then along the columns.
  Level f{h0, w0, 0};
  for (int j = 0; j + 1 < nlev; ++j) {
    const Level c = next_level(f);
    const T* fine = pyr + f.off;
    row_pass<T>(fine, f.h, f.w, pass, c.w, [&](int o, Taps5<T>& t) { down_taps5<T>(o, f.w, t); }, tid, nt);
    sync();
    T* coarse = pyr + c.off;
    for_each_pixel(c.h, c.w, tid, nt, [&](int p, int q) {
      Taps5<T> t;
      down_taps5<T>(p, f.h, t);
      coarse[p * c.w + q] = column_taps(t, pass, c.w, q);
    });
    sync();
    f = c;
  }
  // L^j = G^j - U G^{j+1} (2-3 taps per axis, straight in 2-D), its sign and the weighted |L^j| sums.
  double total = 0.0;
  Level l{h0, w0, 0};
  for (int j = 0; j < nlev; ++j) {
    const Level c = next_level(l);
    const T* g = pyr + l.off;
    const T* gc = pyr + c.off;
    const bool last = j + 1 == nlev;
    T part = T(0);
    for_each_pixel(l.h, l.w, tid, nt, [&](int r, int k) {
      T v = g[r * l.w + k];
      if (!last) {
        Taps5<T> tr, tc;
        up_taps5<T>(r, l.h, tr);
        up_taps5<T>(k, l.w, tc);
        T up = T(0);
        for_taps(tr, [&](int ir, T wr) {
          T row = T(0);
          for_taps(tc, [&](int ic, T wc) { row += wc * gc[ir * c.w + ic]; });
          up += wr * row;
        });
        v -= up;
      }
      signs[sign_off0 + l.off + r * l.w + k] = lap::sign_of(v);
      part += v < T(0) ? -v : v;
    });
    total += pow4<double>(j0 + j) * double(part);
    l = c;
  }
  return block_sum(total, red, tid, nt, sync);
}

// Backward of one plane from level j0 (nlev levels): acc_l = s_l + D^T acc_{l+1} - U^T s_{l-1},
// s_j = scale * 4^j * sign(L^j), coarsest level first; out(r, c, acc_j0) for every pixel of level j0.
// signs: the plane's base (legacy CUDA layout; levels from sign_off0 are read). For j0 > 0, z(r, c)
// gives (U^T sign(L^{j0-1}))[r, c] (a tile kernel made it), subtracted with weight scale * 4^(j0-1).
template <typename T, typename Out, typename Z, typename Sync>
GLANN_HD void plane_backward(int h0, int w0, int j0, int nlev, int64_t sign_off0, const int8_t* signs, T scale,
                             const Z& z, const Out& out, char* smem, int tid, int nt, const Sync& sync) {
  const PlaneBackwardLayout lay = plane_backward_layout(h0, w0, nlev, int(sizeof(T)));
  T* x = reinterpret_cast<T*>(smem);
  T* y = x + lay.x_elems;
  T* pass = y + lay.y_elems;
  int8_t* sg = reinterpret_cast<int8_t*>(smem + lay.signs_offset);
  Level top{h0, w0, 0};
  for (int j = 0; j + 1 < nlev; ++j) top = next_level(top);
  const int64_t sign_elems = top.off + int64_t(top.h) * top.w;
  for (int64_t e = tid; e < sign_elems; e += nt) sg[e] = signs[sign_off0 + e];
  sync();

  for (int j = nlev - 1; j >= 0; --j) {
    // This level (l = j0 + j), the coarser one (its accumulator) and the finer one (its signs).
    const Level l = level_at(h0, w0, j);
    const Level c = next_level(l);
    const Level f = j > 0 ? level_at(h0, w0, j - 1) : l;
    T* acc = (j % 2 == 1) ? x : y;          // j >= 1
    const T* acc_c = (j % 2 == 1) ? y : x;  // level j + 1 (when it exists)
    const T sw = scale * pow4<T>(j0 + j);
    const bool has_coarse = j + 1 < nlev;
    if (has_coarse) {  // D^T acc_{j+1} along the columns: h_{j+1} x w_j
      row_pass<T>(acc_c, c.h, c.w, pass, l.w, [&](int o, Taps5<T>& t) { down_adj_taps5<T>(o, l.w, t); }, tid, nt);
      sync();
    }
    for_each_pixel(l.h, l.w, tid, nt, [&](int r, int k) {
      T v = sw * T(sg[l.off + r * l.w + k]);
      if (has_coarse) {
        Taps5<T> t;
        down_adj_taps5<T>(r, l.h, t);
        v += column_taps(t, pass, l.w, k);
      }
      if (j > 0)
        acc[r * l.w + k] = v;
      else if (j0 > 0)
        out(r, k, v - scale * pow4<T>(j0 - 1) * z(r, k));
      else
        out(r, k, v);
    });
    if (j == 0) break;
    sync();
    // - U^T s_{j-1}: the finer level's signs along the columns (h_{j-1} x w_j), then the rows.
    const int8_t* sf = sg + f.off;
    row_pass<T>(sf, f.h, f.w, pass, l.w, [&](int o, Taps5<T>& t) { up_adj_taps5<T>(o, f.w, t); }, tid, nt);
    sync();
    const T swf = scale * pow4<T>(j0 + j - 1);
    for_each_pixel(l.h, l.w, tid, nt, [&](int r, int k) {
      Taps5<T> t;
      up_adj_taps5<T>(r, f.h, t);
      acc[r * l.w + k] -= swf * column_taps(t, pass, l.w, k);
    });
    sync();
  }
}

// ---- level-0 tiles with halos (planes whose level 0 does not fit in shared memory) -----------------

constexpr int kTile = 64;                     // fine pixels per tile side
constexpr int kTileThreads = 256;             // threads of a tile block
constexpr int kFineHalo = 4;                  // fine rows beyond the tile that the forward reads (D of the coarse halo)
constexpr int kFine = kTile + 2 * kFineHalo;  // 72: fine region side (forward)
constexpr int kCoarse = kTile / 2 + 2;        // 34: coarse window side (forward): tile / 2 and one each side
constexpr int kAdjFine = kTile + 4;           // 68: fine signs region side (U^T of a coarse tile)
constexpr int kAdjCoarse = kTile / 2 + 4;     // 36: coarse accumulator region side (D^T of a fine tile)

// Shared-memory bytes of the three tile bodies (T-sized regions, then the reduction buffer).
GLANN_HD int64_t tile_forward_bytes(int elem) {
  return align16(int64_t(kFine * kFine + kFine * kCoarse + kCoarse * kCoarse) * elem) + kTileThreads * 8;
}
GLANN_HD int64_t tile_up_adj_bytes(int elem) {
  return align16(kAdjFine * kAdjFine) + int64_t(kAdjFine) * kTile / 2 * elem;
}
GLANN_HD int64_t tile_down_adj_bytes(int elem) { return int64_t(kAdjCoarse * kAdjCoarse + kAdjCoarse * kTile) * elem; }

// Level-0 forward of the tile whose first fine pixel is (i0, j0) (multiples of kTile) of an n_h x n_w
// plane (n_h, n_w >= 5, so the +-4 halo reflects with reflect101_near). src(r, c) gives x - y at any
// pixel of the plane. Writes sign(L^0) of the tile's pixels (signs: the plane's base), G^1 of the tile's
// coarse pixels to g1 (the plane's (n_h+1)/2 x (n_w+1)/2 level), and returns in every thread the tile's
// sum |L^0| in double.
template <typename T, typename Src, typename Sync>
GLANN_HD double tile_forward(int nh, int nw, int i0, int k0, const Src& src, int8_t* signs, T* g1, char* smem, int tid,
                             int nt, const Sync& sync) {
  T* fine = reinterpret_cast<T*>(smem);  // kFine x kFine: d at the reflected pixel of fine row i0 - 4 + r
  T* pass = fine + kFine * kFine;        // kFine x kCoarse
  T* coarse = pass + kFine * kCoarse;    // kCoarse x kCoarse: G^1 at coarse row i0 / 2 - 1 + p
  double* red = reinterpret_cast<double*>(
      smem + align16(int64_t(kFine * kFine + kFine * kCoarse + kCoarse * kCoarse) * int64_t(sizeof(T))));
  const int mh = (nh + 1) / 2, mw = (nw + 1) / 2;
  const int fr0 = i0 - kFineHalo, fc0 = k0 - kFineHalo;  // plane pixel of fine[0][0] (before reflection)
  const int cr0 = i0 / 2 - 1, cc0 = k0 / 2 - 1;          // plane coarse pixel of coarse[0][0]
  // Rows and columns past n + 3 (a last tile wider than the plane) are never used: clamped, so that the
  // reflection stays exact and every read inside the plane.
  for_each_pixel(kFine, kFine, tid, nt, [&](int r, int c) {
    const int gr = fr0 + r < nh + 3 ? fr0 + r : nh + 3, gc = fc0 + c < nw + 3 ? fc0 + c : nw + 3;
    fine[r * kFine + c] = src(reflect101_near(gr, nh), reflect101_near(gc, nw));
  });
  sync();
  // Coarse column cc0 + q takes fine columns 2(cc0 + q) - 2 + b = fc0 + 2q + b (local 2q + b).
  for_each_pixel(kFine, kCoarse, tid, nt, [&](int r, int q) {
    T v = T(0);
    for (int b = 0; b < 5; ++b) v += lap::tap_weight<T>(b) * fine[r * kFine + 2 * q + b];
    pass[r * kCoarse + q] = v;
  });
  sync();
  for_each_pixel(kCoarse, kCoarse, tid, nt, [&](int p, int q) {
    T v = T(0);
    for (int a = 0; a < 5; ++a) v += lap::tap_weight<T>(a) * pass[(2 * p + a) * kCoarse + q];
    coarse[p * kCoarse + q] = v;
  });
  sync();
  // The tile's coarse pixels to the workspace; L^0 of its fine pixels.
  for_each_pixel(kTile / 2, kTile / 2, tid, nt, [&](int p, int q) {
    const int gp = i0 / 2 + p, gq = k0 / 2 + q;
    if (gp < mh && gq < mw) g1[int64_t(gp) * mw + gq] = coarse[(p + 1) * kCoarse + (q + 1)];
  });
  T part = T(0);
  for_each_pixel(kTile, kTile, tid, nt, [&](int r, int k) {
    const int gi = i0 + r, gk = k0 + k;
    if (gi >= nh || gk >= nw) return;
    Taps5<T> tr, tc;
    up_taps5<T>(gi, nh, tr);
    up_taps5<T>(gk, nw, tc);
    T up = T(0);
    for_taps(tr, [&](int ir, T wr) {
      T row = T(0);
      for_taps(tc, [&](int ic, T wc) { row += wc * coarse[(ir - cr0) * kCoarse + (ic - cc0)]; });
      up += wr * row;
    });
    const T v = fine[(r + kFineHalo) * kFine + (k + kFineHalo)] - up;
    signs[int64_t(gi) * nw + gk] = lap::sign_of(v);
    part += v < T(0) ? -v : v;
  });
  return block_sum(double(part), red, tid, nt, sync);
}

// z = U^T sign(L^0) on the coarse tile whose first coarse pixel is (p0, q0) = (i0 / 2, k0 / 2):
// signs0 is level 0 of the plane (n_h x n_w), z the plane's coarse level.
template <typename T, typename Sync>
GLANN_HD void tile_up_adjoint(int nh, int nw, int i0, int k0, const int8_t* signs0, T* z, char* smem, int tid, int nt,
                              const Sync& sync) {
  int8_t* fs = reinterpret_cast<int8_t*>(smem);  // kAdjFine^2 signs of fine rows/cols from i0 - 2
  T* pass = reinterpret_cast<T*>(smem + align16(kAdjFine * kAdjFine));  // kAdjFine x kTile / 2
  const int mh = (nh + 1) / 2, mw = (nw + 1) / 2;
  const int fr0 = i0 - 2, fc0 = k0 - 2;
  for_each_pixel(kAdjFine, kAdjFine, tid, nt, [&](int r, int c) {
    const int gi = fr0 + r, gk = fc0 + c;  // U^T only reads fine pixels of the plane: others stay 0
    fs[r * kAdjFine + c] = (gi >= 0 && gi < nh && gk >= 0 && gk < nw) ? signs0[int64_t(gi) * nw + gk] : int8_t(0);
  });
  sync();
  for_each_pixel(kAdjFine, kTile / 2, tid, nt, [&](int r, int q) {
    Taps5<T> t;
    up_adj_taps5<T>(k0 / 2 + q < mw ? k0 / 2 + q : mw - 1, nw, t);
    T v = T(0);
    for_taps(t, [&](int ic, T wc) { v += wc * T(fs[r * kAdjFine + (ic - fc0)]); });
    pass[r * (kTile / 2) + q] = v;
  });
  sync();
  for_each_pixel(kTile / 2, kTile / 2, tid, nt, [&](int p, int q) {
    const int gp = i0 / 2 + p, gq = k0 / 2 + q;
    if (gp >= mh || gq >= mw) return;
    Taps5<T> t;
    up_adj_taps5<T>(gp, nh, t);
    T v = T(0);
    for_taps(t, [&](int ir, T wr) { v += wr * pass[(ir - fr0) * (kTile / 2) + q]; });
    z[int64_t(gp) * mw + gq] = v;
  });
}

// grad = scale * sign(L^0) + D^T acc1 on the fine tile from (i0, k0): acc1 is the plane's level-1
// accumulator ((n_h+1)/2 x (n_w+1)/2), out(r, c, value) writes a pixel of the plane.
template <typename T, typename Out, typename Sync>
GLANN_HD void tile_down_adjoint(int nh, int nw, int i0, int k0, const int8_t* signs0, const T* acc1, T scale,
                                const Out& out, char* smem, int tid, int nt, const Sync& sync) {
  T* ca = reinterpret_cast<T*>(smem);      // kAdjCoarse^2: acc1 from coarse row/col i0 / 2 - 2
  T* pass = ca + kAdjCoarse * kAdjCoarse;  // kAdjCoarse x kTile
  const int mh = (nh + 1) / 2, mw = (nw + 1) / 2;
  const int cr0 = i0 / 2 - 2, cc0 = k0 / 2 - 2;
  for_each_pixel(kAdjCoarse, kAdjCoarse, tid, nt, [&](int p, int q) {
    const int gp = cr0 + p, gq = cc0 + q;  // D^T only reads coarse pixels of the plane: others stay 0
    ca[p * kAdjCoarse + q] = (gp >= 0 && gp < mh && gq >= 0 && gq < mw) ? acc1[int64_t(gp) * mw + gq] : T(0);
  });
  sync();
  for_each_pixel(kAdjCoarse, kTile, tid, nt, [&](int p, int k) {
    Taps5<T> t;
    down_adj_taps5<T>(k0 + k < nw ? k0 + k : nw - 1, nw, t);
    T v = T(0);
    for_taps(t, [&](int ic, T wc) { v += wc * ca[p * kAdjCoarse + (ic - cc0)]; });
    pass[p * kTile + k] = v;
  });
  sync();
  for_each_pixel(kTile, kTile, tid, nt, [&](int r, int k) {
    const int gi = i0 + r, gk = k0 + k;
    if (gi >= nh || gk >= nw) return;
    Taps5<T> t;
    down_adj_taps5<T>(gi, nh, t);
    T v = scale * T(signs0[int64_t(gi) * nw + gk]);
    for_taps(t, [&](int ir, T wr) { v += wr * pass[(ir - cr0) * kTile + k]; });
    out(gi, gk, v);
  });
}

// Which tile of which plane block b of a tile kernel does (tiles per plane, tiles_w per row of tiles).
struct TileAt {
  int64_t plane, tile;
  int i0, k0;
};

GLANN_HD TileAt tile_at(int64_t b, int64_t tiles, int tiles_w) {
  TileAt t;
  t.plane = b / tiles;
  t.tile = b - t.plane * tiles;
  t.i0 = int(t.tile / tiles_w) * kTile;
  t.k0 = int(t.tile % tiles_w) * kTile;
  return t;
}

// ---- the launch plan ---------------------------------------------------------------------------------

// How the fused kernels run one call, or ok = false (then the legacy kernels run): j0 = 0 when the whole
// pyramid and its adjoint fit one block's shared memory, j0 = 1 when level 0 goes through tiles and the
// rest fits, with planes of at least 5 x 5 pixels.
struct FusedPlan {
  bool ok;
  int j0;
  int plane_threads;
  int64_t forward_smem, backward_smem;  // plane kernels
  int tiles_h, tiles_w;                 // j0 = 1: level-0 tiles per plane
  int64_t slots;  // partial sums per plane: the tiles' (j0 = 1, slot = tile), then the plane kernel's (last)
  // Workspace bytes: forward (G^1 for j0 = 1, then the partials), backward (U^T s_0, acc_1 for j0 = 1).
  int64_t g1_bytes, forward_bytes, backward_bytes;
};

GLANN_HD FusedPlan make_fused_plan(int64_t planes, int64_t h, int64_t w, int levels, int elem, int64_t smem_limit) {
  FusedPlan p{};
  p.ok = false;
  if (planes <= 0 || h <= 0 || w <= 0 || levels < 1 || levels > lap::kMaxLevels) return p;
  // int32 pixel math in a plane; one plane block each, at most 2^30 of them (the launchers' grid cap)
  if (h * w > (int64_t(1) << 30) || planes > (int64_t(1) << 30)) return p;
  for (int j0 = 0; j0 <= 1; ++j0) {
    if (j0 == 1 && (levels < 2 || h < 5 || w < 5)) break;
    const Level l = level_at(int(h), int(w), j0);
    const int nt = plane_threads(l.h, l.w);
    const int64_t fwd = plane_forward_layout(l.h, l.w, levels - j0, elem, nt).bytes;
    const int64_t bwd = plane_backward_layout(l.h, l.w, levels - j0, elem).bytes;
    if (fwd > smem_limit || bwd > smem_limit) continue;
    p.ok = true;
    p.j0 = j0;
    p.plane_threads = nt;
    p.forward_smem = fwd;
    p.backward_smem = bwd;
    p.tiles_h = j0 == 1 ? int((h + kTile - 1) / kTile) : 0;
    p.tiles_w = j0 == 1 ? int((w + kTile - 1) / kTile) : 0;
    p.slots = int64_t(p.tiles_h) * p.tiles_w + 1;
    const int64_t coarse = j0 == 1 ? align16(planes * l.h * l.w * elem) : 0;
    p.g1_bytes = coarse;
    p.forward_bytes = coarse + planes * p.slots * 8;
    p.backward_bytes = 2 * coarse;
    return p;
  }
  return p;
}

}  // namespace lapf
}  // namespace glann

// Per-pixel math of the Laplacian-pyramid loss, shared by the CPU and CUDA kernels.
//
// Every pyramid operator is separable, so each is described per dimension as a short list of
// (source index, weight) taps; a 2-D value is the double sum over the row taps and column taps.
// The four operators and their exact adjoints (n = fine size, m = ceil(n/2) = coarse size):
//   B   : 5-tap binomial blur W = [1,4,6,4,1]/16 with reflect-101 border.  B = C P where P pads
//         by 2 with reflect-101 (n -> n+4) and C is the valid correlation (n+4 -> n).
//   D   = S B        (down: blur, keep even samples), n -> m
//   U   = 2 B Z      (up: zero-insert Z = S^T, blur with 2W on the fine grid), m -> n
//   D^T = B^T Z,  U^T = 2 S B^T,  with B^T = P^T C^T: valid-transpose, then fold the pad back.
// Written with no std:: calls so the same code compiles for host and device.
#pragma once
#include <stdint.h>

#include "common/host_device.h"

namespace glann {
namespace lap {

constexpr int kMaxLevels = 16;
// A fine index has at most 5 pad preimages (n == 1) and each preimage 5 valid-transpose taps.
constexpr int kMaxTaps = 25;

// Binomial taps W[a], a = 0..4 (exact in binary floating point).
template <typename T>
GLANN_HD T tap_weight(int a) {
  return a == 2 ? T(0.375) : ((a == 1 || a == 3) ? T(0.25) : T(0.0625));
}

// d loss / d per_sample[b] of sample b: the gradient of the op's loss (grad_loss, one value or one per sample
// through `stride`) divided by the forward's divisor, in the compute type (the arithmetic of torch's
// `grad / divisor`).
template <typename T>
GLANN_HD T sample_grad_scale(const T* grad_loss, int64_t stride, double divisor, int64_t b) {
  return grad_loss[b * stride] / T(divisor);
}

// OpenCV BORDER_REFLECT_101 with period 2(n-1); n == 1 maps everything to 0.
GLANN_HD int64_t reflect101(int64_t i, int64_t n) {
  // Fast paths without a division: the kernels only ask for indices within 2 (or 4) of the edges.
  if (i >= 0 && i < n) return i;
  if (i < 0 && -i < n) return -i;
  if (i >= n && i < 2 * n - 1) return 2 * (n - 1) - i;
  if (n == 1) return 0;
  const int64_t period = 2 * (n - 1);
  if (i < 0) i = -i;
  i %= period;
  return i >= n ? period - i : i;
}

// sign with sign(0) = 0 (the L1 subgradient we use at 0, as torch does); NaN -> 0 as well.
template <typename T>
GLANN_HD int8_t sign_of(T v) {
  return static_cast<int8_t>((v > T(0)) - (v < T(0)));
}

// Pyramid geometry of one image plane: level sizes and offsets of each level in a packed buffer.
struct Geometry {
  int levels;
  int64_t h[kMaxLevels], w[kMaxLevels], off[kMaxLevels];
  int64_t total;  // sum of h[j] * w[j]
};

GLANN_HD Geometry make_geometry(int64_t height, int64_t width, int levels) {
  Geometry g;
  g.levels = levels;
  int64_t h = height, w = width, off = 0;
  for (int j = 0; j < kMaxLevels; ++j) {
    g.h[j] = h;
    g.w[j] = w;
    g.off[j] = off;
    if (j < levels) off += h * w;
    h = (h + 1) / 2;
    w = (w + 1) / 2;
  }
  g.total = off;
  return g;
}

// CUDA: threads per block of the per-level kernels, and the per-block partial sums one plane needs
// (the workspace holds them so the final reduction runs in a fixed order, without float atomics).
constexpr int kCudaThreads = 256;
GLANN_HD int64_t cuda_partials_per_plane(const Geometry& g) {
  int64_t n = 0;
  for (int j = 0; j < g.levels; ++j) n += (g.h[j] * g.w[j] + kCudaThreads - 1) / kCudaThreads;
  return n;
}

// Workspace parts start on 64-byte boundaries.
GLANN_HD int64_t align64(int64_t n) { return (n + 63) / 64 * 64; }

// CUDA backward: the bytes in front of its pyramid in the workspace, the (B,) per-sample gradient scales
// (at most double), 64-byte aligned. laplacian_workspace_bytes counts them, laplacian_backward_cuda carves them.
GLANN_HD int64_t cuda_backward_scale_bytes(int64_t batch) { return align64(batch * 8); }

template <typename T>
struct Taps {
  int count;
  int64_t idx[kMaxTaps];
  T w[kMaxTaps];
};

// A free function, not a member: members would be inline entities shared by the per-ISA CPU units.
template <typename T>
GLANN_HD void taps_add(Taps<T>& t, int64_t i, T wt) {
  t.idx[t.count] = i;
  t.w[t.count] = wt;
  ++t.count;
}

// Pad positions p in [0, n+4) with reflect101(p - 2) == k (k itself + 2, plus border preimages).
GLANN_HD int pad_preimages(int64_t k, int64_t n, int64_t* out) {
  int c = 0;
  const int64_t border[4] = {0, 1, n + 2, n + 3};
  for (int b = 0; b < 2; ++b)
    if (reflect101(border[b] - 2, n) == k) out[c++] = border[b];
  out[c++] = k + 2;
  for (int b = 2; b < 4; ++b)
    if (reflect101(border[b] - 2, n) == k) out[c++] = border[b];
  return c;
}

// D along one dimension: coarse output q of a fine line of size n.
template <typename T>
GLANN_HD void down_taps(int64_t q, int64_t n, Taps<T>& t) {
  t.count = 0;
  for (int a = 0; a < 5; ++a) taps_add(t, reflect101(2 * q + a - 2, n), tap_weight<T>(a));
}

// U along one dimension: fine output i (fine size n) from the coarse line (only even fine samples
// of the zero-inserted line are nonzero; reflect-101 preserves parity).
template <typename T>
GLANN_HD void up_taps(int64_t i, int64_t n, Taps<T>& t) {
  t.count = 0;
  for (int a = 0; a < 5; ++a) {
    const int64_t s = reflect101(i + a - 2, n);
    if ((s & 1) == 0) taps_add(t, s >> 1, T(2) * tap_weight<T>(a));
  }
}

// D^T = B^T Z along one dimension: fine output i (fine size n) from the coarse line.
template <typename T>
GLANN_HD void down_adj_taps(int64_t i, int64_t n, Taps<T>& t) {
  t.count = 0;
  int64_t pre[5];
  const int np = pad_preimages(i, n, pre);
  for (int k = 0; k < np; ++k)
    for (int a = 0; a < 5; ++a) {
      const int64_t s = pre[k] - a;
      if (s >= 0 && s < n && (s & 1) == 0) taps_add(t, s >> 1, tap_weight<T>(a));
    }
}

// U^T = 2 S B^T along one dimension: coarse output q from the fine line of size n.
template <typename T>
GLANN_HD void up_adj_taps(int64_t q, int64_t n, Taps<T>& t) {
  t.count = 0;
  int64_t pre[5];
  const int np = pad_preimages(2 * q, n, pre);
  for (int k = 0; k < np; ++k)
    for (int a = 0; a < 5; ++a) {
      const int64_t s = pre[k] - a;
      if (s >= 0 && s < n) taps_add(t, s, T(2) * tap_weight<T>(a));
    }
}

// sum_{r,c} wr * wc * src[ir * ld + ic]  (src may be int8 signs)
template <typename T, typename Src>
GLANN_HD T apply_taps(const Taps<T>& tr, const Taps<T>& tc, const Src* src, int64_t ld) {
  T acc = T(0);
  for (int r = 0; r < tr.count; ++r) {
    T row = T(0);
    const Src* line = src + tr.idx[r] * ld;
    for (int c = 0; c < tc.count; ++c) row += tc.w[c] * T(line[tc.idx[c]]);
    acc += tr.w[r] * row;
  }
  return acc;
}

// ---- per-pixel kernels (the CUDA kernels call these; the CPU "pixel path" too, to test them) ----

// G^{j+1}[q1, q2] from G^j (fine size hn x wn, packed rows).
template <typename T>
GLANN_HD T down_pixel(const T* fine, int64_t hn, int64_t wn, int64_t q1, int64_t q2) {
  Taps<T> tr, tc;
  down_taps<T>(q1, hn, tr);
  down_taps<T>(q2, wn, tc);
  return apply_taps(tr, tc, fine, wn);
}

// L^j[i1, i2] = G^j[i1, i2] - U(G^{j+1})[i1, i2]; coarse is hm x wm with hm = ceil(hn/2).
template <typename T>
GLANN_HD T laplacian_pixel(const T* fine, const T* coarse, int64_t hn, int64_t wn, int64_t i1, int64_t i2) {
  Taps<T> tr, tc;
  up_taps<T>(i1, hn, tr);
  up_taps<T>(i2, wn, tc);
  const int64_t wm = (wn + 1) / 2;
  return fine[i1 * wn + i2] - apply_taps(tr, tc, coarse, wm);
}

// Backward accumulator of level l at pixel (q1, q2):
//   acc_l = s_l + D^T acc_{l+1} - U^T s_{l-1},   s_j = scale * w_j * sign(L^j)
// acc_next is acc_{l+1} (absent on the last level), signs_prev is sign(L^{l-1}) (absent on level 0);
// scaled_w is scale * w_l and scaled_w_prev scale * w_{l-1} (unused on level 0).
template <typename T>
GLANN_HD T backward_pixel(const Geometry& g, int l, const int8_t* signs_plane, const T* acc_next, T scaled_w,
                          T scaled_w_prev, int64_t q1, int64_t q2) {
  const int64_t h = g.h[l], w = g.w[l];
  T v = scaled_w * T(signs_plane[g.off[l] + q1 * w + q2]);
  Taps<T> tr, tc;
  if (l + 1 < g.levels) {
    down_adj_taps<T>(q1, h, tr);
    down_adj_taps<T>(q2, w, tc);
    v += apply_taps(tr, tc, acc_next, g.w[l + 1]);
  }
  if (l > 0) {
    const int64_t hf = g.h[l - 1], wf = g.w[l - 1];
    up_adj_taps<T>(q1, hf, tr);
    up_adj_taps<T>(q2, wf, tc);
    v -= scaled_w_prev * apply_taps(tr, tc, signs_plane + g.off[l - 1], wf);
  }
  return v;
}

}  // namespace lap
}  // namespace glann

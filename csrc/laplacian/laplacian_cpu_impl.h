// Row-streaming CPU kernels of the Laplacian-pyramid loss, compiled once per ISA.
//
// Include this file after defining GLANN_LAP_ISA_NS (a namespace name unique to the translation unit):
// laplacian_cpu.cpp (baseline), laplacian_cpu_avx2.cpp and laplacian_cpu_avx512.cpp each compile it
// with their own flags, and everything here lives in that namespace so no symbol is shared between them.
//
// One task = one (b, c) image plane, entirely in a per-thread scratch pyramid (L2-resident for the
// usual image sizes). Vertical operators combine whole rows (contiguous, vectorised); horizontal ones
// work on one row through a reflect-padded line buffer so their inner loops are branch-free.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/parallel.h"
#include "laplacian/laplacian.h"
#include "laplacian/laplacian_math.h"

#ifndef GLANN_LAP_ISA_NS
#error "define GLANN_LAP_ISA_NS before including laplacian_cpu_impl.h"
#endif

namespace glann {
namespace lap {
namespace GLANN_LAP_ISA_NS {

constexpr double kW0 = 0.0625, kW1 = 0.25, kW2 = 0.375;

// A line buffer holds a padded row (width + 8) followed by an output row (<= width).
inline int64_t line_elems(int64_t width) { return 2 * width + 16; }

// ---- horizontal (within one row) ----------------------------------------------------------------

// out[k] = sum_a W[a] in[r(2k + a - 2)], k < ceil(n/2).   pad: n + 4 elements.
template <typename T>
void down_row(const T* in, int64_t n, T* out, T* pad) {
  for (int64_t p = 0; p < 2; ++p) pad[p] = in[reflect101(p - 2, n)];
  std::memcpy(pad + 2, in, sizeof(T) * n);
  for (int64_t p = n + 2; p < n + 4; ++p) pad[p] = in[reflect101(p - 2, n)];
  const int64_t m = (n + 1) / 2;
  const T w0 = T(kW0), w1 = T(kW1), w2 = T(kW2);
  for (int64_t k = 0; k < m; ++k) {
    const T* s = pad + 2 * k;
    out[k] = w0 * (s[0] + s[4]) + w1 * (s[1] + s[3]) + w2 * s[2];
  }
}

// out[i] = 2 sum_a W[a] z[r(i + a - 2)], z = zero-insert of in (m) on the fine grid (n).  pad: n + 4.
template <typename T>
void up_row(const T* in, int64_t n, T* out, T* pad) {
  T* z = pad + 2;
  for (int64_t k = 0; k < n; k += 2) z[k] = in[k >> 1];
  for (int64_t k = 1; k < n; k += 2) z[k] = T(0);
  for (int64_t p = 0; p < 2; ++p) pad[p] = z[reflect101(p - 2, n)];
  for (int64_t p = n + 2; p < n + 4; ++p) pad[p] = z[reflect101(p - 2, n)];
  const T w0 = T(2 * kW0), w1 = T(2 * kW1), w2 = T(2 * kW2);
  for (int64_t i = 0; i < n; ++i) {
    const T* s = pad + i;
    out[i] = w0 * (s[0] + s[4]) + w1 * (s[1] + s[3]) + w2 * s[2];
  }
}

// (C^T v)[p] = sum_a W[a] v[p - a] for a pad position p (v zero outside [0, n)).
template <typename T>
T valid_transpose_at(const T* v, int64_t n, int64_t p) {
  T acc = T(0);
  for (int a = 0; a < 5; ++a)
    if (p - a >= 0 && p - a < n) acc += tap_weight<T>(a) * v[p - a];
  return acc;
}

// out = B^T Z in (D^T along the row): fine n from coarse in.  zz: n + 8 elements.
template <typename T>
void down_adj_row(const T* in, int64_t n, T* out, T* zz) {
  // zz[4 + k] = (Z in)[k], zero margins of 4 so the interior loop needs no bounds.
  for (int p = 0; p < 4; ++p) zz[p] = zz[n + 4 + p] = T(0);
  T* z = zz + 4;
  for (int64_t k = 0; k < n; k += 2) z[k] = in[k >> 1];
  for (int64_t k = 1; k < n; k += 2) z[k] = T(0);
  const T w0 = T(kW0), w1 = T(kW1), w2 = T(kW2);
  // Pad position p = i + 2 maps back to i itself: out[i] = (C^T z)[i + 2].
  for (int64_t i = 0; i < n; ++i) {
    const T* s = zz + i + 2;  // z[i - 2 .. i + 2]
    out[i] = w0 * (s[0] + s[4]) + w1 * (s[1] + s[3]) + w2 * s[2];
  }
  // Fold the four border pad positions back through the reflection.
  const int64_t border[4] = {0, 1, n + 2, n + 3};
  for (int b = 0; b < 4; ++b) out[reflect101(border[b] - 2, n)] += valid_transpose_at(z, n, border[b]);
}

// out = 2 S B^T in (U^T along the row): coarse ceil(n/2) from fine in.  zz: n + 8 elements.
template <typename T>
void up_adj_row(const T* in, int64_t n, T* out, T* zz) {
  for (int p = 0; p < 4; ++p) zz[p] = zz[n + 4 + p] = T(0);
  std::memcpy(zz + 4, in, sizeof(T) * n);
  const int64_t m = (n + 1) / 2;
  const T w0 = T(2 * kW0), w1 = T(2 * kW1), w2 = T(2 * kW2);
  for (int64_t q = 0; q < m; ++q) {
    const T* s = zz + 2 * q + 2;
    out[q] = w0 * (s[0] + s[4]) + w1 * (s[1] + s[3]) + w2 * s[2];
  }
  const int64_t border[4] = {0, 1, n + 2, n + 3};
  for (int b = 0; b < 4; ++b) {
    const int64_t t = reflect101(border[b] - 2, n);
    if ((t & 1) == 0) out[t >> 1] += T(2) * valid_transpose_at(in, n, border[b]);
  }
}

// ---- vertical (whole rows) -----------------------------------------------------------------------

// out[c] = sum_t w[t] rows[t][c]
template <typename T>
void combine_rows(const T* const* rows, const T* w, int count, int64_t len, T* out) {
  const T* r0 = rows[0];
  const T w0 = w[0];
  for (int64_t c = 0; c < len; ++c) out[c] = w0 * r0[c];
  for (int t = 1; t < count; ++t) {
    const T* r = rows[t];
    const T wt = w[t];
    for (int64_t c = 0; c < len; ++c) out[c] += wt * r[c];
  }
}

// dst = wt * signs. restrict: int8 may alias anything, and without it the loop stays scalar.
template <typename T>
void scale_signs(const int8_t* __restrict__ signs, T wt, int64_t n, T* __restrict__ dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = wt * T(signs[i]);
}

template <typename T>
void axpy_row(T a, const T* x, int64_t len, T* y) {
  for (int64_t c = 0; c < len; ++c) y[c] += a * x[c];
}

// l = fine - up: stores sign(l), returns sum |l|. The sum runs in kLanes fixed partial sums (so the
// compiler may vectorise it without -ffast-math, and the order stays fixed), combined in lane order.
constexpr int kLanes = 16;
template <typename T>
T laplacian_row(const T* fine, const T* up, int64_t n, int8_t* sign) {
  T lanes[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes)
    for (int k = 0; k < kLanes; ++k) {
      const T l = fine[c + k] - up[c + k];
      sign[c + k] = sign_of(l);
      lanes[k] += std::fabs(l);
    }
  for (int k = 0; c + k < n; ++k) {
    const T l = fine[c + k] - up[c + k];
    sign[c + k] = sign_of(l);
    lanes[k] += std::fabs(l);
  }
  T sum = T(0);
  for (int k = 0; k < kLanes; ++k) sum += lanes[k];
  return sum;
}

// ---- one plane -----------------------------------------------------------------------------------

// G^0 = x - y of one plane into g (packed rows), reading x and y through their strides.
template <typename T>
void load_diff(const Geometry& geom, const T* x, const int64_t* xs, const T* y, const int64_t* ys, T* g) {
  const int64_t H = geom.h[0], W = geom.w[0];
  for (int64_t i = 0; i < H; ++i) {
    T* row = g + i * W;
    const T* xr = x + i * xs[2];
    const T* yr = y + i * ys[2];
    if (xs[3] == 1 && ys[3] == 1) {
      for (int64_t c = 0; c < W; ++c) row[c] = xr[c] - yr[c];
    } else {
      for (int64_t c = 0; c < W; ++c) row[c] = xr[c * xs[3]] - yr[c * ys[3]];
    }
  }
}

// Forward of one plane from G^0 in g (scratch pyramid, geom.total elements; line0/line1:
// line_elems(width) each). Writes the signs and returns sum_j 4^j sum|L^j| (accumulated per row in
// T, across rows in double).
template <typename T>
double forward_plane(const Geometry& geom, int8_t* signs, T* g, T* line0, T* line1) {
  const int J = geom.levels;
  for (int j = 0; j + 1 < J; ++j) {  // Gaussian pyramid
    const int64_t hn = geom.h[j], wn = geom.w[j], hm = geom.h[j + 1], wm = geom.w[j + 1];
    const T* fine = g + geom.off[j];
    T* coarse = g + geom.off[j + 1];
    const T* rows[5];
    T wts[5];
    for (int64_t q = 0; q < hm; ++q) {
      for (int a = 0; a < 5; ++a) {
        rows[a] = fine + reflect101(2 * q + a - 2, hn) * wn;
        wts[a] = tap_weight<T>(a);
      }
      combine_rows(rows, wts, 5, wn, line0);
      down_row(line0, wn, coarse + q * wm, line1);
    }
  }
  double total = 0.0;
  double level_w = 1.0;
  for (int j = 0; j < J; ++j, level_w *= 4.0) {  // Laplacian levels, |.| and signs
    const int64_t hn = geom.h[j], wn = geom.w[j];
    const T* fine = g + geom.off[j];
    int8_t* sg = signs + geom.off[j];
    double level_sum = 0.0;
    if (j + 1 == J) {
      for (int64_t i = 0; i < hn * wn; ++i) {
        sg[i] = sign_of(fine[i]);
        level_sum += std::fabs(double(fine[i]));
      }
    } else {
      const T* coarse = g + geom.off[j + 1];
      const int64_t wm = geom.w[j + 1];
      Taps<T> tr;
      const T* rows[5];
      for (int64_t i = 0; i < hn; ++i) {
        up_taps<T>(i, hn, tr);
        for (int t = 0; t < tr.count; ++t) rows[t] = coarse + tr.idx[t] * wm;
        combine_rows(rows, tr.w, tr.count, wm, line0);
        up_row(line0, wn, line1 + wn + 8, line1);  // output after the n + 4 pad area
        const T* up = line1 + wn + 8;
        level_sum += double(laplacian_row(fine + i * wn, up, wn, sg + i * wn));
      }
    }
    total += level_w * level_sum;
  }
  return total;
}

// Backward of one plane: grad (contiguous H x W) = sum_j adjoint(4^j scale sign(L^j)).
// acc: scratch pyramid (levels >= 1 used), line0/line1: line_elems(width) each.
template <typename T>
void backward_plane(const Geometry& geom, const int8_t* signs, T scale, T* grad, T* acc, T* line0, T* line1) {
  const int J = geom.levels;
  auto level_ptr = [&](int l) { return l == 0 ? grad : acc + geom.off[l]; };
  auto set_signs = [&](int l, T wt, T* dst) { scale_signs(signs + geom.off[l], wt, geom.h[l] * geom.w[l], dst); };
  T level_w = scale;
  for (int j = 0; j + 1 < J; ++j) level_w *= T(4);
  set_signs(J - 1, level_w, level_ptr(J - 1));
  for (int j = J - 2; j >= 0; --j) {
    level_w /= T(4);
    const int64_t hn = geom.h[j], wn = geom.w[j], hm = geom.h[j + 1], wm = geom.w[j + 1];
    T* coarse = level_ptr(j + 1);
    // acc_{j+1} -= U^T s_j: per fine row, U^T along the row, then the column scatter of 2 S B^T.
    const int8_t* sj = signs + geom.off[j];
    for (int64_t i = 0; i < hn; ++i) {
      scale_signs(sj + i * wn, level_w, wn, line0);
      up_adj_row(line0, wn, line1 + wn + 8, line1);  // coarse row after the n + 8 buffer
      const T* t1 = line1 + wn + 8;
      for (int a = 0; a < 5; ++a) {
        const int64_t t = reflect101(i + a - 2, hn);
        if ((t & 1) == 0) axpy_row(T(-2) * tap_weight<T>(a), t1, wm, coarse + (t >> 1) * wm);
      }
    }
    // acc_j = s_j + D^T acc_{j+1}: per coarse row, D^T along the row, then the column scatter of B^T Z.
    T* fine = level_ptr(j);
    set_signs(j, level_w, fine);
    for (int64_t k = 0; k < hm; ++k) {
      down_adj_row(coarse + k * wm, wn, line0, line1);
      for (int a = 0; a < 5; ++a) axpy_row(tap_weight<T>(a), line0, wn, fine + reflect101(2 * k + a - 2, hn) * wn);
    }
  }
}

// ---- the per-pixel path: the CUDA kernels' functions, in their level-by-level order -----------------
// Slow; it exists so that the CPU test suite checks the math the CUDA kernels run.

template <typename T>
double forward_plane_pixels(const Geometry& geom, int8_t* signs, T* g) {
  for (int j = 0; j + 1 < geom.levels; ++j)
    for (int64_t q1 = 0; q1 < geom.h[j + 1]; ++q1)
      for (int64_t q2 = 0; q2 < geom.w[j + 1]; ++q2)
        g[geom.off[j + 1] + q1 * geom.w[j + 1] + q2] = down_pixel(g + geom.off[j], geom.h[j], geom.w[j], q1, q2);
  double total = 0.0, level_w = 1.0;
  for (int j = 0; j < geom.levels; ++j, level_w *= 4.0) {
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
    total += level_w * level_sum;
  }
  return total;
}

template <typename T>
void backward_plane_pixels(const Geometry& geom, const int8_t* signs, T scale, T* grad, T* acc) {
  for (int l = geom.levels - 1; l >= 0; --l) {
    T* dst = l == 0 ? grad : acc + geom.off[l];
    const T* next = l + 1 < geom.levels ? acc + geom.off[l + 1] : nullptr;
    for (int64_t q1 = 0; q1 < geom.h[l]; ++q1)
      for (int64_t q2 = 0; q2 < geom.w[l]; ++q2)
        dst[q1 * geom.w[l] + q2] = backward_pixel(geom, l, signs, next, scale, q1, q2);
  }
}

// ---- drivers: one task per (b, c) plane ----------------------------------------------------------

inline int64_t slot_bytes(const Geometry& g, int64_t elem) {
  return ((g.total + 2 * line_elems(g.w[0])) * elem + 63) / 64 * 64;
}

template <typename T>
Status forward_all(const LaplacianForwardParams& p) {
  const Geometry geom = make_geometry(p.height, p.width, p.levels);
  const int64_t planes = p.batch * p.channels;
  const int slots = parallel_slots(planes, p.num_threads);
  const int64_t sums_bytes = (planes * int64_t(sizeof(double)) + 63) / 64 * 64;
  const int64_t sb = slot_bytes(geom, sizeof(T));
  if (p.workspace_bytes < sums_bytes + slots * sb)
    return Status::Error(StatusCode::kInvalidArgument, "laplacian_forward_cpu: workspace too small");
  char* ws = static_cast<char*>(p.workspace);
  double* plane_sums = reinterpret_cast<double*>(ws);
  const T* x = static_cast<const T*>(p.x);
  const T* y = static_cast<const T*>(p.y);
  parallel_for(planes, p.num_threads, [&](int64_t task, int slot) {
    const int64_t b = task / p.channels, c = task % p.channels;
    T* g = reinterpret_cast<T*>(ws + sums_bytes + slot * sb);
    T* line0 = g + geom.total;
    T* line1 = line0 + line_elems(geom.w[0]);
    int8_t* signs = p.signs + task * geom.total;
    load_diff(geom, x + b * p.x_strides[0] + c * p.x_strides[1], p.x_strides, y + b * p.y_strides[0] + c * p.y_strides[1],
              p.y_strides, g);
    plane_sums[task] =
        p.pixel_path ? forward_plane_pixels(geom, signs, g) : forward_plane(geom, signs, g, line0, line1);
  });
  // Fixed-order reduction: the result does not depend on the thread count or task assignment.
  T* out = static_cast<T*>(p.per_sample);
  for (int64_t b = 0; b < p.batch; ++b) {
    double s = 0.0;
    for (int64_t c = 0; c < p.channels; ++c) s += plane_sums[b * p.channels + c];
    out[b] = T(s);
  }
  return Status::Ok();
}

template <typename T>
Status backward_all(const LaplacianBackwardParams& p) {
  const Geometry geom = make_geometry(p.height, p.width, p.levels);
  const int64_t planes = p.batch * p.channels;
  const int slots = parallel_slots(planes, p.num_threads);
  const int64_t sb = slot_bytes(geom, sizeof(T));
  if (p.workspace_bytes < slots * sb)
    return Status::Error(StatusCode::kInvalidArgument, "laplacian_backward_cpu: workspace too small");
  char* ws = static_cast<char*>(p.workspace);
  const T* scale = static_cast<const T*>(p.grad_scale);
  T* grad = static_cast<T*>(p.grad);
  const int64_t hw = p.height * p.width;
  parallel_for(planes, p.num_threads, [&](int64_t task, int slot) {
    T* acc = reinterpret_cast<T*>(ws + slot * sb);
    T* line0 = acc + geom.total;
    T* line1 = line0 + line_elems(geom.w[0]);
    const int8_t* signs = p.signs + task * geom.total;
    const T sc = scale[task / p.channels];
    if (p.pixel_path)
      backward_plane_pixels(geom, signs, sc, grad + task * hw, acc);
    else
      backward_plane(geom, signs, sc, grad + task * hw, acc, line0, line1);
  });
  return Status::Ok();
}

inline Status forward(const LaplacianForwardParams& p) {
  return p.dtype == DType::kFloat64 ? forward_all<double>(p) : forward_all<float>(p);
}
inline Status backward(const LaplacianBackwardParams& p) {
  return p.dtype == DType::kFloat64 ? backward_all<double>(p) : backward_all<float>(p);
}

}  // namespace GLANN_LAP_ISA_NS
}  // namespace lap
}  // namespace glann

// CPU kernels of the sphere family, compiled once per SIMD level: each sphere_cpu_<isa>.cpp defines
// GLANN_ISA (baseline, avx2) and includes this file (the scheme and its no-shared-code rule:
// common/cpu_dispatch.h); sphere_cpu.cpp picks a copy at run time (AVX-512 CPUs run the avx2 copy).
// Rows are independent and each is processed by one thread in a fixed order of operations, and
// contraction into FMAs is off (-ffp-contract=off for these sources), so every ISA and thread count
// gives bitwise identical results.
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "common/parallel.h"
#include "sphere/sphere.h"
#include "sphere/sphere_cpu.h"
#include "sphere/sphere_math.h"

#ifndef GLANN_ISA
#error "define GLANN_ISA (the copy's namespace) before including sphere_cpu_isa.h"
#endif

namespace glann {
namespace sphere_cpu {
namespace GLANN_ISA {

using sphere::AdamScalars;

// Elements per task: large enough to amortise waking the pool, small enough to balance two threads.
constexpr int64_t kGrainElems = 32768;

// Splits `rows` rows of `dim` elements into tasks and runs fn(begin, end) on each.
template <typename Fn>
void for_row_blocks(int64_t rows, int64_t dim, int num_threads, const Fn& fn) {
  const int64_t work = rows * std::max<int64_t>(dim, 1);
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(rows, work / kGrainElems));
  const int64_t per = (rows + tasks - 1) / tasks;
  if (tasks == 1 || num_threads <= 1) {
    fn(int64_t{0}, rows);
    return;
  }
  parallel_for_each(tasks, num_threads, [&](int64_t t, int) {
    const int64_t b = t * per;
    fn(b, std::min(rows, b + per));
  });
}

inline void lower_to(std::atomic<int64_t>& first, int64_t row) {
  int64_t cur = first.load(std::memory_order_relaxed);
  while (row < cur && !first.compare_exchange_weak(cur, row, std::memory_order_relaxed)) {
  }
}

// Sum of squares in double with eight independent partial sums: a fixed order (deterministic) that
// does not serialise on one add's latency. kUnit lets the compiler vectorise the contiguous case.
template <typename T, bool kUnit>
inline double sum_sq(const T* x, int64_t n, int64_t s) {
  double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int k = 0; k < 8; ++k) {
      const double v = static_cast<double>(x[(j + k) * (kUnit ? 1 : s)]);
      a[k] += v * v;
    }
  }
  for (int k = 0; j < n; ++j, ++k) {
    const double v = static_cast<double>(x[j * (kUnit ? 1 : s)]);
    a[k] += v * v;
  }
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

template <typename T, bool kUnit>
void scale_row(const T* x, int64_t xs, T* y, int64_t ys, int64_t n, double inv) {
  for (int64_t j = 0; j < n; ++j)
    y[j * (kUnit ? 1 : ys)] = static_cast<T>(static_cast<double>(x[j * (kUnit ? 1 : xs)]) * inv);
}

// One thread walks the whole row: nothing to reduce across lanes (see sphere::project_row_rescaled).
struct ThreadLanes {
  int64_t first = 0, step = 1;
  bool any(bool b) const { return b; }
  double max(double v) const { return v; }
  double sum(double v) const { return v; }
};

// A strided row read and written in double (the accumulation type of float32/float64 rows).
template <typename T>
struct StridedRow {
  const T* x;
  int64_t xs;
  T* y;
  int64_t ys;
  int64_t n;
  double load(int64_t j) const { return static_cast<double>(x[j * xs]); }
  void store(int64_t j, double v) const { y[j * ys] = static_cast<T>(v); }
};

// Two passes over the row: read (norm, finiteness) then write, so a bad row is never touched.
// Returns false for a non-finite row, which is left unwritten.
template <typename T>
bool project_row(const T* x, int64_t xs, T* y, int64_t ys, int64_t n) {
  const bool unit = xs == 1 && ys == 1;
  const double s = unit ? sum_sq<T, true>(x, n, 1) : sum_sq<T, false>(x, n, xs);
  if (!sphere::sum_is_safe(s))
    return sphere::project_row_rescaled<double>(StridedRow<T>{x, xs, y, ys, n}, ThreadLanes{});
  const double inv = 1.0 / std::sqrt(s);
  if (unit)
    scale_row<T, true>(x, 1, y, 1, n, inv);
  else
    scale_row<T, false>(x, xs, y, ys, n, inv);
  return true;
}

template <typename T>
KernelResult project_impl(const ProjectParams& p) {
  const T* in = static_cast<const T*>(p.in);
  T* out = static_cast<T*>(p.out);
  std::atomic<int64_t> first_bad(p.rows);
  for_row_blocks(p.rows, p.dim, p.exec.num_threads, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      if (!project_row(in + i * p.in_strides[0], p.in_strides[1], out + i * p.out_strides[0], p.out_strides[1], p.dim))
        lower_to(first_bad, i);
    }
  });
  const int64_t bad = first_bad.load();
  if (bad < p.rows) return {KernelResult::kNonFiniteRow, bad};
  return {};
}

// Exponent bits all ones <=> NaN or Inf. Integer ops and no early exit, so the contiguous case vectorises.
template <typename T, bool kUnit>
bool row_finite(const T* x, int64_t n, int64_t s) {
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  constexpr U kExp = sizeof(T) == 4 ? U(0x7f800000u) : U(0x7ff0000000000000ull);
  U bad = 0;
  for (int64_t j = 0; j < n; ++j) {
    U u;
    std::memcpy(&u, x + j * (kUnit ? 1 : s), sizeof(U));
    bad |= U((u & kExp) == kExp);
  }
  return bad == 0;
}

// Square roots in place. std::sqrt may set errno, which stops GCC from vectorising it (short of
// -fno-math-errno), so the SIMD form is spelt out; _mm*_sqrt_p* are IEEE correctly rounded like sqrtss.
inline void sqrt_inplace(float* x, int64_t n) {
  int64_t j = 0;
#if defined(__AVX__)
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(x + j, _mm256_sqrt_ps(_mm256_loadu_ps(x + j)));
#elif defined(__SSE2__)
  for (; j + 4 <= n; j += 4) _mm_storeu_ps(x + j, _mm_sqrt_ps(_mm_loadu_ps(x + j)));
#endif
  for (; j < n; ++j) x[j] = std::sqrt(x[j]);
}
inline void sqrt_inplace(double* x, int64_t n) {
  int64_t j = 0;
#if defined(__AVX__)
  for (; j + 4 <= n; j += 4) _mm256_storeu_pd(x + j, _mm256_sqrt_pd(_mm256_loadu_pd(x + j)));
#elif defined(__SSE2__)
  for (; j + 2 <= n; j += 2) _mm_storeu_pd(x + j, _mm_sqrt_pd(_mm_loadu_pd(x + j)));
#endif
  for (; j < n; ++j) x[j] = std::sqrt(x[j]);
}

// table, moments and grad never alias (checked in Python), hence __restrict. Chunks of the row go through
// three vectorised loops: moments, square roots, parameters; the same operations as adam_element.
template <typename T, bool kUnit>
void adam_row(T* __restrict w, T* __restrict m, T* __restrict v, const T* __restrict g, int64_t gs, int64_t n,
              const AdamScalars<T>& s) {
  constexpr int64_t kChunk = 256;
  T root[kChunk];
  for (int64_t b = 0; b < n; b += kChunk) {
    const int64_t e = std::min(kChunk, n - b);
    for (int64_t j = 0; j < e; ++j) {
      T mj = m[b + j], vj = v[b + j];
      sphere::adam_moments(g[(b + j) * (kUnit ? 1 : gs)], mj, vj, s);
      m[b + j] = mj;
      v[b + j] = vj;
      root[j] = vj;
    }
    sqrt_inplace(root, e);
    for (int64_t j = 0; j < e; ++j) w[b + j] = sphere::adam_param(w[b + j], m[b + j], root[j], s);
  }
}

template <typename T, bool kUnit>
void sgd_row(T* __restrict w, const T* __restrict g, int64_t gs, int64_t n, T neg_lr) {
  for (int64_t j = 0; j < n; ++j) w[j] = sphere::sgd_element(w[j], g[j * (kUnit ? 1 : gs)], neg_lr);
}

template <typename T>
KernelResult latent_step_impl(const LatentStepParams& p) {
  T* table = static_cast<T*>(p.table);
  T* exp_avg = static_cast<T*>(p.exp_avg);
  T* exp_avg_sq = static_cast<T*>(p.exp_avg_sq);
  const T* grad = static_cast<const T*>(p.grad);
  const int64_t n = p.dim;

  // Phase 1, read only: grad finite and indices in range, so a failure leaves everything untouched.
  std::atomic<int64_t> bad_grad(p.batch), bad_index(p.batch);
  const int64_t* gstr = p.grad_strides;
  for_row_blocks(p.batch, n, p.exec.num_threads, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t r = p.indices[i * p.indices_strides[0]];
      if (r < 0 || r >= p.table_rows) lower_to(bad_index, i);
      const T* g = grad + i * gstr[0];
      const bool ok = gstr[1] == 1 ? row_finite<T, true>(g, n, 1) : row_finite<T, false>(g, n, gstr[1]);
      if (!ok) lower_to(bad_grad, i);
    }
  });
  if (bad_index.load() < p.batch) return {KernelResult::kBadIndex, bad_index.load()};
  if (bad_grad.load() < p.batch) return {KernelResult::kNonFiniteRow, bad_grad.load()};

  // Phase 2: update each touched row, then re-project it while it is still in L1.
  const AdamScalars<T> s{static_cast<T>(p.one_minus_beta1), static_cast<T>(p.one_minus_beta2), static_cast<T>(p.eps),
                         static_cast<T>(p.neg_step_size)};
  const T neg_lr = static_cast<T>(p.neg_lr);
  const bool adam = p.optimizer == LatentOptimizer::kAdam;
  for_row_blocks(p.batch, n, p.exec.num_threads, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t r = p.indices[i * p.indices_strides[0]];
      T* w = table + r * p.table_strides[0];
      const T* g = grad + i * gstr[0];
      const int64_t gs = gstr[1];
      if (adam) {
        T* m = exp_avg + r * p.table_strides[0];
        T* v = exp_avg_sq + r * p.table_strides[0];
        if (gs == 1)
          adam_row<T, true>(w, m, v, g, 1, n, s);
        else
          adam_row<T, false>(w, m, v, g, gs, n, s);
      } else if (gs == 1) {
        sgd_row<T, true>(w, g, 1, n, neg_lr);
      } else {
        sgd_row<T, false>(w, g, gs, n, neg_lr);
      }
      // A row made non-finite by NaN/Inf already in the table or state stays as computed (documented).
      if (p.project) project_row(w, 1, w, 1, n);
    }
  });
  return {};
}

KernelResult project(const ProjectParams& p) {
  return p.dtype == DType::kFloat32 ? project_impl<float>(p) : project_impl<double>(p);
}
KernelResult latent_step(const LatentStepParams& p) {
  return p.dtype == DType::kFloat32 ? latent_step_impl<float>(p) : latent_step_impl<double>(p);
}

const Kernels kKernels = {GLANN_ISA_NAME, project, latent_step};

}  // namespace GLANN_ISA
}  // namespace sphere_cpu
}  // namespace glann

// CPU kernel templates of the sphere family, compiled once per ISA: sphere_cpu.cpp (baseline x86-64 or
// the native ISA elsewhere) and sphere_cpu_avx2.cpp (AVX2+FMA flags). Include only from those files, after
// defining GLANN_SPHERE_ISA_NS. Rows are independent and each is processed by one thread in a fixed order
// of operations, and contraction into FMAs is off (sphere_math.h), so every ISA and thread count gives
// bitwise identical results.
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <limits>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "sphere/sphere.h"
#include "sphere/sphere_math.h"

namespace glann {
// What a CPU kernel copy reports. Plain data on purpose: the per-ISA copies must not emit inline
// library code (std::string, Status) that the linker could share with the baseline copy.
#ifndef GLANN_SPHERE_KERNEL_RESULT
#define GLANN_SPHERE_KERNEL_RESULT
struct KernelResult {
  enum Code : int { kOk = 0, kNonFiniteRow = 1, kBadIndex = 2 };
  int code = kOk;
  int64_t row = -1;
};
#endif

namespace sphere_detail {
// glann::parallel_for over tasks [0, tasks), calling fn(ctx, task). Defined in sphere_cpu.cpp.
void run_tasks(int64_t tasks, int num_threads, void (*fn)(void* ctx, int64_t task), void* ctx);
}  // namespace sphere_detail
}  // namespace glann

#ifndef GLANN_SPHERE_ISA_NS
#error "define GLANN_SPHERE_ISA_NS before including sphere_cpu_kernels.h"
#endif

namespace glann {
namespace GLANN_SPHERE_ISA_NS {


using sphere::AdamScalars;

// Elements per task: large enough to amortise waking the pool, small enough to balance two threads.
constexpr int64_t kGrainElems = 32768;

// Splits `rows` rows of `dim` elements into tasks and runs fn(begin, end) on each. The pool is reached
// through sphere_detail::run_tasks (baseline code), so no std::function is built in a per-ISA copy.
template <typename Fn>
void for_row_blocks(int64_t rows, int64_t dim, int num_threads, const Fn& fn) {
  const int64_t work = rows * std::max<int64_t>(dim, 1);
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(rows, work / kGrainElems));
  const int64_t per = (rows + tasks - 1) / tasks;
  if (tasks == 1 || num_threads <= 1) {
    fn(int64_t{0}, rows);
    return;
  }
  struct Ctx {
    const Fn* fn;
    int64_t rows, per;
  } ctx{&fn, rows, per};
  sphere_detail::run_tasks(tasks, num_threads, [](void* c, int64_t t) {
    const Ctx& x = *static_cast<const Ctx*>(c);
    const int64_t b = t * x.per;
    (*x.fn)(b, std::min(x.rows, b + x.per));
  }, &ctx);
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

// Rare path: zero rows, NaN/Inf, and float64 rows whose plain sum of squares is unsafe. Scaling by an
// exact power of two (ldexp) keeps the direction exact. Returns false for a non-finite row, which is
// then left unwritten.
template <typename T>
bool project_row_slow(const T* x, int64_t xs, T* y, int64_t ys, int64_t n) {
  double amax = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const double a = std::fabs(static_cast<double>(x[j * xs]));
    if (!sphere::finite_sum(a)) return false;
    amax = std::max(amax, a);
  }
  if (amax == 0.0) {
    const T fill = static_cast<T>(1.0 / std::sqrt(static_cast<double>(n)));
    for (int64_t j = 0; j < n; ++j) y[j * ys] = fill;
    return true;
  }
  int e = 0;
  std::frexp(amax, &e);
  double s = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const double v = std::ldexp(static_cast<double>(x[j * xs]), -e);
    s += v * v;
  }
  const double inv = 1.0 / std::sqrt(s);
  for (int64_t j = 0; j < n; ++j) y[j * ys] = static_cast<T>(std::ldexp(static_cast<double>(x[j * xs]), -e) * inv);
  return true;
}

// Two passes over the row: read (norm, finiteness) then write, so a bad row is never touched.
template <typename T>
bool project_row(const T* x, int64_t xs, T* y, int64_t ys, int64_t n) {
  const bool unit = xs == 1 && ys == 1;
  const double s = unit ? sum_sq<T, true>(x, n, 1) : sum_sq<T, false>(x, n, xs);
  if (!(s >= sphere::kSafeLow && s <= sphere::kSafeHigh)) return project_row_slow(x, xs, y, ys, n);
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
  for_row_blocks(p.rows, p.dim, p.num_threads, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      if (!project_row(in + i * p.in_row_stride, p.in_col_stride, out + i * p.out_row_stride, p.out_col_stride,
                       p.dim))
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
  for_row_blocks(p.batch, n, p.num_threads, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t r = p.indices[i * p.index_stride];
      if (r < 0 || r >= p.table_rows) lower_to(bad_index, i);
      const T* g = grad + i * p.grad_row_stride;
      const bool ok = p.grad_col_stride == 1 ? row_finite<T, true>(g, n, 1) : row_finite<T, false>(g, n, p.grad_col_stride);
      if (!ok) lower_to(bad_grad, i);
    }
  });
  if (bad_index.load() < p.batch) return {KernelResult::kBadIndex, bad_index.load()};
  if (bad_grad.load() < p.batch) return {KernelResult::kNonFiniteRow, bad_grad.load()};

  // Phase 2: update each touched row, then re-project it while it is still in L1.
  const AdamScalars<T> s{static_cast<T>(p.one_minus_beta1), static_cast<T>(p.one_minus_beta2),
                         static_cast<T>(p.eps), static_cast<T>(p.neg_step_size)};
  const T neg_lr = static_cast<T>(p.neg_lr);
  const bool adam = p.optimizer == LatentOptimizer::kAdam;
  for_row_blocks(p.batch, n, p.num_threads, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t r = p.indices[i * p.index_stride];
      T* w = table + r * p.table_row_stride;
      const T* g = grad + i * p.grad_row_stride;
      const int64_t gs = p.grad_col_stride;
      if (adam) {
        T* m = exp_avg + r * p.table_row_stride;
        T* v = exp_avg_sq + r * p.table_row_stride;
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


// Entry points of this ISA copy (dtype already validated by sphere_cpu.cpp); defined once per TU.
KernelResult project(const ProjectParams& p) {
  return p.dtype == DType::kFloat32 ? project_impl<float>(p) : project_impl<double>(p);
}
KernelResult latent_step(const LatentStepParams& p) {
  return p.dtype == DType::kFloat32 ? latent_step_impl<float>(p) : latent_step_impl<double>(p);
}

}  // namespace GLANN_SPHERE_ISA_NS
}  // namespace glann

// Per-element math shared by the CPU and CUDA sphere kernels. Compiles with and without nvcc.
//
// The optimizer steps must reproduce torch.optim to the bit, so every operation is rounded on its own:
// on the device through the _rn intrinsics (nvcc would otherwise fuse a*b+c into an FMA); on the host
// CMakeLists.txt compiles the sphere CPU sources with -ffp-contract=off.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace glann {
namespace sphere {

GLANN_HD float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
GLANN_HD double add_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
GLANN_HD float sub_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
GLANN_HD double sub_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
GLANN_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
GLANN_HD double mul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
GLANN_HD float div_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
GLANN_HD double div_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}
GLANN_HD float sqrt_rn(float a) {
#ifdef __CUDA_ARCH__
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}
GLANN_HD double sqrt_rn(double a) {
#ifdef __CUDA_ARCH__
  return __dsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

// Adam scalars already rounded to the element type T (torch rounds Python scalars the same way).
template <typename T>
struct AdamScalars {
  T one_minus_beta1, one_minus_beta2, eps, neg_step_size;
};

// One element of torch.optim._functional.sparse_adam, in the same order of operations:
//   exp_avg_update = (g - m) * (1 - beta1);       m = m + exp_avg_update
//   exp_avg_sq_update = (g^2 - v) * (1 - beta2);  v = v + exp_avg_sq_update
//   numer = exp_avg_update + m_old (== new m);    denom = sqrt(exp_avg_sq_update + v_old) + eps
//   p = p + (-step_size) * (numer / denom)
// Split in two so the CPU can take the square roots of a whole chunk with SIMD in between.
template <typename T>
GLANN_HD void adam_moments(T g, T& m, T& v, const AdamScalars<T>& s) {
  m = add_rn(m, mul_rn(sub_rn(g, m), s.one_minus_beta1));
  v = add_rn(v, mul_rn(sub_rn(mul_rn(g, g), v), s.one_minus_beta2));
}
// New p from the updated m and sqrt(updated v).
template <typename T>
GLANN_HD T adam_param(T p, T m, T sqrt_v, const AdamScalars<T>& s) {
  return add_rn(p, mul_rn(s.neg_step_size, div_rn(m, add_rn(sqrt_v, s.eps))));
}
// Returns the new p and updates m and v.
template <typename T>
GLANN_HD T adam_element(T p, T g, T& m, T& v, const AdamScalars<T>& s) {
  adam_moments(g, m, v, s);
  return adam_param(p, m, sqrt_rn(v), s);
}

// torch.optim.SGD (no momentum, no weight decay) with a sparse grad runs p.index_add_(0, i, g, alpha=-lr).
// On the CPU that is a fused multiply-add (one rounding); on CUDA this uses p + round(-lr * g).
template <typename T>
GLANN_HD T sgd_element(T p, T g, T neg_lr) {
#ifdef __CUDA_ARCH__
  return add_rn(p, mul_rn(neg_lr, g));
#else
  return std::fma(neg_lr, g, p);
#endif
}

// ---- projection of one row onto the unit sphere -------------------------------------------------
//
// Accumulation type A: double for float32/float64 rows, float for float16/bfloat16 rows (CUDA only).
// A row's sum of squares is safe to use as it is within [kLow, kHigh]: below it the subnormal range
// loses bits, above it the sum may have overflowed. kMax is A's largest finite value.
template <typename A>
struct ProjectLimits;
template <>
struct ProjectLimits<double> {
  static constexpr double kLow = 0x1p-900, kHigh = 0x1p+900, kMax = 1.7976931348623157e308;
};
template <>
struct ProjectLimits<float> {
  static constexpr float kLow = 0x1p-100f, kHigh = 0x1p+100f, kMax = 3.4028234663852886e38f;
};

template <typename A>
GLANN_HD bool sum_is_safe(A s) {
  return s >= ProjectLimits<A>::kLow && s <= ProjectLimits<A>::kHigh;
}

// The rare path of the projection: a row that is zero, holds NaN/Inf, or whose sum of squares is not
// safe. Scaling by 2^-e, e the exponent of max |x| (frexp/ldexp: exact, the direction is kept), brings
// the sum into range. Zero rows become (1, ..., 1) / sqrt(n). Returns false, writing nothing, for a row
// with NaN or Inf.
//
// Written once for a CPU thread that walks the whole row (first 0, step 1, nothing to reduce) and a CUDA
// warp whose lane l takes the elements l, l + 32, ... : `lanes` gives first, step and the reductions
// across lanes (any, max, sum); `row` gives n, load(j) (element j in A) and store(j, value in A).
template <typename A, typename Row, typename Lanes>
GLANN_HD bool project_row_rescaled(const Row& row, const Lanes& lanes) {
  A amax = 0;
  bool bad = false;
  for (int64_t j = lanes.first; j < row.n; j += lanes.step) {
    const A a = fabs(row.load(j));
    bad |= !(a <= ProjectLimits<A>::kMax);  // NaN fails every comparison, Inf exceeds the bound
    amax = amax < a ? a : amax;
  }
  if (lanes.any(bad)) return false;
  amax = lanes.max(amax);
  if (amax == A(0)) {
    const A fill = static_cast<A>(1.0 / sqrt(static_cast<double>(row.n)));
    for (int64_t j = lanes.first; j < row.n; j += lanes.step) row.store(j, fill);
    return true;
  }
  int e = 0;
  frexp(amax, &e);
  A s = 0;
  for (int64_t j = lanes.first; j < row.n; j += lanes.step) {
    const A v = ldexp(row.load(j), -e);
    s += v * v;
  }
  const A inv = A(1) / sqrt(lanes.sum(s));
  for (int64_t j = lanes.first; j < row.n; j += lanes.step) row.store(j, ldexp(row.load(j), -e) * inv);
  return true;
}

}  // namespace sphere
}  // namespace glann

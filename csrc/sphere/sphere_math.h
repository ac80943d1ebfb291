// Per-element math shared by the CPU and CUDA sphere kernels. Compiles with and without nvcc.
//
// The optimizer steps must reproduce torch.optim to the bit, so every operation is rounded on its own:
// on the device through the _rn intrinsics (nvcc would otherwise fuse a*b+c into an FMA); on the host
// contraction is switched off (below for clang, in the CPU sources for GCC).
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define GLANN_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define GLANN_HD inline __attribute__((always_inline))  // the per-element helpers must inline to vectorise
#else
#define GLANN_HD inline
#endif

// Host: clang honours this pragma here; GCC needs `#pragma GCC optimize("fp-contract=off")` at the very
// top of each CPU source (see sphere_cpu.cpp), because GCC will not inline across differing options.
#if !defined(__CUDACC__) && defined(__clang__)
#pragma clang fp contract(off)
#endif

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

// Finite test that survives any compiler flag: NaN fails every comparison, Inf exceeds the bound.
GLANN_HD bool finite_sum(double s) { return s <= 1.7976931348623157e308; }

// Sums of squares of float64 rows are rescaled when they leave [kSafeLow, kSafeHigh]: below it the
// subnormal range loses bits, above it the sum may have overflowed.
constexpr double kSafeLow = 0x1p-900;
constexpr double kSafeHigh = 0x1p+900;

}  // namespace sphere
}  // namespace glann

// The CPU kernel table of the Laplacian-pyramid loss: filled by every SIMD copy (laplacian_cpu_isa.h),
// picked by laplacian_cpu.cpp (the scheme: common/cpu_dispatch.h), and the scratch sizes both need.
#pragma once
#include <cstdint>

#include "common/cpu_dispatch.h"
#include "laplacian/laplacian.h"
#include "laplacian/laplacian_math.h"

namespace glann {
static_assert(kLaplacianMaxLevels == lap::kMaxLevels, "one level limit");
namespace lap_cpu {

struct Kernels {
  const char* name;  // the copy: baseline, avx2 or avx512
  // dtype float32 or float64 (checked by the caller). Failures: kWorkspaceTooSmall, and in the forward
  // kNonFiniteRow (row = sample, input 0 = x, 1 = y) when asked to check.
  KernelResult (*forward)(const LaplacianForwardParams& p);
  KernelResult (*backward)(const LaplacianBackwardParams& p);
};

GLANN_DECLARE_ISA_COPIES(Kernels)

// Bytes of one interleaved element (8 float or 4 double planes): measured a little faster than 64
// (the group's pyramid of a 128x128 image then still fits in L2) and it is one AVX2 register.
constexpr int kGroupBytes = 32;

// A line buffer holds a padded row (width + 8 elements) followed by an output row (<= width).
GLANN_HD int64_t line_elems(int64_t width) { return 2 * width + 16; }

// The backward's buffer of one level's rows after their horizontal pass: the larger of
// ceil(h/2) rows of w (D^T) and h rows of ceil(w/2) (U^T) elements, level 0 being the largest.
GLANN_HD int64_t rows_elems(const lap::Geometry& g) {
  const int64_t down_adj = (g.h[0] + 1) / 2 * g.w[0], up_adj = g.h[0] * ((g.w[0] + 1) / 2);
  return down_adj > up_adj ? down_adj : up_adj;
}

// Scratch bytes per thread: the interleaved pyramid, two line buffers, the rows buffer and the
// interleaved signs (the pixel path uses a prefix of it).
GLANN_HD int64_t slot_bytes(const lap::Geometry& g, int64_t elem) {
  const int64_t lanes = kGroupBytes / elem;
  const int64_t values = (g.total + 2 * line_elems(g.w[0]) + rows_elems(g)) * lanes;
  return (values * elem + g.total * lanes + 63) / 64 * 64;
}

}  // namespace lap_cpu
}  // namespace glann

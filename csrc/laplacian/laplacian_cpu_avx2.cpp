// The row kernels of laplacian_cpu_impl.h compiled for AVX2 (flags set by CMakeLists.txt).
#define GLANN_LAP_ISA_NS avx2
#include "laplacian/laplacian_cpu_impl.h"

namespace glann {
Status laplacian_forward_cpu_avx2(const LaplacianForwardParams& p) { return lap::avx2::forward(p); }
Status laplacian_backward_cpu_avx2(const LaplacianBackwardParams& p) { return lap::avx2::backward(p); }
}  // namespace glann

// The row kernels of laplacian_cpu_impl.h compiled for AVX512 (flags set by CMakeLists.txt).
#define GLANN_LAP_ISA_NS avx512
#include "laplacian/laplacian_cpu_impl.h"

namespace glann {
Status laplacian_forward_cpu_avx512(const LaplacianForwardParams& p) { return lap::avx512::forward(p); }
Status laplacian_backward_cpu_avx512(const LaplacianBackwardParams& p) { return lap::avx512::backward(p); }
}  // namespace glann

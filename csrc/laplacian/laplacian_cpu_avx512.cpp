// The row kernels of the Laplacian-pyramid loss, avx512 copy (see common/cpu_dispatch.h).
#define GLANN_ISA avx512
#include "laplacian/laplacian_cpu_isa.h"

// The row kernels of the Laplacian-pyramid loss, avx2 copy (see common/cpu_dispatch.h).
#define GLANN_ISA avx2
#include "laplacian/laplacian_cpu_isa.h"

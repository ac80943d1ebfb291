// The row kernels of the Laplacian-pyramid loss, baseline copy (see common/cpu_dispatch.h).
#define GLANN_ISA baseline
#include "laplacian/laplacian_cpu_isa.h"

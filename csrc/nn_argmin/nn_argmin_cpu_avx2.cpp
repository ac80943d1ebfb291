// nn_argmin CPU micro-kernel, avx2 copy (see common/cpu_dispatch.h).
#define GLANN_ISA avx2
#include "nn_argmin/nn_argmin_cpu_isa.h"

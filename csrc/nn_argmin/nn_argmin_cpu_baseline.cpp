// nn_argmin CPU micro-kernel, baseline copy (see common/cpu_dispatch.h).
#define GLANN_ISA baseline
#include "nn_argmin/nn_argmin_cpu_isa.h"

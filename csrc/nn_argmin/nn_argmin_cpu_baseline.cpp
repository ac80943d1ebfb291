// nn_argmin CPU micro-kernel, baseline build (see nn_argmin_cpu_isa.h).
#define GLANN_NN_ISA baseline
#define GLANN_NN_VEC_BYTES 16
#define GLANN_NN_MR 6
#include <utility>  // std::index_sequence (types only, no code)

#include "nn_argmin/nn_argmin_cpu_isa.h"

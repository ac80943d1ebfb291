// nn_argmin CPU micro-kernel, avx2 build (see nn_argmin_cpu_isa.h).
#define GLANN_NN_ISA avx2
#define GLANN_NN_VEC_BYTES 32
#define GLANN_NN_MR 6
#include <utility>  // std::index_sequence (types only, no code)

#include "nn_argmin/nn_argmin_cpu_isa.h"

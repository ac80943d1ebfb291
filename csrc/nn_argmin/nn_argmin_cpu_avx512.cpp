// nn_argmin CPU micro-kernel, avx512 build (see nn_argmin_cpu_isa.h).
#define GLANN_NN_ISA avx512
#define GLANN_NN_VEC_BYTES 64
#define GLANN_NN_MR 12
#include <utility>  // std::index_sequence (types only, no code)

#include "nn_argmin/nn_argmin_cpu_isa.h"

// The sphere CPU kernels, avx2 copy (see common/cpu_dispatch.h). Compiled with -ffp-contract=off
// (CMakeLists.txt), so every copy gives the same bits.
#define GLANN_ISA avx2
#include "sphere/sphere_cpu_isa.h"

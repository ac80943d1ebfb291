// The sphere CPU kernels, baseline copy (see common/cpu_dispatch.h). Compiled with -ffp-contract=off
// (CMakeLists.txt), so every copy gives the same bits.
#define GLANN_ISA baseline
#include "sphere/sphere_cpu_isa.h"

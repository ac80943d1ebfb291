// The sphere CPU kernels compiled with AVX2+FMA (CMake adds the flags for *_avx2.cpp); chosen at run
// time by sphere_cpu.cpp. Same source and bitwise the same results as the baseline copy.
#define GLANN_SPHERE_ISA_NS cpu_avx2
#include "sphere/sphere_cpu_kernels.h"

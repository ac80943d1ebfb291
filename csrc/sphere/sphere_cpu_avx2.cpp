// The sphere CPU kernels compiled with AVX2+FMA (CMake adds the flags for *_avx2.cpp); chosen at run
// time by sphere_cpu.cpp. Same source and bitwise the same results as the baseline copy.
// Before any #include, so that every function of this file, std:: ones included, gets the same options
// (GCC does not inline across differing ones): no FMA contraction, for torch-exact optimizer arithmetic
// and the same bits on every ISA. (A per-source -ffp-contract=off in CMake would be the cleaner fix.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif
#define GLANN_SPHERE_ISA_NS cpu_avx2
#include "sphere/sphere_cpu_kernels.h"

// The CPU kernel table of the sphere family: filled by every SIMD copy (sphere_cpu_isa.h), picked by
// sphere_cpu.cpp (the scheme: common/cpu_dispatch.h).
#pragma once

#include "common/cpu_dispatch.h"
#include "sphere/sphere.h"

namespace glann {
namespace sphere_cpu {

struct Kernels {
  const char* name;  // the copy: baseline or avx2 (no AVX-512 copy: the rows are short and memory-bound)
  // dtype float32 or float64, sizes positive (checked by the caller).
  KernelResult (*project)(const ProjectParams& p);         // kNonFiniteRow
  KernelResult (*latent_step)(const LatentStepParams& p);  // kBadIndex, then kNonFiniteRow (of grad)
};

GLANN_DECLARE_ISA_COPIES(Kernels)

}  // namespace sphere_cpu
}  // namespace glann

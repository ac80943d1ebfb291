// One scheme for the SIMD copies of every CPU kernel family (nn_argmin, laplacian, sphere):
//
//  * <family>_cpu_isa.h holds the family's CPU kernels, written once. <family>_cpu_<isa>.cpp, for isa in
//    baseline, avx2, avx512, defines GLANN_ISA to that name and includes it; CMake compiles *_avx2.cpp and
//    *_avx512.cpp with the ISA's flags (x86 only) and the baseline copy with the default ones.
//  * Everything of a copy lives in namespace glann::<family>_cpu::GLANN_ISA or has internal linkage
//    (GLANN_HD), and a copy instantiates no inline or template code that another copy also instantiates:
//    no std::function (it reaches the thread pool through parallel_for_ptr), no std::string or Status
//    (it reports a KernelResult). So no function compiled with AVX flags can be merged (ODR/COMDAT) into
//    code that runs on a CPU without them.
//  * Each copy defines its table `const Kernels kKernels` (declared in <family>_cpu.h with
//    GLANN_DECLARE_ISA_COPIES); <family>_cpu.cpp picks one with pick_isa() and turns results into Status.
#pragma once
#include <cstdint>

#include "common/cpu_features.h"

namespace glann {

// What a kernel copy reports: plain data (see above). `row` is the lowest offending row and `input`
// the launcher input it belongs to (Status::input).
struct KernelResult {
  enum Code : int { kOk = 0, kNonFiniteRow = 1, kBadIndex = 2, kWorkspaceTooSmall = 3 };
  int code = kOk;
  int64_t row = -1;
  int input = 0;
};

// The table of the best ISA that this CPU supports (capped by GLANN_EXT_CPU_ISA) and that the family
// compiled: avx2/avx512 are null where a family or the platform has no such copy.
template <typename T>
struct NonDeduced {
  using type = T;
};
template <typename Kernels>
const Kernels& pick_isa(const Kernels& baseline, const typename NonDeduced<Kernels>::type* avx2,
                        const typename NonDeduced<Kernels>::type* avx512) {
  const CpuIsa isa = best_cpu_isa();
  if (isa == CpuIsa::kAvx512 && avx512 != nullptr) return *avx512;
  if (isa != CpuIsa::kBaseline && avx2 != nullptr) return *avx2;
  return baseline;
}

}  // namespace glann

// Declares the tables of the copies inside a family's namespace (a copy that a platform or family does
// not compile is never referenced: see GLANN_X86_COPY).
#define GLANN_DECLARE_ISA_COPIES(Kernels) \
  namespace baseline {                    \
  extern const Kernels kKernels;          \
  }                                       \
  namespace avx2 {                        \
  extern const Kernels kKernels;          \
  }                                       \
  namespace avx512 {                      \
  extern const Kernels kKernels;          \
  }

// The name of the copy being compiled ("avx2" for GLANN_ISA avx2).
#define GLANN_ISA_NAME GLANN_ISA_STRINGIFY_(GLANN_ISA)
#define GLANN_ISA_STRINGIFY_(x) GLANN_ISA_STRINGIFY2_(x)
#define GLANN_ISA_STRINGIFY2_(x) #x

// &<isa>::kKernels where x86 copies are compiled, else null.
#if defined(GLANN_X86)
#define GLANN_X86_COPY(isa) (&isa::kKernels)
#else
#define GLANN_X86_COPY(isa) nullptr
#endif

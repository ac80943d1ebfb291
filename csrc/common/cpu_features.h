// Run-time choice of the x86 SIMD level, so one build runs on any x86-64 CPU.
#pragma once

namespace glann {

enum class CpuIsa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// The best ISA both compiled in and supported by this CPU, capped by the environment variable
// GLANN_EXT_CPU_ISA=baseline|avx2|avx512 (for testing every path on one machine).
// An unknown value leaves the detected ISA on and is reported by cpu_isa_env_error() (the Python layer
// raises it at import, as for GLANN_EXT_CUDA_KERNELS).
CpuIsa best_cpu_isa();
const char* cpu_isa_name(CpuIsa isa);
// "" when the variable was absent, empty or understood. A C string: this header is included by the
// per-ISA translation units, which must not instantiate library code.
const char* cpu_isa_env_error();

}  // namespace glann

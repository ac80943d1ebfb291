#include "common/cpu_features.h"

#include <cstdlib>
#include <cstring>
#include <string>

namespace glann {

// Set once by detect() (under best_cpu_isa's static initialisation) for an unknown GLANN_EXT_CPU_ISA.
static std::string g_env_error;

static CpuIsa detect() {
  CpuIsa best = CpuIsa::kBaseline;
#if defined(GLANN_X86) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = CpuIsa::kAvx2;
  if (best == CpuIsa::kAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
    best = CpuIsa::kAvx512;
#endif
  const char* cap = std::getenv("GLANN_EXT_CPU_ISA");
  if (cap != nullptr && *cap != '\0') {
    CpuIsa want = best;
    if (std::strcmp(cap, "baseline") == 0)
      want = CpuIsa::kBaseline;
    else if (std::strcmp(cap, "avx2") == 0)
      want = CpuIsa::kAvx2;
    else if (std::strcmp(cap, "avx512") == 0)
      want = CpuIsa::kAvx512;
    else
      g_env_error = std::string("GLANN_EXT_CPU_ISA='") + cap + "' is not baseline, avx2 or avx512";
    if (static_cast<int>(want) < static_cast<int>(best)) best = want;
  }
  return best;
}

CpuIsa best_cpu_isa() {
  static const CpuIsa isa = detect();
  return isa;
}

const char* cpu_isa_env_error() {
  best_cpu_isa();  // reads the variable once
  return g_env_error.c_str();
}

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512:
      return "avx512";
    case CpuIsa::kAvx2:
      return "avx2";
    default:
      return "baseline";
  }
}

}  // namespace glann

#include "common/kernel_variant.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>

#ifdef GLANN_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace glann {

namespace {

struct OpName {
  HopperOp op;
  const char* name;
};
constexpr OpName kOps[] = {
    {HopperOp::kNnArgmin, "nn_argmin"}, {HopperOp::kLaplacian, "laplacian"}, {HopperOp::kProject, "project"}};

// The mask, and the message about an unparsable environment variable, set once from the environment
// (std::call_once) unless set_cuda_kernels() came first. Without the variable: kDefaultHopperOps.
std::atomic<unsigned> g_mask{kDefaultHopperOps};
std::once_flag g_env_once;
std::mutex g_error_mutex;
std::string g_env_error;

void read_env() {
  const char* spec = std::getenv("GLANN_EXT_CUDA_KERNELS");
  if (spec == nullptr || *spec == '\0') return;
  unsigned mask = 0;
  if (parse_cuda_kernels(spec, &mask)) {
    g_mask.store(mask);
    return;
  }
  const std::lock_guard<std::mutex> lock(g_error_mutex);
  g_env_error = std::string("GLANN_EXT_CUDA_KERNELS='") + spec +
                "' is not legacy, hopper or hopper:OP[,OP...] with OP in nn_argmin, laplacian, project";
}

}  // namespace

bool parse_cuda_kernels(const char* spec, unsigned* mask) {
  if (spec == nullptr) return false;
  if (std::strcmp(spec, "legacy") == 0) {
    *mask = 0;
    return true;
  }
  if (std::strcmp(spec, "hopper") == 0) {
    *mask = kAllHopperOps;
    return true;
  }
  if (std::strncmp(spec, "hopper:", 7) != 0) return false;
  unsigned m = 0;
  const char* p = spec + 7;
  while (true) {
    const char* end = std::strchr(p, ',');
    const std::size_t len = end != nullptr ? static_cast<std::size_t>(end - p) : std::strlen(p);
    bool known = false;
    for (const OpName& o : kOps) {
      if (std::strlen(o.name) == len && std::strncmp(p, o.name, len) == 0) {
        m |= static_cast<unsigned>(o.op);
        known = true;
      }
    }
    if (!known) return false;
    if (end == nullptr) break;
    p = end + 1;
  }
  *mask = m;
  return true;
}

std::string cuda_kernels_name(unsigned mask) {
  mask &= kAllHopperOps;
  if (mask == 0) return "legacy";
  if (mask == kAllHopperOps) return "hopper";
  std::string s = "hopper:";
  for (const OpName& o : kOps) {
    if ((mask & static_cast<unsigned>(o.op)) == 0) continue;
    if (s.back() != ':') s += ',';
    s += o.name;
  }
  return s;
}

unsigned hopper_ops() {
  std::call_once(g_env_once, read_env);
  return g_mask.load();
}

std::string cuda_kernels_env_error() {
  std::call_once(g_env_once, read_env);
  const std::lock_guard<std::mutex> lock(g_error_mutex);
  return g_env_error;
}

bool set_cuda_kernels(const char* spec) {
  unsigned mask = 0;
  if (!parse_cuda_kernels(spec, &mask)) return false;
  std::call_once(g_env_once, read_env);  // so a later first use cannot overwrite this choice
  g_mask.store(mask);
  const std::lock_guard<std::mutex> lock(g_error_mutex);
  g_env_error.clear();
  return true;
}

bool use_hopper_kernels(const ExecContext& exec, HopperOp op) {
  if (!exec.cuda || (hopper_ops() & static_cast<unsigned>(op)) == 0) return false;
#ifdef GLANN_WITH_CUDA
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, exec.device) != cudaSuccess) {
    cudaGetLastError();  // the launcher's own calls will report a bad device
    return false;
  }
  return major >= 9;
#else
  return false;
#endif
}

}  // namespace glann

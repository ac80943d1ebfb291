// Which CUDA kernels an op runs: the legacy kernels or the Hopper kernels of issue 15, chosen per op. The choice is
// process-wide: GLANN_EXT_CUDA_KERNELS=legacy|hopper|hopper:OP[,OP...] (OP: nn_argmin, laplacian, project), read once
// at the first use; set_cuda_kernels() replaces it (the tests and benchmarks compare both variants in one process).
// Each CUDA launcher of a family asks use_hopper_kernels() in one line at its top; the Hopper kernels also need a
// device of compute capability 9.0 or newer, and otherwise the legacy kernels run.
#pragma once
#include <string>

#include "common/exec.h"

namespace glann {

enum class HopperOp : unsigned { kNnArgmin = 1u, kLaplacian = 2u, kProject = 4u };
constexpr unsigned kAllHopperOps = 7u;
// The default: the Hopper search and projection, which beat the legacy kernels in every row of the H200
// run (benchmarks/RESULTS.md); the legacy Laplacian, which the fused one loses to at 64x1x28x28.
constexpr unsigned kDefaultHopperOps =
    static_cast<unsigned>(HopperOp::kNnArgmin) | static_cast<unsigned>(HopperOp::kProject);

// Parses a GLANN_EXT_CUDA_KERNELS value into a mask of HopperOp bits ("legacy" is 0, "hopper" all).
// Returns false, leaving *mask alone, for anything else.
bool parse_cuda_kernels(const char* spec, unsigned* mask);
// The canonical spelling of a mask: "legacy", "hopper" or "hopper:<ops in the order above>".
std::string cuda_kernels_name(unsigned mask);

// The current mask. An unparsable GLANN_EXT_CUDA_KERNELS leaves the legacy kernels on and is reported by
// cuda_kernels_env_error() (the Python layer raises it at import).
unsigned hopper_ops();
std::string cuda_kernels_env_error();  // empty when the variable was absent or understood
// Replaces the choice for the rest of the process; false for an unparsable spec (nothing changes).
bool set_cuda_kernels(const char* spec);

// Whether a CUDA launcher of `op` runs its Hopper kernels on exec.device.
bool use_hopper_kernels(const ExecContext& exec, HopperOp op);

}  // namespace glann

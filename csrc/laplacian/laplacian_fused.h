// The fused (Hopper) Laplacian-pyramid kernels: a pyramid per block in shared memory, 2-3 launches
// forward and 1-3 backward instead of 2 + 2J and J (laplacian_fused_math.h has the bodies and the plan).
// Selected by laplacian.cu's launchers when use_hopper_kernels() and laplacian_fused_fits() agree; they
// write and read the legacy CUDA sign layout, so a fused forward and a legacy backward (or the other way
// round) still pair up. Defined only with GLANN_WITH_CUDA.
#pragma once

#include "common/status.h"
#include "laplacian/laplacian.h"

namespace glann {

// Whether the fused kernels take this call (shapes, dtype, shared memory of the device, workspace).
bool laplacian_fused_fits(const LaplacianForwardParams& p);
bool laplacian_fused_fits(const LaplacianBackwardParams& p);
Status laplacian_forward_fused(const LaplacianForwardParams& p);
// scale: (B,) d loss / d per_sample[b] in the compute type (float, or double for float64), on the device.
Status laplacian_backward_fused(const LaplacianBackwardParams& p, const void* scale);

}  // namespace glann

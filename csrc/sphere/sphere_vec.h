// The vectorised projection (Hopper kernels of issue 15): 16-byte loads and stores, a segment of lanes
// per row and several rows per warp for small D, the row kept in registers up to D = 1024 float32
// (sphere_vec_math.h). sphere.cu's launcher calls it when use_hopper_kernels() and project_vec_fits()
// agree; strided, unaligned or odd-width rows keep the legacy kernel. Defined only with GLANN_WITH_CUDA.
#pragma once

#include "common/status.h"
#include "sphere/sphere.h"

namespace glann {

bool project_vec_fits(const ProjectParams& p);
Status project_to_sphere_cuda_vec(const ProjectParams& p);

}  // namespace glann

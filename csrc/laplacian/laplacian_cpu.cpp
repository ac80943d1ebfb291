// CPU launchers of the Laplacian-pyramid loss: ISA dispatch, the per-pixel test path, workspace sizes.
#define GLANN_LAP_ISA_NS baseline
#include "laplacian/laplacian_cpu_impl.h"

#include "common/cpu_features.h"

namespace glann {

// Defined in laplacian_cpu_avx2.cpp / laplacian_cpu_avx512.cpp (x86 builds only).
Status laplacian_forward_cpu_avx2(const LaplacianForwardParams& p);
Status laplacian_backward_cpu_avx2(const LaplacianBackwardParams& p);
Status laplacian_forward_cpu_avx512(const LaplacianForwardParams& p);
Status laplacian_backward_cpu_avx512(const LaplacianBackwardParams& p);

namespace {

int64_t align64(int64_t n) { return (n + 63) / 64 * 64; }

// The per-pixel path: the same functions, in the same level-by-level order, as the CUDA kernels.
// Slow; it exists so the CPU test suite checks the CUDA kernels' math.
template <typename T>
Status forward_pixels(const LaplacianForwardParams& p) {
  using namespace lap;
  const Geometry geom = make_geometry(p.height, p.width, p.levels);
  const int64_t planes = p.batch * p.channels;
  const int slots = parallel_slots(planes, p.num_threads);
  const int64_t sums_bytes = align64(planes * int64_t(sizeof(double)));
  const int64_t sb = align64(geom.total * int64_t(sizeof(T)));
  if (p.workspace_bytes < sums_bytes + slots * sb)
    return Status::Error(StatusCode::kInvalidArgument, "laplacian_forward_cpu: workspace too small");
  char* ws = static_cast<char*>(p.workspace);
  double* plane_sums = reinterpret_cast<double*>(ws);
  const T* x = static_cast<const T*>(p.x);
  const T* y = static_cast<const T*>(p.y);
  parallel_for(planes, p.num_threads, [&](int64_t task, int slot) {
    const int64_t b = task / p.channels, c = task % p.channels;
    T* g = reinterpret_cast<T*>(ws + sums_bytes + slot * sb);
    const T* xp = x + b * p.x_strides[0] + c * p.x_strides[1];
    const T* yp = y + b * p.y_strides[0] + c * p.y_strides[1];
    for (int64_t i = 0; i < p.height; ++i)
      for (int64_t k = 0; k < p.width; ++k)
        g[i * p.width + k] = xp[i * p.x_strides[2] + k * p.x_strides[3]] - yp[i * p.y_strides[2] + k * p.y_strides[3]];
    for (int j = 0; j + 1 < geom.levels; ++j)
      for (int64_t q1 = 0; q1 < geom.h[j + 1]; ++q1)
        for (int64_t q2 = 0; q2 < geom.w[j + 1]; ++q2)
          g[geom.off[j + 1] + q1 * geom.w[j + 1] + q2] = down_pixel(g + geom.off[j], geom.h[j], geom.w[j], q1, q2);
    double total = 0.0, level_w = 1.0;
    int8_t* sg = p.signs + task * geom.total;
    for (int j = 0; j < geom.levels; ++j, level_w *= 4.0) {
      double s = 0.0;
      for (int64_t i1 = 0; i1 < geom.h[j]; ++i1)
        for (int64_t i2 = 0; i2 < geom.w[j]; ++i2) {
          const int64_t at = geom.off[j] + i1 * geom.w[j] + i2;
          const T l = j + 1 < geom.levels
                          ? laplacian_pixel(g + geom.off[j], g + geom.off[j + 1], geom.h[j], geom.w[j], i1, i2)
                          : g[at];
          sg[at] = sign_of(l);
          s += std::fabs(double(l));
        }
      total += level_w * s;
    }
    plane_sums[task] = total;
  });
  T* out = static_cast<T*>(p.per_sample);
  for (int64_t b = 0; b < p.batch; ++b) {
    double s = 0.0;
    for (int64_t c = 0; c < p.channels; ++c) s += plane_sums[b * p.channels + c];
    out[b] = T(s);
  }
  return Status::Ok();
}

template <typename T>
Status backward_pixels(const LaplacianBackwardParams& p) {
  using namespace lap;
  const Geometry geom = make_geometry(p.height, p.width, p.levels);
  const int64_t planes = p.batch * p.channels;
  const int slots = parallel_slots(planes, p.num_threads);
  const int64_t sb = align64(geom.total * int64_t(sizeof(T)));
  if (p.workspace_bytes < slots * sb)
    return Status::Error(StatusCode::kInvalidArgument, "laplacian_backward_cpu: workspace too small");
  char* ws = static_cast<char*>(p.workspace);
  const T* scale = static_cast<const T*>(p.grad_scale);
  T* grad = static_cast<T*>(p.grad);
  parallel_for(planes, p.num_threads, [&](int64_t task, int slot) {
    T* acc = reinterpret_cast<T*>(ws + slot * sb);
    const int8_t* sg = p.signs + task * geom.total;
    for (int l = geom.levels - 1; l >= 0; --l) {
      T* dst = l == 0 ? grad + task * p.height * p.width : acc + geom.off[l];
      const T* next = l + 1 < geom.levels ? acc + geom.off[l + 1] : nullptr;
      for (int64_t q1 = 0; q1 < geom.h[l]; ++q1)
        for (int64_t q2 = 0; q2 < geom.w[l]; ++q2)
          dst[q1 * geom.w[l] + q2] = backward_pixel(geom, l, sg, next, scale[task / p.channels], q1, q2);
    }
  });
  return Status::Ok();
}

}  // namespace

int64_t laplacian_plane_elems(int64_t height, int64_t width, int levels) {
  return lap::make_geometry(height, width, levels).total;
}

int64_t laplacian_workspace_bytes(int64_t batch, int64_t channels, int64_t height, int64_t width, int levels,
                                  DType dtype, bool cuda, bool backward, int num_threads) {
  const lap::Geometry geom = lap::make_geometry(height, width, levels);
  const int64_t planes = batch * channels;
  if (cuda) {
    const int64_t elem = dtype == DType::kFloat64 ? 8 : 4;  // f16/bf16 are computed in f32
    const int64_t pyramid = align64(planes * geom.total * elem);
    return backward ? pyramid : pyramid + planes * lap::cuda_partials_per_plane(geom) * 8;
  }
  const int64_t elem = dtype == DType::kFloat64 ? 8 : 4;
  const int slots = parallel_slots(planes, num_threads);
  // lap::baseline::slot_bytes also covers the pixel path (which needs only the pyramid).
  const int64_t per_slot = lap::baseline::slot_bytes(geom, elem);
  return (backward ? 0 : align64(planes * 8)) + slots * per_slot;
}

Status laplacian_forward_cpu(const LaplacianForwardParams& p) {
  if (p.dtype != DType::kFloat32 && p.dtype != DType::kFloat64)
    return Status::Error(StatusCode::kInvalidArgument, "laplacian_forward_cpu: dtype must be float32 or float64");
  if (p.pixel_path) return p.dtype == DType::kFloat64 ? forward_pixels<double>(p) : forward_pixels<float>(p);
#if defined(GLANN_X86)
  switch (best_cpu_isa()) {
    case CpuIsa::kAvx512: return laplacian_forward_cpu_avx512(p);
    case CpuIsa::kAvx2: return laplacian_forward_cpu_avx2(p);
    default: break;
  }
#endif
  return lap::baseline::forward(p);
}

Status laplacian_backward_cpu(const LaplacianBackwardParams& p) {
  if (p.dtype != DType::kFloat32 && p.dtype != DType::kFloat64)
    return Status::Error(StatusCode::kInvalidArgument, "laplacian_backward_cpu: dtype must be float32 or float64");
  if (p.pixel_path) return p.dtype == DType::kFloat64 ? backward_pixels<double>(p) : backward_pixels<float>(p);
#if defined(GLANN_X86)
  switch (best_cpu_isa()) {
    case CpuIsa::kAvx512: return laplacian_backward_cpu_avx512(p);
    case CpuIsa::kAvx2: return laplacian_backward_cpu_avx2(p);
    default: break;
  }
#endif
  return lap::baseline::backward(p);
}

}  // namespace glann

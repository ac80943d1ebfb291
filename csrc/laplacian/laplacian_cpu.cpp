// CPU launchers of the Laplacian-pyramid loss: ISA dispatch, workspace sizes and Status.
#include "laplacian/laplacian_cpu.h"

#include <string>

#include "common/parallel.h"
#include "laplacian/laplacian.h"

namespace glann {

namespace {
const lap_cpu::Kernels& kernels() {
  using namespace lap_cpu;
  static const Kernels& k = pick_isa(baseline::kKernels, GLANN_X86_COPY(avx2), GLANN_X86_COPY(avx512));
  return k;
}

Status to_status(const KernelResult& r, const char* what) {
  if (r.code == KernelResult::kOk) return Status::Ok();
  if (r.code == KernelResult::kNonFiniteRow)
    return Status::Error(
        StatusCode::kNonFinite,
        std::string(r.input == 0 ? "x" : "y") + " sample " + std::to_string(r.row) + " contains NaN or Inf", r.row,
        r.input);
  return Status::Error(StatusCode::kInvalidArgument, std::string(what) + ": workspace too small");
}

bool float_dtype(DType t) { return t == DType::kFloat32 || t == DType::kFloat64; }

// Threads for one call: at most one per kMinPixelsPerThread pixels of x. Waking the pool's other threads
// costs tens of microseconds on a VM, more than they save on small calls. AMD EPYC Zen 4, fwd+bwd through
// the Python op, 1 thread against 2: (64, 1, 28, 28) 316 us against 358, (128, 1, 28, 28) 435 against 424,
// (256, 1, 28, 28) 717 against 629, (64, 3, 64, 64) 2501 against 1629. (The threads used never change the
// result: every reduction runs in a fixed order.) The workspace sizes and the launches both take it.
constexpr int64_t kMinPixelsPerThread = 65536;

int call_threads(int64_t batch, int64_t channels, int64_t height, int64_t width, int num_threads) {
  const int64_t by_work = batch * channels * height * width / kMinPixelsPerThread;
  return int(by_work < 1 ? 1 : (by_work < num_threads ? by_work : num_threads));
}

// The op's loss from the per-sample sums (LaplacianForwardParams::loss): the samples in order, in double.
template <typename T>
void write_loss(const T* per_sample, const LaplacianForwardParams& p, T* loss) {
  if (!p.sum_samples) {
    for (int64_t b = 0; b < p.batch; ++b) loss[b] = per_sample[b] / T(p.loss_divisor);
    return;
  }
  double total = 0.0;
  for (int64_t b = 0; b < p.batch; ++b) total += per_sample[b];
  loss[0] = T(total / p.loss_divisor);
}

template <typename Params>
Params with_call_threads(Params p) {
  p.exec.num_threads = call_threads(p.batch, p.channels, p.height, p.width, p.exec.num_threads);
  return p;
}
}  // namespace

int64_t laplacian_plane_elems(int64_t height, int64_t width, int levels) {
  return lap::make_geometry(height, width, levels).total;
}

int64_t laplacian_workspace_bytes(int64_t batch, int64_t channels, int64_t height, int64_t width, int levels,
                                  DType dtype, bool cuda, bool backward, int num_threads) {
  const lap::Geometry geom = lap::make_geometry(height, width, levels);
  const int64_t planes = batch * channels;
  const int64_t elem = dtype == DType::kFloat64 ? 8 : 4;  // CUDA computes f16/bf16 in f32
  if (cuda) {
    const int64_t pyramid = lap::align64(planes * geom.total * elem);
    // Backward: (B,) d loss / d per_sample in front of the pyramid (laplacian_backward_cuda).
    return backward ? lap::cuda_backward_scale_bytes(batch) + pyramid
                    : pyramid + planes * lap::cuda_partials_per_plane(geom) * 8;
  }
  // `planes` bounds the task count of both the grouped row kernels and the per-plane pixel path.
  const int slots = parallel_slots(planes, call_threads(batch, channels, height, width, num_threads));
  const int64_t per_slot = lap_cpu::slot_bytes(geom, elem);
  return (backward ? 0 : lap::align64(planes * 8)) + slots * per_slot;
}

Status laplacian_forward_cpu(const LaplacianForwardParams& p) {
  if (p.levels < 1 || p.levels > kLaplacianMaxLevels)
    return Status::Error(StatusCode::kInvalidArgument, "laplacian_forward_cpu: levels must be in [1, 16]");
  if (!float_dtype(p.dtype))
    return Status::Error(StatusCode::kInvalidArgument, "laplacian_forward_cpu: dtype must be float32 or float64");
  const Status s = to_status(kernels().forward(with_call_threads(p)), "laplacian_forward_cpu");
  if (!s.ok() || p.loss == nullptr) return s;
  if (p.dtype == DType::kFloat64)
    write_loss(static_cast<const double*>(p.per_sample), p, static_cast<double*>(p.loss));
  else
    write_loss(static_cast<const float*>(p.per_sample), p, static_cast<float*>(p.loss));
  return s;
}

Status laplacian_backward_cpu(const LaplacianBackwardParams& p) {
  if (p.levels < 1 || p.levels > kLaplacianMaxLevels)
    return Status::Error(StatusCode::kInvalidArgument, "laplacian_backward_cpu: levels must be in [1, 16]");
  if (!float_dtype(p.dtype))
    return Status::Error(StatusCode::kInvalidArgument, "laplacian_backward_cpu: dtype must be float32 or float64");
  return to_status(kernels().backward(with_call_threads(p)), "laplacian_backward_cpu");
}

const char* laplacian_cpu_path() { return kernels().name; }

}  // namespace glann

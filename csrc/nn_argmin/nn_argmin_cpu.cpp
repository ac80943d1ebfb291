// nn_argmin on the CPU: picks the SIMD copy of the micro-kernel, splits the work into tasks and runs
// them on the thread pool. See nn_argmin.h for the contract and nn_argmin_cpu_isa.h for the kernel.
#include <algorithm>
#include <cstdint>
#include <limits>

#include "common/cpu_features.h"
#include "common/parallel.h"
#include "nn_argmin/nn_argmin.h"

namespace glann {
namespace nn_cpu {

#define GLANN_DECLARE_ISA(NS)                                                                              \
  namespace NS {                                                                                           \
  int panel_keys();                                                                                        \
  int micro_rows();                                                                                        \
  void pack_block(const NnArgminParams& p, int64_t k0, int64_t nk, float* buf);                            \
  void pack_queries(const NnArgminParams& p, int64_t r0, int64_t r1, float* qbuf);                         \
  void scan_block(const NnArgminParams& p, const float* buf, int64_t k0, int64_t nk, int64_t r0, int64_t r1, \
                  const float* qbuf, float* best_score, int64_t* best_index);                              \
  }
GLANN_DECLARE_ISA(baseline)
#ifdef GLANN_X86
GLANN_DECLARE_ISA(avx2)
GLANN_DECLARE_ISA(avx512)
#endif
#undef GLANN_DECLARE_ISA

namespace {

struct Kernel {
  const char* name;
  int nr, mr;
  void (*pack)(const NnArgminParams&, int64_t, int64_t, float*);
  void (*pack_queries)(const NnArgminParams&, int64_t, int64_t, float*);
  void (*scan)(const NnArgminParams&, const float*, int64_t, int64_t, int64_t, int64_t, const float*, float*, int64_t*);
};

Kernel select_kernel() {
#ifdef GLANN_X86
  switch (best_cpu_isa()) {
    case CpuIsa::kAvx512:
      return {"avx512", avx512::panel_keys(), avx512::micro_rows(), avx512::pack_block, avx512::pack_queries, avx512::scan_block};
    case CpuIsa::kAvx2:
      return {"avx2", avx2::panel_keys(), avx2::micro_rows(), avx2::pack_block, avx2::pack_queries, avx2::scan_block};
    default:
      break;
  }
#endif
  return {"baseline", baseline::panel_keys(), baseline::micro_rows(), baseline::pack_block, baseline::pack_queries, baseline::scan_block};
}

const Kernel& kernel() {
  static const Kernel k = select_kernel();
  return k;
}

constexpr int64_t kAlign = 64;
int64_t round_up(int64_t x, int64_t a) { return (x + a - 1) / a * a; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// How the (queries x keys) work is cut into tasks.
struct Plan {
  int64_t kc;       // keys per packed block (a multiple of the panel width)
  int64_t n_q;      // query chunks
  int64_t max_rows; // most query rows in one chunk (their packed copy lives in the slot)
  int64_t n_k;      // key splits; > 1 only when there are too few queries to occupy every thread
  int slots;        // threads that may run at once
  int64_t slot_bytes;
  int64_t partial_bytes;  // per-split (score, index) rows, when n_k > 1

  int64_t total_bytes() const { return slots * slot_bytes + partial_bytes + kAlign; }
};

Plan make_plan(int64_t n, int64_t m, int64_t d, int num_threads) {
  const Kernel& k = kernel();
  Plan pl{};
  const int threads = std::max(1, num_threads);
  // A packed block of about 512 KB stays in L2 while every query micro-tile of a chunk streams over it.
  pl.kc = std::max<int64_t>(k.nr, (131072 / std::max<int64_t>(d, 1)) / k.nr * k.nr);
  pl.kc = std::min<int64_t>(pl.kc, round_up(m, k.nr));
  const int64_t min_rows = int64_t{8} * k.mr;
  // Two chunks per thread balance the load; fewer, larger chunks pack every key fewer times.
  pl.n_q = std::clamp<int64_t>(ceil_div(n, min_rows), 1, int64_t{2} * threads);
  // A chunk's packed queries stay within about 2 MB (row count a multiple of the micro-tile).
  const int64_t rows_cap = std::max<int64_t>(k.mr, (int64_t{1} << 19) / std::max<int64_t>(d, 1) / k.mr * k.mr);
  pl.n_q = std::max(pl.n_q, ceil_div(n, rows_cap));
  pl.n_k = 1;
  if (pl.n_q < 2 * threads) {
    pl.n_k = std::clamp<int64_t>(ceil_div(int64_t{4} * threads, pl.n_q), 1, ceil_div(m, pl.kc));
  }
  pl.slots = parallel_slots(pl.n_q * pl.n_k, threads);
  // Largest chunk between split points (multiples of mr), plus one tile of rounding.
  pl.max_rows = round_up(ceil_div(n, pl.n_q), k.mr) + k.mr;
  const int64_t block_floats = (pl.kc / k.nr) * k.nr * (d + 1);
  pl.slot_bytes = round_up(block_floats * 4, kAlign) + round_up(pl.max_rows * d * 4, kAlign);
  pl.partial_bytes = pl.n_k > 1 ? round_up(pl.n_k * n * 4, kAlign) + round_up(pl.n_k * n * 8, kAlign) : 0;
  return pl;
}

// Split [0, total) into `parts` pieces with boundaries on multiples of `grain`.
int64_t split_point(int64_t total, int64_t parts, int64_t i, int64_t grain) {
  if (i >= parts) return total;
  return std::min(total, (total * i / parts) / grain * grain);
}

}  // namespace
}  // namespace nn_cpu

const char* nn_argmin_cpu_path() { return nn_cpu::kernel().name; }

int64_t nn_argmin_cpu_workspace_bytes(int64_t n, int64_t m, int64_t d, int num_threads) {
  if (n <= 0 || m <= 0 || d <= 0) return 0;
  return nn_cpu::make_plan(n, m, d, num_threads).total_bytes();
}

Status nn_argmin_cpu(const NnArgminParams& p) {
  using namespace nn_cpu;
  if (p.dtype != DType::kFloat32)
    return Status::Error(StatusCode::kInvalidArgument, "nn_argmin (CPU) supports float32 only");
  if (p.n == 0) return Status::Ok();
  if (p.m <= 0 || p.d <= 0) return Status::Error(StatusCode::kInvalidArgument, "nn_argmin: keys must be non-empty");
  if (p.m > std::numeric_limits<int32_t>::max())
    return Status::Error(StatusCode::kInvalidArgument, "nn_argmin: at most 2^31-1 keys per call (chunk the keys)");
  const Plan pl = make_plan(p.n, p.m, p.d, p.num_threads);
  if (p.workspace_bytes < pl.total_bytes())
    return Status::Error(StatusCode::kInvalidArgument, "nn_argmin: workspace too small");

  const Kernel& k = kernel();
  char* base = reinterpret_cast<char*>(round_up(reinterpret_cast<std::uintptr_t>(p.workspace), kAlign));
  float* partial_score = nullptr;
  int64_t* partial_index = nullptr;
  if (pl.n_k > 1) {
    partial_score = reinterpret_cast<float*>(base + pl.slots * pl.slot_bytes);
    partial_index = reinterpret_cast<int64_t*>(base + pl.slots * pl.slot_bytes + round_up(pl.n_k * p.n * 4, kAlign));
  }
  const int64_t block_bytes = pl.slot_bytes - round_up(pl.max_rows * p.d * 4, kAlign);

  parallel_for(pl.n_q * pl.n_k, p.num_threads, [&](int64_t task, int slot) {
    const int64_t qi = task / pl.n_k, ki = task % pl.n_k;
    const int64_t r0 = split_point(p.n, pl.n_q, qi, k.mr), r1 = split_point(p.n, pl.n_q, qi + 1, k.mr);
    const int64_t k0 = split_point(p.m, pl.n_k, ki, k.nr), k1 = split_point(p.m, pl.n_k, ki + 1, k.nr);
    if (r0 >= r1) return;
    float* score = pl.n_k > 1 ? partial_score + ki * p.n : p.best_score;
    int64_t* index = pl.n_k > 1 ? partial_index + ki * p.n : p.best_index;
    for (int64_t r = r0; r < r1; ++r) {
      score[r] = __builtin_inff();
      index[r] = k0;  // if every score were +inf, the lowest index wins
    }
    if (k0 >= k1) return;
    char* mine = base + slot * pl.slot_bytes;
    float* block = reinterpret_cast<float*>(mine);
    float* qbuf = reinterpret_cast<float*>(mine + block_bytes);
    k.pack_queries(p, r0, r1, qbuf);
    for (int64_t kb = k0; kb < k1; kb += pl.kc) {
      const int64_t nk = std::min(pl.kc, k1 - kb);
      k.pack(p, kb, nk, block);
      k.scan(p, block, kb, nk, r0, r1, qbuf, score, index);
    }
  });

  if (pl.n_k > 1) {
    // Merge the key splits in index order: a later split must be strictly better to win a tie.
    for (int64_t r = 0; r < p.n; ++r) {
      float s = partial_score[r];
      int64_t i = partial_index[r];
      for (int64_t ki = 1; ki < pl.n_k; ++ki) {
        const float t = partial_score[ki * p.n + r];
        if (t < s) {
          s = t;
          i = partial_index[ki * p.n + r];
        }
      }
      p.best_score[r] = s;
      p.best_index[r] = i;
    }
  }
  return Status::Ok();
}

}  // namespace glann

// nn_argmin on the CPU: picks the SIMD copy of the micro-kernel, splits the work into tasks, runs them
// on the thread pool and folds the partial results into the running best. See nn_argmin.h for the
// contract and nn_argmin_cpu_isa.h for the kernel.
#include "nn_argmin/nn_argmin_cpu.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <string>

#include "common/parallel.h"
#include "nn_argmin/nn_argmin.h"
#include "nn_argmin/nn_argmin_math.h"

namespace glann {
namespace nn_cpu {
namespace {

const Kernels& kernels() {
  static const Kernels& k = pick_isa(baseline::kKernels, GLANN_X86_COPY(avx2), GLANN_X86_COPY(avx512));
  return k;
}

template <typename T>
const TypedKernels<T>& typed();
template <>
const TypedKernels<float>& typed<float>() {
  return kernels().f32;
}
template <>
const TypedKernels<double>& typed<double>() {
  return kernels().f64;
}

constexpr int64_t kAlign = 64;
int64_t round_up(int64_t x, int64_t a) { return (x + a - 1) / a * a; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Bytes of one packed key block: it stays in L2 while every query micro-tile of a chunk streams over
// it, so half of the L2 (the other half holds the query tiles and the rest), at most 512 KB.
int64_t key_block_bytes() {
  static const int64_t bytes = [] {
    long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (l2 <= 0) l2 = 1 << 20;
    return std::clamp<int64_t>(l2 / 2, 64 << 10, 512 << 10);
  }();
  return bytes;
}

// How the (queries x keys) work is cut into tasks. Every query row is packed once, up front, into a
// buffer all tasks share; each task (a range of query rows x a range of keys) packs its keys block by
// block and scans its rows against each block. A key is packed once per query range, so the plan keeps
// one query range and splits the keys, unless there are too few key blocks to occupy every thread. (The
// plan before it cut the queries into chunks of at most 2 MB, each of which packed every key again: at
// D=784, 2048 x 20480, four strided transposes of the 64 MB of keys took 8.5% of the kernel's samples
// under perf, one thread of the AVX2 copy on an AMD EPYC Zen 4; 2.2% now.) The packed copy is bounded:
// past kPassBytes of queries the search runs in passes of that many rows, each packing the keys again
// (at D=784 a pass holds 10,000 float32 rows, so that costs 1/20 of what the 512-row chunks did).
constexpr int64_t kPassBytes = int64_t{32} << 20;

struct Plan {
  int64_t pass_rows;      // query rows per pass (a multiple of the micro-tile, or all of them)
  int64_t kc;             // keys per packed block (a multiple of the panel width)
  int64_t n_q;            // query ranges
  int64_t n_k;            // key ranges
  int slots;              // threads that may run at once
  int64_t block_bytes;    // one slot's packed key block
  int64_t queries_bytes;  // one pass's packed queries, in micro-tiles
  // Per-key-range (score, index) rows of a pass, folded into the running best: the scores, then the indices.
  int64_t partial_score_bytes, partial_index_bytes;

  int64_t total_bytes() const {
    return slots * block_bytes + queries_bytes + partial_score_bytes + partial_index_bytes + kAlign;
  }
};

Plan make_plan(int64_t n, int64_t m, int64_t d, int64_t elem, int panel_keys, int micro_rows, int num_threads) {
  Plan pl{};
  const int threads = std::max(1, num_threads);
  pl.pass_rows = std::min(
      n, std::max<int64_t>(micro_rows, kPassBytes / (std::max<int64_t>(d, 1) * elem) / micro_rows * micro_rows));
  n = pl.pass_rows;  // the rest of the plan is per pass
  pl.kc = std::max<int64_t>(panel_keys, key_block_bytes() / (std::max<int64_t>(d, 1) * elem) / panel_keys * panel_keys);
  pl.kc = std::min<int64_t>(pl.kc, round_up(m, panel_keys));
  // Several tasks per thread: claimed dynamically, they balance the load when a core is shared with
  // another process.
  const int64_t tasks = threads > 1 ? int64_t{2} * threads : 1;
  pl.n_k = std::min(tasks, ceil_div(m, pl.kc));
  // Query ranges of at least 8 micro-tiles, so that a packed key panel serves enough rows.
  pl.n_q = std::clamp<int64_t>(ceil_div(tasks, pl.n_k), 1, ceil_div(n, int64_t{8} * micro_rows));
  pl.slots = parallel_slots(pl.n_q * pl.n_k, threads);
  const int64_t block_elems = ceil_div(pl.kc, panel_keys) * panel_keys * (d + 1);
  pl.block_bytes = round_up(block_elems * elem, kAlign);
  pl.queries_bytes = round_up(round_up(n, micro_rows) * d * elem, kAlign);
  pl.partial_score_bytes = round_up(pl.n_k * n * elem, kAlign);
  pl.partial_index_bytes = round_up(pl.n_k * n * 8, kAlign);
  return pl;
}

template <typename T>
Plan plan_for(int64_t n, int64_t m, int64_t d, int num_threads) {
  const TypedKernels<T>& k = typed<T>();
  return make_plan(n, m, d, sizeof(T), k.panel_keys, k.micro_rows, num_threads);
}

// Split [0, total) into `parts` pieces with boundaries on multiples of `grain`.
int64_t split_point(int64_t total, int64_t parts, int64_t i, int64_t grain) {
  if (i >= parts) return total;
  return std::min(total, (total * i / parts) / grain * grain);
}

constexpr int64_t kNoRow = std::numeric_limits<int64_t>::max();

void lower_to(std::atomic<int64_t>& first, int64_t row) {
  int64_t cur = first.load(std::memory_order_relaxed);
  while (row < cur && !first.compare_exchange_weak(cur, row, std::memory_order_relaxed)) {
  }
}

// Packs (and with p.check_queries checks) every query row into qbuf: in pieces on the thread pool when
// there is enough to share, else on the calling thread (a pool round trip costs more than a small pack).
template <typename T>
int64_t pack_all_queries(const NnArgminParams& p, const TypedKernels<T>& k, T* qbuf) {
  const int64_t n = p.n_queries, tiles = ceil_div(n, k.micro_rows);
  const int64_t pieces = std::clamp<int64_t>(tiles * k.micro_rows * p.dim * int64_t(sizeof(T)) / (256 << 10), 1,
                                             std::min<int64_t>(tiles, int64_t{4} * std::max(1, p.exec.num_threads)));
  if (pieces == 1) return k.pack_queries(p, 0, n, qbuf, p.check_queries);
  std::atomic<int64_t> bad(kNoRow);
  parallel_for(pieces, p.exec.num_threads, [&](int64_t piece, int) {
    const int64_t r0 = split_point(n, pieces, piece, k.micro_rows),
                  r1 = split_point(n, pieces, piece + 1, k.micro_rows);
    if (r0 >= r1) return;
    const int64_t b = k.pack_queries(p, r0, r1, qbuf + r0 * p.dim, p.check_queries);
    if (b >= 0) lower_to(bad, b);
  });
  return bad.load() == kNoRow ? -1 : bad.load();
}

Status non_finite(const char* input, int64_t row, int64_t which) {
  return Status::Error(StatusCode::kNonFinite,
                       std::string(input) + " row " + std::to_string(row) + " contains NaN or Inf", row, which);
}

// One pass: query rows [0, p.n_queries) of `p` (a pass's view of the caller's queries) against every key;
// folds into (best_score, best_index) of those rows. Returns the lowest bad query row (or -1) and lowers
// bad_key; with a bad key seen already, only packs (and checks) the queries.
template <typename T>
int64_t search_pass(const NnArgminParams& p, const Plan& pl, char* base, T* best_score, int64_t* best_index,
                    std::atomic<int64_t>& bad_key) {
  const TypedKernels<T>& k = typed<T>();
  const int64_t n = p.n_queries;
  // The workspace in the plan's order: one key block per slot, the packed queries, the partial rows.
  char* queries = base + pl.slots * pl.block_bytes;
  T* qbuf = reinterpret_cast<T*>(queries);
  T* partial_score = reinterpret_cast<T*>(queries + pl.queries_bytes);
  int64_t* partial_index = reinterpret_cast<int64_t*>(queries + pl.queries_bytes + pl.partial_score_bytes);

  // Queries first: a row with NaN or Inf is reported ahead of any bad key, whichever pass holds it.
  const int64_t bq = pack_all_queries(p, k, qbuf);
  if (bq >= 0 || bad_key.load() != kNoRow) return bq;

  parallel_for(pl.n_q * pl.n_k, p.exec.num_threads, [&](int64_t task, int slot) {
    const int64_t qi = task / pl.n_k, ki = task % pl.n_k;
    const int64_t r0 = split_point(n, pl.n_q, qi, k.micro_rows), r1 = split_point(n, pl.n_q, qi + 1, k.micro_rows);
    const int64_t k0 = split_point(p.n_keys, pl.n_k, ki, k.panel_keys);
    const int64_t k1 = split_point(p.n_keys, pl.n_k, ki + 1, k.panel_keys);
    if (r0 >= r1) return;
    T* score = partial_score + ki * n;
    int64_t* index = partial_index + ki * n;
    for (int64_t r = r0; r < r1; ++r) {
      score[r] = T(__builtin_inf());
      index[r] = k0;  // if every score were +inf, the lowest index wins
    }
    if (k0 >= k1) return;
    T* block = reinterpret_cast<T*>(base + slot * pl.block_bytes);
    // r0 is a multiple of the micro-tile, so its tiles start at row r0 of the packed queries.
    const T* tiles = qbuf + r0 * p.dim;
    for (int64_t kb = k0; kb < k1; kb += pl.kc) {
      const int64_t nk = std::min(pl.kc, k1 - kb);
      const int64_t bk = k.pack_block(p, kb, nk, block);
      // Every key is checked by the tasks of the first query range (the others read the same values).
      if (bk >= 0 && p.check_keys && qi == 0) lower_to(bad_key, bk);
      k.scan_block(p, block, kb, nk, r0, r1, tiles, score, index);
    }
  });
  if (bad_key.load() == kNoRow)
    for (int64_t r = 0; r < n; ++r)
      nn::fold_row(r, n, pl.n_k, partial_score, partial_index, p.key_offset, best_score, best_index);
  return -1;
}

template <typename T>
Status search(const NnArgminParams& p) {
  const Plan pl = plan_for<T>(p.n_queries, p.n_keys, p.dim, p.exec.num_threads);
  if (p.workspace_bytes < pl.total_bytes())
    return Status::Error(StatusCode::kInvalidArgument, "nn_argmin: workspace too small");
  char* base = reinterpret_cast<char*>(round_up(reinterpret_cast<std::uintptr_t>(p.workspace), kAlign));
  std::atomic<int64_t> bad_key(kNoRow);
  for (int64_t r = 0; r < p.n_queries; r += pl.pass_rows) {
    NnArgminParams pass = p;
    pass.queries = static_cast<const T*>(p.queries) + r * p.queries_strides[0];
    pass.n_queries = std::min(pl.pass_rows, p.n_queries - r);
    const int64_t bq = search_pass<T>(pass, pl, base, static_cast<T*>(p.best_score) + r, p.best_index + r, bad_key);
    if (bq >= 0) return non_finite("queries", r + bq, 0);
  }
  if (bad_key.load() != kNoRow) return non_finite("keys", bad_key.load(), 1);
  return Status::Ok();
}

}  // namespace
}  // namespace nn_cpu

const char* nn_argmin_cpu_path() { return nn_cpu::kernels().name; }

int64_t nn_argmin_cpu_workspace_bytes(int64_t n_queries, int64_t n_keys, int64_t dim, DType dtype, int num_threads) {
  if (n_queries <= 0 || n_keys <= 0 || dim <= 0) return 0;
  if (dtype == DType::kFloat64) return nn_cpu::plan_for<double>(n_queries, n_keys, dim, num_threads).total_bytes();
  return nn_cpu::plan_for<float>(n_queries, n_keys, dim, num_threads).total_bytes();
}

Status nn_argmin_cpu(const NnArgminParams& p) {
  if (p.dtype != DType::kFloat32 && p.dtype != DType::kFloat64)
    return Status::Error(StatusCode::kInvalidArgument, "nn_argmin (CPU) supports float32 and float64 only");
  if (p.n_queries == 0) return Status::Ok();
  if (p.n_keys <= 0 || p.dim <= 0)
    return Status::Error(StatusCode::kInvalidArgument, "nn_argmin: keys must be non-empty");
  if (p.n_keys > std::numeric_limits<int32_t>::max())
    return Status::Error(StatusCode::kInvalidArgument, "nn_argmin: at most 2^31-1 keys per call (chunk the keys)");
  return p.dtype == DType::kFloat64 ? nn_cpu::search<double>(p) : nn_cpu::search<float>(p);
}

Status nn_argmin_merge_cpu(const NnArgminMergeParams& p) {
  if (p.score_dtype == DType::kFloat64) {
    for (int64_t r = 0; r < p.n_queries; ++r)
      nn::fold_row(r, p.n_queries, 1, static_cast<const double*>(p.score), p.index, p.key_offset,
                   static_cast<double*>(p.best_score), p.best_index);
  } else {
    for (int64_t r = 0; r < p.n_queries; ++r)
      nn::fold_row(r, p.n_queries, 1, static_cast<const float*>(p.score), p.index, p.key_offset,
                   static_cast<float*>(p.best_score), p.best_index);
  }
  return Status::Ok();
}

}  // namespace glann

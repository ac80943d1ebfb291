// The CPU kernels and their thread pool (csrc/common/parallel.cpp) under ThreadSanitizer, without Python:
// scripts/tsan_cpu.sh builds this file against the framework-free kernel library with -fsanitize=thread
// (CMake option GLANN_EXT_NATIVE_TESTS) and runs it once per SIMD copy (GLANN_EXT_CPU_ISA). Under the
// Python tests TSan would be buried in reports from torch's uninstrumented OpenMP runtime; here every
// thread is ours, so a report is a race in the pool or in how a kernel shares its workspace.
//
//   cpu_threads          every launcher at several thread counts, from concurrent callers and from inside a
//                        pool task; each result must equal the one-thread result bit for bit (parallel.h)
//   cpu_threads race     a deliberate data race, which a live ThreadSanitizer must report
//
// Prints FAIL lines for what differs and "OK cpu-threads ..." when nothing does; exits 0 only then.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/parallel.h"
#include "laplacian/laplacian.h"
#include "nn_argmin/nn_argmin.h"
#include "sphere/sphere.h"

namespace {

using Bytes = std::vector<unsigned char>;

// 64-byte aligned scratch, as the launchers require of their workspace.
struct Aligned {
  explicit Aligned(int64_t bytes)
      : size(bytes), ptr(std::aligned_alloc(64, (std::max<int64_t>(bytes, 1) + 63) / 64 * 64)) {}
  ~Aligned() { std::free(ptr); }
  Aligned(const Aligned&) = delete;
  Aligned& operator=(const Aligned&) = delete;
  int64_t size;
  void* ptr;
};

template <typename T>
std::vector<T> uniform(int64_t n, unsigned seed, double low = -1.0, double high = 1.0) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(low, high);
  std::vector<T> v(static_cast<size_t>(n));
  for (T& x : v) x = static_cast<T>(dist(rng));
  return v;
}

template <typename T>
void append(Bytes& out, const std::vector<T>& v) {
  const auto* p = reinterpret_cast<const unsigned char*>(v.data());
  out.insert(out.end(), p, p + v.size() * sizeof(T));
}

// Throws the launcher's message, so the caller reports which family failed.
void check(const glann::Status& s, const char* what) {
  if (!s.ok()) throw std::runtime_error(std::string(what) + ": " + s.message);
}

template <typename T>
constexpr glann::DType dtype_of() {
  return sizeof(T) == 8 ? glann::DType::kFloat64 : glann::DType::kFloat32;
}

// Best key per query: one query range and split keys (few queries), or both split (many).
template <typename T>
Bytes nn_argmin(int threads, int64_t n, int64_t m, int64_t d) {
  const std::vector<T> q = uniform<T>(n * d, 1), k = uniform<T>(m * d, 2);
  std::vector<T> best(static_cast<size_t>(n), std::numeric_limits<T>::infinity());
  std::vector<int64_t> index(static_cast<size_t>(n), std::numeric_limits<int64_t>::max());
  glann::NnArgminParams p;
  p.exec.num_threads = threads;
  p.dtype = dtype_of<T>();
  p.queries = q.data(), p.n_queries = n, p.dim = d, p.queries_strides[0] = d;
  p.keys = k.data(), p.n_keys = m, p.keys_strides[0] = d;
  p.best_score = best.data(), p.best_index = index.data();
  p.check_queries = p.check_keys = true;
  Aligned ws(glann::nn_argmin_cpu_workspace_bytes(n, m, d, p.dtype, threads));
  p.workspace = ws.ptr, p.workspace_bytes = ws.size;
  check(glann::nn_argmin_cpu(p), "nn_argmin");
  Bytes out;
  append(out, best);
  append(out, index);
  return out;
}

// Forward (per-sample sums, summed loss, signs) and backward of one pyramid; the row kernels, or the
// per-pixel path the CUDA kernels share.
template <typename T>
Bytes laplacian(int threads, bool pixel_path) {
  const int64_t b = 16, c = 3, h = 131, w = 97;  // 610,000 pixels: 9 threads' worth (kMinPixelsPerThread)
  const int levels = 4;
  const std::vector<T> x = uniform<T>(b * c * h * w, 3, 0.0, 1.0), y = uniform<T>(b * c * h * w, 4, 0.0, 1.0);
  glann::LaplacianForwardParams f;
  f.exec.num_threads = threads;
  f.batch = b, f.channels = c, f.height = h, f.width = w, f.levels = levels;
  for (int j = 0; j < levels; ++j) f.level_weights[j] = std::ldexp(1.0, 2 * j);
  f.dtype = dtype_of<T>();
  f.x = x.data(), f.y = y.data();
  const int64_t strides[4] = {c * h * w, h * w, w, 1};
  std::memcpy(f.x_strides, strides, sizeof strides);
  std::memcpy(f.y_strides, strides, sizeof strides);
  std::vector<T> per_sample(b), loss(1);
  std::vector<int8_t> signs(static_cast<size_t>(b * c * glann::laplacian_plane_elems(h, w, levels)));
  f.per_sample = per_sample.data(), f.loss = loss.data(), f.loss_divisor = double(b), f.signs = signs.data();
  f.pixel_path = pixel_path, f.check_finite = true;
  Aligned fws(glann::laplacian_workspace_bytes(b, c, h, w, levels, f.dtype, false, false, threads));
  f.workspace = fws.ptr, f.workspace_bytes = fws.size;
  check(glann::laplacian_forward_cpu(f), "laplacian forward");

  glann::LaplacianBackwardParams g;
  g.exec = f.exec;
  g.batch = b, g.channels = c, g.height = h, g.width = w, g.levels = levels;
  std::memcpy(g.level_weights, f.level_weights, sizeof f.level_weights);
  g.dtype = f.dtype, g.signs = signs.data(), g.pixel_path = pixel_path;
  const T one = 1;
  g.grad_loss = &one, g.grad_loss_stride = 0, g.loss_divisor = f.loss_divisor;
  std::vector<T> grad(x.size());
  g.grad = grad.data();
  Aligned bws(glann::laplacian_workspace_bytes(b, c, h, w, levels, f.dtype, false, true, threads));
  g.workspace = bws.ptr, g.workspace_bytes = bws.size;
  check(glann::laplacian_backward_cpu(g), "laplacian backward");
  Bytes out;
  append(out, per_sample);
  append(out, loss);
  append(out, signs);
  append(out, grad);
  return out;
}

template <typename T>
Bytes project(int threads) {
  const int64_t rows = 5000, d = 100;  // 15 tasks of the row splitter (kGrainElems)
  const std::vector<T> in = uniform<T>(rows * d, 5);
  std::vector<T> out(in.size());
  glann::ProjectParams p;
  p.exec.num_threads = threads;
  p.dtype = dtype_of<T>();
  p.in = in.data(), p.out = out.data(), p.rows = rows, p.dim = d;
  p.in_strides[0] = p.out_strides[0] = d;
  check(glann::project_to_sphere_cpu(p), "project_to_sphere");
  Bytes bytes;
  append(bytes, out);
  return bytes;
}

// Three steps on the rows of every other index of a table, re-projected each time.
template <typename T>
Bytes latent_step(int threads, glann::LatentOptimizer optimizer) {
  const int64_t rows = 8000, d = 100, batch = 4000;
  std::vector<T> table = uniform<T>(rows * d, 6), m(table.size(), T(0)), v(table.size(), T(0));
  std::vector<int64_t> indices(static_cast<size_t>(batch));
  for (int64_t i = 0; i < batch; ++i) indices[size_t(i)] = (i * 2 + 1) % rows;
  glann::LatentStepParams p;
  p.exec.num_threads = threads;
  p.dtype = dtype_of<T>();
  p.optimizer = optimizer;
  p.table = table.data(), p.exp_avg = m.data(), p.exp_avg_sq = v.data(), p.table_rows = rows, p.dim = d;
  p.table_strides[0] = d;
  p.indices = indices.data(), p.batch = batch, p.grad_strides[0] = d;
  p.neg_step_size = -0.01, p.neg_lr = -0.05;
  for (unsigned step = 0; step < 3; ++step) {
    const std::vector<T> grad = uniform<T>(batch * d, 7 + step);
    p.grad = grad.data();
    check(glann::latent_step_cpu(p), "latent_step");
  }
  Bytes out;
  append(out, table);
  append(out, m);
  append(out, v);
  return out;
}

struct Family {
  const char* name;
  std::function<Bytes(int threads)> run;
};

std::vector<Family> families() {
  using glann::LatentOptimizer;
  return {
      {"nn_argmin f32 (split keys)", [](int t) { return nn_argmin<float>(t, 7, 30000, 40); }},
      {"nn_argmin f32 (split both)", [](int t) { return nn_argmin<float>(t, 301, 3029, 67); }},
      {"nn_argmin f64 (split both)", [](int t) { return nn_argmin<double>(t, 203, 2011, 33); }},
      {"laplacian f32 rows", [](int t) { return laplacian<float>(t, false); }},
      {"laplacian f64 rows", [](int t) { return laplacian<double>(t, false); }},
      {"laplacian f32 pixels", [](int t) { return laplacian<float>(t, true); }},
      {"project f32", [](int t) { return project<float>(t); }},
      {"project f64", [](int t) { return project<double>(t); }},
      {"latent adam f32", [](int t) { return latent_step<float>(t, LatentOptimizer::kAdam); }},
      {"latent sgd f64", [](int t) { return latent_step<double>(t, LatentOptimizer::kSgd); }},
  };
}

std::atomic<int> failures{0};  // concurrent callers report too

void expect_same(const Bytes& got, const Bytes& want, const char* family, const std::string& how) {
  if (got == want) return;
  std::printf("FAIL %s %s: differs from the one-thread result\n", family, how.c_str());
  ++failures;
}

// Runs `fn`, reporting what it throws as a failure of `family`.
template <typename Fn>
void guarded(const char* family, Fn&& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    std::printf("FAIL %s: %s\n", family, e.what());
    ++failures;
  }
}

int race_canary() {
  int shared = 0;
  std::thread a([&] { shared += 1; }), b([&] { shared += 2; });
  a.join();
  b.join();
  return shared == 3 ? 0 : 1;  // ThreadSanitizer exits non-zero after reporting the race
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "race") == 0) return race_canary();
  if (argc != 1) {
    std::fprintf(stderr, "usage: cpu_threads [race] (see the head of cpu_threads.cpp)\n");
    return 2;
  }
  const std::vector<Family> all = families();
  std::vector<Bytes> want(all.size());
  for (size_t f = 0; f < all.size(); ++f) guarded(all[f].name, [&] { want[f] = all[f].run(1); });

  // Thread counts in an order that grows, shrinks and regrows the pool (parallel.cpp starts workers on
  // demand and leaves the extra ones asleep).
  for (int threads : {2, 8, 3, 1, 4}) {
    for (size_t f = 0; f < all.size(); ++f)
      guarded(all[f].name,
              [&] { expect_same(all[f].run(threads), want[f], all[f].name, std::to_string(threads) + " threads"); });
  }

  // Four callers at once: one holds the pool, the others find it busy and run serially (parallel.h).
  std::vector<std::thread> callers;
  for (int caller = 0; caller < 4; ++caller) {
    callers.emplace_back([&, caller] {
      for (size_t i = 0; i < all.size(); ++i) {
        const size_t f = (i + size_t(caller) * 3) % all.size();
        guarded(all[f].name, [&] {
          expect_same(all[f].run(3), want[f], all[f].name, "concurrent caller " + std::to_string(caller));
        });
      }
    });
  }
  for (std::thread& t : callers) t.join();

  // A launcher called from inside a pool task runs serially there; the outer call keeps its threads.
  std::vector<Bytes> nested(all.size());
  glann::parallel_for(int64_t(all.size()), 4, [&](int64_t f, int) {
    guarded(all[size_t(f)].name, [&] { nested[size_t(f)] = all[size_t(f)].run(4); });
  });
  for (size_t f = 0; f < all.size(); ++f) expect_same(nested[f], want[f], all[f].name, "inside a pool task");

  if (failures.load() != 0) return 1;
  std::printf("OK cpu-threads nn_argmin=%s laplacian=%s sphere=%s families=%zu\n", glann::nn_argmin_cpu_path(),
              glann::laplacian_cpu_path(), glann::sphere_cpu_path(), all.size());
  return 0;
}

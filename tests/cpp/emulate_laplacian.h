// The fused Laplacian kernels on the host: index math checked exhaustively against laplacian_math.h, and
// the launch sequence of laplacian_fused.cu run with emulated blocks (tests/test_hopper_emulation.py
// compares the results with the CPU pixel path and the torch reference).
#pragma once
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "emulation.h"
#include "laplacian/laplacian_fused_math.h"
#include "laplacian/laplacian_math.h"

namespace emu {

using glann::lap::Taps;
using glann::lapf::Taps5;

// (index -> summed weight) of a tap list: the operator row, whatever the order and the duplicates.
template <typename TapList>
std::map<int64_t, double> row_of(const TapList& t) {
  std::map<int64_t, double> m;
  for (int k = 0; k < t.count; ++k) m[t.idx[k]] += double(t.w[k]);
  for (auto it = m.begin(); it != m.end();) it = it->second == 0.0 ? m.erase(it) : std::next(it);
  return m;
}

inline void check_taps(Failures& f, const char* what, const Taps5<double>& mine, const Taps<double>& ref, int64_t n,
                       int64_t out, int64_t src_size) {
  if (mine.count > 5) f.fail(what, n, out, mine.count);
  for (int k = 0; k < mine.count; ++k)
    if (mine.idx[k] < 0 || mine.idx[k] >= src_size) f.fail(what, n, out, mine.idx[k]);
  if (row_of(mine) != row_of(ref)) f.fail(what, n, out, -1);
}

// reflect101_near against reflect101 where it claims to be exact; the four 1-D operators against the
// definitions for every size up to 300 and every output; level sizes and sign offsets against
// make_geometry; for_each_pixel's coverage.
inline int64_t laplacian_index_checks() {
  namespace lap = glann::lap;
  namespace lapf = glann::lapf;
  Failures f;
  for (int n = 1; n <= 300; ++n) {
    const int lim = n <= 2 ? 64 : 2 * n - 2;
    for (int i = -lim; i <= lim; ++i)
      if (lapf::reflect101_near(i, n) != lap::reflect101(i, n)) f.fail("reflect101_near", n, i);
    const int m = (n + 1) / 2;
    Taps5<double> mine;
    Taps<double> ref;
    for (int q = 0; q < m; ++q) {
      lapf::down_taps5<double>(q, n, mine);
      lap::down_taps<double>(q, n, ref);
      check_taps(f, "down_taps5", mine, ref, n, q, n);
      lapf::up_adj_taps5<double>(q, n, mine);
      lap::up_adj_taps<double>(q, n, ref);
      check_taps(f, "up_adj_taps5", mine, ref, n, q, n);
    }
    for (int i = 0; i < n; ++i) {
      lapf::up_taps5<double>(i, n, mine);
      lap::up_taps<double>(i, n, ref);
      check_taps(f, "up_taps5", mine, ref, n, i, m);
      lapf::down_adj_taps5<double>(i, n, mine);
      lap::down_adj_taps<double>(i, n, ref);
      check_taps(f, "down_adj_taps5", mine, ref, n, i, m);
    }
  }
  const int sizes[] = {1, 2, 3, 5, 28, 64, 127, 128, 255, 256, 1000, 4097};
  for (int h : sizes)
    for (int w : sizes)
      for (int levels = 1; levels <= lap::kMaxLevels; ++levels) {
        const lap::Geometry g = lap::make_geometry(h, w, levels);
        for (int j = 0; j < levels; ++j) {
          const lapf::Level l = lapf::level_at(h, w, j);
          if (l.h != g.h[j] || l.w != g.w[j] || l.off != g.off[j]) f.fail("level_at", h, w, j);
        }
        const lapf::Level end = lapf::level_at(h, w, levels);
        if (end.off != g.total) f.fail("level total", h, w, levels);
      }
  const int grid[][2] = {{1, 1}, {1, 7}, {7, 1}, {28, 28}, {5, 33}, {64, 64}, {13, 200}};
  const int threads[] = {1, 3, 32, 128, 256, 512};
  for (const auto& hw : grid)
    for (int nt : threads) {
      std::vector<int> seen(hw[0] * hw[1], 0);
      for (int tid = 0; tid < nt; ++tid)
        lapf::for_each_pixel(hw[0], hw[1], tid, nt, [&](int r, int c) {
          if (r < 0 || r >= hw[0] || c < 0 || c >= hw[1])
            f.fail("for_each_pixel range", r, c, nt);
          else
            ++seen[r * hw[1] + c];
        });
      for (int e = 0; e < hw[0] * hw[1]; ++e)
        if (seen[e] != 1) f.fail("for_each_pixel coverage", hw[0], hw[1], nt);
    }
  return f.count;
}

// The plan of one call, as key=value lines (tests/test_hopper_emulation.py compares its workspace with
// _C.laplacian_workspace_bytes).
inline void laplacian_plan(int64_t planes, int64_t h, int64_t w, int levels, int elem, int64_t limit) {
  namespace lapf = glann::lapf;
  const lapf::FusedPlan p = lapf::make_fused_plan(planes, h, w, levels, elem, limit);
  std::printf("ok=%d j0=%d plane_threads=%d forward_smem=%lld backward_smem=%lld tiles_h=%d tiles_w=%d slots=%lld\n",
              int(p.ok), p.j0, p.plane_threads, (long long)p.forward_smem, (long long)p.backward_smem, p.tiles_h,
              p.tiles_w, (long long)p.slots);
  std::printf("forward_bytes=%lld backward_bytes=%lld tile_forward=%lld tile_up_adj=%lld tile_down_adj=%lld\n",
              (long long)p.forward_bytes, (long long)p.backward_bytes, (long long)lapf::tile_forward_bytes(elem),
              (long long)lapf::tile_up_adj_bytes(elem), (long long)lapf::tile_down_adj_bytes(elem));
}

// Exact-size shared memory for one emulated block (so AddressSanitizer sees an overrun).
struct Smem {
  std::vector<char> bytes;
  explicit Smem(int64_t n) : bytes(size_t(n)) {}
  char* get() { return bytes.data(); }
};

template <typename T>
struct HostPlane {  // a packed plane of T (x - y, or G^1 / U^T s_0 / acc_1 of the j0 = 1 path)
  const T* p;
  int w;
  T operator()(int r, int c) const { return p[int64_t(r) * w + c]; }
};

template <typename T>
struct HostOut {
  T* p;
  int w;
  void operator()(int r, int c, T v) const { p[int64_t(r) * w + c] = v; }
};

// laplacian_fused.cu's forward_impl with emulated blocks: d = x - y (planes x h x w, in T), the plan of
// the call. Returns per-sample sums; signs (planes x total) start as 99 so unwritten ones show.
template <typename T>
std::vector<double> laplacian_forward(int64_t batch, int64_t channels, int h, int w, int levels,
                                      const glann::lapf::FusedPlan& plan, const std::vector<T>& d,
                                      std::vector<int8_t>& signs) {
  namespace lapf = glann::lapf;
  const int64_t planes = batch * channels, hw = int64_t(h) * w;
  const int64_t total = glann::lap::make_geometry(h, w, levels).total;
  signs.assign(size_t(planes * total), int8_t(99));
  std::vector<double> partials(size_t(planes * plan.slots), NAN);
  const lapf::Level l1 = lapf::level_at(h, w, 1);
  std::vector<T> g1(plan.j0 == 1 ? size_t(planes * l1.h * l1.w) : 0, T(NAN));
  if (plan.j0 == 1) {
    const int64_t tiles = plan.slots - 1;
    Smem smem(lapf::tile_forward_bytes(sizeof(T)));
    run_block(lapf::kTileThreads, [&](int tid, const auto& sync) {
      for (int64_t b = 0; b < planes * tiles; ++b) {
        const lapf::TileAt t = lapf::tile_at(b, tiles, plan.tiles_w);
        const double s = lapf::tile_forward<T>(h, w, t.i0, t.k0, HostPlane<T>{d.data() + t.plane * hw, w},
                                               signs.data() + t.plane * total, g1.data() + t.plane * l1.h * l1.w,
                                               smem.get(), tid, lapf::kTileThreads, sync);
        if (tid == 0) partials[size_t(t.plane * plan.slots + t.tile)] = s;
        sync();
      }
    });
  }
  Smem smem(plan.forward_smem);
  run_block(plan.plane_threads, [&](int tid, const auto& sync) {
    for (int64_t plane = 0; plane < planes; ++plane) {
      double s;
      if (plan.j0 == 0) {
        s = lapf::plane_forward<T>(h, w, 0, levels, 0, HostPlane<T>{d.data() + plane * hw, w},
                                   signs.data() + plane * total, smem.get(), tid, plan.plane_threads, sync);
      } else {
        s = lapf::plane_forward<T>(l1.h, l1.w, 1, levels - 1, l1.off,
                                   HostPlane<T>{g1.data() + plane * l1.h * l1.w, l1.w}, signs.data() + plane * total,
                                   smem.get(), tid, plan.plane_threads, sync);
      }
      if (tid == 0) partials[size_t(plane * plan.slots + plan.slots - 1)] = s;
      sync();
    }
  });
  std::vector<double> per_sample(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) {  // sample_sum_kernel's order
    double s = 0.0;
    for (int64_t i = 0; i < channels * plan.slots; ++i) s += partials[size_t(b * channels * plan.slots + i)];
    per_sample[size_t(b)] = double(T(s));
  }
  return per_sample;
}

struct NoZ {
  template <typename... A>
  double operator()(A...) const {
    return 0.0;
  }
};

// laplacian_fused.cu's backward_impl with emulated blocks: grad (planes x h x w) from the signs.
template <typename T>
std::vector<T> laplacian_backward(int64_t batch, int64_t channels, int h, int w, int levels,
                                  const glann::lapf::FusedPlan& plan, const std::vector<int8_t>& signs,
                                  const std::vector<T>& scale) {
  namespace lapf = glann::lapf;
  const int64_t planes = batch * channels, hw = int64_t(h) * w;
  const int64_t total = glann::lap::make_geometry(h, w, levels).total;
  std::vector<T> grad(size_t(planes * hw), T(NAN));
  if (plan.j0 == 0) {
    Smem smem(plan.backward_smem);
    run_block(plan.plane_threads, [&](int tid, const auto& sync) {
      for (int64_t plane = 0; plane < planes; ++plane) {
        lapf::plane_backward<T>(h, w, 0, levels, 0, signs.data() + plane * total, scale[size_t(plane / channels)],
                                NoZ{}, HostOut<T>{grad.data() + plane * hw, w}, smem.get(), tid, plan.plane_threads,
                                sync);
        sync();
      }
    });
    return grad;
  }
  const lapf::Level l1 = lapf::level_at(h, w, 1);
  const int64_t n1 = int64_t(l1.h) * l1.w, tiles = plan.slots - 1;
  std::vector<T> z(size_t(planes * n1), T(NAN)), acc1(size_t(planes * n1), T(NAN));
  {
    Smem smem(lapf::tile_up_adj_bytes(sizeof(T)));
    run_block(lapf::kTileThreads, [&](int tid, const auto& sync) {
      for (int64_t b = 0; b < planes * tiles; ++b) {
        const lapf::TileAt t = lapf::tile_at(b, tiles, plan.tiles_w);
        lapf::tile_up_adjoint<T>(h, w, t.i0, t.k0, signs.data() + t.plane * total, z.data() + t.plane * n1, smem.get(),
                                 tid, lapf::kTileThreads, sync);
        sync();
      }
    });
  }
  {
    Smem smem(plan.backward_smem);
    run_block(plan.plane_threads, [&](int tid, const auto& sync) {
      for (int64_t plane = 0; plane < planes; ++plane) {
        lapf::plane_backward<T>(l1.h, l1.w, 1, levels - 1, l1.off, signs.data() + plane * total,
                                scale[size_t(plane / channels)], HostPlane<T>{z.data() + plane * n1, l1.w},
                                HostOut<T>{acc1.data() + plane * n1, l1.w}, smem.get(), tid, plan.plane_threads, sync);
        sync();
      }
    });
  }
  Smem smem(lapf::tile_down_adj_bytes(sizeof(T)));
  run_block(lapf::kTileThreads, [&](int tid, const auto& sync) {
    for (int64_t b = 0; b < planes * tiles; ++b) {
      const lapf::TileAt t = lapf::tile_at(b, tiles, plan.tiles_w);
      lapf::tile_down_adjoint<T>(h, w, t.i0, t.k0, signs.data() + t.plane * total, acc1.data() + t.plane * n1,
                                 scale[size_t(t.plane / channels)], HostOut<T>{grad.data() + t.plane * hw, w},
                                 smem.get(), tid, lapf::kTileThreads, sync);
      sync();
    }
  });
  return grad;
}

// lap-fwd / lap-bwd: the files tests/test_hopper_emulation.py writes and reads.
//   in (fwd):  int64 batch, channels, h, w, levels, elem (4: float, 8: double), smem_limit; then d as double
//   out (fwd): int64 j0; per_sample as double (batch); signs as int8 (planes x total)
//   in (bwd):  the same header; signs as int8; scale as double (batch)
//   out (bwd): int64 j0; grad as double (planes x h x w)
template <typename T>
int laplacian_file_command(bool forward, const char* in_path, const char* out_path) {
  const std::vector<char> data = read_file(in_path);
  Reader in{data};
  const int64_t batch = in.get<int64_t>(), channels = in.get<int64_t>(), h = in.get<int64_t>(), w = in.get<int64_t>(),
                levels = in.get<int64_t>(), elem = in.get<int64_t>(), limit = in.get<int64_t>();
  const int64_t planes = batch * channels;
  const glann::lapf::FusedPlan plan = glann::lapf::make_fused_plan(planes, h, w, int(levels), int(elem), limit);
  if (!plan.ok) {
    std::printf("plan not ok\n");
    return 3;
  }
  Writer out;
  out.put<int64_t>(plan.j0);
  if (forward) {
    std::vector<T> d(size_t(planes * h * w));
    for (T& v : d) v = T(in.get<double>());
    std::vector<int8_t> signs;
    const std::vector<double> per_sample =
        laplacian_forward<T>(batch, channels, int(h), int(w), int(levels), plan, d, signs);
    for (double v : per_sample) out.put<double>(v);
    for (int8_t s : signs) out.put<int8_t>(s);
  } else {
    const int64_t total = glann::lap::make_geometry(h, w, int(levels)).total;
    std::vector<int8_t> signs(size_t(planes * total));
    for (int8_t& s : signs) s = in.get<int8_t>();
    std::vector<T> scale(static_cast<size_t>(batch));
    for (T& s : scale) s = T(in.get<double>());
    const std::vector<T> grad = laplacian_backward<T>(batch, channels, int(h), int(w), int(levels), plan, signs, scale);
    for (T v : grad) out.put<double>(double(v));
  }
  return write_file(out_path, out.d) ? 0 : 2;
}

}  // namespace emu

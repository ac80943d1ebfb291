// The vectorised projection on the host: the lane mapping checked for every D up to 1100, and the kernel's
// row body (sphere_vec_math.h) run by a warp of host threads, shuffles and votes per segment of lanes.
#pragma once
#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "emulation.h"
#include "sphere/sphere_vec_math.h"

namespace emu {

namespace sphv = glann::sphv;

inline int64_t sphere_map_checks() {
  Failures f;
  for (int elem : {2, 4, 8})
    for (int64_t dim = 1; dim <= 1100; ++dim) {
      const sphv::VecMap m = sphv::make_vec_map(dim, elem);
      if (dim % m.vec != 0) continue;  // vec_applies refuses these
      if (m.lanes < 1 || m.lanes > 32 || (m.lanes & (m.lanes - 1)) != 0 || m.lanes * m.rows != 32)
        f.fail("lanes", dim, elem, m.lanes);
      if (m.lanes < 32 && m.lanes < m.nvec) f.fail("too few lanes", dim, elem);
      if (m.lanes > 1 && m.lanes / 2 >= m.nvec) f.fail("idle lanes", dim, elem);
      if (m.registers != (m.per_lane <= m.keep) || m.keep > sphv::kMaxVecs ||
          (m.per_lane <= sphv::kMaxVecs && !m.registers))
        f.fail("register slots", dim, elem, m.keep);
      std::vector<int> seen(size_t(m.nvec), 0);
      for (int lane = 0; lane < m.lanes; ++lane)
        for (int64_t v = lane; v < m.nvec; v += m.lanes) ++seen[size_t(v)];
      for (int64_t v = 0; v < m.nvec; ++v)
        if (seen[size_t(v)] != 1) f.fail("vector coverage", dim, elem, v);
      for (int lane = 0; lane < m.lanes; ++lane) {  // the register path's slots reach every vector of a lane
        int64_t count = 0;
        for (int i = 0; i < m.keep; ++i) count += (i < m.per_lane && lane + int64_t(i) * m.lanes < m.nvec) ? 1 : 0;
        int64_t want = 0;
        for (int64_t v = lane; v < m.nvec; v += m.lanes) ++want;
        if (m.registers && count != want) f.fail("register slots coverage", dim, elem, lane);
      }
    }
  // vec_applies: only unit column strides, 16-byte alignment and whole vectors per row.
  if (!sphv::vec_applies(64, 16, 1, 128, 16, 1, 10, 16, 4)) f.fail("vec_applies contiguous");
  if (sphv::vec_applies(64, 16, 2, 128, 16, 1, 10, 16, 4)) f.fail("vec_applies strided columns");
  if (sphv::vec_applies(68, 16, 1, 128, 16, 1, 10, 16, 4)) f.fail("vec_applies unaligned base");
  if (sphv::vec_applies(64, 17, 1, 128, 17, 1, 10, 16, 4)) f.fail("vec_applies unaligned pitch");
  if (sphv::vec_applies(64, 7, 1, 64, 7, 1, 10, 7, 4)) f.fail("vec_applies D = 7");
  if (!sphv::vec_applies(64, 7, 1, 64, 7, 1, 1, 8, 4)) f.fail("vec_applies one row");
  // Whole vectors with aligned bases and pitches: a row of 24 bytes (6 float, 3 double) in rows of 32 is
  // refused (a half vector would be left unprojected); 48 bytes is taken.
  if (sphv::vec_applies(64, 8, 1, 128, 8, 1, 10, 6, 4)) f.fail("vec_applies D = 6 float, pitch 8");
  if (sphv::vec_applies(64, 4, 1, 128, 4, 1, 10, 3, 8)) f.fail("vec_applies D = 3 double, pitch 4");
  if (!sphv::vec_applies(64, 16, 1, 128, 16, 1, 10, 12, 4)) f.fail("vec_applies D = 12 float, pitch 16");
  return f.count;
}

struct HostCvt {
  template <typename To, typename From>
  static To to(From v) {
    return static_cast<To>(v);
  }
};

// A segment of host threads: shuffles and votes through slots, between two barriers.
struct HostSegment {
  int lane, width;
  Barrier* bar;
  double* slots;
  template <typename A>
  A shfl_xor(A v, int offset) const {
    slots[lane] = double(v);
    bar->wait();
    const A r = A(slots[lane ^ offset]);
    bar->wait();
    return r;
  }
  bool any(bool b) const {
    slots[lane] = b ? 1.0 : 0.0;
    bar->wait();
    bool r = false;
    for (int i = 0; i < width; ++i) r = r || slots[i] != 0.0;
    bar->wait();
    return r;
  }
};

// project_vec_kernel's loop for one warp over all rows, in place (y = x), T float or double (A = double).
// Returns the lowest non-finite row (rows if none).
template <typename T, int kKeep>
int64_t project_rows_vec(std::vector<T>& x, int64_t rows, int64_t dim) {
  const sphv::VecMap m = sphv::make_vec_map(dim, int(sizeof(T)));
  std::vector<std::unique_ptr<Barrier>> bars;
  for (int s = 0; s < m.rows; ++s) bars.emplace_back(new Barrier(m.lanes));
  std::vector<double> slots(32);
  std::mutex bad_mutex;
  int64_t first_bad = rows;
  run_block(32, [&](int lane, const auto&) {
    const int seg = lane / m.lanes;
    const HostSegment s{lane % m.lanes, m.lanes, bars[size_t(seg)].get(), slots.data() + seg * m.lanes};
    for (int64_t g = 0; g * m.rows < rows; ++g) {
      const int64_t row = g * m.rows + seg;
      if (row >= rows) continue;
      T* p = x.data() + row * dim;
      if (!sphv::project_row_vec<T, double, HostCvt, kKeep>(p, p, dim, m, s) && s.lane == 0) {
        const std::lock_guard<std::mutex> lock(bad_mutex);
        first_bad = std::min(first_bad, row);
      }
    }
  });
  return first_bad;
}

template <typename T>
int64_t project_rows_vec_any(std::vector<T>& x, int64_t rows, int64_t dim) {
  switch (sphv::make_vec_map(dim, int(sizeof(T))).keep) {
    case 1:
      return project_rows_vec<T, 1>(x, rows, dim);
    case 2:
      return project_rows_vec<T, 2>(x, rows, dim);
    case 4:
      return project_rows_vec<T, 4>(x, rows, dim);
    default:
      return project_rows_vec<T, 8>(x, rows, dim);
  }
}

// sphere-vec ELEM IN OUT: in = int64 rows, dim; rows x dim doubles. out = int64 first bad row; the rows
// after the in-place projection, as doubles.
template <typename T>
int sphere_file_command(const char* in_path, const char* out_path) {
  const std::vector<char> data = read_file(in_path);
  Reader in{data};
  const int64_t rows = in.get<int64_t>(), dim = in.get<int64_t>();
  std::vector<T> x(size_t(rows * dim));
  for (T& v : x) v = T(in.get<double>());
  const int64_t bad = project_rows_vec_any<T>(x, rows, dim);
  Writer out;
  out.put<int64_t>(bad);
  for (T v : x) out.put<double>(double(v));
  return write_file(out_path, out.d) ? 0 : 2;
}

}  // namespace emu

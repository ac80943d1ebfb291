// The tensor-core nn_argmin kernel on the host: its shared-memory layout, lane maps, fragments, pipeline,
// epilogue and split plan (nn_argmin_mma_math.h), with ldmatrix and mma.sync emulated from their PTX
// definitions (written out below, independently of the kernel's maps).
#pragma once
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <set>
#include <vector>

#include "emulation.h"
#include "nn_argmin/nn_argmin_mma_math.h"

namespace emu {

namespace mma = glann::nnmma;

// ---- PTX semantics ----------------------------------------------------------------------------------

// ldmatrix.x4 (.b16): lanes 8i..8i+7 give the row addresses of matrix i (16 bytes each); lane l receives,
// in register i, bytes 4 (l % 4) .. 4 (l % 4) + 3 of row l / 4 of matrix i.
inline void ldmatrix_x4(const std::vector<uint8_t>& smem, const int (&addr)[32], uint32_t (&out)[32][4]) {
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 4; ++i) std::memcpy(&out[l][i], smem.data() + addr[8 * i + l / 4] + 4 * (l % 4), 4);
}

inline float bf16_to_float(uint16_t b) {
  const uint32_t bits = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline uint16_t float_to_bf16_exact(float f) {  // only for values bf16 holds exactly (the tests' integers)
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return uint16_t(bits >> 16);
}
inline float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
inline uint32_t float_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// mma.m16n8k16 (b16 inputs, here bf16) with a double accumulator, from the PTX fragment layouts
// (g = lane / 4, t = lane % 4): A a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..);
// B b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g); C c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1).
inline void mma_16816(double (&c)[32][4], const uint32_t (&a)[32][4], const uint32_t (&b)[32][2]) {
  double A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int h = 0; h < 2; ++h) {
      const auto lo16 = [&](uint32_t r) { return bf16_to_float(uint16_t(h == 0 ? r & 0xffff : r >> 16)); };
      A[g][2 * t + h] = lo16(a[l][0]);
      A[g + 8][2 * t + h] = lo16(a[l][1]);
      A[g][2 * t + 8 + h] = lo16(a[l][2]);
      A[g + 8][2 * t + 8 + h] = lo16(a[l][3]);
      B[2 * t + h][g] = lo16(b[l][0]);
      B[2 * t + 8 + h][g] = lo16(b[l][1]);
    }
  }
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int r = 0; r < 4; ++r) {
      const int row = g + 8 * (r >> 1), col = 2 * t + (r & 1);
      double s = 0;
      for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
      c[l][r] += s;
    }
  }
}

// mma.m16n8k8 (tf32): A a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4); B b0 (k t, n g), b1 (k t+4,
// n g); C as above. The hardware reads the top 19 bits of each register (the kernel passes tf32 values).
inline void mma_1688(double (&c)[32][4], const uint32_t (&a)[32][4], const uint32_t (&b)[32][2]) {
  double A[16][8], B[8][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    const auto v = [](uint32_t r) { return double(bits_to_float(r & 0xffffe000u)); };
    A[g][t] = v(a[l][0]);
    A[g + 8][t] = v(a[l][1]);
    A[g][t + 4] = v(a[l][2]);
    A[g + 8][t + 4] = v(a[l][3]);
    B[t][g] = v(b[l][0]);
    B[t + 4][g] = v(b[l][1]);
  }
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int r = 0; r < 4; ++r) {
      const int row = g + 8 * (r >> 1), col = 2 * t + (r & 1);
      double s = 0;
      for (int k = 0; k < 8; ++k) s += A[row][k] * B[k][col];
      c[l][r] += s;
    }
  }
}

inline void split_tf32(uint32_t x, uint32_t& hi, uint32_t& lo) {
  hi = mma::tf32_rna_bits(x);
  lo = mma::tf32_rna_bits(float_bits(bits_to_float(x) - bits_to_float(hi)));
}

// ---- layout and maps ----------------------------------------------------------------------------------

inline void check_layout_and_maps(Failures& f) {
  // Swizzle: a bijection of the 512 chunks of a tile onto its 512 16-byte slots, each inside its row.
  std::set<int> slots;
  for (int row = 0; row < mma::kBM; ++row)
    for (int c = 0; c < mma::kChunksPerRow; ++c) {
      const int o = mma::tile_offset(row, c);
      if (o % 16 != 0 || o / mma::kRowBytes != row) f.fail("tile_offset row", row, c, o);
      slots.insert(o);
    }
  if (int(slots.size()) != mma::kBM * mma::kChunksPerRow) f.fail("tile_offset bijection");
  // Loader: every chunk of a stage tile exactly once; each 8-thread phase writes 8 different bank groups.
  std::vector<int> seen(mma::kBM * mma::kChunksPerRow, 0);
  for (int i = 0; i < 2; ++i)
    for (int t = 0; t < mma::kThreads; ++t) ++seen[mma::load_row(t, i) * 4 + mma::load_chunk(t, i)];
  for (int v : seen)
    if (v != 1) f.fail("loader coverage");
  for (int i = 0; i < 2; ++i)
    for (int t0 = 0; t0 < mma::kThreads; t0 += 8) {
      std::set<int> groups;
      for (int t = t0; t < t0 + 8; ++t)
        groups.insert(mma::tile_offset(mma::load_row(t, i), mma::load_chunk(t, i)) / 16 % 8);
      if (groups.size() != 8) f.fail("cp.async phase bank conflict", t0, i);
    }
  // ldmatrix: each 8-lane phase reads 8 different bank groups (conflict-free).
  for (int w = 0; w < 2; ++w)
    for (int x = 0; x < 4; ++x)
      for (int ks = 0; ks < 2; ++ks)
        for (int phase = 0; phase < 4; ++phase) {
          std::set<int> ga, gb;
          for (int l = 8 * phase; l < 8 * phase + 8; ++l) {
            ga.insert(mma::a_ldmatrix_offset(l, w, x, ks) / 16 % 8);
            if (x < 2) gb.insert(mma::b_ldmatrix_offset(l, w, x, ks) / 16 % 8);
            if (x < 2) gb.insert(mma::b_ldmatrix_offset(l, w + 2, x, ks) / 16 % 8 + 8);
          }
          if (ga.size() != 8) f.fail("A ldmatrix bank conflict", w, x, ks);
          if (x < 2 && gb.size() != 16) f.fail("B ldmatrix bank conflict", w, x, ks);
        }
  // Accumulators: the 8 warps x 32 lanes x 64 registers own every (row, column) of the block tile once.
  std::vector<int> owned(mma::kBM * mma::kBN, 0);
  for (int warp = 0; warp < 8; ++warp)
    for (int l = 0; l < 32; ++l)
      for (int mt = 0; mt < mma::kMTiles; ++mt)
        for (int nt = 0; nt < mma::kNTiles; ++nt)
          for (int r = 0; r < 4; ++r)
            ++owned[mma::acc_row(l, mma::warp_m(warp), mt, r) * mma::kBN + mma::acc_col(l, mma::warp_n(warp), nt, r)];
  for (int v : owned)
    if (v != 1) f.fail("accumulator ownership");
}

// One stage (64 bytes of d) of a block: queries and keys written through the loader's maps into swizzled
// tiles, every warp's fragments read with emulated ldmatrix at the kernel's addresses, multiplied with
// emulated mma (three TF32 products for 4-byte elements), scattered back through acc_row / acc_col, and
// compared with Q K^T: exact for small integers; for random floats (3xTF32) within 3 * 2^-22 of
// sum |q_i k_i| plus the double accumulation's rounding.
inline void check_block_stage(Failures& f, int elem, bool integers, uint32_t seed) {
  const int epc = 16 / elem, eps = mma::kChunksPerRow * epc;  // elements per chunk / per stage row
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> small(-8, 8);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> Q(mma::kBM * eps), K(mma::kBN * eps);
  for (float& v : Q) v = integers ? float(small(rng)) : normal(rng);
  for (float& v : K) v = integers ? float(small(rng)) : normal(rng);
  std::vector<uint8_t> qt(mma::kTileBytes), kt(mma::kTileBytes);
  const auto store = [&](std::vector<uint8_t>& tile, const std::vector<float>& src) {
    for (int t = 0; t < mma::kThreads; ++t)
      for (int i = 0; i < 2; ++i) {
        const int row = mma::load_row(t, i), ch = mma::load_chunk(t, i);
        for (int e = 0; e < epc; ++e) {
          const float v = src[row * eps + ch * epc + e];
          uint8_t* dst = tile.data() + mma::tile_offset(row, ch) + e * elem;
          if (elem == 2) {
            const uint16_t b = float_to_bf16_exact(v);
            std::memcpy(dst, &b, 2);
          } else {
            std::memcpy(dst, &v, 4);
          }
        }
      }
  };
  store(qt, Q);
  store(kt, K);
  std::vector<double> got(mma::kBM * mma::kBN, 0.0);
  for (int warp = 0; warp < 8; ++warp) {
    const int wm = mma::warp_m(warp), wn = mma::warp_n(warp);
    double acc[mma::kMTiles][mma::kNTiles][32][4] = {};
    for (int ks = 0; ks < 2; ++ks) {
      uint32_t a[mma::kMTiles][32][4], b[mma::kNTiles][32][2];
      for (int mt = 0; mt < mma::kMTiles; ++mt) {
        int addr[32];
        for (int l = 0; l < 32; ++l) addr[l] = mma::a_ldmatrix_offset(l, wm, mt, ks);
        ldmatrix_x4(qt, addr, a[mt]);
      }
      for (int np = 0; np < mma::kNTiles / 2; ++np) {
        int addr[32];
        for (int l = 0; l < 32; ++l) addr[l] = mma::b_ldmatrix_offset(l, wn, np, ks);
        uint32_t r[32][4];
        ldmatrix_x4(kt, addr, r);
        for (int l = 0; l < 32; ++l)
          for (int i = 0; i < 4; ++i) b[mma::b_frag_tile(np, i)][l][mma::b_frag_reg(i)] = r[l][i];
      }
      for (int mt = 0; mt < mma::kMTiles; ++mt)
        for (int nt = 0; nt < mma::kNTiles; ++nt) {
          if (elem == 2) {
            mma_16816(acc[mt][nt], a[mt], b[nt]);
            continue;
          }
          uint32_t ah[32][4], al[32][4], bh[32][2], bl[32][2];
          for (int l = 0; l < 32; ++l) {
            for (int j = 0; j < 4; ++j) split_tf32(a[mt][l][j], ah[l][j], al[l][j]);
            for (int j = 0; j < 2; ++j) split_tf32(b[nt][l][j], bh[l][j], bl[l][j]);
          }
          mma_1688(acc[mt][nt], al, bh);
          mma_1688(acc[mt][nt], ah, bl);
          mma_1688(acc[mt][nt], ah, bh);
        }
    }
    for (int l = 0; l < 32; ++l)
      for (int mt = 0; mt < mma::kMTiles; ++mt)
        for (int nt = 0; nt < mma::kNTiles; ++nt)
          for (int r = 0; r < 4; ++r)
            got[mma::acc_row(l, wm, mt, r) * mma::kBN + mma::acc_col(l, wn, nt, r)] = acc[mt][nt][l][r];
  }
  double worst = 0.0;
  for (int i = 0; i < mma::kBM; ++i)
    for (int j = 0; j < mma::kBN; ++j) {
      double exact = 0.0, mag = 0.0;
      for (int e = 0; e < eps; ++e) {
        exact += double(Q[i * eps + e]) * double(K[j * eps + e]);
        mag += std::fabs(double(Q[i * eps + e]) * double(K[j * eps + e]));
      }
      const double err = std::fabs(got[i * mma::kBN + j] - exact);
      if (integers && err != 0.0) f.fail("block stage product (exact)", elem, i, j);
      if (!integers) worst = std::max(worst, err / (mag + 1e-30));
    }
  if (!integers && worst > 3.0 * std::ldexp(1.0, -22)) f.fail("3xTF32 relative error", int64_t(worst * 1e12), elem);
  if (!integers) std::printf("3xTF32 worst relative error %.3g (bound %.3g)\n", worst, 3.0 * std::ldexp(1.0, -22));
}

// ---- pipeline -------------------------------------------------------------------------------------

// Checks run_pipeline's schedule: each step's group has landed when it is computed, its stage still holds
// it, and a stage is reloaded only after a barrier that follows the compute of the step it held.
struct PipelineModel {
  Failures* f = nullptr;
  int64_t nsteps = 0;
  std::vector<int64_t> group_step;  // group g -> its step (-1 for an empty group)
  int64_t landed = 0;               // groups 0..landed-1 have landed
  int64_t stage_step[mma::kStages] = {-1, -1, -1, -1};
  bool stage_done_before_sync[mma::kStages] = {};  // its step was computed before the latest barrier
  bool stage_done[mma::kStages] = {};
  int64_t next_load = 0, next_compute = 0;
  int64_t pending_load = -1;

  void load(int64_t step, int stage) {
    if (step != next_load++) f->fail("pipeline: loads out of order", step);
    if (stage != int(step % mma::kStages)) f->fail("pipeline: load stage", step, stage);
    if (stage_step[stage] >= 0 && !stage_done_before_sync[stage]) f->fail("pipeline: stage reloaded too early", step);
    stage_step[stage] = step;
    stage_done[stage] = stage_done_before_sync[stage] = false;
    pending_load = step;
  }
  void commit() {
    group_step.push_back(pending_load);
    pending_load = -1;
  }
  template <int N>
  void wait_prior() {
    landed = std::max<int64_t>(landed, int64_t(group_step.size()) - N);
  }
  void sync() {
    for (int s = 0; s < mma::kStages; ++s) stage_done_before_sync[s] = stage_done_before_sync[s] || stage_done[s];
  }
  void compute(int64_t step, int stage) {
    if (step != next_compute++) f->fail("pipeline: computes out of order", step);
    if (stage_step[stage] != step) f->fail("pipeline: stage does not hold the step", step, stage);
    bool ok = false;
    for (int64_t g = 0; g < landed; ++g) ok = ok || group_step[size_t(g)] == step;
    if (!ok) f->fail("pipeline: computed before its copies landed", step);
    stage_done[stage] = true;
  }
};

inline void check_pipeline(Failures& f) {
  for (int64_t n = 0; n <= 40; ++n) {
    PipelineModel m;
    m.f = &f;
    m.nsteps = n;
    mma::run_pipeline(n, m);
    if (m.next_compute != n || m.next_load != n) f.fail("pipeline: steps missing", n);
    if (m.landed != int64_t(m.group_step.size())) f.fail("pipeline: copies outstanding at the end", n);
  }
}

// ---- epilogue and merge -------------------------------------------------------------------------------

// A block's epilogue over several key tiles of tie-heavy scores (integers, NaN, keys past the end): the
// threads' fold_tile_row, the quad shuffles and the cross-warp fold through keep_better, then the merge
// of several splits (fold_row_splits) give, for each row, the lowest index of the lowest score.
inline void check_epilogue(Failures& f, uint32_t seed) {
  std::mt19937 rng(seed);
  const int tiles = 3, valid_keys = tiles * mma::kBN - 37;  // a partial last tile
  std::uniform_int_distribution<int> score(0, 6);
  std::vector<float> acc(size_t(mma::kBM) * tiles * mma::kBN);  // v = -score / 2 (the kernel's accumulator)
  for (size_t i = 0; i < acc.size(); ++i) {
    const int col = int(i % (size_t(tiles) * mma::kBN));
    acc[i] = col >= valid_keys ? -std::numeric_limits<float>::infinity() : -0.5f * float(score(rng) + 10);
    if (col < valid_keys && rng() % 97 == 0) acc[i] = std::numeric_limits<float>::quiet_NaN();
  }
  const auto v_at = [&](int row, int key) { return acc[size_t(row) * tiles * mma::kBN + key]; };
  // Threads: running best of each of their 8 rows.
  float best[8][32][8];
  int32_t idx[8][32][8];
  for (int warp = 0; warp < 8; ++warp)
    for (int l = 0; l < 32; ++l)
      for (int i = 0; i < 8; ++i) {
        best[warp][l][i] = std::numeric_limits<float>::infinity();
        idx[warp][l][i] = 0;
      }
  for (int t = 0; t < tiles; ++t)
    for (int warp = 0; warp < 8; ++warp)
      for (int l = 0; l < 32; ++l)
        for (int mt = 0; mt < mma::kMTiles; ++mt)
          for (int h = 0; h < 2; ++h) {
            float v[8];
            const int row = mma::acc_row(l, mma::warp_m(warp), mt, 2 * h);
            for (int nt = 0; nt < mma::kNTiles; ++nt)
              for (int c = 0; c < 2; ++c)
                v[2 * nt + c] = v_at(row, t * mma::kBN + mma::acc_col(l, mma::warp_n(warp), nt, 2 * h + c));
            const int32_t base = t * mma::kBN + mma::warp_n(warp) * mma::kWarpCols + 2 * (l & 3);
            mma::fold_tile_row(v, base, best[warp][l][2 * mt + h], idx[warp][l][2 * mt + h]);
          }
  // Quad shuffles (every lane reads its partner's value from before the step), then the cross-warp fold.
  for (int warp = 0; warp < 8; ++warp)
    for (int off = 1; off < 4; off <<= 1) {
      float nb[32][8];
      int32_t ni[32][8];
      std::memcpy(nb, best[warp], sizeof(nb));
      std::memcpy(ni, idx[warp], sizeof(ni));
      for (int l = 0; l < 32; ++l)
        for (int i = 0; i < 8; ++i) mma::keep_better(best[warp][l][i], idx[warp][l][i], nb[l ^ off][i], ni[l ^ off][i]);
    }
  std::vector<float> red_s(mma::kWarpsN * mma::kBM);
  std::vector<int32_t> red_i(mma::kWarpsN * mma::kBM);
  for (int warp = 0; warp < 8; ++warp)
    for (int l = 0; l < 32; l += 4)
      for (int mt = 0; mt < mma::kMTiles; ++mt)
        for (int h = 0; h < 2; ++h) {
          const int row = mma::acc_row(l, mma::warp_m(warp), mt, 2 * h);
          red_s[mma::warp_n(warp) * mma::kBM + row] = best[warp][l][2 * mt + h];
          red_i[mma::warp_n(warp) * mma::kBM + row] = idx[warp][l][2 * mt + h];
        }
  // Two splits: this block's partial, and a second split whose first key scores 10, the lowest score the
  // data can have: it ties with split 0's best on many rows (split 0 must win those: lower index).
  const int64_t n = mma::kBM, splits = 2, kps = tiles * mma::kBN;
  std::vector<float> ps(size_t(splits * n));
  std::vector<int32_t> pi(size_t(splits * n));
  for (int row = 0; row < mma::kBM; ++row) {
    float s = red_s[row];
    int32_t i = red_i[row];
    for (int w = 1; w < mma::kWarpsN; ++w) mma::keep_better(s, i, red_s[w * mma::kBM + row], red_i[w * mma::kBM + row]);
    ps[size_t(row)] = s;
    pi[size_t(row)] = i;
    ps[size_t(n + row)] = 10.0f;
    pi[size_t(n + row)] = 0;
  }
  const int64_t offset = 1000;
  for (int row = 0; row < mma::kBM; ++row) {
    float s = std::numeric_limits<float>::infinity();
    int64_t i = std::numeric_limits<int64_t>::max();
    mma::fold_row_splits(row, n, splits, kps, ps.data(), pi.data(), offset, &s, &i);
    float want = std::numeric_limits<float>::infinity();
    int64_t want_i = -1;
    for (int key = 0; key < valid_keys; ++key) {
      const float sc = -2.0f * v_at(row, key);
      if (sc < want) {  // NaN never wins; keys ascend, so the first minimum is the lowest index
        want = sc;
        want_i = key;
      }
    }
    if (10.0f < want) {
      want = 10.0f;
      want_i = kps;
    }
    if (s != want || i != offset + want_i) f.fail("epilogue and merge", row, i, offset + want_i);
  }
}

// ---- the plan ---------------------------------------------------------------------------------------

// For every (n, m) of a sweep: the splits cover the keys once in whole tiles, indices fit int32, shared
// memory fits (and two 16-bit blocks per SM), the workspace is at most the legacy kernel's (int64 partial
// indices: round_up(m*4, 256) + 2 round_up(splits*n*8, 256) + 256, nn_argmin.cu's make_plan), and every
// (query, key) pair is scored by exactly one (block, tile, warp, lane, register).
inline void check_plan(Failures& f) {
  const int64_t ns[] = {1, 7, 128, 131, 1000, 4096, 100000};
  const int64_t ms[] = {1, 5, 128, 517, 20011, 100000, int64_t(1) << 30};
  const int64_t ds[] = {1, 7, 16, 17, 64, 100, 256, 257, 784, 4096};
  for (int64_t n : ns)
    for (int64_t m : ms)
      for (int64_t d : ds)
        for (int elem : {2, 4}) {
          const mma::Plan p = mma::make_plan(n, m, d, elem, 132);
          if (p.keys_per_split % mma::kBN != 0 || p.keys_per_split >= (int64_t(1) << 31)) f.fail("plan kps", n, m);
          if (p.splits < 1 || p.splits > 65535 || (p.splits - 1) * p.keys_per_split >= m ||
              p.splits * p.keys_per_split < m)
            f.fail("plan splits", n, m, p.splits);
          if (p.kchunks * mma::kRowBytes < d * elem || (p.kchunks - 1) * mma::kRowBytes >= d * elem)
            f.fail("kchunks", d, elem);
          if (p.resident != (p.kchunks <= mma::kMaxResidentChunks)) f.fail("resident", d, elem);
          if (p.smem_bytes > 227 * 1024 || (elem == 2 && 2 * p.smem_bytes > 228 * 1024))
            f.fail("smem", d, elem, p.smem_bytes);
          const int64_t legacy = mma::round_up(m * 4, 256) + 2 * mma::round_up(p.splits * n * 8, 256) + 256;
          if (p.workspace_bytes() > legacy) f.fail("workspace", n, m);
        }
  const int64_t cover[][2] = {{131, 517}, {1, 300}, {257, 129}};
  for (const auto& nm : cover) {
    const int64_t n = nm[0], m = nm[1];
    const mma::Plan p = mma::make_plan(n, m, 8, 4, 4);
    std::vector<int> seen(size_t(n * m), 0);
    for (int64_t qb = 0; qb < (n + mma::kBM - 1) / mma::kBM; ++qb)
      for (int64_t split = 0; split < p.splits; ++split) {
        const int64_t begin = split * p.keys_per_split, end = std::min(m, begin + p.keys_per_split);
        for (int64_t t0 = begin; t0 < end; t0 += mma::kBN)
          for (int warp = 0; warp < 8; ++warp)
            for (int l = 0; l < 32; ++l)
              for (int mt = 0; mt < mma::kMTiles; ++mt)
                for (int nt = 0; nt < mma::kNTiles; ++nt)
                  for (int r = 0; r < 4; ++r) {
                    const int64_t q = qb * mma::kBM + mma::acc_row(l, mma::warp_m(warp), mt, r);
                    const int64_t key = t0 + mma::acc_col(l, mma::warp_n(warp), nt, r);
                    if (q < n && key < end) ++seen[size_t(q * m + key)];
                  }
      }
    for (int v : seen)
      if (v != 1) f.fail("tile schedule coverage", n, m, v);
  }
}

// The CUDA row check's classification (nn::RowCheck, what row_check_kernel runs per row) against rows whose
// answer is known: NaN or Inf anywhere (first, even beside huge values), finite values whose squared norm is
// above a quarter of the type's maximum (also when the sum of squares overflows to +inf), and the bound
// itself, which is allowed.
template <typename Acc>
inline void check_row_status(Failures& f) {
  const Acc big = std::sqrt(std::numeric_limits<Acc>::max() / 4);  // squared: max / 4 up to rounding
  const Acc inf = std::numeric_limits<Acc>::infinity(), nan = std::numeric_limits<Acc>::quiet_NaN();
  const Acc quarter = std::numeric_limits<Acc>::max() / 4;
  struct Case {
    std::vector<Acc> row;
    glann::nn::RowStatus want;
  };
  const std::vector<Case> cases = {
      {{}, glann::nn::kRowOk},
      {{Acc(0), Acc(-0.0), Acc(1e-30), Acc(-3)}, glann::nn::kRowOk},
      {{Acc(1), nan, Acc(2)}, glann::nn::kRowNonFinite},
      {{-inf}, glann::nn::kRowNonFinite},
      {{big * 4, nan}, glann::nn::kRowNonFinite},  // NaN comes first, even beside a too-large value
      {{big * 4}, glann::nn::kRowNormOverflow},
      {{big, big}, glann::nn::kRowNormOverflow},                         // each square within the bound, their sum not
      {{std::numeric_limits<Acc>::max()}, glann::nn::kRowNormOverflow},  // the square is +inf, the value finite
      {{-std::numeric_limits<Acc>::max(), Acc(1)}, glann::nn::kRowNormOverflow},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    glann::nn::RowCheck<Acc> check;
    for (Acc v : cases[i].row) glann::nn::row_check_add(check, v);
    const glann::nn::RowStatus got = glann::nn::row_check_status(check);
    if (got != cases[i].want) f.fail("row check", int64_t(sizeof(Acc)), int64_t(i), got);
  }
  if (glann::nn::max_squared_norm<Acc>() != quarter) f.fail("max_squared_norm", int64_t(sizeof(Acc)));
  glann::nn::RowCheck<Acc> at_bound;  // a squared norm of exactly max / 4 is scored
  at_bound.squares = quarter;
  if (glann::nn::row_check_status(at_bound) != glann::nn::kRowOk)
    f.fail("row check at the bound", int64_t(sizeof(Acc)));
  at_bound.squares = std::nextafter(quarter, inf);
  if (glann::nn::row_check_status(at_bound) != glann::nn::kRowNormOverflow)
    f.fail("row check past the bound", int64_t(sizeof(Acc)));
}

inline int64_t nn_argmin_checks() {
  Failures f;
  check_row_status<float>(f);
  check_row_status<double>(f);
  check_layout_and_maps(f);
  for (int elem : {2, 4}) check_block_stage(f, elem, true, 1 + elem);
  check_block_stage(f, 4, false, 7);
  check_pipeline(f);
  for (uint32_t seed = 1; seed <= 4; ++seed) check_epilogue(f, seed);
  check_plan(f);
  return f.count;
}

}  // namespace emu

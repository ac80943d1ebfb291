// The tensor-core nn_argmin kernel (nn_argmin_mma.cu), its host-checkable half: tile geometry, the
// split plan and workspace, the shared-memory layout (XOR swizzle), which lane loads and owns what
// (ldmatrix addresses, cp.async chunks, mma accumulator coordinates), the multi-stage pipeline loop, the
// epilogue's running (score, index) fold and the merge of the splits. All GLANN_HD, so that
// tests/cpp/hopper_emulation.cpp can emulate a block's fragments, pipeline and epilogue on the CPU.
//
// Block: 128 queries x 128 keys per tile, 256 threads = 8 warps as 2 (queries) x 4 (keys), warp tile
// 64 x 32 = 4 x 4 mma tiles of m16n8 (16-bit inputs: m16n8k16, fp32 accumulate; float32: three m16n8k8
// TF32 products, hi*lo + lo*hi + hi*hi). The d dimension goes through shared memory in chunks of 64 bytes
// per row (32 16-bit elements or 16 floats): one pipeline step is one (key tile, d chunk), 4 stages deep.
// Queries stay resident for the whole split when their rows fit 512 bytes (kMaxResidentChunks chunks).
#pragma once
#include <math.h>
#include <stdint.h>

#include "common/hd_loops.h"
#include "common/host_device.h"
#include "nn_argmin/nn_argmin_math.h"

namespace glann {
namespace nnmma {

constexpr int kBM = 128;                       // query rows per block
constexpr int kBN = 128;                       // keys per tile
constexpr int kThreads = 256;                  // 8 warps
constexpr int kWarpsN = 4;                     // warps along the keys (2 along the queries)
constexpr int kWarpRows = 64, kWarpCols = 32;  // warp tile
constexpr int kMTiles = 4, kNTiles = 4;        // m16 / n8 tiles per warp
constexpr int kRowBytes = 64;                  // bytes of one row in one stage: 4 chunks of 16 bytes
constexpr int kChunksPerRow = kRowBytes / 16;
constexpr int kTileBytes = kBM * kRowBytes;  // 8 KB: one stage of queries or of keys
constexpr int kStages = 4;
constexpr int kMaxResidentChunks = 8;  // resident queries: rows of at most 512 bytes (64 KB per block)
constexpr int kNormBytes = kBN * 4;    // the tile's ||k||^2, one buffer per stage

static_assert(kBM == 2 * kWarpRows && kBN == kWarpsN * kWarpCols, "8 warps cover the block tile");
static_assert(kWarpRows == 16 * kMTiles && kWarpCols == 8 * kNTiles, "mma tiles cover the warp tile");
static_assert(kBM * kChunksPerRow == 2 * kThreads, "a stage of a 128-row tile is two 16-byte chunks per thread");

// ---- shared memory --------------------------------------------------------------------------------

// Byte offset of 16-byte chunk `chunk` (0..3) of row `row` in a 128 x 64-byte tile. The chunk index is
// XORed with bits 1-2 of the row, so that the 8 rows an ldmatrix phase reads (or a cp.async phase writes)
// at one chunk fall in 8 different 16-byte bank groups.
GLANN_HD int tile_offset(int row, int chunk) { return row * kRowBytes + ((chunk ^ ((row >> 1) & 3)) << 4); }

struct SmemLayout {
  int q_tiles;   // kchunks (resident) or kStages
  int q_offset;  // bytes; the query tiles, then the key tiles, then the norms
  int k_offset;
  int norm_offset;
  int bytes;
};

GLANN_HD SmemLayout smem_layout(int kchunks, bool resident) {
  SmemLayout l;
  l.q_tiles = resident ? kchunks : kStages;
  l.q_offset = 0;
  l.k_offset = l.q_tiles * kTileBytes;
  l.norm_offset = l.k_offset + kStages * kTileBytes;
  l.bytes = l.norm_offset + kStages * kNormBytes;
  return l;
}

// The epilogue's cross-warp buffer (per warp column and block row: a score and an index) reuses the
// stage buffers once the pipeline is drained.
constexpr int kReduceBytes = kWarpsN * kBM * 8;
static_assert(kReduceBytes <= kStages * kTileBytes, "the epilogue's buffer fits in the key stages");
// The largest layout (resident queries of 8 chunks): 2 blocks per SM within 227 KB per SM.
static_assert(kMaxResidentChunks * kTileBytes + kStages * (kTileBytes + kNormBytes) <= 113 * 1024, "two blocks per SM");

// ---- the plan ---------------------------------------------------------------------------------------

GLANN_HD int64_t round_up(int64_t x, int64_t a) { return (x + a - 1) / a * a; }

struct Plan {
  int64_t splits, keys_per_split;  // keys_per_split: a multiple of kBN, < 2^31 (int32 in-split indices)
  int kchunks;                     // 64-byte chunks of a row: pipeline steps per key tile
  bool resident;                   // queries loaded once per block
  int smem_bytes;
  int64_t norms_bytes, part_bytes;  // workspace: norms (float), then scores (float) and indices (int32)
  int64_t workspace_bytes() const { return norms_bytes + 2 * part_bytes + 256; }
};

// The same split rule as the legacy kernel (about 4 blocks per SM in all, at most 65,535 splits), so the
// workspace is at most the legacy one's (which stores int64 indices).
GLANN_HD Plan make_plan(int64_t n, int64_t m, int64_t d, int elem, int sms) {
  Plan p;
  const int64_t q_blocks = (n + kBM - 1) / kBM;
  const int64_t key_tiles = (m + kBN - 1) / kBN;
  int64_t splits = (int64_t(4) * sms + q_blocks - 1) / q_blocks;
  splits = splits < 1 ? 1 : (splits > key_tiles ? key_tiles : splits);
  splits = splits > 65535 ? 65535 : splits;
  const int64_t tiles_per_split = (key_tiles + splits - 1) / splits;
  p.keys_per_split = tiles_per_split * kBN;
  p.splits = (m + p.keys_per_split - 1) / p.keys_per_split;
  p.kchunks = int((d * elem + kRowBytes - 1) / kRowBytes);
  p.resident = p.kchunks <= kMaxResidentChunks;
  p.smem_bytes = smem_layout(p.kchunks, p.resident).bytes;
  p.norms_bytes = round_up(m * 4, 256);
  p.part_bytes = round_up(p.splits * n * 4, 256);
  return p;
}

// The 16-byte (cp.async) path: unit column stride, 16-byte aligned rows and base, whole chunks per row.
// Anything else goes through the scalar loader.
GLANN_HD bool vector_loads(uintptr_t base, int64_t row_stride, int64_t col_stride, int64_t d, int elem, int64_t rows) {
  if (rows > 1 && (row_stride * elem) % 16 != 0) return false;
  return col_stride == 1 && base % 16 == 0 && (d * elem) % 16 == 0;
}

// ---- who loads and owns what ----------------------------------------------------------------------

// Loader: chunk i (0, 1) of thread tid in a stage tile is row (tid + 256 i) / 4, chunk (tid + 256 i) % 4:
// four consecutive threads read one row's 64 contiguous bytes.
GLANN_HD int load_row(int tid, int i) { return (tid + kThreads * i) >> 2; }
GLANN_HD int load_chunk(int tid, int i) { return (tid + kThreads * i) & 3; }

// Warp coordinates.
GLANN_HD int warp_m(int warp) { return warp / kWarpsN; }
GLANN_HD int warp_n(int warp) { return warp % kWarpsN; }

// ldmatrix.x4 addresses (tile byte offsets) of lane `lane`, k-step ks (0, 1: 32 bytes each) of a stage:
// A (queries) for m tile mt gives the four registers of an m16n8k16 (16-bit) or m16n8k8 (tf32) A
// fragment; B (keys) for the pair of n tiles (2 np, 2 np + 1) gives their two B registers each.
GLANN_HD int a_ldmatrix_offset(int lane, int wm, int mt, int ks) {
  return tile_offset(wm * kWarpRows + mt * 16 + (lane & 15), ks * 2 + (lane >> 4));
}
GLANN_HD int b_ldmatrix_offset(int lane, int wn, int np, int ks) {
  return tile_offset(wn * kWarpCols + np * 16 + (lane & 7) + ((lane >> 4) << 3), ks * 2 + ((lane >> 3) & 1));
}

// Result register i (0..3) of the keys' ldmatrix.x4 is B register b_frag_reg(i) of n tile
// b_frag_tile(np, i): the x4's matrices are (n tile 2 np: k 0-7, k 8-15), (2 np + 1: k 0-7, k 8-15).
GLANN_HD int b_frag_tile(int np, int i) { return 2 * np + (i >> 1); }
GLANN_HD int b_frag_reg(int i) { return i & 1; }

// Block row and tile column of accumulator register r (0..3) of mma tile (mt, nt) of a lane (the m16n8
// C layout: rows lane/4 and lane/4 + 8, columns 2 (lane % 4) and + 1).
GLANN_HD int acc_row(int lane, int wm, int mt, int r) { return wm * kWarpRows + mt * 16 + (lane >> 2) + 8 * (r >> 1); }
GLANN_HD int acc_col(int lane, int wn, int nt, int r) { return wn * kWarpCols + nt * 8 + 2 * (lane & 3) + (r & 1); }

// ---- the pipeline -----------------------------------------------------------------------------------

// The multi-stage loop over steps 0..nsteps-1, step s in stage s % kStages. `ops` provides
// load(step, stage) (issue the copies of one step; steps come in order), commit() (close a cp.async
// group: one per step, empty ones included, so that group g is step g), wait_prior<k>() (all but the
// newest k groups landed), sync() (__syncthreads) and compute(step, stage) (steps in order). At iteration
// s the copies of step s have landed and every thread is past the compute of step s - 1, whose stage the
// loads of step s + kStages - 1 reuse.
template <typename Ops>
GLANN_HD void run_pipeline(int64_t nsteps, Ops& ops) {
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nsteps) ops.load(s, s);
    ops.commit();
  }
  int stage = 0;
  for (int64_t s = 0; s < nsteps; ++s) {
    ops.template wait_prior<kStages - 2>();
    ops.sync();
    const int64_t next = s + kStages - 1;
    if (next < nsteps) ops.load(next, stage == 0 ? kStages - 1 : stage - 1);
    ops.commit();
    ops.compute(s, stage);
    stage = stage == kStages - 1 ? 0 : stage + 1;
  }
  ops.template wait_prior<0>();
  ops.sync();
}

// ---- the epilogue -----------------------------------------------------------------------------------

// Folds one row of one key tile into a thread's running best. v[2 nt + c] is the row's accumulator in
// column nt * 8 + c of the thread (in-split key index base + nt * 8 + c), initialised to -||k||^2 / 2, so
// v = q.k - ||k||^2 / 2 and the score ||k||^2 - 2 q.k is -2 v (exact). One fmax tree per row and tile;
// only a tile that improves the row looks for the first column holding the maximum, so ties go to the
// lowest index. Every key of the tile comes after the running best's, so nn::better reduces to a strict
// `<` on the score. NaN never wins (fmax ignores it; NaN < x is false).
GLANN_HD void fold_tile_row(const float (&v)[8], int32_t base, float& best_score, int32_t& best_index) {
  const float m = fmaxf(fmaxf(fmaxf(v[0], v[1]), fmaxf(v[2], v[3])), fmaxf(fmaxf(v[4], v[5]), fmaxf(v[6], v[7])));
  const float s = -2.0f * m;
  if (s < best_score) {
    int32_t first = 0;
    GLANN_UNROLL
    for (int k = 7; k >= 0; --k)
      if (v[k] == m) first = (k >> 1) * 8 + (k & 1);
    best_score = s;
    best_index = base + first;
  }
}

// (a, ia) = the better of (a, ia) and (b, ib) by the shared rule.
GLANN_HD void keep_better(float& a, int32_t& ia, float b, int32_t ib) {
  if (nn::better(b, ib, a, ia)) {
    a = b;
    ia = ib;
  }
}

// Folds the splits of row r (in-split int32 indices; split k starts at key k * keys_per_split) into
// the running best, by nn::better (the int64 rule of nn::fold_row, on global indices).
GLANN_HD void fold_row_splits(int64_t r, int64_t n, int64_t splits, int64_t keys_per_split, const float* part_score,
                              const int32_t* part_index, int64_t offset, float* best_score, int64_t* best_index) {
  float s = best_score[r];
  int64_t i = best_index[r];
  for (int64_t k = 0; k < splits; ++k) {
    const float t = part_score[k * n + r];
    const int64_t j = offset + k * keys_per_split + part_index[k * n + r];
    if (nn::better(t, j, s, i)) {
      s = t;
      i = j;
    }
  }
  best_score[r] = s;
  best_index[r] = i;
}

// ---- 3xTF32 -------------------------------------------------------------------------------------------

// tf32 round-to-nearest (ties away from zero) of a finite float, as cvt.rna.tf32.f32: the low 13 mantissa
// bits cleared. The host copy is what tests/test_hopper_emulation.py's numpy emulation is checked against.
GLANN_HD uint32_t tf32_rna_bits(uint32_t bits) { return (bits + 0x1000u) & 0xffffe000u; }

}  // namespace nnmma
}  // namespace glann

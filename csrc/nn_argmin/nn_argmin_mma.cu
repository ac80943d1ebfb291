// nn_argmin on tensor cores: the Hopper kernels of issue 15 (design in docs/GPU_KERNELS.md; geometry,
// plan, lane maps, pipeline loop and epilogue fold in nn_argmin_mma_math.h, checked on the CPU by
// tests/cpp/hopper_emulation.cpp).
//
//  1. key_norms: ||k||^2 per key (a warp per key, fp32).
//  2. mma_argmin: a block owns 128 query rows and one split of the keys; a 4-stage pipeline walks
//     (key tile, 64-byte d chunk) steps; each warp multiplies its 64 x 32 tile with mma.sync into fp32
//     accumulators that start at -||k||^2 / 2, so after the last chunk a tile's accumulators are
//     -score / 2; the epilogue folds them into a running (score, int32 in-split index) per row, and the
//     block ends with quad shuffles and a cross-warp pass through shared memory: one partial per split.
//  3. merge: per row, the splits folded into the running best in split order (nn::better).
// Launched on the caller's stream; nothing is allocated.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/cuda_check.h"
#include "common/cuda_convert.h"
#include "common/cuda_smem.h"
#include "nn_argmin/nn_argmin_math.h"
#include "nn_argmin/nn_argmin_mma.h"
#include "nn_argmin/nn_argmin_mma_math.h"

namespace glann {
namespace {

using namespace nnmma;  // NOLINT: the kernel's own constants and maps

// ---- PTX wrappers (sm_80+; the kernels run only on capability 9.0 and newer, see kernel_variant.h) ----

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, bypassing L1; src_bytes = 0 writes 16 zero bytes and reads nothing.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const char* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
#endif
}

// D = A * B + D, m16n8k16, fp32 accumulate, A row-major, B column-major (the keys' rows).
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                         uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// D = A * B + D, m16n8k8 with tf32 inputs.
__device__ __forceinline__ void mma_1688_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// x = hi + lo + O(2^-22 |x|): hi = tf32(x), lo = tf32(x - hi) (x - hi is exact in fp32).
__device__ __forceinline__ void split_tf32(uint32_t x, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(hi) : "f"(__uint_as_float(x)));
  const float rest = __uint_as_float(x) - __uint_as_float(hi);
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(lo) : "f"(rest));
#endif
}

// ---- the kernels ----------------------------------------------------------------------------------------

// ||k||^2 of every key: a warp per key, lanes over d, a butterfly sum (fixed order: deterministic).
template <typename T>
__global__ void key_norms_warp_kernel(const T* __restrict__ keys, int64_t m, int64_t d, int64_t s0, int64_t s1,
                                      float* __restrict__ norms) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t j = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32; j < m; j += warps) {
    const T* row = keys + j * s0;
    float acc = 0.0f;
    for (int64_t c = lane; c < d; c += 32) {
      const float v = cvt::to<float>(row[c * s1]);
      acc = fmaf(v, v, acc);
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) norms[j] = acc;
  }
}

// One block's state and its pipeline callbacks (nn_argmin_mma_math.h's run_pipeline).
template <typename T, bool kVec>
struct Block {
  static constexpr int kElemsPerChunk = 16 / int(sizeof(T));
  static constexpr int kElemsPerStage = kChunksPerRow * kElemsPerChunk;
  static constexpr bool kTf32 = sizeof(T) == 4;

  const T* q;
  const T* k;
  const float* norms;
  int64_t n, d, qs0, qs1, ks0, ks1;
  int64_t row0, key_begin, key_end;
  int kchunks;
  bool resident;
  char* smem;
  SmemLayout lay;
  int tid, lane, wm, wn;
  int64_t load_tile0;  // first key of the next step to load, and its d chunk
  int load_kc;
  int64_t tile0;  // first key of the next step to compute, and its d chunk
  int kc;
  float acc[kMTiles][kNTiles][4];
  float best[2 * kMTiles];
  int32_t best_idx[2 * kMTiles];

  __device__ char* q_tile(int i) const { return smem + lay.q_offset + i * kTileBytes; }
  __device__ char* k_tile(int stage) const { return smem + lay.k_offset + stage * kTileBytes; }
  __device__ float* norm_buf(int stage) const {
    return reinterpret_cast<float*>(smem + lay.norm_offset + stage * kNormBytes);
  }

  // 16 bytes of row `row` (< rows, else zeros), elements col .. col + kElemsPerChunk (past d: zeros).
  __device__ void load_chunk16(char* dst, const T* base, int64_t row, int64_t rows, int64_t s0, int64_t s1,
                               int64_t col) const {
    if constexpr (kVec) {
      const bool ok = row < rows && col < d;  // whole chunks: d is a multiple of kElemsPerChunk
      cp_async16(dst, ok ? static_cast<const void*>(base + row * s0 + col) : static_cast<const void*>(base),
                 ok ? 16 : 0);
    } else {
      alignas(16) T v[kElemsPerChunk];
      GLANN_UNROLL
      for (int e = 0; e < kElemsPerChunk; ++e)
        v[e] = (row < rows && col + e < d) ? base[row * s0 + (col + e) * s1] : cvt::to<T>(0.0f);
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(v);
    }
  }

  // The query chunk `c` into tile `dst_tile` (resident: all chunks before the pipeline; else per step).
  __device__ void load_queries(int c, int dst_tile) const {
    GLANN_UNROLL
    for (int i = 0; i < 2; ++i) {
      const int r = load_row(tid, i), ch = load_chunk(tid, i);
      load_chunk16(q_tile(dst_tile) + tile_offset(r, ch), q, row0 + r, n, qs0, qs1,
                   int64_t(c) * kElemsPerStage + ch * kElemsPerChunk);
    }
  }

  __device__ void load(int64_t /*step*/, int stage) {
    GLANN_UNROLL
    for (int i = 0; i < 2; ++i) {
      const int r = load_row(tid, i), ch = load_chunk(tid, i);
      load_chunk16(k_tile(stage) + tile_offset(r, ch), k, load_tile0 + r, key_end, ks0, ks1,
                   int64_t(load_kc) * kElemsPerStage + ch * kElemsPerChunk);
    }
    if (!resident) load_queries(load_kc, stage);
    if (load_kc == 0 && tid < kBN / 4) {  // the tile's norms (past key_end: read, then masked)
      const bool ok = load_tile0 + 4 * tid < key_end;
      cp_async16(norm_buf(stage) + 4 * tid, ok ? norms + load_tile0 + 4 * tid : norms, ok ? 16 : 0);
    }
    if (++load_kc == kchunks) {
      load_kc = 0;
      load_tile0 += kBN;
    }
  }

  __device__ void commit() const { cp_async_commit(); }
  template <int N>
  __device__ void wait_prior() const {
    cp_async_wait<N>();
  }
  __device__ void sync() const { __syncthreads(); }

  // The accumulators of a new tile: -||k||^2 / 2 of their key, -inf past key_end (never wins).
  __device__ void init_tile(int stage) {
    const float* kn = norm_buf(stage);
    GLANN_UNROLL
    for (int nt = 0; nt < kNTiles; ++nt) GLANN_UNROLL
    for (int r = 0; r < 4; ++r) {
      const int col = acc_col(lane, wn, nt, r);
      const float v = tile0 + col < key_end ? -0.5f * kn[col] : -__int_as_float(0x7f800000);
      GLANN_UNROLL
      for (int mt = 0; mt < kMTiles; ++mt) acc[mt][nt][r] = v;
    }
  }

  // The two 32-byte k-steps of a stage.
  __device__ void multiply(const char* qt, const char* kt) {
    GLANN_UNROLL
    for (int ks = 0; ks < 2; ++ks) {
      uint32_t a[kMTiles][4], b[kNTiles][2];
      GLANN_UNROLL
      for (int mt = 0; mt < kMTiles; ++mt) ldmatrix_x4(a[mt], qt + a_ldmatrix_offset(lane, wm, mt, ks));
      GLANN_UNROLL
      for (int np = 0; np < kNTiles / 2; ++np) {
        uint32_t r[4];
        ldmatrix_x4(r, kt + b_ldmatrix_offset(lane, wn, np, ks));
        GLANN_UNROLL
        for (int i = 0; i < 4; ++i) b[b_frag_tile(np, i)][b_frag_reg(i)] = r[i];
      }
      if constexpr (kTf32) {
        uint32_t ah[kMTiles][4], al[kMTiles][4], bh[kNTiles][2], bl[kNTiles][2];
        GLANN_UNROLL
        for (int mt = 0; mt < kMTiles; ++mt) GLANN_UNROLL
        for (int j = 0; j < 4; ++j) split_tf32(a[mt][j], ah[mt][j], al[mt][j]);
        GLANN_UNROLL
        for (int nt = 0; nt < kNTiles; ++nt) GLANN_UNROLL
        for (int j = 0; j < 2; ++j) split_tf32(b[nt][j], bh[nt][j], bl[nt][j]);
        // The small products first; each pass is 16 independent mma (no accumulator waits on the last).
        GLANN_UNROLL
        for (int mt = 0; mt < kMTiles; ++mt) GLANN_UNROLL
        for (int nt = 0; nt < kNTiles; ++nt) mma_1688_tf32(acc[mt][nt], al[mt], bh[nt][0], bh[nt][1]);
        GLANN_UNROLL
        for (int mt = 0; mt < kMTiles; ++mt) GLANN_UNROLL
        for (int nt = 0; nt < kNTiles; ++nt) mma_1688_tf32(acc[mt][nt], ah[mt], bl[nt][0], bl[nt][1]);
        GLANN_UNROLL
        for (int mt = 0; mt < kMTiles; ++mt) GLANN_UNROLL
        for (int nt = 0; nt < kNTiles; ++nt) mma_1688_tf32(acc[mt][nt], ah[mt], bh[nt][0], bh[nt][1]);
      } else {
        GLANN_UNROLL
        for (int mt = 0; mt < kMTiles; ++mt) GLANN_UNROLL
        for (int nt = 0; nt < kNTiles; ++nt) mma_16816<T>(acc[mt][nt], a[mt], b[nt][0], b[nt][1]);
      }
    }
  }

  __device__ void compute(int64_t /*step*/, int stage) {
    if (kc == 0) init_tile(stage);
    multiply(q_tile(resident ? kc : stage), k_tile(stage));
    if (kc == kchunks - 1) {  // the tile's scores are complete: fold them into the rows' best
      const int32_t base = int32_t(tile0 - key_begin) + wn * kWarpCols + 2 * (lane & 3);
      GLANN_UNROLL
      for (int mt = 0; mt < kMTiles; ++mt) GLANN_UNROLL
      for (int h = 0; h < 2; ++h) {
        float v[8];
        GLANN_UNROLL
        for (int nt = 0; nt < kNTiles; ++nt) {
          v[2 * nt] = acc[mt][nt][2 * h];
          v[2 * nt + 1] = acc[mt][nt][2 * h + 1];
        }
        fold_tile_row(v, base, best[2 * mt + h], best_idx[2 * mt + h]);
      }
    }
    if (++kc == kchunks) {
      kc = 0;
      tile0 += kBN;
    }
  }
};

// 16-bit inputs: two blocks per SM (at most 128 registers); float32 (3xTF32: hi and lo fragments) one.
template <typename T>
constexpr int kMinBlocks = sizeof(T) == 4 ? 1 : 2;

template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T>)
    mma_argmin_kernel(const T* __restrict__ q, int64_t n, int64_t d, int64_t qs0, int64_t qs1, const T* __restrict__ k,
                      int64_t m, int64_t ks0, int64_t ks1, const float* __restrict__ norms, int64_t keys_per_split,
                      int kchunks, bool resident, float* __restrict__ part_score, int32_t* __restrict__ part_index) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) char smem[];
  Block<T, kVec> blk;
  blk.q = q;
  blk.k = k;
  blk.norms = norms;
  blk.n = n;
  blk.d = d;
  blk.qs0 = qs0;
  blk.qs1 = qs1;
  blk.ks0 = ks0;
  blk.ks1 = ks1;
  blk.row0 = int64_t(blockIdx.x) * kBM;
  blk.key_begin = int64_t(blockIdx.y) * keys_per_split;
  blk.key_end = min(m, blk.key_begin + keys_per_split);
  blk.kchunks = kchunks;
  blk.resident = resident;
  blk.smem = smem;
  blk.lay = smem_layout(kchunks, resident);
  blk.tid = threadIdx.x;
  blk.lane = threadIdx.x & 31;
  blk.wm = warp_m(threadIdx.x >> 5);
  blk.wn = warp_n(threadIdx.x >> 5);
  blk.load_tile0 = blk.tile0 = blk.key_begin;
  blk.load_kc = blk.kc = 0;
  GLANN_UNROLL
  for (int i = 0; i < 2 * kMTiles; ++i) {
    blk.best[i] = __int_as_float(0x7f800000);  // (+inf, the split's first key): the legacy kernel's start
    blk.best_idx[i] = 0;
  }
  if (resident)  // part of the first cp.async group, so it has landed before step 0
    for (int c = 0; c < kchunks; ++c) blk.load_queries(c, c);
  const int64_t tiles = (blk.key_end - blk.key_begin + kBN - 1) / kBN;
  run_pipeline(tiles * kchunks, blk);

  // Rows are shared by the 4 lanes of a quad (shuffles) and the 4 warps of a warp row (shared memory).
  float* red_score = reinterpret_cast<float*>(smem + blk.lay.k_offset);
  int32_t* red_index = reinterpret_cast<int32_t*>(red_score + kWarpsN * kBM);
  GLANN_UNROLL
  for (int mt = 0; mt < kMTiles; ++mt) GLANN_UNROLL
  for (int h = 0; h < 2; ++h) {
    float s = blk.best[2 * mt + h];
    int32_t i = blk.best_idx[2 * mt + h];
    GLANN_UNROLL
    for (int off = 1; off < 4; off <<= 1)
      keep_better(s, i, __shfl_xor_sync(0xffffffffu, s, off), __shfl_xor_sync(0xffffffffu, i, off));
    if ((blk.lane & 3) == 0) {
      const int row = acc_row(blk.lane, blk.wm, mt, 2 * h);
      red_score[blk.wn * kBM + row] = s;
      red_index[blk.wn * kBM + row] = i;
    }
  }
  __syncthreads();
  if (threadIdx.x < kBM && blk.row0 + threadIdx.x < n) {
    float s = red_score[threadIdx.x];
    int32_t i = red_index[threadIdx.x];
    for (int w = 1; w < kWarpsN; ++w)
      keep_better(s, i, red_score[w * kBM + threadIdx.x], red_index[w * kBM + threadIdx.x]);
    const int64_t out = int64_t(blockIdx.y) * n + blk.row0 + threadIdx.x;
    part_score[out] = s;
    part_index[out] = i;
  }
#else
  __trap();  // built for an older GPU: use_hopper_kernels() never chooses this kernel there
#endif
}

__global__ void merge_splits_kernel(const float* __restrict__ part_score, const int32_t* __restrict__ part_index,
                                    int64_t n, int64_t splits, int64_t keys_per_split, int64_t offset,
                                    float* __restrict__ best_score, int64_t* __restrict__ best_index) {
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (r < n) fold_row_splits(r, n, splits, keys_per_split, part_score, part_index, offset, best_score, best_index);
}

int sm_count(int device) {
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) {
    cudaGetLastError();
    sms = 132;
  }
  return sms;
}

template <typename T, bool kVec>
void launch_search(const NnArgminParams& p, const Plan& plan, const float* norms, float* part_score,
                   int32_t* part_index, cudaStream_t stream) {
  auto kernel = mma_argmin_kernel<T, kVec>;
  raise_smem_limit(reinterpret_cast<const void*>(kernel), plan.smem_bytes);
  const dim3 grid(static_cast<unsigned>((p.n_queries + kBM - 1) / kBM), static_cast<unsigned>(plan.splits));
  kernel<<<grid, kThreads, plan.smem_bytes, stream>>>(
      static_cast<const T*>(p.queries), p.n_queries, p.dim, p.queries_strides[0], p.queries_strides[1],
      static_cast<const T*>(p.keys), p.n_keys, p.keys_strides[0], p.keys_strides[1], norms, plan.keys_per_split,
      plan.kchunks, plan.resident, part_score, part_index);
}

// The three kernels of one call, on the caller's stream (under its device, with a checked workspace).
template <typename T>
Status run(const NnArgminParams& p) {
  const CudaDeviceGuard guard(p.exec.device);
  if (!guard.status().ok()) return guard.status();
  const int elem = int(sizeof(T));
  const Plan plan = make_plan(p.n_queries, p.n_keys, p.dim, elem, sm_count(p.exec.device));
  if (p.workspace_bytes < plan.workspace_bytes())
    return Status::Error(StatusCode::kInvalidArgument, "nn_argmin (CUDA, tensor cores): workspace too small");
  cudaStream_t stream = static_cast<cudaStream_t>(p.exec.stream);
  char* base = reinterpret_cast<char*>(round_up(int64_t(reinterpret_cast<uintptr_t>(p.workspace)), 256));
  float* norms = reinterpret_cast<float*>(base);
  float* part_score = reinterpret_cast<float*>(base + plan.norms_bytes);
  int32_t* part_index = reinterpret_cast<int32_t*>(base + plan.norms_bytes + plan.part_bytes);
  const int64_t* qs = p.queries_strides;
  const int64_t* ks = p.keys_strides;
  const int norm_blocks = ceil_div_int(p.n_keys, 8) < 65536 ? ceil_div_int(p.n_keys, 8) : 65536;
  key_norms_warp_kernel<T>
      <<<norm_blocks, 256, 0, stream>>>(static_cast<const T*>(p.keys), p.n_keys, p.dim, ks[0], ks[1], norms);
  const bool vec = vector_loads(reinterpret_cast<uintptr_t>(p.queries), qs[0], qs[1], p.dim, elem, p.n_queries) &&
                   vector_loads(reinterpret_cast<uintptr_t>(p.keys), ks[0], ks[1], p.dim, elem, p.n_keys);
  if (vec)
    launch_search<T, true>(p, plan, norms, part_score, part_index, stream);
  else
    launch_search<T, false>(p, plan, norms, part_score, part_index, stream);
  merge_splits_kernel<<<ceil_div_int(p.n_queries, 256), 256, 0, stream>>>(
      part_score, part_index, p.n_queries, plan.splits, plan.keys_per_split, p.key_offset,
      static_cast<float*>(p.best_score), p.best_index);
  return cuda_last_status("nn_argmin (CUDA, tensor cores)");
}

}  // namespace

int64_t nn_argmin_mma_workspace_bytes(int64_t n_queries, int64_t n_keys, int64_t dim, int device) {
  if (n_queries <= 0 || n_keys <= 0 || dim <= 0) return 0;
  return make_plan(n_queries, n_keys, dim, 4, sm_count(device)).workspace_bytes();
}

Status nn_argmin_cuda_mma(const NnArgminParams& p) {
  if (p.n_queries == 0) return Status::Ok();
  // Keys per call: the Python layer passes at most 2^30 (int32 in-split indices); query blocks: gridDim.x.
  if (p.n_keys <= 0 || p.dim <= 0 || p.n_keys > int64_t{1} << 30 || (p.n_queries + kBM - 1) / kBM > 2147483647)
    return Status::Error(StatusCode::kInvalidArgument,
                         "nn_argmin (CUDA, tensor cores): 1 to 2^30 keys, D >= 1 and < 2^31 query blocks per call");
  if (p.dtype == DType::kFloat32) return run<float>(p);
  if (p.dtype == DType::kFloat16) return run<__half>(p);
  if (p.dtype == DType::kBFloat16) return run<__nv_bfloat16>(p);
  return Status::Error(StatusCode::kInvalidArgument, "nn_argmin (CUDA): float32, float16 or bfloat16 only");
}

}  // namespace glann

// The merge rule of nn_argmin, shared by the CPU and CUDA kernels (host and device).
#pragma once
#include <stdint.h>

#include "common/host_device.h"

namespace glann {
namespace nn {

// (score, index) lexicographic order: the lower score, on a tie the lower index. Every merge of partial
// results uses it (SIMD lanes, CPU key splits, CUDA warp lanes and splits, a running best over chunks
// of keys), so ties go to the lowest index whatever the tiling and the order in which chunks arrive.
// Score is float, or double for float64 inputs; Index is int64_t, or the lane index type inside one CPU
// key block (int32_t for float lanes, int64_t for double lanes).
template <typename Score, typename Index>
GLANN_HD bool better(Score score, Index index, Score best_score, Index best_index) {
  return score < best_score || (score == best_score && index < best_index);
}

// The largest squared row norm the kernels score: a quarter of the accumulation type's maximum. With
// ||q||^2 and ||k||^2 both within it, ||k||^2 - 2 q.k stays within 3/4 of the maximum and cannot overflow
// (glann_ext.ops._checks.max_squared_norm).
template <typename Acc>
GLANN_HD constexpr Acc max_squared_norm() {
  return (sizeof(Acc) == 4 ? Acc(__FLT_MAX__) : Acc(__DBL_MAX__)) * Acc(0.25);
}

// What nn_argmin's input check makes of one row (the CUDA row_check_kernel, one value at a time in row
// order): NaN/Inf anywhere, else finite values whose squared norm is above max_squared_norm (the scores
// could overflow; the sum of squares itself may overflow to +inf), else fine.
enum RowStatus : int { kRowOk = 0, kRowNonFinite = 1, kRowNormOverflow = 2 };

template <typename Acc>
struct RowCheck {
  Acc zero = Acc(0);  // stays 0 for finite values: v * 0 is 0 for every finite v, NaN for NaN and Inf
  Acc squares = Acc(0);
};

template <typename Acc>
GLANN_HD void row_check_add(RowCheck<Acc>& check, Acc v) {
  check.zero += v * Acc(0);
  check.squares += v * v;
}

template <typename Acc>
GLANN_HD RowStatus row_check_status(const RowCheck<Acc>& check) {
  if (check.zero != Acc(0)) return kRowNonFinite;
  return check.squares <= max_squared_norm<Acc>() ? kRowOk : kRowNormOverflow;
}

// Folds row r of `splits` partial results (split-major, n rows each; indices local, global = index +
// offset) into the running best (best_score[r], best_index[r]).
template <typename Score>
GLANN_HD void fold_row(int64_t r, int64_t n, int64_t splits, const Score* part_score, const int64_t* part_index,
                       int64_t offset, Score* best_score, int64_t* best_index) {
  Score s = best_score[r];
  int64_t i = best_index[r];
  for (int64_t k = 0; k < splits; ++k) {
    const Score t = part_score[k * n + r];
    const int64_t j = part_index[k * n + r] + offset;
    if (better(t, j, s, i)) {
      s = t;
      i = j;
    }
  }
  best_score[r] = s;
  best_index[r] = i;
}

}  // namespace nn
}  // namespace glann

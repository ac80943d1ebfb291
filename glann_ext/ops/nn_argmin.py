"""Exact nearest-neighbour argmin in squared L2: ``nn_argmin``.

For every query row the index of the nearest key row. The kernels are tiled and fused: the N x M
distance matrix never exists, extra memory is O(N + M-independent tiles), and keys can also come as
an iterable of chunks (generated lazily, e.g. ``T(e)`` for chunks of noise), so 10^7 keys and more
fit in any memory.

Exactness and ties. Candidates are ranked by ``||k||^2 - 2 q.k`` in float32 (the same instruction
sequence for every pair, on every thread count and tiling), ties go to the lowest key index, and the
returned distance of the winner is recomputed directly as ``sum((q - k)^2)``. Keys whose distances
differ by less than the float32 rounding of the expansion (about ``1e-7 * (|q|^2 + |k|^2)``) are
ordered by that rounding, as in every GEMM-based search (faiss included); exact duplicates always tie
and resolve to the lowest index.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Union

import torch

from . import _native
from ._checks import check_finite, check_same_device, check_same_dtype, check_tensor

Keys = Union[torch.Tensor, Iterable[torch.Tensor]]

_CPU_DTYPES = (torch.float32,)
_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Keys per native call: indices inside a call are int32 lanes in the CPU micro-kernel.
_MAX_KEYS_PER_CALL = 1 << 30


# The running best starts at the merge rule's identity: every candidate, even (+inf, i), beats it.
_NO_INDEX = torch.iinfo(torch.int64).max


@torch.library.custom_op("glann_ext::nn_argmin_fold_", mutates_args=("best_score", "best_index"))
def _fold(
    queries: torch.Tensor,
    keys: torch.Tensor,
    best_score: torch.Tensor,
    best_index: torch.Tensor,
    key_offset: int,
) -> None:
    """Folds ``keys`` (global indices from ``key_offset``) into the running best ``(best_score,
    best_index)`` of every query row, in place, by the (score, index) rule of csrc/nn_argmin/nn_argmin_math.h."""
    n, d = queries.shape
    m = keys.shape[0]
    if n == 0 or m == 0:
        return
    exec_ctx = _native.exec_context(queries)
    if exec_ctx.cuda:
        nbytes = _native._C.nn_argmin_cuda_workspace_bytes(n, m, d, exec_ctx.device)
    else:
        nbytes = _native._C.nn_argmin_cpu_workspace_bytes(n, m, d, exec_ctx.num_threads)
    workspace = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=queries.device)
    with _native.native_call("nn_argmin", queries):
        _native._C.nn_argmin(
            _native.dtype_code(queries), queries.data_ptr(), n, d, queries.stride(),
            keys.data_ptr(), m, keys.stride(), key_offset,
            best_score.data_ptr(), best_index.data_ptr(), workspace.data_ptr(), workspace.numel(), exec_ctx,
        )  # fmt: skip


@_fold.register_fake
def _(queries, keys, best_score, best_index, key_offset) -> None:
    return None


@torch.library.custom_op("glann_ext::nn_argmin_merge_", mutates_args=("best_score", "best_index"))
def _merge(
    best_score: torch.Tensor,
    best_index: torch.Tensor,
    score: torch.Tensor,
    index: torch.Tensor,
    key_offset: int,
) -> None:
    """Folds one candidate ``(score[r], index[r] + key_offset)`` per row into the running best, in place,
    by the same rule as :func:`_fold` (for a scorer other than the fused kernels)."""
    n = best_score.shape[0]
    if n == 0:
        return
    score, index = score.contiguous(), index.contiguous()
    with _native.native_call("nn_argmin", best_score):
        _native._C.nn_argmin_merge(
            score.data_ptr(), index.data_ptr(), n, key_offset, best_score.data_ptr(), best_index.data_ptr(),
            _native.exec_context(best_score),
        )  # fmt: skip


@_merge.register_fake
def _(best_score, best_index, score, index, key_offset) -> None:
    return None


def check_queries(queries: object) -> torch.Tensor:
    """Validates ``queries`` for :func:`nn_argmin` (2-D, D >= 1, a dtype of its device) and returns it."""
    check_tensor("queries", queries, ndim=2)
    assert isinstance(queries, torch.Tensor)
    allowed = _CUDA_DTYPES if queries.device.type == "cuda" else _CPU_DTYPES
    check_tensor("queries", queries, dtypes=allowed)
    if queries.shape[1] == 0:
        raise ValueError(f"queries must have at least one column (D >= 1), got shape {tuple(queries.shape)}")
    _native.require_cuda_build(queries, "nn_argmin")
    return queries


def check_keys(name: str, keys: object, queries: torch.Tensor) -> torch.Tensor:
    """Validates one tensor of keys (named ``name`` in errors) against validated ``queries`` and returns it."""
    check_tensor(name, keys, ndim=2)
    assert isinstance(keys, torch.Tensor)
    check_same_device(queries=queries, **{name: keys})
    check_same_dtype(queries=queries, **{name: keys})
    if keys.shape[1] != queries.shape[1]:
        raise ValueError(
            f"{name} must have D={queries.shape[1]} columns like queries {tuple(queries.shape)}, "
            f"got shape {tuple(keys.shape)}"
        )
    return keys


def _exact_sq_dist(queries: torch.Tensor, keys: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    diff = queries.float() - keys.index_select(0, index).float()
    return (diff * diff).sum(1)


def _key_chunks(keys: Keys) -> Iterable[torch.Tensor]:
    if isinstance(keys, torch.Tensor):
        check_tensor("keys", keys, ndim=2)
        for start in range(0, keys.shape[0], _MAX_KEYS_PER_CALL):
            yield keys[start : start + _MAX_KEYS_PER_CALL]
        return
    if isinstance(keys, (str, bytes)) or not hasattr(keys, "__iter__"):
        raise TypeError(f"keys must be a torch.Tensor or an iterable of tensors, got {type(keys).__name__}")
    for chunk in keys:
        if not isinstance(chunk, torch.Tensor):
            raise TypeError(f"keys chunks must be torch.Tensor, got {type(chunk).__name__}")
        if chunk.dim() != 2:
            raise ValueError(f"keys chunks must be 2-D, got shape {tuple(chunk.shape)}")
        for start in range(0, chunk.shape[0], _MAX_KEYS_PER_CALL):
            yield chunk[start : start + _MAX_KEYS_PER_CALL]


def nn_argmin(
    queries: torch.Tensor,
    keys: Keys,
    *,
    return_distances: bool = False,
    check_finite_values: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest key (squared L2) for every query row.

    Args:
        queries: (N, D) float32 on CPU; float32, float16 or bfloat16 on CUDA (accumulated in float32).
            Any strides; N may be 0.
        keys: (M, D) tensor with the dtype and device of ``queries``, or an iterable of (m_i, D) chunks
            (consumed once; indices count across chunks in order). M >= 1 in total.
        return_distances: also return the squared distance to the chosen key, computed exactly as
            ``sum((q - k)^2)`` in float32.
        check_finite_values: raise :class:`~glann_ext.errors.NonFiniteError` (a ``ValueError``) naming
            ``queries``, ``keys`` or ``keys[i]`` and the lowest offending row if they hold NaN/Inf (an argmin
            over NaN has no meaning). One read pass over the inputs (on CUDA one synchronisation per
            tensor); turn off only for inputs known finite, whose results are then unspecified.

    Returns:
        ``index`` (N,) int64, or ``(index, sq_distance)`` with ``sq_distance`` (N,) float32.
        Ties go to the lowest index.
    """
    queries = check_queries(queries)
    if check_finite_values:
        check_finite("queries", queries)
    best = RunningArgmin(queries, return_distances=return_distances)
    offset = 0
    for i, chunk in enumerate(_key_chunks(keys)):
        name = "keys" if isinstance(keys, torch.Tensor) else f"keys[{i}]"
        chunk = check_keys(name, chunk, queries)
        if check_finite_values:
            check_finite(name, chunk)
        best.update(chunk, offset)
        offset += chunk.shape[0]
    if offset == 0:
        raise ValueError("keys must contain at least one row, got M=0")
    return best.result()


Scores = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class RunningArgmin:
    """A running (score, index[, exact distance]) minimum over key chunks that may arrive in any order.

    ``update(keys, offset)`` folds in the chunk whose first row has global index ``offset``, by the
    lexicographic (score, global index) rule of the kernels (csrc/nn_argmin/nn_argmin_math.h), so the
    result equals one ``nn_argmin`` over all keys concatenated in index order, whatever order the chunks
    come in (the distributed ring relies on this). Inputs are assumed validated (:func:`check_queries`,
    :func:`check_keys`).

    ``scores``: ``None`` scores with the fused kernels; or a callable ``(queries, keys) -> (score, index)``
    giving, per query row, the best score ``||k||^2 - 2 q.k`` (float32, (N,)) and its lowest index within
    ``keys`` (int64, (N,)), e.g. :func:`glann_ext.ops.reference.nn_argmin_scores_reference`; its answers
    are folded in by the same rule.
    """

    def __init__(
        self, queries: torch.Tensor, *, return_distances: bool = False, scores: Scores | None = None
    ) -> None:
        n = queries.shape[0]
        self.queries = queries
        self.scores = scores
        self.score = torch.full((n,), math.inf, dtype=torch.float32, device=queries.device)
        self.index = torch.full((n,), _NO_INDEX, dtype=torch.int64, device=queries.device)
        self.dist = torch.zeros(n, dtype=torch.float32, device=queries.device) if return_distances else None

    def update(self, keys: torch.Tensor, offset: int) -> None:
        m = keys.shape[0]
        if m == 0:
            return
        if self.scores is None:
            _fold(self.queries, keys, self.score, self.index, offset)
        else:
            score, index = self.scores(self.queries, keys)
            _check_candidates(score, index, self.score)
            _merge(self.score, self.index, score, index, offset)
        if self.dist is not None:
            # Chunks cover disjoint index ranges: a row whose best now lies in this one took it just now.
            took = (self.index >= offset) & (self.index < offset + m)
            local = torch.where(took, self.index - offset, 0)
            self.dist = torch.where(took, _exact_sq_dist(self.queries, keys, local), self.dist)

    def result(self) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.dist is not None:
            return self.index, self.dist
        return self.index


def _check_candidates(score: object, index: object, best: torch.Tensor) -> None:
    """What a ``scores`` callable returned: the kernels read it as float32 and int64 rows."""
    n = best.shape[0]
    check_tensor("scores(...)[0]", score, ndim=1, dtypes=(torch.float32,))
    check_tensor("scores(...)[1]", index, ndim=1, dtypes=(torch.int64,))
    for name, t in (("scores(...)[0]", score), ("scores(...)[1]", index)):
        if t.shape[0] != n or t.device != best.device:
            raise ValueError(
                f"{name} must have shape ({n},) on {best.device}, got {tuple(t.shape)} on {t.device}"
            )

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
from collections.abc import Iterable
from typing import Union

import torch

from . import _native
from ._checks import check_finite, check_same_device, check_same_dtype, check_tensor

Keys = Union[torch.Tensor, Iterable[torch.Tensor]]

_CPU_DTYPES = (torch.float32,)
_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Keys per native call: indices inside a call are int32 lanes in the CPU micro-kernel.
_MAX_KEYS_PER_CALL = 1 << 30


@torch.library.custom_op("glann_ext::nn_argmin_scores", mutates_args=())
def _nn_argmin_scores(queries: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best score ``||k||^2 - 2 q.k`` (float32) and its lowest key index (int64) for every query row."""
    n, d = queries.shape
    m = keys.shape[0]
    score = torch.empty(n, dtype=torch.float32, device=queries.device)
    index = torch.empty(n, dtype=torch.int64, device=queries.device)
    if n == 0:
        return score, index
    on_cuda = queries.device.type == "cuda"
    if on_cuda:
        nbytes = _native._C.nn_argmin_cuda_workspace_bytes(n, m, d, _native.device_index(queries))
        threads = 1
    else:
        threads = _native.num_threads()
        nbytes = _native._C.nn_argmin_cpu_workspace_bytes(n, m, d, threads)
    workspace = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=queries.device)
    with _native.device_guard(queries):
        _native._C.nn_argmin(
            on_cuda,
            queries.data_ptr(), n, d, queries.stride(0), queries.stride(1),
            keys.data_ptr(), m, keys.stride(0), keys.stride(1),
            _native.dtype_code(queries),
            score.data_ptr(), index.data_ptr(), workspace.data_ptr(), workspace.numel(),
            threads, _native.stream_of(queries), _native.device_index(queries),
        )  # fmt: skip
    return score, index


@_nn_argmin_scores.register_fake
def _(queries: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = queries.shape[0]
    return queries.new_empty(n, dtype=torch.float32), queries.new_empty(n, dtype=torch.int64)


def _check_queries(queries: object) -> torch.Tensor:
    check_tensor("queries", queries, ndim=2)
    assert isinstance(queries, torch.Tensor)
    allowed = _CUDA_DTYPES if queries.device.type == "cuda" else _CPU_DTYPES
    check_tensor("queries", queries, dtypes=allowed)
    if queries.shape[1] == 0:
        raise ValueError(f"queries must have at least one column (D >= 1), got shape {tuple(queries.shape)}")
    _native.require_cuda_build(queries, "nn_argmin")
    return queries


def _check_keys(name: str, keys: object, queries: torch.Tensor) -> torch.Tensor:
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
        check_finite_values: raise ``ValueError`` if queries or keys hold NaN/Inf (an argmin over NaN
            has no meaning). One read pass over the inputs; turn off only for inputs known finite.

    Returns:
        ``index`` (N,) int64, or ``(index, sq_distance)`` with ``sq_distance`` (N,) float32.
        Ties go to the lowest index.
    """
    queries = _check_queries(queries)
    if check_finite_values:
        check_finite("queries", queries)
    best = RunningArgmin(queries, return_distances=return_distances)
    offset = 0
    for i, chunk in enumerate(_key_chunks(keys)):
        name = "keys" if isinstance(keys, torch.Tensor) else f"keys[{i}]"
        chunk = _check_keys(name, chunk, queries)
        if check_finite_values:
            check_finite(name, chunk)
        best.update(chunk, offset)
        offset += chunk.shape[0]
    if offset == 0:
        raise ValueError("keys must contain at least one row, got M=0")
    return best.result()


class RunningArgmin:
    """A running (score, index[, exact distance]) minimum over key chunks that may arrive in any order.

    ``update(keys, offset)`` folds in the chunk whose first row has global index ``offset``. Chunks are
    combined lexicographically on (score, global index), so the result equals one ``nn_argmin`` over
    all keys concatenated in index order, whatever order the chunks come in (the distributed ring
    relies on this). Inputs are assumed validated.
    """

    def __init__(self, queries: torch.Tensor, *, return_distances: bool = False, scores=None) -> None:
        n = queries.shape[0]
        self.scores = scores or _nn_argmin_scores
        self.queries = queries
        self.score = torch.full((n,), math.inf, dtype=torch.float32, device=queries.device)
        self.index = torch.full((n,), -1, dtype=torch.int64, device=queries.device)
        self.dist = torch.zeros(n, dtype=torch.float32, device=queries.device) if return_distances else None

    def update(self, keys: torch.Tensor, offset: int) -> None:
        if keys.shape[0] == 0:
            return
        score, index = self.scores(self.queries, keys)
        index = index + offset
        # A row that has seen nothing yet (index -1) takes the chunk's answer even if its score is +inf.
        better = (score < self.score) | ((score == self.score) & (index < self.index)) | (self.index < 0)
        self.score = torch.where(better, score, self.score)
        self.index = torch.where(better, index, self.index)
        if self.dist is not None:
            self.dist = torch.where(better, _exact_sq_dist(self.queries, keys, index - offset), self.dist)

    def result(self) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.dist is not None:
            return self.index, self.dist
        return self.index

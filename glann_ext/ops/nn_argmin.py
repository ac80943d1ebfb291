"""Exact nearest-neighbour argmin in squared L2: ``nn_argmin``.

For every query row the index of the nearest key row. The kernels are tiled and fused: the N x M
distance matrix never exists, extra memory is O(N + M-independent tiles), and keys can also come as
an iterable of chunks (generated lazily, e.g. ``T(e)`` for chunks of noise), so 10^7 keys and more
fit in any memory.

Exactness and ties. Candidates are ranked by ``||k||^2 - 2 q.k`` in the accumulation type (float64 for
float64 inputs, float32 otherwise), by the same instruction sequence for every pair, on every thread
count and tiling; ties go to the lowest key index, and the returned distance of the winner is recomputed
directly as ``sum((q - k)^2)``. Keys whose distances differ by less than the rounding of the expansion
(about ``1e-7 * (|q|^2 + |k|^2)`` in float32, ``2e-16 * (...)`` in float64) are ordered by that rounding,
as in every GEMM-based search (faiss included); exact duplicates always tie and resolve to the lowest
index. Scores below the smallest normal float (about 1.2e-38 in float32, 2.2e-308 in float64) keep an
absolute step, the smallest subnormal, instead of a relative one. (Before 0.3.10 the CPU kernels kept
``||k||^2 / 2 - q.k``, whose halves rounded from squared norms below 2^-125 in float32, 2^-1021 in float64:
a farther key that near the query could tie one at distance 0 and win on its lower index.)

Inputs as users have them. numpy arrays are accepted wherever tensors are (read through
``torch.from_numpy``, without a copy); when ``queries`` is a numpy array the results are numpy arrays
(without gradient; :func:`~glann_ext.laplacian_pyramid_loss` returns numpy when ``x`` or ``y`` is numpy).
float16/bfloat16 are searched on CUDA only (in float32); on the CPU they are refused with the conversion
to make (``.float()``, or ``.astype(np.float32)``): a silent conversion would copy the whole key set
every call.

NaN/Inf (the policy of :mod:`glann_ext.ops`): the kernels flag a query or key row holding NaN or Inf
while they read it. On the CPU that costs no extra pass; on CUDA the queries get one more read (and, on
the tensor-core search, the keys), small beside the search, which reads every key once per block of 128
queries. On CPU the call raises :class:`~glann_ext.errors.NonFiniteError`
naming ``queries``, ``keys`` or ``keys[i]`` and the lowest offending row (queries first, then the chunks
in order). On CUDA the flags stay on the device and the call returns without waiting: the error is
raised by a later glann_ext call once the device has finished this one, or at the latest by
:func:`glann_ext.ops.raise_deferred_errors` (see :mod:`glann_ext.ops`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, Union, overload

import numpy as np
import torch

from ..errors import NonFiniteError, UsageError
from . import _native
from ._checks import (
    check_bool,
    check_finite,
    check_same_device,
    check_same_dtype,
    check_squared_norms,
    check_tensor,
    first_nonfinite_row,
    from_numpy,
    is_numpy,
    non_finite_error,
    nonfinite_row_flag,
    norm_overflow_error,
    overflowing_row_flag,
    torch_name,
)

Keys = Union[torch.Tensor, np.ndarray, Iterable[Union[torch.Tensor, np.ndarray]]]

_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# Keys per native call: indices inside a call are int32 lanes in the CPU micro-kernel.
_MAX_KEYS_PER_CALL = 1 << 30


# The running best starts at the merge rule's identity: every candidate, even (+inf, i), beats it.
_NO_INDEX = torch.iinfo(torch.int64).max


def _score_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation type of the search, and so of its scores and distances."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fold_impl(
    queries: torch.Tensor,
    keys: torch.Tensor,
    best_score: torch.Tensor,
    best_index: torch.Tensor,
    key_offset: int,
    check_queries: bool = False,
    check_keys: bool = False,
    keys_name: str = "keys",
    keys_row0: int = 0,
) -> None:
    """Folds ``keys`` (global indices from ``key_offset``) into the running best ``(best_score,
    best_index)`` of every query row, in place, by the (score, index) rule of csrc/nn_argmin/nn_argmin_math.h.

    ``check_queries``/``check_keys``: the NaN policy for those inputs (the module docstring), the keys named
    ``keys_name`` with their rows counted from ``keys_row0`` (a slice of a larger tensor)."""
    n, d = queries.shape
    m = keys.shape[0]
    if m == 0 or (n == 0 and not check_keys):
        return
    names, offsets = ("queries", keys_name), (0, keys_row0)
    if n == 0:  # no kernel reads the keys: their checks cost two passes (still without a synchronisation)
        inputs = (queries, keys)
        flags = torch.cat([nonfinite_row_flag(t) for t in inputs] + [overflowing_row_flag(t) for t in inputs])
        _native.raise_flags(flags, _flags_error("nn_argmin", names, offsets, queries.dtype))
        return
    exec_ctx = _native.exec_context(queries)
    if exec_ctx.cuda:
        nbytes = _native._C.nn_argmin_cuda_workspace_bytes(n, m, d, exec_ctx.device)
    else:
        nbytes = _native._C.nn_argmin_cpu_workspace_bytes(
            n, m, d, _native.dtype_code(queries), exec_ctx.num_threads
        )
    workspace = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=queries.device)
    # CUDA: NaN/Inf rows of the queries and keys, then rows whose squared norm is too large (read later).
    flags = (
        _native.nonfinite_flags(queries.device, 4)
        if exec_ctx.cuda and (check_queries or check_keys)
        else None
    )
    if check_queries and not exec_ctx.cuda:
        check_squared_norms("nn_argmin", "queries", queries)
    with (
        _norm_overflow(keys, keys_name, keys_row0),
        _native.native_call("nn_argmin", queries, arguments=names, row_offsets=offsets),
    ):
        _native._C.nn_argmin(
            _native.dtype_code(queries), queries.data_ptr(), n, d, queries.stride(),
            keys.data_ptr(), m, keys.stride(), key_offset, best_score.data_ptr(), best_index.data_ptr(),
            check_queries, check_keys, flags.data_ptr() if flags is not None else 0,
            workspace.data_ptr(), workspace.numel(), exec_ctx,
        )  # fmt: skip
    if flags is not None:
        _native.defer_flags(flags, _flags_error("nn_argmin", names, offsets, queries.dtype))


@contextlib.contextmanager
def _norm_overflow(keys: torch.Tensor, name: str, row0: int) -> Iterator[None]:
    """The CPU kernel reports the lowest key row whose squared norm is NaN, Inf or above max/4 as a NaN
    error. A row of finite values is the last case: raised as what it is, unless a later row holds NaN/Inf,
    which comes first (an input's NaN before its norm, as :func:`check_squared_norms` and CUDA's flags)."""
    try:
        yield
    except NonFiniteError as exc:
        if exc.argument != name or exc.row is None:
            raise
        if not bool(torch.isfinite(keys[exc.row - row0]).all()):
            raise
        nan_row = first_nonfinite_row(keys)  # the error path only: one more pass costs nothing otherwise
        if nan_row is not None:
            raise non_finite_error(name, nan_row + row0, op="nn_argmin") from None
        raise norm_overflow_error("nn_argmin", name, exc.row, keys.dtype) from None


# The registered op (torch.compile, fake tensors and dispatch modes see it); plain tensors in eager mode call
# _fold_impl directly: the custom_op's Python dispatch cost about 50 us a call, more than a small search.
def _fold_checked(
    queries: torch.Tensor,
    keys: torch.Tensor,
    best_score: torch.Tensor,
    best_index: torch.Tensor,
    key_offset: int,
    check_queries: bool = False,
    check_keys: bool = False,
    keys_name: str = "keys",
    keys_row0: int = 0,
) -> None:
    """:func:`_fold_impl` as the registered op (callable as torch.ops.glann_ext.nn_argmin_fold_, so with any
    arguments): the shapes the kernel writes through are checked first."""
    _check_fold_args(queries, keys, best_score, best_index, key_offset)
    _fold_impl(
        queries, keys, best_score, best_index, key_offset, check_queries, check_keys, keys_name, keys_row0
    )


def _check_fold_args(queries, keys, best_score, best_index, key_offset) -> None:
    op = "nn_argmin_fold_"
    check_queries(queries)
    check_keys(f"{op}: keys", keys, queries)
    n, acc = queries.shape[0], _score_dtype(queries.dtype)
    _check_rows(op, queries.device, n, best_score=(best_score, acc), best_index=(best_index, torch.int64))
    _check_key_offset(op, key_offset)


def _check_rows(op: str, device: torch.device, n: int, **tensors: tuple[torch.Tensor, torch.dtype]) -> None:
    """Each ``name=(tensor, dtype)`` is a contiguous (n,) tensor of that dtype on ``device`` (the kernels
    read and write n values through its pointer)."""
    for name, (t, dtype) in tensors.items():
        if tuple(t.shape) != (n,) or t.dtype != dtype or t.device != device or not t.is_contiguous():
            raise ValueError(
                f"{op}: {name} must be a contiguous ({n},) {dtype} tensor on {device}, got "
                f"{tuple(t.shape)} {t.dtype} on {t.device}{'' if t.is_contiguous() else ' (not contiguous)'}"
            )


def _check_key_offset(op: str, key_offset: object) -> None:
    if not (isinstance(key_offset, int) and key_offset >= 0):
        raise ValueError(f"{op}: key_offset must be an int >= 0, got {key_offset!r}")


_fold = torch.library.custom_op("glann_ext::nn_argmin_fold_", mutates_args=("best_score", "best_index"))(
    _fold_checked
)


def _flags_error(
    op: str, names: tuple[str, ...], offsets: tuple[int, ...], dtype: torch.dtype | None = None
) -> _native.FlagsError:
    """Flag values -> the error of the first input (queries, then keys) that has one. The first
    ``len(names)`` values are each input's lowest row holding NaN/Inf (or NO_ROW); with ``dtype``, the CUDA
    search's next ones are each input's lowest finite row whose squared norm its scores could overflow
    (csrc/nn_argmin/nn_argmin.h). An input's NaN comes before its norm, as on the CPU."""

    def make(values: list[int]) -> Exception | None:
        k = len(names)
        for i, (name, offset) in enumerate(zip(names, offsets)):
            if values[i] != _native.NO_ROW:
                return non_finite_error(name, values[i] + offset, op=op)
            if dtype is not None and values[k + i] != _native.NO_ROW:
                return norm_overflow_error(op, name, values[k + i] + offset, dtype)
        return None

    return make


@_fold.register_fake
def _(queries, keys, best_score, best_index, key_offset, check_queries=False, check_keys=False,
      keys_name="keys", keys_row0=0) -> None:  # fmt: skip
    check_same_device(
        queries=queries, keys=keys, best_score=best_score, best_index=best_index, op="nn_argmin_fold_"
    )


@torch.library.custom_op("glann_ext::nn_argmin_merge_", mutates_args=("best_score", "best_index"))
def _merge(
    best_score: torch.Tensor,
    best_index: torch.Tensor,
    score: torch.Tensor,
    index: torch.Tensor,
    key_offset: int,
) -> None:
    """Folds one candidate ``(score[r], index[r] + key_offset)`` per row into the running best, in place,
    by the same rule as :func:`_fold` (for a scorer other than the fused kernels). Callable directly as
    torch.ops.glann_ext.nn_argmin_merge_, so the shapes and dtypes the kernel goes through are checked."""
    op = "nn_argmin_merge_"
    check_tensor(f"{op}: best_score", best_score, ndim=1, dtypes=_CPU_DTYPES)
    n, device = best_score.shape[0], best_score.device
    score, index = score.contiguous(), index.contiguous()
    _check_rows(
        op, device, n, best_score=(best_score, best_score.dtype), best_index=(best_index, torch.int64),
        score=(score, best_score.dtype), index=(index, torch.int64),
    )  # fmt: skip
    _check_key_offset(op, key_offset)
    if n == 0:
        return
    with _native.native_call("nn_argmin", best_score):
        _native._C.nn_argmin_merge(
            _native.dtype_code(best_score), score.data_ptr(), index.data_ptr(), n, key_offset,
            best_score.data_ptr(), best_index.data_ptr(), _native.exec_context(best_score),
        )  # fmt: skip


@_merge.register_fake
def _(best_score, best_index, score, index, key_offset) -> None:
    check_same_device(
        best_score=best_score, best_index=best_index, score=score, index=index, op="nn_argmin_merge_"
    )


def check_queries(queries: object, *, numpy_ok: bool = False) -> torch.Tensor:
    """Validates ``queries`` for :func:`nn_argmin` (2-D, D >= 1, a dtype of its device) and returns it
    (``numpy_ok``: the caller takes numpy arrays too, converted before, so the type error says so)."""
    check_tensor("queries", queries, ndim=2, numpy_ok=numpy_ok)
    assert isinstance(queries, torch.Tensor)
    if queries.device.type != "cuda" and queries.dtype in (torch.float16, torch.bfloat16):
        name = torch_name(queries.dtype)
        raise TypeError(
            f"queries has dtype {name}, which nn_argmin searches on CUDA only; on the CPU convert queries and "
            "keys with .float() (numpy: .astype(np.float32)), or use float64"
        )
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
    acc = _score_dtype(queries.dtype)
    diff = queries.to(acc) - keys.index_select(0, index).to(acc)
    return (diff * diff).contiguous().sum(1)  # one summation order whatever the queries' layout


def _key_chunks(keys: Keys) -> Iterable[tuple[str, int, torch.Tensor]]:
    """(name, first row within it, slice) for every native call's share of ``keys``."""
    if isinstance(keys, (torch.Tensor, np.ndarray)):
        keys = from_numpy("keys", keys) if is_numpy(keys) else keys
        check_tensor("keys", keys, ndim=2)
        # An empty tensor is still yielded once, so its dtype, device and width are checked.
        for start in range(0, max(keys.shape[0], 1), _MAX_KEYS_PER_CALL):
            yield "keys", start, keys[start : start + _MAX_KEYS_PER_CALL]
        return
    if isinstance(keys, (str, bytes)) or not hasattr(keys, "__iter__"):
        raise TypeError(
            f"keys must be a torch.Tensor, a numpy array or an iterable of them, got {type(keys).__name__}"
        )
    for i, chunk in enumerate(keys):
        name = f"keys[{i}]"
        if is_numpy(chunk):
            chunk = from_numpy(name, chunk)
        if not isinstance(chunk, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or a numpy array, got {type(chunk).__name__}")
        check_tensor(name, chunk, ndim=2)
        for start in range(0, max(chunk.shape[0], 1), _MAX_KEYS_PER_CALL):
            yield name, start, chunk[start : start + _MAX_KEYS_PER_CALL]


# For type checkers and IDEs: what comes back for tensors or arrays, with or without distances.
@overload
def nn_argmin(
    queries: torch.Tensor,
    keys: Keys,
    *,
    return_distances: Literal[False] = ...,
    check_finite_values: bool = ...,
) -> torch.Tensor: ...
@overload
def nn_argmin(
    queries: torch.Tensor, keys: Keys, *, return_distances: Literal[True], check_finite_values: bool = ...
) -> tuple[torch.Tensor, torch.Tensor]: ...
@overload
def nn_argmin(
    queries: np.ndarray,
    keys: Keys,
    *,
    return_distances: Literal[False] = ...,
    check_finite_values: bool = ...,
) -> np.ndarray: ...
@overload
def nn_argmin(
    queries: np.ndarray, keys: Keys, *, return_distances: Literal[True], check_finite_values: bool = ...
) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def nn_argmin(
    queries: torch.Tensor | np.ndarray, keys: Keys, *, return_distances: bool, check_finite_values: bool = ...
) -> Any: ...


def nn_argmin(
    queries: torch.Tensor | np.ndarray,
    keys: Keys,
    *,
    return_distances: bool = False,
    check_finite_values: bool = True,
) -> Any:
    """Index of the nearest key (squared L2) for every query row.

    Args:
        queries: (N, D) float32 or float64; on CUDA also float16 or bfloat16 (searched in float32). A
            tensor or a numpy array (then the results are numpy arrays too, without gradient, whatever
            ``keys`` are). Any strides; N may be 0.
        keys: (M, D) with the dtype and device of ``queries`` (a tensor or a numpy array), or an iterable
            of (m_i, D) chunks (consumed once; indices count across chunks in order). M >= 1 in total.
        return_distances: also return the squared distance to the chosen key, computed exactly as
            ``sum((q - k)^2)`` (float64 for float64 inputs, float32 otherwise).
        check_finite_values: the NaN policy (module docstring): raise
            :class:`~glann_ext.errors.NonFiniteError` (a ``ValueError``) naming ``queries``, ``keys`` or
            ``keys[i]`` and the lowest offending row if they hold NaN/Inf (an argmin over NaN has no
            meaning). The kernels look while they read (on CUDA one more read of the rows); on CUDA the
            error is deferred. ``False`` skips it: results for non-finite inputs are then unspecified.
            It also raises ``ValueError`` naming the argument and the lowest row whose values are finite but
            whose squared norm exceeds a quarter of the accumulation type's maximum (a norm above about
            9.2e18 in float32 and the 16-bit types, 6.7e153 in float64): the score ``||k||^2 - 2 q.k``
            could overflow, and the search would return a wrong index. Rescale the inputs (or use float64).
            On CUDA this error is deferred like the NaN error (the same kernels look, since 2026-12-05).

    Precision: candidates are ranked by ``||k||^2 - 2 q.k`` in the accumulation type (module docstring),
    whose rounding is about ``1e-7 * (|q|^2 + |k|^2)`` in float32. Points close together but far from the
    origin are then ranked by rounding (float32, offset 100, spread 0.01: the wrong neighbour almost
    always): centre the data first (``x - x.mean(0)`` for queries and keys alike leaves every distance as
    it is) or search in float64. So are dense keys in few dimensions, whose nearest distances are tiny
    beside the norms (2,000,000 N(0, 1) keys in D = 1: most of 500 queries get a wrong neighbour, as with
    ``torch.cdist``; 200,000 in D = 2: a few in 500): there only float64 helps. Unit-norm codes, whitened
    codes and pixels in [0, 1] are far from both.

    Returns:
        ``index`` (N,) int64, or ``(index, sq_distance)``. Ties go to the lowest index. ``sq_distance``
        is differentiable in ``queries`` and ``keys`` (``2 (q - k)`` and its negative, through the chosen
        key); ``index`` is not.
    """
    return_distances = check_bool("return_distances", return_distances)
    check_finite_values = check_bool("check_finite_values", check_finite_values)
    as_numpy = is_numpy(queries)
    if as_numpy:
        queries = from_numpy("queries", queries)
    queries = check_queries(queries, numpy_ok=True)
    best = RunningArgmin(queries, return_distances=return_distances, check_finite=check_finite_values)
    offset = 0
    for name, row0, chunk in _key_chunks(keys):
        best.update(chunk, offset, name=name, row0=row0)  # checks the chunk (check_keys)
        offset += chunk.shape[0]
    if offset == 0:
        raise ValueError("keys must contain at least one row, got M=0")
    out = best.result()
    if not as_numpy:
        return out
    # numpy results carry no gradient (keys that require grad would make .numpy() refuse)
    return tuple(t.detach().numpy() for t in out) if isinstance(out, tuple) else out.numpy()


class _ChunkUnderTransform(torch.autograd.Function):
    """One chunk's best (score, index) per query row, computed by the kernels on the tensors a
    ``torch.func`` transform unwraps for an ``autograd.Function``: the in-place fold op has no autograd
    formula, and neither output has a gradient (the distance is differentiated through torch ops)."""

    @staticmethod
    def vmap(info, in_dims, queries, keys, check_queries, check_keys, name, row0):
        """torch.vmap: with keys shared by the entries (in_dims None), every entry's queries in one search
        (a NaN error then counts query rows across the entries); with keys of their own, one search per
        entry."""
        v, (q_dim, k_dim) = info.batch_size, in_dims[:2]
        q = _native.batch_dim_first(queries, q_dim, v)
        if k_dim is None:
            flat = q.reshape(-1, q.shape[-1])
            score, index = _ChunkUnderTransform.apply(flat, keys, check_queries, check_keys, name, row0)
            return (score.view(v, q.shape[1]), index.view(v, q.shape[1])), (0, 0)  # N may be 0
        k = _native.batch_dim_first(keys, k_dim, v)
        found = [
            _ChunkUnderTransform.apply(q[i], k[i], check_queries, check_keys, name, row0) for i in range(v)
        ]
        return (torch.stack([f[0] for f in found]), torch.stack([f[1] for f in found])), (0, 0)

    @staticmethod
    def forward(queries, keys, check_queries, check_keys, name, row0):
        chunk = RunningArgmin(queries)
        chunk.check_queries, chunk.check_keys = check_queries, check_keys
        chunk.update(keys, 0, name=name, row0=row0)
        return chunk.score, chunk.index

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.mark_non_differentiable(*output)

    @staticmethod
    def backward(ctx, grad_score, grad_index):
        return None, None, None, None, None, None


Scores = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class RunningArgmin:
    """A running (score, index[, exact distance]) minimum over key chunks that may arrive in any order.

    ``update(keys, offset)`` folds in the chunk whose first row has global index ``offset``, by the
    lexicographic (score, global index) rule of the kernels (csrc/nn_argmin/nn_argmin_math.h), so the
    result equals one ``nn_argmin`` over all keys concatenated in index order, whatever order the chunks
    come in (the distributed ring relies on this). ``queries`` are assumed validated
    (:func:`check_queries`); every ``update`` checks its keys (:func:`check_keys`). Scores and distances are float64 for float64 queries, float32 otherwise.

    ``scores``: ``None`` scores with the fused kernels; or a callable ``(queries, keys) -> (score, index)``
    giving, per query row, the best score ``||k||^2 - 2 q.k`` ((N,), of the score dtype above) and its
    lowest index within ``keys`` (int64, (N,)), e.g.
    :func:`glann_ext.ops.reference.nn_argmin_scores_reference`; its answers are folded in by the same rule.

    ``check_finite``: apply the NaN policy (:func:`nn_argmin`) to the queries (once, with the first
    non-empty chunk) and to every chunk, named by ``update``'s ``name``. The fused kernels check as they
    read; with a ``scores`` callable the check is a pass in torch (on CUDA one synchronisation).
    """

    def __init__(
        self,
        queries: torch.Tensor,
        *,
        return_distances: bool = False,
        scores: Scores | None = None,
        check_finite: bool = False,
    ) -> None:
        return_distances = check_bool("return_distances", return_distances)
        check_finite = check_bool("check_finite", check_finite)
        n = queries.shape[0]
        acc = _score_dtype(queries.dtype)
        self.queries = queries
        self.scores = scores
        self.score = torch.full((n,), math.inf, dtype=acc, device=queries.device)
        self.index = torch.full((n,), _NO_INDEX, dtype=torch.int64, device=queries.device)
        self.dist = torch.zeros(n, dtype=acc, device=queries.device) if return_distances else None
        self.check_queries = check_finite
        self.check_keys = check_finite
        self.searched = n == 0  # whether result() has an answer: a key was folded in (or nothing was asked)

    def update(self, keys: torch.Tensor, offset: int, *, name: str = "keys", row0: int = 0) -> None:
        """Folds in ``keys`` (global indices from ``offset``); ``name`` and ``row0`` (its first row within
        the tensor that name means) word a NaN error. ``keys`` is checked like :func:`nn_argmin`'s (dtype,
        device and width of the queries)."""
        check_keys(name, keys, self.queries)
        if not (isinstance(offset, int) and offset >= 0):
            raise ValueError(f"offset must be an int >= 0, got {offset!r}")
        m = keys.shape[0]
        if m == 0:
            return
        self.searched = True
        plain = self.scores is None and _native.plain_tensors(self.queries, keys, self.score)
        if self.scores is None and not plain and _native.under_func_transform(self.queries, keys):
            # torch.func.grad / jacrev: the chunk searched apart, folded in by the same rule in torch ops
            score, index = _ChunkUnderTransform.apply(
                self.queries, keys, self.check_queries, self.check_keys, name, row0
            )
            index = index + offset
            take = (score < self.score) | ((score == self.score) & (index < self.index))
            self.score, self.index = (
                torch.where(take, score, self.score),
                torch.where(take, index, self.index),
            )
        elif self.scores is None:
            (_fold_impl if plain else _fold)(
                self.queries,
                keys,
                self.score,
                self.index,
                offset,
                self.check_queries,
                self.check_keys,
                name,
                row0,
            )
        else:
            if self.check_queries:
                check_finite("queries", self.queries, op="nn_argmin")
                check_squared_norms("nn_argmin", "queries", self.queries)
            if self.check_keys:
                check_finite(name, keys, row0=row0, op="nn_argmin")  # worded as the fused path's
                check_squared_norms("nn_argmin", name, keys, row0)
            score, index = self.scores(self.queries, keys)
            _check_candidates(score, index, self.score)
            _merge(self.score, self.index, score, index, offset)
        self.check_queries = False
        if self.dist is not None:
            # Chunks cover disjoint index ranges: a row whose best now lies in this one took it just now.
            took = (self.index >= offset) & (self.index < offset + m)
            local = torch.where(took, self.index - offset, 0)
            self.dist = torch.where(took, _exact_sq_dist(self.queries, keys, local), self.dist)

    def result(self) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The indices (and distances) folded so far; :class:`~glann_ext.errors.UsageError` before any key
        (the running best's placeholder index, INT64_MAX, is no answer)."""
        if not self.searched:
            raise UsageError("nn_argmin: no key was searched (every chunk of keys so far was empty)")
        if self.dist is not None:
            return self.index, self.dist
        return self.index


def _check_candidates(score: object, index: object, best: torch.Tensor) -> None:
    """What a ``scores`` callable returned: the kernels read it as rows of the score dtype and int64."""
    n = best.shape[0]
    check_tensor("scores(...)[0]", score, ndim=1, dtypes=(best.dtype,))
    check_tensor("scores(...)[1]", index, ndim=1, dtypes=(torch.int64,))
    for name, t in (("scores(...)[0]", score), ("scores(...)[1]", index)):
        if t.shape[0] != n or t.device != best.device:
            raise ValueError(
                f"{name} must have shape ({n},) on {best.device}, got {tuple(t.shape)} on {t.device}"
            )

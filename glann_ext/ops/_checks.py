"""Argument validation shared by all ops: every error names the argument, what was expected and what
came, and is raised before any native code runs."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from ..errors import NonFiniteError


def torch_name(value: torch.dtype | torch.layout) -> str:
    """A dtype's or layout's name as users write it in messages: ``float32``, ``sparse_coo``."""
    return str(value).replace("torch.", "")


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(torch_name(d) for d in dtypes)


def dense_layout_error(name: str, t: torch.Tensor, *, rows: bool = False) -> TypeError:
    """The error for a sparse or jagged ``t``: the kernels read dense memory through strides. ``rows``: the
    argument is a latent step's gradient rows, for which a sparse gradient's rows are the cure."""
    if rows and t.layout == torch.sparse_coo:
        return TypeError(
            f"{name} must be dense gradient rows (B, D), got a sparse_coo tensor: pass a sparse gradient's "
            "coalesced .indices()[0] and .values() (SphereSparseAdam/SGD.step(grad) reads it as it is)"
        )
    return TypeError(
        f"{name} must be a dense (strided) tensor, got layout {torch_name(t.layout)}: convert it with .to_dense()"
    )


def check_tensor(
    name: str,
    t: object,
    *,
    ndim: int | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    nonempty: bool = False,
    numpy_ok: bool = False,
) -> torch.Tensor:
    """Type, layout, rank, dtype and emptiness checks for one argument. ``numpy_ok``: the op also takes a numpy
    array for it (converted before this check), so the type error says so."""
    if not isinstance(t, torch.Tensor):
        kind = "a torch.Tensor or a numpy array" if numpy_ok else "a torch.Tensor"
        raise TypeError(f"{name} must be {kind}, got {type(t).__name__}")
    if t.layout != torch.strided:  # sparse or jagged: the kernels read dense memory through strides
        raise dense_layout_error(name, t)
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor, got {t.dim()}-D with shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in ({_dtype_names(dtypes)}), got {torch_name(t.dtype)}")
    if nonempty and t.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")
    return t


def check_bool(name: str, value: object) -> bool:
    """``value`` as a Python bool: ``True``/``False``, a ``numpy.bool_`` or a 0-d bool tensor or array;
    anything else (an int, a str, None) raises ``TypeError`` naming ``name``, the expected type and the
    value, instead of being read as its truth value."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if (
        isinstance(value, (torch.Tensor, np.ndarray))
        and value.dtype in (torch.bool, np.bool_)
        and value.ndim == 0
    ):
        return bool(value)  # a 0-d bool tensor or array: what a comparison returns
    raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r:.60}")


def check_same_device(*, op: str = "", **tensors: torch.Tensor) -> torch.device:
    """All tensors on one device; returns it. ``op`` prefixes the message (the registered ops' fake
    implementations check this too: a call that mixes a meta tensor with a real one dispatches to them, and
    they would return an empty result or mutate nothing)."""
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{op + ': ' if op else ''}{name} must be on the same device as {first_name} ({first.device}), "
                f"got {t.device}"
            )
    return first.device


def check_same_dtype(**tensors: torch.Tensor) -> torch.dtype:
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.dtype != first.dtype:
            raise TypeError(
                f"{name} must have the same dtype as {first_name} ({torch_name(first.dtype)}), "
                f"got {torch_name(t.dtype)}"
            )
    return first.dtype


def check_no_internal_overlap(name: str, t: torch.Tensor) -> None:
    """In-place kernels must not write through a tensor whose elements alias each other (expand, as_strided).
    torch's own check answers "too hard" for any layout that is not dense (e.g. overlapping as_strided rows);
    here a layout passes only if it provably has distinct elements: sorted by stride, every dimension's
    stride exceeds the span of the smaller ones."""
    if t.numel() > 1 and not _distinct_elements(t):
        raise ValueError(
            f"{name} has internally overlapping memory (e.g. from expand() or as_strided(); shape "
            f"{tuple(t.shape)}, strides {t.stride()}); in-place updates would be ill-defined. Pass a tensor "
            "that owns its elements (call .contiguous() or .clone())."
        )


def max_squared_norm(dtype: torch.dtype) -> float:
    """The largest squared row norm nn_argmin accepts: a quarter of the accumulation type's maximum, so
    that its score ``||k||^2 - 2 q.k`` cannot overflow (csrc/nn_argmin/nn_argmin_cpu_isa.h)."""
    return torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).max / 4


def first_overflowing_row(t: torch.Tensor) -> int | None:
    """The lowest row of 2-D ``t`` whose squared norm exceeds :func:`max_squared_norm` (NaN rows excluded),
    or None; one pass, the norms in float64 (finite for every float32 row)."""
    if t.numel() == 0:
        return None
    rows = _overflowing_rows(t).nonzero()
    return int(rows[0]) if rows.numel() else None


def _overflowing_rows(t: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the rows of non-empty 2-D ``t`` of finite values whose squared norm exceeds
    :func:`max_squared_norm` (the norms in float64, finite for every float32 row)."""
    norms = torch.linalg.vector_norm(t, dim=1, dtype=torch.float64)
    return (norms > math.sqrt(max_squared_norm(t.dtype))) & torch.isfinite(t).all(1)


def norm_overflow_error(op: str, argument: str, row: int, dtype: torch.dtype) -> ValueError:
    """nn_argmin's error for a finite row too large to score (see :func:`max_squared_norm`)."""
    acc = "float64" if dtype == torch.float64 else "float32"
    limit = math.sqrt(max_squared_norm(dtype))
    return ValueError(
        f"{op}: {argument} row {row} has a squared L2 norm above {acc}'s maximum / 4 (a norm above "
        f"{limit:.3g}): its values are finite, but nn_argmin ranks keys by ||k||^2 - 2 q.k in {acc}, "
        f"which could overflow; rescale the inputs" + ("" if acc == "float64" else " or use float64")
    )


def check_squared_norms(op: str, argument: str, t: torch.Tensor, row0: int = 0) -> None:
    """``ValueError`` naming ``argument`` and its lowest row (counted from ``row0``) whose squared norm
    overflows nn_argmin's scores (one pass; on CUDA one synchronisation); the NaN error instead if ``t``
    also holds NaN/Inf."""
    row = first_overflowing_row(t)
    if row is not None:
        nan_row = first_nonfinite_row(t)  # the NaN/Inf policy comes first, as in the kernels
        if nan_row is not None:
            raise non_finite_error(argument, nan_row + row0, op=op)
        raise norm_overflow_error(op, argument, row + row0, t.dtype)


def _distinct_elements(t: torch.Tensor) -> bool:
    if torch._debug_has_internal_overlap(t) == 0:  # MemOverlap::No (dense layouts)
        return True
    span = 0  # the largest offset reached by the dimensions seen so far
    for size, stride in sorted((d for d in zip(t.shape, t.stride()) if d[0] > 1), key=lambda d: d[1]):
        if stride <= span:
            return False
        span += (size - 1) * stride
    return True


def first_nonfinite_row(t: torch.Tensor) -> int | None:
    """The lowest index along dimension 0 of a row holding NaN or Inf, or None (one pass over ``t``)."""
    if t.numel() == 0:
        return None
    rows = _nonfinite_rows(t).nonzero()
    return int(rows[0]) if rows.numel() else None


def _nonfinite_rows(t: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the rows of non-empty ``t`` (along dimension 0) holding NaN or Inf."""
    return (~torch.isfinite(t)).reshape(t.shape[0], -1).any(1)


ROW = "row {}"
SAMPLE = "sample {} (batch index)"


def non_finite_error(
    argument: str, row: int | None, *, op: str = "", note: str = "", row_label: str = ROW
) -> NonFiniteError:
    """The package's NaN/Inf error (see glann_ext.ops): names the argument and its lowest offending row,
    worded by ``row_label`` (:data:`ROW`; :data:`SAMPLE` for images, whose dimension 0 is the batch). The
    error's ``row`` attribute is the index along dimension 0 either way."""
    where = argument if row is None else f"{argument} {row_label.format(row)}"
    prefix = f"{op}: " if op else ""
    return NonFiniteError(f"{prefix}{where} contains NaN or Inf{note}", argument=argument, row=row)


def check_finite(name: str, t: torch.Tensor, *, row0: int = 0, op: str = "") -> None:
    """``NonFiniteError`` naming ``name`` and its lowest offending row (counted from ``row0``: ``t`` may be
    a slice of what ``name`` means) if ``t`` holds NaN/Inf, worded as op ``op``'s (one pass; on CUDA one
    synchronisation, and a graph break under ``torch.compile``: the ops themselves check inside their
    kernels instead)."""
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise non_finite_error(name, first_nonfinite_row(t) + row0, op=op)


def nonfinite_row_flag(t: torch.Tensor) -> torch.Tensor:
    """The lowest row of ``t`` (along dimension 0) holding NaN or Inf as a 1-element int64 tensor on ``t``'s
    device, ``iinfo(int64).max`` if none: torch ops only, so no synchronisation (for inputs no kernel reads)."""
    if t.shape[0] == 0 or t.numel() == 0:
        return _lowest_row_flag(None, t)
    return _lowest_row_flag(_nonfinite_rows(t), t)


def overflowing_row_flag(t: torch.Tensor) -> torch.Tensor:
    """:func:`first_overflowing_row` of 2-D ``t`` as :func:`nonfinite_row_flag` gives its row: a 1-element
    int64 tensor on ``t``'s device, no synchronisation."""
    if t.numel() == 0:
        return _lowest_row_flag(None, t)
    return _lowest_row_flag(_overflowing_rows(t), t)


def _lowest_row_flag(bad: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor:
    none = torch.iinfo(torch.int64).max
    if bad is None:
        return torch.full((1,), none, dtype=torch.int64, device=t.device)
    rows = torch.arange(t.shape[0], device=t.device)
    return torch.where(bad, rows, none).min().reshape(1)


# --------------------------------------------------------------------------------------------------
# numpy arrays in, numpy arrays out
# --------------------------------------------------------------------------------------------------


def is_numpy(a: object) -> bool:
    return isinstance(a, np.ndarray)


def from_numpy(name: str, a: np.ndarray, *, in_place: bool = False) -> torch.Tensor:
    """A numpy array as a CPU tensor over the same memory (``torch.from_numpy``), so the op reads it
    without a copy. Arrays torch cannot view (negative strides, strides that are not whole elements, as a
    field of a structured array, or non-native byte order) are copied, which an in-place op
    (``in_place=True``) refuses, as it refuses a read-only array. The dtype rules are the tensor's: the op
    checks them afterwards (``np.longdouble``, which torch has no type for, is refused here)."""
    if a.dtype.kind not in "fiub" or (a.dtype.kind == "f" and a.dtype.itemsize > 8):
        raise TypeError(f"{name} must be a numpy array of floats, got dtype {a.dtype}")
    if in_place and not a.flags.writeable:
        raise ValueError(f"{name} is a read-only numpy array; an in-place op must write to it")
    if any(s < 0 or s % a.itemsize for s in a.strides) or not a.dtype.isnative:
        if in_place:
            raise ValueError(
                f"{name} is a numpy array with negative strides, strides that are not whole elements or "
                "non-native byte order, which an in-place op cannot write through; pass "
                "np.ascontiguousarray(...) and use its result"
            )
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("="))
    with warnings.catch_warnings():
        # A read-only array: torch warns that writing would be undefined; read-only uses never write.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)

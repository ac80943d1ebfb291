"""Plumbing between torch tensors and the pointer-based native kernels.

Every native call receives raw pointers (``data_ptr()`` already includes the storage offset), sizes,
element strides and an execution context ``(cuda, device, stream, num_threads)``: the CUDA device and
current stream of the tensors, or on CPU the thread count ``torch.get_num_threads()`` so the kernels
honour torch's threading setting. A failed kernel raises ``_C.StatusError``; :func:`native_call` turns
it into the package's typed error, by its code, never by its text.

NaN/Inf found by a CUDA kernel (the NaN policy of :mod:`glann_ext.ops`) is written to a small device
tensor of flags, which the host must not wait for: :func:`defer_flags` copies it to pinned host memory
without waiting and records an event; :func:`raise_deferred_errors` raises the error of every call whose
event has completed (without waiting, at the start of every op; or waiting for all, when a user calls
:func:`glann_ext.ops.raise_deferred_errors`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch

from .._ext import _C
from ._checks import ROW, check_bool, non_finite_error

# Must match csrc/common/dtype.h.
DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 0,
    torch.float64: 1,
    torch.float16: 2,
    torch.bfloat16: 3,
    torch.int64: 4,
}


def dtype_code(t: torch.Tensor) -> int:
    return DTYPE_CODES[t.dtype]


def num_threads() -> int:
    return max(1, torch.get_num_threads())


def device_index(t: torch.Tensor) -> int:
    """CUDA device ordinal of ``t`` (the current device for an index-less ``cuda``), 0 for CPU tensors.

    Launchers make this device current in the module's own CUDA runtime before launching."""
    if t.device.type != "cuda":
        return 0
    return t.device.index if t.device.index is not None else torch.cuda.current_device()


class ExecContext(NamedTuple):
    """csrc/common/exec.h's ``ExecContext``, as every launcher binding takes it (a plain tuple)."""

    cuda: bool
    device: int
    stream: int  # the raw cudaStream_t of the current stream on that device
    num_threads: int


def under_func_transform(*tensors: torch.Tensor) -> bool:
    """Whether a ``torch.func`` transform (grad, jacrev, vmap) wraps any of ``tensors``: the ops then run
    through an ``autograd.Function`` with ``setup_context``, the form those transforms accept (neither the
    eager path's Function nor an op's ``register_autograd`` formula is).

    Under ``torch.compile`` dynamo folds the first test to a constant, so a compiled function without
    transforms traces the registered op with no graph break. Inside ``torch.compile(torch.func.grad(f))``
    the second test breaks the graph, and dynamo runs the transform eagerly, the op through that Function
    (traced, the registered op's formula is refused under a transform and the Function cannot be vmapped);
    dynamo warns once about the untraceable calls it met."""
    return torch._C._are_functorch_transforms_active() and any(
        torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors
    )


def batch_dim_first(t: torch.Tensor, dim: int | None, size: int) -> torch.Tensor:
    """In a ``torch.vmap`` batching rule: ``t`` with the batch dimension ``dim`` moved first, or expanded to
    ``size`` entries if ``t`` is not batched (``dim`` None)."""
    return t.movedim(dim, 0) if dim is not None else t.expand(size, *t.shape)


def plain_tensors(*tensors: torch.Tensor) -> bool:
    """Whether an op may call its implementation directly instead of through the dispatcher (whose
    Python round trips cost tens of microseconds a call): plain tensors (no subclass, no torch.func
    wrapper) holding data on the CPU or a CUDA device (meta tensors take the fake implementation), no
    ``torch.compile`` tracing and no dispatch mode, which must all see the registered op."""
    return (
        not torch.compiler.is_compiling()  # first: dynamo folds it to True and traces nothing after it
        and not torch._C._len_torch_dispatch_stack()
        and all(
            type(t) is torch.Tensor
            and (t.is_cpu or t.is_cuda)
            and not torch._C._functorch.is_functorch_wrapped_tensor(t)
            for t in tensors
        )
    )


def exec_context(t: torch.Tensor) -> ExecContext:
    """Where and how a native call on ``t``'s device runs."""
    if not t.is_cuda:
        return ExecContext(False, 0, 0, num_threads())
    device = device_index(t)
    return ExecContext(True, device, torch.cuda.current_stream(device).cuda_stream, 1)


# The "no row" value of the int64 flags a CUDA kernel lowers to the first offending row.
NO_ROW = torch.iinfo(torch.int64).max


def status_error(
    exc: _C.StatusError,
    op: str,
    arguments: Sequence[str] = (),
    row_offsets: Sequence[int] = (),
    *,
    row_label: str = ROW,
) -> Exception:
    """The typed error for a failed kernel status: ``NonFiniteError`` naming ``arguments[exc.input]`` and
    the row in ``exc.detail`` (plus ``row_offsets[exc.input]``, when the kernel saw a slice of it; worded by
    ``row_label``, see :func:`~glann_ext.ops._checks.non_finite_error`),
    ``ValueError`` for an invalid argument, ``RuntimeError`` (with the CUDA error string in the message) for
    a CUDA error or a build without CUDA."""
    if exc.code == _C.StatusCode.NON_FINITE:
        i = max(0, exc.input)
        name = arguments[i] if i < len(arguments) else "input"
        offset = row_offsets[i] if i < len(row_offsets) else 0
        row = exc.detail + offset if exc.detail >= 0 else None
        return non_finite_error(name, row, op=op, row_label=row_label)
    if exc.code == _C.StatusCode.INVALID_ARGUMENT:
        return ValueError(f"{op}: {exc.message}")
    return RuntimeError(f"{op}: {exc.message}")


@contextlib.contextmanager
def native_call(
    op: str,
    t: torch.Tensor,
    *,
    arguments: Sequence[str] = (),
    row_offsets: Sequence[int] = (),
    row_label: str = ROW,
) -> Iterator[None]:
    """Around a native call on ``t``'s device: raises the NaN/Inf errors that earlier CUDA calls deferred
    and have completed (:func:`raise_deferred_errors`, without waiting), makes that CUDA device current
    (no-op on CPU) and raises a failed kernel status as the typed error (``arguments`` names the kernel's
    inputs in order, for a NaN/Inf status; ``row_offsets`` where the kernel saw a slice; ``row_label`` words
    the row, see :func:`status_error`)."""
    if _DEFERRED and not _capturing():  # no event query inside a capture
        raise_deferred_errors()
    try:
        if t.device.type == "cuda":
            with torch.cuda.device(t.device):
                yield
        else:
            yield
    except _C.StatusError as exc:
        raise status_error(exc, op, arguments, row_offsets, row_label=row_label) from None


# --------------------------------------------------------------------------------------------------
# NaN/Inf flags written by CUDA kernels, read without a host synchronisation
# --------------------------------------------------------------------------------------------------


def _capturing() -> bool:
    """Whether the current CUDA stream is capturing a graph (never, without CUDA)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


FlagsError = Callable[[list[int]], "Exception | None"]


class _Deferred(NamedTuple):
    event: torch.cuda.Event  # recorded on the stream of the kernels that wrote the flags
    host: torch.Tensor  # pinned copy of the flags, complete once the event is
    make_error: FlagsError  # the flags' values -> the error to raise, or None


_DEFERRED: list[_Deferred] = []
_DEFERRED_LOCK = threading.Lock()
# Past this many unread flags (the host running far ahead of the device), the oldest are waited for.
_MAX_DEFERRED = 1024


def nonfinite_flags(device: torch.device, count: int) -> torch.Tensor:
    """``count`` int64 flags at :data:`NO_ROW` on ``device``, for a kernel to lower to offending rows."""
    return torch.full((count,), NO_ROW, dtype=torch.int64, device=device)


def defer_flags(flags: torch.Tensor, make_error: FlagsError) -> None:
    """Reads CUDA ``flags`` later, without waiting now: an asynchronous copy to pinned host memory and an
    event on the current stream; :func:`raise_deferred_errors` raises ``make_error(values)`` once the event
    has completed. Inside CUDA-graph capture nothing is recorded: no host code runs when a graph is
    replayed, so the check does not exist there."""
    if _capturing():
        return
    host = torch.empty(flags.shape, dtype=flags.dtype, pin_memory=True)
    host.copy_(flags, non_blocking=True)
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(flags.device))
    with _DEFERRED_LOCK:
        _DEFERRED.append(_Deferred(event, host, make_error))
        overflow = len(_DEFERRED) > _MAX_DEFERRED
    if overflow:
        raise_deferred_errors(wait=True)


def raise_deferred_errors(wait: bool = False) -> None:
    """Raises the NaN/Inf error of the earliest CUDA op call whose flags show one (the others are
    dropped). ``wait=False`` looks only at calls the device has finished; ``wait=True`` waits for all."""
    wait = check_bool("raise_deferred_errors: wait", wait)
    with _DEFERRED_LOCK:
        done = [d for d in _DEFERRED if wait or d.event.query()]
        for d in done:
            _DEFERRED.remove(d)
    for d in done:
        if wait:
            d.event.synchronize()
    errors = [e for e in (d.make_error(d.host.tolist()) for d in done) if e is not None]
    if errors:
        raise errors[0]


def raise_flags(flags: torch.Tensor, make_error: FlagsError) -> None:
    """The NaN/Inf flags of one call: raised now on CPU (reading them costs nothing there), deferred on
    CUDA (:func:`defer_flags`)."""
    if flags.device.type == "cuda":
        defer_flags(flags, make_error)
        return
    error = make_error(flags.tolist())
    if error is not None:
        raise error


def require_cuda_build(t: torch.Tensor, op: str) -> None:
    if t.device.type == "cuda" and not _C.cuda_compiled:
        raise RuntimeError(
            f"{op}: got CUDA tensors but glann_ext was built without CUDA kernels. Rebuild with nvcc "
            "available (`pip install . -Ccmake.define.GLANN_EXT_CUDA=ON`) or move the tensors to the CPU."
        )

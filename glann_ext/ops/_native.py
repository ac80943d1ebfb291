"""Plumbing between torch tensors and the pointer-based native kernels.

Every native call receives raw pointers (``data_ptr()`` already includes the storage offset), sizes,
element strides and an execution context ``(cuda, device, stream, num_threads)``: the CUDA device and
current stream of the tensors, or on CPU the thread count ``torch.get_num_threads()`` so the kernels
honour torch's threading setting. A failed kernel raises ``_C.StatusError``; :func:`native_call` turns
it into the package's typed error, by its code, never by its text.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import torch

from .._ext import _C
from ._checks import non_finite_error

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


def exec_context(t: torch.Tensor) -> ExecContext:
    """Where and how a native call on ``t``'s device runs."""
    if t.device.type != "cuda":
        return ExecContext(False, 0, 0, num_threads())
    device = device_index(t)
    return ExecContext(True, device, torch.cuda.current_stream(device).cuda_stream, 1)


def status_error(exc: _C.StatusError, op: str, argument: str | None = None) -> Exception:
    """The typed error for a failed kernel status: ``NonFiniteError`` naming ``argument`` and the row in
    ``exc.detail``, ``ValueError`` for an invalid argument, ``RuntimeError`` (with the CUDA error string in
    the message) for a CUDA error or a build without CUDA."""
    if exc.code == _C.StatusCode.NON_FINITE:
        return non_finite_error(argument or "input", exc.detail if exc.detail >= 0 else None, op=op)
    if exc.code == _C.StatusCode.INVALID_ARGUMENT:
        return ValueError(f"{op}: {exc.message}")
    return RuntimeError(f"{op}: {exc.message}")


def can_read_device_flag() -> bool:
    """Whether a host may read a CUDA result now: not inside CUDA-graph capture (e.g.
    ``torch.compile(mode="reduce-overhead")``), where no synchronisation is allowed. The checks that read
    a device flag (one sync each) are skipped there."""
    return not torch.cuda.is_current_stream_capturing()


@contextlib.contextmanager
def native_call(op: str, t: torch.Tensor, *, argument: str | None = None) -> Iterator[None]:
    """Around a native call on ``t``'s device: makes that CUDA device current (no-op on CPU) and raises
    a failed kernel status as the typed error (``argument`` names the input a NaN/Inf status refers to)."""
    try:
        if t.device.type == "cuda":
            with torch.cuda.device(t.device):
                yield
        else:
            yield
    except _C.StatusError as exc:
        raise status_error(exc, op, argument) from None


def require_cuda_build(t: torch.Tensor, op: str) -> None:
    if t.device.type == "cuda" and not _C.cuda_compiled:
        raise RuntimeError(
            f"{op}: got CUDA tensors but glann_ext was built without CUDA kernels. Rebuild with nvcc "
            "available (`pip install . -Ccmake.define.GLANN_EXT_CUDA=ON`) or move the tensors to the CPU."
        )

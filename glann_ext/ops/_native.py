"""Plumbing between torch tensors and the pointer-based native kernels.

Every native call receives raw pointers (``data_ptr()`` already includes the storage offset), sizes,
element strides, the CUDA stream of the tensor's device (0 for CPU) and, on CPU, the thread count
``torch.get_num_threads()`` so the kernels honour torch's threading setting.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .._ext import _C

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


def ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def num_threads() -> int:
    return max(1, torch.get_num_threads())


def stream_of(t: torch.Tensor) -> int:
    """The raw ``cudaStream_t`` of the current stream on ``t``'s device, or 0 for CPU tensors."""
    if t.device.type != "cuda":
        return 0
    return torch.cuda.current_stream(t.device).cuda_stream


def device_index(t: torch.Tensor) -> int:
    """CUDA device ordinal of ``t`` (the current device for an index-less ``cuda``), 0 for CPU tensors.

    Launchers make this device current in the module's own CUDA runtime before launching."""
    if t.device.type != "cuda":
        return 0
    return t.device.index if t.device.index is not None else torch.cuda.current_device()


@contextlib.contextmanager
def device_guard(t: torch.Tensor) -> Iterator[None]:
    """Makes ``t``'s CUDA device current for the native call (no-op on CPU)."""
    if t.device.type == "cuda":
        with torch.cuda.device(t.device):
            yield
    else:
        yield


def require_cuda_build(t: torch.Tensor, op: str) -> None:
    if t.device.type == "cuda" and not _C.cuda_compiled:
        raise RuntimeError(
            f"{op}: got CUDA tensors but glann_ext was built without CUDA kernels. Rebuild with nvcc "
            "available (`pip install . -Ccmake.define.GLANN_EXT_CUDA=ON`) or move the tensors to the CPU."
        )

"""What the installed extension was built with, and what it can use here."""

from __future__ import annotations

import torch

from ._ext import _C
from .ops.kernels import cuda_kernels


def cuda_available() -> bool:
    """True when the CUDA kernels were compiled in and torch sees a CUDA device."""
    return bool(_C.cuda_compiled) and torch.cuda.is_available()


def build_info() -> dict[str, object]:
    """Build facts for bug reports: version, CUDA compiled in, CUDA runtime, the CUDA kernels chosen (legacy or
    hopper, :mod:`glann_ext.ops.kernels`), CPU SIMD level, threads."""
    return {
        "version": _C.__version__,
        "cuda_compiled": bool(_C.cuda_compiled),
        "cuda_runtime_version": int(_C.cuda_runtime_version()),
        "cuda_available": cuda_available(),
        "cuda_kernels": cuda_kernels(),
        "cpu_isa": _C.cpu_isa(),
        "hardware_threads": int(_C.hardware_threads()),
        "torch_threads": torch.get_num_threads(),
    }

"""Which CUDA kernels the ops run: the legacy kernels or the Hopper kernels of issue 15, per op.

``GLANN_EXT_CUDA_KERNELS`` chooses for the process: ``legacy``, ``hopper``, or ``hopper:`` followed by a
comma-separated subset of ``nn_argmin``, ``laplacian``, ``project`` (docs/GPU_KERNELS.md says what each
Hopper kernel is and when it falls back to the legacy one). The default, :data:`DEFAULT`, is
``hopper:nn_argmin,project``: the Hopper search and projection won every row of the H200 run
(benchmarks/RESULTS.md), the fused Laplacian lost at the MNIST size and stays opt-in. An unparsable value
raises ``ValueError`` when glann_ext is imported. The Hopper kernels run only on devices of compute
capability 9.0 or newer; on other devices, and on the CPU, the choice changes nothing.
:func:`use_cuda_kernels` switches within a process (tests and benchmarks compare both variants).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ._native import _C

__all__ = ["DEFAULT", "cuda_kernels", "set_cuda_kernels", "use_cuda_kernels"]

DEFAULT: str = _C.default_cuda_kernels()
"""The choice without ``GLANN_EXT_CUDA_KERNELS`` (csrc/common/kernel_variant.h's ``kDefaultHopperOps``)."""


def cuda_kernels() -> str:
    """The current choice in its canonical spelling: ``legacy``, ``hopper`` or ``hopper:OP[,OP...]``."""
    return _C.cuda_kernels()


def set_cuda_kernels(spec: str) -> None:
    """Chooses the CUDA kernels for the rest of the process (``ValueError`` for an unknown spec)."""
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a str, got {type(spec).__name__}")
    _C.set_cuda_kernels(spec)


@contextlib.contextmanager
def use_cuda_kernels(spec: str) -> Iterator[None]:
    """Runs the block with the CUDA kernels ``spec``, then restores the previous choice. Not thread-safe:
    the choice is process-wide."""
    previous = cuda_kernels()
    set_cuda_kernels(spec)
    try:
        yield
    finally:
        set_cuda_kernels(previous)


cuda_kernels()  # an unparsable GLANN_EXT_CUDA_KERNELS fails the import, not silently later
_C.cpu_isa()  # so does an unknown GLANN_EXT_CPU_ISA

"""What the installed extension was built with, and what it can use here.

OpenMP threads on a shared CPU. torch's CPU wheels run their intra-op parallelism on a bundled GNU libgomp,
whose threads spin for a while after every parallel region (OMP_WAIT_POLICY unset: about 300,000 spins,
GOMP_SPINCOUNT). When another process holds a core, the spinning threads take the time slices the thread
they wait for needs: a GLO epoch with ``--threads 2`` beside one busy process took 5.6 s against 0.9 s with
1 thread, for the fused and the reference ops alike (``python -m benchmarks.bench_contention``); with
``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at once) it took 1.0 s. libgomp reads the variable once, when torch
loads it, so this module sets ``OMP_WAIT_POLICY=PASSIVE`` unless it is already set, before it imports torch.
That holds whenever glann_ext is imported before torch (the ``glann`` command, scripts that import glann_ext
first); a program that imports torch first keeps torch's default, and :func:`build_info` says which applies.
Set ``OMP_WAIT_POLICY=ACTIVE`` to keep spinning threads on a machine of your own.
"""

from __future__ import annotations

import os
import sys
import warnings

__version__ = "0.3.12"  # as pyproject.toml says (tests/test_packaging.py); glann_ext.__version__

# Whether torch (and its libgomp) was loaded before this package, so that the default below came too late.
_TORCH_LOADED_FIRST = "torch" in sys.modules
if not _TORCH_LOADED_FIRST:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The policy as libgomp read it (a later change of the environment does not reach the running threads).
_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")

import torch  # noqa: E402 (after the OpenMP default: libgomp reads it when torch loads it)

from ._ext import _C  # noqa: E402 (imports torch)


def stale_module_message(built: str, package: str, where: str) -> str | None:
    """What to tell a user whose compiled module ``_C`` (``where``) was built from another release than the
    Python files import it (an editable or in-place build left from before a ``git pull``): its kernels and
    their arguments may not be the ones the Python code calls. None when they match, or for an in-place
    build (``scripts/dev_build.sh``: version ``dev``, which the developer rebuilds by hand)."""
    if built in ("dev", package):
        return None
    return (
        f"glann_ext {package}: its compiled module {where} was built from version {built}, so its kernels may "
        "not match the Python code; rebuild it (`pip install .`, or for an editable install "
        "`pip install -e . --no-build-isolation`)"
    )


_STALE = stale_module_message(str(_C.__version__), __version__, str(getattr(_C, "__file__", "_C")))
if _STALE is not None:
    warnings.warn(_STALE, RuntimeWarning, stacklevel=1)


# after the version check: a stale module may lack a binding that this import reads
from .ops.kernels import cuda_kernels  # noqa: E402 (imports torch)


def cuda_available() -> bool:
    """True when the CUDA kernels were compiled in and torch sees a CUDA device."""
    return bool(_C.cuda_compiled) and torch.cuda.is_available()


def omp_wait_policy() -> str:
    """The OpenMP wait policy torch's threads run with, for people: the environment's ``OMP_WAIT_POLICY`` when
    this module loaded (``"default"`` if unset: spinning), as the module docstring explains."""
    policy = _WAIT_POLICY or "default"
    return policy if not _TORCH_LOADED_FIRST else f"{policy} (torch was imported before glann_ext)"


def build_info() -> dict[str, object]:
    """Build facts for bug reports: version, CUDA compiled in, CUDA runtime, the CUDA kernels chosen (legacy or
    hopper, :mod:`glann_ext.ops.kernels`; None without CUDA kernels), the CPU's SIMD level (``cpu_isa``) and
    the copy each CPU kernel family runs (``cpu_kernels``: nn_argmin and the Laplacian have AVX-512, AVX2 and
    baseline copies, the sphere kernels AVX2 and baseline, so an AVX-512 CPU runs their AVX2 copy), threads,
    and OpenMP's wait policy."""
    compiled = bool(_C.cuda_compiled)
    return {
        "version": _C.__version__,
        "cuda_compiled": compiled,
        "cuda_runtime_version": int(_C.cuda_runtime_version()),
        "cuda_available": cuda_available(),
        "cuda_kernels": cuda_kernels() if compiled else None,  # a CPU-only build runs none
        "cpu_isa": _C.cpu_isa(),
        # the SIMD copy each kernel family runs (a family without an AVX-512 copy runs its AVX2 one)
        "cpu_kernels": {
            "nn_argmin": _C.nn_argmin_cpu_path(),
            "laplacian": _C.laplacian_cpu_path(),
            "sphere": _C.sphere_cpu_path(),
        },
        "hardware_threads": int(_C.hardware_threads()),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": omp_wait_policy(),
    }

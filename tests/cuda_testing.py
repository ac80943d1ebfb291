"""Helpers of the CUDA test files (``tests/test_cuda_*.py``): input layouts, a side stream held behind a
sleep, CUDA-graph capture, error and tolerance checks. Nothing here touches CUDA at import time, so the test
files import (and skip) cleanly on a machine without a GPU."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch

DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "fp16": torch.float16, "bf16": torch.bfloat16}
LOW_PRECISION = ("fp16", "bf16")

# torch.cuda._sleep spins this many SM clock cycles: ~34 ms at the H200's 1.98 GHz boost clock (~0.2 s if
# the clock stayed at its 345 MHz idle value). Every op call below takes well under that on the host.
SLEEP_CYCLES = 1 << 26


def layout(t: torch.Tensor, how: str) -> torch.Tensor:
    """The values of ``t`` (2-D or 4-D) in a new tensor with another memory layout."""
    if how == "contiguous":
        return t.contiguous()
    if how == "strided":  # every other element of a wider last dimension, starting one element in
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1] + 1, dtype=t.dtype, device=t.device)
        wide[..., 1::2] = t
        return wide[..., 1::2]
    if how == "transposed":  # the last two dimensions swapped in memory (column-major rows or planes)
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if how == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    raise ValueError(how)


def need_free_memory(nbytes: float) -> None:
    free, _total = torch.cuda.mem_get_info()
    if free < nbytes:
        pytest.skip(f"needs {nbytes / 2**30:.1f} GiB of free device memory, {free / 2**30:.1f} GiB free")


def _snapshot(out):
    if isinstance(out, torch.Tensor):
        return out.detach().clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_snapshot(o) for o in out)
    return out


def behind_sleep(write_inputs: Callable[[], None], op: Callable[[], object]):
    """Runs ``write_inputs()`` then ``op()`` on a side stream and returns clones of op's outputs taken on that
    stream right after it, on the CPU. Two sleeps make a launch on the wrong stream come out wrong:

    * the side stream first sleeps, so the inputs are written only well after the host has launched op's
      kernels: a kernel on a stream that does not wait for the side stream reads the poison the caller left
      in the input buffers (unless the Python layer synchronises before its launch);
    * the default stream sleeps 4x as long, so a kernel launched on it (or on the legacy stream 0) runs only
      after the clones were taken, even where the Python layer synchronises before the launch.
    """
    # No empty_cache(): the caching allocator keeps freed blocks per stream, so blocks that held results
    # computed on the default stream are never handed to the side stream; emptying the cache would let
    # cudaMalloc return that memory, contents and all, to the op under test.
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(torch.cuda.default_stream()):
        torch.cuda._sleep(4 * SLEEP_CYCLES)
    with torch.cuda.stream(side):
        torch.cuda._sleep(SLEEP_CYCLES)
        write_inputs()
        snap = _snapshot(op())
    side.synchronize()
    torch.cuda.synchronize()
    return to_cpu(snap)


def to_cpu(out):
    if isinstance(out, torch.Tensor):
        return out.cpu()
    if isinstance(out, (tuple, list)):
        return type(out)(to_cpu(o) for o in out)
    return out


def capture(fn: Callable[[], object]):
    """``fn()`` captured in a CUDA graph after two warm-up calls on a side stream (as torch.cuda.graph's docs
    ask); returns the graph and the static outputs of the captured call, which each replay rewrites."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def reported_row(exc: BaseException) -> int | None:
    """The lowest non-finite row an error reports: ``NonFiniteError.row``, or the ``row N`` of the message."""
    row = getattr(exc, "row", None)
    if row is not None:
        return int(row)
    m = re.search(r"\brow (\d+)", str(exc))
    return int(m.group(1)) if m else None


def assert_low_precision_close(ours: torch.Tensor, exact: torch.Tensor, torch_low: torch.Tensor, atol=0.0):
    """STYLE.md's rule for float16/bfloat16: our largest error against the float64 result is at most twice
    that of the torch reference run in the same low precision (``atol`` covers both being exact)."""
    err = (ours.double().cpu() - exact.double().cpu()).abs().max().item()
    err_torch = (torch_low.double().cpu() - exact.double().cpu()).abs().max().item()
    assert err <= 2 * err_torch + atol, f"error {err:.3g} > 2 x torch's {err_torch:.3g} (+{atol:g})"


def loss_and_grads(fn, x: torch.Tensor, y: torch.Tensor, seed: torch.Tensor, **kw):
    """``(loss, d<seed, loss>/dx, d<seed, loss>/dy)`` of ``fn(x, y, reduction="none", **kw)``, on leaf views
    of x and y (same storage and strides: the layout under test is kept)."""
    x, y = x.detach().requires_grad_(), y.detach().requires_grad_()
    loss = fn(x, y, reduction="none", **kw)
    return (loss.detach(), *torch.autograd.grad(loss, (x, y), seed.to(loss.dtype)))

"""Device plumbing shared by the bench files: the ``cpu``/``cuda`` parameters, synchronised timing and
memory figures.

Every benchmark is parametrised by ``DEVICES``, whose ids are ``cpu`` and ``cuda``: ``-k cuda`` selects the
CUDA rows of every op, ``-k cpu`` the CPU rows. Without a usable GPU the CUDA rows skip with the reason.
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Callable, Iterable, Iterator

import pytest
import torch

import glann_ext

from ._memory import peak_extra_mib


def _cuda_skip_reason() -> str | None:
    if not glann_ext.build_info()["cuda_compiled"]:
        return "glann_ext was built without CUDA kernels"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


CUDA_SKIP = _cuda_skip_reason()
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(CUDA_SKIP is not None, reason=str(CUDA_SKIP))),
]


def device_params(rows_of: Callable[[str], Iterable[tuple]], name: Callable[[tuple], str]) -> list:
    """pytest params ``(device, *row)`` for every device and every row of ``rows_of(device)``, with the id
    ``<device>-<name(row)>`` and the device's skip mark."""
    return [
        pytest.param(dev.values[0], *row, id=f"{dev.id}-{name(row)}", marks=dev.marks)
        for dev in DEVICES
        for row in rows_of(dev.values[0])
    ]


def sync(device: str) -> None:
    """Waits for the device: CUDA work is asynchronous, so every timed call ends with this."""
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> Callable[[], object]:
    """``fn`` followed by a device synchronisation (what pytest-benchmark should time)."""

    def run():
        out = fn()
        sync(device)
        return out

    return run


def calibrated_iterations(run: Callable[[], object], min_round_s: float = 0.05) -> int:
    """Calls per round so that a round of ``run`` lasts at least ``min_round_s`` (as pytest-benchmark's own
    calibration does): the median of single ~1 ms calls measures mostly timer granularity and whether the
    thread pool was awake, and drifted by 30% between processes; back-to-back calls do not."""
    start = time.perf_counter()
    run()
    return max(1, math.ceil(min_round_s / max(time.perf_counter() - start, 1e-6)))


def rate(amount: float, seconds: float) -> float:
    """``amount / seconds`` in units of 1e9 (GFLOP/s, GB/s), to 4 significant digits."""
    return float(f"{amount / seconds / 1e9:.4g}")


def fresh(device: str) -> None:
    """Drops cached blocks left by the previous benchmark (a 40 GB cdist matrix, say) before the next one."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def peak_extra(fn: Callable[[], object], device: str) -> float | None:
    """Peak extra memory (MiB) of one call: resident memory on CPU, allocated device memory on CUDA."""
    if device != "cuda":
        return peak_extra_mib(fn)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del out
    return max(0, peak - before) / 2**20


def skip_unless_fits(nbytes: int, device: str, what: str, cpu_limit: int = 4 << 30) -> None:
    """Skips a baseline that materialises ``nbytes`` when that exceeds a safe share of the memory: 4 GiB on
    CPU (as before), 40% of the free device memory on CUDA (the caching allocator and the inputs need the
    rest; the 100k x 100k float32 distance matrix, 40 GB, fits an H200's 139 GB)."""
    if device == "cuda":
        free, _total = torch.cuda.mem_get_info()
        if nbytes > 0.4 * free:
            pytest.skip(f"{what} would materialise {nbytes / 2**30:.1f} GiB; {free / 2**30:.0f} GiB free")
    elif nbytes > cpu_limit:
        pytest.skip(f"{what} would materialise a {nbytes / 2**30:.0f} GiB matrix")


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """``torch.set_float32_matmul_precision`` for the block: "highest" is IEEE float32, "high" allows TF32."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def input_sets(
    make: Callable[[int], object], bytes_per_set: int, device: str, floor: int = 256 << 20
) -> list:
    """Several input sets on CUDA, together at least ``floor`` bytes (4x an H200's 60 MB L2), so that rounds
    that cycle through them read HBM, not the L2; one set on CPU (as the CPU tables were measured)."""
    count = 1 if device != "cuda" else max(1, min(16, -(-floor // max(1, bytes_per_set))))
    return [make(i) for i in range(count)]


class Cycle:
    """Calls ``fn(item)`` on the next item of ``items`` at each call (rotating input sets)."""

    def __init__(self, items: list, fn: Callable[[object], object]) -> None:
        self.items, self.fn, self.i = items, fn, 0

    def __call__(self) -> object:
        item = self.items[self.i % len(self.items)]
        self.i += 1
        return self.fn(item)


def cuda_graphs(fns: list[Callable[[], object]]) -> list[Callable[[], None]]:
    """Each of ``fns`` captured once in a CUDA graph, all graphs in one memory pool (one set of buffers
    for several input sets); returns their ``replay`` methods. Timing replays leaves out the Python and
    launch overhead of the calls: the device time alone. Warm-up runs on a side stream first, as
    ``torch.cuda.graph`` asks (lazy initialisation, cuBLAS workspaces, autograd state)."""
    warm = torch.cuda.Stream()
    warm.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warm):
        for fn in fns:
            fn()
    torch.cuda.current_stream().wait_stream(warm)
    graphs: list[torch.cuda.CUDAGraph] = []
    for fn in fns:
        graphs.append(torch.cuda.CUDAGraph())
        with torch.cuda.graph(graphs[-1], pool=graphs[0].pool() if len(graphs) > 1 else None):
            fn()
    return [g.replay for g in graphs]

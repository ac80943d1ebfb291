"""nn_argmin against torch and faiss on the same data (pytest-benchmark).

    pytest benchmarks/bench_nn_argmin.py --benchmark-group-by=group --benchmark-columns=median,rounds

Each row records GFLOP/s (2*N*M*D / median time) and the peak extra resident memory in extra_info.
"""

from __future__ import annotations

import pytest
import torch

import glann_ext
from glann_ext.ops import reference

from ._memory import peak_extra_mib

SHAPES = [(4096, 40960, 64), (20000, 200000, 64), (2048, 20480, 784)]
# cdist materialises N x M float32: skip where that alone exceeds this many bytes.
CDIST_LIMIT_BYTES = 4 << 30


def _faiss_search(keys: torch.Tensor):
    faiss = pytest.importorskip("faiss")
    index = faiss.IndexFlatL2(keys.shape[1])
    index.add(keys.numpy())
    return lambda q: index.search(q.numpy(), 1)


def _methods(device: str):
    methods = {
        "glann_ext": lambda q, k: glann_ext.nn_argmin(q, k),
        "torch_addmm_tiled": lambda q, k: reference.nn_argmin_addmm(q, k),
        "torch_cdist_argmin": lambda q, k: reference.nn_argmin_cdist(q, k),
    }
    if device == "cpu":
        methods["faiss_IndexFlatL2"] = None  # built per data set (the index owns a copy of the keys)
    return methods


def _devices():
    devs = ["cpu"]
    if glann_ext.cuda_available():
        devs.append("cuda")
    return devs


CASES = [(dev, shape, name) for dev in _devices() for shape in SHAPES for name in _methods(dev)]


@pytest.mark.parametrize(
    "device,shape,method", CASES, ids=[f"{d}-{s[0]}x{s[1]}x{s[2]}-{m}" for d, s, m in CASES]
)
def bench_nn_argmin(benchmark, device: str, shape: tuple[int, int, int], method: str) -> None:
    n, m, d = shape
    if method == "torch_cdist_argmin" and n * m * 4 > CDIST_LIMIT_BYTES:
        pytest.skip(f"cdist would materialise a {n * m * 4 / 2**30:.0f} GiB matrix")
    g = torch.Generator().manual_seed(0)
    q = torch.randn(n, d, generator=g).to(device)
    k = torch.randn(m, d, generator=g).to(device)
    fn = _methods(device)[method]
    if method == "faiss_IndexFlatL2":
        search = _faiss_search(k)
        fn = lambda q, k: search(q)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        out = fn(q, k)
        sync()
        return out

    benchmark.group = f"nn_argmin {device} N={n} M={m} D={d}"
    run()  # warm-up (thread pool, CUDA context, faiss index)
    mem = peak_extra_mib(run) if device == "cpu" else None
    benchmark.pedantic(run, rounds=3 if n * m * d > 1e11 else 5, iterations=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        gflops=round(2 * n * m * d / median / 1e9, 1),
        peak_extra_mib=None if mem is None else round(mem, 1),
        threads=torch.get_num_threads(),
    )

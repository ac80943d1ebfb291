"""nn_argmin against torch (and faiss on CPU) on the same data (pytest-benchmark), on CPU and CUDA.

    pytest benchmarks/bench_nn_argmin.py --benchmark-group-by=group --benchmark-columns=median,rounds
    pytest benchmarks/bench_nn_argmin.py -k cuda ...     # the CUDA rows only

One group per device and shape (N queries, M keys, D). Methods:

* ``glann_ext``: ``nn_argmin`` on float32 (default arguments: includes its NaN/Inf check of the inputs);
  on CUDA also ``glann_ext_bf16`` on the same data rounded to bfloat16 (the target: 5x the float32 path),
  and ``glann_ext_hopper`` / ``glann_ext_hopper_bf16``, the same calls on the Hopper kernels of issue 15
  (tensor cores, ``glann_ext.ops.kernels``; the other rows run the legacy kernels).
* ``torch_cdist_argmin``: ``torch.cdist(q, k).argmin(1)``, float32 (IEEE: matmul precision "highest"); it
  materialises the N x M matrix (skipped past 4 GiB on CPU, past 40% of the free memory on CUDA).
* ``torch_addmm_tiled``: ``reference.nn_argmin_addmm`` (``||k||^2 - 2 q.k`` in 8192-key tiles, running
  minimum), float32 IEEE.
* CUDA only, untiled ``addmm(||k||^2, q, k.T, alpha=-2).argmin(1)``: ``torch_addmm_argmin_tf32`` (float32
  inputs, TF32 tensor cores) and ``torch_addmm_argmin_bf16`` (bfloat16 inputs and scores): the tensor-core
  speed a fused kernel competes with.
* CPU only, ``faiss_IndexFlatL2`` (skipped when faiss is not installed), and at D >= 256
  ``glann_ext_1thread``: the same call on one thread, whose share of one core's peak a second busy vCPU
  cannot distort.

Each row records GFLOP/s (2*N*M*D / median time) and the peak extra memory (resident on CPU, allocated on
CUDA) in extra_info; CPU rows also ``pct_fma_peak``, the GFLOP/s as a share of the float32 FMA peak of the
threads used, measured by :mod:`benchmarks.fma_peak` (clock x FMA/cycle x 8 lanes x 2), from the median and
(``pct_fma_peak_best``) from the best round, as the peak itself is a best of 5. ``glann_ext_f64`` is
the float64 path on the same data (its own peak is half the float32 one). CUDA calls end with
``torch.cuda.synchronize()``.

Before it is timed, every row's output (of its warm-up call, on the row's own inputs: bfloat16 rows on the
bfloat16 data) is checked by :func:`check_argmin` against a float64 ``torch.cdist`` search of the same
inputs for ``CHECK_QUERIES`` queries spread over the N (the first and the last included): an index must
equal the float64 argmin, or, where the row's score rounding may order a near-tie differently, the exact
squared distance of the chosen key must be within ``TOLERANCE[precision] * (|q|^2 + |k|^2)`` of the true
minimum (float64 rows 1e-12; float32, 3xTF32, and bfloat16 inputs searched in float32 1e-5, a hundred times
the rounding nn_argmin documents; TF32 products 2e-3; bfloat16 scores 2e-2). With ``--benchmark-disable``
each row runs its check and one call, untimed (see benchmarks/conftest.py).
"""

from __future__ import annotations

import pytest
import torch

import glann_ext
from glann_ext.ops import reference
from glann_ext.ops.kernels import use_cuda_kernels

from ._device import device_params, fresh, matmul_precision, peak_extra, rate, skip_unless_fits, timed
from .fma_peak import peak_gflops

SHAPES = {
    "cpu": [(4096, 40960, 64), (20000, 200000, 64), (2048, 20480, 784)],
    # GLANN sizes, then 100k x 100k at the latent size and at MNIST's pixel count.
    "cuda": [
        (4096, 40960, 64),
        (20000, 200000, 64),
        (2048, 20480, 784),
        (100000, 100000, 64),
        (100000, 100000, 784),
    ],
}
METHODS = {
    "cpu": [
        "glann_ext",
        "glann_ext_1thread",
        "glann_ext_f64",
        "torch_addmm_tiled",
        "torch_cdist_argmin",
        "faiss_IndexFlatL2",
    ],
    "cuda": [
        "glann_ext",
        "glann_ext_bf16",
        "glann_ext_hopper",
        "glann_ext_hopper_bf16",
        "torch_cdist_argmin",
        "torch_addmm_tiled",
        "torch_addmm_argmin_tf32",
        "torch_addmm_argmin_bf16",
    ],
}
# The baselines that materialise the N x M score matrix, with its element size.
MATERIALISED = {"torch_cdist_argmin": 4, "torch_addmm_argmin_tf32": 4, "torch_addmm_argmin_bf16": 2}


def _addmm_argmin(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """argmin_j ||k_j||^2 - 2 q.k_j with one untiled addmm in the inputs' dtype."""
    norms = (k.float() * k.float()).sum(1).to(k.dtype)
    return torch.addmm(norms.unsqueeze(0), q, k.t(), alpha=-2.0).argmin(1)


def _faiss_search(keys: torch.Tensor):
    faiss = pytest.importorskip("faiss")
    index = faiss.IndexFlatL2(keys.shape[1])
    index.add(keys.numpy())
    return lambda q: index.search(q.numpy(), 1)


def _one_thread(fn):
    """``fn`` run with one intra-op thread (the pool's size restored after each call)."""

    def run():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(threads)

    return run


def _inputs(method: str, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The row's own inputs: ``q``, ``k`` (float32) converted to the dtype ``method`` searches (untimed)."""
    if method == "glann_ext_f64":
        return q.double(), k.double()
    if method in ("glann_ext_bf16", "glann_ext_hopper_bf16", "torch_addmm_argmin_bf16"):
        return q.bfloat16(), k.bfloat16()
    return q, k


def _call(method: str, q: torch.Tensor, k: torch.Tensor):
    """The timed callable of ``method`` on its own inputs ``q``, ``k`` (from :func:`_inputs`); it returns the
    (N,) indices, or faiss's (distances, indices) pair."""
    if method in (
        "glann_ext",
        "glann_ext_hopper",
        "glann_ext_f64",
        "glann_ext_bf16",
        "glann_ext_hopper_bf16",
    ):
        return lambda: glann_ext.nn_argmin(q, k)
    if method == "glann_ext_1thread":
        return _one_thread(lambda: glann_ext.nn_argmin(q, k))
    if method == "torch_cdist_argmin":
        return lambda: reference.nn_argmin_cdist(q, k)
    if method == "torch_addmm_tiled":
        return lambda: reference.nn_argmin_addmm(q, k)
    if method in ("torch_addmm_argmin_tf32", "torch_addmm_argmin_bf16"):
        return lambda: _addmm_argmin(q, k)
    if method == "faiss_IndexFlatL2":
        search = _faiss_search(k)  # built per data set (the index owns a copy of the keys)
        return lambda: search(q)
    raise ValueError(method)


# The check (see the module docstring): queries checked per row, and the tolerance of each score precision.
CHECK_QUERIES = 128
TOLERANCE = {"float64": 1e-12, "float32": 1e-5, "tf32": 2e-3, "bf16_scores": 2e-2}


def _precision(method: str) -> str:
    """How ``method`` rounds its scores: the key of :data:`TOLERANCE`."""
    if method == "glann_ext_f64":
        return "float64"
    if method == "torch_addmm_argmin_tf32":
        return "tf32"
    if method == "torch_addmm_argmin_bf16":
        return "bf16_scores"
    return "float32"  # float32 IEEE or 3xTF32; glann's bfloat16 inputs are searched in float32


def check_argmin(out, q: torch.Tensor, k: torch.Tensor, precision: str, queries: int = CHECK_QUERIES) -> None:
    """Raises AssertionError unless ``out`` (the row's output: (N,) indices, or faiss's (D, I)) holds, for
    ``queries`` queries spread over ``q`` (the first and the last included), the float64 argmin of
    ``torch.cdist(q, k)``, or a key whose exact squared distance is within ``TOLERANCE[precision] *
    (|q|^2 + |k|^2)`` of the minimum (a near-tie the row's score rounding may order differently)."""
    if isinstance(out, tuple):  # faiss: (distances, indices), (N, 1) numpy arrays
        out = torch.from_numpy(out[1][:, 0].copy())
    n, m = q.shape[0], k.shape[0]
    assert tuple(out.shape) == (n,), f"output shape {tuple(out.shape)}, expected ({n},)"
    assert not out.dtype.is_floating_point, f"output dtype {out.dtype}, expected integer indices"
    rows = torch.linspace(0, n - 1, min(n, queries), device=q.device).round().long().unique()
    got = out.to(q.device)[rows].long()
    assert bool(((got >= 0) & (got < m)).all()), f"indices outside [0, {m})"
    qs, kd = q[rows].double(), k.double()
    want = torch.cdist(qs, kd).argmin(1)
    d_min = ((qs - kd[want]) ** 2).sum(1)  # exact distances (direct differences, float64)
    d_got = ((qs - kd[got]) ** 2).sum(1)
    scale = (qs * qs).sum(1) + torch.maximum((kd[got] ** 2).sum(1), (kd[want] ** 2).sum(1))
    bad = (got != want) & ((d_got - d_min).abs() > TOLERANCE[precision] * scale)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise AssertionError(
            f"{int(bad.sum())} of {rows.numel()} checked queries have a wrong nearest key (precision "
            f"{precision}); query {int(rows[i])}: index {int(got[i])} at squared distance {float(d_got[i]):.6g}, "
            f"float64 argmin {int(want[i])} at {float(d_min[i]):.6g}"
        )


CASES = device_params(
    lambda dev: [(shape, method) for shape in SHAPES[dev] for method in METHODS[dev]],
    lambda row: "x".join(map(str, row[0])) + "-" + row[1],
)


@pytest.mark.parametrize(("device", "shape", "method"), CASES)
def bench_nn_argmin(benchmark, device: str, shape: tuple[int, int, int], method: str) -> None:
    n, m, d = shape
    if method == "glann_ext_1thread" and d < 256:
        pytest.skip("the one-thread row is for the FMA-peak target, D >= 256")
    if method in MATERIALISED:
        skip_unless_fits(n * m * MATERIALISED[method], device, method)
    fresh(device)
    g = torch.Generator(device).manual_seed(0)  # drawn where they are used (100k x 784 on one CPU core: ~1 s)
    q = torch.randn(n, d, generator=g, device=device)
    k = torch.randn(m, d, generator=g, device=device)
    precision = "high" if method.endswith("_tf32") else "highest"
    benchmark.group = f"nn_argmin {device} N={n} M={m} D={d}"
    qx, kx = _inputs(method, q, k)
    with matmul_precision(precision), use_cuda_kernels("hopper" if "hopper" in method else "legacy"):
        run = timed(_call(method, qx, kx), device)
        out = run()  # warm-up (thread pool, CUDA context and kernels, cuBLAS handles, faiss index)
        # the memory figure first, while the check's float64 copies (which the allocator may keep) do not exist
        mem = None if benchmark.disabled else peak_extra(run, device)
        check_argmin(out, qx, kx, _precision(method))  # the warm-up's output, before anything is timed
        del out
        if benchmark.disabled:  # --benchmark-disable: the checked call and pedantic's one call, no figures
            benchmark.pedantic(run)
            return
        big = n * m * d > (2e12 if device == "cuda" else 1e11)
        benchmark.pedantic(run, rounds=3 if big else (10 if device == "cuda" else 5), iterations=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        gflops=rate(2 * n * m * d, median),
        peak_extra_mib=None if mem is None else round(mem, 1),
    )
    if device == "cpu":
        threads = 1 if method == "glann_ext_1thread" else torch.get_num_threads()
        benchmark.extra_info["threads"] = threads
        peak = peak_gflops(threads)
        if peak is not None:
            scale = 2 if method == "glann_ext_f64" else 1
            gflops = benchmark.extra_info["gflops"] * scale
            benchmark.extra_info["pct_fma_peak"] = round(100 * gflops / peak, 1)
            # best round too: the peak is a best of 5, and on a shared 2-vCPU machine other work only slows
            best = rate(2 * n * m * d, benchmark.stats.stats.min) * scale
            benchmark.extra_info["pct_fma_peak_best"] = round(100 * best / peak, 1)

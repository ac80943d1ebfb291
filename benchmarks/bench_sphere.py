"""Benchmarks of the sphere kernels against named torch baselines, run in the same session, CPU and CUDA.

    pytest benchmarks/bench_sphere.py --benchmark-group-by=group --benchmark-columns=min,median,mean
    pytest benchmarks/bench_sphere.py -k cuda ...     # the CUDA rows only

Groups (one per device and size):
* ``latent step``: one optimizer step of a (60000, 64) float32 latent table for a batch of B rows. Baselines:
  ``glann_ext.ops.reference.fused_latent_adam_reference`` (``torch.optim.SparseAdam``'s functional step on
  the sparse grad, then re-projection of the touched rows: the reference step, written once) and dense
  ``torch.optim.Adam`` over the whole table plus a full re-projection (what reference GLANN code does).
* ``project``: float32 rows to unit norm; (1_000_000, 64) on both devices, and on CUDA also (100_000, 784)
  and (10_000_000, 64). Baselines: ``z / z.norm(dim=1, keepdim=True)``, ``torch.nn.functional.normalize``
  and ``z.clone()`` (the copy bound an out-of-place pass can reach: the target is 70% of its bandwidth).
  On CUDA the glann rows also run on the Hopper kernels of issue 15 (``(hopper)``: 16-byte loads, several
  rows per warp; ``glann_ext.ops.kernels``); the other glann rows run the legacy kernel.
  Every row records ``gbps``: bytes read plus bytes written (2 x numel x 4) over the median time.
CUDA calls end with ``torch.cuda.synchronize()``. The latent-step groups run first: after the 256 MB
projection buffers have come and gone, the allocator state made torch's SparseAdam steps ~100x slower in
the same process on the CPU machine.
"""

from __future__ import annotations

import pytest
import torch

from glann_ext import SphereSparseAdam, project_to_sphere, project_to_sphere_
from glann_ext.ops.kernels import use_cuda_kernels
from glann_ext.ops.reference import fused_latent_adam_reference

from ._device import device_params, fresh, rate, timed

# --------------------------------------------------------------------------------------------------
# Fused latent step
# --------------------------------------------------------------------------------------------------

N_CODES, DIM = 60_000, 64


def _unit(n: int, d: int, device: str) -> torch.Tensor:
    t = torch.randn(n, d, device=device)
    return t / t.norm(dim=1, keepdim=True)


def _batches(b: int, device: str, k: int = 16):
    gen = torch.Generator().manual_seed(b)
    return [
        (torch.randperm(N_CODES, generator=gen)[:b].to(device), torch.randn(b, DIM, generator=gen).to(device))
        for _ in range(k)
    ]


def _cycling(b: int, device: str, apply):
    """A step that applies ``apply(idx, grad, step_number)`` to the next of 16 fixed batches."""
    batches, it = _batches(b, device), [0]

    def step():
        idx, g = batches[it[0] % len(batches)]
        it[0] += 1
        apply(idx, g, it[0])

    return step


def _glann_step(b: int, device: str):
    opt = SphereSparseAdam(_unit(N_CODES, DIM, device), lr=1e-3)
    return _cycling(b, device, lambda idx, g, _n: opt.step(idx, g))


def _reference_step(b: int, device: str):
    table = _unit(N_CODES, DIM, device)
    exp_avg, exp_avg_sq = torch.zeros_like(table), torch.zeros_like(table)
    return _cycling(
        b,
        device,
        lambda idx, g, n: fused_latent_adam_reference(table, exp_avg, exp_avg_sq, idx, g, step=n, lr=1e-3),
    )


def _dense_adam_step(b: int, device: str):
    param = torch.nn.Parameter(_unit(N_CODES, DIM, device))
    opt = torch.optim.Adam([param], lr=1e-3)

    def apply(idx, g, _n):
        grad = torch.zeros_like(param)
        grad.index_add_(0, idx, g)
        param.grad = grad
        opt.step()
        with torch.no_grad():
            param.div_(param.norm(dim=1, keepdim=True))

    return _cycling(b, device, apply)


# Display name (the report's method column) -> (pytest id, step factory).
STEP_CASES = {
    "glann SphereSparseAdam.step": ("glann_adam", _glann_step),
    "torch SparseAdam reference + reproject rows": ("torch_sparse_adam_reference", _reference_step),
    "torch dense Adam + reproject table": ("torch_dense_adam", _dense_adam_step),
}


@pytest.mark.parametrize(
    ("device", "batch", "name"),
    device_params(
        lambda _dev: [(batch, name) for batch in (128, 4096) for name in STEP_CASES],
        lambda row: f"batch{row[0]}-{STEP_CASES[row[1]][0]}",
    ),
)
def test_latent_step(benchmark, device, batch, name):
    benchmark.group = f"latent step {device} ({N_CODES} x {DIM} table, batch {batch})"
    fresh(device)
    step = STEP_CASES[name][1](batch, device)
    rounds = 200 if "dense" not in name else 20
    benchmark.pedantic(timed(step, device), rounds=rounds, warmup_rounds=3)


# --------------------------------------------------------------------------------------------------
# Projection
# --------------------------------------------------------------------------------------------------

PROJECT_SHAPES = {"cpu": [(1_000_000, 64)], "cuda": [(1_000_000, 64), (100_000, 784), (10_000_000, 64)]}

PROJECT_CASES = {
    "glann project_to_sphere": ("glann_project", lambda z: project_to_sphere(z)),
    "glann project_to_sphere_ (in place)": ("glann_project_inplace", lambda z: project_to_sphere_(z)),
    "torch z / z.norm(dim=1)": ("torch_div_norm", lambda z: z / z.norm(dim=1, keepdim=True)),
    "torch F.normalize": ("torch_F_normalize", lambda z: torch.nn.functional.normalize(z, dim=1)),
    "torch clone (memcpy bound)": ("torch_clone", lambda z: z.clone()),
}
HOPPER_CASES = {  # CUDA only
    "glann project_to_sphere (hopper)": ("glann_hopper_project", lambda z: project_to_sphere(z)),
    "glann project_to_sphere_ (in place, hopper)": (
        "glann_hopper_project_inplace",
        lambda z: project_to_sphere_(z),
    ),
}
ALL_CASES = {**PROJECT_CASES, **HOPPER_CASES}

_ROWS: dict[tuple, torch.Tensor] = {}


def _rows(device: str, shape: tuple[int, int]) -> torch.Tensor:
    """One random tensor per device and shape, shared by the methods of a group (made once)."""
    if (device, shape) not in _ROWS:
        _ROWS.clear()  # the previous group's rows are no longer needed
        fresh(device)
        torch.manual_seed(0)
        _ROWS[device, shape] = torch.randn(shape, device=device)
    return _ROWS[device, shape]


@pytest.mark.parametrize(
    ("device", "shape", "name"),
    device_params(
        lambda dev: [
            (shape, name)
            for shape in PROJECT_SHAPES[dev]
            for name in (ALL_CASES if dev == "cuda" else PROJECT_CASES)
        ],
        lambda row: f"{row[0][0]}x{row[0][1]}-{ALL_CASES[row[1]][0]}",
    ),
)
def test_project(benchmark, device, shape, name):
    benchmark.group = f"project {device} ({shape[0]:.0e} x {shape[1]} float32)".replace("e+0", "e")
    rows = _rows(device, shape)
    fn = ALL_CASES[name][1]
    with use_cuda_kernels("hopper" if name in HOPPER_CASES else "legacy"):
        benchmark.pedantic(
            timed(lambda: fn(rows), device), rounds=7 if device == "cpu" else 20, warmup_rounds=1
        )
    benchmark.extra_info["gbps"] = rate(2 * rows.numel() * 4, benchmark.stats.stats.median)

"""Benchmarks of the sphere kernels against named torch baselines, run in the same session.

    PYTHONPATH=. pytest benchmarks/bench_sphere.py --benchmark-group-by=group --benchmark-columns=min,median,mean

Groups:
* ``project``: (1_000_000, 64) float32 rows to unit norm. Baselines: ``z / z.norm(dim=1, keepdim=True)``,
  ``torch.nn.functional.normalize`` and ``z.clone()`` (the memcpy bound an out-of-place pass can reach).
* ``latent-step-B``: one optimizer step of a (60000, 64) latent table for a batch of B rows. Baselines:
  ``torch.optim.SparseAdam`` on a sparse grad plus re-projection of the touched rows, and dense
  ``torch.optim.Adam`` over the whole table plus a full re-projection (what reference GLANN code does).
CPU only here; on a CUDA device the same file times the CUDA kernels (synchronising after each call).
The latent-step groups run first: after the 256 MB projection buffers have come and gone, the
allocator state made torch's SparseAdam steps ~100x slower in the same process on this machine.
"""

from __future__ import annotations

import pytest
import torch

from glann_ext import SphereSparseAdam, project_to_sphere, project_to_sphere_

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _timed(fn):
    def run():
        fn()
        _sync()

    return run


# --------------------------------------------------------------------------------------------------
# Fused latent step
# --------------------------------------------------------------------------------------------------

N_CODES, DIM = 60_000, 64


def _unit(n: int, d: int) -> torch.Tensor:
    t = torch.randn(n, d, device=DEVICE)
    return t / t.norm(dim=1, keepdim=True)


def _batches(b: int, k: int = 16):
    gen = torch.Generator().manual_seed(b)
    return [
        (torch.randperm(N_CODES, generator=gen)[:b].to(DEVICE), torch.randn(b, DIM, generator=gen).to(DEVICE))
        for _ in range(k)
    ]


def _glann_step(b: int):
    opt = SphereSparseAdam(_unit(N_CODES, DIM), lr=1e-3)
    batches, it = _batches(b), [0]

    def step():
        idx, g = batches[it[0] % len(batches)]
        it[0] += 1
        opt.step(idx, g)

    return step


def _sparse_adam_step(b: int):
    param = torch.nn.Parameter(_unit(N_CODES, DIM))
    opt = torch.optim.SparseAdam([param], lr=1e-3)
    batches, it = _batches(b), [0]

    def step():
        idx, g = batches[it[0] % len(batches)]
        it[0] += 1
        param.grad = torch.sparse_coo_tensor(idx.unsqueeze(0), g, (N_CODES, DIM), check_invariants=False)
        opt.step()
        with torch.no_grad():
            rows = idx.unique()
            param[rows] = torch.nn.functional.normalize(param[rows], dim=1)

    return step


def _dense_adam_step(b: int):
    param = torch.nn.Parameter(_unit(N_CODES, DIM))
    opt = torch.optim.Adam([param], lr=1e-3)
    batches, it = _batches(b), [0]

    def step():
        idx, g = batches[it[0] % len(batches)]
        it[0] += 1
        grad = torch.zeros_like(param)
        grad.index_add_(0, idx, g)
        param.grad = grad
        opt.step()
        with torch.no_grad():
            param.div_(param.norm(dim=1, keepdim=True))

    return step


STEP_CASES = {
    "glann SphereSparseAdam.step": _glann_step,
    "torch SparseAdam + reproject rows": _sparse_adam_step,
    "torch dense Adam + reproject table": _dense_adam_step,
}


@pytest.mark.parametrize("batch", [128, 4096])
@pytest.mark.parametrize("name", list(STEP_CASES))
def test_latent_step(benchmark, name, batch):
    benchmark.group = f"latent step ({N_CODES} x {DIM} table, batch {batch})"
    step = STEP_CASES[name](batch)
    rounds = 200 if "dense" not in name else 20
    benchmark.pedantic(_timed(step), rounds=rounds, warmup_rounds=3)


# --------------------------------------------------------------------------------------------------
# Projection
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rows():
    torch.manual_seed(0)
    return torch.randn(1_000_000, 64, device=DEVICE)


PROJECT_CASES = {
    "glann project_to_sphere": lambda z: project_to_sphere(z),
    "glann project_to_sphere_ (in place)": lambda z: project_to_sphere_(z),
    "torch z / z.norm(dim=1)": lambda z: z / z.norm(dim=1, keepdim=True),
    "torch F.normalize": lambda z: torch.nn.functional.normalize(z, dim=1),
    "torch clone (memcpy bound)": lambda z: z.clone(),
}


@pytest.mark.parametrize("name", list(PROJECT_CASES))
def test_project(benchmark, rows, name):
    benchmark.group = "project (1e6 x 64 float32)"
    fn = PROJECT_CASES[name]
    benchmark.pedantic(_timed(lambda: fn(rows)), rounds=7, warmup_rounds=1)

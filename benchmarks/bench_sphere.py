"""Benchmarks of the sphere kernels against named torch baselines, run in the same session, CPU and CUDA.

    pytest benchmarks/bench_sphere.py --benchmark-group-by=group --benchmark-columns=min,median,mean
    pytest benchmarks/bench_sphere.py -k cuda ...     # the CUDA rows only

Groups (one per device and size):
* ``latent step``: one optimizer step of a (60000, 64) float32 latent table for a batch of B rows. Baselines:
  ``torch.optim.SparseAdam`` on the sparse grad plus ``F.normalize`` of the touched rows (what a torch user
  writes: the like-for-like baseline, since 2026-12-07);
  ``glann_ext.ops.reference.fused_latent_adam_reference`` (SparseAdam's functional step on a validated
  sparse grad, then the test oracle's overflow-safe float64 re-projection of the touched rows: slower than
  the plain step) and dense ``torch.optim.Adam`` over the whole table plus a full re-projection (what
  reference GLANN code does: another algorithm).
* ``project``: float32 rows to unit norm; (1_000_000, 64) on both devices, and on CUDA also (100_000, 784)
  and (10_000_000, 64). Baselines: ``z / z.norm(dim=1, keepdim=True)``, ``torch.nn.functional.normalize``
  and ``z.clone()`` (the copy bound an out-of-place pass can reach: the target is 70% of its bandwidth).
  On CUDA the glann rows also run on the Hopper kernels of issue 15 (``(hopper)``: 16-byte loads, several
  rows per warp; ``glann_ext.ops.kernels``); the other glann rows run the legacy kernel.
  Every row records ``gbps``: bytes read plus bytes written (2 x numel x 4) over the median time.

Before it is timed, every row's output on its own inputs is checked:

* latent step: the table after the row's first step (the first warm-up round) against the same step in
  float64 from the same table (:func:`_expected_step`): ``fused_latent_adam_reference`` for the glann and the
  SparseAdam rows, ``torch.optim.Adam`` plus ``project_to_sphere_reference`` for the dense row (one step from
  zero moments; assert_close rtol 1e-5, atol 1e-6, with values of at most 1 and steps of ~lr = 1e-3).
* project: the output of the first call against ``project_to_sphere_reference`` (float64, rounded to
  float32) of the row's input, on ``CHECK_ROWS`` rows of it: the first and the last 4096 and 4096 spread
  over the rest (the reference on all 10^6-10^7 rows would take longer than the timing; rtol 1e-5, atol
  1e-6); the clone row's output must equal its input. Every row has its own copy of the group's input (made
  outside the timed call), and the in-place rows get it back before every round (pedantic's ``setup``,
  untimed), so no row times rows another row has projected.

``--benchmark-disable`` runs each row's check and one call, untimed (see benchmarks/conftest.py).
CUDA calls end with ``torch.cuda.synchronize()``. The latent-step groups run first: after the 256 MB
projection buffers have come and gone, the allocator state made torch's SparseAdam steps ~100x slower in
the same process on the CPU machine.
"""

from __future__ import annotations

import pytest
import torch

from glann_ext import SphereSparseAdam, project_to_sphere, project_to_sphere_
from glann_ext.ops.kernels import use_cuda_kernels
from glann_ext.ops.reference import fused_latent_adam_reference, project_to_sphere_reference

from ._device import device_params, fresh, rate, sync, timed

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


LR = 1e-3


class StepRow:
    """A latent-step row: ``step()`` applies the next of 16 fixed batches; ``table()`` is the table it
    updates; ``batches`` the batches (``step`` applies ``batches[0]`` first)."""

    def __init__(self, b: int, device: str, apply, table) -> None:
        self.batches, self.table, self.calls = _batches(b, device), table, 0
        self.apply = apply

    def step(self) -> None:
        idx, g = self.batches[self.calls % len(self.batches)]
        self.calls += 1
        self.apply(idx, g, self.calls)


def _glann_step(b: int, device: str) -> StepRow:
    opt = SphereSparseAdam(_unit(N_CODES, DIM, device), lr=LR)
    return StepRow(b, device, lambda idx, g, _n: opt.step(idx, g), lambda: opt.table)


def _reference_step(b: int, device: str) -> StepRow:
    table = _unit(N_CODES, DIM, device)
    exp_avg, exp_avg_sq = torch.zeros_like(table), torch.zeros_like(table)
    return StepRow(
        b,
        device,
        lambda idx, g, n: fused_latent_adam_reference(table, exp_avg, exp_avg_sq, idx, g, step=n, lr=LR),
        lambda: table,
    )


def _torch_sparse_adam_step(b: int, device: str) -> StepRow:
    """What a torch user writes: ``torch.optim.SparseAdam`` on the table's sparse grad, then the touched rows
    normalised in float32 (``F.normalize``). The baseline a speed-up is read against; the reference row
    above runs the test oracle's overflow-safe float64 projection and validates its sparse grad."""
    param = torch.nn.Parameter(_unit(N_CODES, DIM, device))
    opt = torch.optim.SparseAdam([param], lr=LR)

    def apply(idx, g, _n):
        param.grad = torch.sparse_coo_tensor(idx[None], g, param.shape, check_invariants=False)
        opt.step()
        with torch.no_grad():
            param[idx] = torch.nn.functional.normalize(param[idx], dim=1)

    return StepRow(b, device, apply, lambda: param.detach())


def _dense_adam(param: torch.nn.Parameter):
    """(idx, grad, n) -> None: one dense ``torch.optim.Adam`` step of the whole table, then every row
    re-projected (what reference GLANN code does)."""
    opt = torch.optim.Adam([param], lr=LR)

    def apply(idx, g, _n):
        grad = torch.zeros_like(param)
        grad.index_add_(0, idx, g)
        param.grad = grad
        opt.step()
        with torch.no_grad():
            param.div_(param.norm(dim=1, keepdim=True))

    return apply


def _dense_adam_step(b: int, device: str) -> StepRow:
    param = torch.nn.Parameter(_unit(N_CODES, DIM, device))
    return StepRow(b, device, _dense_adam(param), lambda: param.detach())


def _expected_step(name: str, start: torch.Tensor, idx: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The table after the first step of row ``name`` from ``start`` with the batch ``(idx, g)``, in
    float64 by the baseline of the row's algorithm."""
    table = start.double()
    if "dense" in name:
        param = torch.nn.Parameter(table)
        grad = torch.zeros_like(table)
        grad.index_add_(0, idx, g.double())
        param.grad = grad
        torch.optim.Adam([param], lr=LR).step()  # the row's optimizer, in float64
        return project_to_sphere_reference(param.detach())
    zeros = torch.zeros_like(table)
    return fused_latent_adam_reference(table, zeros, zeros.clone(), idx, g.double(), step=1, lr=LR)


def check_step(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Raises AssertionError unless the row's table ``got`` matches the float64 ``expected`` one."""
    torch.testing.assert_close(
        got.double(), expected, rtol=1e-5, atol=1e-6, msg=lambda m: f"latent table: {m}"
    )


# Display name (the report's method column) -> (pytest id, step factory).
STEP_CASES = {
    "glann SphereSparseAdam.step": ("glann_adam", _glann_step),
    "torch SparseAdam + F.normalize rows": ("torch_sparse_adam", _torch_sparse_adam_step),
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
    row = STEP_CASES[name][1](batch, device)
    run = timed(row.step, device)
    start = row.table().clone()
    run()  # the first warm-up step, checked
    check_step(row.table(), _expected_step(name, start, *row.batches[0]))
    del start
    if benchmark.disabled:  # --benchmark-disable: the check and pedantic's one call
        benchmark.pedantic(run)
        return
    rounds = 200 if "dense" not in name else 20
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=2)


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
CHECK_ROWS = 4096  # rows checked at the start, at the end, and spread over the rest


def check_projection(out: torch.Tensor, source: torch.Tensor, *, copy: bool = False) -> None:
    """Raises AssertionError unless ``out`` is ``source`` projected to unit rows (``copy``: ``source``
    itself), checked on the first and the last ``CHECK_ROWS`` rows and ``CHECK_ROWS`` spread between them
    against the float64 ``project_to_sphere_reference``."""
    assert out.shape == source.shape and out.dtype == source.dtype, f"output {out.dtype} {tuple(out.shape)}"
    if copy:
        assert torch.equal(out, source), "the copy differs from its input"
        return
    n = source.shape[0]
    spread = torch.linspace(0, n - 1, CHECK_ROWS, device=source.device).long()
    ends = torch.arange(min(n, CHECK_ROWS), device=source.device)
    rows = torch.cat([ends, spread, n - 1 - ends]).unique()
    torch.testing.assert_close(
        out[rows],
        project_to_sphere_reference(source[rows]),
        rtol=1e-5,
        atol=1e-6,
        msg=lambda m: f"projection: {m}",
    )


def _rows(device: str, shape: tuple[int, int]) -> torch.Tensor:
    """One random tensor per device and shape, the group's input (made once; rows time copies of it)."""
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
    source = _rows(device, shape)
    rows = source.clone()  # this row's own copy (the in-place rows overwrite it)
    sync(device)
    fn = ALL_CASES[name][1]
    setup = None
    if "in place" in name:

        def setup():  # untimed: the unprojected input back before every round
            rows.copy_(source)
            sync(device)

    with use_cuda_kernels("hopper" if name in HOPPER_CASES else "legacy"):
        run = timed(lambda: fn(rows), device)
        check_projection(run(), source, copy=name.startswith("torch clone"))  # a warm-up call, checked
        if setup is not None:
            setup()
        if benchmark.disabled:  # --benchmark-disable: the check and pedantic's one call
            benchmark.pedantic(run)
            return
        benchmark.pedantic(run, setup=setup, rounds=7 if device == "cpu" else 20, warmup_rounds=1)
    benchmark.extra_info["gbps"] = rate(2 * rows.numel() * 4, benchmark.stats.stats.median)

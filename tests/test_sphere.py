"""Tests of the sphere kernels: projection onto the unit sphere and the fused sparse latent steps.

Oracles are written here, independently of the package: plain torch normalisation in float64,
torch.optim.SparseAdam / torch.optim.SGD on sparse gradients, and an op-by-op numpy replay of SparseAdam.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from glann_testing import child_kwargs
from hypothesis import given, settings
from hypothesis import strategies as st

import glann_ext
import glann_ext.ops
from glann_ext import (
    SphereSparseAdam,
    SphereSparseSGD,
    fused_latent_adam_,
    fused_latent_sgd_,
    project_to_sphere,
    project_to_sphere_,
)
from glann_ext.errors import NonFiniteError
from glann_ext.ops import reference

DTYPES = [torch.float32, torch.float64]
DIMS = [1, 2, 3, 17, 64, 513]
ROWS = [0, 1, 97]
# Projection: float32 ~1 ulp (kernel rounding plus the oracle's sqrt); float64 also carries the
# summation-order error of two different norm reductions (grows like sqrt(D) ulp).
TOL = {torch.float32: {"rtol": 3e-7, "atol": 1e-44}, torch.float64: {"rtol": 2e-15, "atol": 1e-320}}


def oracle_project(z: torch.Tensor) -> torch.Tensor:
    """Plain float64 normalisation; zero rows -> (1, ..., 1) / sqrt(D)."""
    zd = z.double()
    scale = zd.abs().amax(dim=1, keepdim=True).clamp_min(1e-300)  # keeps float64 extremes finite
    norm = (zd / scale).norm(dim=1, keepdim=True)
    out = (zd / scale) / norm
    out = torch.where(zd.abs().amax(dim=1, keepdim=True) == 0, 1.0 / math.sqrt(z.shape[1]), out)
    return out.to(z.dtype)


def sparse_grad(indices: torch.Tensor, grad: torch.Tensor, shape) -> torch.Tensor:
    return torch.sparse_coo_tensor(indices.unsqueeze(0), grad, tuple(shape), check_invariants=True)


def unit_table(n: int, d: int, dtype=torch.float32) -> torch.Tensor:
    t = torch.randn(n, d, dtype=dtype)
    return t / t.norm(dim=1, keepdim=True)


# --------------------------------------------------------------------------------------------------
# Projection
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n", ROWS)
def test_project_matches_oracle(dtype, d, n):
    z = torch.randn(n, d, dtype=dtype) * 3
    out = project_to_sphere(z)
    assert out.shape == z.shape and out.dtype == dtype and out.is_contiguous()
    torch.testing.assert_close(out, oracle_project(z), **TOL[dtype])
    z2 = z.clone()
    assert project_to_sphere_(z2) is z2
    torch.testing.assert_close(z2, out, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_project_strided_views_without_copy(dtype):
    big = torch.randn(53, 40, dtype=dtype)
    keep = big.clone()
    view = big[:, 5:22]  # row stride 40, unit column stride
    torch.testing.assert_close(project_to_sphere(view), oracle_project(view), **TOL[dtype])
    project_to_sphere_(view)
    torch.testing.assert_close(big[:, 5:22], oracle_project(keep[:, 5:22]), **TOL[dtype])
    torch.testing.assert_close(big[:, :5], keep[:, :5], rtol=0, atol=0)
    torch.testing.assert_close(big[:, 22:], keep[:, 22:], rtol=0, atol=0)
    # Non-unit column stride (a transpose) and a step slice of the rows.
    base = torch.randn(17, 31, dtype=dtype)
    for v in (base.t(), base[::3, ::2]):
        torch.testing.assert_close(project_to_sphere(v), oracle_project(v), **TOL[dtype])
        assert project_to_sphere(v).is_contiguous()  # documented: a new contiguous tensor, any strides of z
        w = v.clone(memory_format=torch.preserve_format)
        project_to_sphere_(v)
        torch.testing.assert_close(v, oracle_project(w), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_project_zero_rows(dtype):
    z = torch.randn(6, 17, dtype=dtype)
    z[[0, 4]] = 0.0
    z[2] = -0.0
    out = project_to_sphere(z)
    fill = torch.full((17,), 1.0 / math.sqrt(17), dtype=dtype)
    for i in (0, 2, 4):
        assert torch.equal(out[i], fill)
    torch.testing.assert_close(out, oracle_project(z), **TOL[dtype])
    # The package's reference agrees on zero rows.
    from glann_ext.ops.reference import project_to_sphere_reference

    assert torch.equal(project_to_sphere_reference(z)[0], out[0])


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [
        (torch.float32, 1e30),
        (torch.float32, 1e-30),
        (torch.float32, 3e38),
        (torch.float32, 1e-44),  # subnormal float32
        (torch.float64, 1e300),
        (torch.float64, 1e-157),  # a subnormal sum of squares of normal values: rescaled first
        (torch.float64, 1e-300),
        (torch.float64, 1e-320),  # subnormal float64
    ],
)
def test_project_extreme_magnitudes(dtype, scale):
    z = torch.randn(11, 64, dtype=dtype).clamp(-1, 1) * scale
    z[0] = 0.0
    z[1, 0] = scale
    out = project_to_sphere(z)
    assert torch.isfinite(out).all()
    norms = out.double().norm(dim=1)
    # Subnormal inputs carry few significant bits, but the result is still a unit vector.
    torch.testing.assert_close(
        norms, torch.ones_like(norms), rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-14
    )
    if abs(math.log10(scale)) < 300 and scale > 1e-40:
        torch.testing.assert_close(out, oracle_project(z), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_project_nonfinite_policy(dtype, bad):
    z = torch.randn(40, 9, dtype=dtype)
    z[7, 3] = bad
    z[20, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"^project_to_sphere: z row 7 contains NaN or Inf") as info:
        project_to_sphere(z)
    assert isinstance(info.value, ValueError) and (info.value.argument, info.value.row) == ("z", 7)
    before = z.clone()
    with pytest.raises(NonFiniteError, match=r"^project_to_sphere_: z row 7") as info:
        project_to_sphere_(z)
    assert (info.value.argument, info.value.row) == ("z", 7)
    # Documented policy: non-finite rows untouched, every other row projected.
    assert torch.equal(z[7].isnan(), before[7].isnan())
    torch.testing.assert_close(z[7], before[7], rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(z[20], before[20], rtol=0, atol=0, equal_nan=True)
    good = [i for i in range(40) if i not in (7, 20)]
    torch.testing.assert_close(z[good], oracle_project(before[good]), **TOL[dtype])


def test_project_argument_errors():
    with pytest.raises(TypeError, match=r"z must be a torch\.Tensor"):
        project_to_sphere([[1.0, 2.0]])
    with pytest.raises(ValueError, match="z must be a 2-D tensor"):
        project_to_sphere(torch.randn(5))
    with pytest.raises(TypeError, match="z must have dtype in"):
        project_to_sphere(torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="CUDA only"):
        project_to_sphere(torch.ones(3, 4, dtype=torch.float16))
    with pytest.raises(ValueError, match="internally overlapping"):
        project_to_sphere_(torch.randn(1, 8).expand(5, 8))
    # Out-of-place on an expanded tensor is fine: it only reads.
    torch.testing.assert_close(project_to_sphere(torch.ones(1, 4).expand(3, 4)), torch.full((3, 4), 0.5))


def test_project_in_place_refuses_overlapping_rows_torch_calls_too_hard():
    """torch._debug_has_internal_overlap says "too hard" (2), not "yes", for rows that overlap through
    as_strided, and only "yes" was refused: the rows came out not unit norm, silently."""
    s = torch.randn(20)
    z = s.as_strided((4, 5), (2, 1))  # row i starts 2 elements after row i-1: rows share 3 elements
    assert torch._debug_has_internal_overlap(z) == 2
    before = s.clone()
    with pytest.raises(
        ValueError, match=r"^project_to_sphere_: z has internally overlapping memory .*strides \(2, 1\)"
    ):
        project_to_sphere_(z)
    assert torch.equal(s, before)
    with pytest.raises(ValueError, match="internally overlapping"):
        project_to_sphere_(torch.randn(30).as_strided((5, 4), (1, 3)))  # columns overlap the rows
    # Layouts torch also calls "too hard" whose elements are distinct are still projected in place,
    # matching an independent float64 projection; the other elements are untouched.
    for make in (
        lambda w: w[:, 2:7],
        lambda w: w.t()[1:6, ::2],
        lambda w: w.as_strided((3, 4), (13, 3)),
        lambda w: w.as_strided((4, 3), (1, 4)),
        lambda w: w.as_strided((1, 4), (0, 3)),  # a size-1 dimension's stride (even 0) addresses nothing else
    ):
        w = torch.randn(10, 12, dtype=torch.float64)
        view = make(w)
        want = view.clone() / view.norm(dim=1, keepdim=True)
        others = w.clone()
        others_mask = torch.ones_like(w, dtype=torch.bool)
        make(others_mask).fill_(False)
        assert project_to_sphere_(view) is view
        torch.testing.assert_close(make(w), want, rtol=2e-15, atol=0)
        assert torch.equal(w[others_mask], others[others_mask])


def test_project_empty():
    for shape in [(0, 5), (0, 0), (4, 0)]:
        z = torch.randn(shape)
        assert project_to_sphere(z).shape == shape
        assert project_to_sphere_(z) is z


finite32 = st.floats(min_value=-(2.0**100), max_value=2.0**100, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5).flatmap(lambda n: st.integers(1, 40).flatmap(
    lambda d: st.lists(finite32, min_size=n * d, max_size=n * d).map(lambda v: torch.tensor(v).view(n, d)))))  # fmt: skip
def test_project_properties(z):
    out = project_to_sphere(z)
    nonzero = z.abs().amax(dim=1) > 0
    # Unit norm.
    torch.testing.assert_close(
        out.double().norm(dim=1), torch.ones(z.shape[0], dtype=torch.float64), rtol=0, atol=1e-6
    )
    # Direction preserved: same signs (or an underflow to 0), and the float64-normalised input.
    o, zz = out[nonzero], z[nonzero]
    assert ((torch.sign(o) == torch.sign(zz)) | (o == 0)).all()
    torch.testing.assert_close(out, oracle_project(z), **TOL[torch.float32])
    # Idempotent up to rounding (a unit vector stays put within an ulp).
    torch.testing.assert_close(project_to_sphere(out), out, rtol=2.5e-7, atol=1e-44)


def test_project_gradcheck():
    z = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(project_to_sphere, (z,))
    # A zero row (where the map is not continuous) gets gradient 0 by definition.
    z = z.detach().clone()
    z[2] = 0.0
    z.requires_grad_()
    out = project_to_sphere(z)
    (g,) = torch.autograd.grad((out * torch.randn_like(out)).sum(), z)
    assert torch.equal(g[2], torch.zeros(5, dtype=torch.float64))
    big = (torch.randn(3, 4) * 1e30).requires_grad_()
    project_to_sphere(big).sum().backward()
    assert torch.isfinite(big.grad).all()
    ref = torch.autograd.functional.vjp(
        oracle_project, big.detach().double(), torch.ones(3, 4, dtype=torch.float64)
    )[1]
    torch.testing.assert_close(big.grad.double(), ref, rtol=1e-5, atol=1e-40)


def _exact_projection_and_vjp(z: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z / ||z|| and its vector-Jacobian product (g - y (y.g)) / ||z|| per row, computed on the row times a
    power of two 2^k that brings it near 1 (exact in float64, subnormals included), then rescaled: the
    projection does not change, the vjp is multiplied by 2^k (exact, while representable)."""
    rows_y, rows_g = [], []
    for zi, gi in zip(z.double(), g.double()):
        k = -math.frexp(zi.abs().max().item())[1]
        zs = zi * 2.0**k if k <= 1000 else zi * 2.0**1000 * 2.0 ** (k - 1000)
        norm = zs.norm()
        y = zs / norm
        rows_y.append(y)
        vjp = (gi - y * (y @ gi)) / norm
        rows_g.append(vjp * 2.0 ** min(k, 1000) * 2.0 ** max(k - 1000, 0))
    return torch.stack(rows_y), torch.stack(rows_g)


@pytest.mark.parametrize(("scale", "gscale"), [(1e-303, 1.0), (1e-301, 1.0), (3e-310, 1e-10), (3e200, 1.0)])
def test_project_backward_and_reference_for_tiny_and_huge_float64_rows(scale, gscale):
    """The backward clamped the row maximum at 1e-300 (gradients ~500x too large at 1e-303), and the
    reference projection used the unscaled norm (3e-310 rows came out (1, 1) / sqrt(2), 3e200 rows zero)."""
    z = torch.randn(4, 5, dtype=torch.float64) * scale
    z[:, 0] = scale
    z[3] = torch.tensor([3.0, 4.0, 0.0, 0.0, 0.0], dtype=torch.float64) * scale
    g = torch.randn(4, 5, dtype=torch.float64) * gscale
    want_y, want_g = _exact_projection_and_vjp(z, g)
    assert torch.isfinite(want_g).all()
    zr = z.clone().requires_grad_()
    (gz,) = torch.autograd.grad(project_to_sphere(zr), zr, g)
    # Subnormal rows carry fewer significant bits; the result is still as exact as float64 allows.
    tol = {"rtol": 1e-13, "atol": 0.0}
    torch.testing.assert_close(gz, want_g, **tol)
    torch.testing.assert_close(project_to_sphere(z), want_y, **tol)
    torch.testing.assert_close(glann_ext.ops.reference.project_to_sphere_reference(z), want_y, **tol)
    torch.testing.assert_close(
        glann_ext.ops.reference.project_to_sphere_reference(z[3:]),
        torch.tensor([[0.6, 0.8, 0.0, 0.0, 0.0]], dtype=torch.float64),
        **tol,
    )


def test_project_deterministic_across_thread_counts():
    z = torch.randn(5000, 64)
    z[17] = 0
    outs = []
    old = torch.get_num_threads()
    try:
        for n in (1, 2, 3, 8):
            torch.set_num_threads(n)
            outs.append(project_to_sphere(z))
    finally:
        torch.set_num_threads(old)
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


# --------------------------------------------------------------------------------------------------
# Fused sparse Adam / SGD
# --------------------------------------------------------------------------------------------------


def numpy_sparse_adam(p, m, v, idx, g, step, lr, b1, b2, eps):
    """SparseAdam's op sequence (torch/optim/_functional.py) in numpy, every op rounded in p's dtype.
    numpy's sqrt is correctly rounded (IEEE), as is the kernel's. Unique indices only."""
    f = p.dtype.type
    c1, c2, e = f(1 - b1), f(1 - b2), f(eps)
    ss = lr * math.sqrt(1 - b2**step) / (1 - b1**step)
    old_m, old_v = m[idx], v[idx]
    mu = (g - old_m) * c1
    vu = (g * g - old_v) * c2
    m[idx] = old_m + mu
    v[idx] = old_v + vu
    numer = mu + old_m
    denom = np.sqrt(vu + old_v) + e
    p[idx] = p[idx] + f(-ss) * (numer / denom)


@pytest.mark.parametrize("dtype", DTYPES)
# 300: rows longer than the kernel's 256-column chunk (a chunk that re-read the first one's grad passed before)
@pytest.mark.parametrize("d", [1, 3, 17, 64, 300])
def test_adam_bitwise_matches_sparse_adam_op_sequence(dtype, d):
    n, b = 101, 37
    table = torch.randn(n, d, dtype=dtype)
    m, v = torch.zeros_like(table), torch.zeros_like(table)
    pn, mn, vn = table.numpy().copy(), m.numpy().copy(), v.numpy().copy()
    for step in range(1, 5):
        idx = torch.randperm(n)[:b]
        g = torch.randn(b, d, dtype=dtype)
        fused_latent_adam_(
            table, m, v, idx, g, step=step, lr=0.05, beta1=0.8, beta2=0.99, eps=1e-6, project=False
        )
        numpy_sparse_adam(pn, mn, vn, idx.numpy(), g.numpy(), step, 0.05, 0.8, 0.99, 1e-6)
        assert np.array_equal(table.numpy(), pn)
        assert np.array_equal(m.numpy(), mn) and np.array_equal(v.numpy(), vn)


# torch 2.13's CPU torch.sqrt is not correctly rounded (about 0.7% of inputs are 1 ulp off, in float32 and
# float64); the kernel's sqrt is IEEE. So against torch.optim.SparseAdam itself the moments are bitwise
# equal and the parameters agree to a few ulps.
PARAM_TOL = {torch.float32: {"rtol": 1e-6, "atol": 1e-7}, torch.float64: {"rtol": 1e-14, "atol": 1e-15}}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("project", [False, True])
def test_adam_matches_torch_sparse_adam_on_embedding(dtype, project):
    n, d, b = 60, 17, 40
    emb = torch.nn.Embedding(n, d, sparse=True).to(dtype)
    with torch.no_grad():
        emb.weight.copy_(unit_table(n, d, dtype))
    torch_opt = torch.optim.SparseAdam(emb.parameters(), lr=0.03, betas=(0.85, 0.995), eps=1e-7)
    table = emb.weight.detach().clone()
    opt = SphereSparseAdam(table, lr=0.03, betas=(0.85, 0.995), eps=1e-7, project=project)
    target = torch.randn(b, d, dtype=dtype)
    for _ in range(6):
        idx = torch.randint(0, n, (b,))  # duplicates on purpose
        assert idx.unique().numel() < b
        torch_opt.zero_grad()
        ((emb(idx) - target) ** 2).sum().backward()
        torch_opt.step()
        if project:
            with torch.no_grad():
                rows = idx.unique()
                emb.weight[rows] = oracle_project(emb.weight[rows])
        z = table[idx].detach().requires_grad_()
        ((z - target) ** 2).sum().backward()
        opt.step(idx, z.grad)
        st = torch_opt.state[emb.weight]
        assert st["step"] == opt.step_count
        torch.testing.assert_close(table, emb.weight.detach(), **PARAM_TOL[dtype])
        torch.testing.assert_close(opt.exp_avg, st["exp_avg"], **PARAM_TOL[dtype])
        torch.testing.assert_close(opt.exp_avg_sq, st["exp_avg_sq"], **PARAM_TOL[dtype])
    if project:
        touched = opt.exp_avg.abs().sum(1) > 0
        torch.testing.assert_close(
            table[touched].double().norm(dim=1), torch.ones(int(touched.sum()), dtype=torch.float64)
        )


def test_adam_moments_bitwise_equal_to_sparse_adam_with_duplicates():
    n, d = 30, 8
    w = torch.randn(n, d)
    p = torch.nn.Parameter(w.clone())
    torch_opt = torch.optim.SparseAdam([p], lr=0.1)
    table = w.clone()
    opt = SphereSparseAdam(table, lr=0.1, project=False)
    for _ in range(3):
        idx = torch.tensor([3, 3, 3, 7, 0, 7, 29])
        g = torch.randn(7, d)
        p.grad = sparse_grad(idx, g, (n, d))
        torch_opt.step()
        opt.step(idx, g)
        assert torch.equal(opt.exp_avg, torch_opt.state[p]["exp_avg"])
        assert torch.equal(opt.exp_avg_sq, torch_opt.state[p]["exp_avg_sq"])
        torch.testing.assert_close(table, p.detach(), **PARAM_TOL[torch.float32])


def test_adam_touches_only_indexed_rows():
    table = unit_table(50, 16)
    m, v = torch.zeros_like(table), torch.zeros_like(table)
    before = table.clone()
    idx = torch.tensor([4, 9, 4])
    fused_latent_adam_(table, m, v, idx, torch.randn(3, 16), step=1, lr=0.1)
    others = torch.ones(50, dtype=torch.bool)
    others[[4, 9]] = False
    assert torch.equal(table[others], before[others])
    assert (m[others] == 0).all() and (v[others] == 0).all()
    assert not torch.equal(table[4], before[4])
    torch.testing.assert_close(table[[4, 9]].norm(dim=1), torch.ones(2))


def test_adam_exact_resume_through_state_dict():
    n, d = 80, 12

    def batches(k):
        gen = torch.Generator().manual_seed(k)
        return torch.randint(0, n, (25,), generator=gen), torch.randn(25, d, generator=gen)

    t_full = unit_table(n, d)
    t_split = t_full.clone()
    full = SphereSparseAdam(t_full, lr=0.02)
    for k in range(6):
        full.step(*batches(k))
    first = SphereSparseAdam(t_split, lr=0.02)
    for k in range(3):
        first.step(*batches(k))
    saved = copy.deepcopy(first.state_dict())
    table_copy = t_split.clone()
    del first
    resumed = SphereSparseAdam(table_copy, lr=0.5, betas=(0.5, 0.5), eps=1.0)  # overwritten by the load
    resumed.load_state_dict(saved)
    assert resumed.step_count == 3 and resumed.lr == 0.02
    for k in range(3, 6):
        resumed.step(*batches(k))
    assert torch.equal(table_copy, t_full)
    assert torch.equal(resumed.exp_avg, full.exp_avg) and torch.equal(resumed.exp_avg_sq, full.exp_avg_sq)
    with pytest.raises(ValueError, match=r"exp_avg must be floating of shape \(80, 12\), got"):
        resumed.load_state_dict({**saved, "exp_avg": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=r"exp_avg_sq must be floating of shape .* got \(torch.int64"):
        resumed.load_state_dict({**saved, "exp_avg_sq": saved["exp_avg_sq"].long()})  # was cast
    for step in (-1, 2**62, 10**400, 2.5, float("inf"), float("nan"), "3", True, torch.tensor(float("inf"))):
        with pytest.raises(ValueError, match=r"step must be a whole number in \[0, 2\*\*62\), got"):
            resumed.load_state_dict({**saved, "step": step})
    resumed.load_state_dict({**saved, "step": torch.tensor(3.0)})  # as torch's optimizers save it
    assert resumed.step_count == 3
    wide = SphereSparseAdam(table_copy.double(), lr=0.5)  # float32 moments into a float64 table: cast, as
    wide.load_state_dict(saved)  # torch's optimizers cast them
    assert wide.exp_avg.dtype == torch.float64 and torch.equal(wide.exp_avg, saved["exp_avg"].double())


def test_adam_empty_batch_counts_the_step_like_sparse_adam():
    table = unit_table(10, 4)
    before = table.clone()
    opt = SphereSparseAdam(table, lr=0.1)
    opt.step(torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4))
    assert opt.step_count == 1 and torch.equal(table, before)
    p = torch.nn.Parameter(before.clone())
    torch_opt = torch.optim.SparseAdam([p], lr=0.1)
    p.grad = sparse_grad(torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4), (10, 4))
    torch_opt.step()
    assert torch_opt.state[p]["step"] == 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [1, 17, 64, 300])
def test_sgd_bitwise_matches_torch_sgd(dtype, d):
    n, b = 90, 40
    w = torch.randn(n, d, dtype=dtype)
    p = torch.nn.Parameter(w.clone())
    torch_opt = torch.optim.SGD([p], lr=0.37)
    table = w.clone()
    opt = SphereSparseSGD(table, lr=0.37, project=False)
    for _ in range(3):
        idx = torch.randperm(n)[:b]
        g = torch.randn(b, d, dtype=dtype)
        p.grad = sparse_grad(idx, g, (n, d))
        torch_opt.step()
        opt.step(idx, g)
        assert torch.equal(table, p.detach())


@pytest.mark.parametrize("dtype", DTYPES)
def test_steps_take_the_largest_finite_grads(dtype):
    """Grad rows holding the dtype's largest finite values are not NaN/Inf: the steps run, SGD as torch's
    (found by mutation testing: a finiteness test on fewer exponent bits refused them as non-finite)."""
    big, lr = torch.finfo(dtype).max, 2.0**-1000 if dtype == torch.float64 else 2.0**-120
    n, d = 12, 5
    w = torch.randn(n, d, dtype=dtype)
    idx = torch.tensor([3, 7, 0])
    g = torch.randn(3, d, dtype=dtype)
    g[1, 2], g[2, 0] = big, -big
    p = torch.nn.Parameter(w.clone())
    torch_opt = torch.optim.SGD([p], lr=lr)
    p.grad = sparse_grad(idx, g, (n, d))
    torch_opt.step()
    table = w.clone()
    fused_latent_sgd_(table, idx, g, lr=lr, project=False)
    assert torch.equal(table, p.detach())
    table, m, v = unit_table(n, d, dtype), torch.zeros(n, d, dtype=dtype), torch.zeros(n, d, dtype=dtype)
    fused_latent_adam_(table, m, v, idx, g, step=1, lr=0.01)  # g^2 overflows to v = inf, a zero step
    assert torch.isfinite(table).all() and m[7, 2] > 0 and v[7, 2] == math.inf


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_with_duplicates_and_projection(dtype):
    n, d = 40, 9
    w = unit_table(n, d, dtype)
    p = torch.nn.Parameter(w.clone())
    torch_opt = torch.optim.SGD([p], lr=0.2)
    table = w.clone()
    for _ in range(4):
        idx = torch.randint(0, n, (30,))
        g = torch.randn(30, d, dtype=dtype)
        p.grad = sparse_grad(idx, g, (n, d))
        torch_opt.step()
        with torch.no_grad():
            rows = idx.unique()
            p[rows] = oracle_project(p[rows])
        fused_latent_sgd_(table, idx, g, lr=0.2)
        torch.testing.assert_close(table, p.detach(), **PARAM_TOL[dtype])


def test_fused_steps_deterministic_across_thread_counts():
    n, d, b = 9000, 64, 4096
    base = unit_table(n, d)
    idx = torch.randint(0, n, (b,))
    g = torch.randn(b, d)
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2, 5):
            torch.set_num_threads(threads)
            t = base.clone()
            m, v = torch.zeros_like(t), torch.zeros_like(t)
            fused_latent_adam_(t, m, v, idx, g, step=3, lr=0.01)
            t2 = base.clone()
            fused_latent_sgd_(t2, idx, g, lr=0.01)
            results.append((t, m, v, t2))
    finally:
        torch.set_num_threads(old)
    for r in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r, results[0]))


_ISA_SCRIPT = """
import sys, torch, glann_ext
torch.manual_seed(3)
z = torch.randn(3000, 67); t = torch.randn(500, 64); t = t / t.norm(dim=1, keepdim=True)
m, v = torch.zeros_like(t), torch.zeros_like(t)
idx = torch.randint(0, 500, (300,)); g = torch.randn(300, 64)
glann_ext.fused_latent_adam_(t, m, v, idx, g, step=2, lr=0.01)
t2 = t.clone(); glann_ext.fused_latent_sgd_(t2, idx, g, lr=0.1)
# float64 rows too: their square roots have their own SIMD code in each copy
t64 = t.double()[:, :37].contiguous(); t64 = t64 / t64.norm(dim=1, keepdim=True)
m64, v64 = torch.zeros_like(t64), torch.zeros_like(t64)
glann_ext.fused_latent_adam_(t64, m64, v64, idx, g.double()[:, :37], step=2, lr=0.01)
glann_ext.fused_latent_adam_(t64, m64, v64, idx, g.double()[:, :37].flip(0), step=3, lr=0.01)
torch.save([glann_ext.project_to_sphere(z), glann_ext.project_to_sphere(z.double()), t, m, v, t2, t64, m64, v64],
           sys.argv[1])
"""


def test_same_bits_on_every_cpu_isa(tmp_path):
    """The baseline and AVX2 copies of the CPU kernels give identical bits (no FMA contraction)."""
    outs = []
    for isa in ("baseline", "avx2"):
        path = tmp_path / f"{isa}.pt"
        subprocess.run(
            [sys.executable, "-c", _ISA_SCRIPT, str(path)],
            check=True,
            timeout=120,
            **child_kwargs(tmp_path, GLANN_EXT_CPU_ISA=isa),
        )
        outs.append(torch.load(path))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------------
# Validation of the fused steps
# --------------------------------------------------------------------------------------------------


def _adam_args(n=20, d=6, b=5, dtype=torch.float32):
    table = unit_table(n, d, dtype)
    return (
        table,
        torch.zeros_like(table),
        torch.zeros_like(table),
        torch.randint(0, n, (b,)),
        torch.randn(b, d, dtype=dtype),
    )


def _assert_unchanged(tensors, snapshot):
    for t, s in zip(tensors, snapshot):
        assert torch.equal(t, s)


@pytest.mark.parametrize(
    ("mutate", "exc", "match"),
    [
        (lambda a: a.__setitem__(0, a[0].to(torch.int32)), TypeError, "table must have dtype in"),
        (lambda a: a.__setitem__(3, a[3].to(torch.int32)), TypeError, "indices must have dtype in"),
        (lambda a: a.__setitem__(3, a[3].view(5, 1)), ValueError, "indices must be a 1-D tensor"),
        (lambda a: a.__setitem__(4, a[4][:, :5]), ValueError, r"grad must have shape .* = \(5, 6\)"),
        (lambda a: a.__setitem__(4, a[4][:4]), ValueError, r"grad must have shape"),
        (lambda a: a.__setitem__(4, a[4].double()), TypeError, "grad must have the same dtype"),
        (lambda a: a.__setitem__(1, a[1].double()), TypeError, "exp_avg must have the same dtype"),
        (
            lambda a: a.__setitem__(2, torch.zeros(20, 7)),
            ValueError,
            "exp_avg_sq must have the table's shape",
        ),
        (lambda a: a.__setitem__(0, torch.zeros(6, 20).t()), ValueError, "table must be contiguous"),
        (lambda a: a.__setitem__(1, torch.zeros(6, 20).t()), ValueError, "exp_avg must be contiguous"),
        (lambda a: a.__setitem__(1, a[0]), ValueError, "table and exp_avg share memory"),
        (lambda a: a.__setitem__(4, a[0][:5]), ValueError, "table and grad share memory"),
        (lambda a: a.__setitem__(0, torch.zeros(20, 0)), ValueError, "at least one column"),
    ],
)
def test_adam_argument_errors(mutate, exc, match):
    args = list(_adam_args())
    mutate(args)
    with pytest.raises(exc, match=match):
        fused_latent_adam_(*args, step=1, lr=0.1)


def test_tensors_carved_from_one_buffer_without_overlap_are_accepted():
    """The overlap check measures a strided tensor's last element exactly and treats touching ranges as
    disjoint (found by mutation testing: a span one row too long, or ``<=`` between the ends, refused these
    tensors as sharing memory). The result equals the same step on separate tensors."""
    n, d, b = 20, 6, 5
    store = torch.zeros(b * 2 * d + 3 * n * d)
    grad = store[: b * 2 * d].view(b, 2 * d)[:, :d]  # strided; ends d elements before the table
    table, m, v = store[b * 2 * d :].view(3, n, d).unbind(0)  # back to back
    ref = _adam_args(n=n, d=d, b=b)
    table.copy_(ref[0])
    grad.copy_(ref[4])
    fused_latent_adam_(table, m, v, ref[3], grad, step=1, lr=0.1)
    fused_latent_adam_(*ref, step=1, lr=0.1)
    assert torch.equal(table, ref[0]) and torch.equal(m, ref[1]) and torch.equal(v, ref[2])


def test_duplicate_grad_rows_that_sum_to_inf_are_named_as_such():
    """Finite duplicate rows whose sum overflows: the error says so rather than naming no row of grad."""
    table, m, v, _, g = _adam_args(b=5)
    g[1, 2] = g[2, 2] = torch.finfo(torch.float32).max
    snap = [t.clone() for t in (table, m, v)]
    with pytest.raises(NonFiniteError, match="duplicate grad rows overflowed to Inf; nothing was updated"):
        fused_latent_adam_(table, m, v, torch.tensor([1, 4, 4, 7, 9]), g, step=1, lr=0.1)
    _assert_unchanged((table, m, v), snap)


@pytest.mark.parametrize("bad_index", [-1, 20, 10**12])
def test_out_of_range_indices_change_nothing(bad_index):
    table, m, v, idx, g = _adam_args()
    idx[2] = bad_index
    snap = [t.clone() for t in (table, m, v)]
    with pytest.raises(ValueError, match=rf"indices must be in \[0, 20\).*got {bad_index}"):
        fused_latent_adam_(table, m, v, idx, g, step=1, lr=0.1)
    with pytest.raises(ValueError, match="indices must be in"):
        fused_latent_sgd_(table, idx, g, lr=0.1)
    _assert_unchanged((table, m, v), snap)


@pytest.mark.parametrize("layout", ["contiguous", "column-major"])
@pytest.mark.parametrize("dup", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_grad_changes_nothing(dup, bad, layout):
    """Column-major grads too: the kernel's check is the only one on the CPU (a check that ignored the column
    stride let the NaN through into the table, found by mutation testing)."""
    table, m, v, _, g = _adam_args(b=5)
    idx = torch.tensor([1, 2, 2, 7, 9]) if dup else torch.tensor([1, 2, 3, 7, 9])
    if layout == "column-major":
        g = g.t().contiguous().t()
    g[3, 4] = bad
    snap = [t.clone() for t in (table, m, v)]
    opt = SphereSparseAdam(table, lr=0.1)
    with pytest.raises(NonFiniteError, match="grad row 3 contains NaN or Inf; nothing was updated"):
        opt.step(idx, g)
    assert opt.step_count == 0
    for step in (
        lambda: fused_latent_adam_(table, m, v, idx, g, step=1, lr=0.1),
        lambda: fused_latent_sgd_(table, idx, g, lr=0.1),
    ):
        with pytest.raises(NonFiniteError, match="grad row 3") as info:
            step()
        assert isinstance(info.value, ValueError) and (info.value.argument, info.value.row) == ("grad", 3)
    _assert_unchanged((table, m, v, opt.exp_avg), [*snap, torch.zeros_like(table)])


def test_hyperparameter_errors():
    table, m, v, idx, g = _adam_args()
    for kw, match in [
        ({"step": 0, "lr": 0.1}, "step must be an int >= 1"),
        ({"step": 1, "lr": -1.0}, "lr must be a finite float >= 0"),
        ({"step": 1, "lr": 0.1, "eps": 0.0}, "eps must be > 0"),
        ({"step": 1, "lr": 0.1, "beta1": 1.0}, r"beta1 must be in \[0, 1\)"),
        ({"step": 1, "lr": 0.1, "beta2": -0.1}, r"beta2 must be in \[0, 1\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            fused_latent_adam_(table, m, v, idx, g, **kw)
    with pytest.raises(ValueError, match="lr must be a finite float > 0"):
        SphereSparseAdam(table, lr=0.0)
    with pytest.raises(ValueError, match="lr must be a finite float"):
        SphereSparseSGD(table, lr=float("nan"))
    with pytest.raises(TypeError, match="table must have dtype"):
        SphereSparseSGD(table.half())


def test_hyperparameter_types_and_error_wording():
    """A str hyperparameter reached the dispatcher (RuntimeError with a schema dump), a bool was taken for
    a number, and the dtype/device errors glued the op name to the argument ('as fused_latent_adam_: table')."""
    table, m, v, idx, g = _adam_args()
    before = table.clone()
    for kw, match in [
        ({"step": 1, "lr": "0.1"}, "lr must be a float, got str '0.1'"),
        ({"step": 1, "lr": True}, "lr must be a float, got bool True"),
        ({"step": True, "lr": 0.1}, "step must be an int, got bool True"),
        ({"step": 1.0, "lr": 0.1}, "step must be an int, got float 1.0"),
        ({"step": 1, "lr": 0.1, "beta1": "0.9"}, "beta1 must be a float, got str"),
        ({"step": 1, "lr": 0.1, "eps": None}, "eps must be a float, got NoneType"),
        ({"step": 1, "lr": 0.1, "project": 1}, "project must be a bool, got int 1"),
    ]:
        with pytest.raises(TypeError, match=rf"^fused_latent_adam_: {match}"):
            fused_latent_adam_(table, m, v, idx, g, **kw)
    with pytest.raises(TypeError, match=r"^fused_latent_sgd_: lr must be a float, got str"):
        fused_latent_sgd_(table, idx, g, lr="0.1")
    with pytest.raises(TypeError, match=r"^fused_latent_sgd_: lr must be a float, got bool"):
        fused_latent_sgd_(table, idx, g, lr=True)
    with pytest.raises(
        TypeError,
        match=r"^fused_latent_adam_: grad must have the same dtype as table \(float32\), got float64$",
    ):
        fused_latent_adam_(table, m, v, idx, g.double(), step=1, lr=0.1)
    with pytest.raises(
        ValueError,
        match=r"^fused_latent_sgd_: indices must be on the same device as table \(cpu\), got meta$",
    ):
        fused_latent_sgd_(table, idx.to("meta"), g, lr=0.1)
    assert torch.equal(table, before)
    fused_latent_sgd_(table, idx, g, lr=1)  # an int is a number
    want = before.clone().index_add_(0, idx, g, alpha=-1.0)
    want[idx.unique()] = want[idx.unique()] / want[idx.unique()].norm(dim=1, keepdim=True)
    torch.testing.assert_close(table, want)


def test_project_flag_takes_numpy_bools_and_refuses_other_types():
    """project=np.True_ (a numpy bool, e.g. from a config array) was refused as "must be a bool, got bool"."""
    table, m, v, idx, g = _adam_args()
    want, got = table.clone(), table.clone()
    fused_latent_sgd_(want, idx, g, lr=0.1, project=True)
    fused_latent_sgd_(got, idx, g, lr=0.1, project=np.True_)
    assert torch.equal(got, want)
    got = table.clone()
    fused_latent_adam_(got, m.clone(), v.clone(), idx, g, step=1, lr=0.1, project=np.False_)
    want = table.clone()
    fused_latent_adam_(want, m.clone(), v.clone(), idx, g, step=1, lr=0.1, project=False)
    assert torch.equal(got, want)
    for value in ("yes", None, 0):
        message = rf"^fused_latent_sgd_: project must be a bool, got {type(value).__name__} {value!r}$"
        with pytest.raises(TypeError, match=message):
            fused_latent_sgd_(table, idx, g, lr=0.1, project=value)


def test_type_errors_name_numpy_only_where_numpy_is_taken():
    """The projections take numpy arrays: their type error said "z must be a torch.Tensor". The optimizer
    steps take tensors only and still say so."""
    for op in (project_to_sphere, project_to_sphere_):
        with pytest.raises(
            TypeError, match=rf"^{op.__name__}: z must be a torch.Tensor or a numpy array, got list$"
        ):
            op([[1.0, 2.0]])
    table, idx, g = torch.randn(4, 3), torch.tensor([1]), torch.randn(1, 3)
    with pytest.raises(TypeError, match=r"^fused_latent_sgd_: table must be a torch.Tensor, got ndarray$"):
        fused_latent_sgd_(table.numpy(), idx, g, lr=0.1)


def test_fused_steps_take_a_zero_rate_and_refuse_an_infinite_one():
    """lr = 0 lies in the documented range (>= 0): the touched rows are only re-projected; lr = inf is refused,
    and so are a tensor argument of another Python type and a table without columns (also when every shape
    agrees). Found by mutation testing: refusing lr = 0, taking lr = inf, or dropping either of the other two
    checks passed every test."""
    base, idx, g = torch.randn(6, 3), torch.tensor([1, 4]), torch.randn(2, 3)
    want = base.clone()
    want[idx] = oracle_project(base[idx])
    table, m, v = base.clone(), torch.zeros(6, 3), torch.zeros(6, 3)
    fused_latent_sgd_(table, idx, g, lr=0.0)
    torch.testing.assert_close(table, want, **TOL[torch.float32])
    table = base.clone()
    fused_latent_adam_(table, m, v, idx, g, step=1, lr=0)
    torch.testing.assert_close(table, want, **TOL[torch.float32])
    for lr in (math.inf, -math.inf):
        message = rf"^fused_latent_sgd_: lr must be a finite float >= 0, got {lr}$"
        with pytest.raises(ValueError, match=message):
            fused_latent_sgd_(table, idx, g, lr=lr)
    with pytest.raises(TypeError, match=r"^fused_latent_sgd_: grad must be a torch.Tensor, got list"):
        fused_latent_sgd_(table, idx, g.tolist(), lr=0.1)
    empty = torch.zeros(6, 0)  # every shape consistent, but no column to project
    with pytest.raises(ValueError, match=r"^fused_latent_adam_: table must have at least one column"):
        fused_latent_adam_(empty, empty.clone(), empty.clone(), idx, torch.zeros(2, 0), step=1, lr=0.1)


def test_optimizers_refuse_a_non_contiguous_table_and_bad_loaded_hyperparameters():
    """A non-contiguous table was accepted and every step then failed; load_state_dict took any betas/eps."""
    wide = torch.randn(20, 16)
    for make in (lambda t: SphereSparseAdam(t), lambda t: SphereSparseSGD(t)):
        with pytest.raises(ValueError, match=r"table must be contiguous .* strides \(16, 1\)"):
            make(wide[:, :8])
        with pytest.raises(ValueError, match="table must be contiguous"):
            make(wide.t())
    opt = SphereSparseAdam(torch.randn(20, 8))
    good = opt.state_dict()
    for key, value, match in [
        ("betas", [1.0, 0.999], r"betas must be in \[0, 1\)"),
        ("betas", [0.9], "betas must be two numbers"),
        ("eps", 0.0, "eps must be a finite number > 0, got 0.0"),
        ("eps", float("nan"), "eps must be a finite number > 0"),
    ]:
        with pytest.raises(ValueError, match=rf"^SphereSparseAdam.load_state_dict: {match}"):
            opt.load_state_dict({**good, key: value, "step": 7})
        assert opt.step_count == 0 and opt.betas == (0.9, 0.999) and opt.eps == 1e-8  # unchanged
    opt.load_state_dict({**good, "betas": [0.5, 0.75], "eps": 1e-6})
    assert opt.betas == (0.5, 0.75) and opt.eps == 1e-6


def test_sgd_state_dict_round_trip():
    table = unit_table(10, 3)
    opt = SphereSparseSGD(table, lr=0.3, project=False)
    other = SphereSparseSGD(table.clone())
    other.load_state_dict(opt.state_dict())
    assert other.lr == 0.3 and other.project is False


def test_adam_state_dict_keeps_project_and_refuses_a_negative_step_or_missing_moments():
    table = unit_table(10, 3)
    opt = SphereSparseAdam(table, lr=0.3, project=False)
    other = SphereSparseAdam(table.clone())
    other.load_state_dict(opt.state_dict())
    assert other.project is False
    state = opt.state_dict()
    with pytest.raises(ValueError, match=r"step must be a whole number in \[0, 2\*\*62\), got -1"):
        other.load_state_dict({**state, "step": -1})
    # moments may be missing only from a state saved before the first step (torch.optim's lazy state)
    with pytest.raises(ValueError, match=r"exp_avg must be floating of shape \(10, 3\), got NoneType"):
        other.load_state_dict({**state, "step": 3, "exp_avg": None})


def test_optimizer_hyperparameters_at_the_edges_of_their_ranges():
    """beta1 = beta2 = 0 lie in [0, 1) (Adam then steps by the normalised gradient); eps must be finite; a
    bool is not a rate; a state saved without "project" loads with projection on (the schema's default)."""
    table = unit_table(4, 3)
    opt = SphereSparseAdam(table, lr=0.1, betas=(0.0, 0.0), eps=1e-12)
    before, g = table.clone(), torch.tensor([[2.0, -1.0, 0.0]])
    opt.step(torch.tensor([1]), g)
    want = before[1] - 0.1 * g[0] / (g[0].abs() + 1e-12)
    torch.testing.assert_close(table[1], want / want.norm())
    with pytest.raises(ValueError, match=r"^SphereSparseAdam: eps must be a finite number > 0, got inf"):
        SphereSparseAdam(table, eps=math.inf)
    for make in (SphereSparseAdam, SphereSparseSGD):
        with pytest.raises(TypeError, match=rf"^{make.__name__}: lr must be a float, got bool True"):
            make(table, lr=True)
        # a one-element float tensor, as torch's optimizers take it (a rate set later took it already),
        # kept as a float (a tensor in param_groups would reach the state dict and the kernels' scalars)
        rate = make(table, lr=torch.tensor(0.01)).lr
        assert type(rate) is float and rate == pytest.approx(0.01)
        with pytest.raises(
            ValueError, match=rf"^{make.__name__}: lr must be a finite float > 0, got tensor\(0\.\)"
        ):
            make(table, lr=torch.tensor(0.0))
        with pytest.raises(ValueError, match=rf"^{make.__name__}: lr must be a finite float > 0, got -1\.0"):
            make(table, lr=-1.0)
        state = make(table, project=True).state_dict()
        del state["project"]
        unprojected = make(table, project=False)
        unprojected.load_state_dict(state)
        assert unprojected.project is True


def test_optimizers_refuse_a_table_of_another_rank_and_a_bool_eps():
    """A 3-D table passed the constructor (only 1-D was refused) and eps=True was taken for 1.0 (found by
    mutation testing: neither check had a test)."""
    for make in (SphereSparseAdam, SphereSparseSGD):
        with pytest.raises(ValueError, match=rf"^{make.__name__}: table must be a 2-D tensor, got 3-D"):
            make(torch.zeros(4, 3, 2))
    with pytest.raises(ValueError, match=r"^SphereSparseAdam: eps must be a finite number > 0, got True"):
        SphereSparseAdam(unit_table(4, 3), eps=True)


def test_optimizers_take_project_as_a_bool_only():
    """``project="no"`` was read as True (bool(project)): the optimizers check it as the fused step does, and
    take numpy's bools."""
    table = torch.nn.functional.normalize(torch.randn(4, 3), dim=1)
    for cls in (SphereSparseAdam, SphereSparseSGD):
        assert cls(table.clone(), project=np.False_).project is False
        with pytest.raises(TypeError, match=rf"^{cls.__name__}: project must be a bool, got str 'no'"):
            cls(table.clone(), project="no")


def test_sgd_refuses_the_state_of_an_adam_optimizer():
    """As SphereSparseAdam refuses an SGD state (found by mutation testing: SGD's check had no test)."""
    table = unit_table(5, 3)
    sgd = SphereSparseSGD(table, lr=0.3)
    with pytest.raises(
        ValueError, match=r"^SphereSparseSGD.load_state_dict: got the state of a 'adam' optimizer"
    ):
        sgd.load_state_dict(SphereSparseAdam(table.clone(), lr=0.1).state_dict())
    assert sgd.lr == 0.3


def test_torch_optim_states_load_with_their_hyperparameters_also_before_the_first_step():
    """The states glann_ext 0.1's reference backend saved: a SparseAdam saved before its first step has no
    per-parameter state (its moments load as zeros, its step as 0), eps comes from the param group, and both
    kinds load with projection on (the schema's default). Found by mutation testing: eps taken from the
    defaults, or an SGD state loaded without projection, passed every test."""
    param = torch.nn.Parameter(unit_table(8, 3))
    sparse = torch.optim.SparseAdam([param], lr=0.04, betas=(0.6, 0.95), eps=1e-5)
    opt = SphereSparseAdam(param.detach().clone(), lr=1.0, project=False)
    opt.step(torch.tensor([1, 4]), torch.randn(2, 3))  # moments and counter that the load must reset
    opt.load_state_dict(sparse.state_dict())
    assert (opt.step_count, opt.lr, opt.betas, opt.eps, opt.project) == (0, 0.04, (0.6, 0.95), 1e-5, True)
    assert not opt.exp_avg.any() and not opt.exp_avg_sq.any()
    sgd = SphereSparseSGD(param.detach().clone(), lr=1.0, project=False)
    sgd.load_state_dict(torch.optim.SGD([param], lr=0.3).state_dict())
    assert (sgd.lr, sgd.project) == (0.3, True)


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_latent_optimizer_builds_the_backend_asked_for_and_a_single_row_steps(kind):
    from glann_ext.optim import latent_optimizer

    base = unit_table(6, 4)
    tables = {b: base.clone() for b in ("fused", "reference")}
    opts = {b: latent_optimizer(t, kind, lr=0.1, backend=b) for b, t in tables.items()}
    assert {b: o.backend for b, o in opts.items()} == {"fused": "fused", "reference": "reference"}
    grad = torch.randn(1, 4, generator=torch.Generator().manual_seed(0))
    for o in opts.values():
        o.step(torch.tensor([2]), grad)  # a batch of one row moves that row, on both backends
    assert not torch.equal(tables["reference"][2], base[2]) and torch.equal(tables["reference"][3:], base[3:])
    torch.testing.assert_close(tables["fused"], tables["reference"])


# --------------------------------------------------------------------------------------------------
# torch.library registration
# --------------------------------------------------------------------------------------------------


def test_opcheck():
    z = torch.randn(7, 5)
    torch.library.opcheck(torch.ops.glann_ext.project_to_sphere, (z,))
    torch.library.opcheck(torch.ops.glann_ext.project_to_sphere_inplace, (z.clone(),))
    table, m, v, idx, g = _adam_args()
    idx = torch.tensor([0, 3, 3, 19, 5])
    torch.library.opcheck(
        torch.ops.glann_ext.latent_adam_step, (table, m, v, idx, g, 1, 0.1, 0.9, 0.999, 1e-8, True)
    )
    torch.library.opcheck(torch.ops.glann_ext.latent_sgd_step, (table, idx, g, 0.1, True))


def _in_place_calls():
    """Each in-place op, as a function of the tensor it writes (the optimizer steps write a table)."""
    idx, g = torch.tensor([1]), torch.randn(1, 4)

    def adam(t):
        fused_latent_adam_(t, torch.zeros(3, 4), torch.zeros(3, 4), idx, g, step=1, lr=0.1)

    return {
        "project_to_sphere_": project_to_sphere_,
        "fused_latent_adam_": adam,
        "fused_latent_sgd_": lambda t: fused_latent_sgd_(t, idx, g, lr=0.1),
    }


@pytest.mark.parametrize("op", ["project_to_sphere_", "fused_latent_adam_", "fused_latent_sgd_"])
def test_in_place_ops_bump_the_version_so_autograd_sees_the_write(op):
    a = torch.randn(3, 4, requires_grad=True)
    b = a * 2
    c = (b * b).sum()  # saves b; its gradient needs the unmodified b
    with torch.no_grad():
        _in_place_calls()[op](b)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        c.backward()
    # The moments of the Adam step are written too.
    m, v = torch.zeros(3, 4), torch.zeros(3, 4)
    fused_latent_adam_(torch.randn(3, 4), m, v, torch.tensor([0]), torch.randn(1, 4), step=1, lr=0.1)
    assert m._version > 0 and v._version > 0


@pytest.mark.parametrize("op", ["project_to_sphere_", "fused_latent_adam_", "fused_latent_sgd_"])
def test_in_place_ops_refuse_tensors_autograd_tracks(op):
    call = _in_place_calls()[op]
    leaf = torch.randn(3, 4, requires_grad=True)
    name = "z" if op == "project_to_sphere_" else "table"
    for t in (leaf, leaf[1:], leaf * 2):  # a leaf, a view of it, an intermediate (no backward either)
        before = t.detach().clone()
        with pytest.raises(RuntimeError, match=rf"^{op}: {name} is .*requires grad and grad mode is enabled"):
            call(t)
        assert torch.equal(t.detach(), before)
    # torch's own rule, for comparison: the leaf cannot be written in place with grad mode on.
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        leaf.div_(2)
    with torch.no_grad():  # how glann_ext.optim updates its tables
        call(leaf)
    assert leaf._version > 0


@pytest.mark.parametrize("op", ["project_to_sphere_", "fused_latent_adam_", "fused_latent_sgd_"])
def test_in_place_ops_refuse_inference_tensors_outside_inference_mode(op):
    """Inference tensors skip the kernel that checks torch's in-place rules, so these ops wrote them
    outside inference mode, where torch's own in-place ops raise. Now the same refusal, nothing written;
    inside inference mode they are written."""
    call = _in_place_calls()[op]
    with torch.inference_mode():
        t, other = torch.randn(3, 4), torch.randn(3, 4)
    before = t.clone()
    with pytest.raises(RuntimeError, match="inference tensor outside InferenceMode"):
        other.div_(2)  # torch's rule, for comparison (torch raises after writing)
    name = "z" if op == "project_to_sphere_" else "table"
    with pytest.raises(RuntimeError, match=rf"^{op}: {name} is an inference tensor"):
        call(t)
    assert torch.equal(t, before)
    if op == "fused_latent_adam_":  # the moments are written too
        with torch.inference_mode():
            m = torch.zeros(3, 4)
        with pytest.raises(RuntimeError, match=r"^fused_latent_adam_: exp_avg is an inference tensor"):
            fused_latent_adam_(torch.randn(3, 4), m, torch.zeros(3, 4), torch.tensor([0]), torch.randn(1, 4),
                               step=1, lr=0.1)  # fmt: skip
    with torch.inference_mode():
        call(t)
    assert not torch.equal(t, before)


def test_torch_compile_fullgraph():
    table, m, v, idx, g = _adam_args()
    ref_t, ref_m, ref_v = table.clone(), m.clone(), v.clone()
    fused_latent_adam_(ref_t, ref_m, ref_v, idx, g, step=1, lr=0.1)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(t, a, b, i, gr):
        torch.ops.glann_ext.latent_adam_step(t, a, b, i, gr, 1, 0.1, 0.9, 0.999, 1e-8, True)
        return torch.ops.glann_ext.project_to_sphere(t * 2)

    out = step(table, m, v, idx, g)
    assert torch.equal(table, ref_t) and torch.equal(m, ref_m)
    torch.testing.assert_close(out, project_to_sphere(ref_t * 2))


# --------------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU and a CUDA build)
# --------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cuda_project_matches_cpu_on_side_stream(dtype):
    z = torch.randn(1001, 67, dtype=torch.float64)
    z[5] = 0
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        zc = z.to("cuda", dtype)[:, 1:66]
        out = project_to_sphere(zc)
        zc2 = zc.clone()
        project_to_sphere_(zc2)
    stream.synchronize()
    ref = oracle_project(z[:, 1:66].to(dtype).double())
    tol = (
        {"rtol": 3e-7, "atol": 1e-7}
        if dtype == torch.float32
        else (TOL[torch.float64] if dtype == torch.float64 else {"rtol": 1e-2, "atol": 1e-3})
    )
    torch.testing.assert_close(out.cpu().double(), ref, **tol)
    torch.testing.assert_close(zc2.cpu(), out.cpu(), rtol=0, atol=0)
    if dtype in DTYPES:  # the CPU kernel on the same input
        torch.testing.assert_close(out.cpu(), project_to_sphere(z[:, 1:66].to(dtype)), **TOL[dtype])


@pytest.mark.cuda
def test_cuda_project_nonfinite_and_extremes():
    z = torch.randn(100, 33, device="cuda")
    z[11, 2] = float("nan")
    z[50] = 1e30
    before = z.clone()
    with pytest.raises(ValueError, match="row 11"):  # noqa: PT012 (CUDA raises at the flush)
        project_to_sphere_(z)
        glann_ext.ops.raise_deferred_errors(wait=True)  # CUDA: the kernel's flag is read later
    torch.testing.assert_close(z[11], before[11], equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(z[50].norm(), torch.tensor(1.0, device="cuda"))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_fused_steps_match_cpu_on_side_stream(dtype):
    n, d, b = 500, 64, 300
    base = unit_table(n, d, dtype)
    idx = torch.randint(0, n, (b,))
    g = torch.randn(b, d, dtype=dtype)
    cpu = SphereSparseAdam(base.clone(), lr=0.01)
    cpu_sgd = SphereSparseSGD(base.clone(), lr=0.1)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        dev = SphereSparseAdam(base.cuda(), lr=0.01)
        dev_sgd = SphereSparseSGD(base.cuda(), lr=0.1)
        for _ in range(3):
            dev.step(idx.cuda(), g.cuda())
            dev_sgd.step(idx.cuda(), g.cuda())
    for _ in range(3):
        cpu.step(idx, g)
        cpu_sgd.step(idx, g)
    stream.synchronize()
    tol = PARAM_TOL[dtype]
    torch.testing.assert_close(dev.table.cpu(), cpu.table, **tol)
    # Repeated indices' gradients are summed by torch's coalesce, in another order on CUDA: a few ulp.
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(dev.exp_avg.cpu(), cpu.exp_avg, rtol=4 * eps, atol=4 * eps)
    torch.testing.assert_close(dev_sgd.table.cpu(), cpu_sgd.table, rtol=1e-6, atol=1e-7)
    bad = g.cuda()
    bad[4, 0] = float("inf")
    with pytest.raises(ValueError, match="grad row 4"):
        dev.step(idx.cuda(), bad)
    with pytest.raises(ValueError, match="indices must be in"):
        dev.step(torch.full((3,), n, device="cuda"), g[:3].cuda())
    with pytest.raises(ValueError, match="must be on the same device"):
        dev.step(idx, g.cuda())


@pytest.mark.cuda
def test_cuda_reduce_overhead_compile():
    table, _m, _v, _idx, _g = (t.cuda() for t in _adam_args())

    @torch.compile(mode="reduce-overhead")
    def proj(x):
        return torch.ops.glann_ext.project_to_sphere(x * 1.0)

    for _ in range(3):
        out = proj(table)
    torch.testing.assert_close(out, project_to_sphere(table))


def test_build_info_mentions_cuda():
    assert isinstance(glann_ext.build_info()["cuda_compiled"], bool)


def test_strided_grad_and_indices_match_contiguous():
    n, d, b = 50, 9, 20
    base = unit_table(n, d)
    idx = torch.randint(0, n, (2 * b,))[::2]  # strided indices, with duplicates
    wide = torch.randn(b, 3 * d)
    g_slice = wide[:, d : 2 * d]  # row stride 3d
    g_t = torch.randn(d, b).t()  # column stride b
    for g in (g_slice, g_t):
        t1, t2 = base.clone(), base.clone()
        s1, s2 = SphereSparseAdam(t1, lr=0.05), SphereSparseAdam(t2, lr=0.05)
        s1.step(idx, g)
        s2.step(idx.contiguous(), g.contiguous())
        assert torch.equal(t1, t2) and torch.equal(s1.exp_avg_sq, s2.exp_avg_sq)
        t3, t4 = base.clone(), base.clone()
        fused_latent_sgd_(t3, idx, g, lr=0.3)
        fused_latent_sgd_(t4, idx.contiguous(), g.contiguous(), lr=0.3)
        assert torch.equal(t3, t4)


# Mutation test (2026-12-07): _span dropped the last element of a strided tensor, so overlap through it went
# unseen
def test_grad_whose_last_element_is_the_tables_first_is_refused():
    buf = torch.zeros(100, dtype=torch.float32)
    table = buf[50:74].view(6, 4)
    table.copy_(unit_table(6, 4))
    grad = buf.as_strided((2, 4), (10, 1), 37)  # not contiguous; its last element is table[0, 0]
    assert grad.data_ptr() + 13 * 4 == table.data_ptr()
    before = table.clone()
    with pytest.raises(ValueError, match="table and grad share memory"):
        fused_latent_sgd_(table, torch.tensor([0, 1]), grad, lr=0.1)
    assert torch.equal(table, before)


# Mutation test (2026-12-07): first_nonfinite_row returned the highest bad row
def test_nonfinite_grad_and_keys_name_their_lowest_bad_row():
    table, grad = unit_table(6, 4, torch.float64), torch.randn(4, 4, dtype=torch.float64)
    grad[1, 0], grad[3, 2] = float("nan"), float("inf")
    m, v = torch.zeros_like(table), torch.zeros_like(table)
    with pytest.raises(NonFiniteError, match=r"grad row 1 contains NaN") as info:
        fused_latent_adam_(table, m, v, torch.tensor([0, 1, 2, 3]), grad, step=1, lr=0.1)
    assert info.value.row == 1
    q, k = torch.randn(3, 2), torch.randn(8, 2)
    k[2, 0], k[6, 1] = float("nan"), float("nan")
    best = glann_ext.ops.nn_argmin.RunningArgmin(
        q, scores=reference.nn_argmin_scores_reference, check_finite=True
    )
    with pytest.raises(NonFiniteError, match=r"keys row 2 contains NaN"):
        best.update(k, 0)


# Mutation test (2026-12-07): the projection's backward accumulated float32 rows in float32
def test_projection_gradient_of_float32_rows_is_computed_in_float64():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(8, 2000, generator=g).requires_grad_()
    y = glann_ext.project_to_sphere(z)
    # an incoming gradient almost along y: the result is its small perpendicular part, which a float32
    # dot product (rounding ~1e-7 of |g|) swamps
    perp = torch.randn(8, 2000, generator=g) * 1e-4
    grad = (y.detach() + perp).float()
    (gz,) = torch.autograd.grad(y, z, grad)
    yd, gd = y.detach().double(), grad.double()
    want = (gd - yd * (yd * gd).sum(1, keepdim=True)) / z.detach().double().norm(dim=1, keepdim=True)
    torch.testing.assert_close(gz.double(), want, rtol=1e-5, atol=1e-12)


def test_project_rows_holding_the_largest_float64():
    """A float64 row holding +-max is finite: its sum of squares overflows, the rescaled path must
    project it (a `< max` test would take it for Inf and raise NonFiniteError)."""
    big = torch.finfo(torch.float64).max
    x = torch.tensor([[big, 0.0, -big], [-big, 0.0, 0.0], [big, big, big]], dtype=torch.float64)
    out = glann_ext.project_to_sphere(x)
    r2, r3 = 2.0**-0.5, 3.0**-0.5
    want = torch.tensor([[r2, 0.0, -r2], [-1.0, 0.0, 0.0], [r3, r3, r3]], dtype=torch.float64)
    torch.testing.assert_close(out, want)


def test_project_scales_by_the_correctly_rounded_inverse_norm():
    """The projection computes inv = 1 / sqrt(s) and y = x * inv in the accumulation type (on the CPU as
    in the CUDA kernels). With integer float64 rows the sum of squares is exact, so the result is pinned
    to the bit (sqrt(1 / s) differs in the last place for some rows)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-1000, 1001, (512, 37), generator=g).double()
    x[x.abs().sum(1) == 0, 0] = 1.0
    out = glann_ext.project_to_sphere(x)
    want = torch.stack([row * (1.0 / math.sqrt(float((row * row).sum()))) for row in x])
    assert torch.equal(out, want)

"""The CUDA kernels at the sizes, dtypes, layouts and values no CPU run reaches (issue 15, item 2).

Oracles: ``glann_ext.ops.reference`` (plain torch; float64 where the kernel computes in float32) and exact
float64 distances. Low precision follows STYLE.md (at most 2x the error of torch's reference run in the same
precision); nn_argmin's float16/bfloat16 inputs are held to the float32 bound, since every product of two
such numbers is exact in float32.

``test_cuda_small_*`` tests are small on purpose: scripts/gpu_check.sh runs them under compute-sanitizer
(memcheck on all, racecheck on nn_argmin and the Laplacian, the kernels that use shared memory). The others
need gigabytes or millions of rows and run only in the plain CUDA test stage.
"""

from __future__ import annotations

import math

import pytest
import torch
from cuda_testing import (
    DTYPES,
    LOW_PRECISION,
    assert_low_precision_close,
    layout,
    loss_and_grads,
    need_free_memory,
    reported_row,
)

from glann_ext import (
    fused_latent_adam_,
    fused_latent_sgd_,
    laplacian_pyramid_loss,
    nn_argmin,
    project_to_sphere,
    project_to_sphere_,
)
from glann_ext.errors import NonFiniteError
from glann_ext.ops import raise_deferred_errors, reference
from glann_ext.ops.kernels import use_cuda_kernels

pytestmark = pytest.mark.cuda
CUDA = "cuda"
# Tolerances against float64 references, for kernels that compute in float32 (or float64).
TOL = {"fp32": {"rtol": 1e-5, "atol": 1e-6}, "fp64": {"rtol": 1e-10, "atol": 1e-12}}
PARAM_TOL = {"fp32": {"rtol": 1e-6, "atol": 1e-7}, "fp64": {"rtol": 1e-14, "atol": 1e-15}}


def randn(*shape, dt="fp32", seed=0) -> torch.Tensor:
    """Standard normal values drawn in float64 on the CPU (reproducible), rounded to ``dt``, on the GPU."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(CUDA, DTYPES[dt])


# --------------------------------------------------------------------------------------------------
# nn_argmin
# --------------------------------------------------------------------------------------------------


def assert_nearest(q: torch.Tensor, k: torch.Tensor, idx: torch.Tensor, dist: torch.Tensor | None = None):
    """Each returned key is as near as the nearest one up to the float32 rounding of ||k||^2 - 2 q.k
    (2e-6 of |q|^2 + max |k|^2), and the index is the exact float64 argmin (the lowest index among equal
    distances) for at least 99% of the rows; returned distances match the exact ones."""
    d = ((q.double()[:, None, :] - k.double()[None, :, :]) ** 2).sum(-1)
    rows = torch.arange(q.shape[0], device=q.device)
    chosen, best = d[rows, idx], d.min(1).values
    scale = (q.double() ** 2).sum(1) + (k.double() ** 2).sum(1).max()
    assert bool(((chosen - best) <= 2e-6 * scale + 1e-12).all()), "a returned key is farther than the nearest"
    assert (idx == d.argmin(1)).double().mean().item() >= 0.99
    if dist is not None:
        torch.testing.assert_close(dist.double(), chosen, rtol=1e-5, atol=1e-5)


SEARCHES = [  # (kernels, dtype): each search on each dtype it runs (float64 always takes the legacy one)
    *(("legacy", dt) for dt in ("fp32", "fp64", "fp16", "bf16")),
    *(("hopper", dt) for dt in ("fp32", "fp16", "bf16")),
]


@pytest.mark.parametrize("how", ["contiguous", "strided", "transposed"])
@pytest.mark.parametrize("d", [1, 7, 17, 100])
@pytest.mark.parametrize(("kernels", "dt"), SEARCHES)
def test_cuda_small_nn_argmin_dtypes_layouts(kernels, dt, d, how):
    """Both searches, each pinned (the default takes one per device; the hopper stage's environment would
    not reach a pinned test), so that the sanitizers run each on any GPU that has it (off Hopper, "hopper"
    runs the legacy one again). D not a multiple of 16 (tails of the 16-wide stages and of the tensor-core
    search's 16-byte chunks), N and M just past multiples of the 128-row tiles, every input dtype, strided
    and column-major inputs; six equal keys (the lowest index wins: three copies in the same 128-key tile,
    so in other columns and threads of it, one in a later tile, one in the last, partial tile) and a query
    whose answer lies in the last, partial key tile."""
    n, m = 131, 517
    q, k = randn(n, d, dt=dt), randn(m, d, dt=dt, seed=1)
    for copy in (9, 15, 40, 300, 516):
        k[copy] = k[7]
    q[0], q[1] = k[7], k[515]
    with use_cuda_kernels(kernels):
        idx, dist = nn_argmin(layout(q, how), layout(k, how), return_distances=True)
    # The lowest index holding exactly that key (at D = 1, low precision repeats values by chance).
    first = [int((k == k[j]).all(1).nonzero()[0]) for j in (7, 515)]
    assert first[0] <= 7 and idx[:2].tolist() == first
    assert_nearest(q, k, idx, dist)


def test_cuda_small_nn_argmin_nonfinite_rows():
    """Several NaN/Inf rows at once: a ValueError (naming the lowest row where the error carries one); with
    the check off, NaN query rows get a NaN distance and an index in range, the other rows their exact answer,
    and a NaN key is never returned while finite keys exist."""
    q, k = randn(40, 24), randn(300, 24, seed=1)
    for bad_q, bad_k, lowest in ([(9, 3, 30), (), 3], [(), (250, 2), 2]):
        qb, kb = q.clone(), k.clone()
        qb[list(bad_q)] = float("nan")
        kb[list(bad_k)] = float("inf")
        with pytest.raises(NonFiniteError) as err:
            nn_argmin(qb, kb)
            raise_deferred_errors(wait=True)  # CUDA: the kernels' flags are read later
        assert reported_row(err.value) == lowest
    nan_q, nan_k = [0, 5], [0, 3]
    k[3] = q[1]  # q[1]'s nearest key becomes NaN below: the answer must be another key
    qn, kn = q.clone(), k.clone()
    qn[nan_q], kn[nan_k] = float("nan"), float("nan")
    idx, dist = nn_argmin(qn, kn, check_finite_values=False, return_distances=True)
    assert bool(torch.isnan(dist[nan_q]).all()) and bool(((idx[nan_q] >= 0) & (idx[nan_q] < 300)).all())
    rows = [r for r in range(40) if r not in nan_q]
    keys = torch.tensor([c for c in range(300) if c not in nan_k], device=CUDA)
    position = torch.full((300,), -1, dtype=torch.int64, device=CUDA)
    position[keys] = torch.arange(keys.numel(), device=CUDA)
    assert bool((position[idx[rows]] >= 0).all()), "a NaN key was returned"
    assert_nearest(q[rows], k[keys], position[idx[rows]], dist[rows])


@pytest.mark.parametrize("dt", ["fp32", "bf16"])
def test_cuda_nn_argmin_scale_invariant_up_to_the_norm_bound(dt):
    """Scaling queries and keys by a power of two (exact) does not change the answer while every squared
    norm stays within float32's max / 4 (2^56 here: norms about 6e17); past it (2^63: norms about 7e19, where
    ||k||^2 and q.k overflow and every score was NaN or inf, index 0 coming back with no error) the deferred
    error names the first query row, and leaves nothing pending for the next call."""
    k = randn(1000, 64, dt=dt)
    planted = torch.arange(100, 164, device=CUDA)
    q = (k[planted].double() + 0.01 * randn(64, 64, dt="fp64", seed=1)).to(DTYPES[dt])
    expected = nn_argmin(q, k)
    assert torch.equal(expected, planted)  # so index 0 would be a wrong answer, not a lucky one
    assert torch.equal(nn_argmin(q * 2.0**56, k * 2.0**56), expected)
    nn_argmin(q * 2.0**63, k * 2.0**63)
    with pytest.raises(ValueError, match=r"^nn_argmin: queries row 0 has a squared L2 norm above float32"):
        raise_deferred_errors(wait=True)
    raise_deferred_errors(wait=True)  # nothing left


@pytest.mark.parametrize("dt", ["fp16", "fp32"])
def test_cuda_nn_argmin_keys_past_2pow31_elements(dt):
    """M * D > 2^31 elements (34.6M keys of D = 64): keys stored past element 2^31 are found, at their
    index (int32 element offsets would wrap)."""
    d = 64
    m = (1 << 31) // d + (1 << 20)
    need_free_memory(1.5 * m * d * DTYPES[dt].itemsize + (2 << 30))
    k = torch.randn(m, d, device=CUDA, dtype=DTYPES[dt])
    edge = (1 << 31) // d  # the first key whose elements all lie past 2^31
    planted = torch.tensor([m - 1, m - 2, edge, edge + 1, edge - 1, 12345], device=CUDA)
    extra = torch.randn(10, d, device=CUDA, dtype=DTYPES[dt])
    idx, dist = nn_argmin(torch.cat([k[planted], extra]), k, return_distances=True)
    assert torch.equal(idx[:6], planted) and bool((dist[:6] == 0).all())
    # Random queries: as near as torch's tiled float32 search finds (both checked in float64).
    ref = reference.nn_argmin_addmm(extra, k, tile=1 << 22)
    ours_d = ((extra.double() - k[idx[6:]].double()) ** 2).sum(1)
    ref_d = ((extra.double() - k[ref].double()) ** 2).sum(1)
    scale = (extra.double() ** 2).sum(1) + 4 * d
    assert bool((ours_d <= ref_d + 2e-6 * scale).all())


# --------------------------------------------------------------------------------------------------
# Laplacian-pyramid loss
# --------------------------------------------------------------------------------------------------


def _check_laplacian(x0: torch.Tensor, y0: torch.Tensor, x, y, dt: str, levels=None) -> None:
    """Loss per sample and both gradients of (x, y) (the values of (x0, y0) in some layout) against the
    float64 reference; float16/bfloat16 by STYLE.md's rule against the reference run in that precision."""
    seed = torch.rand(x0.shape[0], dtype=torch.float64, device=CUDA) + 0.5
    ours = loss_and_grads(laplacian_pyramid_loss, x, y, seed, levels=levels)
    exact = loss_and_grads(
        reference.laplacian_pyramid_loss_reference, x0.double(), y0.double(), seed, levels=levels
    )
    if dt in LOW_PRECISION:
        assert ours[0].dtype == torch.float32 and ours[1].dtype == DTYPES[dt]
        low = loss_and_grads(reference.laplacian_pyramid_loss_reference, x0, y0, seed, levels=levels)
        for mine, ref, torch_low in zip(ours, exact, low):
            assert_low_precision_close(mine, ref, torch_low, atol=1e-6)
    else:
        for mine, ref in zip(ours, exact):
            torch.testing.assert_close(mine.double(), ref, **TOL[dt])


@pytest.mark.parametrize("how", ["contiguous", "channels_last", "transposed", "strided"])
@pytest.mark.parametrize(
    ("shape", "levels"), [((2, 3, 29, 37), None), ((3, 1, 1, 17), 4)], ids=["29x37", "1x17-L4"]
)
@pytest.mark.parametrize("dt", ["fp32", "fp64", "fp16", "bf16"])
def test_cuda_small_laplacian_dtypes_layouts(dt, shape, levels, how):
    """Odd sizes (W not a multiple of 16), a one-row image with more levels than it can halve, every dtype,
    channels-last, column-major and strided inputs: loss and both gradients."""
    x0, y0 = randn(*shape, dt=dt), randn(*shape, dt=dt, seed=1)
    _check_laplacian(x0, y0, layout(x0, how), layout(y0, how), dt, levels)


def test_cuda_small_laplacian_expanded_target():
    """y broadcast over the batch with expand() (stride 0): read through, not copied."""
    x0, y1 = randn(4, 2, 19, 23), randn(1, 2, 19, 23, seed=1)
    _check_laplacian(x0, y1.expand(4, 2, 19, 23).contiguous(), x0, y1.expand(4, 2, 19, 23), "fp32")


def test_cuda_small_laplacian_nonfinite_samples():
    """NaN/Inf in two samples with the check off: their losses are not finite, the other samples' losses
    and gradients are exact (nothing leaks across planes through the partial sums), and every gradient
    stays finite (the sign of NaN is 0, as the module documents). With the check on, the flush raises."""
    x, y = randn(5, 2, 16, 16), randn(5, 2, 16, 16, seed=1)
    x[1, 0, 3, 4], x[3, 1, 0, 0] = float("nan"), float("inf")
    seed = torch.rand(5, dtype=torch.float64, device=CUDA) + 0.5
    with pytest.raises(NonFiniteError, match=r"x sample 1 \(batch index\)"):
        laplacian_pyramid_loss(x, y)
        raise_deferred_errors(wait=True)
    loss, gx, gy = loss_and_grads(laplacian_pyramid_loss, x, y, seed, check_finite_values=False)
    assert not bool(torch.isfinite(loss[[1, 3]]).any())
    assert bool(torch.isfinite(gx).all()) and bool(torch.isfinite(gy).all())
    good = [0, 2, 4]
    ref = loss_and_grads(
        reference.laplacian_pyramid_loss_reference, x[good].double(), y[good].double(), seed[good]
    )
    for mine, exact in zip((loss[good], gx[good], gy[good]), ref):
        torch.testing.assert_close(mine.double(), exact, **TOL["fp32"])


@pytest.mark.parametrize("shape", [(70000, 1, 8, 8), (33000, 3, 6, 5)], ids=["70000x1", "33000x3"])
def test_cuda_laplacian_more_than_65535_planes(shape):
    """More than 65,535 planes (the grid's y limit; the kernels stride over planes) and, for the first shape,
    more than 65,535 samples (the final per-sample reduction strides too): the tail planes are right."""
    x, y = randn(*shape), randn(*shape, seed=1)
    _check_laplacian(x, y, x, y, "fp32")


# --------------------------------------------------------------------------------------------------
# Projection
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["contiguous", "strided", "transposed"])
@pytest.mark.parametrize("d", [1, 7, 17, 100])
@pytest.mark.parametrize("dt", ["fp32", "fp64", "fp16", "bf16"])
def test_cuda_small_project_dtypes_layouts(dt, d, how):
    """D not a multiple of 16 or of the warp, every dtype, strided and column-major rows, a zero row;
    out of place and in place (bit-identical)."""
    z0 = randn(1000, d, dt=dt)
    z0[17] = 0
    out = project_to_sphere(layout(z0, how))
    z2 = layout(z0, how)
    assert project_to_sphere_(z2) is z2
    assert torch.equal(z2, out)
    fill = torch.full((d,), 1 / math.sqrt(d), dtype=DTYPES[dt], device=CUDA)
    torch.testing.assert_close(out[17], fill, rtol=2**-8 if dt in LOW_PRECISION else 0, atol=0)
    rows = torch.arange(1000, device=CUDA) != 17
    if dt in LOW_PRECISION:
        exact = reference.project_to_sphere_reference(z0.double())
        torch_low = torch.nn.functional.normalize(z0, dim=1)
        assert_low_precision_close(out[rows], exact[rows], torch_low[rows])
    else:
        tol = {"rtol": 3e-7, "atol": 1e-7} if dt == "fp32" else {"rtol": 2e-15, "atol": 1e-300}
        torch.testing.assert_close(out, reference.project_to_sphere_reference(z0), **tol)


@pytest.mark.parametrize("dt", ["fp32", "bf16"])
def test_cuda_small_project_nonfinite_rows(dt):
    """Several NaN/Inf rows at once, far apart (different blocks): the lowest is reported, every finite row
    is projected, the bad rows are left exactly as they were (in place) and the out-of-place call raises too."""
    z = randn(4000, 33, dt=dt)
    bad = [2000, 5, 17, 3999]
    z[bad[0]] = float("inf")
    z[bad[1:]] = float("nan")
    expected = reference.project_to_sphere_reference(z)  # NaN in the bad rows, which are not compared
    with pytest.raises(NonFiniteError) as err:
        project_to_sphere(z)
        raise_deferred_errors(wait=True)
    assert reported_row(err.value) == 5
    before = z.clone()
    with pytest.raises(NonFiniteError) as err:
        project_to_sphere_(z)
        raise_deferred_errors(wait=True)
    assert reported_row(err.value) == 5
    torch.testing.assert_close(z[bad], before[bad], equal_nan=True, rtol=0, atol=0)
    good = torch.ones(4000, dtype=torch.bool, device=CUDA)
    good[bad] = False
    tol = {"rtol": 3e-7, "atol": 1e-7} if dt == "fp32" else {"rtol": 8e-3, "atol": 1e-3}
    torch.testing.assert_close(z[good], expected[good], **tol)


@pytest.mark.parametrize(("dt", "power"), [("fp32", 63), ("fp32", 120), ("bf16", 120), ("fp64", 1000)])
def test_cuda_small_project_near_the_float_range(dt, power):
    """Rows whose sum of squares overflows the dtype (finite values up to 2^122 in float32/bfloat16, 2^1002
    in float64): scaling by a power of two is exact, so the result equals the unscaled rows' projection."""
    z0 = randn(300, 65, dt=dt)
    out = project_to_sphere(z0 * 2.0**power)
    assert bool(torch.isfinite(out).all())
    tol = {"fp32": {"rtol": 3e-7, "atol": 1e-7}, "bf16": {"rtol": 8e-3, "atol": 1e-3}}.get(dt, TOL["fp64"])
    torch.testing.assert_close(out, reference.project_to_sphere_reference(z0), **tol)


def test_cuda_project_more_than_8p4m_rows():
    """9M rows: past 2^20 blocks x 8 rows (8,388,608) the kernel strides over rows; NaN rows on both sides of
    that boundary and at the very end are reported (the lowest), left unwritten, and all others projected."""
    n = 9_000_000
    z = torch.randn(n, 3, device=CUDA)
    out = project_to_sphere(z)
    torch.testing.assert_close(out, reference.project_to_sphere_reference(z), rtol=3e-7, atol=1e-7)
    bad = [8_999_999, 8_388_608, 17, 8_388_607]
    z[bad] = float("nan")
    with pytest.raises(NonFiniteError) as err:
        project_to_sphere_(z)
        raise_deferred_errors(wait=True)
    assert reported_row(err.value) == 17
    assert bool(z[bad].isnan().all())
    good = torch.ones(n, dtype=torch.bool, device=CUDA)
    good[bad] = False
    assert torch.equal(z[good], out[good])


# --------------------------------------------------------------------------------------------------
# Fused latent steps
# --------------------------------------------------------------------------------------------------


def _unit_rows(n: int, d: int, dt: str = "fp32", seed: int = 0) -> torch.Tensor:
    return reference.project_to_sphere_reference(randn(n, d, dt=dt, seed=seed))


def _step_both(opt: str, ours: list, ref: list, idx, grad, grad_view, steps: int = 3) -> None:
    """``steps`` steps of the fused op on ``ours`` (grad given as ``grad_view``) and of the reference on ``ref``."""
    for s in range(1, steps + 1):
        if opt == "adam":
            fused_latent_adam_(*ours, idx, grad_view, step=s, lr=0.05)
            reference.fused_latent_adam_reference(*ref, idx, grad, step=s, lr=0.05)
        else:
            fused_latent_sgd_(ours[0], idx, grad_view, lr=0.1)
            reference.fused_latent_sgd_reference(ref[0], idx, grad, lr=0.1)


@pytest.mark.parametrize("grad_layout", ["strided", "transposed"])
@pytest.mark.parametrize("dt", ["fp32", "fp64"])
@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_cuda_small_latent_step_matches_reference(opt, dt, grad_layout):
    """Three steps on a table with D = 33 and duplicate indices, grad strided or column-major, against the
    reference step (SparseAdam's functional step / index_add_, then re-projection)."""
    table = _unit_rows(257, 33, dt)
    idx = torch.randint(0, 257, (100,), generator=torch.Generator().manual_seed(2)).to(CUDA)
    grad = randn(100, 33, dt=dt, seed=3)
    ours = [table.clone(), torch.zeros_like(table), torch.zeros_like(table)]
    ref = [table.clone(), torch.zeros_like(table), torch.zeros_like(table)]
    _step_both(opt, ours, ref, idx, grad, layout(grad, grad_layout))
    for mine, exact in zip(ours, ref):
        torch.testing.assert_close(mine, exact, **PARAM_TOL[dt])


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_cuda_small_latent_nonfinite_grad_rows(opt):
    """NaN/Inf in several grad rows: ValueError naming the lowest, and nothing written."""
    table = _unit_rows(50, 8)
    state = [table, torch.zeros_like(table), torch.zeros_like(table)]
    before = [t.clone() for t in state]
    idx = torch.arange(10, 20, device=CUDA)
    grad = randn(10, 8, seed=1)
    grad[9, 1], grad[4, 0], grad[7, 7] = float("nan"), float("nan"), float("inf")
    with pytest.raises(NonFiniteError) as err:
        if opt == "adam":
            fused_latent_adam_(*state, idx, grad, step=1, lr=0.1)
        else:
            fused_latent_sgd_(table, idx, grad, lr=0.1)
    assert reported_row(err.value) == 4
    for now, then in zip(state, before):
        assert torch.equal(now, then)


def test_cuda_latent_sgd_more_than_8p4m_rows():
    """A batch of 9M rows: past 2^20 blocks x 8 rows the step kernel strides over rows."""
    n, d = 9_000_000, 4
    table = torch.nn.functional.normalize(torch.randn(n, d, device=CUDA), dim=1)
    idx = torch.randperm(n, device=CUDA)
    grad = torch.randn(n, d, device=CUDA)
    ours, ref = [table.clone()], [table.clone()]
    _step_both("sgd", ours, ref, idx, grad, grad, steps=1)
    torch.testing.assert_close(ours[0], ref[0], **PARAM_TOL["fp32"])

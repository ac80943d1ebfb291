"""Tests of glann_ext.laplacian_pyramid_loss against an independent dense-matrix oracle, the plain
PyTorch reference and its own properties; CUDA tests are marked and skip cleanly without a GPU."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from glann_testing import RecordOps, child_kwargs
from hypothesis import given, settings
from hypothesis import strategies as st

import glann_ext
import glann_ext.ops
from glann_ext.errors import NonFiniteError
from glann_ext.ops import laplacian as lap_mod
from glann_ext.ops import reference

loss_fn = glann_ext.laplacian_pyramid_loss

# ---- oracle: the pyramid as dense 1-D matrices, G' = A_h G A_w^T, gradients by torch autograd ----

TAPS = [1.0, 4.0, 6.0, 4.0, 1.0]


def _reflect(i: int, n: int) -> int:
    if n == 1:
        return 0
    while i < 0 or i >= n:  # mirror without repeating the edge sample
        i = -i if i < 0 else 2 * (n - 1) - i
    return i


@functools.cache
def _blur(n: int) -> torch.Tensor:
    m = torch.zeros(n, n, dtype=torch.float64)
    for k in range(n):
        for a, t in enumerate(TAPS):
            m[k, _reflect(k + a - 2, n)] += t / 16
    return m


@functools.cache
def _down(n: int) -> torch.Tensor:
    return _blur(n)[::2].clone()


@functools.cache
def _up(n: int) -> torch.Tensor:
    zero_insert = torch.zeros(n, (n + 1) // 2, dtype=torch.float64)
    zero_insert[::2] = torch.eye((n + 1) // 2, dtype=torch.float64)
    return 2 * _blur(n) @ zero_insert


def oracle(
    x: torch.Tensor,
    y: torch.Tensor,
    levels: int | None = None,
    reduction: str = "mean",
    level_weights: list[float] | None = None,
) -> torch.Tensor:
    b, c, h, w = x.shape
    if levels is None:
        levels = min(5, 1 + math.floor(math.log2(min(h, w))))
    weights = [4.0**j for j in range(levels)] if level_weights is None else level_weights
    g = (x - y).double()
    per_sample = 0
    for j in range(levels):
        hn, wn = g.shape[-2:]
        if j + 1 < levels:
            coarse = _down(hn) @ g @ _down(wn).T
            lap = g - _up(hn) @ coarse @ _up(wn).T
        else:
            lap = g
        per_sample = per_sample + weights[j] * lap.abs().sum(dim=(1, 2, 3))
        if j + 1 < levels:
            g = coarse
    if reduction == "none":
        return per_sample / (c * h * w)
    return per_sample.sum() if reduction == "sum" else per_sample.sum() / (b * c * h * w)


def _tols(x, y, levels, reduction) -> tuple[dict, dict]:
    """assert_close tolerances for the loss and the gradients. float64: tight. float32: the rounding
    error of level j is amplified by its weight 4^j, which dominates once levels stop shrinking
    (tiny images, many levels), so the absolute tolerance follows sum_j 4^j * pixels_j."""
    if x.dtype == torch.float64:
        return {"rtol": 1e-10, "atol": 1e-12}, {"rtol": 1e-10, "atol": 1e-12}
    b, c, h, w = x.shape
    levels = reference.default_levels(h, w) if levels is None else levels
    sizes = [(h, w)]
    for _ in range(levels - 1):
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    weight = sum(4.0**j * hj * wj for j, (hj, wj) in enumerate(sizes)) / (h * w)  # 1 per level while halving
    per = {"mean": b * c * h * w, "none": c * h * w, "sum": 1}[reduction]
    dmax = (x.double() - y.double()).abs().max().item()
    loss_atol = 1e-6 * weight * dmax * (b * c * h * w if reduction == "sum" else 1)
    grad_atol = 1e-6 * sum(4.0**j for j in range(levels)) / per
    return {"rtol": 2e-5, "atol": max(loss_atol, 1e-6)}, {"rtol": 2e-5, "atol": grad_atol}


def _check(x, y, levels=None, reduction="mean", against=oracle, fn=loss_fn, **kw):
    """Values and gradients w.r.t. x and y of our op (`fn`) against `against` (computed in float64)."""
    xa, ya = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    xo, yo = x.detach().double().requires_grad_(), y.detach().double().requires_grad_()
    ours = fn(xa, ya, levels=levels, reduction=reduction, **kw)
    ref = against(xo, yo, levels=levels, reduction=reduction, **kw)
    assert ours.dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32)
    assert ours.shape == ref.shape
    loss_tol, grad_tol = _tols(x, y, levels, reduction)
    torch.testing.assert_close(ours.double(), ref, **loss_tol)
    seed = torch.rand(ref.shape, dtype=torch.float64) + 0.5  # non-uniform upstream gradient
    gx, gy = torch.autograd.grad(ours, (xa, ya), seed.to(ours.dtype))
    rx, ry = torch.autograd.grad(ref, (xo, yo), seed)
    torch.testing.assert_close(gx.double(), rx, **grad_tol)
    torch.testing.assert_close(gy.double(), ry, **grad_tol)


SHAPES = [
    (1, 1, 1, 1),
    (1, 1, 1, 17),
    (1, 1, 9, 1),
    (1, 1, 2, 3),
    (2, 3, 7, 13),
    (1, 2, 29, 31),
    (4, 1, 28, 28),
    (2, 3, 64, 64),
    (3, 2, 5, 5),
    (1, 1, 4, 2),
    (5, 4, 9, 11),
    (8, 2, 16, 3),  # several full CPU plane groups (8 float / 4 double planes) plus a partial one
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_oracle(shape, dtype):
    _check(torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype))


@pytest.mark.parametrize("levels", range(1, 17))
def test_every_level_count(levels):
    for shape in [(2, 2, 13, 10), (1, 1, 1, 6), (1, 1, 33, 3)]:
        x, y = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
        _check(x, y, levels=levels)
        _check(x, y, levels=levels, against=reference.laplacian_pyramid_loss_reference)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reductions_match_reference(reduction, dtype):
    x, y = torch.randn(3, 2, 19, 24, dtype=dtype), torch.randn(3, 2, 19, 24, dtype=dtype)
    _check(x, y, reduction=reduction, against=reference.laplacian_pyramid_loss_reference)
    _check(x, y, levels=3, reduction=reduction)


def _loss_grad_seeds(dtype: torch.dtype) -> dict[str, list[torch.Tensor]]:
    """Gradients of the loss of 5 samples as autograd hands them over, per reduction: for "none" a (5,) seed
    that is contiguous, strided or expanded (stride 0, as ``loss.sum().backward()`` gives); one value else."""
    base = torch.rand(10, dtype=dtype) + 0.5
    return {"none": [base[:5], base[::2], base[:1].expand(5)], "mean": [base[0]], "sum": [base[1]]}


@pytest.mark.parametrize("pixel_path", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grad_of_the_loss_in_every_layout(pixel_path, dtype):
    """The kernels scale each sample's gradient by the loss's gradient themselves (read through its stride,
    divided by the reduction's divisor): a per-sample seed that is contiguous, strided or expanded (stride
    0, as ``loss.sum().backward()`` gives), and a seed of the reduced losses, all give the reference's."""
    x = torch.randn(5, 2, 11, 9, dtype=dtype, requires_grad=True)
    y = torch.randn(5, 2, 11, 9, dtype=dtype)
    xr = x.detach().double().requires_grad_(True)
    seeds = _loss_grad_seeds(dtype)
    tol = {"rtol": 1e-12, "atol": 1e-14} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-7}
    for reduction, grads in seeds.items():
        for seed in grads:
            loss = lap_mod._loss(x, y, None, reduction, pixel_path=pixel_path)
            (got,) = torch.autograd.grad(loss, x, seed)
            ref = reference.laplacian_pyramid_loss_reference(xr, y.double(), reduction=reduction)
            (want,) = torch.autograd.grad(ref, xr, seed.double())
            torch.testing.assert_close(got.double(), want, **tol)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 1, 1, 7), (1, 2, 6, 1), (2, 3, 7, 13), (1, 1, 29, 31)])
@pytest.mark.parametrize("levels", [None, 1, 2, 4, 9])
def test_pixel_path_matches(shape, levels):
    """The CPU run of the per-pixel functions the CUDA kernels use (laplacian_math.h). Its signs have
    another layout than the row kernels': the backward follows the path its forward took."""

    def pixel(a, b, *, levels, reduction, level_weights=None):
        return lap_mod._loss(a, b, levels, reduction, level_weights, pixel_path=True)

    _check(torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64), levels, fn=pixel)
    _check(torch.randn(shape), torch.randn(shape), levels=levels, reduction="none", fn=pixel)
    n = levels if levels is not None else reference.default_levels(*shape[2:])
    weights = [0.5 + (3 * j) % 7 for j in range(n)]
    x, y = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    _check(x, y, levels, fn=pixel, level_weights=weights)


@pytest.mark.parametrize(
    ("shape", "levels"), [((1, 1, 5, 7), None), ((2, 1, 3, 4), 3), ((1, 2, 6, 1), 2), ((1, 1, 9, 5), 4)]
)
def test_gradcheck(shape, levels):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    for reduction in ("mean", "none"):
        assert torch.autograd.gradcheck(
            lambda a, b, r=reduction: loss_fn(a, b, levels=levels, reduction=r), (x, y)
        )


# ---- per-level weights ----------------------------------------------------------------------------

WEIGHTS = [[1.0, 1.0, 1.0, 1.0], [0.0, 2.5, 0.0, 7.0], [3.0, 0.0, 0.25, 1e-3], [16.0, 4.0, 1.0, 0.25]]


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 3, 7, 13), (1, 2, 29, 31), (3, 1, 16, 16), (1, 1, 1, 5)])
def test_level_weights_match_oracle_and_reference(weights, dtype, shape):
    x, y = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
    for reduction in ("mean", "none"):
        _check(x, y, 4, reduction, level_weights=weights)
        _check(x, y, 4, reduction, against=reference.laplacian_pyramid_loss_reference, level_weights=weights)


def test_level_weights_select_levels():
    """A weight vector with one nonzero entry gives that level's |L^j| sum alone; the loss is linear in the
    weights (checked in float64, where the sums are exact enough to compare)."""
    x, y = torch.randn(2, 2, 21, 18, dtype=torch.float64), torch.randn(2, 2, 21, 18, dtype=torch.float64)
    laps = reference.laplacian_pyramid(x - y, 5)
    parts = []
    for j in range(5):
        one = [0.0] * 5
        one[j] = 1.0
        part = loss_fn(x, y, levels=5, level_weights=one, reduction="sum")
        torch.testing.assert_close(part, laps[j].abs().sum(), rtol=1e-12, atol=0)
        parts.append(part)
    w = [0.3, 1.7, 0.0, 2.0, 5.5]
    mixed = loss_fn(x, y, levels=5, level_weights=w, reduction="sum")
    torch.testing.assert_close(mixed, sum(wj * p for wj, p in zip(w, parts)), rtol=1e-12, atol=0)
    xa = x.clone().requires_grad_()
    zero = loss_fn(xa, y, levels=5, level_weights=[0.0] * 5)
    (g,) = torch.autograd.grad(zero, xa)
    assert zero.item() == 0.0 and torch.count_nonzero(g) == 0


@pytest.mark.parametrize("pixel_path", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_weights_are_four_to_the_j_bit_for_bit(dtype, pixel_path):
    """None and the explicit GLO weights 4^j give the same bits, forward and backward (the kernels take
    the weights from the call; None passes 4.0 ** j)."""
    x, y = torch.randn(3, 2, 29, 30, dtype=dtype), torch.randn(3, 2, 29, 30, dtype=dtype)
    out = []
    for weights in (None, [4.0**j for j in range(5)]):
        xa = x.clone().requires_grad_()
        loss = lap_mod._loss(xa, y, None, "none", weights, pixel_path=pixel_path)
        (g,) = torch.autograd.grad(loss, xa, torch.linspace(0.5, 2, 3, dtype=dtype))
        out.append((loss, g))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


@pytest.mark.parametrize(("shape", "levels"), [((1, 1, 5, 7), 3), ((2, 2, 9, 6), 4), ((1, 1, 1, 4), 2)])
def test_gradcheck_level_weights(shape, levels):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    weights = [0.7, 0.0, 2.5, 1.25][:levels]
    for reduction in ("mean", "none"):
        assert torch.autograd.gradcheck(
            lambda a, b, r=reduction: loss_fn(a, b, levels=levels, reduction=r, level_weights=weights), (x, y)
        )


def test_reference_level_weights_validation():
    x, y = _xy(1, 1, 8, 8)
    with pytest.raises(ValueError, match="level_weights must hold 4 values"):
        reference.laplacian_pyramid_loss_reference(x, y, levels=4, level_weights=[1.0])


def test_grad_for_one_input_only():
    x, y = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.randn(2, 1, 8, 8, dtype=torch.float64)
    yr = y.clone().requires_grad_()
    (gy,) = torch.autograd.grad(loss_fn(x, yr), yr)
    xr = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(loss_fn(xr, y), xr)
    torch.testing.assert_close(gy, -gx)


def test_strided_inputs():
    base = torch.randn(3, 4, 40, 50)
    # sliced, non-unit strides everywhere (values against the oracle; _check's clone() makes a non-dense
    # view contiguous, so test_strided_views_reach_the_kernel_... passes such views themselves)
    x = base[:, 1:3, 3:32:2, ::3]
    y = torch.randn(3, 2, 17, 40).transpose(2, 3)[:, :, :15]  # transposed
    assert not x.is_contiguous() and not y.is_contiguous()
    _check(x, y)
    cl = torch.randn(2, 3, 16, 20).to(memory_format=torch.channels_last)
    perm = torch.randn(2, 16, 20, 3).permute(0, 3, 1, 2)
    _check(cl, perm, levels=3)
    expanded = torch.randn(1, 3, 16, 20).expand(2, 3, 16, 20)
    _check(cl, expanded)
    # Gradient through expand() accumulates over the broadcast batch.
    y0 = torch.randn(1, 3, 16, 20, dtype=torch.float64, requires_grad=True)
    xd = cl.double()
    (g,) = torch.autograd.grad(loss_fn(xd, y0.expand(2, 3, 16, 20)), y0)
    y1 = y0.detach().clone().requires_grad_()
    (r,) = torch.autograd.grad(oracle(xd, y1.expand(2, 3, 16, 20)), y1)
    torch.testing.assert_close(g, r)


STRIDED_VIEWS = [
    # sliced with non-unit strides everywhere; transposed and cut
    (
        (3, 4, 40, 50),
        lambda t: t[:, 1:3, 3:32:2, ::3],
        (3, 2, 17, 40),
        lambda t: t.transpose(2, 3)[:, :, :15],
    ),
    # unit column strides on both (the interleaving fast path) but rows of different pitch
    ((2, 3, 16, 20), lambda t: t, (2, 3, 16, 27), lambda t: t[..., 2:22]),
]


@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("case", range(len(STRIDED_VIEWS)))
def test_strided_views_reach_the_kernel_and_match_contiguous_copies(case, swap):
    """The views themselves go in (_check's clone() makes a non-dense input contiguous): loss and gradients
    equal those of contiguous copies bit for bit, so each input is read at its own strides."""
    x_shape, x_view, y_shape, y_view = STRIDED_VIEWS[case]
    xb, yb = torch.randn(x_shape, requires_grad=True), torch.randn(y_shape, requires_grad=True)
    x, y = x_view(xb), y_view(yb)
    assert not (x.is_contiguous() and y.is_contiguous())
    xc, yc = x.detach().contiguous().requires_grad_(), y.detach().contiguous().requires_grad_()
    for reduction in ("mean", "none"):
        got = loss_fn(y, x, reduction=reduction) if swap else loss_fn(x, y, reduction=reduction)
        want = loss_fn(yc, xc, reduction=reduction) if swap else loss_fn(xc, yc, reduction=reduction)
        assert torch.equal(got, want)
        seed = torch.rand(got.shape) + 0.5
        gxb, gyb = torch.autograd.grad(got, (xb, yb), seed)
        gxc, gyc = torch.autograd.grad(want, (xc, yc), seed)
        assert torch.equal(x_view(gxb), gxc) and torch.equal(y_view(gyb), gyc)


@pytest.mark.parametrize("pixel_path", [False, True])  # the row kernels' signs, and the CUDA kernels' math
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identical_inputs_give_zero_loss_and_grad(pixel_path, dtype):
    x = torch.randn(2, 3, 17, 12, dtype=dtype, requires_grad=True)
    loss = lap_mod._loss(x, x.detach(), None, "mean", pixel_path=pixel_path)
    assert loss.item() == 0.0
    (g,) = torch.autograd.grad(loss, x)
    assert torch.count_nonzero(g) == 0  # sign(0) = 0


def test_sign_layout_matches_kernel():
    """The fake impl's sign buffer size (pure Python, SymInt-friendly) is the kernel's plane layout."""
    from glann_ext._ext import _C

    for h, w, levels in [(1, 1, 1), (1, 1, 16), (28, 28, 5), (29, 31, 9), (2, 3, 4)]:
        assert lap_mod._plane_elems(h, w, levels) == _C.laplacian_plane_elems(h, w, levels)


def test_default_levels():
    assert [reference.default_levels(h, w) for h, w in [(1, 1), (2, 9), (28, 28), (64, 64), (7, 300)]] == [
        1,
        2,
        5,
        5,
        3,
    ]
    x, y = torch.randn(1, 1, 28, 28), torch.randn(1, 1, 28, 28)
    assert torch.equal(loss_fn(x, y), loss_fn(x, y, levels=5))


def test_deterministic_across_thread_counts():
    # 199,800 pixels: the CPU kernels give a call one thread per 65,536 pixels, so two threads run here
    x, y = torch.randn(40, 3, 45, 37, requires_grad=True), torch.randn(40, 3, 45, 37)
    old = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            loss = loss_fn(x, y, reduction="sum")
            (g,) = torch.autograd.grad(loss, x)
            results.append((loss, g))
    finally:
        torch.set_num_threads(old)
    for loss, g in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(g, results[0][1])


# ---- properties ------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 3),
    c=st.integers(1, 2),
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    levels=st.one_of(st.none(), st.integers(1, 8)),
    seed=st.integers(0, 2**31 - 1),
)
def test_properties(b, c, h, w, levels, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, dtype=torch.float64, generator=gen)
    y = torch.randn(b, c, h, w, dtype=torch.float64, generator=gen)
    z = torch.randn(b, c, h, w, dtype=torch.float64, generator=gen)
    loss = loss_fn(x, y, levels=levels, reduction="none")
    torch.testing.assert_close(loss, oracle(x, y, levels, "none"), rtol=1e-10, atol=1e-12)
    # Depends on x - y only, symmetric, zero on equal inputs, positively homogeneous.
    torch.testing.assert_close(
        loss_fn(x + z, y + z, levels=levels, reduction="none"), loss, rtol=1e-9, atol=1e-12
    )
    torch.testing.assert_close(loss_fn(x - y, torch.zeros_like(x), levels=levels, reduction="none"), loss)
    torch.testing.assert_close(loss_fn(y, x, levels=levels, reduction="none"), loss)
    assert loss_fn(x, x, levels=levels).item() == 0.0
    torch.testing.assert_close(loss_fn(-2.5 * x, -2.5 * y, levels=levels, reduction="none"), 2.5 * loss)


# ---- errors ----------------------------------------------------------------------------------------


def _xy(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype), torch.randn(*shape, dtype=dtype)


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        (([[1.0]], torch.randn(2, 3, 4, 4)), {}, TypeError, "x must be a torch.Tensor"),
        ((torch.randn(2, 3, 4, 4), [1.0]), {}, TypeError, "y must be a torch.Tensor"),
        (_xy(3, 4, 4), {}, ValueError, "x must be a 4-D tensor, got 3-D"),
        ((torch.randn(2, 3, 4, 4), torch.randn(1, 2, 3, 4, 4)), {}, ValueError, "y must be a 4-D"),
        (
            (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 5)),
            {},
            ValueError,
            r"same shape as x \(2, 3, 4, 4\)",
        ),
        (
            (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4, dtype=torch.float64)),
            {},
            TypeError,
            "same dtype",
        ),
        (
            _xy(2, 3, 4, 4, dtype=torch.float16),
            {},
            TypeError,
            r"float16.*CUDA only.*convert x and y with \.float\(\)",
        ),
        (_xy(2, 3, 4, 4, dtype=torch.bfloat16), {}, TypeError, "x has dtype bfloat16"),
        ((torch.ones(1, 1, 2, 2, dtype=torch.int64),) * 2, {}, TypeError, "got int64"),
        (_xy(0, 3, 4, 4), {}, ValueError, "x must not be empty"),
        (_xy(2, 3, 0, 4), {}, ValueError, "x must not be empty"),
        ((torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4, device="meta")), {}, ValueError, "same device"),
        (_xy(1, 1, 4, 4), {"reduction": "avg"}, ValueError, "reduction must be one of"),
        (_xy(1, 1, 4, 4), {"reduction": None}, ValueError, "reduction must be one of"),
        (_xy(1, 1, 4, 4), {"levels": 0}, ValueError, r"levels must be in \[1, 16\], got 0"),
        (_xy(1, 1, 4, 4), {"levels": 17}, ValueError, r"levels must be in \[1, 16\], got 17"),
        (_xy(1, 1, 4, 4), {"levels": 2.0}, TypeError, "levels must be an int.*got float"),
        (_xy(1, 1, 4, 4), {"levels": True}, TypeError, "levels must be an int.*got bool"),
        (
            _xy(1, 1, 4, 4),
            {"level_weights": [1.0] * 17},
            ValueError,
            r"level_weights must hold one weight per level.*16 values for levels=16, got 17",
        ),
        (_xy(1, 1, 4, 4), {"level_weights": []}, ValueError, "one weight per level, finest first, got none"),
        (
            _xy(1, 1, 4, 4),
            {"levels": 2, "level_weights": (1, 2, 3)},
            ValueError,
            "2 values for levels=2, got 3",
        ),
        (
            _xy(1, 1, 4, 4),
            {"level_weights": [1.0, float("nan"), 1.0]},
            ValueError,
            r"level_weights\[1\] must be finite and >= 0, got nan",
        ),
        (
            _xy(1, 1, 4, 4),
            {"level_weights": [1.0, 1.0, float("inf")]},
            ValueError,
            r"level_weights\[2\] must be finite",
        ),
        (
            _xy(1, 1, 4, 4),
            {"level_weights": [1.0, -0.5, 1.0]},
            ValueError,
            r"level_weights\[1\] must be finite and >= 0, got -0.5",
        ),
        (
            _xy(1, 1, 4, 4),
            {"level_weights": [1.0, "2", 1.0]},
            TypeError,
            r"level_weights\[1\] must be a float, got str",
        ),
        (
            _xy(1, 1, 4, 4),
            {"level_weights": [1.0, True, 1.0]},
            TypeError,
            r"level_weights\[1\] must be a float, got bool",
        ),
        (_xy(1, 1, 4, 4), {"level_weights": 4.0}, TypeError, "level_weights must be a sequence of floats"),
        (_xy(1, 1, 4, 4), {"level_weights": "abc"}, TypeError, "level_weights must be a sequence"),
    ],
)
def test_errors(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        loss_fn(*args, **kwargs)


def test_type_errors_say_numpy_arrays_are_taken():
    """x and y may be numpy arrays: the type error said "x must be a torch.Tensor"."""
    x, y = _xy(2, 1, 4, 4)
    with pytest.raises(TypeError, match=r"^x must be a torch.Tensor or a numpy array, got list$"):
        loss_fn(x.tolist(), y)
    with pytest.raises(TypeError, match=r"^y must be a torch.Tensor or a numpy array, got list$"):
        loss_fn(x, y.tolist())
    with pytest.raises(TypeError, match=r"^y must be a torch.Tensor or a numpy array, got NoneType$"):
        loss_fn(x.numpy(), None)


@pytest.mark.parametrize("value", ["yes", "no", 1, 0, None])
def test_check_finite_values_must_be_a_bool(value):
    """A str reached the native call (a binding's signature dump); an int or None was read as its truth
    value. A numpy.bool_ is a bool."""
    x, y = _xy(2, 1, 8, 8)
    want = rf"^check_finite_values must be a bool, got {type(value).__name__} {value!r}$"
    with pytest.raises(TypeError, match=want):
        loss_fn(x, y, check_finite_values=value)
    x[0, 0, 0, 0] = float("nan")
    assert not math.isfinite(float(loss_fn(x, y, check_finite_values=np.False_)))
    with pytest.raises(NonFiniteError):
        loss_fn(x, y, check_finite_values=np.True_)


@pytest.mark.parametrize("pixel_path", [False, True])
def test_non_finite_error_names_a_sample_not_a_row(pixel_path):
    """Dimension 0 of an image batch is the sample: the error said "x row 1" (the row attribute stays)."""
    x, y = _xy(3, 2, 8, 8)
    y[1, 1, 4, 4] = float("inf")
    message = r"^laplacian_pyramid_loss: y sample 1 \(batch index\) contains NaN or Inf$"
    with pytest.raises(NonFiniteError, match=message) as info:
        lap_mod._loss(x, y, None, "mean", pixel_path=pixel_path)
    assert (info.value.argument, info.value.row) == ("y", 1)
    # Under vmap the samples of the entries are counted together: entry 1's sample 1 is sample 4.
    with pytest.raises(NonFiniteError, match=r"^laplacian_pyramid_loss: y sample 4 \(batch index\)") as info:
        torch.vmap(loss_fn)(torch.stack([x, x]), torch.stack([x, y]))
    assert (info.value.argument, info.value.row) == ("y", 4)


@pytest.mark.parametrize("pixel_path", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["x", "y"])
def test_non_finite_raises_naming_argument_and_sample(bad, where, pixel_path):
    x, y = _xy(4, 2, 6, 6)
    (x if where == "x" else y)[2, 1, 3, 2] = bad
    (x if where == "x" else y)[3, 0, 0, 0] = float("nan")  # a later sample
    with pytest.raises(
        NonFiniteError, match=rf"^laplacian_pyramid_loss: {where} sample 2 \(batch index\) contains NaN"
    ) as info:
        lap_mod._loss(x, y, None, "mean", pixel_path=pixel_path)
    assert isinstance(info.value, ValueError)
    assert info.value.argument == where and info.value.row == 2
    # Skipped on request: the non-finite value propagates into its sample only.
    out = loss_fn(x, y, reduction="none", check_finite_values=False)
    assert torch.isfinite(out[:2]).all() and not torch.isfinite(out[2:]).any()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("levels", [1, None])
@pytest.mark.parametrize("layout", ["columns", "transposed"])
def test_non_finite_found_in_strided_inputs_at_every_level_count(layout, levels, bad):
    """NaN/Inf is looked for through the input's own strides, in the last column too, and with one level,
    where an Inf leaves its plane's sum at +Inf (not NaN: no pyramid operator mixes it with another Inf).
    Found by mutation testing: reading the columns at unit stride, or skipping planes whose sum is
    infinite rather than NaN, returned a non-finite loss without an error."""
    base = torch.randn(3, 2, 9, 22)
    x = base[..., ::2] if layout == "columns" else base.transpose(2, 3)[:, :, :9]
    assert not x.is_contiguous()
    x[1, 1, 4, x.shape[-1] - 1] = bad
    y = torch.randn(x.shape)
    with pytest.raises(
        NonFiniteError, match=r"^laplacian_pyramid_loss: x sample 1 \(batch index\) contains NaN"
    ) as info:
        loss_fn(x, y, levels=levels)
    assert info.value.argument == "x" and info.value.row == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reduced_loss_sums_the_samples_in_float64(dtype):
    """The documented reduction: each sample's sum S_b in the input's dtype, their total in float64, one
    rounding of total / divisor to the dtype. With C*H*W a power of two, reduction="none" hands back each
    S_b exactly (S_b / 2^k), so "mean" and "sum" are pinned to the bit. Found by mutation testing: rounding
    the total to float32 before dividing (two roundings) passed every tolerance test."""
    torch.manual_seed(0)
    for _ in range(40):
        x, y = torch.randn(3, 1, 8, 8, dtype=dtype) * 7, torch.randn(3, 1, 8, 8, dtype=dtype)
        s = loss_fn(x, y, reduction="none").double() * 64  # exact: S_b, in the dtype
        total = sum(s.tolist())  # in order, in float64
        for reduction, divisor in (("sum", 1), ("mean", 3 * 64)):
            want = torch.tensor(total / divisor, dtype=torch.float64).to(dtype)  # one rounding
            assert torch.equal(loss_fn(x, y, reduction=reduction), want)


def test_overflow_of_finite_inputs_is_not_a_non_finite_input():
    x = torch.full((1, 1, 4, 4), 3e38)
    x[0, 0, ::2] = -3e38  # |L| sums overflow float32; the inputs are finite
    assert loss_fn(x, torch.zeros_like(x), reduction="sum").isinf()


@pytest.mark.parametrize(
    ("dtype", "ok", "overflow"), [(torch.float32, 3e37, 1.6e38), (torch.float64, 1.5e307, 1e308)]
)
def test_documented_limit_of_large_finite_inputs(dtype, ok, overflow):
    """The docstring promised the infinite loss for finite inputs whose loss overflows; in fact x - y and the
    pyramid overflow in the input's dtype beyond |x - y| ~ max/4, giving inf or NaN without an error, even
    for a representable loss. The docstring now states that limit; this checks both sides of it against a
    float64 computation of the rescaled inputs (L(s x, s y) = s L(x, y))."""
    torch.manual_seed(0)
    x, y = torch.randn(3, 2, 6, 5, dtype=dtype), torch.randn(3, 2, 6, 5, dtype=dtype)
    for half, finite in ((ok, True), (overflow, False)):
        x[0, 0, 0, 0], y[0, 0, 0, 0] = half, -half
        got = loss_fn(x, y, reduction="none")
        scale = 2.0**-200 if dtype == torch.float32 else 2.0**-600
        want = reference.laplacian_pyramid_loss_reference(
            x.double() * scale, y.double() * scale, reduction="none"
        )
        torch.testing.assert_close(got[1:].double(), want[1:] / scale, rtol=1e-5, atol=0)
        if finite:
            torch.testing.assert_close(got[0].double(), want[0] / scale, rtol=1e-5, atol=0)
        else:
            assert not torch.isfinite(got[0]) and math.isfinite(want[0].item() / scale)
    assert "3.4e38 / (C * H * W)" in lap_mod.__doc__


def test_documented_limit_is_the_per_sample_sum():
    """The docstring said the loss of finite inputs was finite below |x - y| ~ 8e37 in float32; the
    per-sample sum is held in float32 before the division, so it overflows where the sample's loss passes
    3.4e38 / (C * H * W) (a fuzzer found inf at |x - y| = 1e37 on one 8x8 plane). Both sides of that limit,
    against the float64 reference; float64 inputs are exact there."""
    torch.manual_seed(0)
    for per_pixel, finite in ((2e36, True), (1e37, False)):  # the limit: 3.4e38 / 64 = 5.3e36
        x = torch.rand(1, 1, 8, 8, dtype=torch.float64) * (2 * per_pixel)
        want = reference.laplacian_pyramid_loss_reference(x, torch.zeros_like(x)).item()
        assert math.isfinite(want) and (want < 3.4e38 / 64) == finite
        got = loss_fn(x.float(), torch.zeros(1, 1, 8, 8))
        if finite:
            assert got.item() == pytest.approx(want, rel=1e-5)
        else:
            assert got.isinf()
        assert loss_fn(x, torch.zeros_like(x)).item() == pytest.approx(want, rel=1e-12)


def test_numpy_scalars_for_levels_and_weights():
    """levels=np.int64(2) and level_weights with numpy floats were refused (nn_argmin takes numpy arrays)."""
    import numpy as np

    x, y = torch.randn(2, 3, 8, 9, dtype=torch.float64), torch.randn(2, 3, 8, 9, dtype=torch.float64)
    got = loss_fn(x, y, levels=np.int64(2), level_weights=[np.float32(1.0), np.float64(2.5)], reduction="sum")
    want = reference.laplacian_pyramid_loss_reference(
        x, y, levels=2, level_weights=[1.0, 2.5], reduction="sum"
    )
    torch.testing.assert_close(got, want, rtol=1e-13, atol=0)
    with pytest.raises(TypeError, match=r"^levels must be an int in \[1, 16\] or None"):
        loss_fn(x, y, levels=np.bool_(True))
    with pytest.raises(ValueError, match=r"^levels must be in \[1, 16\], got 17"):
        loss_fn(x, y, levels=np.int32(17))
    with pytest.raises(ValueError, match=r"^level_weights\[1\] must be finite and >= 0, got nan"):
        loss_fn(x, y, levels=2, level_weights=[1.0, np.float32("nan")])


def test_meta_tensors_give_shapes_only():
    """Meta tensors were refused ('x must be on a cpu or cuda device, got meta') although the op has a fake
    implementation and nn_argmin and project_to_sphere accept them; shapes and dtypes match a real call."""
    for dtype in (torch.float32, torch.float64):
        real_x = torch.randn(2, 3, 8, 9, dtype=dtype, requires_grad=True)
        x = torch.empty(2, 3, 8, 9, dtype=dtype, device="meta", requires_grad=True)
        y = torch.empty(2, 3, 8, 9, dtype=dtype, device="meta")
        for reduction in ("mean", "sum", "none"):
            out = loss_fn(x, y, reduction=reduction)
            real = loss_fn(real_x, torch.randn(2, 3, 8, 9, dtype=dtype), reduction=reduction)
            assert out.device.type == "meta" and out.shape == real.shape and out.dtype == real.dtype
        (g,) = torch.autograd.grad(out.sum(), x)
        assert g.device.type == "meta" and g.shape == x.shape and g.dtype == dtype


# ---- torch.library integration ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    x = torch.randn(2, 3, 9, 11, dtype=dtype, requires_grad=True)
    y = torch.randn(2, 3, 9, 11, dtype=dtype, requires_grad=True)
    weights = [1.0, 0.5, 3.0]
    for pixel_path, reduction in ((False, 0), (False, 1), (True, 2)):  # indices into REDUCTIONS
        args = (x, y, 3, weights, reduction, pixel_path, True)
        torch.library.opcheck(torch.ops.glann_ext.laplacian_fwd.default, args)
        signs = lap_mod._laplacian_fwd(x.detach(), y.detach(), 3, weights, 2, pixel_path, True)[1]
        # The gradient of the loss: one value for "mean" / "sum", (B,) for "none" (also expanded: stride 0).
        grad_loss = torch.rand((2,) if reduction == 2 else (), dtype=dtype)
        for g in (grad_loss, grad_loss[:1].expand(2)) if reduction == 2 else (grad_loss,):
            args = (signs, g, 2, 3, 9, 11, 3, weights, reduction, dtype, pixel_path)
            torch.library.opcheck(torch.ops.glann_ext.laplacian_bwd.default, args)


def test_registered_forward_op_refuses_inconsistent_arguments():
    """torch.ops.glann_ext.laplacian_fwd read y through x's sizes with no check: a smaller y was a
    segfault or a loss from garbage memory, a float64 y was read as float32 bytes, a reduction index past
    the end was accepted, and an empty batch gave NaN. Now the errors of laplacian_pyramid_loss."""
    fwd = torch.ops.glann_ext.laplacian_fwd
    x, y = torch.randn(2, 3, 9, 11), torch.randn(2, 3, 9, 11)
    good = [x, y, 3, [1.0, 4.0, 16.0], 0, False, True]
    torch.testing.assert_close(fwd(*good)[0], reference.laplacian_pyramid_loss_reference(x, y, levels=3))
    bad = [
        (1, torch.randn(1, 1, 1, 8), ValueError, r"^y must have the same shape as x \(2, 3, 9, 11\)"),
        (1, y.double(), TypeError, "y must have the same dtype as x"),
        (0, torch.randn(0, 3, 9, 11), ValueError, "x must"),
        (2, 0, ValueError, r"^levels must be in \[1, 16\], got 0"),
        (3, [1.0, 4.0], ValueError, "level_weights must hold one weight per level"),
        (
            4,
            7,
            ValueError,
            r"^laplacian_fwd: reduction must be an index into \('mean', 'sum', 'none'\), got 7",
        ),
    ]
    for position, value, exc, match in bad:
        args = list(good)
        args[position] = value
        if position == 0:
            args[1] = torch.randn(0, 3, 9, 11)
        with pytest.raises(exc, match=match):
            fwd(*args)


def test_registered_backward_op_refuses_inconsistent_arguments():
    """torch.ops.glann_ext.laplacian_bwd sized its output and the kernel's reads from the int arguments
    alone: signs of another shape made it read and write out of bounds (a segfault). Now a ValueError."""
    x, y = torch.randn(2, 3, 9, 11), torch.randn(2, 3, 9, 11)
    signs = lap_mod._laplacian_fwd(x, y, 3, [1.0, 4.0, 16.0], 0, False, True)[1]
    good = (signs, torch.tensor(1.0), 2, 3, 9, 11, 3, [1.0, 4.0, 16.0], 0, torch.float32, False)
    bwd = torch.ops.glann_ext.laplacian_bwd
    assert bwd(*good).shape == (2, 3, 9, 11)
    bad = [
        (0, torch.zeros(1, 1, dtype=torch.int8), r"signs must be a contiguous int8 tensor of shape \(6, "),
        (2, 64, "signs must be a contiguous int8 tensor of shape"),
        (4, 256, "signs must be"),
        (1, torch.ones(3), r"grad_loss must have shape \(\) or \(2,\) on cpu, got \(3,\)"),
        (6, 5, "level_weights must have 5 entries, got 3"),
        (8, 7, "reduction must be an index into"),
        (0, signs.float(), "signs must be a contiguous int8 tensor"),
        # Found by mutation testing: these passed the checks, and the kernel read out of bounds (grad_loss
        # (1,) through its stride for every sample) or the wrong bytes.
        (0, signs.t().contiguous().t(), r"signs must be a contiguous int8 tensor .*\(not contiguous\)"),
        (1, torch.ones(1), r"grad_loss must have shape \(\) or \(2,\) on cpu, got \(1,\)"),
        (3, 0, r"batch, channels, height, width must be ints >= 1, got \(2, 0, 9, 11\)"),
        # Round 8: a level count of 0 and a reduction index past the end passed the checks untested.
        (6, 0, r"levels must be in \[1, 16\], got 0"),
        (8, 3, r"reduction must be an index into \('mean', 'sum', 'none'\), got 3"),
    ]
    for position, value, match in bad:
        args = list(good)
        args[position] = value
        with pytest.raises(ValueError, match=rf"^laplacian_bwd: {match}"):
            bwd(*args)
    with pytest.raises(ValueError, match=r"signs must be a contiguous int8 tensor of shape \(4096, 87296\)"):
        bwd(torch.zeros(1, 1, dtype=torch.int8), torch.tensor(1.0), 64, 64, 256, 256, 5,
            [1.0, 4.0, 16.0, 64.0, 256.0], 0, torch.float32, False)  # fmt: skip
    # A float64 grad_loss for float32 inputs is converted, not read as float32 bytes.
    seed = torch.tensor([0.75, 1.5])
    args = list(good)
    args[1], args[8] = seed, lap_mod.REDUCTIONS.index("none")
    want = bwd(*args)
    args[1] = seed.double()
    assert torch.equal(bwd(*args), want)


def test_registered_backward_op_refuses_a_dtype_it_cannot_compute_and_a_foreign_grad_loss():
    """A 16-bit dtype on the CPU, an integer grad_loss and a grad_loss on another device than the signs (seen
    by the implementation itself: the dispatcher sends a meta grad_loss to the fake one) are refused by name.
    Found by mutation testing: dropping any of these checks passed every test."""
    x, y = torch.randn(2, 3, 9, 11), torch.randn(2, 3, 9, 11)
    signs = lap_mod._laplacian_fwd(x, y, 3, [1.0, 4.0, 16.0], 0, False, True)[1]
    good = (signs, torch.tensor(1.0), 2, 3, 9, 11, 3, [1.0, 4.0, 16.0], 0, torch.float32, False)
    for position, value, exc, match in [
        (9, torch.float16, TypeError, r"dtype must be one of .* on cpu, got torch.float16"),
        (1, torch.tensor(1), TypeError, "grad_loss must be a floating-point tensor, got torch.int64"),
        (1, torch.tensor(1.0, device="meta"), ValueError, r"grad_loss must have .* on cpu, got \(\) on meta"),
    ]:
        args = list(good)
        args[position] = value
        with pytest.raises(exc, match=rf"^laplacian_bwd: {match}"):
            lap_mod._backward_impl(*args)


def test_registered_ops_refuse_a_meta_tensor_beside_a_real_one():
    """A direct call of the registered ops that mixes a meta tensor with a CPU one is dispatched to the fake
    implementation, which returned an empty CPU tensor (uninitialised memory as the loss or the gradient)
    with no error. The fakes now check the devices, by name; all-meta calls still give shapes."""
    ops = torch.ops.glann_ext
    real, meta = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8, device="meta")
    fwd = (2, [1.0, 4.0], 0, False, True)
    for x, y, first in [(real, meta, "cpu"), (meta, real, "meta")]:
        with pytest.raises(
            ValueError, match=rf"^laplacian_fwd: y must be on the same device as x \({first}\)"
        ):
            ops.laplacian_fwd(x, y, *fwd)
    signs = ops.laplacian_fwd(real, real.flip(0), *fwd)[1]
    bwd = (2, 1, 8, 8, 2, [1.0, 4.0], 0, torch.float32, False)
    for s, g, first in [
        (signs, torch.tensor(1.0, device="meta"), "cpu"),
        (signs.to("meta"), torch.tensor(1.0), "meta"),
    ]:
        with pytest.raises(
            ValueError, match=rf"^laplacian_bwd: grad_loss must be on the same device as signs \({first}\)"
        ):
            ops.laplacian_bwd(s, g, *bwd)
    grad = ops.laplacian_bwd(signs.to("meta"), torch.tensor(1.0, device="meta"), *bwd)
    assert grad.device.type == "meta" and grad.shape == (2, 1, 8, 8)


@pytest.mark.parametrize("registered", [False, True])
def test_double_backward_raises_instead_of_a_silent_zero(registered):
    """Differentiating the gradient through the incoming gradient (the loss times a learnable weight) gave
    a silent zero: the backward kernel has no derivative. Now it raises. In x and y the gradient is
    piecewise constant, so a gradient penalty adds nothing, as with the pure-PyTorch loss."""
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    y = torch.randn_like(x)
    w = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)

    def loss(a, b):
        if registered:  # the registered op's autograd formula (what torch.compile and dispatch modes use)
            return lap_mod._laplacian_fwd(a, b, 3, [1.0, 4.0, 16.0], 1, False, True)[0]
        return loss_fn(a, b, levels=3, reduction="sum")

    (g,) = torch.autograd.grad(loss(x, y) * w, x, create_graph=True)
    with pytest.raises(RuntimeError, match="laplacian_pyramid_loss does not support double backward"):
        torch.autograd.grad(g.sum(), w)
    # Without create_graph nothing changes.
    (g1,) = torch.autograd.grad(loss(x, y) * w, x)
    torch.testing.assert_close(g1, g.detach(), rtol=0, atol=0)
    # The penalty's gradient in x: the pure-PyTorch loss (abs of a linear pyramid) gives exactly 0 too.
    xr = x.detach().clone().requires_grad_()
    ref = reference.laplacian_pyramid_loss_reference(xr, y, levels=3, reduction="sum")
    (gr,) = torch.autograd.grad(ref, xr, create_graph=True)
    (penalty_ref,) = torch.autograd.grad(ref + (gr**2).sum(), xr)
    out = loss(x, y)
    (g2,) = torch.autograd.grad(out, x, create_graph=True)
    (penalty,) = torch.autograd.grad(out + (g2**2).sum(), x)
    torch.testing.assert_close(penalty, penalty_ref, rtol=1e-12, atol=1e-12)


def test_eager_fast_path_matches_the_registered_op(monkeypatch):
    """Plain tensors in eager mode skip the dispatcher (``_EagerLoss``); a dispatch mode (as tracing uses)
    sees the registered op. Both run the same kernels: the same bits, forward and backward."""
    x = torch.randn(3, 2, 13, 17, requires_grad=True)
    y = torch.randn(3, 2, 13, 17, requires_grad=True)
    weights = [1.0, 0.5, 3.0]
    for index, reduction in enumerate(lap_mod.REDUCTIONS):
        fast = loss_fn(x, y, levels=3, level_weights=weights, reduction=reduction)
        op = lap_mod._laplacian_fwd(x, y, 3, weights, index, False, True)[0]
        seed = torch.rand_like(fast)
        assert torch.equal(fast, op)
        for a, b in zip(torch.autograd.grad(fast, (x, y), seed), torch.autograd.grad(op, (x, y), seed)):
            assert torch.equal(a, b)

    with RecordOps() as mode:
        loss_fn(x, y).backward()
    assert any("glann_ext.laplacian_fwd" in n for n in mode.names), mode.names
    assert any("glann_ext.laplacian_bwd" in n for n in mode.names), mode.names

    def no_dispatch(*args):
        raise AssertionError("the eager path went through the dispatcher")

    monkeypatch.setattr(lap_mod, "_laplacian_fwd", no_dispatch)
    monkeypatch.setattr(lap_mod, "_laplacian_bwd", no_dispatch)
    loss_fn(x, y).backward()


def test_torch_compile_fullgraph():
    fn = torch.compile(lambda a, b: loss_fn(a, b, reduction="sum"), backend="aot_eager", fullgraph=True)
    x, y = torch.randn(2, 2, 12, 10, requires_grad=True), torch.randn(2, 2, 12, 10)
    loss = fn(x, y)
    (g,) = torch.autograd.grad(loss, x)
    x2 = x.detach().clone().requires_grad_()
    ref = loss_fn(x2, y, reduction="sum")
    (g2,) = torch.autograd.grad(ref, x2)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(g, g2)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_compile_dynamic_shapes(reduction):
    """Compiled with dynamic shapes (symbolic batch and image sizes reach both ops): two shapes through one
    compiled function, values and gradients equal to eager, the (B,) seed of "none" included."""
    fn = torch.compile(
        lambda a, b: loss_fn(a, b, reduction=reduction), backend="aot_eager", dynamic=True, fullgraph=True
    )
    for shape in ((3, 2, 12, 10), (5, 2, 13, 9)):
        x, y = torch.randn(shape, requires_grad=True), torch.randn(shape)
        loss = fn(x, y)
        seed = torch.rand_like(loss) + 0.5
        (g,) = torch.autograd.grad(loss, x, seed)
        x2 = x.detach().clone().requires_grad_()
        ref = loss_fn(x2, y, reduction=reduction)
        (g2,) = torch.autograd.grad(ref, x2, seed)
        torch.testing.assert_close(loss, ref)
        torch.testing.assert_close(g, g2)


# ---- CUDA ----------------------------------------------------------------------------------------


def _cuda_vs_cpu(x, y, levels=None, reduction="mean", atol=1e-5, rtol=1e-5):
    """Values and grads on CUDA (any dtype) against the CPU kernels in float64 on the same values."""
    xc, yc = x.cuda().requires_grad_(), y.cuda().requires_grad_()
    loss = loss_fn(xc, yc, levels=levels, reduction=reduction)
    seed = torch.rand(loss.shape, dtype=torch.float64) + 0.5
    gx, gy = torch.autograd.grad(loss, (xc, yc), seed.to(loss.dtype).cuda())
    xd, yd = x.double().requires_grad_(), y.double().requires_grad_()
    ref = loss_fn(xd, yd, levels=levels, reduction=reduction)
    rx, ry = torch.autograd.grad(ref, (xd, yd), seed)
    torch.testing.assert_close(loss.double().cpu(), ref, atol=atol, rtol=rtol)
    torch.testing.assert_close(gx.double().cpu(), rx, atol=atol, rtol=rtol)
    torch.testing.assert_close(gy.double().cpu(), ry, atol=atol, rtol=rtol)


@pytest.mark.cuda
@pytest.mark.parametrize(
    "shape", [(1, 1, 1, 1), (2, 3, 7, 13), (4, 1, 28, 28), (2, 3, 64, 64), (1, 2, 29, 31)]
)
@pytest.mark.parametrize("levels", [None, 1, 3, 9])
def test_cuda_matches_cpu(shape, levels):
    x, y = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    _cuda_vs_cpu(x, y, levels, atol=1e-11, rtol=1e-11)
    _cuda_vs_cpu(x.float(), y.float(), levels, reduction="none")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_grad_of_the_loss_in_every_layout(dtype):
    """On CUDA the loss comes from loss_kernel and each sample's gradient scale from grad_scale_kernel: the
    three reductions and the seeds of the CPU test (contiguous, strided, stride 0), against float64 on the CPU."""
    x, y = torch.randn(5, 2, 11, 9, dtype=torch.float64), torch.randn(5, 2, 11, 9, dtype=torch.float64)
    seeds = _loss_grad_seeds(torch.float64)
    tol = {"rtol": 1e-11, "atol": 1e-11} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    for reduction, grads in seeds.items():
        for seed in grads:
            xc = x.to("cuda", dtype).requires_grad_()
            loss = loss_fn(xc, y.to("cuda", dtype), reduction=reduction)
            (got,) = torch.autograd.grad(loss, xc, seed.to("cuda", dtype))
            xd = x.clone().requires_grad_()
            ref = loss_fn(xd, y, reduction=reduction)
            (want,) = torch.autograd.grad(ref, xd, seed)
            torch.testing.assert_close(loss.double().cpu(), ref, **tol)
            torch.testing.assert_close(got.double().cpu(), want, **tol)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_low_precision(dtype):
    """float16/bfloat16 are computed in float32: our error against float64 (same rounded inputs) is at
    most 2x the error of the torch reference run in that low precision, for the loss and the grads."""
    xl, yl = torch.randn(4, 3, 32, 32).to(dtype).cuda(), torch.randn(4, 3, 32, 32).to(dtype).cuda()

    def loss_and_grads(fn, x, y):
        x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
        loss = fn(x, y)
        return (loss, *torch.autograd.grad(loss, (x, y)))

    ours = loss_and_grads(loss_fn, xl, yl)
    assert ours[0].dtype == torch.float32 and ours[1].dtype == dtype and ours[2].dtype == dtype
    exact = loss_and_grads(loss_fn, xl.double().cpu(), yl.double().cpu())
    torch_low = loss_and_grads(reference.laplacian_pyramid_loss_reference, xl, yl)
    for mine, ref, low in zip(ours, exact, torch_low):
        err = (mine.double().cpu() - ref).abs().max().item()
        err_torch = (low.double().cpu() - ref).abs().max().item()
        assert err <= 2 * err_torch + 1e-6, (err, err_torch)


@pytest.mark.cuda
def test_cuda_strided_and_deterministic():
    x = torch.randn(3, 4, 40, 50, device="cuda")[:, 1:3, 3:32:2, ::3]
    y = torch.randn(1, 2, 15, 17, device="cuda").expand(3, 2, 15, 17)
    _cuda_vs_cpu(x.cpu(), y.cpu())
    a = loss_fn(x, y, reduction="none")
    assert torch.equal(a, loss_fn(x, y, reduction="none"))


@pytest.mark.cuda
def test_cuda_non_default_stream():
    x, y = (
        torch.randn(8, 3, 64, 64, device="cuda", requires_grad=True),
        torch.randn(8, 3, 64, 64, device="cuda"),
    )
    expected = loss_fn(x.detach().cpu(), y.cpu())
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        loss = loss_fn(x, y)
        (g,) = torch.autograd.grad(loss, x)
    torch.cuda.current_stream().wait_stream(s)
    torch.testing.assert_close(loss.cpu(), expected)
    assert torch.isfinite(g).all()


@pytest.mark.cuda
def test_cuda_non_finite_policy():
    """The kernel flags the sample on the device; the error comes without a synchronisation in the call,
    at the latest from raise_deferred_errors (which waits)."""
    x, y = torch.randn(3, 1, 8, 8, device="cuda"), torch.randn(3, 1, 8, 8, device="cuda")
    y[1, 0, 2, 2] = float("nan")
    x[2, 0, 0, 0] = float("inf")  # a later sample of x: x is looked at first, its lowest sample named
    with pytest.raises(NonFiniteError, match=r"x sample 2 \(batch index\)") as info:  # noqa: PT012 (CUDA raises at the flush)
        loss_fn(x, y, reduction="none")
        glann_ext.ops.raise_deferred_errors(wait=True)
    assert info.value.argument == "x" and info.value.row == 2
    x[2, 0, 0, 0] = 0.0
    with pytest.raises(NonFiniteError, match=r"y sample 1 \(batch index\)") as info:  # noqa: PT012 (CUDA raises at the flush)
        loss_fn(x, y, reduction="none")
        glann_ext.ops.raise_deferred_errors(wait=True)
    assert info.value.argument == "y" and info.value.row == 1
    big = torch.full((1, 1, 4, 4), 3e38, device="cuda")
    big[0, 0, ::2] = -3e38  # finite inputs whose loss overflows: no error
    assert loss_fn(big, torch.zeros_like(big), reduction="sum").isinf()
    glann_ext.ops.raise_deferred_errors(wait=True)
    out = loss_fn(x, y, reduction="none", check_finite_values=False)
    assert torch.isfinite(out[0]) and torch.isnan(out[1])


@pytest.mark.cuda
def test_cuda_torch_compile_reduce_overhead():
    fn = torch.compile(lambda a, b: loss_fn(a, b), mode="reduce-overhead", fullgraph=True)
    x, y = torch.randn(4, 3, 32, 32, device="cuda"), torch.randn(4, 3, 32, 32, device="cuda")
    for _ in range(3):
        out = fn(x, y)
    torch.testing.assert_close(out.cpu(), loss_fn(x.cpu(), y.cpu()))
    x2 = x.clone().requires_grad_()
    fn_bwd = torch.compile(lambda a, b: loss_fn(a, b), fullgraph=True)
    (g,) = torch.autograd.grad(fn_bwd(x2, y), x2)
    xr = x.cpu().requires_grad_()
    (gr,) = torch.autograd.grad(loss_fn(xr, y.cpu()), xr)
    torch.testing.assert_close(g.cpu(), gr)


def test_cuda_tensors_need_cuda_build(monkeypatch):
    """A CPU-only build names the problem instead of failing inside the kernel."""
    if glann_ext.build_info()["cuda_compiled"]:
        pytest.skip("built with CUDA")
    from glann_ext.ops import _native

    class FakeCuda:
        device = torch.device("cuda")

    with pytest.raises(RuntimeError, match="built without CUDA kernels"):
        _native.require_cuda_build(FakeCuda(), "laplacian_pyramid_loss")


def test_every_cpu_isa_path(tmp_path):
    """The row kernels are compiled per ISA; GLANN_EXT_CPU_ISA caps the choice (read once per process),
    so each capped ISA runs in its own interpreter (both at once, to keep the suite fast)."""
    import subprocess
    import sys

    # float64 and float32 (its own SIMD code: 8x8 transposes, packed sign stores), 9 planes: a full group
    # and a partial one in either dtype; widths past one 8-element block.
    code = (
        "import torch, glann_ext; from glann_ext.ops import reference as r; torch.manual_seed(0)\n"
        "for dt, tol in ((torch.float64, 1e-7), (torch.float32, 1e-4)):\n"
        "    x = torch.randn(3, 3, 29, 31, dtype=dt, requires_grad=True); y = torch.randn(3, 3, 29, 31, dtype=dt)\n"
        "    a = glann_ext.laplacian_pyramid_loss(x, y); (g,) = torch.autograd.grad(a, x)\n"
        "    xr = x.detach().double().requires_grad_(); b = r.laplacian_pyramid_loss_reference(xr, y.double())\n"
        "    (h,) = torch.autograd.grad(b, xr)\n"
        "    torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol)\n"
        "    torch.testing.assert_close(g.double(), h, rtol=tol, atol=tol)\n"
        "print(glann_ext.build_info()['cpu_isa'])"
    )
    procs = {
        isa: subprocess.Popen(
            [sys.executable, "-c", code],
            **child_kwargs(tmp_path, GLANN_EXT_CPU_ISA=isa),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for isa in ("baseline", "avx2")
    }
    for isa, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.strip() in (isa, "baseline")  # a CPU without the ISA falls back to baseline


def test_under_cpu_autocast_half_inputs_are_computed_in_float32():
    """A bfloat16 output of an autocast region against a float32 target was refused ("y must have the same
    dtype as x"): under autocast the loss computes in float32, as torch's l1_loss and mse_loss do, with the
    same value as on the float32 copies and a gradient back into the region."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 16, 12, generator=g, requires_grad=True)
    y = torch.rand(3, 2, 16, 12, generator=g)
    conv = torch.nn.Conv2d(2, 2, 3, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
        loss = glann_ext.laplacian_pyramid_loss(out, y)
    assert out.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert torch.equal(loss, glann_ext.laplacian_pyramid_loss(out.float(), y))
    loss.backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)
    with pytest.raises(TypeError, match="same dtype"):  # outside autocast the dtypes must still agree
        glann_ext.laplacian_pyramid_loss(out.detach(), y)


def test_the_module_form_is_the_function_with_its_options_checked_when_made():
    """``LaplacianPyramidLoss`` for code that takes loss modules: the function's value and gradient, its
    options refused at construction, weights as a list, tuple, tensor or array."""
    g = torch.Generator().manual_seed(4)
    x = torch.rand(3, 2, 12, 9, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(3, 2, 12, 9, generator=g, dtype=torch.float64)
    for kwargs in ({}, {"levels": 2, "reduction": "none"}, {"level_weights": [1.0, 0.5, 0.25, 2.0]}):
        module = glann_ext.LaplacianPyramidLoss(**kwargs)
        got, want = module(x, y), glann_ext.laplacian_pyramid_loss(x, y, **kwargs)
        assert torch.equal(got, want)
        (gx,) = torch.autograd.grad(got.sum(), x)
        (wx,) = torch.autograd.grad(want.sum(), x)
        assert torch.equal(gx, wx)
    for weights in (np.array([1.0, 2.0]), torch.tensor([1.0, 2.0])):
        module = glann_ext.LaplacianPyramidLoss(level_weights=weights)
        assert module.level_weights == [1.0, 2.0] and "level_weights=[1.0, 2.0]" in repr(module)
        assert torch.equal(
            module(x, y), glann_ext.laplacian_pyramid_loss(x, y, levels=2, level_weights=[1, 2])
        )
    with pytest.raises(ValueError, match="reduction must be one of"):
        glann_ext.LaplacianPyramidLoss(reduction="avg")
    with pytest.raises(ValueError, match=r"levels must be in \[1, 16\], got 0"):
        glann_ext.LaplacianPyramidLoss(levels=0)
    with pytest.raises(ValueError, match="2 values for levels=2, got 3"):
        glann_ext.LaplacianPyramidLoss(levels=2, level_weights=[1, 2, 3])
    with pytest.raises(TypeError, match="level_weights must be a sequence of floats"):
        glann_ext.LaplacianPyramidLoss(level_weights=2.0)
    with pytest.raises(TypeError, match="check_finite_values must be a bool"):
        glann_ext.LaplacianPyramidLoss(check_finite_values=1)
    with pytest.raises(TypeError, match="level_weights are constants of the loss"):
        glann_ext.LaplacianPyramidLoss(level_weights=torch.ones(2, requires_grad=True))
    bad = y.clone()
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(NonFiniteError, match="y sample 1"):
        glann_ext.LaplacianPyramidLoss()(x, bad)
    assert torch.isnan(glann_ext.LaplacianPyramidLoss(check_finite_values=False)(x, bad))
    # weights without levels: one level per weight (the image size would pick 4 here), as the function does
    module = glann_ext.LaplacianPyramidLoss(level_weights=[1.0, 3.0])
    assert module.levels == 2
    assert torch.equal(module(x, y), glann_ext.laplacian_pyramid_loss(x, y, level_weights=(1.0, 3.0)))
    assert torch.equal(module(x, y), glann_ext.laplacian_pyramid_loss(x, y, levels=2, level_weights=(1, 3)))
    # the reference backend reads weights without levels the same way
    ref = reference.laplacian_pyramid_loss_reference(x.detach(), y, level_weights=[1.0, 3.0])
    torch.testing.assert_close(ref, module(x, y).detach(), rtol=1e-12, atol=0)


# Mutation test (2026-12-07): the registered backward op took more level weights than levels
def test_registered_backward_refuses_more_level_weights_than_levels():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    _, signs = torch.ops.glann_ext.laplacian_fwd(x, y, 3, [1.0, 4.0, 16.0], 0, False, True)
    with pytest.raises(ValueError, match=r"^laplacian_bwd: level_weights must have 3 entries, got 4"):
        torch.ops.glann_ext.laplacian_bwd(
            signs, torch.tensor(1.0), 2, 1, 8, 8, 3, [1.0, 4.0, 16.0, 64.0], 0, torch.float32, False
        )

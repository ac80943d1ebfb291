"""Forward+backward of the Laplacian-pyramid L1 loss: glann_ext against torch baselines, CPU and CUDA.

Run: ``pytest benchmarks/bench_laplacian.py --benchmark-group-by=group`` (one group per device and
shape; ``-k cuda`` for the CUDA rows). Baselines, all timed with grad w.r.t. x:

* ``eager_slices``: the fastest eager version we found on CPU: separable blurs as sums of five shifted
  slices (stride-2 slices for down), reflect-101 padding by index_select (F.pad's reflect needs
  pad < size, which the coarse levels break), zero-insertion by strided assignment.
* ``eager_conv``: the same with one 5x5 conv2d per level for down and up (slower on CPU: the 1-channel
  conv and its backward do not vectorise well; on GPU it would be the natural choice).
  Both eager versions follow our definition exactly (checked in ``test_eager_baselines_match``).
* ``reference``: ``glann_ext.ops.reference.laplacian_pyramid_loss_reference`` (index arithmetic).
* ``kornia``: ``kornia.geometry.transform.build_laplacian_pyramid`` of x - y, 4^j-weighted L1 means.
  Kornia's pyramid differs (it resizes to a power of two, bilinear up-sampling), so it is a speed
  reference only (skipped when kornia is not installed).
* CUDA only: ``torch_compile_reference``, ``torch.compile`` of the reference (default mode; compiled once
  per shape in the warm-up, so only at ``COMPILE_SHAPES``: each compile takes tens of seconds), and
  ``glann_ext_cuda_graph``, our fwd+bwd captured in a CUDA graph and replayed: the device time without
  Python and launch overhead, which separates kernel efficiency from the host cost;
  ``glann_ext_hopper`` and ``glann_ext_hopper_cuda_graph``, the same on the Hopper kernels of issue 15 (a
  pyramid per block in shared memory, ``glann_ext.ops.kernels``; the other glann rows run the legacy ones).

Every row records ``gbps``: the fewest bytes a fused fwd+bwd must move (read x and y, write the gradient:
3 x numel x element size) over the median time, comparable with the device's copy bandwidth. On CUDA the
rounds cycle through input sets that together exceed the L2 cache (see ``_device.input_sets``), and every
call ends with ``torch.cuda.synchronize()``.

Before it is timed, every row's output on its own inputs (every input set, after the warm-up) is checked by
:func:`check_against_reference`: the loss and the gradient w.r.t. x (per-sample rows: each image's gradient)
against ``reference.laplacian_pyramid_loss_reference`` in float64 on the same inputs, with the float32
tolerances of tests/test_laplacian.py (rtol 2e-5; atol 1e-6 x the level weights, see :func:`_tolerances`)
plus, for the gradient, the change a sign flip of a pyramid coefficient within float32 rounding of 0 may
make (the L1 loss's gradient jumps there; :func:`_sign_slack`). The float64 reference is computed once per
device, shape and input set and reused by the group's rows. The ``kornia`` row is not checked: its pyramid
is a different one (see above). ``--benchmark-disable`` runs each row's check and one call, untimed.
"""

from __future__ import annotations

import functools
import importlib.util

import pytest
import torch
import torch.nn.functional as F

import glann_ext
from glann_ext.ops import reference
from glann_ext.ops.kernels import use_cuda_kernels

from ._device import Cycle, calibrated_iterations, cuda_graphs, device_params, fresh, input_sets, rate, timed

SHAPES = {
    "cpu": [(64, 1, 28, 28), (64, 3, 64, 64), (16, 3, 128, 128)],
    # The targets: 10x torch eager at (64, 3, 64, 64), 30% of HBM bandwidth at (16, 3, 256, 256).
    "cuda": [(64, 1, 28, 28), (64, 3, 64, 64), (16, 3, 128, 128), (16, 3, 256, 256)],
}
COMPILE_SHAPES = [(64, 3, 64, 64)]


@functools.cache
def _reflect_index(n: int, device: torch.device) -> torch.Tensor:
    return reference.reflect101(torch.arange(-2, n + 2, device=device), n)


def _pad101(t: torch.Tensor) -> torch.Tensor:
    h, w = t.shape[-2:]
    return t.index_select(-2, _reflect_index(h, t.device)).index_select(-1, _reflect_index(w, t.device))


@functools.cache
def _kernel(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    taps = torch.tensor(reference.BLUR_TAPS, dtype=dtype, device=device)
    return torch.outer(taps, taps).view(1, 1, 5, 5)


def eager_conv_loss(x: torch.Tensor, y: torch.Tensor, levels: int | None = None) -> torch.Tensor:
    b, c, h, w = x.shape
    levels = reference.default_levels(h, w) if levels is None else levels
    k = _kernel(x.dtype, x.device)
    g = (x - y).reshape(b * c, 1, h, w)
    gauss = [g]
    for _ in range(levels - 1):
        gauss.append(F.conv2d(_pad101(gauss[-1]), k, stride=2))
    total = gauss[-1].abs().sum() * 4.0 ** (levels - 1)
    for j in range(levels - 1):
        fine, coarse = gauss[j], gauss[j + 1]
        z = fine.new_zeros(fine.shape)
        z[:, :, ::2, ::2] = coarse
        total = total + 4.0**j * (fine - F.conv2d(_pad101(z), 4 * k)).abs().sum()
    return total / (b * c * h * w)


def _blur_slices(p: torch.Tensor, dim: int, n: int, stride: int, scale: float) -> torch.Tensor:
    """sum_a W[a] p[a : a + n] along dim (p padded by 2 on both sides), every `stride`-th output."""
    out = None
    for a, wt in enumerate(reference.BLUR_TAPS):
        s = p.narrow(dim, a, n)
        if stride == 2:
            s = s[..., ::2, :] if dim == -2 else s[..., ::2]
        out = s * (wt * scale) if out is None else out + s * (wt * scale)
    return out


def eager_slices_loss(x: torch.Tensor, y: torch.Tensor, levels: int | None = None) -> torch.Tensor:
    b, c, h, w = x.shape
    levels = reference.default_levels(h, w) if levels is None else levels
    gauss = [x - y]
    for _ in range(levels - 1):
        g = gauss[-1]
        gh, gw = g.shape[-2:]
        t = _blur_slices(g.index_select(-2, _reflect_index(gh, g.device)), -2, gh, 2, 1.0)
        gauss.append(_blur_slices(t.index_select(-1, _reflect_index(gw, g.device)), -1, gw, 2, 1.0))
    total = gauss[-1].abs().sum() * 4.0 ** (levels - 1)
    for j in range(levels - 1):
        fine, coarse = gauss[j], gauss[j + 1]
        fh, fw = fine.shape[-2:]
        z = fine.new_zeros((*fine.shape[:-1], coarse.shape[-1]))
        z[..., ::2, :] = coarse
        t = _blur_slices(z.index_select(-2, _reflect_index(fh, z.device)), -2, fh, 1, 2.0)
        z2 = fine.new_zeros(fine.shape)
        z2[..., ::2] = t
        up = _blur_slices(z2.index_select(-1, _reflect_index(fw, z2.device)), -1, fw, 1, 2.0)
        total = total + 4.0**j * (fine - up).abs().sum()
    return total / (b * c * h * w)


def kornia_loss(x: torch.Tensor, y: torch.Tensor, levels: int | None = None) -> torch.Tensor:
    from kornia.geometry.transform import build_laplacian_pyramid

    levels = reference.default_levels(*x.shape[-2:]) if levels is None else levels
    pyr = build_laplacian_pyramid(x - y, levels)
    return sum(4.0**j * lap.abs().mean() for j, lap in enumerate(pyr))


IMPLS = {
    "glann_ext": glann_ext.laplacian_pyramid_loss,
    "eager_slices": eager_slices_loss,
    "eager_conv": eager_conv_loss,
    "reference": reference.laplacian_pyramid_loss_reference,
    "kornia": kornia_loss,
}
CUDA_ONLY = [
    "glann_ext_cuda_graph",
    "glann_ext_hopper",
    "glann_ext_hopper_cuda_graph",
    "torch_compile_reference",
]


# --------------------------------------------------------------------------------------------------
# The check of every row (see the module docstring)
# --------------------------------------------------------------------------------------------------

SIGN_TAU = 1e-5  # coefficients within SIGN_TAU * max|x - y| of 0 (float64) may take either sign in float32


def _tolerances(shape: tuple, per: int) -> tuple[dict, dict]:
    """float32 assert_close tolerances of the loss and of the gradient (as tests/test_laplacian.py's): the
    rounding of level j is amplified by its weight 4^j, so the absolute terms follow sum_j 4^j."""
    h, w = shape[-2:]
    levels = reference.default_levels(h, w)
    sizes = [(h, w)]
    for _ in range(levels - 1):
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    weight = sum(4.0**j * hj * wj for j, (hj, wj) in enumerate(sizes)) / (h * w)
    return {"rtol": 2e-5, "atol_per_dmax": 1e-6 * weight}, {
        "rtol": 2e-5,
        "atol": 1e-6 * sum(4.0**j for j in range(levels)) / per,
    }


def _sign_slack(g: torch.Tensor, per: int) -> torch.Tensor:
    """How far a float32 gradient may move from the float64 one because pyramid coefficients of ``g = x - y``
    (float64) within ``SIGN_TAU * max|g|`` of 0 took the other sign: sum_j 2 w_j / per * |dL^j/dg|^T m_j,
    m_j the mask of those coefficients (the blurs' taps are non-negative, so |dL^j/dg| is the same pyramid
    with the subtraction replaced by an addition)."""
    levels = reference.default_levels(*g.shape[-2:])
    weights = reference.default_level_weights(levels)
    g = g.detach().requires_grad_()
    tau = SIGN_TAU * g.detach().abs().max()
    gauss = [g]
    for _ in range(levels - 1):
        gauss.append(reference.pyramid_down(gauss[-1]))
    total = g.new_zeros(())
    for j, wj in enumerate(weights):
        if j + 1 < levels:
            up = reference.pyramid_up(gauss[j + 1], *gauss[j].shape[-2:])
            coef, magnitude = gauss[j] - up, gauss[j] + up
        else:
            coef = magnitude = gauss[j]
        total = total + (2 * wj / per) * (magnitude * (coef.detach().abs() <= tau)).sum()
    return torch.autograd.grad(total, g)[0]


class Expected:
    """The float64 reference of one input set: the loss (``mean``; None for per-sample rows), the gradient
    w.r.t. x (per image for per-sample rows) and the gradient's allowed error."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, per_sample: bool) -> None:
        b, c, h, w = x.shape
        per = c * h * w if per_sample else b * c * h * w
        xd, yd = x.detach().double().requires_grad_(), y.detach().double()
        loss = reference.laplacian_pyramid_loss_reference(xd, yd, reduction="none" if per_sample else "mean")
        self.grad = torch.autograd.grad(loss.sum(), xd)[0]
        self.loss = None if per_sample else loss.detach()
        loss_tol, grad_tol = _tolerances(x.shape, per)
        dmax = (xd.detach() - yd).abs().max().item()
        self.loss_tol = {"rtol": loss_tol["rtol"], "atol": max(loss_tol["atol_per_dmax"] * dmax, 1e-6)}
        self.grad_bound = grad_tol["atol"] + grad_tol["rtol"] * self.grad.abs() + _sign_slack(xd - yd, per)


def check_against_reference(loss, grad: torch.Tensor, expected: Expected) -> None:
    """Raises AssertionError unless the row's ``loss`` (None: not checked) and gradient ``grad`` match the
    float64 reference ``expected`` within its tolerances."""
    if loss is not None:
        torch.testing.assert_close(
            loss.detach().double().reshape(()), expected.loss, **expected.loss_tol, msg=lambda m: f"loss: {m}"
        )
    assert grad is not None, "the row left no gradient"
    assert grad.shape == expected.grad.shape, f"gradient shape {tuple(grad.shape)}"
    excess = (grad.detach().double() - expected.grad).abs() - expected.grad_bound
    if not bool((excess <= 0).all()):  # NaN included
        bad = ~(excess <= 0)
        i = tuple(int(v) for v in bad.nonzero()[0])
        raise AssertionError(
            f"gradient: {int(bad.sum())} of {grad.numel()} elements outside the tolerance; at {i}: "
            f"{float(grad[i]):.9g}, float64 reference {float(expected.grad[i]):.9g}, "
            f"allowed difference {float(expected.grad_bound[i]):.3g}"
        )


_EXPECTED: dict[tuple, tuple[torch.Tensor, torch.Tensor, Expected]] = {}


def expected_for(key: tuple, i: int, x: torch.Tensor, y: torch.Tensor, per_sample: bool) -> Expected:
    """:class:`Expected` of input set ``i`` of the group ``key``, computed once and reused by the group's rows
    (whose inputs are drawn from the same seed; a set that differs is recomputed)."""
    if any(k[0] != key for k in _EXPECTED):
        _EXPECTED.clear()  # the previous group's references are no longer needed
    hit = _EXPECTED.get((key, i))
    if hit is None or not (torch.equal(hit[0], x.detach()) and torch.equal(hit[1], y.detach())):
        hit = (x.detach().clone(), y.detach().clone(), Expected(x, y, per_sample))
        _EXPECTED[key, i] = hit
    return hit[2]


def test_eager_baselines_match():
    x, y = torch.randn(3, 2, 29, 31, dtype=torch.float64), torch.randn(3, 2, 29, 31, dtype=torch.float64)
    for levels in (None, 1, 3, 7):
        ours = glann_ext.laplacian_pyramid_loss(x, y, levels=levels)
        torch.testing.assert_close(eager_conv_loss(x, y, levels), ours)
        torch.testing.assert_close(eager_slices_loss(x, y, levels), ours)


def _rows(device: str) -> list[tuple]:
    impls = list(IMPLS) + (CUDA_ONLY if device == "cuda" else [])
    return [
        (shape, impl)
        for shape in SHAPES[device]
        for impl in impls
        if impl != "torch_compile_reference" or shape in COMPILE_SHAPES
    ]


def _step_fn(impl: str):
    """(x, y) -> None: one forward and backward of ``impl`` with the gradient w.r.t. x."""
    if impl == "kornia" and importlib.util.find_spec("kornia") is None:
        pytest.skip("kornia is not installed")
    fn = IMPLS.get(impl, glann_ext.laplacian_pyramid_loss)
    if impl == "torch_compile_reference":
        fn = torch.compile(reference.laplacian_pyramid_loss_reference)

    def step(xy):
        x, y = xy
        x.grad = None
        loss = fn(x, y)
        loss.backward()
        return loss

    return step


@pytest.mark.parametrize(
    ("device", "shape", "impl"), device_params(_rows, lambda row: "x".join(map(str, row[0])) + "-" + row[1])
)
def test_fwd_bwd(benchmark, device, shape, impl):
    benchmark.group = f"laplacian_pyramid_loss fwd+bwd {device} " + "x".join(map(str, shape))
    fresh(device)
    torch.manual_seed(0)
    numel = torch.Size(shape).numel()

    def make(_i):
        return torch.randn(shape, device=device, requires_grad=True), torch.randn(shape, device=device)

    sets = input_sets(make, 2 * numel * 4, device)
    step = _step_fn(impl)
    losses: dict[int, torch.Tensor] = {}  # each set's loss of its latest call (a graph's output buffer)

    def keep(i, xy):
        losses[i] = step(xy)

    with use_cuda_kernels("hopper" if "hopper" in impl else "legacy"):
        if impl.endswith("_cuda_graph"):
            call = Cycle(
                cuda_graphs([lambda i=i, xy=xy: keep(i, xy) for i, xy in enumerate(sets)]), lambda r: r()
            )
        else:
            call = Cycle(list(enumerate(sets)), lambda item: keep(*item))
        run = timed(call, device)
        for _ in range(len(sets)):
            run()  # warm-up: every set once (and the compile, for torch_compile_reference)
        if impl != "kornia":  # a different pyramid: a speed reference only
            for i, (x, y) in enumerate(sets):
                expected = expected_for((device, shape, "fwd+bwd"), i, x, y, per_sample=False)
                check_against_reference(losses[i], x.grad, expected)
        if benchmark.disabled:  # --benchmark-disable: the check and pedantic's one call, no figures
            benchmark.pedantic(run)
            return
        rounds = 5 if impl == "reference" and device == "cpu" else (10 if device == "cpu" else 30)
        benchmark.pedantic(run, rounds=rounds, iterations=calibrated_iterations(run))
    benchmark.extra_info["gbps"] = rate(3 * numel * 4, benchmark.stats.stats.median)


# Per-sample gradients (one gradient per image, e.g. for per-example clipping or influence scores):
# torch.func.vmap of torch.func.grad. glann_ext's batching rule runs the whole batch in one kernel call;
# the eager baselines run under vmap as torch batches their ops; ``glann_ext_loop`` is the same loss
# called once per image with torch.autograd.grad.
PER_SAMPLE_SHAPES = {"cpu": [(64, 1, 28, 28)], "cuda": [(64, 1, 28, 28), (64, 3, 64, 64)]}
PER_SAMPLE_IMPLS = ["glann_ext", "glann_ext_loop", "eager_slices", "eager_conv", "reference"]


def _per_sample_fn(impl: str):
    """(x, y) -> (B, C, H, W): each image's gradient of its own loss."""
    if impl == "glann_ext_loop":

        def loop(x, y):
            grads = []
            for i in range(x.shape[0]):
                xi = x[i : i + 1].detach().requires_grad_()
                grads.append(torch.autograd.grad(glann_ext.laplacian_pyramid_loss(xi, y[i : i + 1]), xi)[0])
            return torch.cat(grads)

        return loop
    loss = IMPLS[impl]
    return torch.func.vmap(torch.func.grad(lambda a, b: loss(a[None], b[None])))


def test_per_sample_baselines_match():
    x, y = torch.randn(5, 2, 12, 13, dtype=torch.float64), torch.randn(5, 2, 12, 13, dtype=torch.float64)
    want = _per_sample_fn("reference")(x, y)
    for impl in PER_SAMPLE_IMPLS:
        torch.testing.assert_close(_per_sample_fn(impl)(x, y), want)


@pytest.mark.parametrize(
    ("device", "shape", "impl"),
    device_params(
        lambda dev: [(shape, impl) for shape in PER_SAMPLE_SHAPES[dev] for impl in PER_SAMPLE_IMPLS],
        lambda row: "x".join(map(str, row[0])) + "-" + row[1],
    ),
)
def test_per_sample_grads(benchmark, device, shape, impl):
    benchmark.group = f"laplacian_pyramid_loss per-sample grads {device} " + "x".join(map(str, shape))
    fresh(device)
    torch.manual_seed(0)
    x, y = torch.randn(shape, device=device), torch.randn(shape, device=device)
    fn = _per_sample_fn(impl)
    with use_cuda_kernels("legacy"):
        run = timed(lambda: fn(x, y), device)
        grads = run()  # warm-up, its output checked
        check_against_reference(
            None, grads, expected_for((device, shape, "per-sample"), 0, x, y, per_sample=True)
        )
        if benchmark.disabled:  # --benchmark-disable: the check and pedantic's one call
            benchmark.pedantic(run)
            return
        benchmark.pedantic(run, rounds=10 if device == "cpu" else 30, iterations=calibrated_iterations(run))

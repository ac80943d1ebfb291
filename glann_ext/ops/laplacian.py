"""Laplacian-pyramid L1 loss (the GLO paper's "Lap1"), fused forward and backward on CPU and CUDA.

Definition (identical to :func:`glann_ext.ops.reference.laplacian_pyramid_loss_reference`):

* ``d = x - y``; the pyramid is linear, so one pyramid of the difference suffices.
* Gaussian pyramid ``G^0 = d``, ``G^{j+1} = down(G^j)``: separable 5-tap binomial blur
  ``[1, 4, 6, 4, 1] / 16`` with reflect-101 borders (OpenCV ``BORDER_REFLECT_101``, period ``2(n-1)``;
  a size-1 axis maps every index to 0), then keep the even pixels: ``ceil(n / 2)`` per axis.
* ``up(G^{j+1})`` to the size of ``G^j``: zero-insert (values at even positions), blur with
  ``2 * [1, 4, 6, 4, 1] / 16`` per axis (4x in 2-D), reflect-101 border on the upsampled grid.
* ``L^j = G^j - up(G^{j+1})`` for ``j < J - 1`` and ``L^{J-1} = G^{J-1}``.
* Per sample ``S_b = sum_j w_j * sum |L^j|`` (j = 0 is the finest level). By default ``w_j = 4^j``, the
  GLO paper's convention (Bojanowski et al., "Optimizing the Latent Space of Generative Networks":
  ``Lap1(x, x') = sum_j 2^(2j) |L^j(x) - L^j(x')|_1``): level j has 4^-j as many pixels, so every level's
  mean counts equally. ``level_weights`` gives other weights, one per level, finest first (finite, >= 0).
  ``reduction="mean"``: ``sum_b S_b / (B*C*H*W)``; ``"none"``: ``S_b / (C*H*W)`` with shape ``(B,)``;
  ``"sum"``: ``sum_b S_b``.
* ``levels=None`` uses ``1 + floor(log2(min(H, W)))`` capped at 5; explicit levels may be 1..16 (level
  sizes stop shrinking at 1).

Gradient: ``d loss / d x = -d loss / d y`` = the exact adjoint of the pyramid (reflect-101 borders
included) applied to ``w_j * sign(L^j)``, with the L1 subgradient ``sign(0) = 0`` (as torch's
``abs`` uses).  The forward pass saves only the int8 signs of every level (``4/3`` byte per pixel), not
x or y.  Double backward: the gradient is piecewise constant in x and y, so its own derivative in x and y
is zero almost everywhere (as with torch's ``abs``); with ``create_graph=True`` it comes back as a constant
of x and y, and a gradient penalty on it adds nothing to the loss it is added to, as it would with the
pure-PyTorch loss. Unlike that loss's, the constant carries no graph: a penalty on it alone does not
require grad, so ``penalty.backward()`` by itself raises torch's "does not require grad". Its
derivative with respect to the incoming gradient (e.g. the loss times a learnable weight) is not
implemented: differentiating through that raises ``RuntimeError``.

dtypes: float32/float64 on CPU; float32/float64/float16/bfloat16 on CUDA, where float16/bfloat16 are
computed in float32 and the loss is float32 (the gradient has the input's dtype); on the CPU
float16/bfloat16 are refused with the conversion to make (``.float()``). Any strides are accepted (the
kernels read through them: slices, channels-last, expanded ``y``). numpy arrays are accepted for ``x`` and
``y`` (read without a copy); the loss then comes back as a numpy array (a 0-d array, or ``(B,)`` for
``reduction="none"``) with no gradient: a metric, e.g. for evaluation code that holds numpy images.

NaN/Inf (the policy of :mod:`glann_ext.ops`): NaN or Inf in ``x`` or ``y`` raises
:class:`~glann_ext.errors.NonFiniteError` naming the argument (``x`` is looked at first) and its lowest
offending sample. The kernels make the per-sample sums anyway, inside the registered op: a sample whose
sum is not finite (a finite sum needs finite inputs) has its inputs looked at by the kernel, so finite
inputs cost nothing and ``torch.compile`` sees no graph break. On CPU the op raises at once; on CUDA the
kernel lowers a device flag and the error is deferred (no synchronisation; see :mod:`glann_ext.ops`).
Limit of finite inputs: ``x - y``, the pyramid and each sample's weighted sum ``sum_j w_j sum|L^j|`` are
held in the input's dtype (float32 for 16-bit inputs), the sum before any division. So the loss is ``inf``
without an error, even where the mean itself is representable, once a sample's sum overflows. That sum
is ``C * H * W`` times the sample's loss (reduction ``"none"``), so in float32 (maximum 3.4e38) the limit
is a per-sample loss of ``3.4e38 / (C * H * W)``: about 1.7e33 for 3x256x256 images, 5e36 for one 8x8
plane. ``x - y`` itself overflowing gives ``NaN``. The gradient (signs only) is unaffected. Rescale such
inputs (the loss is positively homogeneous: ``L(s x, s y) = s L(x, y)``), or use float64 (maximum
1.8e308). ``check_finite_values=False`` skips the check: NaN then propagates into the loss (its sign, and
so its gradient, is 0).

Determinism: CPU planes are reduced in a fixed order (independent of the thread count); the CUDA
kernels use per-block partial sums and a fixed-order final reduction (no atomics). The kernels also make
the reduced loss (the per-sample sums added in float64, in sample order, then divided) and scale the
gradient by the loss's gradient, so no torch op runs around them.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, overload

import numpy as np
import torch

from . import _native
from ._checks import (
    SAMPLE,
    check_bool,
    check_same_device,
    check_same_dtype,
    check_tensor,
    from_numpy,
    is_numpy,
    non_finite_error,
    torch_name,
)
from .reference import default_level_weights, default_levels

__all__ = ["LaplacianPyramidLoss", "laplacian_pyramid_loss"]

MAX_LEVELS = 16
REDUCTIONS = ("mean", "sum", "none")
_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _plane_elems(height, width, levels: int):
    """sum_j h_j * w_j (plain arithmetic, so it also works on symbolic sizes under torch.compile)."""
    total, h, w = 0, height, width
    for _ in range(levels):
        total = total + h * w
        h, w = (h + 1) // 2, (w + 1) // 2
    return total


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# torch.library registration with Library.define/impl rather than torch.library.custom_op: the loss runs
# every training step, and custom_op's Python dispatch cost about 0.17 ms per call (per direction) at
# (64, 1, 28, 28), more than the kernels take (about 0.1 ms; see ops/sphere.py for the same choice).
_LIB = torch.library.Library("glann_ext", "FRAGMENT")  # kept alive for the process
_LIB.define(
    "laplacian_fwd(Tensor x, Tensor y, int levels, float[] level_weights, int reduction, bool pixel_path, "
    "bool check_finite) -> (Tensor, Tensor)"
)
_LIB.define(
    "laplacian_bwd(Tensor signs, Tensor grad_loss, SymInt batch, SymInt channels, SymInt height, SymInt width, "
    "int levels, float[] level_weights, int reduction, ScalarType dtype, bool pixel_path) -> Tensor"
)


def _forward_impl(
    x: torch.Tensor,
    y: torch.Tensor,
    levels: int,
    level_weights: list[float],
    reduction: int,
    pixel_path: bool,
    check_finite: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, signs (B*C, P) int8) of the pyramid of x - y, the loss reduced by ``reduction`` (an index
    into REDUCTIONS) from the per-sample sums sum_j w_j sum|L^j|. The kernels reduce too (the sum over the
    samples, the division), so a call costs no torch op after them and a training step has one autograd
    node for the loss.

    ``pixel_path``: on CPU run the per-pixel functions the CUDA kernels use instead of the row kernels
    (tests); its signs have another layout, so the backward takes the same value (saved in the context).
    ``check_finite``: the NaN policy (module docstring), by the kernels.
    """
    b, c, h, w = x.shape
    device = x.device
    dtype = _compute_dtype(x.dtype)
    summed = reduction != _NONE
    per_sample = torch.empty(b, dtype=dtype, device=device)
    loss = torch.empty((), dtype=dtype, device=device) if summed else per_sample  # "none": in place
    signs = torch.empty(b * c, _plane_elems(h, w, levels), dtype=torch.int8, device=device)
    exec_ctx = _native.exec_context(x)
    code = _native.dtype_code(x)
    nbytes = _workspace_bytes(b, c, h, w, levels, code, exec_ctx.cuda, False, exec_ctx.num_threads)
    workspace = torch.empty(nbytes, dtype=torch.uint8, device=device)
    flags = _native.nonfinite_flags(device, 2) if exec_ctx.cuda and check_finite else None
    with _native.native_call("laplacian_pyramid_loss", x, arguments=("x", "y"), row_label=SAMPLE):
        _native._C.laplacian_forward(
            code, x.data_ptr(), x.stride(), y.data_ptr(), y.stride(), b, c, h, w, levels, level_weights,
            per_sample.data_ptr(), loss.data_ptr(), summed, float(_divisor(b, c, h, w, reduction)), signs.data_ptr(),
            workspace.data_ptr(), nbytes, pixel_path, check_finite, flags.data_ptr() if flags is not None else 0,
            exec_ctx,
        )  # fmt: skip
    if flags is not None:
        _native.defer_flags(flags, _flags_error)
    return loss, signs


@functools.lru_cache(maxsize=256)
def _workspace_bytes(
    b: int, c: int, h: int, w: int, levels: int, code: int, cuda: bool, backward: bool, num_threads: int
) -> int:
    """The kernels' workspace size (a pure function of its arguments; cached: a training loop asks for the
    same few shapes every step)."""
    return _native._C.laplacian_workspace_bytes(b, c, h, w, levels, code, cuda, backward, num_threads)


_SUM, _NONE = REDUCTIONS.index("sum"), REDUCTIONS.index("none")


def _divisor(b: int, c: int, h: int, w: int, reduction: int) -> int:
    """What the per-sample sums are divided by for ``reduction`` (an index into REDUCTIONS): pixels per
    sample ("none"), all pixels ("mean") or 1 ("sum")."""
    if reduction == _SUM:
        return 1
    return c * h * w if reduction == _NONE else b * c * h * w


def _flags_error(values: list[int]) -> Exception | None:
    """The CUDA flags (lowest sample with NaN/Inf in x, in y) -> the error of the NaN policy, x first."""
    for name, row in zip(("x", "y"), values):
        if row != _native.NO_ROW:
            return non_finite_error(name, row, op="laplacian_pyramid_loss", row_label=SAMPLE)
    return None


def _forward_checked(
    x: torch.Tensor,
    y: torch.Tensor,
    levels: int,
    level_weights: list[float],
    reduction: int,
    pixel_path: bool,
    check_finite: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_forward_impl` as the registered op (callable directly as torch.ops.glann_ext.laplacian_fwd, so
    with any arguments): y's shape and dtype, the level count, weights and reduction are checked first, as
    :func:`laplacian_pyramid_loss` does (the kernels read y through x's sizes). The eager path calls
    :func:`_forward_impl` after that function's own checks."""
    if not (isinstance(reduction, int) and 0 <= reduction < len(REDUCTIONS)):
        raise ValueError(f"laplacian_fwd: reduction must be an index into {REDUCTIONS}, got {reduction!r}")
    _check_args(x, y, levels, REDUCTIONS[reduction], level_weights)
    return _forward_impl(x, y, levels, level_weights, reduction, pixel_path, check_finite)


def _forward_fake(
    x: torch.Tensor,
    y: torch.Tensor,
    levels: int,
    level_weights: list[float],
    reduction: int,
    pixel_path: bool,
    check_finite: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_same_device(x=x, y=y, op="laplacian_fwd")
    b, c, h, w = x.shape
    loss = x.new_empty((b,) if reduction == _NONE else (), dtype=_compute_dtype(x.dtype))
    signs = x.new_empty((b * c, _plane_elems(h, w, levels)), dtype=torch.int8)
    return loss, signs


def _check_backward_args(signs, grad_loss, shape, levels, level_weights, reduction, dtype) -> None:
    """The registered backward op is callable directly (torch.ops.glann_ext.laplacian_bwd): sizes that do not
    match ``signs`` and ``grad_loss`` would make the kernel read and write out of bounds."""
    op = "laplacian_bwd"
    if not all(isinstance(v, int) and v >= 1 for v in shape):
        raise ValueError(f"{op}: batch, channels, height, width must be ints >= 1, got {shape}")
    if not (isinstance(levels, int) and 1 <= levels <= MAX_LEVELS):
        raise ValueError(f"{op}: levels must be in [1, {MAX_LEVELS}], got {levels!r}")
    if len(level_weights) != levels:
        raise ValueError(f"{op}: level_weights must have {levels} entries, got {len(level_weights)}")
    if not (isinstance(reduction, int) and 0 <= reduction < len(REDUCTIONS)):
        raise ValueError(f"{op}: reduction must be an index into {REDUCTIONS}, got {reduction!r}")
    allowed = _CUDA_DTYPES if signs.device.type == "cuda" else _CPU_DTYPES
    if dtype not in allowed:
        raise TypeError(f"{op}: dtype must be one of {allowed} on {signs.device.type}, got {dtype}")
    b, c, h, w = shape
    want = (b * c, _plane_elems(h, w, levels))
    if signs.dtype != torch.int8 or tuple(signs.shape) != want or not signs.is_contiguous():
        raise ValueError(
            f"{op}: signs must be a contiguous int8 tensor of shape {want}, got {signs.dtype} "
            f"{tuple(signs.shape)}{'' if signs.is_contiguous() else ' (not contiguous)'}"
        )
    # The kernels read one value (0-d) or one per sample ((B,), through its stride), whatever the reduction.
    if tuple(grad_loss.shape) not in ((), (b,)) or grad_loss.device != signs.device:
        raise ValueError(
            f"{op}: grad_loss must have shape () or ({b},) on {signs.device}, got {tuple(grad_loss.shape)} on "
            f"{grad_loss.device}"
        )
    if not grad_loss.is_floating_point():
        raise TypeError(f"{op}: grad_loss must be a floating-point tensor, got {grad_loss.dtype}")


def _backward_impl(
    signs: torch.Tensor,
    grad_loss: torch.Tensor,
    batch: int,
    channels: int,
    height: int,
    width: int,
    levels: int,
    level_weights: list[float],
    reduction: int,
    dtype: torch.dtype,
    pixel_path: bool,
) -> torch.Tensor:
    """d loss / d x (B, C, H, W) contiguous, given d loss / d loss (``grad_loss``: one value, or (B,) for
    reduction "none", any stride). The kernels divide it by the forward's divisor, as autograd would."""
    _check_backward_args(
        signs, grad_loss, (batch, channels, height, width), levels, level_weights, reduction, dtype
    )
    compute = _compute_dtype(dtype)
    if grad_loss.dtype != compute:
        grad_loss = grad_loss.to(compute)
    grad = torch.empty(batch, channels, height, width, dtype=dtype, device=signs.device)
    exec_ctx = _native.exec_context(signs)
    code = _native.DTYPE_CODES[dtype]
    nbytes = _workspace_bytes(
        batch, channels, height, width, levels, code, exec_ctx.cuda, True, exec_ctx.num_threads
    )
    workspace = torch.empty(nbytes, dtype=torch.uint8, device=signs.device)
    stride = grad_loss.stride(0) if grad_loss.dim() else 0
    divisor = float(_divisor(batch, channels, height, width, reduction))
    with _native.native_call("laplacian_pyramid_loss (backward)", signs):
        _native._C.laplacian_backward(
            code, signs.data_ptr(), grad_loss.data_ptr(), stride, divisor, grad.data_ptr(), batch, channels, height,
            width, levels, level_weights, workspace.data_ptr(), nbytes, pixel_path, exec_ctx,
        )  # fmt: skip
    return grad


def _backward_fake(
    signs: torch.Tensor,
    grad_loss: torch.Tensor,
    batch: int,
    channels: int,
    height: int,
    width: int,
    levels: int,
    level_weights: list[float],
    reduction: int,
    dtype: torch.dtype,
    pixel_path: bool,
) -> torch.Tensor:
    check_same_device(signs=signs, grad_loss=grad_loss, op="laplacian_bwd")
    return signs.new_empty((batch, channels, height, width), dtype=dtype)


def _setup_context(ctx, inputs, output) -> None:
    x, _, levels, level_weights, reduction, pixel_path, _ = inputs
    _, signs = output
    ctx.save_for_backward(signs)
    # The int8 signs output never has a gradient: do not let autograd fill a zero tensor for it.
    ctx.set_materialize_grads(False)
    ctx.shape = tuple(x.shape)
    ctx.levels = levels
    ctx.level_weights = level_weights
    ctx.reduction = reduction
    ctx.dtype = x.dtype
    ctx.pixel_path = pixel_path  # the signs' layout: the backward must use the forward's path


def _backward(ctx, grad_loss: torch.Tensor | None, _grad_signs, backward_op: Callable | None = None):
    """The registered op's backward (``backward_op``: the registered backward op, or its implementation
    called directly on the eager path)."""
    if grad_loss is None:
        return None, None, None, None, None, None, None
    (signs,) = ctx.saved_tensors
    b, c, h, w = ctx.shape
    grad = (backward_op or _laplacian_bwd)(
        signs, grad_loss, b, c, h, w, ctx.levels, ctx.level_weights, ctx.reduction, ctx.dtype, ctx.pixel_path
    )
    if torch.is_grad_enabled() and grad_loss.requires_grad:  # create_graph=True: no second derivative
        grad = _fail_if_differentiated(grad, grad_loss)
    gx = grad if ctx.needs_input_grad[0] else None
    gy = -grad if ctx.needs_input_grad[1] else None
    return gx, gy, None, None, None, None, None


_NO_DOUBLE_BACKWARD = (
    b"laplacian_pyramid_loss does not support double backward (differentiating its gradient, "
    b"e.g. a gradient penalty through create_graph=True)"
)


def _fail_if_differentiated(grad: torch.Tensor, grad_loss: torch.Tensor) -> torch.Tensor:
    """``grad`` with a grad_fn that raises if it is differentiated, as ``once_differentiable`` does for the
    eager Function (the backward kernel has no derivative: without this, autograd treated the gradient as a
    constant and a gradient penalty was silently dropped)."""
    return torch._C._functions.DelayedError(_NO_DOUBLE_BACKWARD, 2)(grad, grad_loss)[0]


for _key in ("CPU", "CUDA"):
    _LIB.impl("laplacian_fwd", _forward_checked, _key)
    _LIB.impl("laplacian_bwd", _backward_impl, _key)
torch.library.register_fake("glann_ext::laplacian_fwd", _forward_fake, lib=_LIB)
torch.library.register_fake("glann_ext::laplacian_bwd", _backward_fake, lib=_LIB)
torch.library.register_autograd("glann_ext::laplacian_fwd", _backward, setup_context=_setup_context, lib=_LIB)
_laplacian_fwd = torch.ops.glann_ext.laplacian_fwd
_laplacian_bwd = torch.ops.glann_ext.laplacian_bwd


def _forward_vmap(info, in_dims, x, y, levels, level_weights, reduction, pixel_path, check_finite):
    """torch.vmap of the loss: the vmapped batches flattened into one kernel call of per-sample losses
    (reduction "none"), reduced per batch entry after (instead of torch's fallback, a call per entry). A
    NaN error counts samples across the flattened batch."""
    v = info.batch_size
    x, y = _native.batch_dim_first(x, in_dims[0], v), _native.batch_dim_first(y, in_dims[1], v)
    b, c, h, w = x.shape[1:]  # each entry's shape: checked by laplacian_pyramid_loss before the op
    flat = (x.reshape(v * b, c, h, w), y.reshape(v * b, c, h, w))
    per, signs = _laplacian_fwd(*flat, levels, level_weights, _NONE, pixel_path, check_finite)
    per = per.view(v, b)  # each sample's sum divided by C * H * W
    if reduction == _NONE:
        loss = per
    elif reduction == _SUM:
        loss = per.sum(1) * (c * h * w)
    else:  # mean over all pixels of each entry
        loss = per.sum(1) / b
    return (loss, signs.view(v, b * c, -1)), (0, 0)


def _backward_vmap(info, in_dims, signs, grad_loss, batch, channels, height, width, levels, level_weights,
                   reduction, dtype, pixel_path):  # fmt: skip
    """torch.vmap of the backward op: each entry's per-sample gradient of its loss (as the forward's rule
    reduced it). The signs' rows are laid out by groups of planes, so they only read back in the call
    shape that wrote them: batched signs come from :func:`_forward_vmap`'s flattened call and are read in
    one flattened call; the signs of one unbatched forward (``jacrev``, ``vjp`` under ``vmap``) are read
    once with a unit gradient per sample, which each entry's incoming gradient then scales (the gradient is
    linear in it)."""
    v = info.batch_size
    g = _native.batch_dim_first(grad_loss, in_dims[1], v)  # (v,) or, for reduction "none", (v,) or (v, batch)
    if reduction == _SUM:
        g = g * (channels * height * width)
    elif reduction != _NONE:
        g = g / batch
    per_sample = g if g.dim() == 2 else g[:, None].expand(v, batch)
    shape = (batch, channels, height, width)
    if in_dims[0] is None:
        unit = torch.ones(batch, dtype=per_sample.dtype, device=signs.device)
        base = _laplacian_bwd(signs, unit, *shape, levels, level_weights, _NONE, dtype, pixel_path)
        return (base.to(per_sample.dtype) * per_sample.view(v, batch, 1, 1, 1)).to(dtype), 0
    flat_signs = _native.batch_dim_first(signs, in_dims[0], v).reshape(v * batch * channels, -1)
    grad = _laplacian_bwd(
        flat_signs, per_sample.reshape(v * batch).contiguous(), v * batch, channels, height, width, levels,
        level_weights, _NONE, dtype, pixel_path,
    )  # fmt: skip
    return grad.view(v, *shape), 0


torch.library.register_vmap("glann_ext::laplacian_fwd", _forward_vmap, lib=_LIB)
torch.library.register_vmap("glann_ext::laplacian_bwd", _backward_vmap, lib=_LIB)


class _EagerLoss(torch.autograd.Function):
    """The registered op and its autograd formula, called without the dispatcher's round trips through
    Python (about 0.3 ms per forward and backward; at (64, 1, 28, 28) the kernels take 0.1 ms). Used for
    plain tensors in eager mode only: ``torch.compile``, fake tensors and dispatch modes see the registered op.
    The op's other arguments travel as one tuple: ``apply`` costs time per argument.
    """

    @staticmethod
    def forward(ctx, x, y, options):
        inputs = (x, y, *options)
        loss, signs = _forward_impl(*inputs)
        _setup_context(ctx, inputs, (loss, signs))
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        gx, gy, *_ = _backward(ctx, grad_loss, None, backward_op=_backward_impl)
        return gx, gy, None


class _TransformLoss(torch.autograd.Function):
    """The registered op and its autograd formula in the form ``torch.func`` accepts (``setup_context``;
    ``vmap`` runs forward and backward on batched tensors through the ops' batching rules above), for
    ``torch.func.grad``, ``jacrev`` and per-sample gradients (``vmap(grad(...))``). Forward-mode AD
    (``jvp``, ``jacfwd``) is not supported."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, y, options):
        return _laplacian_fwd(x, y, *options)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, y, options = inputs
        ctx.mark_non_differentiable(output[1])
        _setup_context(ctx, (x, y, *options), output)

    @staticmethod
    def backward(ctx, grad_loss, _grad_signs):
        gx, gy, *_ = _backward(ctx, grad_loss, None)
        return gx, gy, None


def _check_args(x: object, y: object, levels: object, reduction: object, level_weights: object) -> tuple:
    """Validates every argument (before any native call); returns the level count and its weights."""
    # the public op takes numpy arrays too (converted before), so the type errors say so
    x = check_tensor("x", x, ndim=4, numpy_ok=True)
    y = check_tensor("y", y, ndim=4, numpy_ok=True)
    if x.shape != y.shape:
        raise ValueError(f"y must have the same shape as x {tuple(x.shape)}, got {tuple(y.shape)}")
    check_same_device(x=x, y=y)
    check_same_dtype(x=x, y=y)
    if x.device.type != "cuda" and x.dtype in (torch.float16, torch.bfloat16):
        name = torch_name(x.dtype)
        raise TypeError(
            f"x has dtype {name}, which laplacian_pyramid_loss computes on CUDA only; on the CPU convert x and "
            "y with .float() (numpy: .astype(np.float32))"
        )
    allowed = _CUDA_DTYPES if x.device.type == "cuda" else _CPU_DTYPES
    check_tensor("x", x, dtypes=allowed, nonempty=True)
    if x.device.type not in ("cpu", "cuda", "meta"):  # meta: shapes only, through the fake implementation
        raise ValueError(f"x must be on a cpu, cuda or meta device, got {x.device}")
    levels, weights = levels_and_weights(check_options(levels, reduction), level_weights)
    if levels is None:
        levels = default_levels(x.shape[2], x.shape[3])
    return levels, default_level_weights(levels) if weights is None else weights


def levels_and_weights(levels: int | None, level_weights: object) -> tuple[int | None, list[float] | None]:
    """``levels`` (checked by :func:`check_options`) and ``level_weights`` as checked floats. Weights given
    without ``levels`` set one level per weight (a count outside [1, MAX_LEVELS] is clamped into it, so the
    length check words the error); without weights both may stay None (the image size picks them)."""
    if level_weights is None:
        return levels, None
    level_weights = _weight_values(level_weights)
    if levels is None:
        levels = min(max(len(level_weights), 1), MAX_LEVELS)
    return levels, check_level_weights(level_weights, levels)


def check_options(levels: object, reduction: object) -> int | None:
    """``reduction`` one of :data:`REDUCTIONS`; ``levels`` None or an int in [1, MAX_LEVELS], returned as an
    int (None stays None: the image size picks it)."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if levels is None:
        return None
    if isinstance(levels, bool) or not isinstance(levels, numbers.Integral):  # numpy ints are Integral
        raise TypeError(f"levels must be an int in [1, {MAX_LEVELS}] or None, got {type(levels).__name__}")
    if not 1 <= (levels := int(levels)) <= MAX_LEVELS:
        raise ValueError(f"levels must be in [1, {MAX_LEVELS}], got {levels}")
    return levels


def check_level_weights(level_weights: object, levels: int) -> list[float]:
    """``level_weights`` as a list of ``levels`` floats (finite, >= 0); None: the default 4^j. A 1-D tensor
    or array is read as its values."""
    if level_weights is None:
        return default_level_weights(levels)
    level_weights = _weight_values(level_weights)
    if len(level_weights) == 0:  # before the count: levels=1 would be the clamp's, not the caller's
        raise ValueError("level_weights must hold one weight per level, finest first, got none")
    if len(level_weights) != levels:
        raise ValueError(
            f"level_weights must hold one weight per level, finest first: {levels} values for levels={levels}, "
            f"got {len(level_weights)}"
        )
    weights = []
    for j, w in enumerate(level_weights):
        if isinstance(w, bool) or not isinstance(w, numbers.Real):  # numpy floats and ints are Real
            raise TypeError(f"level_weights[{j}] must be a float, got {type(w).__name__}")
        w = float(w)
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"level_weights[{j}] must be finite and >= 0, got {w!r}")
        weights.append(w)
    return weights


# For type checkers and IDEs: a tensor for tensors, a numpy array when either input is one.
@overload
def laplacian_pyramid_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    levels: int | None = ...,
    reduction: str = ...,
    level_weights: Sequence[float] | None = ...,
    check_finite_values: bool = ...,
) -> torch.Tensor: ...
@overload
def laplacian_pyramid_loss(
    x: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    *,
    levels: int | None = ...,
    reduction: str = ...,
    level_weights: Sequence[float] | None = ...,
    check_finite_values: bool = ...,
) -> Any: ...


def laplacian_pyramid_loss(
    x: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    *,
    levels: int | None = None,
    reduction: str = "mean",
    level_weights: Sequence[float] | None = None,
    check_finite_values: bool = True,
) -> Any:
    """Laplacian-pyramid L1 loss between images ``x`` and ``y`` of shape (B, C, H, W).

    Args:
        x, y: ``(B, C, H, W)`` images of the same shape, dtype and device (see the module docstring for
            dtypes), non-empty (B, C, H, W >= 1; an empty batch raises ``ValueError``, unlike
            :func:`~glann_ext.nn_argmin`, which accepts N = 0); tensors, or numpy arrays (then the loss
            is a numpy array, without gradient).
        levels: pyramid levels J (1..16); None picks ``1 + floor(log2(min(H, W)))`` capped at 5, or with
            ``level_weights`` their count.
        reduction: ``"mean"`` (per pixel of level 0), ``"sum"`` or ``"none"`` (per sample, shape (B,)).
        level_weights: the weight of each level, finest first (J values, finite, >= 0; a sequence, or a 1-D
            tensor or array); None gives the GLO paper's ``4^j`` (exactly: the same bits as before this
            argument existed).
        check_finite_values: raise :class:`~glann_ext.errors.NonFiniteError` naming ``x`` or ``y`` and the
            lowest offending sample if they hold NaN/Inf (see the module docstring: free; on CUDA deferred).

    Returns:
        The loss, float64 for float64 inputs and float32 otherwise; differentiable in x and y. Under
        ``torch.autocast`` float16/bfloat16 inputs are computed in float32, as torch's own losses are.
    """
    check_finite_values = check_bool("check_finite_values", check_finite_values)
    as_numpy = is_numpy(x) or is_numpy(y)
    if as_numpy:
        x = from_numpy("x", x) if is_numpy(x) else x
        y = from_numpy("y", y) if is_numpy(y) else y
    device = x.device.type if isinstance(x, torch.Tensor) else None  # a non-tensor is named by _check_args
    if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):  # as torch's l1_loss, mse_loss: fp32
        x, y = (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in (x, y))
    loss = _loss(x, y, levels, reduction, level_weights, check_finite_values=check_finite_values)
    return loss.detach().numpy() if as_numpy else loss


class LaplacianPyramidLoss(torch.nn.Module):
    """:func:`laplacian_pyramid_loss` as a module, for code and configs that take loss modules:
    ``LaplacianPyramidLoss(levels=None, reduction="mean")(x, y)``. The options are checked here (a wrong one
    fails when the module is made, not at the first batch); ``level_weights`` are copied as floats then
    (constants: no parameters, nothing in ``state_dict``)."""

    def __init__(
        self,
        *,
        levels: int | None = None,
        reduction: str = "mean",
        level_weights: Sequence[float] | None = None,
        check_finite_values: bool = True,
    ) -> None:
        super().__init__()
        self.levels, self.level_weights = levels_and_weights(check_options(levels, reduction), level_weights)
        self.reduction = reduction
        self.check_finite_values = check_bool("check_finite_values", check_finite_values)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``laplacian_pyramid_loss(x, y, ...)`` with this module's options."""
        return laplacian_pyramid_loss(
            x, y, levels=self.levels, reduction=self.reduction, level_weights=self.level_weights,
            check_finite_values=self.check_finite_values,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"levels={self.levels}, reduction={self.reduction!r}, level_weights={self.level_weights}"


def _weight_values(level_weights: object) -> Sequence:
    """``level_weights`` (not None) as a sequence: a 1-D tensor or array as its values; else a TypeError.
    The weights are constants of the loss: a tensor that requires grad is refused (its gradient would be
    dropped without a word)."""
    if isinstance(level_weights, torch.Tensor) and level_weights.requires_grad:
        raise TypeError(
            "level_weights are constants of the loss (no gradient reaches them), got a tensor that requires "
            "grad: pass level_weights.detach() or a list"
        )
    if isinstance(level_weights, (torch.Tensor, np.ndarray)) and level_weights.ndim == 1:
        return level_weights.tolist()
    if isinstance(level_weights, (str, bytes)) or not isinstance(level_weights, Sequence):
        raise TypeError(
            "level_weights must be a sequence of floats (one per level, finest first) or None, "
            f"got {type(level_weights).__name__}"
        )
    return level_weights


def _loss(
    x: torch.Tensor,
    y: torch.Tensor,
    levels: int | None,
    reduction: str,
    level_weights: Sequence[float] | None = None,
    *,
    check_finite_values: bool = True,
    pixel_path: bool = False,
) -> torch.Tensor:
    """:func:`laplacian_pyramid_loss`; ``pixel_path=True`` runs the CPU per-pixel path (tests only)."""
    levels, weights = _check_args(x, y, levels, reduction, level_weights)
    _native.require_cuda_build(x, "laplacian_pyramid_loss")
    options = (levels, weights, REDUCTIONS.index(reduction), pixel_path, check_finite_values)
    if _native.plain_tensors(x, y):
        return _EagerLoss.apply(x, y, options)
    if _native.under_func_transform(x, y):
        return _TransformLoss.apply(x, y, options)[0]
    return _laplacian_fwd(x, y, *options)[0]

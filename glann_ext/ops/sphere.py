"""Unit-sphere projection of rows and the fused sparse optimizer step of a GLO latent table.

GLO keeps one latent code per training image in a table ``(N_codes, D)`` whose rows live on the unit
sphere. Each training step touches only the rows of the batch; the optimizers of :mod:`glann_ext.optim`
update exactly those rows and re-project them in one pass, instead of a dense Adam step over the whole
table followed by a full re-projection.

Semantics shared by every function here:

* **Projection** ``z[i] <- z[i] / ||z[i]||_2``. The norm is accumulated in float64 for float32 and
  float64 rows (float32 for float16/bfloat16 rows, CUDA only); float64 rows too large or too small for a
  plain sum of squares are rescaled by a power of two first, so every finite row projects correctly.
  The result is the float64 quotient rounded to the row's dtype (within ~1 ulp of
  :func:`glann_ext.ops.reference.project_to_sphere_reference`).
* **Zero rows**: a row that is exactly zero becomes ``(1, ..., 1) / sqrt(D)``, like the reference.
* **NaN/Inf rows** (projection): each row is read completely before any of its elements is written, so
  a row holding NaN or Inf is never written. All other rows are projected, then
  :class:`~glann_ext.errors.NonFiniteError` (``argument="z"``, ``row`` the lowest bad row) is raised. For
  the in-place op this means: finite rows projected, bad rows unchanged. On CUDA the kernel flags the row
  in device memory and the error is deferred, without a synchronisation (see :mod:`glann_ext.ops`).
* **numpy**: ``project_to_sphere`` and ``project_to_sphere_`` accept a numpy array (float32/float64),
  read and written without a copy; the first returns a new numpy array, the second projects the array in
  place (it must be writable, with non-negative strides) and returns it. The optimizer steps take tensors
  only (they are training internals).
* **Optimizer steps** touch only ``table[indices]``; duplicate indices are coalesced first by summing
  their gradient rows (what ``torch.optim.SparseAdam`` does with ``grad.coalesce()``). The gradient is
  checked before anything is written: NaN/Inf in ``grad`` raises ``NonFiniteError`` (``argument="grad"``,
  ``row`` the lowest bad row of the caller's ``grad``) and leaves table and state untouched (on CUDA one
  synchronisation, shared with the range check of ``indices``). NaN/Inf already present in the touched rows of the table or the moments are not
  checked (that would cost a pass); they propagate and such a row is left unprojected.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import NonFiniteError
from . import _checks, _native
from ._native import _C

__all__ = [
    "fused_latent_adam_",
    "fused_latent_sgd_",
    "project_to_sphere",
    "project_to_sphere_",
]

_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_TABLE_DTYPES = (torch.float32, torch.float64)
_ADAM, _SGD = 0, 1

# --------------------------------------------------------------------------------------------------
# Validation (metadata only: shared by the real and the fake implementations)
# --------------------------------------------------------------------------------------------------


def _check_rows(op: str, z: torch.Tensor) -> None:
    _checks.check_tensor(f"{op}: z", z, ndim=2)
    allowed = _CUDA_DTYPES if z.device.type == "cuda" else _CPU_DTYPES
    if z.dtype not in allowed:
        where = (
            "on CUDA"
            if z.device.type == "cuda"
            else "on CPU (float16/bfloat16 are CUDA only: convert with .float())"
        )
        raise TypeError(
            f"{op}: z must have dtype in ({_checks._dtype_names(allowed)}) {where}, "
            f"got {_checks.torch_name(z.dtype)}"
        )


def _check_types(op: str, **tensors: object) -> None:
    """Only the Python type: the dispatcher would otherwise answer a non-tensor with a RuntimeError."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.layout != torch.strided:  # the dispatcher's NotImplementedError named nothing
            raise _checks.dense_layout_error(f"{op}: {name}", t, rows=name == "grad")


def _span(t: torch.Tensor) -> tuple[int, int]:
    """Byte range [lo, hi) that t's elements occupy (torch strides are never negative)."""
    lo = t.data_ptr()
    if t.is_contiguous():
        return lo, lo + t.numel() * t.element_size()
    last = sum((s - 1) * st for s, st in zip(t.shape, t.stride()))
    return lo, lo + (last + 1) * t.element_size()


def _check_disjoint(op: str, named: dict[str, torch.Tensor]) -> None:
    items = [(n, t, _span(t)) for n, t in named.items() if t.numel() > 0]
    for i, (na, _, (alo, ahi)) in enumerate(items):
        for nb, _, (blo, bhi) in items[i + 1 :]:
            if alo < bhi and blo < ahi:
                raise ValueError(f"{op}: {na} and {nb} share memory; pass separate tensors")


def _check_latent(
    op: str,
    table: torch.Tensor,
    state: dict[str, torch.Tensor],
    indices: torch.Tensor,
    grad: torch.Tensor,
    *,
    real: bool,
) -> None:
    """Argument checks; ``real=False`` under fake tensors, which have no memory to compare."""
    if not _latent_ok(table, state.values(), indices, grad):
        _explain_latent(op, table, state, indices, grad)
    if real:
        _check_disjoint(op, {"table": table, **state, "grad": grad})


def _latent_ok(table, state, indices, grad) -> bool:
    """The common valid case in one cheap expression (this runs every training step); the detailed
    checks of _explain_latent only run to word the error."""
    dt, dev, shape = table.dtype, table.device, table.shape
    return (
        dt in _TABLE_DTYPES
        and len(shape) == 2
        and shape[1] > 0
        and table.is_contiguous()
        and all(t.shape == shape and t.dtype == dt and t.device == dev and t.is_contiguous() for t in state)
        and indices.dtype == torch.int64
        and indices.dim() == 1
        and indices.device == dev
        and grad.dtype == dt
        and grad.device == dev
        and grad.shape == (indices.shape[0], shape[1])
    )


def _explain_latent(op: str, table, state: dict[str, torch.Tensor], indices, grad) -> None:
    """Raises the precise error for arguments _latent_ok rejected."""
    _checks.check_tensor(f"{op}: table", table, ndim=2, dtypes=_TABLE_DTYPES)
    if table.shape[1] == 0:
        raise ValueError(f"{op}: table must have at least one column, got shape {tuple(table.shape)}")
    for name, t in {"table": table, **state}.items():
        _checks.check_tensor(f"{op}: {name}", t, ndim=2)
        if name != "table" and t.shape != table.shape:
            raise ValueError(
                f"{op}: {name} must have the table's shape {tuple(table.shape)}, got {tuple(t.shape)}"
            )
        if not t.is_contiguous():
            raise ValueError(
                f"{op}: {name} must be contiguous (updated in place), got strides {t.stride()}; "
                "pass a contiguous tensor"
            )
    _checks.check_tensor(f"{op}: indices", indices, ndim=1, dtypes=(torch.int64,))
    _checks.check_tensor(f"{op}: grad", grad, ndim=2)
    b, d = indices.shape[0], table.shape[1]
    if tuple(grad.shape) != (b, d):
        raise ValueError(
            f"{op}: grad must have shape (len(indices), table.shape[1]) = ({b}, {d}), got {tuple(grad.shape)}"
        )
    try:
        _checks.check_same_dtype(table=table, **state, grad=grad)
        _checks.check_same_device(table=table, **state, indices=indices, grad=grad)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{op}: {exc}") from None
    raise ValueError(f"{op}: invalid arguments")  # not reached: every rejected case is worded above


def _check_hyper_types(op: str, project: object, **numbers: object) -> bool:
    """Python types of the hyperparameters, before the dispatcher (which answers a str with a schema dump
    and takes a bool for a number); returns ``project`` as the Python bool the schema names."""
    for name, v in numbers.items():
        want_int = name == "step"
        ok = isinstance(v, int) if want_int else isinstance(v, (int, float))
        if not ok or isinstance(v, bool):
            kind = "an int" if want_int else "a float"
            raise TypeError(f"{op}: {name} must be {kind}, got {type(v).__name__} {v!r}")
    return _checks.check_bool(f"{op}: project", project)  # numpy.bool_ too


def _check_hyper(op: str, lr: float, **kw: float) -> None:
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
        raise ValueError(f"{op}: lr must be a finite float >= 0, got {lr!r}")
    if "eps" in kw and not kw["eps"] > 0:
        raise ValueError(f"{op}: eps must be > 0, got {kw['eps']!r}")
    for name in ("beta1", "beta2"):
        if name in kw and not 0.0 <= kw[name] < 1.0:
            raise ValueError(f"{op}: {name} must be in [0, 1), got {kw[name]!r}")
    if "step" in kw and not (isinstance(kw["step"], int) and kw["step"] >= 1):
        raise ValueError(
            f"{op}: step must be an int >= 1 (the step number after incrementing), got {kw['step']!r}"
        )


# --------------------------------------------------------------------------------------------------
# Native calls
# --------------------------------------------------------------------------------------------------


_PROJECT_NOTE = " (every finite row was projected; non-finite rows were not written)"


def _run_project(op: str, src: torch.Tensor, dst: torch.Tensor) -> None:
    n, d = src.shape
    if n == 0 or d == 0:
        return
    exec_ctx = _native.exec_context(src)
    if exec_ctx.cuda:
        _native.require_cuda_build(src, op)
    # CUDA: the kernel reports the first non-finite row through memory (CPU: through its status).
    bad = _native.nonfinite_flags(src.device, 1) if exec_ctx.cuda else None
    try:
        with _native.native_call(op, src, arguments=("z",)):
            _C.project_to_sphere(
                _native.dtype_code(src), src.data_ptr(), src.stride(), dst.data_ptr(), dst.stride(), n, d,
                bad.data_ptr() if bad is not None else 0, exec_ctx,
            )  # fmt: skip
    except NonFiniteError as exc:
        raise _checks.non_finite_error("z", exc.row, op=op, note=_PROJECT_NOTE) from None
    if bad is not None:
        _native.defer_flags(bad, lambda rows: _project_error(op, rows[0]))


def _project_error(op: str, row: int) -> Exception | None:
    if row == _native.NO_ROW:
        return None
    return _checks.non_finite_error("z", row, op=op, note=_PROJECT_NOTE)


def _coalesce(op: str, table: torch.Tensor, indices: torch.Tensor, grad: torch.Tensor):
    """Range check and duplicate coalescing; returns (indices, grad) with unique indices."""
    n = table.shape[0]
    uniq = torch.unique(indices)  # sorted: min and max come for free
    if table.device.type == "cuda":
        # One sync for the range check and the finiteness of grad.
        lo, hi, nonfinite = torch.stack([uniq[0], uniq[-1], (~torch.isfinite(grad)).any().long()]).tolist()
        if nonfinite:
            _raise_nonfinite_grad(op, grad)
    else:
        lo, hi = int(uniq[0]), int(uniq[-1])  # grad is checked by the CPU kernel before any write
    if lo < 0 or hi >= n:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{op}: indices must be in [0, {n}) (table rows), got {bad}")
    if uniq.shape[0] == indices.shape[0]:
        return indices, grad
    # Duplicates: sum their rows with the very coalesce() torch.optim.SparseAdam applies.
    sp = torch.sparse_coo_tensor(
        indices.unsqueeze(0), grad, tuple(table.shape), check_invariants=False
    ).coalesce()
    return sp._indices()[0], sp._values()


def _raise_nonfinite_grad(op: str, grad: torch.Tensor) -> None:
    """NonFiniteError naming the first bad row of the caller's grad (the kernel saw the coalesced one)."""
    row = _checks.first_nonfinite_row(grad)
    if row is None:  # finite rows whose duplicates summed to Inf
        raise NonFiniteError(
            f"{op}: the sum of duplicate grad rows overflowed to Inf; nothing was updated", argument="grad"
        )
    raise _checks.non_finite_error("grad", row, op=op, note="; nothing was updated")


def _run_step(op: str, kind: int, table, exp_avg, exp_avg_sq, indices, grad, *, scalars, project) -> None:
    if indices.shape[0] == 0:
        return  # torch.optim skips an empty gradient too
    _native.require_cuda_build(table, op)
    idx, g = _coalesce(op, table, indices, grad)
    try:
        with _native.native_call(op, table, arguments=("grad",)):
            _C.latent_step(
                _native.dtype_code(table), kind, table.data_ptr(),
                exp_avg.data_ptr() if exp_avg is not None else 0,
                exp_avg_sq.data_ptr() if exp_avg_sq is not None else 0,
                table.stride(), table.shape[0], table.shape[1], idx.data_ptr(), idx.stride(),
                g.data_ptr(), g.stride(), idx.shape[0], *scalars, project, _native.exec_context(table),
            )  # fmt: skip
    except NonFiniteError:
        # The CPU kernel found NaN/Inf in grad before writing anything.
        _raise_nonfinite_grad(op, grad)


# --------------------------------------------------------------------------------------------------
# torch.library registration. Library.define/impl rather than torch.library.custom_op: these ops run
# every training step on small batches, and a no-op custom_op call costs ~24 us against ~2.3 us for a
# Library-defined op with a Python CPU kernel (torch 2.13, this machine).
# --------------------------------------------------------------------------------------------------

_LIB = torch.library.Library("glann_ext", "FRAGMENT")  # kept alive for the process
_LIB.define("project_to_sphere(Tensor z) -> Tensor")
_LIB.define("project_to_sphere_inplace(Tensor(a!) z) -> ()")
_LIB.define(
    "latent_adam_step(Tensor(a!) table, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor indices, "
    "Tensor grad, int step, float lr, float beta1, float beta2, float eps, bool project) -> ()"
)
_LIB.define("latent_sgd_step(Tensor(a!) table, Tensor indices, Tensor grad, float lr, bool project) -> ()")


def _project_meta(z: torch.Tensor) -> torch.Tensor:
    _check_rows("project_to_sphere", z)
    return torch.empty_like(z, memory_format=torch.contiguous_format)


def _project_impl(z: torch.Tensor) -> torch.Tensor:
    out = _project_meta(z)
    _run_project("project_to_sphere", z, out)
    return out


def _project_inplace_meta(z: torch.Tensor) -> None:
    _check_rows("project_to_sphere_", z)


def _check_not_inference(op: str, **written: torch.Tensor) -> None:
    """Torch's rule for in-place ops on inference tensors (made under ``torch.inference_mode``): outside that
    mode they cannot be written. Inference tensors skip the ADInplaceOrView kernel that checks torch's
    other rules (:func:`_in_place_kernel`), so the implementations check this one."""
    if torch.is_inference_mode_enabled():
        return
    for name, t in written.items():
        if t.is_inference():
            raise RuntimeError(
                f"{op}: {name} is an inference tensor (made under torch.inference_mode), which cannot be "
                "updated in place outside inference mode; clone it first, or call this inside "
                "torch.inference_mode()"
            )


def _project_inplace_impl(z: torch.Tensor) -> None:
    _check_not_inference("project_to_sphere_", z=z)
    _project_inplace_meta(z)
    _checks.check_no_internal_overlap("project_to_sphere_: z", z)
    _run_project("project_to_sphere_", z, z)


def _adam_meta(
    table, exp_avg, exp_avg_sq, indices, grad, step, lr, beta1, beta2, eps, project, real=False
) -> None:
    op = "fused_latent_adam_"
    _check_latent(op, table, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}, indices, grad, real=real)
    _check_hyper(op, lr, beta1=beta1, beta2=beta2, eps=eps, step=step)


def _adam_impl(table, exp_avg, exp_avg_sq, indices, grad, step, lr, beta1, beta2, eps, project) -> None:
    _check_not_inference("fused_latent_adam_", table=table, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    _adam_meta(table, exp_avg, exp_avg_sq, indices, grad, step, lr, beta1, beta2, eps, project, real=True)
    # Exactly torch.optim._functional.sparse_adam's scalar arithmetic (Python floats, same order).
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr * math.sqrt(bias_correction2) / bias_correction1
    scalars = (1 - beta1, 1 - beta2, eps, -step_size, 0.0)
    _run_step(
        "fused_latent_adam_",
        _ADAM,
        table,
        exp_avg,
        exp_avg_sq,
        indices,
        grad,
        scalars=scalars,
        project=project,
    )


def _sgd_meta(table, indices, grad, lr, project, real=False) -> None:
    _check_latent("fused_latent_sgd_", table, {}, indices, grad, real=real)
    _check_hyper("fused_latent_sgd_", lr)


def _sgd_impl(table, indices, grad, lr, project) -> None:
    _check_not_inference("fused_latent_sgd_", table=table)
    _sgd_meta(table, indices, grad, lr, project, real=True)
    scalars = (0.0, 0.0, 0.0, 0.0, -lr)
    _run_step("fused_latent_sgd_", _SGD, table, None, None, indices, grad, scalars=scalars, project=project)


for _key in ("CPU", "CUDA"):
    _LIB.impl("project_to_sphere", _project_impl, _key)
    _LIB.impl("project_to_sphere_inplace", _project_inplace_impl, _key)
    _LIB.impl("latent_adam_step", _adam_impl, _key)
    _LIB.impl("latent_sgd_step", _sgd_impl, _key)


def _check_writable(op: str, named: dict[str, torch.Tensor]) -> None:
    """Torch's rule for in-place ops, made stricter because these ops have no backward: with grad mode on,
    a tensor that requires grad (a leaf, a view of one, or an intermediate result) cannot be written."""
    if not torch.is_grad_enabled():
        return
    hint = ", or use project_to_sphere, which is differentiable" if op == "project_to_sphere_" else ""
    for name, t in named.items():
        if t.requires_grad:
            what = "a leaf tensor" if t.is_leaf else "a tensor"
            raise RuntimeError(
                f"{op}: {name} is {what} that requires grad and grad mode is enabled; this in-place op "
                f"has no backward, so autograd would silently use wrong values. Call it under "
                f"torch.no_grad() (as glann_ext.optim does){hint}"
            )


def _in_place_kernel(name: str, op: str, written: tuple[str, ...]):
    """ADInplaceOrView kernel: what torch's own in-place ops do around the computation (refuse tensors
    autograd tracks, then bump the version counter of every written tensor so a saved copy is detected)."""
    packet = getattr(torch.ops.glann_ext, name).default

    def kernel(*args):
        tensors = dict(zip(written, args))
        _check_writable(op, tensors)
        with torch._C._AutoDispatchBelowADInplaceOrView():
            packet(*args)
        torch.autograd.graph.increment_version(list(tensors.values()))

    return kernel


_LIB.impl(
    "project_to_sphere_inplace",
    _in_place_kernel("project_to_sphere_inplace", "project_to_sphere_", ("z",)),
    "ADInplaceOrView",
)
_LIB.impl(
    "latent_adam_step",
    _in_place_kernel("latent_adam_step", "fused_latent_adam_", ("table", "exp_avg", "exp_avg_sq")),
    "ADInplaceOrView",
)
_LIB.impl(
    "latent_sgd_step", _in_place_kernel("latent_sgd_step", "fused_latent_sgd_", ("table",)), "ADInplaceOrView"
)
torch.library.register_fake("glann_ext::project_to_sphere", _project_meta, lib=_LIB)
torch.library.register_fake("glann_ext::project_to_sphere_inplace", _project_inplace_meta, lib=_LIB)
torch.library.register_fake("glann_ext::latent_adam_step", _adam_meta, lib=_LIB)
torch.library.register_fake("glann_ext::latent_sgd_step", _sgd_meta, lib=_LIB)


def _project_setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0], output)


def _project_backward(ctx, grad: torch.Tensor) -> torch.Tensor:
    """d(z/|z|) = (g - y (y.g)) / |z|, in float64 (float32 for 16-bit rows) so large rows cannot overflow;
    zero rows map to a constant, so their gradient is 0."""
    z, y = ctx.saved_tensors
    acc = torch.float64 if z.dtype in _CPU_DTYPES else torch.float32
    zz, yy, gg = z.to(acc), y.to(acc), grad.to(acc)
    amax = zz.abs().amax(1, keepdim=True)
    # Scale by the row's largest magnitude (only an exact zero row is left unscaled): subnormal and huge
    # float64 rows get their true norm.
    scale = torch.where(amax == 0, torch.ones_like(amax), amax)
    norm = torch.linalg.vector_norm(zz / scale, dim=1, keepdim=True)  # ||z|| / scale, in [1, sqrt(D)]
    gz = (gg - yy * (yy * gg).sum(1, keepdim=True)) / norm / scale  # scale is exact, even subnormal
    return torch.where(norm == 0, torch.zeros_like(gz), gz).to(z.dtype)


torch.library.register_autograd(
    "glann_ext::project_to_sphere", _project_backward, setup_context=_project_setup_context, lib=_LIB
)


def _project_vmap(info, in_dims, z):
    """torch.vmap of the projection: the vmapped tables' rows projected in one kernel call (instead of
    torch's fallback, a call per entry); a NaN error counts rows across the flattened tables."""
    z = _native.batch_dim_first(z, in_dims[0], info.batch_size)  # the only input: batched when this runs
    _check_rows("project_to_sphere", z[0])  # the entry's own shape and dtype, worded as outside vmap
    return torch.ops.glann_ext.project_to_sphere(z.reshape(-1, z.shape[-1])).view(z.shape), 0


torch.library.register_vmap("glann_ext::project_to_sphere", _project_vmap, lib=_LIB)


class _TransformProject(torch.autograd.Function):
    """The registered projection and its backward in the form ``torch.func`` accepts (see
    laplacian._TransformLoss): ``torch.func.grad``, ``jacrev``, ``vmap`` and per-sample gradients."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z):
        return torch.ops.glann_ext.project_to_sphere(z)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _project_setup_context(ctx, inputs, output)

    @staticmethod
    def backward(ctx, grad):
        return _project_backward(ctx, grad)


_ops = torch.ops.glann_ext

# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def project_to_sphere(z: torch.Tensor | np.ndarray) -> Any:
    """Return a new contiguous tensor whose rows are the rows of ``z`` scaled to unit L2 norm.

    Args:
        z: ``(N, D)`` float32 or float64 (CPU and CUDA), float16 or bfloat16 (CUDA; float32 math).
            Any strides (e.g. a column slice of a wider tensor) are read without a copy. A numpy array
            gives a numpy array.

    Returns:
        ``(N, D)`` tensor of ``z``'s dtype. Zero rows become ``(1, ..., 1) / sqrt(D)``.

    Raises:
        NonFiniteError: a row holds NaN or Inf (``row``: the first one; the others were projected).
        TypeError: ``z`` is not a tensor (or numpy array), or its dtype is not supported.
        ValueError: ``z`` is not 2-D.

    Differentiable: the backward is ``(g - y (y . g)) / ||z||`` per row, 0 for zero rows.
    :func:`project_to_sphere_` has no backward (it is meant for tables and noise outside autograd).
    """
    if _checks.is_numpy(z):
        return _ops.project_to_sphere(_checks.from_numpy("project_to_sphere: z", z)).numpy()
    _checks.check_tensor("project_to_sphere: z", z, numpy_ok=True)
    if _native.under_func_transform(z):
        return _TransformProject.apply(z)
    return _ops.project_to_sphere(z)


def project_to_sphere_(z: torch.Tensor | np.ndarray) -> Any:
    """Scale every row of ``z`` to unit L2 norm in place and return ``z``.

    Same arguments and semantics as :func:`project_to_sphere`. ``z`` may be strided (a view of a wider
    tensor) but its elements must not alias each other (``expand()`` views raise ``ValueError``).
    If some rows hold NaN/Inf, ``NonFiniteError`` names the first; the other rows have been projected
    and the non-finite rows are left exactly as they were.
    Like torch's in-place ops it bumps ``z``'s version counter (a copy autograd saved is then detected at
    backward), and with grad mode on it refuses a ``z`` that requires grad (``RuntimeError``): it has no
    backward, so call it under ``torch.no_grad()``.
    """
    if _checks.is_numpy(z):
        _ops.project_to_sphere_inplace(_checks.from_numpy("project_to_sphere_: z", z, in_place=True))
        return z
    _checks.check_tensor("project_to_sphere_: z", z, numpy_ok=True)
    _ops.project_to_sphere_inplace(z)
    return z


def fused_latent_adam_(
    table: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    indices: torch.Tensor,
    grad: torch.Tensor,
    *,
    step: int,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    project: bool = True,
) -> torch.Tensor:
    """One ``torch.optim.SparseAdam`` step on the rows ``table[indices]``, then re-projection.

    Follows ``torch.optim.SparseAdam`` (``maximize=False``) on the touched rows operation by operation:
    ``m += (g - m) * (1 - beta1)``, ``v += (g*g - v) * (1 - beta2)``, then
    ``p += (-step_size) * (m / (sqrt(v) + eps))`` with ``step_size = lr * sqrt(1 - beta2**step) /
    (1 - beta1**step)`` computed in Python floats as torch does (eps added *after* the square root of the
    uncorrected ``v``: SparseAdam's placement, not Adam's ``sqrt(v_hat)``), each operation rounded once in
    the table's dtype, scalars rounded to that dtype like torch's scalar ops, no fused multiply-adds.
    ``exp_avg``/``exp_avg_sq`` are bitwise identical to SparseAdam's. The kernel's sqrt is IEEE correctly
    rounded; torch 2.13's CPU ``torch.sqrt`` is not always (about 0.7% of inputs come out 1 ulp off), so
    with ``project=False`` the parameters equal SparseAdam's except for those last-ulp cases.
    Rows not in ``indices`` are neither read nor written, so their moments do not decay (SparseAdam's
    masking).
    With ``project=True`` each updated row is then scaled to unit norm (see the module docstring).

    Args:
        table: ``(N, D)`` float32/float64 contiguous latent table, updated in place.
        exp_avg, exp_avg_sq: contiguous moment tensors of the table's shape/dtype/device, updated in place
            (zeros initially).
        indices: ``(B,)`` int64 rows of the table; duplicates have their grad rows summed
            (SparseAdam's ``coalesce()``); must be in ``[0, N)``.
        grad: ``(B, D)`` gradient rows, any strides; NaN/Inf raise ``NonFiniteError`` before any write.
        step: the step number *after* incrementing (1 on the first step), shared by all rows, as
            SparseAdam's per-parameter ``state['step']``.
        lr, beta1, beta2, eps: as in ``torch.optim.SparseAdam``.
        project: re-project the updated rows onto the unit sphere.

    Returns:
        ``table``. An empty ``indices`` changes nothing (SparseAdam still counts the step: the caller
        owns the counter; :class:`glann_ext.optim.SphereSparseAdam` does this).
    """
    _check_types(
        "fused_latent_adam_", table=table, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, indices=indices, grad=grad
    )
    project = _check_hyper_types(
        "fused_latent_adam_", project, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps
    )
    _ops.latent_adam_step(table, exp_avg, exp_avg_sq, indices, grad, step, lr, beta1, beta2, eps, project)
    return table


def fused_latent_sgd_(
    table: torch.Tensor, indices: torch.Tensor, grad: torch.Tensor, *, lr: float, project: bool = True
) -> torch.Tensor:
    """One plain SGD step ``table[i] += -lr * grad_row`` on the rows ``table[indices]``, then re-projection.

    Matches ``torch.optim.SGD(lr=lr)`` with a sparse gradient: ``momentum=0``, ``dampening=0``,
    ``weight_decay=0``, ``nesterov=False``, ``maximize=False`` are the only supported options (momentum
    and weight decay would need state or reads of untouched rows). Duplicate indices have their grad rows
    summed first, so with duplicates the result can differ from torch's one-add-per-entry in the last ulp.
    Validation, NaN policy and arguments as :func:`fused_latent_adam_`. Returns ``table``.

    Both steps bump the version counter of every tensor they write and, with grad mode on, refuse one that
    requires grad (``RuntimeError``), like torch's in-place ops; the optimizers call them under
    ``torch.no_grad()``.
    """
    _check_types("fused_latent_sgd_", table=table, indices=indices, grad=grad)
    project = _check_hyper_types("fused_latent_sgd_", project, lr=lr)
    _ops.latent_sgd_step(table, indices, grad, lr, project)
    return table

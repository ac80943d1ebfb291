"""Sparse optimizers for a GLO latent table whose rows live on the unit sphere.

Each training step touches only the rows of its batch: :class:`SphereSparseAdam` and
:class:`SphereSparseSGD` update exactly those rows and re-project them onto the sphere. Two backends
compute the same step:

* ``"fused"`` (default): one kernel pass per step (:func:`glann_ext.fused_latent_adam_` /
  :func:`glann_ext.fused_latent_sgd_`);
* ``"reference"``: the plain PyTorch step of :mod:`glann_ext.ops.reference` (``torch.optim``'s sparse Adam
  or SGD functional step, then re-projection of the touched rows), the oracle the kernels are tested
  against.

Both keep one state schema, so a run checkpointed with one backend resumes with the other::

    {"kind": "adam", "step": int, "lr": float, "betas": [b1, b2], "eps": float, "project": bool,
     "exp_avg": Tensor, "exp_avg_sq": Tensor}
    {"kind": "sgd", "lr": float, "project": bool}
"""

from __future__ import annotations

import math
from typing import Any, Union

import torch

from ._args import checked_int
from .ops import reference, sphere
from .ops._checks import check_bool
from .ops.sphere import fused_latent_adam_, fused_latent_sgd_

__all__ = ["BACKENDS", "LATENT_OPTIMIZERS", "SphereSparseAdam", "SphereSparseSGD", "latent_optimizer"]

BACKENDS = ("fused", "reference")
LATENT_OPTIMIZERS = ("adam", "sgd")
_TABLE_DTYPES = (torch.float32, torch.float64)


def _check_table(owner: str, table: object) -> torch.Tensor:
    if not isinstance(table, torch.Tensor):
        raise TypeError(f"{owner}: table must be a torch.Tensor, got {type(table).__name__}")
    if table.dtype not in _TABLE_DTYPES:
        got = str(table.dtype).replace("torch.", "")
        raise TypeError(f"{owner}: table must have dtype in (float32, float64), got {got}")
    if table.dim() != 2:
        raise ValueError(f"{owner}: table must be a 2-D tensor, got {table.dim()}-D")
    if not table.is_contiguous():
        raise ValueError(
            f"{owner}: table must be contiguous (every step updates it in place), got shape "
            f"{tuple(table.shape)} with strides {table.stride()}; pass table.contiguous() and keep that tensor"
        )
    return table


def _check_betas_eps(owner: str, betas: object, eps: object) -> tuple[tuple[float, float], float]:
    """Adam's (beta1, beta2) in [0, 1) and eps a finite number > 0, as floats."""
    try:
        b1, b2 = (float(b) for b in betas)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: betas must be two numbers in [0, 1), got {betas!r}") from None
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise ValueError(f"{owner}: betas must be in [0, 1), got {tuple(betas)!r}")  # type: ignore[arg-type]
    ok = isinstance(eps, (int, float)) and not isinstance(eps, bool)
    if not (ok and eps > 0 and math.isfinite(eps)):  # type: ignore[operator]
        raise ValueError(f"{owner}: eps must be a finite number > 0, got {eps!r}")
    return (b1, b2), float(eps)  # type: ignore[arg-type]


def _check_backend(owner: str, backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"{owner}: backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _reference_checks(
    op: str, table: torch.Tensor, indices: object, grad: object, project: bool,
    state: dict[str, torch.Tensor], numbers: dict[str, Any],
) -> torch.Tensor:  # fmt: skip
    """The fused kernels' argument checks (types, shapes, dtypes, devices, hyperparameters, the range of
    ``indices``) for the reference backend's step, which would otherwise fail inside torch or divide by zero
    (``updates=0``); returns ``grad`` in the table's dtype (the reference step rounds a wider grad first)."""
    sphere._check_types(op, indices=indices, grad=grad)
    sphere._check_hyper_types(op, project, **numbers)
    sphere._check_hyper(op, **numbers)
    grad = grad.to(table.dtype)
    sphere._check_latent(op, table, state, indices, grad, real=True)
    if indices.numel():
        sphere._coalesce(op, table, indices, grad)  # its range check (the reference step coalesces itself)
    return grad


def _check_rate(owner: str, lr: object) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"{owner}: lr must be a finite float > 0, got {lr!r}")
    return float(lr)


class SphereSparseAdam:
    """``torch.optim.SparseAdam`` on a plain latent table, fused with re-projection onto the sphere.

    Owns ``exp_avg``/``exp_avg_sq`` (zeros of the table's shape) and the step counter. Typical use::

        opt = SphereSparseAdam(table, lr=1e-2)
        z = table[idx].detach().requires_grad_()
        loss(model(z)).backward()
        opt.step(idx, z.grad)

    Each :meth:`step` increments the counter (also for an empty batch, like SparseAdam) and updates
    ``table[indices]`` in place; if it raises, neither the table nor the counter has changed (both backends
    check the arguments as the fused kernel does: types, shapes, hyperparameters, the range of indices).
    """

    kind = "adam"

    def __init__(
        self,
        table: torch.Tensor,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        *,
        project: bool = True,
        backend: str = "fused",
    ) -> None:
        self.table = _check_table("SphereSparseAdam", table)
        self.backend = _check_backend("SphereSparseAdam", backend)
        self.lr = _check_rate("SphereSparseAdam", lr)
        self.betas, self.eps = _check_betas_eps("SphereSparseAdam", betas, eps)
        self.project = check_bool("SphereSparseAdam: project", project)
        self.exp_avg = torch.zeros_like(table, memory_format=torch.contiguous_format)
        self.exp_avg_sq = torch.zeros_like(table, memory_format=torch.contiguous_format)
        self.step_count = 0

    @torch.no_grad()
    def step(self, indices: torch.Tensor, grad: torch.Tensor, *, updates: int | None = None) -> None:
        """Apply one step to ``table[indices]`` with gradient rows ``grad`` ``(len(indices), D)``.

        ``updates``: how many times these rows have now been updated (this step included), for Adam's bias
        correction; None uses the optimizer's own step counter, as ``torch.optim.SparseAdam`` does. The
        two agree for a dense parameter; for a table whose rows are touched once per epoch the counter runs
        ahead of every row's real count, so the correction vanishes while a row's second moment is still
        tiny and its first steps are far too large (about lr / sqrt((1 - beta2) k) per coordinate at its
        k-th update). GLO passes the rows' own count (see ``TrainConfig.latent_adam_steps``)."""
        if updates is not None:
            # int() truncated 2.5; 0 divided by zero in the reference step
            updates = checked_int("SphereSparseAdam.step: updates", updates, 1)
        kwargs = {
            "step": self.step_count + 1 if updates is None else updates, "lr": self.lr,
            "beta1": self.betas[0], "beta2": self.betas[1], "eps": self.eps, "project": self.project,
        }  # fmt: skip
        if self.backend == "fused":
            fused_latent_adam_(self.table, self.exp_avg, self.exp_avg_sq, indices, grad, **kwargs)
        else:
            grad = _reference_checks(
                "SphereSparseAdam.step", self.table, indices, grad, self.project,
                {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq},
                {k: v for k, v in kwargs.items() if k != "project"},
            )  # fmt: skip
            if indices.numel():
                reference.fused_latent_adam_reference(
                    self.table, self.exp_avg, self.exp_avg_sq, indices, grad, **kwargs
                )
        self.step_count += 1

    def state_dict(self) -> dict[str, Any]:
        """Step counter, hyperparameters and the moment tensors (references, like torch.optim)."""
        return {
            "kind": self.kind,
            "step": self.step_count,
            "lr": self.lr,
            "betas": list(self.betas),
            "eps": self.eps,
            "project": self.project,
            "exp_avg": self.exp_avg,
            "exp_avg_sq": self.exp_avg_sq,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` exactly (moments copied into this optimizer's tensors). Also takes the
        state of a ``torch.optim.SparseAdam`` over the table (what the reference backend of glann_ext 0.1
        saved)."""
        state = _from_torch_optim(state)
        if state.get("kind", self.kind) != self.kind:
            raise ValueError(
                f"SphereSparseAdam.load_state_dict: got the state of a {state['kind']!r} optimizer"
            )
        for name in ("exp_avg", "exp_avg_sq"):
            t = state[name]
            if t is None and int(state["step"]) == 0:  # a torch.optim state saved before its first step
                state = {**state, name: torch.zeros_like(self.table)}
                continue
            if not isinstance(t, torch.Tensor) or t.shape != self.table.shape:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(
                    f"SphereSparseAdam.load_state_dict: {name} must have shape {tuple(self.table.shape)}, "
                    f"got {got}"
                )
        step = int(state["step"])
        if step < 0:
            raise ValueError(f"SphereSparseAdam.load_state_dict: step must be >= 0, got {step}")
        # Every value checked before anything is changed.
        lr = _check_rate("SphereSparseAdam.load_state_dict", float(state["lr"]))
        betas, eps = _check_betas_eps("SphereSparseAdam.load_state_dict", state["betas"], state["eps"])
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])
        self.step_count = step
        self.lr = lr
        self.betas, self.eps = betas, eps
        self.project = bool(state.get("project", True))


class SphereSparseSGD:
    """Plain SGD (no momentum, no weight decay) on a latent table's touched rows, fused with re-projection.

    Stateless apart from its hyperparameters; :meth:`state_dict`/:meth:`load_state_dict` exist so a
    trainer can treat both optimizers alike.
    """

    kind = "sgd"

    def __init__(
        self, table: torch.Tensor, lr: float = 1e-2, *, project: bool = True, backend: str = "fused"
    ) -> None:
        self.table = _check_table("SphereSparseSGD", table)
        self.backend = _check_backend("SphereSparseSGD", backend)
        self.lr = _check_rate("SphereSparseSGD", lr)
        self.project = check_bool("SphereSparseSGD: project", project)

    @torch.no_grad()
    def step(self, indices: torch.Tensor, grad: torch.Tensor) -> None:
        """Apply one step to ``table[indices]`` with gradient rows ``grad`` ``(len(indices), D)``."""
        if self.backend == "fused":
            fused_latent_sgd_(self.table, indices, grad, lr=self.lr, project=self.project)
        else:
            grad = _reference_checks(
                "SphereSparseSGD.step", self.table, indices, grad, self.project, {}, {"lr": self.lr}
            )
            if indices.numel():
                reference.fused_latent_sgd_reference(
                    self.table, indices, grad, lr=self.lr, project=self.project
                )

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "lr": self.lr, "project": self.project}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = _from_torch_optim(state)
        if state.get("kind", self.kind) != self.kind:
            raise ValueError(
                f"SphereSparseSGD.load_state_dict: got the state of a {state['kind']!r} optimizer"
            )
        self.lr = _check_rate("SphereSparseSGD.load_state_dict", float(state["lr"]))
        self.project = bool(state.get("project", True))


LatentOptimizer = Union[SphereSparseAdam, SphereSparseSGD]


def latent_optimizer(
    table: torch.Tensor,
    kind: str = "adam",
    lr: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    *,
    backend: str = "fused",
) -> LatentOptimizer:
    """A sparse optimizer of ``kind`` ("adam" or "sgd") over the rows of ``table`` that keeps them on the
    unit sphere, computed by ``backend`` ("fused" or "reference")."""
    if kind == "adam":
        return SphereSparseAdam(table, lr=lr, betas=betas, eps=eps, backend=backend)
    if kind == "sgd":
        return SphereSparseSGD(table, lr=lr, backend=backend)
    raise ValueError(f"latent optimizer must be one of {LATENT_OPTIMIZERS}, got {kind!r}")


def _from_torch_optim(state: dict[str, Any]) -> dict[str, Any]:
    """Our schema from a ``torch.optim.SparseAdam``/``SGD`` state_dict over one parameter (the table), as
    glann_ext 0.1's reference backend saved it; other states pass through unchanged."""
    if "param_groups" not in state:
        return state
    group = state["param_groups"][0]
    per_param = next(iter(state["state"].values()), None) if state["state"] else None
    if "betas" not in group:  # SGD
        return {"kind": "sgd", "lr": group["lr"], "project": True}
    return {
        "kind": "adam",
        "step": 0 if per_param is None else int(per_param["step"]),
        "lr": group["lr"],
        "betas": list(group["betas"]),
        "eps": group["eps"],
        "project": True,
        "exp_avg": None if per_param is None else per_param["exp_avg"],
        "exp_avg_sq": None if per_param is None else per_param["exp_avg_sq"],
    }

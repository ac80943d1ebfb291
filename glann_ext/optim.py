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

Both are :class:`torch.optim.Optimizer` over the one parameter ``table``: ``param_groups[0]`` holds ``lr`` (the
rate every step uses, so ``torch.optim.lr_scheduler``'s schedulers drive it; ``opt.lr`` reads and writes it)
and the other hyperparameters (``betas``, ``eps``, ``project``). A step takes any rate >= 0 from the group (a
schedule may end at 0); the constructor asks for one > 0. :meth:`~SphereSparseAdam.state_dict` keeps the schema
above, not Optimizer's (so a scheduler's ``initial_lr`` is not saved: the scheduler's own state holds it).
Resume a schedule from the scheduler's own state::

    opt.load_state_dict(saved["opt"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
    sched.load_state_dict(saved["sched"])

Without it, a scheduler made with ``last_epoch`` needs ``opt.param_groups[0]["initial_lr"] = base_lr`` first
(torch reads it there), and ``last_epoch`` one less than the scheduler steps taken (its constructor steps once).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Union

import torch

from ._args import checked_int, is_positive_finite
from .ops import reference, sphere
from .ops._checks import check_bool, torch_name
from .ops.sphere import fused_latent_adam_, fused_latent_sgd_

__all__ = ["BACKENDS", "LATENT_OPTIMIZERS", "SphereSparseAdam", "SphereSparseSGD", "latent_optimizer"]

BACKENDS = ("fused", "reference")
LATENT_OPTIMIZERS = ("adam", "sgd")
_TABLE_DTYPES = (torch.float32, torch.float64)


def _check_table(owner: str, table: object) -> torch.Tensor:
    if not isinstance(table, torch.Tensor):
        raise TypeError(f"{owner}: table must be a torch.Tensor, got {type(table).__name__}")
    if table.dtype not in _TABLE_DTYPES:
        got = torch_name(table.dtype)
        raise TypeError(f"{owner}: table must have dtype in (float32, float64), got {got}")
    if table.dim() != 2:
        raise ValueError(f"{owner}: table must be a 2-D tensor, got {table.dim()}-D")
    if not (table.is_leaf or table.retains_grad):  # torch.optim.Optimizer's rule, worded here
        raise ValueError(
            f"{owner}: table must be a leaf tensor (an optimizer's parameter), got one computed by autograd "
            f"({type(table.grad_fn).__name__}); pass table.detach()"
        )
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
    if not is_positive_finite(eps):  # numpy scalars too, as lr and betas take them
        raise ValueError(f"{owner}: eps must be a finite number > 0, got {eps!r}")
    return (b1, b2), float(eps)  # type: ignore[arg-type]


def _check_backend(owner: str, backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"{owner}: backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _reference_checks(
    op: str, table: torch.Tensor, indices: object, grad: object, project: bool,
    state: dict[str, torch.Tensor], numbers: dict[str, Any],
) -> None:  # fmt: skip
    """The fused kernels' argument checks (types, shapes, dtypes, devices, hyperparameters, the range of
    ``indices``) for the reference backend's step, which would otherwise fail inside torch or divide by zero
    (``updates=0``). A grad of another dtype than the table's is refused as the fused backend refuses it
    (it was cast here, so a script worked on one backend and failed on the other)."""
    sphere._check_types(op, indices=indices, grad=grad)
    sphere._check_hyper_types(op, project, **numbers)
    sphere._check_hyper(op, **numbers)
    sphere._check_latent(op, table, state, indices, grad, real=True)
    if indices.numel():
        sphere._coalesce(op, table, indices, grad)  # its range check (the reference step coalesces itself)


def _check_rate(owner: str, lr: object) -> float:
    """The constructor's rate, as a float > 0: read as :func:`_check_set_rate` reads a rate set later (a
    one-element float tensor or a numpy scalar as torch's optimizers take them; a wrong type is a
    TypeError), but 0 is refused here (a table that never moves)."""
    try:
        rate = _check_set_rate(owner, lr)
    except ValueError:
        rate = 0.0
    if rate == 0:
        raise ValueError(f"{owner}: lr must be a finite float > 0, got {lr!r}")
    return rate


_GROUP_LR = "lr (param_groups[0]['lr'])"
MAX_STEP = 1 << 62  # the fused step takes an int64 count (a saved 10**30 failed inside it)


def _checked_step(step: object) -> int:
    """A loaded state's step count as an int in [0, :data:`MAX_STEP`): an int, a whole number, or a one-value
    tensor of one (as torch's optimizers save it); anything else is a ValueError naming it."""
    if isinstance(step, torch.Tensor) and step.numel() == 1:
        step = step.item()
    given = step
    if isinstance(step, numbers.Real) and not isinstance(step, (bool, numbers.Integral)):
        step = int(step) if math.isfinite(step) and step == int(step) else None  # 2.5, inf, NaN: refused
    integer = isinstance(step, numbers.Integral) and not isinstance(step, bool)
    if not integer or not 0 <= step < MAX_STEP:  # compared as an integer: 10**400 overflowed a float
        shown = (
            f"an integer of {int(step).bit_length()} bits" if integer and step >= MAX_STEP else repr(given)
        )
        raise ValueError(
            f"SphereSparseAdam.load_state_dict: step must be a whole number in [0, 2**62), got {shown}"
        )
    return int(step)


def _check_set_rate(owner: str, lr: object, name: str = "lr") -> float:
    """A rate set after construction (by a scheduler, ``opt.lr = ...`` or a loaded state), as a float: 0 is
    valid there (a cosine schedule ends at eta_min = 0; the kernels take lr >= 0), a negative or NaN rate is
    not (a step would silently go uphill or write NaN rows)."""
    if type(lr) is float and 0.0 <= lr < math.inf:  # every step's case, cheaply (NaN fails both comparisons)
        return lr
    if isinstance(lr, torch.Tensor) and lr.numel() == 1 and lr.is_floating_point():  # as torch's optimizers
        lr = lr.item()
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):  # numpy's scalars are Real
        raise TypeError(f"{owner}: {name} must be a float, got {type(lr).__name__} {lr!r}")
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"{owner}: {name} must be a finite float >= 0, got {lr!r}")
    return float(lr)


def _is_sparse(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.layout != torch.strided


class _SphereOptimizer(torch.optim.Optimizer):
    """What both latent optimizers add to :class:`torch.optim.Optimizer`: the hyperparameters of the one
    param group as attributes, one group only, and copies that keep the table's state."""

    _copied = ("table", "backend")  # instance attributes beyond Optimizer's that a copy or pickle keeps

    @property
    def lr(self) -> float:
        """The rate of the next step: ``param_groups[0]["lr"]``, where schedulers write it."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        # checked here (a scheduler's writes to the group are checked by the next step)
        self.param_groups[0]["lr"] = _check_set_rate(f"{type(self).__name__}.lr", value)

    @property
    def project(self) -> bool:
        return self.param_groups[0]["project"]

    @project.setter
    def project(self, value: bool) -> None:
        self.param_groups[0]["project"] = value

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self.param_groups:  # a second group's parameters would never be stepped
            raise ValueError(
                f"{type(self).__name__}.add_param_group: the optimizer updates its one table, got a second "
                "parameter group"
            )
        super().add_param_group(param_group)

    def _step_rows(self, owner: str, indices: Any, grad: Any, closure: Any) -> tuple[Any, Any, Any]:
        """``(indices, grad, loss)`` of a step as :class:`torch.optim.Optimizer` callers make it: the rows
        given (int32 indices widened: torch's indexing takes them); else the rows of a sparse gradient
        passed alone, or of ``table.grad`` (``step()``, or ``step(closure)`` / ``step(closure=...)``, whose
        closure is called with grad enabled first and whose loss is returned)."""
        loss = None
        if grad is None and closure is None and callable(indices):
            indices, closure = None, indices
        if closure is not None:
            if indices is not None or grad is not None:
                raise TypeError(f"{owner}: takes rows (indices, grad) or a closure, not both")
            with torch.enable_grad():
                loss = closure()
        if grad is None and (indices is None or _is_sparse(indices)):
            indices, grad = self._rows_of_gradient(owner, self.table.grad if indices is None else indices)
        elif isinstance(indices, torch.Tensor) and indices.dtype == torch.int32:
            indices = indices.long()
        elif isinstance(indices, torch.Tensor) and indices.dtype != torch.int64:  # named here, not as the op
            raise TypeError(
                f"{owner}: indices must have dtype int64 or int32, got {torch_name(indices.dtype)}"
            )
        return indices, grad, loss

    @staticmethod
    def _rows_of_gradient(owner: str, g: object) -> tuple[torch.Tensor, torch.Tensor]:
        """The touched rows of a sparse gradient (``nn.Embedding(..., sparse=True)``'s): coalesced indices
        and values, as ``torch.optim.SparseAdam`` reads them."""
        usage = "step(indices, grad_rows), or step() / step(closure) after a backward that left a sparse table.grad"
        if g is None:
            raise TypeError(f"{owner}: takes {usage}; table.grad is None (no backward yet, or zero_grad())")
        if g.layout != torch.sparse_coo or g.sparse_dim() != 1:
            dims = f" with {g.sparse_dim()} sparse dimensions" if g.layout == torch.sparse_coo else ""
            raise ValueError(
                f"{owner}: a sparse optimizer steps the rows it is given, got a gradient of layout "
                f"{torch_name(g.layout)}{dims}: use nn.Embedding(..., sparse=True) (one sparse dimension, the "
                "rows), or pass step(indices, grad[indices])"
            )
        g = g.coalesce()
        return g.indices()[0], g.values()

    def __getstate__(self) -> dict[str, Any]:
        # Optimizer's keeps defaults/state/param_groups (all torch's optimizers hold); without the table,
        # backend and moments a deepcopy or unpickled optimizer could not step. A scheduler's wrapper of step
        # (bound to this instance) is left behind, as Optimizer leaves it.
        return {**super().__getstate__(), **{k: self.__dict__[k] for k in self._copied}}


class SphereSparseAdam(_SphereOptimizer):
    """``torch.optim.SparseAdam`` on a plain latent table, fused with re-projection onto the sphere.

    Owns ``exp_avg``/``exp_avg_sq`` (zeros of the table's shape) and the step counter. Typical use::

        opt = SphereSparseAdam(table, lr=1e-2)
        z = table[idx].detach().requires_grad_()
        loss(model(z)).backward()
        opt.step(idx, z.grad)

    Each :meth:`step` increments the counter (also for an empty batch, like SparseAdam) and updates
    ``table[indices]`` in place; if it raises, neither the table nor the counter has changed (both backends
    check the arguments as the fused kernel does: types, shapes, hyperparameters, the range of indices).
    A torch.optim.Optimizer: ``param_groups[0]`` holds ``lr``, ``betas``, ``eps`` and ``project``, which every
    step reads (schedulers may set ``lr``, or ``betas`` as OneCycleLR does).
    """

    kind = "adam"
    _copied = ("table", "backend", "exp_avg", "exp_avg_sq", "step_count")

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
        lr = _check_rate("SphereSparseAdam", lr)
        betas, eps = _check_betas_eps("SphereSparseAdam", betas, eps)
        project = check_bool("SphereSparseAdam: project", project)
        super().__init__([table], {"lr": lr, "betas": betas, "eps": eps, "project": project})
        self.exp_avg = torch.zeros_like(table, memory_format=torch.contiguous_format)
        self.exp_avg_sq = torch.zeros_like(table, memory_format=torch.contiguous_format)
        self.step_count = 0

    @property
    def betas(self) -> tuple[float, float]:
        return self.param_groups[0]["betas"]

    @betas.setter
    def betas(self, value: tuple[float, float]) -> None:
        self.param_groups[0]["betas"] = value

    @property
    def eps(self) -> float:
        return self.param_groups[0]["eps"]

    @eps.setter
    def eps(self, value: float) -> None:
        self.param_groups[0]["eps"] = value

    @torch.no_grad()
    def step(  # type: ignore[override]
        self,
        indices: Any = None,
        grad: torch.Tensor | None = None,
        *,
        updates: int | None = None,
        closure: Any = None,
    ) -> Any:
        """Apply one step to ``table[indices]`` with gradient rows ``grad`` ``(len(indices), D)``; int64 or
        int32 indices. As a :class:`torch.optim.Optimizer`, ``step()`` reads the rows of a sparse
        ``table.grad`` (``nn.Embedding(..., sparse=True)``), so does ``step(closure)`` after calling
        ``closure`` (its loss is returned), and ``step(sparse_grad)`` reads that gradient.

        ``updates``: how many times these rows have now been updated (this step included), for Adam's bias
        correction; None uses the optimizer's own step counter, as ``torch.optim.SparseAdam`` does. The
        two agree for a dense parameter; for a table whose rows are touched once per epoch the counter runs
        ahead of every row's real count, so the correction fades while a row's second moment is still tiny
        and its early steps are far too large (towards lr (1 - beta1^k) / sqrt((1 - beta2) k) per coordinate
        at its k-th update as the counter grows). GLO passes the rows' own count when
        ``TrainConfig.latent_adam_steps`` is ``"rows"``; its default, ``"global"``, uses the counter, as
        SparseAdam does (docs/training.md says why)."""
        indices, grad, loss = self._step_rows("SphereSparseAdam.step", indices, grad, closure)
        if updates is not None:
            # int() truncated 2.5; 0 divided by zero in the reference step
            updates = checked_int("SphereSparseAdam.step: updates", updates, 1)
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        kwargs = {
            "step": self.step_count + 1 if updates is None else updates,
            "lr": _check_set_rate("SphereSparseAdam.step", group["lr"], _GROUP_LR),
            "beta1": beta1, "beta2": beta2, "eps": group["eps"], "project": group["project"],
        }  # fmt: skip
        if self.backend == "fused":
            fused_latent_adam_(self.table, self.exp_avg, self.exp_avg_sq, indices, grad, **kwargs)
        else:
            _reference_checks(
                "SphereSparseAdam.step", self.table, indices, grad, self.project,
                {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq},
                {k: v for k, v in kwargs.items() if k != "project"},
            )  # fmt: skip
            if indices.numel():
                reference.fused_latent_adam_reference(
                    self.table, self.exp_avg, self.exp_avg_sq, indices, grad, **kwargs
                )
        self.step_count += 1
        return loss

    # state_dict/load_state_dict override Optimizer's on purpose: checkpoints of training runs hold this
    # schema (the module docstring), not torch's {"state", "param_groups"}.
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

    def load_state_dict(self, state: dict[str, Any]) -> None:  # type: ignore[override]
        """Restore a :meth:`state_dict` exactly (moments copied into this optimizer's tensors). Also takes the
        state of a ``torch.optim.SparseAdam`` over the table (what the reference backend of glann_ext 0.1
        saved). lr may be 0 (saved at the end of a schedule); a scheduler's ``initial_lr`` stays in the
        group."""
        state = _from_torch_optim(state)
        if state.get("kind", self.kind) != self.kind:
            raise ValueError(
                f"SphereSparseAdam.load_state_dict: got the state of a {state['kind']!r} optimizer"
            )
        step = _checked_step(state["step"])
        for name in ("exp_avg", "exp_avg_sq"):
            t = state[name]
            if t is None and step == 0:  # a torch.optim state saved before its first step
                state = {**state, name: torch.zeros_like(self.table)}
                continue
            # floating moments are cast to the table's dtype, as torch's optimizers cast them; integer ones
            # (a forged file) were cast too
            if not isinstance(t, torch.Tensor) or t.shape != self.table.shape or not t.is_floating_point():
                got = (t.dtype, tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(
                    f"SphereSparseAdam.load_state_dict: {name} must be floating of shape "
                    f"{tuple(self.table.shape)}, got {got}"
                )
        # Every value checked before anything is changed.
        lr = _check_set_rate("SphereSparseAdam.load_state_dict", float(state["lr"]))
        betas, eps = _check_betas_eps("SphereSparseAdam.load_state_dict", state["betas"], state["eps"])
        project = check_bool("SphereSparseAdam.load_state_dict: project", state.get("project", True))
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])
        self.step_count = step
        self.lr = lr
        self.betas, self.eps = betas, eps
        self.project = project


class SphereSparseSGD(_SphereOptimizer):
    """Plain SGD (no momentum, no weight decay) on a latent table's touched rows, fused with re-projection.

    Stateless apart from its hyperparameters; :meth:`state_dict`/:meth:`load_state_dict` exist so a
    trainer can treat both optimizers alike. A torch.optim.Optimizer: ``param_groups[0]`` holds ``lr`` and
    ``project``, which every step reads.
    """

    kind = "sgd"

    def __init__(
        self, table: torch.Tensor, lr: float = 1e-2, *, project: bool = True, backend: str = "fused"
    ) -> None:
        self.table = _check_table("SphereSparseSGD", table)
        self.backend = _check_backend("SphereSparseSGD", backend)
        lr = _check_rate("SphereSparseSGD", lr)
        project = check_bool("SphereSparseSGD: project", project)
        super().__init__([table], {"lr": lr, "project": project})

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, indices: Any = None, grad: torch.Tensor | None = None, *, closure: Any = None
    ) -> Any:
        """Apply one step to ``table[indices]`` with gradient rows ``grad`` ``(len(indices), D)``; without
        rows, those of a sparse gradient, as :meth:`SphereSparseAdam.step` reads them."""
        indices, grad, loss = self._step_rows("SphereSparseSGD.step", indices, grad, closure)
        group = self.param_groups[0]
        lr, project = _check_set_rate("SphereSparseSGD.step", group["lr"], _GROUP_LR), group["project"]
        if self.backend == "fused":
            fused_latent_sgd_(self.table, indices, grad, lr=lr, project=project)
        else:
            _reference_checks("SphereSparseSGD.step", self.table, indices, grad, project, {}, {"lr": lr})
            if indices.numel():
                reference.fused_latent_sgd_reference(self.table, indices, grad, lr=lr, project=project)
        return loss

    # Optimizer's state_dict/load_state_dict overridden on purpose: checkpoints hold this schema.
    def state_dict(self) -> dict[str, Any]:
        """``{"kind", "lr", "project"}``: plain SGD keeps no per-row state (not torch's
        ``{"state", "param_groups"}``; :meth:`load_state_dict` takes either)."""
        return {"kind": self.kind, "lr": self.lr, "project": self.project}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # type: ignore[override]
        state = _from_torch_optim(state)
        if state.get("kind", self.kind) != self.kind:
            raise ValueError(
                f"SphereSparseSGD.load_state_dict: got the state of a {state['kind']!r} optimizer"
            )
        lr = _check_set_rate("SphereSparseSGD.load_state_dict", float(state["lr"]))
        project = check_bool("SphereSparseSGD.load_state_dict: project", state.get("project", True))
        self.lr, self.project = lr, project  # both checked before either is changed


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
        "step": 0 if per_param is None else per_param["step"],  # checked by the loader
        "lr": group["lr"],
        "betas": list(group["betas"]),
        "eps": group["eps"],
        "project": True,
        "exp_avg": None if per_param is None else per_param["exp_avg"],
        "exp_avg_sq": None if per_param is None else per_param["exp_avg_sq"],
    }

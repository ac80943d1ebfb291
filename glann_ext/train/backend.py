"""The one place where trainers choose between the fused kernels and the plain PyTorch references.

``get_ops("fused")`` uses the compiled ops of :mod:`glann_ext`; ``get_ops("reference")`` uses
:mod:`glann_ext.ops.reference` plus a ``torch.optim.SparseAdam``/``SGD`` latent optimizer that re-projects
the touched rows. Trainers only ever see the :class:`Ops` object, so both paths run the same training code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

import glann_ext
from glann_ext.ops import reference

BACKENDS = ("fused", "reference")
LATENT_OPTIMIZERS = ("adam", "sgd")


class ReferenceSphereOptimizer:
    """Sparse Adam/SGD on the rows of a plain latent table, then re-projection of those rows to the sphere.

    Same interface as :class:`glann_ext.SphereSparseAdam`: ``step(indices, grad_rows)`` with duplicate
    indices coalesced (their gradients summed), ``state_dict()`` and ``load_state_dict()``.
    """

    def __init__(
        self,
        table: torch.Tensor,
        kind: str = "adam",
        lr: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        if kind not in LATENT_OPTIMIZERS:
            raise ValueError(f"kind must be one of {LATENT_OPTIMIZERS}, got {kind!r}")
        self.table = table
        # A Parameter sharing the table's storage: the optimizer updates the table in place.
        self._param = torch.nn.Parameter(table, requires_grad=True)
        if kind == "adam":
            self._opt: torch.optim.Optimizer = torch.optim.SparseAdam(
                [self._param], lr=lr, betas=betas, eps=eps
            )
        else:
            self._opt = torch.optim.SGD([self._param], lr=lr)

    @torch.no_grad()
    def step(self, indices: torch.Tensor, grad_rows: torch.Tensor) -> None:
        """Apply one update to ``table[indices]`` given the loss gradient of those rows."""
        grad = torch.sparse_coo_tensor(
            indices.reshape(1, -1), grad_rows.to(self.table.dtype), self.table.shape, check_invariants=False
        ).coalesce()
        self._param.grad = grad
        self._opt.step()
        self._param.grad = None
        rows = grad.indices()[0]
        self.table[rows] = reference.project_to_sphere_reference(self.table[rows])

    def state_dict(self) -> dict[str, Any]:
        return self._opt.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._opt.load_state_dict(state)


@dataclass(frozen=True)
class Ops:
    """The kernels a trainer needs, from one backend."""

    name: str
    nn_argmin: Callable[..., Any]
    lap_loss: Callable[..., torch.Tensor]
    project: Callable[[torch.Tensor], torch.Tensor]
    _make_latent_optimizer: Callable[..., Any]

    def make_latent_optimizer(
        self,
        table: torch.Tensor,
        kind: str = "adam",
        lr: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        """A sparse optimizer over the rows of ``table`` that keeps them on the unit sphere."""
        if kind not in LATENT_OPTIMIZERS:
            raise ValueError(f"latent optimizer must be one of {LATENT_OPTIMIZERS}, got {kind!r}")
        return self._make_latent_optimizer(table, kind, lr, betas, eps)


def _fused_latent_optimizer(table, kind, lr, betas, eps):
    if kind == "adam":
        return glann_ext.SphereSparseAdam(table, lr=lr, betas=betas, eps=eps)
    return glann_ext.SphereSparseSGD(table, lr=lr)


def _reference_nn_argmin(queries, keys, *, return_distances: bool = False):
    if not isinstance(keys, torch.Tensor):  # an iterable of chunks, as the fused op accepts
        keys = torch.cat(list(keys))
    return reference.nn_argmin_addmm(queries, keys, return_distances=return_distances)


def get_ops(name: str = "fused") -> Ops:
    """The :class:`Ops` of backend ``name`` ("fused" or "reference")."""
    if name == "fused":
        return Ops(
            "fused",
            glann_ext.nn_argmin,
            glann_ext.laplacian_pyramid_loss,
            glann_ext.project_to_sphere,
            _fused_latent_optimizer,
        )
    if name == "reference":
        return Ops(
            "reference",
            _reference_nn_argmin,
            reference.laplacian_pyramid_loss_reference,
            reference.project_to_sphere_reference,
            ReferenceSphereOptimizer,
        )
    raise ValueError(f"ops backend must be one of {BACKENDS}, got {name!r}")

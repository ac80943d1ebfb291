"""The one place where models and trainers choose between the fused kernels and the plain PyTorch references.

``get_ops("fused")`` uses the compiled ops of :mod:`glann_ext`; ``get_ops("reference")`` uses
:mod:`glann_ext.ops.reference`. Models and trainers only ever see the :class:`Ops` object, so both paths run
the same training code, in one process or across a ``torch.distributed`` group, and the latent optimizers of
both keep one state format (:mod:`glann_ext.optim`), so a run may switch backends when it is resumed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .errors import UsageError
from .ops import reference
from .ops.laplacian import laplacian_pyramid_loss
from .ops.nn_argmin import nn_argmin
from .ops.sphere import project_to_sphere
from .optim import BACKENDS, LatentOptimizer, latent_optimizer

__all__ = ["BACKENDS", "Ops", "as_ops", "get_ops"]

Scores = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Ops:
    """The kernels a model or trainer needs, all from one backend (``name``)."""

    name: str
    lap_loss: Callable[..., torch.Tensor]
    project: Callable[[torch.Tensor], torch.Tensor]
    _nn_argmin: Callable[..., Any]
    # (queries, keys) -> (best score, its lowest index) for the distributed search; None: the fused kernel
    _scores: Scores | None

    def nn_argmin(
        self, queries: torch.Tensor, keys: Any, *, return_distances: bool = False, world: Any = None
    ) -> Any:
        """Index of the nearest key for every query row (see :func:`glann_ext.nn_argmin`). With a
        distributed ``world`` (a :class:`~glann_ext.train.world.World` of several processes) ``keys`` are this
        rank's share and the indices are global over the keys of every rank, found with this backend's
        search (:func:`glann_ext.distributed.nn_argmin`; collective)."""
        if world is None or not world.distributed:
            return self._nn_argmin(queries, keys, return_distances=return_distances)
        from .distributed import nn_argmin as distributed_nn_argmin

        return distributed_nn_argmin(
            queries, keys, world.group, return_distances=return_distances, scores=self._scores
        )

    def latent_optimizer(
        self,
        table: torch.Tensor,
        kind: str = "adam",
        lr: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> LatentOptimizer:
        """A sparse optimizer over the rows of ``table`` that keeps them on the unit sphere
        (:func:`glann_ext.optim.latent_optimizer` with this backend)."""
        return latent_optimizer(table, kind, lr, betas, eps, backend=self.name)


def _reference_nn_argmin(queries, keys, *, return_distances: bool = False):
    if not isinstance(keys, torch.Tensor):  # an iterable of chunks, as the fused op accepts
        keys = torch.cat(list(keys))
    return reference.nn_argmin_addmm(queries, keys, return_distances=return_distances)


def get_ops(name: str = "fused") -> Ops:
    """The :class:`Ops` of backend ``name`` ("fused" or "reference")."""
    if name == "fused":
        return Ops("fused", laplacian_pyramid_loss, project_to_sphere, nn_argmin, None)
    if name == "reference":
        return Ops(
            "reference",
            reference.laplacian_pyramid_loss_reference,
            reference.project_to_sphere_reference,
            _reference_nn_argmin,
            reference.nn_argmin_scores_reference,
        )
    raise ValueError(f"ops backend must be one of {BACKENDS}, got {name!r}")


def as_ops(ops: Ops | str | None, default: str = "fused") -> Ops:
    """``ops`` as an :class:`Ops`: an Ops as it is, a backend name ("fused", "reference") through
    :func:`get_ops`, None as ``default``'s; anything else is a :class:`UsageError` naming ``ops``."""
    ops = default if ops is None else ops
    if isinstance(ops, str):
        if ops not in BACKENDS:
            raise UsageError(f"ops must be an Ops or a backend name {BACKENDS}, got {ops!r:.60}")
        return get_ops(ops)
    if not isinstance(ops, Ops):
        raise UsageError(f"ops must be an Ops or a backend name {BACKENDS}, got {type(ops).__name__}")
    return ops

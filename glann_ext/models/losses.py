"""The GLO reconstruction loss: Laplacian-pyramid L1 (kernel) + optional pixel L2 + optional VGG term."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from glann_ext.backend import Ops, as_ops
from glann_ext.ops.reference import default_levels


class ReconstructionLoss(nn.Module):
    """Mean over the batch of ``lap_l1 + l2_weight * mse + vgg_weight * perceptual`` (in fp32). ``ops``: the
    kernels' backend, an :class:`~glann_ext.backend.Ops` or its name ("fused", "reference"), as for the
    models."""

    def __init__(
        self,
        ops: Ops | str,
        l2_weight: float = 0.0,
        vgg_weights: str | None = None,
        vgg_weight: float = 0.0,
        lap_weights: str = "paper",
    ):
        super().__init__()
        if lap_weights not in ("paper", "flat"):
            raise ValueError(f"lap_weights must be 'paper' or 'flat', got {lap_weights!r}")
        ops = as_ops(ops)
        self.ops, self.l2_weight, self.vgg_weight = ops, l2_weight, vgg_weight
        self.lap_weights = lap_weights
        self.vgg = None
        if vgg_weights and vgg_weight > 0:
            from .perceptual import VGGPerceptualLoss

            self.vgg = VGGPerceptualLoss(vgg_weights)

    @property
    def vgg_sha256(self) -> str | None:
        """The SHA-256 of the perceptual term's weights file as it was loaded; None without the term."""
        return None if self.vgg is None else self.vgg.weights_sha256

    @classmethod
    def from_config(cls, cfg: Any, ops: Ops) -> ReconstructionLoss:
        """The loss of a training configuration (its ``l2_weight``, ``vgg_weights``, ``vgg_weight`` and
        ``lap_weights``)."""
        return cls(ops, cfg.l2_weight, cfg.vgg_weights, cfg.vgg_weight, cfg.lap_weights)

    def lap(self, x: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
        """The Laplacian-pyramid L1 term with this loss's level weights."""
        if self.lap_weights == "paper":  # None: the kernels' own 4^j (the same bits as before the option)
            return self.ops.lap_loss(x, target, reduction=reduction)
        levels = default_levels(*x.shape[-2:])
        return self.ops.lap_loss(x, target, reduction=reduction, levels=levels, level_weights=[1.0] * levels)

    def forward(self, x: torch.Tensor, target: torch.Tensor, normalizer: int | None = None) -> torch.Tensor:
        """The loss of the batch; ``normalizer``: divide the per-sample sums by this many samples instead of
        ``len(x)`` (a rank's part of a global batch: the parts then add up to the global batch's loss)."""
        x, target = x.float(), target.float()  # kernels run in fp32 even under autocast
        if normalizer is None:
            loss = self.lap(x, target, "mean")
            if self.l2_weight > 0:
                loss = loss + self.l2_weight * F.mse_loss(x, target)
            if self.vgg is not None:
                loss = loss + self.vgg_weight * self.vgg(x, target)
            return loss
        if len(x) == 0:  # keeps the graph (and so DDP's gradient hooks) connected to the generator
            return x.sum() * 0.0
        per_image = x[0].numel()
        loss = self.lap(x, target, "sum") / (normalizer * per_image)
        if self.l2_weight > 0:
            loss = loss + self.l2_weight * F.mse_loss(x, target, reduction="sum") / (normalizer * per_image)
        if self.vgg is not None:
            loss = loss + self.vgg_weight * self.vgg(x, target) * (len(x) / normalizer)
        return loss


def mse_loss(x: torch.Tensor, target: torch.Tensor, normalizer: int | None = None) -> torch.Tensor:
    """Mean squared error; with ``normalizer``, the sum over the batch divided by ``normalizer`` samples."""
    if normalizer is None:
        return F.mse_loss(x, target)
    if len(x) == 0:
        return x.sum() * 0.0
    return F.mse_loss(x, target, reduction="sum") / (normalizer * x[0].numel())

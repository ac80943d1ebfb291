"""Laplacian-pyramid L1 loss (to be written: fused CPU/CUDA kernels with autograd)."""

from __future__ import annotations

import torch


def laplacian_pyramid_loss(
    x: torch.Tensor, y: torch.Tensor, *, levels: int | None = None, reduction: str = "mean"
) -> torch.Tensor:
    raise NotImplementedError

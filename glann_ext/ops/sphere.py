"""Unit-sphere projection and fused sparse latent updates (to be written)."""

from __future__ import annotations

import torch


def project_to_sphere(z: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError


def project_to_sphere_(z: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError


def fused_latent_adam_(*args, **kwargs):
    raise NotImplementedError


def fused_latent_sgd_(*args, **kwargs):
    raise NotImplementedError


class SphereSparseAdam:
    pass


class SphereSparseSGD:
    pass

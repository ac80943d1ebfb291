"""The codes' whitening for GLANN's IMLE stage (``TrainConfig.imle_whiten``).

IMLE on the raw codes matches and regresses with the Euclidean metric, in which the few leading principal
directions of the codes hold most of the distance: ``T`` fits those and averages the many small directions
away (at the quality issue's 25-epoch budget its samples held 1.3-1.8x the codes' variance along the leading
directions and 0.2-0.7x along the trailing half), and G decodes such points as blends short of detail. In
whitened coordinates every principal direction of the codes has the same variance, so the exact
nearest-neighbour search and ``T``'s regression weigh them alike; ``T`` outputs whitened coordinates and a
fixed affine layer (:meth:`~glann_ext.models.mlp.MLP.set_output_affine`) maps them back to codes. The
variance per direction is the codes' mean variance, so whitened distances keep the raw ones' overall scale
(the same learning rate and noise sizes serve both).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from glann_ext.errors import UsageError

from .world import World

# Directions with less variance than this share of the mean (fewer codes than dimensions, or codes that
# collapsed onto a subspace) are scaled as if they had this much, so whitening never amplifies round-off.
VARIANCE_FLOOR = 1e-4


@dataclass(frozen=True)
class Whitening:
    """``whiten(z) = (z - mean) @ forward.T`` and its inverse ``y @ inverse.T + mean`` (float64)."""

    mean: torch.Tensor  # (D,)
    forward: torch.Tensor  # (D, D), symmetric
    inverse: torch.Tensor  # (D, D), symmetric, forward @ inverse = I

    def output_map(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(matrix, shift)`` of the affine layer that takes ``T``'s whitened outputs back to codes
        (:meth:`~glann_ext.models.mlp.MLP.set_output_affine`), in ``T``'s float32."""
        return self.inverse.float(), self.mean.float()

    def whiten(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes`` (N, D) in whitened coordinates, in ``codes``' dtype and device."""
        mean, forward = self.mean.to(codes.device), self.forward.to(codes.device)
        return ((codes.double() - mean) @ forward.T).to(codes.dtype)


def code_whitening(codes: torch.Tensor, world: World | None = None, total: int | None = None) -> Whitening:
    """The whitening of ``codes`` (this rank's (n, D) rows of ``total`` over ``world``; default: all of
    them in one process): PCA of their covariance, every direction scaled to the mean variance."""
    world = world or World()
    total = codes.shape[0] if total is None else total
    if total < 2:
        raise UsageError(f"IMLE's whitening needs at least 2 codes, got {total}")
    x = codes.detach().double().cpu()
    sums = world.sum(torch.cat([x.sum(0, keepdim=True), x.T @ x]))  # one collective for both moments
    mean = sums[0] / total
    cov = (sums[1:] - total * torch.outer(mean, mean)) / (total - 1)
    var, basis = torch.linalg.eigh((cov + cov.T) / 2)
    level = var.clamp_min(0).mean()
    if not bool(level > 0):
        raise UsageError(
            "IMLE's whitening needs codes that vary, but all codes are equal (do the training images vary?); "
            "--no-imle-whiten (imle_whiten=False) trains without it"
        )
    scale = (var.clamp_min(VARIANCE_FLOOR * level) / level).rsqrt()
    forward = basis @ torch.diag(scale) @ basis.T
    inverse = basis @ torch.diag(1 / scale) @ basis.T
    return Whitening(mean, forward, inverse)

"""Shared helpers of the baselines: seeded epoch order, eval-mode batched sampling."""

from __future__ import annotations

import torch
from torch import nn


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """Full batches of a permutation drawn from (seed, epoch) alone (remainder dropped; one batch if n is small)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    if n <= batch_size:
        return [perm]
    return [perm[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


@torch.no_grad()
def sample_from(generator: nn.Module, noise_dim: int, n: int, seed: int, clamp: bool = True) -> torch.Tensor:
    """``n`` outputs of ``generator`` in eval mode for seeded standard-normal noise, in chunks of 1024."""
    generator.eval()
    e = torch.randn(n, noise_dim, generator=torch.Generator().manual_seed(seed))
    outs = [generator(c).float() for c in e.split(1024)]
    out = torch.cat(outs) if outs else torch.zeros(0)
    return out.clamp(0, 1) if clamp else out

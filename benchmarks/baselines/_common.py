"""Shared helpers of the baselines: seeded epoch order, eval-mode batched sampling, the GAN update."""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass
class GANTrainLog:
    d_losses: list[float] = field(default_factory=list)
    g_losses: list[float] = field(default_factory=list)


def adversarial_step(
    gan: nn.Module,
    opt_d: torch.optim.Optimizer,
    opt_g: torch.optim.Optimizer,
    real: torch.Tensor,
    fake: torch.Tensor,
) -> tuple[float, float]:
    """One discriminator step then one generator step on the same fake batch (``gan.d_loss`` detaches it);
    returns the two losses."""
    ld = gan.d_loss(real, fake)
    opt_d.zero_grad(set_to_none=True)
    ld.backward()
    opt_d.step()
    lg = gan.g_loss(fake)
    opt_g.zero_grad(set_to_none=True)
    lg.backward()
    opt_g.step()
    return ld.item(), lg.item()

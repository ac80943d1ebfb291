"""2-D Gaussian mixtures for mode-coverage studies (PacGAN settings)."""

from __future__ import annotations

import math

import torch


def ring_centres(modes: int = 8, radius: float = 1.0) -> torch.Tensor:
    """(modes, 2) centres evenly spaced on a circle."""
    angles = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    return (radius * torch.stack([angles.cos(), angles.sin()], 1)).float()


def grid_centres() -> torch.Tensor:
    """(25, 2) centres at {-4, -2, 0, 2, 4}^2."""
    v = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])
    return torch.cartesian_prod(v, v)


TOY_MIXTURES = {"ring": (ring_centres, 0.01), "grid": (grid_centres, 0.05)}


def toy_mixture(name: str) -> tuple[torch.Tensor, float]:
    """(centres, std) of mixture ``name`` ("ring": 8 modes, radius 1, std 0.01; "grid": 5x5, std 0.05)."""
    if name not in TOY_MIXTURES:
        raise ValueError(f"toy mixture must be one of {sorted(TOY_MIXTURES)}, got {name!r}")
    make, std = TOY_MIXTURES[name]
    return make(), std


def sample_toy(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """(n, 2) float32 points: a uniformly chosen centre plus isotropic Gaussian noise."""
    centres, std = toy_mixture(name)
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(len(centres), (n,), generator=g)
    return centres[which] + std * torch.randn(n, 2, generator=g)


def mode_coverage(points: torch.Tensor, name: str, n_std: float = 3.0) -> tuple[torch.Tensor, float]:
    """(count of points within ``n_std`` std of each centre, fraction of points within ``n_std`` of any)."""
    centres, std = toy_mixture(name)
    dist, which = torch.cdist(points.float(), centres).min(1)
    good = dist <= n_std * std
    counts = torch.bincount(which[good], minlength=len(centres))
    return counts, good.float().mean().item()

"""2-D Gaussian mixtures for mode-coverage studies: the settings of VEEGAN and PacGAN.

Sources: VEEGAN (Srivastava et al., NeurIPS 2017, Section 5.1): ring of 8 modes on radius 2 with std
0.02, and a 5x5 grid on {-4, -2, 0, 2, 4}^2 with std 0.05. PacGAN (Lin et al., NeurIPS 2018,
Section 5.1): ring of 8 modes on the unit circle with std 0.01, and the same 5x5 grid with std 0.05.
Their coverage measures are in :mod:`glann_ext.metrics.mixtures`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MixturePreset:
    """An equal-weight isotropic Gaussian mixture: ``centres`` (K, 2) and one ``std`` for all modes."""

    name: str
    centres: torch.Tensor
    std: float

    def sample(self, n: int, *, seed: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` float32 samples: a uniformly chosen mode plus ``std`` Gaussian noise, drawn from ``generator``
        (a stream of batches) or from a generator seeded with ``seed``."""
        g = generator if generator is not None else torch.Generator().manual_seed(seed)
        modes = torch.randint(len(self.centres), (n,), generator=g)
        noise = torch.randn(n, 2, generator=g, dtype=torch.float64)
        return (self.centres.double()[modes] + self.std * noise).float()


def ring_centres(num_modes: int = 8, radius: float = 1.0) -> torch.Tensor:
    """``(radius cos(2 pi i / K), radius sin(2 pi i / K))`` for i = 0..K-1, float64."""
    angle = 2 * math.pi * torch.arange(num_modes, dtype=torch.float64) / num_modes
    return torch.stack([radius * angle.cos(), radius * angle.sin()], 1)


def grid_centres(values: tuple[float, ...] = (-4.0, -2.0, 0.0, 2.0, 4.0)) -> torch.Tensor:
    """The Cartesian grid ``values x values`` (row-major: x outer, y inner), float64."""
    v = torch.tensor(values, dtype=torch.float64)
    return torch.cartesian_prod(v, v)


RING_VEEGAN = MixturePreset("ring8-veegan", ring_centres(8, 2.0), 0.02)
"""VEEGAN (Srivastava et al. 2017): 8 modes on a circle of radius 2, std 0.02."""
RING_PACGAN = MixturePreset("ring8-pacgan", ring_centres(8, 1.0), 0.01)
"""PacGAN (Lin et al. 2018): 8 modes on the unit circle, std 0.01."""
GRID_5X5 = MixturePreset("grid25", grid_centres(), 0.05)
"""VEEGAN and PacGAN: 25 modes on {-4, -2, 0, 2, 4}^2, std 0.05."""


TOY_MIXTURES = {"ring": RING_PACGAN, "grid": GRID_5X5}
"""The mixtures by short name: PacGAN's ring (8 modes, radius 1, std 0.01) and the 5x5 grid (std 0.05)."""


def toy_mixture(name: str) -> MixturePreset:
    """The mixture called ``name`` ("ring" or "grid", see :data:`TOY_MIXTURES`)."""
    if name not in TOY_MIXTURES:
        raise ValueError(f"toy mixture must be one of {sorted(TOY_MIXTURES)}, got {name!r}")
    return TOY_MIXTURES[name]

"""2-D Gaussian mixtures for mode-coverage studies: the settings of VEEGAN and PacGAN.

Sources: VEEGAN (Srivastava et al., NeurIPS 2017, Section 5.1): ring of 8 modes on radius 2 with std
0.02, and a 5x5 grid on {-4, -2, 0, 2, 4}^2 with std 0.05. PacGAN (Lin et al., NeurIPS 2018,
Section 5.1): ring of 8 modes on the unit circle with std 0.01, and the same 5x5 grid with std 0.05.
Their coverage measures are in :mod:`glann_ext.metrics.mixtures`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from glann_ext._args import checked_int, checked_positive_finite, checked_seed
from glann_ext.errors import UsageError

from .arrays import check_fits_memory

SAMPLE_BYTES = 48  # working memory per sample: its mode (int64), noise and float64 value, the result


@dataclass(frozen=True)
class MixturePreset:
    """An equal-weight isotropic Gaussian mixture: ``centres`` (K, 2) and one ``std`` for all modes."""

    name: str
    centres: torch.Tensor
    std: float

    def __post_init__(self) -> None:
        """Refuse what would sample nonsense: centres not (K >= 1, 2) finite floats, a std not finite > 0."""
        c = self.centres
        if not isinstance(c, torch.Tensor) or c.is_meta or c.dim() != 2 or c.shape[0] < 1 or c.shape[1] != 2:
            got = f"shape {tuple(c.shape)}" if isinstance(c, torch.Tensor) else type(c).__name__
            raise UsageError(f"centres must be a (K >= 1, 2) tensor of mode centres, got {got}")
        if not c.dtype.is_floating_point or not bool(torch.isfinite(c).all()):
            raise UsageError(f"centres must be finite floats, got {str(c.dtype)[6:]} {c.tolist()!r:.60}")
        checked_positive_finite("std", self.std)

    def sample(self, n: int, *, seed: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` float32 samples: a uniformly chosen mode plus ``std`` Gaussian noise, drawn from ``generator``
        (a stream of batches) or from a generator seeded with ``seed``."""
        n = checked_int("n", n, 0)
        check_fits_memory(f"n = {n:,} asks for", n * SAMPLE_BYTES)  # else an allocator error, or a kill
        if generator is None:
            g = torch.Generator().manual_seed(checked_seed(seed))
        elif isinstance(generator, torch.Generator) and generator.device.type == "cpu":
            g = generator
        else:
            raise UsageError(f"generator must be a CPU torch.Generator (or None), got {generator!r:.60}")
        modes = torch.randint(len(self.centres), (n,), generator=g)
        noise = torch.randn(n, 2, generator=g, dtype=torch.float64)
        return (self.centres.double()[modes] + self.std * noise).float()


def ring_centres(num_modes: int = 8, radius: float = 1.0) -> torch.Tensor:
    """``(radius cos(2 pi i / K), radius sin(2 pi i / K))`` for i = 0..K-1, float64."""
    num_modes = checked_int("num_modes", num_modes, 1)
    radius = checked_positive_finite("radius", radius)
    angle = 2 * math.pi * torch.arange(num_modes, dtype=torch.float64) / num_modes
    return torch.stack([radius * angle.cos(), radius * angle.sin()], 1)


def grid_centres(values: tuple[float, ...] = (-4.0, -2.0, 0.0, 2.0, 4.0)) -> torch.Tensor:
    """The Cartesian grid ``values x values`` (row-major: x outer, y inner), float64."""
    if not (
        isinstance(values, (tuple, list))
        and values
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    ):
        raise UsageError(f"values must be a non-empty tuple of finite numbers, got {values!r:.60}")
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

"""Mode coverage on 2-D Gaussian mixtures: the protocol of VEEGAN and PacGAN.

A generated sample is *high quality* (HQ) if it lies within ``3 * std`` (Euclidean) of its nearest mode
centre. A mode is *covered* if at least ``min_count`` HQ samples fall on it (``min_count = 1`` is the
papers' rule). The *reverse KL* compares the histogram of HQ samples over modes, ``p_i = c_i / sum c``,
with the uniform mixture weights ``1 / K``::

    KL(p || U) = sum_{i: p_i > 0} p_i log(K p_i)         (natural log; 0 log 0 = 0)

Empty modes contribute 0 (``0 log 0 = 0``); this direction of the divergence is the one that stays
finite when modes are missed, which is why both papers report KL(p || U). A generator that puts every
HQ sample on one mode scores ``log K``; perfect samples score about 0.
With no HQ sample at all the histogram is undefined and ``reverse_kl`` is ``inf`` (worse than any
generator that hits at least one mode).

The mixtures themselves (VEEGAN's and PacGAN's ring and grid) are data: :mod:`glann_ext.data.toy`
(re-exported here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._args import is_positive_finite
from ..data.toy import GRID_5X5, RING_PACGAN, RING_VEEGAN, MixturePreset, grid_centres, ring_centres
from ..ops.nn_argmin import nn_argmin
from ._checks import as_float_matrix, check_not_meta, check_positive_int

__all__ = [
    "GRID_5X5",
    "RING_PACGAN",
    "RING_VEEGAN",
    "MixturePreset",
    "ModeCoverage",
    "grid_centres",
    "mode_coverage",
    "reverse_kl_uniform",
    "ring_centres",
]


@dataclass(frozen=True)
class ModeCoverage:
    """Result of :func:`mode_coverage`. ``mode_counts`` is the (K,) histogram of HQ samples."""

    modes_covered: int
    num_modes: int
    high_quality_fraction: float
    reverse_kl: float
    mode_counts: torch.Tensor


def reverse_kl_uniform(counts: torch.Tensor) -> float:
    """``KL(p || U)`` of the histogram ``counts`` against uniform; empty bins add 0; ``inf`` if all empty."""
    check_not_meta("counts", counts)
    counts = torch.as_tensor(counts).double()
    if bool((counts < 0).any()) or not bool(torch.isfinite(counts).all()):
        raise ValueError(
            f"counts must be finite and >= 0, got values in [{float(counts.min()):g}, {float(counts.max()):g}]"
        )
    total = float(counts.sum())
    if total <= 0:
        return math.inf
    p = counts[counts > 0] / total
    return float((p * (p * counts.numel()).log()).sum().clamp_min(0.0))


def mode_coverage(
    samples: torch.Tensor,
    centres: torch.Tensor | MixturePreset,
    std: float | None = None,
    *,
    num_std: float = 3.0,
    min_count: int = 1,
) -> ModeCoverage:
    """Modes covered, fraction of HQ samples and reverse KL of generated 2-D ``samples``.

    Args:
        samples: (N, 2) generated points (tensor or array), N >= 1.
        centres: (K, 2) mode centres, or a :class:`MixturePreset` (then ``std`` defaults to its std).
        std: the mixture's per-mode standard deviation: required with (K, 2) centres, optional with a
            preset.
        num_std: HQ radius in standard deviations (3 in both papers).
        min_count: HQ samples a mode needs to count as covered (1 in both papers).
    """
    if isinstance(centres, MixturePreset):
        std = centres.std if std is None else std
        centres = centres.centres
    x = as_float_matrix("samples", samples, columns=2)
    c = as_float_matrix("centres", centres, columns=2)
    if not is_positive_finite(std):  # numpy scalars too, as num_std
        raise ValueError(
            f"std must be a positive finite number (required unless centres is a MixturePreset), got {std!r:.60}"
        )
    if not is_positive_finite(num_std):  # an infinite radius would count any point as high quality
        raise ValueError(f"num_std must be a positive finite number, got {num_std!r:.60}")
    min_count = check_positive_int("min_count", min_count)
    index, sq_dist = nn_argmin(x.contiguous(), c.contiguous(), return_distances=True)  # float64
    hq = sq_dist.double() <= (float(num_std) * float(std)) ** 2
    counts = torch.bincount(index[hq], minlength=c.shape[0])
    return ModeCoverage(
        modes_covered=int((counts >= min_count).sum()),
        num_modes=c.shape[0],
        high_quality_fraction=float(hq.double().mean()),
        reverse_kl=reverse_kl_uniform(counts),
        mode_counts=counts,
    )

"""Improved precision/recall and density/coverage of generated features against real features.

With ``NND_k(x)`` the distance from ``x`` to its k-th nearest other point of its own set
(:func:`~glann_ext.metrics.knn.knn_radii`), real features ``r_1..r_N`` and fake features ``f_1..f_M``:

* precision = (1/M) sum_j 1[exists i: ||f_j - r_i|| <= NND_k(r_i)]  (Kynkäänniemi et al. 2019, k = 3)
* recall    = (1/N) sum_i 1[exists j: ||r_i - f_j|| <= NND_k(f_j)]  (same paper; closed balls, eq. 1)
* density   = 1/(kM) sum_j sum_i 1[||f_j - r_i|| < NND_k(r_i)]      (Naeem et al. 2020, k = 5)
* coverage  = (1/N) sum_i 1[min_j ||r_i - f_j|| < NND_k(r_i)]       (same paper; open balls, as its code)

Identical sets without duplicate rows give precision = recall = coverage = 1 and density = 1 exactly (each
point's open ball holds itself and its k - 1 nearer neighbours; with duplicates a radius can be 0 and its open
ball empty). Every distance that decides, the radii and coverage's nearest fake included, is the direct
float64 ``sum((a - b)^2)`` (:mod:`~glann_ext.metrics.knn` ranks by a matrix product first), on data shifted by
the real set's mean rounded to a power-of-two grid (exact for data on a grid), so a point exactly on a
boundary is decided by the rule above, not by rounding.

``tile_bytes`` bounds one tile of the distance matrix, but a tile holds at least
:data:`~glann_ext.metrics.knn.MIN_TILE_ROWS` rows (past about 65,000 points of the other set it takes more).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._checks import as_float_matrix, check_positive_int
from .knn import DEFAULT_TILE_BYTES, ball_membership_counts, knn_radii, nearest_distances


@dataclass(frozen=True)
class PRDC:
    precision: float
    recall: float
    density: float
    coverage: float


def _pair(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r = as_float_matrix("real", real)
    f = as_float_matrix("fake", fake, columns=r.shape[1])
    # PRDC does not change with the scale: bring the largest value near 1 by a power of two (exact), so that
    # squares neither underflow (data at 1e-170 scored (1, 1, 0, 0)) nor overflow (1e200 raised a NaN error)
    top = max(float(r.abs().max()), float(f.abs().max()) if f.numel() else 0.0)
    if top > 0:
        # in two exact halves: for a subnormal top, 2 ** -exponent alone is past the largest double
        shift = -math.floor(math.log2(top))
        for half in (shift // 2, shift - shift // 2):
            r, f = r * math.ldexp(1.0, half), f * math.ldexp(1.0, half)
    centre = _grid_centre(r)
    return r - centre, f - centre


def _grid_centre(r: torch.Tensor) -> torch.Tensor:
    """What both sets are shifted by (distances do not change under a shift): per coordinate, the real set's
    mean, so that the expanded distances of offset point sets keep float64's precision, rounded to a
    multiple of a power of two no larger than that coordinate's spread, so that the shift is exact for data
    on a grid (integers, quantised pixels, binary codes). An inexact mean such as 7/3 made every coordinate
    inexact, and a point exactly on a ball's boundary then fell inside or outside at random (precision off
    by 0.07 on binary data). A coordinate that does not vary is shifted by its value (exact)."""
    spread = r.std(0) if r.shape[0] > 1 else torch.zeros_like(r[0])
    varies = spread > 0
    step = torch.where(varies, torch.exp2(torch.floor(torch.log2(torch.where(varies, spread, 1.0)))), 1.0)
    return torch.where(varies, torch.round(r.mean(0) / step) * step, r[0])


def precision_recall(
    real: torch.Tensor, fake: torch.Tensor, *, k: int = 3, tile_bytes: int = DEFAULT_TILE_BYTES
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of (M, D) ``fake`` vs (N, D) ``real``."""
    r, f = _pair(real, fake)
    k = check_positive_int("k", k)
    real_radii = knn_radii(r, k, tile_bytes=tile_bytes, name="real")
    fake_radii = knn_radii(f, k, tile_bytes=tile_bytes, name="fake")
    precision = ball_membership_counts(f, r, real_radii, strict=False, tile_bytes=tile_bytes) > 0
    recall = ball_membership_counts(r, f, fake_radii, strict=False, tile_bytes=tile_bytes) > 0
    return float(precision.double().mean()), float(recall.double().mean())


def density_coverage(
    real: torch.Tensor, fake: torch.Tensor, *, k: int = 5, tile_bytes: int = DEFAULT_TILE_BYTES
) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020) of (M, D) ``fake`` vs (N, D) ``real``."""
    r, f = _pair(real, fake)
    k = check_positive_int("k", k)
    real_radii = knn_radii(r, k, tile_bytes=tile_bytes, name="real")
    inside = ball_membership_counts(f, r, real_radii, strict=True, tile_bytes=tile_bytes)
    density = float(inside.double().sum()) / (k * f.shape[0])
    # the nearest fake of every real by the direct distance its radius is (an exact distance beside a
    # rounded radius counted an exact copy of a duplicated real, radius 0 but rounded to 1e-8, as covering it)
    coverage = nearest_distances(r, f, tile_bytes=tile_bytes) < real_radii
    return density, float(coverage.double().mean())


def prdc(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    k_pr: int = 3,
    k_dc: int = 5,
    tile_bytes: int = DEFAULT_TILE_BYTES,
) -> PRDC:
    """All four: precision/recall with ``k_pr`` (default 3), density/coverage with ``k_dc`` (default 5)."""
    p, r = precision_recall(real, fake, k=k_pr, tile_bytes=tile_bytes)
    d, c = density_coverage(real, fake, k=k_dc, tile_bytes=tile_bytes)
    return PRDC(precision=p, recall=r, density=d, coverage=c)

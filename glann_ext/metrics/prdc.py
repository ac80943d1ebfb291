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

from dataclasses import dataclass

import torch

from ._checks import as_float_matrix
from ._scale import largest, times_power_of_two, unit_exponent
from .knn import DEFAULT_TILE_BYTES, Balls, cross_pass, knn_radii_each


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
    exponent = unit_exponent(largest(r, f))
    r, f = times_power_of_two(r, exponent), times_power_of_two(f, exponent)
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
    res = _scores(real, fake, k, None, tile_bytes, ("k", "k"))
    return res.precision, res.recall


def density_coverage(
    real: torch.Tensor, fake: torch.Tensor, *, k: int = 5, tile_bytes: int = DEFAULT_TILE_BYTES
) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020) of (M, D) ``fake`` vs (N, D) ``real``."""
    res = _scores(real, fake, None, k, tile_bytes, ("k", "k"))
    return res.density, res.coverage


def prdc(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    k_pr: int = 3,
    k_dc: int = 5,
    tile_bytes: int = DEFAULT_TILE_BYTES,
) -> PRDC:
    """All four: precision/recall with ``k_pr`` (default 3), density/coverage with ``k_dc`` (default 5).

    The values of :func:`precision_recall` and :func:`density_coverage`, from three passes over distances:
    the real set's radii for both k, the fake set's, and one pass over the real x fake distances for all
    four (:func:`~glann_ext.metrics.knn.cross_pass`); the two functions called apart take the real radii
    and the real x fake distances twice."""
    return _scores(real, fake, k_pr, k_dc, tile_bytes, ("k_pr", "k_dc"))


def _scores(
    real: torch.Tensor,
    fake: torch.Tensor,
    k_pr: int | None,
    k_dc: int | None,
    tile_bytes: int,
    k_names: tuple[str, str],
) -> PRDC:
    """The metrics of :func:`prdc`; ``k_pr`` (``k_dc``) None skips precision and recall (density and
    coverage), left NaN. ``k_names`` name the two k in errors."""
    r, f = _pair(real, fake)
    wanted = [(k, name) for k, name in zip((k_pr, k_dc), k_names) if k is not None]
    ks, names = [k for k, _ in wanted], [name for _, name in wanted]
    radii = knn_radii_each(r, ks, tile_bytes=tile_bytes, name="real", k_names=names)
    pr_radii = radii[0] if k_pr is not None else None
    dc_radii = radii[-1] if k_dc is not None else None
    real_balls, fake_balls = [], []
    if pr_radii is not None:
        fake_radii = knn_radii_each(f, ks[:1], tile_bytes=tile_bytes, name="fake", k_names=names[:1])[0]
        real_balls.append(Balls(pr_radii, strict=False))  # precision: closed balls (the paper's eq. 1)
        fake_balls.append(Balls(fake_radii, strict=False))  # recall: closed too
    if dc_radii is not None:
        real_balls.append(Balls(dc_radii, strict=True))  # density: open balls, as Naeem et al.'s code
    cross = cross_pass(
        r, f, row_balls=real_balls, col_balls=fake_balls, nearest=dc_radii is not None,
        tile_bytes=tile_bytes, names=("real", "fake"),
    )  # fmt: skip
    precision = recall = density = coverage = float("nan")
    if pr_radii is not None:
        precision = float((cross.cols_inside[0] > 0).double().mean())
        recall = float((cross.rows_inside[0] > 0).double().mean())
    if dc_radii is not None and cross.nearest is not None:
        density = float(cross.cols_inside[-1].double().sum()) / (ks[-1] * f.shape[0])
        # the nearest fake of every real by the direct distance its radius is (an exact distance beside a
        # rounded radius counted an exact copy of a duplicated real, radius 0 but rounded to 1e-8, as covering it)
        coverage = float((cross.nearest < dc_radii).double().mean())
    return PRDC(precision=precision, recall=recall, density=density, coverage=coverage)

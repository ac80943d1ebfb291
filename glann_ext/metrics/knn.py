"""Exact k-nearest-neighbour radii and ball counts, tiled so memory stays O(tile * M).

Distances are Euclidean (not squared), computed in float64 as ``sqrt(max(0, |a|^2 + |b|^2 - 2 a.b))``
over row tiles; the tile height is chosen so one tile of the distance matrix fits ``tile_bytes`` (but at
least :data:`MIN_TILE_ROWS` rows).
"""

from __future__ import annotations

import torch

from ..errors import NonFiniteError
from ._checks import as_float_matrix, check_not_meta, check_positive_int, check_squarable

# 16 MB, not 64: a tile of distances then stays nearer the cache between the product and its reduction;
# PRDC of 10,000 x 10,000 float64 features (84 dimensions) took 2.1 s instead of 3.3 on 2 CPU threads, the
# same values
DEFAULT_TILE_BYTES = 16 << 20


# rows of a tile at least, past ~65,000 keys beyond tile_bytes: a product of fewer rows rereads every key for
# every few rows (2,000 x 400,000 float32 keys: 11.2 s at 5 rows a tile, 6.0 s at 32, one thread)
MIN_TILE_ROWS = 32


def _rows_per_tile(m: int, tile_bytes: int) -> int:
    return max(MIN_TILE_ROWS, tile_bytes // (8 * max(1, m)))


def _tile_distances(q: torch.Tensor, keys: torch.Tensor, key_sq: torch.Tensor) -> torch.Tensor:
    d2 = torch.addmm(key_sq.unsqueeze(0), q, keys.t(), alpha=-2.0)
    d2 += (q * q).sum(1, keepdim=True)
    return d2.clamp_min_(0.0).sqrt_()


def knn_radii(
    features: torch.Tensor, k: int, *, tile_bytes: int = DEFAULT_TILE_BYTES, name: str = "features"
) -> torch.Tensor:
    """Distance from every row to its k-th nearest *other* row of the same set, float64 (N,).

    Computed as the (k+1)-th smallest distance with the point itself included (distance 0), as in the
    reference implementations of Kynkäänniemi et al. 2019 and Naeem et al. 2020; duplicates of a row
    count as neighbours at distance 0 up to the expansion's rounding (about 1e-8 of the rows' norm, as in
    those implementations, which expand the same way). Needs N >= k + 1.
    """
    x = as_float_matrix(name, features)
    check_squarable(name, x)  # else the radii came back inf
    k = check_positive_int("k", k)
    n = x.shape[0]
    if n < k + 1:
        raise ValueError(f"{name} must have at least k + 1 = {k + 1} rows for k={k}, got {n}")
    sq = (x * x).sum(1)
    rows = _rows_per_tile(n, tile_bytes)
    out = torch.empty(n, dtype=torch.float64)
    for start in range(0, n, rows):
        d = _tile_distances(x[start : start + rows], x, sq)
        # The diagonal is exactly 0 in exact arithmetic; pin it so rounding cannot reorder it.
        idx = torch.arange(start, start + d.shape[0])
        d[torch.arange(d.shape[0]), idx] = 0.0
        out[start : start + rows] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return out


def ball_membership_counts(
    queries: torch.Tensor,
    centres: torch.Tensor,
    radii: torch.Tensor,
    *,
    strict: bool,
    tile_bytes: int = DEFAULT_TILE_BYTES,
) -> torch.Tensor:
    """For every query row, how many balls ``B(centres_j, radii_j)`` contain it (int64, (N,)).

    ``strict=True`` counts ``d < r`` (open balls), ``False`` counts ``d <= r`` (closed balls).
    """
    q = as_float_matrix("queries", queries)
    c = as_float_matrix("centres", centres, columns=q.shape[1])
    check_squarable("queries", q)
    check_squarable("centres", c)
    check_not_meta("radii", radii)
    r = torch.as_tensor(radii).detach().to("cpu", torch.float64)
    if r.shape != (c.shape[0],):
        raise ValueError(f"radii must have shape ({c.shape[0]},) like centres, got {tuple(r.shape)}")
    if bool(r.isnan().any()):
        raise NonFiniteError(f"radii holds NaN at row {int(r.isnan().nonzero()[0])}", argument="radii")
    if len(r) and float(r.min()) < 0:
        raise ValueError(
            f"radii must be >= 0 (ball radii), got {float(r.min()):.6g} at row {int(r.argmin())}"
        )
    # Tiles over the centres, with each centre as the row operand exactly as in knn_radii: the float
    # distance of a centre to a query then equals, bit for bit, the one its radius was ranked from
    # (the expanded distance is not exactly symmetric), so identical sets give exact answers.
    sq = (q * q).sum(1)
    rows = _rows_per_tile(q.shape[0], tile_bytes)
    out = torch.zeros(q.shape[0], dtype=torch.int64)
    for start in range(0, c.shape[0], rows):
        d = _tile_distances(c[start : start + rows], q, sq)
        rad = r[start : start + rows].unsqueeze(1)
        out += (d < rad if strict else d <= rad).sum(0)
    return out


def nearest_distances(
    rows: torch.Tensor, keys: torch.Tensor, *, tile_bytes: int = DEFAULT_TILE_BYTES
) -> torch.Tensor:
    """Distance from every row of ``rows`` to its nearest row of ``keys``, float64 (N,), with each row as the
    row operand of :func:`_tile_distances` as :func:`knn_radii` and :func:`ball_membership_counts` use it:
    compared with a radius of ``rows``, a key equal to one of its neighbours gives that neighbour's distance,
    bit for bit."""
    x = as_float_matrix("rows", rows)
    y = as_float_matrix("keys", keys, columns=x.shape[1])
    check_squarable("rows", x)
    check_squarable("keys", y)
    sq = (y * y).sum(1)
    step = _rows_per_tile(y.shape[0], tile_bytes)
    out = torch.empty(x.shape[0], dtype=torch.float64)
    for start in range(0, x.shape[0], step):
        out[start : start + step] = _tile_distances(x[start : start + step], y, sq).min(1).values
    return out

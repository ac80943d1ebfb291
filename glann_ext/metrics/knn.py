"""Exact k-nearest-neighbour radii and ball counts, tiled so memory stays O(tile * M).

Distances are Euclidean (not squared), in float64. Candidates are ranked over row tiles by the expansion
``|a|^2 + |b|^2 - 2 a.b`` (one matrix product per tile; the tile height is chosen so one tile of the distance
matrix fits ``tile_bytes``, but at least :data:`MIN_TILE_ROWS` rows); every value that decides a result (each
radius, each distance the expansion cannot tell from a radius, each nearest distance) is then recomputed from
direct differences ``sum((a - b)^2)``. The expansion rounds differently with the shape of the product on
different CPUs, so duplicates and copies only compare exactly this way: an exact copy of a point is at
distance 0, never at a rounding error of 1e-8 either side of a radius.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import NonFiniteError
from ._checks import as_float_matrix, check_not_meta, check_positive_int, check_squarable
from ._scale import largest, times_power_of_two, unit_exponent

# 16 MB, not 64: a tile of distances then stays nearer the cache between the product and its reduction;
# PRDC of 10,000 x 10,000 float64 features (84 dimensions) took 2.1 s instead of 3.3 on 2 CPU threads, the
# same values
DEFAULT_TILE_BYTES = 16 << 20


# rows of a tile at least, past ~65,000 keys beyond tile_bytes: a product of fewer rows rereads every key for
# every few rows (2,000 x 400,000 float32 keys: 11.2 s at 5 rows a tile, 6.0 s at 32, one thread)
MIN_TILE_ROWS = 32


def _rows_per_tile(m: int, tile_bytes: int) -> int:
    return max(MIN_TILE_ROWS, tile_bytes // (8 * max(1, m)))


def _expanded_sq(q: torch.Tensor, keys: torch.Tensor, key_sq: torch.Tensor) -> torch.Tensor:
    """Squared distances of the tile ``q`` to every key by the expansion (>= 0): for ranking only."""
    d2 = torch.addmm(key_sq.unsqueeze(0), q, keys.t(), alpha=-2.0)
    d2 += (q * q).sum(1, keepdim=True)
    return d2.clamp_min_(0.0)


def _rounding(q_sq: torch.Tensor, key_sq: torch.Tensor, d: int) -> torch.Tensor:
    """A bound on the expansion's error for every row of the tile (q_sq (t,) -> (t, 1)), against any key: its
    sums of ``d`` products round by at most about ``d`` units of 2^-53 of ``|q|^2 + |k|^2``; taken 8 times
    over, with the largest key."""
    top = float(key_sq.max()) if len(key_sq) else 0.0
    return (q_sq + top).unsqueeze(1) * (max(d, 2) * 2.0**-50)


def _exponent_below_one(*sets: torch.Tensor) -> int:
    """:func:`unit_exponent` of the sets' largest value when it is below 1, else 0: the public helpers scale
    such data up (exactly) before they square it, since squared distances of data at 1e-170 underflowed to
    0 (every radius 0, every point in every ball). Larger data is left as it is: :func:`check_squarable`
    names what would overflow. Only the largest value sets the scale: a tiny cluster beside points near 1
    still squares to 0 within itself."""
    top = largest(*sets)
    return unit_exponent(top) if top < 1 else 0


def _row_ids(*sets: torch.Tensor) -> list[torch.Tensor]:
    """An id for every row of each of ``sets``, the same exactly where two rows (of any of them) are equal:
    such pairs are at distance 0 without a subtraction (a set of 20,000 identical rows has 4e8 of them)."""
    _, ids = torch.unique(torch.cat(sets), dim=0, return_inverse=True)
    return list(ids.split([len(x) for x in sets]))


def _direct_sq(
    a: torch.Tensor, b: torch.Tensor, i: torch.Tensor, j: torch.Tensor, same: torch.Tensor
) -> torch.Tensor:
    """``sum((a[i] - b[j])^2)`` for the index pairs ``(i, j)``, float64 (0 where ``same``: equal rows), in
    chunks of about 16 MB."""
    out = torch.zeros(len(i), dtype=torch.float64)
    todo = (~same).nonzero().squeeze(1)
    step = max(1, (2 << 20) // max(1, a.shape[1]))
    for s in range(0, len(todo), step):
        at = todo[s : s + step]
        out[at] = (a[i[at]] - b[j[at]]).square_().sum(1)
    return out


def knn_radii(
    features: torch.Tensor, k: int, *, tile_bytes: int = DEFAULT_TILE_BYTES, name: str = "features"
) -> torch.Tensor:
    """Distance from every row to its k-th nearest *other* row of the same set, float64 (N,).

    Computed as the (k+1)-th smallest distance with the point itself included (distance 0), as in the
    reference implementations of Kynkäänniemi et al. 2019 and Naeem et al. 2020; the neighbours are ranked
    by the expansion (as in those implementations) and the radius is the k-th one's direct distance, so
    duplicates of a row are at distance 0 exactly (the references: about 1e-8 of the rows' norm). Data
    whose largest value is below 1 is scaled up by a power of two first and the radii are scaled back, so
    that squared distances of tiny data do not underflow to 0 (exact away from float64's subnormal range,
    where the radii round to its grid). Needs N >= k + 1.
    """
    return knn_radii_each(features, (k,), tile_bytes=tile_bytes, name=name)[0]


def knn_radii_each(
    features: torch.Tensor,
    ks: Sequence[int],
    *,
    tile_bytes: int = DEFAULT_TILE_BYTES,
    name: str = "features",
    k_names: Sequence[str] | None = None,
) -> list[torch.Tensor]:
    """:func:`knn_radii` for every k of ``ks``, from one pass over the distances (PRDC takes k = 3 and
    k = 5 of the same real set: one matrix product per tile instead of two). ``k_names`` names each k in
    errors (default "k"). Needs N >= max(ks) + 1. A k given twice is computed once (the same tensor)."""
    x = as_float_matrix(name, features)
    check_squarable(name, x)  # else the radii came back inf
    k_names = list(k_names) if k_names is not None else ["k"] * len(ks)
    ks = [check_positive_int(k_name, k) for k_name, k in zip(k_names, ks, strict=True)]
    n = x.shape[0]
    for k_name, k in zip(k_names, ks):
        if n < k + 1:
            raise ValueError(
                f"{name} must have at least {k_name} + 1 = {k + 1} rows for {k_name}={k}, got {n}"
            )
    exponent = _exponent_below_one(x)
    x = times_power_of_two(x, exponent)
    sq, (ids,) = (x * x).sum(1), _row_ids(x)
    rows = _rows_per_tile(n, tile_bytes)
    outs = {k: torch.empty(n, dtype=torch.float64) for k in ks}  # prdc(k_pr=k_dc): one top-k per tile
    for start in range(0, n, rows):
        d2 = _expanded_sq(x[start : start + rows], x, sq)
        own = torch.arange(start, start + d2.shape[0])
        d2[own - start, own] = 0.0  # the point itself, first (it is 0 exactly)
        for k, out in outs.items():
            out[start : start + rows] = _tile_radii(x, sq, ids, own, d2, k)
    outs = {k: times_power_of_two(out, -exponent) for k, out in outs.items()}  # a repeated k: one tensor
    return [outs[k] for k in ks]


def _tile_radii(
    x: torch.Tensor, sq: torch.Tensor, ids: torch.Tensor, own: torch.Tensor, d2: torch.Tensor, k: int
) -> torch.Tensor:
    """The radii of rows ``own`` of ``x`` from their expanded squared distances ``d2`` to every row: the
    (k + 1)-th smallest direct distance among the candidates, every row the expansion cannot tell from the
    (k + 1)-th nearest (each of two expanded distances is off by at most the bound). Usually these are just
    the k + 1 nearest by the expansion; a row with more (near ties) is decided among all of its own."""
    near = d2.topk(k + 1, dim=1, largest=False)
    i, j = own.repeat_interleave(k + 1), near.indices.reshape(-1)
    radius = _direct_sq(x, x, i, j, ids[i] == ids[j]).view(-1, k + 1).amax(1)
    candidates = d2 <= near.values[:, k:] + 2 * _rounding(sq[own], sq, x.shape[1])
    tied = (candidates.sum(1) > k + 1).nonzero().squeeze(1)
    if len(tied):
        i, j = candidates[tied].nonzero(as_tuple=True)
        dense = torch.full((len(tied), x.shape[0]), float("inf"), dtype=torch.float64)
        dense[i, j] = _direct_sq(x, x, own[tied[i]], j, ids[own[tied[i]]] == ids[j])
        radius[tied] = dense.topk(k + 1, dim=1, largest=False).values[:, k]
    return radius.sqrt_()


@dataclass(frozen=True)
class Balls:
    """Balls centred on the rows of one set of a :func:`cross_pass`: one float64 radius per row, open
    (``strict``: ``d < r``) or closed (``d <= r``)."""

    radii: torch.Tensor
    strict: bool


@dataclass(frozen=True)
class CrossPass:
    """What one :func:`cross_pass` over the distances between ``rows`` (N) and ``cols`` (M) found."""

    #: for each of ``row_balls``: how many of those balls contain each column point (int64, (M,))
    cols_inside: list[torch.Tensor]
    #: for each of ``col_balls``: how many of those balls contain each row point (int64, (N,))
    rows_inside: list[torch.Tensor]
    #: with ``nearest``: each row's direct distance to its nearest column point (float64, (N,)), else None
    nearest: torch.Tensor | None


def ball_membership_counts(
    queries: torch.Tensor,
    centres: torch.Tensor,
    radii: torch.Tensor,
    *,
    strict: bool,
    tile_bytes: int = DEFAULT_TILE_BYTES,
) -> torch.Tensor:
    """For every query row, how many balls ``B(centres_j, radii_j)`` contain it (int64, (N,)).

    ``strict=True`` counts ``d < r`` (open balls), ``False`` counts ``d <= r`` (closed balls). When the
    points' largest value is below 1, points and radii are first scaled up by one power of two, as
    :func:`knn_radii` scales its data (exact away from float64's subnormal range).
    """
    q = as_float_matrix("queries", queries)
    c = as_float_matrix("centres", centres, columns=q.shape[1])
    r = _checked_radii("radii", radii, c.shape[0], "centres")
    # scaled with the points (a radius past float64 once scaled is inf: it holds every point all the same)
    exponent = _exponent_below_one(q, c)
    balls = Balls(times_power_of_two(r, exponent), strict)
    return cross_pass(
        times_power_of_two(c, exponent),
        times_power_of_two(q, exponent),
        row_balls=[balls],
        tile_bytes=tile_bytes,
    ).cols_inside[0]


def _checked_radii(name: str, radii: object, n: int, centres: str) -> torch.Tensor:
    """``radii`` as a float64 CPU tensor of shape (n,), each >= 0, or an error naming ``name``."""
    check_not_meta(name, radii)
    r = torch.as_tensor(radii).detach().to("cpu", torch.float64)
    if r.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) like {centres}, got {tuple(r.shape)}")
    if bool(r.isnan().any()):
        raise NonFiniteError(f"{name} holds NaN at row {int(r.isnan().nonzero()[0])}", argument=name)
    if len(r) and float(r.min()) < 0:
        raise ValueError(
            f"{name} must be >= 0 (ball radii), got {float(r.min()):.6g} at row {int(r.argmin())}"
        )
    return r


def cross_pass(
    rows: torch.Tensor,
    cols: torch.Tensor,
    *,
    row_balls: Sequence[Balls] = (),
    col_balls: Sequence[Balls] = (),
    nearest: bool = False,
    tile_bytes: int = DEFAULT_TILE_BYTES,
    names: tuple[str, str] = ("centres", "queries"),
) -> CrossPass:
    """Ball counts both ways and nearest distances from one pass over the distances between two float64
    (N, D) and (M, D) sets (:func:`as_float_matrix`'s), one matrix product per tile of ``rows``: PRDC's
    precision, recall, density and coverage all read the real x fake distances, once here instead of four
    times. Every pair the expansion puts within its rounding of a ball's boundary, and every key it cannot
    tell from a row's nearest, is decided by the direct distance, the one :func:`knn_radii` takes its radii
    from: an exact copy of a centre's k-th neighbour lies on its boundary, whichever set is the row operand."""
    check_squarable(names[0], rows)
    check_squarable(names[1], cols)
    sq, row_sq = (cols * cols).sum(1), (rows * rows).sum(1)
    row_ids, col_ids = _row_ids(rows, cols)
    step = _rows_per_tile(cols.shape[0], tile_bytes)
    cols_inside = [torch.zeros(cols.shape[0], dtype=torch.int64) for _ in row_balls]
    rows_inside = [torch.zeros(rows.shape[0], dtype=torch.int64) for _ in col_balls]
    least = torch.empty(rows.shape[0], dtype=torch.float64) if nearest else None
    for start in range(0, rows.shape[0], step):
        tile = slice(start, start + step)
        d2 = _expanded_sq(rows[tile], cols, sq)
        tol = _rounding(row_sq[tile], sq, cols.shape[1])
        direct = functools.partial(_tile_direct_sq, rows, cols, row_ids, col_ids, start)
        for balls, out in zip(row_balls, cols_inside):
            out += _within(d2, tol, balls.radii[tile].unsqueeze(1), balls.strict, direct).sum(0)
        for balls, out in zip(col_balls, rows_inside):
            out[tile] = _within(d2, tol, balls.radii.unsqueeze(0), balls.strict, direct).sum(1)
        if least is not None:
            # every key the expansion cannot tell from the nearest (two distances' errors): the least direct one
            i, j = (d2 <= d2.min(1, keepdim=True).values + 2 * tol).nonzero(as_tuple=True)
            best = torch.full((d2.shape[0],), float("inf"), dtype=torch.float64)
            least[tile] = best.scatter_reduce_(0, i, direct(i, j), "amin").sqrt_()
    return CrossPass(cols_inside, rows_inside, least)


def _tile_direct_sq(
    rows: torch.Tensor,
    cols: torch.Tensor,
    row_ids: torch.Tensor,
    col_ids: torch.Tensor,
    start: int,
    i: torch.Tensor,
    j: torch.Tensor,
) -> torch.Tensor:
    """Direct squared distances of the pairs (row ``start + i``, column ``j``) of a tile."""
    return _direct_sq(rows, cols, i + start, j, row_ids[i + start] == col_ids[j])


def _within(
    d2: torch.Tensor,
    tol: torch.Tensor,
    rad: torch.Tensor,
    strict: bool,
    direct: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Which pairs of a tile (expanded squared distances ``d2``, rounding bound ``tol`` (t, 1)) lie in the
    balls of radii ``rad`` ((t, 1): on the rows; (1, M): on the columns); the pairs within ``tol`` of a
    boundary are decided by their direct distance (``direct(i, j)``)."""
    r2 = rad * rad
    inside = d2 < r2 if strict else d2 <= r2
    i, j = ((d2 - r2).abs_() <= tol).nonzero(as_tuple=True)
    d, r = direct(i, j).sqrt_(), rad.expand_as(d2)[i, j]
    inside[i, j] = d < r if strict else d <= r
    return inside

"""The local spread: each sampled code moves along the directions its neighbouring training codes vary in.

For a sample ``z`` (a code ``T`` drew, on the unit sphere), let ``c_1..c_k`` be its ``k`` nearest training codes
(exact, squared L2) and ``d_j = c_j - mean(c)`` their deviations from their mean. The sample moves to

    project(z + a * sum_j w_j d_j),   w_j ~ N(0, 1 / (k - 1)) independently,

Gaussian noise whose covariance is ``a^2`` times the neighbours' own covariance (a manifold Parzen window
kernel, Vincent & Bengio, NIPS 2002, centred on ``T``'s sample instead of a training code). Where the codes lie
along a few directions the sample moves along those, not off them as isotropic noise does
(:meth:`GLANN.set_spread`), so it mixes nearby codes at little cost in fidelity (docs/training.md,
"The local spread").

The neighbours do not depend on how the samples are batched: candidates found with float32 scores are ranked
again by float64 distances, ties going to the lower index, so sample ``i`` has the same neighbours whatever
the number of samples or the tile it falls in, and the noise comes in seeded blocks of rows, so it moves the
same way too. Memory stays O(tile): the search and the offsets are computed a tile of samples at a time.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from glann_ext import seeding

# rows of weights drawn per seeded block (as GLANN's isotropic spread draws its noise)
CHUNK = 4_096
# bytes of one tile's working tensors: its distances to every code, and its neighbours' deviations. 16 MB, not
# 64: the tile's scores then stay nearer the cache between the product and the top-k, 1.3-1.6x faster on 2
# CPU threads (10,000 samples among 2,000-60,000 codes of 32-64 dimensions; the same neighbours)
TILE_BYTES = 16 << 20
# candidates beyond k ranked again in float64: the float32 scores' rounding (about 1e-7 of |c|^2) can only
# swap codes whose distances are that close, which these extra places cover
EXTRA_CANDIDATES = 8


def tile_rows(n_codes: int, k: int, dim: int, element_size: int) -> int:
    """How many samples one tile holds, so that its distances (rows x N) and its candidates' and neighbours'
    codes (rows x (k + :data:`EXTRA_CANDIDATES`) x d, in float64 at most) each fit :data:`TILE_BYTES`."""
    per_row = max(element_size * n_codes, 8 * (k + EXTRA_CANDIDATES) * dim, 1)
    return max(1, TILE_BYTES // per_row)


def nearest_codes(z: torch.Tensor, codes: torch.Tensor, k: int) -> torch.Tensor:
    """int64 (n, k): the indices of the ``k`` (<= N) training ``codes`` (N, d) nearest each row of ``z``
    (n, d) by squared L2 distance computed in float64, ties to the lower index, each row's indices in
    increasing order. Tiled (:func:`tile_rows`)."""
    out = torch.empty(len(z), k, dtype=torch.int64, device=z.device)
    for tile, nearest in _tiles_nearest(z, codes, k):
        out[tile] = nearest
    return out


def _tiles_nearest(z: torch.Tensor, codes: torch.Tensor, k: int) -> Iterator[tuple[slice, torch.Tensor]]:
    """(rows of ``z``, their :func:`nearest_codes`) a tile (:func:`tile_rows`) at a time."""
    rows, sq = tile_rows(len(codes), k, z.shape[1], z.element_size()), (codes * codes).sum(1)
    for start in range(0, len(z), rows):
        tile = slice(start, start + rows)
        yield tile, _tile_nearest(z[tile], codes, sq, k)


def _tile_nearest(q: torch.Tensor, codes: torch.Tensor, sq: torch.Tensor, k: int) -> torch.Tensor:
    # |c|^2 - 2 q.c ranks the codes as |q - c|^2 does (|q|^2 is the same for every code); sq = |c|^2
    score = torch.addmm(sq.unsqueeze(0), q, codes.t(), alpha=-2.0)
    m = min(len(codes), k + EXTRA_CANDIDATES)
    top = score.topk(min(len(codes), m + 1), dim=1, largest=False)
    cand = top.indices[:, :m]
    if len(codes) > m:  # a place past the m-th exists, so a tie can cross it
        # topk picks among scores tied across its last place in no set order (duplicate codes): there a
        # stable sort of the row keeps the lower indices, as the ranking below does
        crowded = top.values[:, m] == top.values[:, m - 1]
        if crowded.any():
            cand[crowded] = score[crowded].sort(dim=1, stable=True).indices[:, :m]
    cand = cand.sort(1).values  # by index: ties keep the lower one
    exact = (codes[cand].double() - q.double().unsqueeze(1)).square().sum(2)
    order = exact.sort(dim=1, stable=True).indices[:, :k]
    return cand.gather(1, order).sort(1).values


def weights(n: int, k: int, seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n, k) seeded N(0, 1 / (k - 1)) weights, drawn in blocks of :data:`CHUNK` rows: row ``i`` is the same
    for every ``n > i``."""
    w = seeding.block_normal(n, k, seed, "local_spread", CHUNK)
    return (w / (k - 1) ** 0.5).to(device, dtype)


def local_offsets(z: torch.Tensor, codes: torch.Tensor, k: int, spread: float, seed: int) -> torch.Tensor:
    """(n, d): ``spread * sum_j w_j (c_j - mean(c))`` over the ``min(k, N)`` codes nearest each row of ``z``
    (module docstring); zeros when fewer than two codes exist. Computed a tile of rows at a time."""
    k = min(k, len(codes))
    if k < 2 or len(z) == 0:
        return torch.zeros_like(z)
    codes = codes.to(z.device, z.dtype)
    w = weights(len(z), k, seed, z.device, z.dtype)
    out = torch.empty_like(z)
    for tile, nearest in _tiles_nearest(z, codes, k):
        neighbours = codes[nearest]  # (rows, k, d)
        deviations = neighbours - neighbours.mean(1, keepdim=True)
        out[tile] = torch.einsum("nk,nkd->nd", w[tile], deviations)
    return spread * out

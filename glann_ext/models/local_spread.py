"""The local spread: each sampled code moves along the directions its neighbouring training codes vary in.

For a sample ``z`` (a code ``T`` drew, on the unit sphere), let ``c_1..c_k`` be its ``k`` nearest training codes
(exact, squared L2) and ``d_j = c_j - mean(c)`` their deviations from their mean. The sample moves to

    project(z + a * sum_j w_j d_j),   w_j ~ N(0, 1 / (k - 1)) independently,

Gaussian noise whose covariance is ``a^2`` times the neighbours' own covariance (a manifold Parzen window
kernel, Vincent & Bengio, NIPS 2002, centred on ``T``'s sample instead of a training code). Where the codes lie
along a few directions the sample moves along those, not off them as isotropic noise does
(:meth:`GLANN.set_spread`), so it mixes nearby codes at little cost in fidelity (docs/training.md,
"The local spread").

The noise comes in seeded blocks of rows, so sample ``i`` moves the same way whatever the number of samples;
the neighbours of a sample are a set (sorted by index before the weights are drawn), so how ties between
equal distances are ordered does not change the sample.
"""

from __future__ import annotations

import torch

from glann_ext import seeding

# rows of weights drawn per seeded block (as GLANN's isotropic spread draws its noise)
CHUNK = 4_096
# bytes of one tile of the sample-to-code distance matrix
TILE_BYTES = 64 << 20


def nearest_codes(z: torch.Tensor, codes: torch.Tensor, k: int) -> torch.Tensor:
    """int64 (n, k): the indices of the ``k`` (<= N) training ``codes`` (N, d) nearest each row of ``z``
    (n, d) in squared L2, exact, each row's indices in increasing order. Tiled: memory O(tile * N)."""
    sq = (codes * codes).sum(1)
    rows = max(1, TILE_BYTES // (z.element_size() * max(1, len(codes))))
    out = torch.empty(len(z), k, dtype=torch.int64, device=z.device)
    for start in range(0, len(z), rows):
        q = z[start : start + rows]
        # |c|^2 - 2 q.c ranks the codes as |q - c|^2 does (|q|^2 is the same for every code)
        score = torch.addmm(sq.unsqueeze(0), q, codes.t(), alpha=-2.0)
        out[start : start + rows] = score.topk(k, dim=1, largest=False).indices.sort(1).values
    return out


def weights(n: int, k: int, seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n, k) seeded N(0, 1 / (k - 1)) weights, drawn in blocks of :data:`CHUNK` rows: row ``i`` is the same
    for every ``n > i``."""
    blocks = [
        torch.randn(CHUNK, k, generator=seeding.generator(seed, "local_spread", block=b))
        for b in range(-(-n // CHUNK))
    ]
    w = torch.cat(blocks)[:n] if blocks else torch.zeros(0, k)
    return (w / (k - 1) ** 0.5).to(device, dtype)


def local_offsets(z: torch.Tensor, codes: torch.Tensor, k: int, spread: float, seed: int) -> torch.Tensor:
    """(n, d): ``spread * sum_j w_j (c_j - mean(c))`` over the ``min(k, N)`` codes nearest each row of ``z``
    (module docstring); zeros when fewer than two codes exist."""
    k = min(k, len(codes))
    if k < 2 or len(z) == 0:
        return torch.zeros_like(z)
    codes = codes.to(z.device, z.dtype)
    neighbours = codes[nearest_codes(z, codes, k)]  # (n, k, d)
    deviations = neighbours - neighbours.mean(1, keepdim=True)
    w = weights(len(z), k, seed, z.device, z.dtype)
    return spread * torch.einsum("nk,nkd->nd", w, deviations)

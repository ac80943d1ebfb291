"""Initial GLO codes: PCA of the images (as in the GLO paper) or random, then on the unit sphere.

Both work on a shard of the dataset (rows ``[start, start + len(images))`` of ``total``): the PCA basis is
computed from sums over all ranks (:class:`~glann_ext.train.world.World`), the random codes from seeded
row blocks, so every rank gets exactly its rows of what a single process computes.
"""

from __future__ import annotations

import torch

from glann_ext import seeding

from .world import World

# Up to this many pixels: covariance eigendecomposition; above: randomized SVD. The exact path costs N p^2 for
# the covariance and p^3 for its eigendecomposition: 0.1 s at p = 784 (MNIST-like), but 3.9 s against 0.23 s
# randomized for 2,000 stacked 3 x 28 x 28 images, 40 s against 12 s for CIFAR-10-sized data (50k x 3,072,
# latent 64), on 2 cores.
EXACT_PCA_PIXELS = 1024


def _pca_basis(x: torch.Tensor, k: int, seed: int, world: World) -> torch.Tensor:
    """Top-``k`` principal directions (p, k) of the centred rows ``x`` (local rows of a sharded set).

    Exact (covariance eigendecomposition, float64) up to ``EXACT_PCA_PIXELS`` pixels. Above, randomized
    SVD (Halko et al. 2011, 3 power iterations) with every product over rows summed across ranks and
    Cholesky-QR for the tall orthonormalisations, so that it too sees all rows.
    """
    p = x.shape[1]
    if p <= EXACT_PCA_PIXELS:
        _evals, evecs = torch.linalg.eigh(world.sum(x.T @ x))
        return evecs[:, -k:].flip(1)  # descending variance
    g = seeding.generator(seed, "init", block=1)
    q = min(k + 8, p)
    y = x @ torch.randn(p, q, generator=g, dtype=torch.float64)
    for _ in range(3):
        y = _tall_orthonormal(y, world)
        y = _tall_orthonormal(x @ world.sum(x.T @ y), world)
    small = world.sum(y.T @ x)  # (q, p) = Q^T X
    _, _, vh = torch.linalg.svd(small, full_matrices=False)
    return vh[:k].T


def _tall_orthonormal(y: torch.Tensor, world: World) -> torch.Tensor:
    """Orthonormal columns spanning ``y`` (rows sharded over ranks): Cholesky-QR, twice for accuracy."""
    for _ in range(2):
        gram = world.sum(y.T @ y)
        eye = torch.eye(gram.shape[0], dtype=gram.dtype)
        r = torch.linalg.cholesky(gram + 1e-12 * gram.diagonal().max().clamp_min(1e-300) * eye, upper=True)
        y = torch.linalg.solve_triangular(r, y, upper=True, left=False)
    return y


def pca_codes(
    images: torch.Tensor, dim: int, seed: int = 0, world: World | None = None, start: int = 0,
    total: int | None = None,
) -> torch.Tensor:  # fmt: skip
    """Projection of the centred, flattened images onto their top ``dim`` principal directions.

    ``images`` may be one rank's rows ``[start, start + len)`` of ``total``; mean and basis are those of
    all rows. Directions beyond the rank of the data are filled with small seeded noise.
    """
    world = world or World()
    total = images.shape[0] if total is None else total
    x = images.reshape(images.shape[0], -1).double()
    p = x.shape[1]
    x = x - world.sum(x.sum(0)) / total
    k = min(dim, p, total)
    basis = _pca_basis(x, k, seed, world)
    # Fix the sign of each direction so that the result does not depend on the eigensolver's choice.
    basis = basis * torch.sign(basis[basis.abs().argmax(0), torch.arange(k)])
    codes = x @ basis
    if k < dim:
        sq = world.sum(torch.stack([codes.square().sum(), codes.sum()]))
        n = total * k
        std = ((sq[0] - sq[1] ** 2 / n) / max(n - 1, 1)).sqrt()
        rows = range(start, start + images.shape[0])
        pad = 1e-3 * std * seeding.normal_rows(rows, total, dim - k, seed, "init").double()
        codes = torch.cat([codes, pad], 1)
    return codes.float()


def random_codes(n: int, dim: int, seed: int = 0, start: int = 0, total: int | None = None) -> torch.Tensor:
    """Rows ``[start, start + n)`` of a seeded (total, dim) standard-normal table."""
    total = n if total is None else total
    return seeding.normal_rows(range(start, start + n), total, dim, seed, "init")


def initial_codes(
    images: torch.Tensor, dim: int, method: str, project, seed: int = 0, world: World | None = None,
    start: int = 0, total: int | None = None,
) -> torch.Tensor:  # fmt: skip
    """(len(images), dim) float32 codes on the unit sphere for the dataset rows ``[start, ...)`` of
    ``total``; ``project`` is the backend's sphere projection."""
    if method == "pca":
        codes = pca_codes(images, dim, seed, world, start, total)
    elif method == "random":
        codes = random_codes(images.shape[0], dim, seed, start, total)
    else:
        raise ValueError(f"init must be 'pca' or 'random', got {method!r}")
    return project(codes.contiguous())

"""Initial GLO codes: PCA of the images (as in the GLO paper) or random, then on the unit sphere."""

from __future__ import annotations

import torch

from . import seeding


def pca_codes(images: torch.Tensor, dim: int, seed: int = 0) -> torch.Tensor:
    """Projection of the centred, flattened images onto their top ``dim`` principal directions.

    Exact (covariance eigendecomposition in float64) up to 4096 pixels; randomized SVD above that.
    Directions beyond the rank of the data are filled with small seeded noise.
    """
    x = images.reshape(images.shape[0], -1).double()
    x = x - x.mean(0, keepdim=True)
    n, p = x.shape
    k = min(dim, p, n)
    if p <= 4096:
        _evals, evecs = torch.linalg.eigh(x.T @ x)
        basis = evecs[:, -k:].flip(1)  # descending variance
    else:
        torch.manual_seed(seed)  # svd_lowrank draws from the global generator
        _, _, v = torch.svd_lowrank(x, q=k + 8, niter=3)
        basis = v[:, :k]
    # Fix the sign of each direction so that the result does not depend on the eigensolver's choice.
    basis = basis * torch.sign(basis[basis.abs().argmax(0), torch.arange(k)])
    codes = x @ basis
    if k < dim:
        g = seeding.generator(seed, "init")
        pad = 1e-3 * codes.std() * torch.randn(n, dim - k, generator=g, dtype=torch.float64)
        codes = torch.cat([codes, pad], 1)
    return codes.float()


def random_codes(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=seeding.generator(seed, "init"))


def initial_codes(images: torch.Tensor, dim: int, method: str, project, seed: int = 0) -> torch.Tensor:
    """(N, dim) float32 codes on the unit sphere; ``project`` is the backend's sphere projection."""
    if method == "pca":
        codes = pca_codes(images, dim, seed)
    elif method == "random":
        codes = random_codes(images.shape[0], dim, seed)
    else:
        raise ValueError(f"init must be 'pca' or 'random', got {method!r}")
    return project(codes.contiguous())

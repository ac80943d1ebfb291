"""Plain PyTorch versions of every kernel: obviously correct, unfused, slow.

Used as the baseline in ``benchmarks/`` and by the trainers when a user asks for reference ops
(``ops="reference"``). The tests carry their own independent oracles as well.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from . import _checks

# --------------------------------------------------------------------------------------------------
# Nearest-neighbour argmin
# --------------------------------------------------------------------------------------------------


def nn_argmin_cdist(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``torch.cdist(queries, keys).argmin(1)``: the N x M matrix is materialised."""
    return torch.cdist(queries, keys).argmin(1)


def nn_argmin_scores_reference(
    queries: torch.Tensor, keys: torch.Tensor, *, tile: int = 8192
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query row the best score ``||k||^2 - 2 q.k`` ((N,), float64 for float64 inputs, else float32)
    and its lowest index within ``keys`` (int64, (N,)): tiled ``addmm`` and a running minimum, memory
    O(N * tile). Finite inputs.

    The ``scores`` contract of :class:`glann_ext.ops.nn_argmin.RunningArgmin`. Ties go to the lowest
    index: ``min`` returns the first minimum of a tile, and a later tile must be strictly lower to win.
    """
    n = queries.shape[0]
    acc = torch.float64 if queries.dtype == torch.float64 else torch.float32
    best = torch.full((n,), math.inf, dtype=acc, device=queries.device)
    best_idx = torch.zeros(n, dtype=torch.int64, device=queries.device)
    q = queries.to(acc)
    for start in range(0, keys.shape[0], tile):
        k = keys[start : start + tile].to(acc)
        scores = torch.addmm((k * k).sum(1).unsqueeze(0), q, k.t(), alpha=-2.0)
        val, idx = scores.min(1)
        better = val < best
        best = torch.where(better, val, best)
        best_idx = torch.where(better, idx + start, best_idx)
    return best, best_idx


def nn_argmin_addmm(
    queries: torch.Tensor, keys: torch.Tensor, *, tile: int = 8192, return_distances: bool = False
):
    """:func:`nn_argmin_scores_reference`'s index: the N x M matrix is never whole. Distances, when asked
    for, are recomputed exactly as ``sum((q - k)^2)``. Refuses what the fused op refuses (no keys; rows
    whose squared norm exceeds a quarter of the score type's maximum, where the scores could overflow)."""
    if keys.shape[0] == 0:
        raise ValueError("keys must contain at least one row, got M=0")
    _checks.check_squared_norms("nn_argmin", "queries", queries)
    _checks.check_squared_norms("nn_argmin", "keys", keys)
    _, best_idx = nn_argmin_scores_reference(queries, keys, tile=tile)
    if not return_distances:
        return best_idx
    acc = torch.float64 if queries.dtype == torch.float64 else torch.float32
    return best_idx, ((queries.to(acc) - keys[best_idx].to(acc)) ** 2).sum(1)


def nn_argmin_exact(queries: torch.Tensor, keys: torch.Tensor, *, return_distances: bool = False):
    """Exact argmin from direct differences in float64 (no norm expansion): the test oracle."""
    q = queries.double()
    k = keys.double()
    rows = max(1, (1 << 22) // max(1, k.shape[0] * k.shape[1]))
    idx, dist = [], []
    for start in range(0, q.shape[0], rows):
        d = ((q[start : start + rows, None, :] - k[None, :, :]) ** 2).sum(-1)
        v, i = d.min(1)
        idx.append(i)
        dist.append(v)
    best_idx = torch.cat(idx) if idx else torch.zeros(0, dtype=torch.int64, device=queries.device)
    if not return_distances:
        return best_idx
    return best_idx, (torch.cat(dist) if dist else q.new_zeros(0))


# --------------------------------------------------------------------------------------------------
# Laplacian-pyramid L1 loss (definition: see glann_ext.ops.laplacian)
# --------------------------------------------------------------------------------------------------

BLUR_TAPS = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)
MAX_DEFAULT_LEVELS = 5


def default_levels(height: int, width: int) -> int:
    """1 + floor(log2(min(H, W))), capped at MAX_DEFAULT_LEVELS."""
    return max(1, min(MAX_DEFAULT_LEVELS, 1 + math.floor(math.log2(max(1, min(height, width))))))


def default_level_weights(levels: int) -> list[float]:
    """The GLO paper's level weights 4^j (= 2^(2j)), j = 0 the finest level."""
    return [4.0**j for j in range(levels)]


def reflect101(index: torch.Tensor, n: int) -> torch.Tensor:
    """Mirror indices about the edges without repeating the edge sample (OpenCV BORDER_REFLECT_101)."""
    if n == 1:
        return torch.zeros_like(index)
    period = 2 * (n - 1)
    index = index.abs() % period
    return torch.where(index >= n, period - index, index)


def _down1d(t: torch.Tensor, dim: int) -> torch.Tensor:
    n = t.shape[dim]
    base = 2 * torch.arange((n + 1) // 2, device=t.device)
    return sum(w * t.index_select(dim, reflect101(base + a - 2, n)) for a, w in enumerate(BLUR_TAPS))


def _up1d(t: torch.Tensor, dim: int, n_out: int) -> torch.Tensor:
    shape = list(t.shape)
    shape[dim] = n_out
    zeros = t.new_zeros(shape).index_copy(dim, 2 * torch.arange(t.shape[dim], device=t.device), t)
    base = torch.arange(n_out, device=t.device)
    return sum(
        2 * w * zeros.index_select(dim, reflect101(base + a - 2, n_out)) for a, w in enumerate(BLUR_TAPS)
    )


def pyramid_down(g: torch.Tensor) -> torch.Tensor:
    """Blur with the 5-tap binomial kernel (reflect-101 border) and keep every second pixel."""
    return _down1d(_down1d(g, -2), -1)


def pyramid_up(g: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-insert to (height, width) and blur with 4x the binomial kernel (reflect-101 border)."""
    return _up1d(_up1d(g, -2, height), -1, width)


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Levels L^0 (finest) .. L^{J-1} (the low-pass residual G^{J-1})."""
    gauss = [x]
    for _ in range(levels - 1):
        gauss.append(pyramid_down(gauss[-1]))
    laps = [g - pyramid_up(gn, g.shape[-2], g.shape[-1]) for g, gn in zip(gauss[:-1], gauss[1:])]
    return [*laps, gauss[-1]]


def laplacian_pyramid_loss_reference(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    levels: int | None = None,
    reduction: str = "mean",
    level_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """sum_j w_j |L^j(x) - L^j(y)|_1 (w_j = level_weights[j], default 4^j), normalised per pixel of level 0
    for 'mean' and 'none'. Refuses empty inputs, as the fused loss does."""
    b, c, h, w = x.shape
    if x.numel() == 0:
        raise ValueError(f"x must not be empty, got shape {tuple(x.shape)}")
    if levels is None:  # as the fused loss: one level per weight given, else the image size picks
        levels = default_levels(h, w) if level_weights is None else len(level_weights)
    weights = default_level_weights(levels) if level_weights is None else list(level_weights)
    if len(weights) != levels:
        raise ValueError(f"level_weights must hold {levels} values (one per level), got {len(weights)}")
    laps = laplacian_pyramid(x - y, levels)
    per_sample = sum(wj * lap.abs().sum(dim=(1, 2, 3)) for wj, lap in zip(weights, laps))
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample / (c * h * w)
    return per_sample.sum() / (b * c * h * w)


# --------------------------------------------------------------------------------------------------
# Unit-sphere projection
# --------------------------------------------------------------------------------------------------


def project_to_sphere_reference(z: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm; an all-zero row becomes (1, ..., 1) / sqrt(D). Each row is divided by
    its largest magnitude first (in float64), so float64 rows whose sum of squares would under- or
    overflow (|z| below ~1e-154 or above ~1e154) project correctly too."""
    if z.numel() == 0:
        return z.clone()
    zz = z.double()
    amax = zz.abs().amax(1, keepdim=True)
    unit = zz / torch.where(amax == 0, torch.ones_like(amax), amax)
    norm = unit.norm(dim=1, keepdim=True)
    out = (unit / torch.where(norm == 0, torch.ones_like(norm), norm)).to(z.dtype)
    fill = torch.full_like(z, 1.0 / math.sqrt(z.shape[1]))
    return torch.where(norm == 0, fill, out)


def fused_latent_adam_reference(
    table: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    indices: torch.Tensor,
    grad: torch.Tensor,
    *,
    step: int,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    project: bool = True,
) -> torch.Tensor:
    """``torch.optim.SparseAdam``'s functional step on the sparse grad ``(indices, grad)``, then the touched
    rows re-projected with :func:`project_to_sphere_reference`. Updates the tensors in place."""
    sparse = torch.sparse_coo_tensor(
        indices.unsqueeze(0), grad, tuple(table.shape), check_invariants=True
    ).coalesce()
    with torch.no_grad():
        torch.optim._functional.sparse_adam(
            [table], [sparse], [exp_avg], [exp_avg_sq], [step],
            eps=eps, beta1=beta1, beta2=beta2, lr=lr, maximize=False,
        )  # fmt: skip
        if project and sparse._nnz():
            rows = sparse._indices()[0]
            table[rows] = project_to_sphere_reference(table[rows])
    return table


def fused_latent_sgd_reference(
    table: torch.Tensor, indices: torch.Tensor, grad: torch.Tensor, *, lr: float, project: bool = True
) -> torch.Tensor:
    """``torch.optim.SGD(lr)``'s step with a sparse grad (``index_add_`` with ``alpha=-lr``), then the
    touched rows re-projected with :func:`project_to_sphere_reference`. Updates ``table`` in place."""
    with torch.no_grad():
        table.index_add_(0, indices, grad, alpha=-lr)
        if project and indices.numel():
            rows = torch.unique(indices)
            table[rows] = project_to_sphere_reference(table[rows])
    return table

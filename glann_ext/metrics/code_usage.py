"""How a second stage's samples use the GLO codes: where GLANN's samples lose against the ceiling.

The reconstruction ceiling (G of the training codes) is what a second stage that hit every code exactly
would reach. Samples fall short of it in two measurable ways (docs/studies.md, "Where the gap to the
ceiling is"): their mass over the codes is uneven (some codes are the nearest code of many samples, isolated
ones of few), and they lie farther from every code than the codes lie from each other, where G decodes
blends. :func:`code_usage` measures both in latent space, with an even-use reference drawn at the same sizes.
Distances are Euclidean between latent vectors; nearest codes come from the exact
:func:`glann_ext.nn_argmin` (ties to the lowest index).

It also compares the samples' first two moments with the codes' (:func:`moment_ratios`): how far their mean
lies from the codes' mean, and their variance over the codes' along the codes' leading and last principal
directions. At the quality report's budget GLANN's samples hold 0.77-0.97x the codes' variance along the
leading directions (those that carry an image's class) and, drawn 1.5 wide through ``T``'s BatchNorm, sit off
the codes' mean; at the budgets users train at they hold 0.65-0.9x along the last ones (docs/studies.md,
"`T`'s first two moments").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._args import as_finite_real, checked_int, checked_seed
from ..ops.nn_argmin import nn_argmin
from ._checks import as_float_matrix, check_squarable
from .mixtures import reverse_kl_uniform


@dataclass(frozen=True)
class CodeUsage:
    """Samples' use of the codes (plain numbers; see :func:`code_usage`)."""

    n_samples: int
    n_codes: int
    codes_hit: float  # share of the codes that are the nearest code of at least one sample
    codes_hit_even: float  # the same for as many samples spread evenly (uniform draws over the codes)
    kl_over_codes: float  # KL(histogram of the samples' nearest codes || uniform)
    kl_over_codes_even: float  # the same for uniform draws: the floor that sampling noise alone gives
    busiest_code: int  # the largest number of samples sharing one nearest code
    isolated_share: (
        float  # mean count of the most isolated tenth of the codes / the others' mean count (1 if all tie)
    )
    sample_code_median: (
        float  # median distance from a sample to its nearest code (the lower median for even n)
    )
    sample_code_q10: float  # 10% quantile of that distance
    code_spacing: float  # median (lower, for even n) distance from a code to its nearest other code
    mean_offset: float  # distance between the samples' mean and the codes' mean
    code_mean_norm: float  # norm of the codes' mean (the offset's scale)
    variance_leading: float  # samples' / codes' variance along the codes' leading tenth of principal axes
    variance_trailing: float  # the same along their last tenth (both NaN for fewer than 2 samples)


def nearest_other_code(
    codes: torch.Tensor, k: int = 1, queries: torch.Tensor | None = None, block: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each code in ``queries`` (indices; default all), the index of its k-th nearest *other* code and
    the distance to it (float64). A duplicate of a code is another code, at distance 0. ``block`` queries
    at a time (default: as many as keep each block's distance matrix near 128 MB)."""
    keys = as_float_matrix("codes", codes, min_rows=2)
    check_squarable("codes", keys)  # else the distances came back inf
    n = keys.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise ValueError(f"k must be an int in [1, {n - 1}] for {n} codes, got {k!r}")
    if queries is None:
        queries = torch.arange(n)
    elif not isinstance(queries, torch.Tensor) or queries.dim() != 1 or queries.dtype != torch.int64:
        raise TypeError(f"queries must be a 1-D int64 tensor of code indices, got {queries!r:.80}")
    elif queries.numel() and not (int(queries.min()) >= 0 and int(queries.max()) < n):
        raise ValueError(
            f"queries must index the {n} codes (0..{n - 1}), got values in [{int(queries.min())}, {int(queries.max())}]"
        )
    if block is not None:
        block = checked_int("block", block, 1)
    idx, dist = _nearest_others(keys, k, queries, block)
    return idx[:, -1], dist[:, -1]


def _nearest_others(
    keys: torch.Tensor, k: int, queries: torch.Tensor, block: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and distances (float64) of the k nearest other codes of each query, nearest first, (q, k)
    each; ``keys`` float64 (N, d), arguments already checked."""
    block = block or max(1, 16_000_000 // keys.shape[0])
    idx, dist = [], []
    for part in queries.split(block):
        d = torch.cdist(keys[part], keys)
        d[torch.arange(len(part)), part] = math.inf  # not itself
        v, i = d.topk(k, dim=1, largest=False)
        idx.append(i)
        dist.append(v)
    return torch.cat(idx), torch.cat(dist)


def code_usage(
    samples: torch.Tensor, codes: torch.Tensor, *, spacing_queries: int = 4096, seed: int = 0
) -> CodeUsage:
    """How latent ``samples`` (n, d), e.g. ``GLANN.map_noise(noise)``, use the training ``codes`` (N, d).

    Counts each code's samples (those whose nearest code it is): the share of codes hit, KL of that histogram
    from uniform, the busiest code, and how the most isolated tenth of the codes (by distance to their 5th
    nearest other code) fare against the rest; beside the hit share and KL of ``n`` uniform draws over the
    codes (seeded by ``seed``), which is what even use with this many samples gives. Distances: from each
    sample to its nearest code (median, 10% quantile) against the codes' spacing (median distance to the
    nearest other code; over ``spacing_queries`` codes drawn with ``seed`` when there are more). Moments:
    :func:`moment_ratios`.
    """
    z64 = as_float_matrix("samples", samples)
    c64 = as_float_matrix("codes", codes, columns=z64.shape[1], min_rows=2)
    check_squarable("samples", z64)  # before nn_argmin, whose error names its own "queries" and "keys"
    check_squarable("codes", c64)
    spacing_queries = checked_int("spacing_queries", spacing_queries, 1)
    n, big_n = z64.shape[0], c64.shape[0]
    g = torch.Generator().manual_seed(checked_seed(seed))
    idx, sq = nn_argmin(z64.contiguous(), c64.contiguous(), return_distances=True)  # float64
    counts = torch.bincount(idx, minlength=big_n)
    even = torch.bincount(torch.randint(big_n, (n,), generator=g), minlength=big_n)
    queries = (
        torch.arange(big_n)
        if big_n <= spacing_queries
        else torch.randperm(big_n, generator=g)[:spacing_queries]
    )
    # one search gives both: the nearest other code (the spacing) and the 5th (isolation)
    _, others = _nearest_others(c64, min(5, big_n - 1), queries)
    spacing, fifth = others[:, 0], others[:, -1]
    sub = counts[queries]
    isolated = fifth >= torch.quantile(fifth, 0.9)
    # every code tied at the 0.9 quantile (grid codes): none is more isolated than the rest, share 1
    rest = sub[~isolated].double().mean() if bool((~isolated).any()) else sub.double().mean()
    dist = sq.double().clamp_min(0).sqrt()
    return CodeUsage(
        n_samples=n,
        n_codes=big_n,
        codes_hit=float((counts > 0).double().mean()),
        codes_hit_even=float((even > 0).double().mean()),
        kl_over_codes=reverse_kl_uniform(counts),
        kl_over_codes_even=reverse_kl_uniform(even),
        busiest_code=int(counts.max()),
        isolated_share=float(sub[isolated].double().mean() / rest),
        sample_code_median=float(dist.median()),
        sample_code_q10=float(torch.quantile(dist, 0.1)),
        code_spacing=float(spacing.median()),
        **_moments(z64, c64, 0.1),  # the inputs are checked above
    )


def moment_ratios(samples: torch.Tensor, codes: torch.Tensor, share: float = 0.1) -> dict[str, float]:
    """The first two moments of ``samples`` (n, d) against those of ``codes`` (N >= 2, d), in float64:
    ``mean_offset`` (the distance between their means), ``code_mean_norm``, and the samples' variance over the
    codes' along the codes' principal directions, averaged over the leading and over the last ``share`` of
    them (at least one each): ``variance_leading``, ``variance_trailing``. Directions along which the codes do
    not vary (eigenvalue at most 1e-12 of the largest) are left out; the ratios are NaN for fewer than 2
    samples, and 1 where the samples' covariance is the codes'."""
    z = as_float_matrix("samples", samples)
    c = as_float_matrix("codes", codes, columns=z.shape[1], min_rows=2)
    check_squarable("samples", z)  # variances square them
    check_squarable("codes", c)
    number = as_finite_real(share)  # numpy and 0-d tensor numbers too
    if number is None or not 0 < number <= 1:
        raise ValueError(f"share must be a number in (0, 1], got {share!r}")
    return _moments(z, c, number)


def _moments(z: torch.Tensor, c: torch.Tensor, share: float) -> dict[str, float]:
    """:func:`moment_ratios` of float64 matrices already checked (as :func:`_nearest_others` is to
    :func:`nearest_other_code`)."""
    mean_c = c.mean(0)
    # torch.cov of one variable is 0-d: reshape keeps the d x d form for d = 1 too
    eigvals, eigvecs = torch.linalg.eigh(torch.cov(c.T).reshape(c.shape[1], c.shape[1]))
    keep = eigvals > 1e-12 * eigvals.max()
    eigvals, eigvecs = eigvals[keep].flip(0), eigvecs[:, keep].flip(1)  # leading first
    k = max(1, round(share * len(eigvals)))
    leading = trailing = math.nan
    if len(z) >= 2 and len(eigvals):  # else no variance to compare (one sample, or codes all equal)
        ratio = ((z - z.mean(0)) @ eigvecs).var(0) / eigvals
        leading, trailing = float(ratio[:k].mean()), float(ratio[-k:].mean())
    return {
        "mean_offset": float((z.mean(0) - mean_c).norm()),
        "code_mean_norm": float(mean_c.norm()),
        "variance_leading": leading,
        "variance_trailing": trailing,
    }

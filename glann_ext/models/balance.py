"""Balanced sampling for GLANN: rejection sampling that evens the mapping's mass over the training codes.

IMLE makes every code pull its nearest sample, but nothing in its objective makes ``T`` send each code the
same share of its draws: at the quality report's budget, of 30,000 draws of ``T`` the busiest code is the
nearest of 12-15 times the mean share and 6% of the codes of none (docs/studies.md, "Where the gap to the
ceiling is"). Balanced sampling corrects that after training, exactly and without touching ``T``:

1. **Calibration** (once per model): ``draws_per_code x N`` seeded draws of ``project(T(e))``; ``u_c`` counts
   the draws whose nearest code (the exact fused search) is code ``c``; ``tau`` is the ``quantile`` of the
   non-zero counts. Code ``c`` gets the acceptance ``a_c = min(1, tau / max(u_c, 1))``.
2. **Sampling**: draw ``e``, find the nearest code ``c`` of ``project(T(e))`` and keep the draw with probability
   ``a_c``. Codes ``T`` over-serves are thinned to about ``tau`` draws' worth; codes it serves less keep all of
   theirs. The samples stay ``T``'s own outputs (not codes, not copies): only how often each region of ``T``'s
   output is drawn changes.

Both steps are deterministic given their seeds, and a sample of ``n`` is the first ``n`` of a larger one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from glann_ext import seeding
from glann_ext.errors import UsageError

# TrainConfig's defaults (``balance_draws``, ``balance_quantile``); also what a model whose config lacks them
# calibrates with when balanced sampling is asked for explicitly
DEFAULT_DRAWS_PER_CODE = 10.0
DEFAULT_QUANTILE = 0.25
CALIBRATION_CHUNK = seeding.BLOCK_ROWS  # draws mapped and searched at a time: one seeded block
SAMPLING_CHUNK = 4_096  # draws per round of rejection sampling (fixed: samples must not depend on n)
# rejection sampling gives up (one-line error) past 16 rounds plus this many draws per wanted sample: a forged
# or broken acceptance table (1e-30 everywhere) must not loop for ever
MAX_DRAWS_PER_SAMPLE = 10_000


def usage_counts(
    map_noise: Callable[[torch.Tensor], torch.Tensor],
    search: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    codes: torch.Tensor,
    noise_dim: int,
    draws: int,
    seed: int,
) -> torch.Tensor:
    """int64 (N,): how many of ``draws`` seeded noise vectors map (``map_noise``) nearest to each of the
    ``codes`` (N, d), by ``search(queries, keys) -> nearest key index``."""
    counts = torch.zeros(len(codes), dtype=torch.int64)
    for start in range(0, draws, CALIBRATION_CHUNK):
        rows = range(start, min(start + CALIBRATION_CHUNK, draws))
        e = seeding.normal_rows(rows, draws, noise_dim, seed, "balance")
        nearest = search(map_noise(e), codes).cpu()
        counts += torch.bincount(nearest, minlength=len(codes))
    return counts


def acceptance(counts: torch.Tensor, quantile: float) -> torch.Tensor:
    """float32 (N,): the probability of keeping a draw nearest to each code, ``min(1, tau / max(u_c, 1))``
    with ``tau`` the ``quantile`` (in [0, 1]) of the non-zero ``counts``; all ones if no code was hit."""
    hit = counts[counts > 0].double()
    if len(hit) == 0:
        return torch.ones(len(counts))
    tau = float(torch.quantile(hit, quantile))
    return (tau / counts.double().clamp_min(1)).clamp(max=1).float()


def rejection_sample(
    map_noise: Callable[[torch.Tensor], torch.Tensor],
    search: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    codes: torch.Tensor,
    accept: torch.Tensor,
    noise_dim: int,
    n: int,
    seed: int,
) -> torch.Tensor:
    """``n`` latent points ``project(T(e))`` (n, d), each draw kept with the acceptance of its nearest code.

    Noise comes in rounds of :data:`SAMPLING_CHUNK` draws from ``generator(seed, "sample")`` and the
    coin flips from ``generator(seed, "accept")``, so the result depends on (model, seed) only and the first
    ``k`` of ``n`` samples are the samples of ``k``. Every acceptance is positive, so the loop ends; its
    expected rounds are ``n / (SAMPLING_CHUNK x mean acceptance of T's draws)``.
    """
    noise_gen, coin_gen = seeding.generator(seed, "sample"), seeding.generator(seed, "accept")
    accept = accept.cpu()  # the coin flips are drawn on the CPU
    kept: list[torch.Tensor] = []
    have = 0
    max_rounds = 16 + math.ceil(n * MAX_DRAWS_PER_SAMPLE / SAMPLING_CHUNK)
    for _ in range(max_rounds):
        if have >= n:
            break
        z = map_noise(torch.randn(SAMPLING_CHUNK, noise_dim, generator=noise_gen))
        nearest = search(z, codes).cpu()
        coins = torch.rand(SAMPLING_CHUNK, generator=coin_gen)
        keep = coins < accept[nearest]
        kept.append(z[keep.to(z.device)])
        have += int(keep.sum())
    if have < n:
        raise UsageError(
            f"balanced sampling kept {have} of {max_rounds * SAMPLING_CHUNK} draws for {n} samples: the "
            f"model's code_accept (mean {float(accept.double().mean()):.3g}) is too small; recalibrate it "
            "(calibrate_sampler(refresh=True)) or sample plainly"
        )
    if not kept:
        return codes.new_zeros(0, codes.shape[1])
    return torch.cat(kept)[:n]


def min_acceptance(n_codes: int, max_draws_per_code: float) -> float:
    """The smallest acceptance calibration can give with at most ``max_draws_per_code``: ``tau >= 1`` and no
    code is the nearest of more than all the draws."""
    return 1.0 / calibration_draws(n_codes, max_draws_per_code)


def calibration_draws(n_codes: int, draws_per_code: float) -> int:
    """The number of calibration draws: ``draws_per_code`` per code, at least one per code."""
    return max(n_codes, math.ceil(draws_per_code * n_codes))

"""Per-purpose random generators derived from the run seed, so that an epoch's shuffling and noise depend
only on (seed, stage, epoch) and a resumed run redraws exactly what the interrupted one drew."""

from __future__ import annotations

import torch

_STAGES = {"init": 1, "glo": 2, "imle": 3, "sample": 4, "invert": 5, "imle_precision": 6}


def generator(seed: int, stage: str, epoch: int = 0, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(
        (seed * 1_000_003 + _STAGES[stage] * 10_007 + epoch) % 2**63
    )


def epoch_permutation(n: int, seed: int, stage: str, epoch: int) -> torch.Tensor:
    """The order in which dataset indices are visited in ``epoch``: drawn on CPU, identical on any device."""
    return torch.randperm(n, generator=generator(seed, stage, epoch))


def batches(perm: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Full batches of ``perm`` (the remainder is dropped, as BatchNorm needs > 1 sample); one batch if
    fewer than ``batch_size`` items."""
    n = len(perm)
    if n <= batch_size:
        return [perm]
    return [perm[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]

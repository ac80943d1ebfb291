"""Stacked MNIST mode counting (VEEGAN, Srivastava et al. 2017; PacGAN, Lin et al. 2018), and the same
for any 10-class single-channel dataset (e.g. stacked Fashion-MNIST, labelled by a Fashion LeNet).

Three MNIST digits (or three items of another 10-class dataset) stacked as the channels of one image give
1000 modes. Each channel of a generated
image is labelled by a digit classifier; the mode id is ``100 * d0 + 10 * d1 + d2``. Reported: modes
covered (at least ``min_count`` samples, 1 in the papers) out of 1000, and
``KL(p_gen || U) = sum_{m: p_m > 0} p_m log(1000 p_m)`` (natural log, empty modes add 0).

That KL splits exactly in two (:func:`kl_split`), since the uniform over the 1000 modes is the product of three
uniform class shares: ``KL(p || U) = sum_c KL(p_c || U_10) + KL(p || p_0 x p_1 x p_2)``. The first part says
how uneven each channel's classes are (a generator that renders one class as another), the second how far the
channels are from independent (a sampler that repeats its training stacks' combinations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .._args import checked_seed
from ..data.arrays import check_fits_memory
from ._checks import as_images, check_not_meta, check_positive_int
from .mixtures import reverse_kl_uniform

NUM_MODES = 1000

Classifier = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class StackedModes:
    """Result of :func:`stacked_modes`; ``mode_ids`` (N,) and ``mode_counts`` (1000,); ``kl`` is
    ``kl_classes + kl_dependence`` (:func:`kl_split`)."""

    modes_covered: int
    num_modes: int
    kl: float
    mode_ids: torch.Tensor
    mode_counts: torch.Tensor
    kl_classes: float
    kl_dependence: float


@torch.no_grad()
def label_stacked(classifier: Classifier, images: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
    """Mode id ``100 d0 + 10 d1 + d2`` (int64, (N,)) of every (3, H, W) image, one classifier call per
    channel and batch; the classifier maps (n, 1, H, W) to (n, 10) logits."""
    if not callable(classifier):
        raise TypeError(f"classifier must be callable, got {type(classifier).__name__}")
    images = as_images("images", images, channels=3)
    batch_size = check_positive_int("batch_size", batch_size)
    ids = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size]
        mode = torch.zeros(batch.shape[0], dtype=torch.int64)
        for ch in range(3):
            logits = classifier(batch[:, ch : ch + 1])
            if not isinstance(logits, torch.Tensor) or logits.shape != (batch.shape[0], 10):
                got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise ValueError(f"classifier must return (n, 10) logits for n={batch.shape[0]}, got {got}")
            mode = mode * 10 + logits.argmax(1).cpu()
        ids.append(mode)
    return torch.cat(ids) if ids else torch.zeros(0, dtype=torch.int64)


def stacked_modes(
    classifier: Classifier, images: torch.Tensor, *, min_count: int = 1, batch_size: int = 1024
) -> StackedModes:
    """Modes covered out of 1000 and ``KL(p_gen || U)`` of generated stacked images (N, 3, H, W)."""
    min_count = check_positive_int("min_count", min_count)
    ids = label_stacked(classifier, images, batch_size=batch_size)
    counts = torch.bincount(ids, minlength=NUM_MODES)
    classes, dependence = kl_split(counts)
    return StackedModes(
        modes_covered=int((counts >= min_count).sum()),
        num_modes=NUM_MODES,
        kl=reverse_kl_uniform(counts),
        mode_ids=ids,
        mode_counts=counts,
        kl_classes=classes,
        kl_dependence=dependence,
    )


def kl_split(counts: torch.Tensor | np.ndarray) -> tuple[float, float]:
    """``KL(p || U)`` of a histogram over the 1000 stacked modes (``counts`` (1000,), mode ``100 c0 + 10 c1 +
    c2``) as ``(classes, dependence)``, which add up to it: ``classes = sum_c KL(p_c || U_10)`` over the three
    channels' class shares ``p_c``, ``dependence = KL(p || p_0 x p_1 x p_2)``, zero when the channels are
    independent. Natural log, empty modes add 0; ``(inf, inf)`` when every count is 0. A tensor or array."""
    check_not_meta("counts", counts)
    counts = torch.as_tensor(counts)
    if counts.shape != (NUM_MODES,):
        raise ValueError(f"counts must have shape ({NUM_MODES},), got {tuple(counts.shape)}")
    p = counts.double().reshape(10, 10, 10)
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
        raise ValueError("counts must be finite and >= 0 (a histogram of the modes)")
    total = float(p.sum())
    if total <= 0:
        return math.inf, math.inf
    p = p / total
    shares = [p.sum(dim=tuple(d for d in range(3) if d != c)) for c in range(3)]
    classes = sum(reverse_kl_uniform(q) for q in shares)  # each channel's 10 classes against uniform
    independent = shares[0][:, None, None] * shares[1][None, :, None] * shares[2][None, None, :]
    hit = p > 0  # a hit mode's channels all have positive shares, so ``independent`` is positive there
    dependence = float((p[hit] * (p[hit] / independent[hit]).log()).sum())
    return classes, max(dependence, 0.0)


def make_stacked(
    images: torch.Tensor, labels: torch.Tensor | None = None, *, num_samples: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stack random triples of single-channel images into (num_samples, 3, H, W).

    Triples are drawn independently and uniformly with replacement from a seeded generator, so the
    same ``seed`` gives the same dataset. ``images`` is (N, 1, H, W) or (N, H, W). Returns the stacked
    images (same dtype) and, if ``labels`` (N,) are given, the mode ids ``100 l0 + 10 l1 + l2``.
    """
    check_not_meta("images", images)
    check_not_meta("labels", labels)
    if isinstance(images, torch.Tensor) and images.dim() == 3:
        images = images.unsqueeze(1)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be (N, 1, H, W) or (N, H, W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images must not be empty")
    num_samples = check_positive_int("num_samples", num_samples)
    row_bytes = 3 * math.prod(images.shape[2:]) * images.element_size() + 3 * 8  # a stacked image, its triple
    check_fits_memory(f"num_samples = {num_samples:,} asks for", num_samples * row_bytes)
    g = torch.Generator().manual_seed(checked_seed(seed))
    idx = torch.randint(images.shape[0], (num_samples, 3), generator=g)
    stacked = images[idx.flatten()].reshape(num_samples, 3, *images.shape[2:])
    if labels is None:
        return stacked, None
    if not isinstance(labels, torch.Tensor) or labels.shape != (images.shape[0],):
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a ({images.shape[0]},) tensor like images, got {got}")
    if labels.dtype.is_floating_point or (
        labels.numel() and not (int(labels.min()) >= 0 and int(labels.max()) <= 9)
    ):
        lo, hi = (labels.min().item(), labels.max().item()) if labels.numel() else (None, None)
        raise ValueError(f"labels must be integer digits 0..9, got {str(labels.dtype)[6:]} in [{lo}, {hi}]")
    lab = labels.long()[idx]
    return stacked, lab[:, 0] * 100 + lab[:, 1] * 10 + lab[:, 2]

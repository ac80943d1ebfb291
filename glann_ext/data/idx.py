"""Reader for the IDX format of MNIST and Fashion-MNIST (plain or gzip-compressed)."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from . import arrays
from .errors import DataError

# IDX type codes (third byte of the magic number) -> numpy big-endian dtypes.
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MAX_IDX_DIMS = 16  # MNIST-like files have 1 (labels) or 3 (images)
_CHUNK = 1 << 20


def _read_up_to(f: BinaryIO, size: int) -> bytes:
    """At most ``size`` bytes of ``f``, read in chunks (a forged size allocates nothing up front)."""
    parts, have = [], 0
    while have < size:
        part = f.read(min(_CHUNK, size - have))
        if not part:
            break
        parts.append(part)
        have += len(part)
    return b"".join(parts)


def _read_into(f: BinaryIO, out: memoryview) -> int:
    """Fill ``out`` from ``f`` in chunks; the number of bytes read (less at the end of the stream)."""
    pos = 0
    while pos < len(out):
        got = f.readinto(out[pos : pos + _CHUNK])
        if not got:
            break
        pos += got
    return pos


def _header(path: Path, f: BinaryIO) -> tuple[np.dtype, tuple[int, ...]]:
    magic = _read_up_to(f, 4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {magic.hex() or 'empty file'})")
    ndim = magic[3]
    if ndim > MAX_IDX_DIMS:
        raise DataError(f"{path}: IDX header says {ndim} dimensions, at most {MAX_IDX_DIMS} are supported")
    dims = _read_up_to(f, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header ({4 + len(dims)} bytes, need {4 + 4 * ndim})")
    return np.dtype(_IDX_DTYPES[magic[2]]), tuple(
        int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim)
    )


def _read(path: Path, f: BinaryIO, limit: int | None = None) -> np.ndarray:
    """The array of the IDX stream ``f`` (its first ``limit`` rows with a limit): the header first, then
    exactly the data it announces, decompressed straight into the array (and one byte more, to tell trailing
    data; with a limit, nothing past the rows kept), so a gzip bomb is never decompressed past what the header
    promises, nor past the rows kept."""
    dtype, shape = _header(path, f)
    ndim = len(shape)
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    keep_shape = (limit, *shape[1:]) if shape and limit is not None and limit < shape[0] else shape
    keep, cap = math.prod(keep_shape) * dtype.itemsize, arrays.read_cap()
    if keep > cap:  # a gzip bomb's header: refused before anything is decompressed
        rows = "" if keep_shape == shape else f"; its first {keep_shape[0]} rows need {keep:,} bytes"
        raise DataError(
            f"{path}: IDX header says shape {shape} ({expected:,} bytes){rows}, more than this machine's "
            f"memory ({cap:,} bytes)"
        )
    buf = np.empty(keep, np.uint8)
    got = _read_into(f, memoryview(buf))
    if got < keep or (keep == expected and f.read(1)):
        problem = "truncated" if got < keep else "has trailing bytes"
        held = f"file holds {4 + 4 * ndim + got} bytes" if got < keep else "file holds more"
        raise DataError(
            f"{path}: IDX data {problem}: header says shape {shape} ({4 + 4 * ndim + expected} bytes), {held}"
        )
    arr = buf.view(dtype).reshape(keep_shape)
    if not dtype.isnative:  # big-endian values: swapped in place, the same bytes viewed as native
        arr = arr.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return arr


def read_idx(path: str | Path, limit: int | None = None) -> np.ndarray:
    """The array stored in IDX file ``path`` (its first ``limit`` rows with a limit: only those are read or
    decompressed); raises :class:`DataError` naming the file on any defect."""
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            if raw.read(2) != b"\x1f\x8b":  # gzip magic, whatever the file name says
                raw.seek(0)
                return _read(path, raw, limit)
            raw.seek(0)
            try:
                with gzip.GzipFile(fileobj=raw) as f:
                    return _read(path, f, limit)
            except (OSError, EOFError, zlib.error) as exc:
                raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc.strerror or exc})") from exc

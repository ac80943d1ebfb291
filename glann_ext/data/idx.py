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


def _read(path: Path, f: BinaryIO) -> np.ndarray:
    """The array of the IDX stream ``f``: the header first, then exactly the data it announces (and one byte
    more, to tell trailing data), so a gzip bomb is never decompressed past what the header promises."""
    magic = _read_up_to(f, 4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {magic.hex() or 'empty file'})")
    dtype = np.dtype(_IDX_DTYPES[magic[2]])
    ndim = magic[3]
    if ndim > MAX_IDX_DIMS:
        raise DataError(f"{path}: IDX header says {ndim} dimensions, at most {MAX_IDX_DIMS} are supported")
    dims = _read_up_to(f, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header ({4 + len(dims)} bytes, need {4 + 4 * ndim})")
    shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    cap = arrays.read_cap()
    if expected > cap:  # a gzip bomb's header: refused before anything is decompressed
        raise DataError(
            f"{path}: IDX header says shape {shape} ({expected:,} bytes), more than this machine's memory "
            f"({cap:,} bytes)"
        )
    data = _read_up_to(f, expected + 1)
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has trailing bytes"
        held = f"file holds {4 + 4 * ndim + len(data)} bytes" if len(data) < expected else "file holds more"
        raise DataError(
            f"{path}: IDX data {problem}: header says shape {shape} ({4 + 4 * ndim + expected} bytes), {held}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in IDX file ``path``; raises :class:`DataError` naming the file on any defect."""
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            if raw.read(2) != b"\x1f\x8b":  # gzip magic, whatever the file name says
                raw.seek(0)
                return _read(path, raw)
            raw.seek(0)
            try:
                with gzip.GzipFile(fileobj=raw) as f:
                    return _read(path, f)
            except (OSError, EOFError, zlib.error) as exc:
                raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc.strerror or exc})") from exc

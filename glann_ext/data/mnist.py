"""MNIST and Fashion-MNIST: finding the IDX files locally, or downloading them with a checksum."""

from __future__ import annotations

import glob
import hashlib
import os
import urllib.request
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .._io import TEMP_NAME, TEMP_SUFFIX, atomic_write, cache_root, remove_if_stale
from .errors import DataError
from .idx import read_idx

ENV_VAR = "GLANN_DATA"
CACHE_DIR = cache_root()
DEBIAN_DIRS = {
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
    "mnist": Path("/usr/share/datasets/mnist"),
}

# Official sources and the MD5 of the official .gz files (as torchvision checks them).
SOURCES = {
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
}


def _image_file(split: str) -> str:
    return ("train" if split == "train" else "t10k") + "-images-idx3-ubyte"


def candidate_dirs(name: str, root: str | Path | None = None) -> list[Path]:
    """Where the files of dataset ``name`` are looked for, in order: ``root`` and its ``name`` subfolder only,
    when a root is named (another copy must not stand in for the one the user named); else $GLANN_DATA (and
    its ``name`` subfolder), the cache folder, the Debian package location."""
    if root is not None:
        return [Path(root), Path(root) / name]
    dirs: list[Path] = []
    if os.environ.get(ENV_VAR):
        dirs += [Path(os.environ[ENV_VAR]), Path(os.environ[ENV_VAR]) / name]
    dirs += [CACHE_DIR / name, DEBIAN_DIRS[name]]
    return dirs


def _image_file_names(split: str) -> tuple[str, ...]:
    stem = _image_file(split)
    return stem + ".gz", stem, stem.replace("-idx3-", ".idx3-")


def find_images_file(name: str, split: str = "train", root: str | Path | None = None) -> Path | None:
    """The first existing images file (``.gz`` or uncompressed) of ``name``/``split``, or None. A folder of
    such a name is passed over (a Kaggle download of MNIST holds ``train-images-idx3-ubyte/`` beside the file
    ``train-images.idx3-ubyte``); a FIFO or a device is a :class:`DataError`: neither read (a FIFO would
    block) nor passed over for a download into its folder."""
    for d in candidate_dirs(name, root):
        for fname in _image_file_names(split):
            path = d / fname
            if path.is_file():
                return path
            if path.exists() and not path.is_dir():
                raise DataError(f"{path}: not a regular file (a FIFO or a device); expected IDX images")
    return None


def _discard(made: list[Path]) -> None:
    """The folders a failed download made (deepest first) that nothing else has come to fill."""
    for folder in made:
        try:
            folder.rmdir()
        except OSError:  # not empty (another download's file): kept, and so its parents
            return


def download(name: str, fname: str, dest_dir: Path = CACHE_DIR) -> Path:
    """Download one official file into ``dest_dir/name`` with a progress bar; verify its MD5. The file is
    written as every file is (:func:`~glann_ext._io.atomic_write`: a temp file of its own, locked until it is
    in place), so two trainings started together on a fresh machine fetch side by side, and a killed
    download's temp file goes at the next."""
    base, sums = SOURCES[name]
    out_dir = dest_dir / name
    made = [d for d in (out_dir, *out_dir.parents) if not d.exists()]  # the folders this call creates
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / fname
    try:
        for stale in out_dir.glob(f"{glob.escape(fname)}.*{TEMP_SUFFIX}"):  # killed downloads' of this file
            if TEMP_NAME.fullmatch(stale.name):  # (never a live one's, nor another file of the folder)
                remove_if_stale(stale)
        atomic_write(dest, lambda out: _fetch(base + fname, out, fname, sums[fname]))
    except BaseException as exc:  # a Ctrl-C too: no folder is left behind
        _discard(made)
        if not isinstance(exc, OSError):
            raise
        looked = [out_dir] if dest_dir != CACHE_DIR else candidate_dirs(name)
        raise DataError(
            f"{name}: files not found locally ({', '.join(map(str, looked))}) and download of {base + fname} "
            f"into {out_dir} failed ({exc.strerror or exc}); put the IDX files in --data-root, or set {ENV_VAR}"
        ) from exc
    return dest


def _fetch(url: str, out: BinaryIO, name: str, md5: str) -> None:
    """Stream ``url`` into ``out`` with a progress bar, checking the bytes' MD5 as they pass."""
    from tqdm import tqdm

    digest = hashlib.md5()
    with urllib.request.urlopen(url, timeout=60) as resp:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=name) as bar:
            for block in iter(lambda: resp.read(1 << 16), b""):
                out.write(block)
                digest.update(block)
                bar.update(len(block))
    if digest.hexdigest() != md5:
        raise DataError(f"{url}: checksum mismatch (expected MD5 {md5}); download discarded")


def load_mnist_like(
    name: str,
    split: str = "train",
    root: str | Path | None = None,
    allow_download: bool = True,
    limit: int | None = None,
) -> np.ndarray:
    """uint8 images (N, 28, 28) of MNIST or Fashion-MNIST (the first ``limit`` only, the only ones read), from
    local files or (if allowed) a download."""
    return read_mnist_images(mnist_images_file(name, split, root, allow_download), limit)


def mnist_images_file(
    name: str, split: str = "train", root: str | Path | None = None, allow_download: bool = True
) -> Path:
    """The IDX images file :func:`load_mnist_like` reads (found locally, else downloaded if allowed). A named
    ``root`` is the only place looked in (another copy must not stand in for the one the user named): a file
    missing there is downloaded into its ``name`` subfolder when allowed, else a :class:`DataError` naming
    the root and the file names looked for."""
    if name not in SOURCES:
        raise DataError(f"unknown IDX dataset {name!r}; expected one of {sorted(SOURCES)}")
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    if root is not None and not Path(root).is_dir():  # a typo must not fall back to another copy silently
        raise DataError(f"data_root {root}: no such folder")
    path = find_images_file(name, split, root)
    if path is not None:
        return path
    if not allow_download:
        if root is not None:
            raise DataError(
                f"data_root {root}: no {name} {split} images file in it or in its {name}/ subfolder (looked "
                f"for {', '.join(_image_file_names(split))})"
            )
        raise DataError(f"{name} {split} images not found in {', '.join(map(str, candidate_dirs(name)))}")
    return download(name, _image_file(split) + ".gz", CACHE_DIR if root is None else Path(root))


def read_mnist_images(path: Path, limit: int | None = None) -> np.ndarray:
    """The uint8 (N, 28, 28) images of an MNIST-like IDX file (the first ``limit``), else a :class:`DataError`."""
    images = read_idx(path, limit)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DataError(
            f"{path}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}"
        )
    return images

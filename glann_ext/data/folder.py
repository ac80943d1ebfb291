"""A folder of PNG/JPEG images, resized and centre-cropped to a square size with Pillow."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def list_images(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (recursive, sorted by path): the dataset's row order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    root = folder.resolve()
    for p in files:
        target = p.resolve()
        if not target.is_relative_to(root):
            raise DataError(f"{p}: a link to {target}, outside the image folder {root}")
    if not files:
        raise DataError(f"{folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def load_folder(folder: str | Path | Sequence[Path], image_size: int, channels: int = 3) -> np.ndarray:
    """uint8 array (N, H, W, C) of every image under ``folder`` (recursive, sorted by path), or of the
    given image files in their order.

    Each image is resized so that its short side is ``image_size`` and centre-cropped to a square.
    """
    from PIL import Image, UnidentifiedImageError

    files = list(folder) if isinstance(folder, (list, tuple)) else list_images(folder)
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise DataError(f"channels must be 1 or 3 for image folders, got {channels}")
    out = np.empty((len(files), image_size, image_size, channels), dtype=np.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as im:
                im = _eight_bit(im, path).convert(mode)
                w, h = im.size
                scale = image_size / min(w, h)
                im = im.resize(
                    (max(image_size, round(w * scale)), max(image_size, round(h * scale))),
                    Image.Resampling.BICUBIC,
                )
                left = (im.size[0] - image_size) // 2
                top = (im.size[1] - image_size) // 2
                im = im.crop((left, top, left + image_size, top + image_size))
                out[i] = np.asarray(im).reshape(image_size, image_size, channels)
        except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
            raise DataError(f"{path}: cannot decode image ({exc})") from exc
    return out


def _eight_bit(im, path: Path):
    """``im`` with 16-bit grey ("I;16*", or "I" as Pillow opens 16-bit PNGs) scaled to 8 bits (v / 257)
    rather than clipped at 255 by ``convert``; other modes as they are."""
    from PIL import Image

    if not (im.mode == "I" or im.mode.startswith("I;16")):
        return im
    a = np.asarray(im).astype(np.int64)
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise DataError(f"{path}: integer pixels must lie in [0, 65535], got [{a.min()}, {a.max()}]")
    return Image.fromarray(np.rint(a / 257.0).astype(np.uint8), "L")

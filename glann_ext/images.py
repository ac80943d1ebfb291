"""Saving image batches as PNG grids with Pillow."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ._io import atomic_write
from .errors import UsageError


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 (H, W, C) mosaic of ``images`` (B, C, h, w) in [0, 1], ``nrow`` images per row (NaN pixels are
    drawn black)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise UsageError(f"images must be a (B, 1 or 3, h, w) tensor, got {got}")
    for name, value in (("nrow", nrow), ("pad", pad)):
        least = 0 if name == "pad" else 1
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise UsageError(f"{name} must be an integer >= {least}, got {value!r}")
    b, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(b)))
    rows = math.ceil(b / nrow)
    grid = np.ones((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8) * 255
    arr = (
        (images.detach().float().nan_to_num(0.0).clamp(0, 1).cpu().numpy() * 255 + 0.5)
        .astype(np.uint8)
        .transpose(0, 2, 3, 1)
    )
    for i in range(b):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = arr[i]
    return grid


PAIR_COLUMNS = 16  # a grid of pairs' width in images: 600 images made one 20,402-pixel row


def paired_rows(originals: torch.Tensor, paired: torch.Tensor, cols: int) -> torch.Tensor:
    """Rows of ``cols`` originals, each followed by the row of their ``paired`` images (reconstructions), a
    short last pair padded with black: the images of a grid of ``cols`` columns (``save_grid(..., nrow=cols)``)."""
    rows = []
    for i in range(0, len(originals), cols):
        for part in (originals[i : i + cols], paired[i : i + cols]):
            rows += [part, part.new_zeros(cols - len(part), *part.shape[1:])]
    return torch.cat(rows)


# formats a grid (8-bit grey or RGB) is written in; Pillow registers writers for others that refuse these
# modes or need a plugin (.xbm, .msp, .h5, .blp, ...), found only after the sampling
GRID_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF", "PPM", "TGA")


def image_format(path: str | Path) -> str | None:
    """The Pillow format a grid named ``path`` is written in (from its suffix), or None when it is not one
    of :data:`GRID_FORMATS` that this Pillow writes."""
    from PIL import Image

    Image.init()  # every plugin, so that SAVE lists every writer
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    return fmt if fmt in GRID_FORMATS and fmt in Image.SAVE else None


# a PNG grid's tEXt chunk "Software": tells a grid this package wrote from a user's file of the same name
_SOFTWARE = b"glann_ext"


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write ``images`` (B, C, h, w) in [0, 1] as one grid image (the format from the suffix: .png, .jpg,
    ...), atomically (a link at ``path`` is replaced, not followed); returns the path. A PNG carries the
    text chunk Software = glann_ext (:func:`written_here`)."""
    from PIL import Image

    path = Path(path)
    fmt = image_format(path)
    if fmt is None:
        raise UsageError(f"{path}: not an image format Pillow writes, suffix {path.suffix!r} (use .png)")
    grid = make_grid(images, nrow)
    image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    extra = png_tag() if fmt == "PNG" else {}
    return atomic_write(path, lambda f: image.save(f, format=fmt, **extra))


def png_tag() -> dict:
    """Pillow's save options that tag a PNG as this package's (text chunk Software = glann_ext), which
    :func:`written_here` recognises."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", _SOFTWARE.decode())
    return {"pnginfo": info}


def not_ours_because(path: str | Path, otherwise: str) -> str:
    """Why a command will not replace ``path``, a name it writes that holds something it did not write:
    "is a link", "is a folder", or ``otherwise`` (a file of the user's)."""
    path = Path(path)
    return "is a link" if path.is_symlink() else "is a folder" if path.is_dir() else otherwise


def written_here(path: str | Path) -> bool:
    """Whether ``path`` is a regular file holding a PNG grid this package wrote (:func:`save_grid`): its
    first chunks are read as bytes, nothing is decoded."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(4096)
    return head.startswith(b"\x89PNG\r\n\x1a\n") and b"tEXtSoftware\x00" + _SOFTWARE in head

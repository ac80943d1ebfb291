"""Saving image batches as PNG grids with Pillow."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 (H, W, C) mosaic of ``images`` (B, C, h, w) in [0, 1], ``nrow`` images per row."""
    b, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(b)))
    rows = math.ceil(b / nrow)
    grid = np.ones((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8) * 255
    arr = (
        (images.detach().float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
    )
    for i in range(b):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = arr[i]
    return grid


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write ``images`` (B, C, h, w) in [0, 1] as one PNG grid; returns the path."""
    from PIL import Image

    grid = make_grid(images, nrow)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return Path(path)

"""PNG grids of image batches: layout, white padding, rounding, NaN pixels, and the file written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from glann_ext.errors import UsageError
from glann_ext.images import make_grid, save_grid, written_here


def _batch() -> torch.Tensor:
    """5 grey 3x2 images; image i holds 0.11 i (28.05 i of 255: no halves to round) except one pixel each
    that checks rounding, NaN or clipping."""
    x = torch.arange(5, dtype=torch.float32).mul(0.11).reshape(5, 1, 1, 1).expand(5, 1, 3, 2).clone()
    x[0, 0, 0, 0] = 0.999  # 254.745: rounds to 255 (truncating gives 254)
    x[1, 0, 2, 1] = float("nan")  # drawn black
    x[2, 0, 1, 0] = 1.5  # clipped to white
    return x


@pytest.mark.filterwarnings("error::RuntimeWarning")  # NaN cast to uint8 is undefined: it must not happen
def test_grid_layout_padding_and_pixel_values():
    grid = make_grid(_batch())
    # 5 images: ceil(sqrt(5)) = 3 per row, 2 rows; 2 pixels of white padding around and between them
    assert grid.dtype == np.uint8 and grid.shape == (2 * (3 + 2) + 2, 3 * (2 + 2) + 2, 1)
    want = np.full(grid.shape[:2], 255, np.uint8)
    for i in range(5):
        r, c = divmod(i, 3)
        want[2 + r * 5 : 2 + r * 5 + 3, 2 + c * 4 : 2 + c * 4 + 2] = round(i * 28.05)
    want[2, 2], want[2 + 2, 6 + 1], want[2 + 1, 10] = 255, 0, 255  # the rounded, NaN and clipped pixels
    assert np.array_equal(grid[..., 0], want)
    assert make_grid(_batch(), nrow=5).shape == (3 + 4, 5 * (2 + 2) + 2, 1)  # one row
    rgb = make_grid(torch.rand(2, 3, 4, 4), nrow=1, pad=0)
    assert rgb.shape == (8, 4, 3)


def test_save_grid_writes_the_grid_as_a_png(tmp_path):
    path = save_grid(_batch(), tmp_path / "g.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and np.array_equal(np.asarray(im), make_grid(_batch())[..., 0])
    for suffix in (".xyz", ".psd", ".fits", ".xbm", ".blp"):  # unknown; read-only; writers refusing a grid
        with pytest.raises(UsageError, match=rf"not an image format Pillow writes, suffix '\{suffix}'"):
            save_grid(_batch(), tmp_path / f"g{suffix}")


def test_save_grid_takes_the_format_from_the_suffix_in_any_case_and_lays_out_nrow(tmp_path):
    """Found by mutation testing: a .jpg written as PNG, an upper-case suffix refused, or save_grid's nrow
    dropped passed every test."""
    with Image.open(save_grid(_batch(), tmp_path / "g.JPG", nrow=5)) as im:
        assert im.format == "JPEG" and im.size == (5 * (2 + 2) + 2, 3 + 4)  # one row of 5
    with Image.open(save_grid(_batch(), tmp_path / "g.PNG", nrow=1)) as im:
        assert im.format == "PNG" and np.array_equal(np.asarray(im), make_grid(_batch(), nrow=1)[..., 0])


@pytest.mark.parametrize(
    ("images", "kwargs", "match"),
    [
        (torch.rand(2, 2, 4, 4), {}, r"images must be a \(B, 1 or 3, h, w\) tensor, got \(2, 2, 4, 4\)"),
        (np.zeros((2, 1, 4, 4)), {}, "got ndarray"),
        (torch.rand(2, 1, 4, 4), {"nrow": 0}, "nrow must be an integer >= 1, got 0"),
        (torch.rand(2, 1, 4, 4), {"pad": -1}, "pad must be an integer >= 0, got -1"),
        (torch.rand(2, 1, 4, 4), {"nrow": True}, "nrow must be an integer >= 1, got True"),
        (torch.rand(2, 1, 4, 4), {"pad": False}, "pad must be an integer >= 0, got False"),
    ],
)
def test_bad_grids_are_usage_errors(images, kwargs, match):
    with pytest.raises(UsageError, match=match):
        make_grid(images, **kwargs)


# Found missing by a mutation test of the data loaders and the readers of user files (2026-12-07).


# Only a PNG whose first chunks carry Software = glann_ext is "ours"; a user's file of another kind that
# merely holds those bytes (a note quoting them, a JPEG's comment) must not be taken for a grid and replaced
def test_written_here_needs_a_png_signature_not_just_the_tag_bytes(tmp_path):
    grid = save_grid(torch.rand(4, 1, 8, 8), tmp_path / "grid.png")
    assert written_here(grid)
    body = grid.read_bytes()
    note = tmp_path / "notes.png"
    note.write_bytes(b"my notes: " + body[8:200])  # the tEXt chunk, without the PNG signature
    assert b"tEXtSoftware\x00glann_ext" in note.read_bytes()
    assert not written_here(note)
    note.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)  # a PNG without the tag
    assert not written_here(note)


# A link to a grid this package wrote is not ours to replace (the user made the link)
def test_written_here_refuses_a_link_even_to_one_of_our_grids(tmp_path):
    grid = save_grid(torch.rand(4, 3, 8, 8), tmp_path / "grid.png")
    link = tmp_path / "link.png"
    link.symlink_to(grid)
    assert written_here(grid) and not written_here(link)

"""TIFF and GIF folders: read like PNG ones (same pixels for the same image), 16-bit and float TIFFs by the
rules 16-bit PNGs and float arrays follow, and what has no one reading (several frames, 32-bit integers,
floats outside both scales) refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from glann_ext.data import DataError, load_images
from glann_ext.data.folder import list_images, load_folder


def _save(path: Path, arr: np.ndarray, mode: str | None = None, **kw) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(arr) if mode is None else Image.fromarray(arr, mode)).save(path, **kw)
    return path


def _grey(seed: int = 0, size: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


@pytest.mark.parametrize(
    ("name", "kw"),
    [("a.tif", {}), ("a.tiff", {"compression": "tiff_lzw"}), ("a.TIF", {"compression": "tiff_deflate"}),
     ("a.gif", {})],
)  # fmt: skip
def test_grey_tiff_and_gif_load_as_the_same_png(tmp_path, name, kw):
    x = _grey()
    png = load_folder([_save(tmp_path / "a.png", x)], 12, 1)
    other = load_folder([_save(tmp_path / name, x, **kw)], 12, 1)
    assert np.array_equal(png, other) and png.std() > 50
    assert [p.name for p in list_images(tmp_path)] == sorted(["a.png", name])


def test_rgb_tiff_and_a_gif_of_few_colours_load_as_the_same_png(tmp_path):
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)  # 16 colours: a GIF holds them exactly
    x = palette[rng.integers(0, 16, (10, 14))]
    png = load_folder([_save(tmp_path / "a.png", x)], 8, 3)
    for name in ("a.tif", "a.gif"):
        assert np.array_equal(load_folder([_save(tmp_path / name, x)], 8, 3), png), name
    grey = load_folder([tmp_path / "a.png"], 8, 1)
    assert np.array_equal(load_folder([tmp_path / "a.tif"], 8, 1), grey)


@pytest.mark.parametrize("value", [200, 60000, 65535])
def test_sixteen_bit_tiffs_scale_like_sixteen_bit_pngs(tmp_path, value):
    x = np.full((8, 8), value, np.uint16)
    x[0, 0] = 0
    tif = load_folder([_save(tmp_path / "a.tif", x)], 8, 1)
    assert np.array_equal(tif, load_folder([_save(tmp_path / "a.png", x)], 8, 1))
    assert tif[0, 1, 1, 0] == round(value / 257) and tif[0, 0, 0, 0] == 0


def test_float_tiffs_follow_the_float_arrays_rule(tmp_path):
    """[0, 1] (a resize's overshoot clipped) is v * 255, whole numbers in [0, 255] are levels, as for arrays;
    the same image as an array loads the same."""
    unit = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    unit[0, 0], unit[0, 1] = -0.02, 1.03
    got = load_folder([_save(tmp_path / "u.tif", unit)], 8, 1)[0, ..., 0]
    assert np.array_equal(got, np.rint(np.clip(unit, 0, 1) * 255).astype(np.uint8))
    levels = np.arange(64, dtype=np.float32).reshape(8, 8) * 4
    got = load_folder([_save(tmp_path / "l.tif", levels)], 8, 1)[0, ..., 0]
    assert np.array_equal(got, levels.astype(np.uint8))
    np.save(tmp_path / "l.npy", levels[None])
    assert np.array_equal(load_images(str(tmp_path / "l.npy")).numpy(), got[None, None] / np.float32(255))
    binary = (levels > 100).astype(np.float32)  # only 0s and 1s: binary, 1 white (as a float array's)
    assert set(np.unique(load_folder([_save(tmp_path / "b.tif", binary)], 8, 1))) == {0, 255}


@pytest.mark.parametrize(
    ("values", "seen"),
    [((0.0, 2.5), r"got \[0, 2.5\]"), ((0.0, 300.0), r"got \[0, 300\]"), ((-0.2, 0.5), r"got \[-0.2, 0.5\]")],
)
def test_float_tiffs_outside_both_scales_are_refused(tmp_path, values, seen):
    x = np.full((4, 4), values[1], np.float32)
    x[0, 0] = values[0]
    with pytest.raises(DataError, match=rf"x.tif: float pixels must lie in \[0, 1\].*whole numbers.*{seen}"):
        load_folder([_save(tmp_path / "x.tif", x)], 4, 1)
    x[1, 1] = np.nan
    with pytest.raises(DataError, match=r"x.tif: float pixels contain NaN or infinite values"):
        load_folder([_save(tmp_path / "x.tif", x)], 4, 1)


def test_thirty_two_bit_integer_tiffs_are_refused(tmp_path):
    """A 32-bit TIFF of 0..255 values would be scaled as 16 bits (v / 257: near black) without a word."""
    x = np.full((4, 4), 200, np.int32)
    with pytest.raises(
        DataError, match=r"x.tif: 32-bit integer pixels have no fixed range: save .* 8 or 16 bits"
    ):
        load_folder([_save(tmp_path / "x.tif", x)], 4, 1)


def test_files_of_several_frames_are_refused_and_counted(tmp_path):
    """An animated GIF, a multi-page TIFF or an animated PNG would otherwise train on its first frame only."""
    from PIL import Image

    frames = [Image.fromarray(_grey(s, 8)) for s in range(3)]
    d = tmp_path / "d"
    d.mkdir()
    for name in ("anim.gif", "pages.tif", "anim.png"):
        frames[0].save(d / name, save_all=True, append_images=frames[1:])
    _save(d / "ok.png", _grey())
    with pytest.raises(
        DataError, match=r"anim.gif: holds 3 frames .*save each frame as its own file.*2 more"
    ):
        load_images(str(d), image_size=8, channels=1)
    (d / "anim.gif").unlink()
    (d / "pages.tif").unlink()
    (d / "anim.png").unlink()
    frames[0].save(d / "one.gif")
    assert load_images(str(d), image_size=8, channels=1).shape == (2, 1, 8, 8)


def test_gif_transparency_is_composited_onto_black(tmp_path):
    from PIL import Image

    pal = Image.fromarray(np.array([[0, 1], [1, 1]], np.uint8), "P")
    pal.putpalette([255, 255, 255, 0, 255, 0])
    pal.save(tmp_path / "p.gif", transparency=1)  # palette entry 1 (green) is transparent
    assert load_folder([tmp_path / "p.gif"], 2, 1)[0, ..., 0].tolist() == [[255, 0], [0, 0]]


def test_a_single_tiff_is_not_a_dataset(tmp_path):
    _save(tmp_path / "x.tiff", _grey())
    with pytest.raises(DataError, match=r"x.tiff: a single image; a dataset of images is a folder of them"):
        load_images(str(tmp_path / "x.tiff"))

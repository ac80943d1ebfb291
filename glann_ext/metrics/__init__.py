"""Evaluation metrics for GLO / IMLE / GLANN generators.

* :mod:`.mixtures` - mode coverage, HQ fraction and reverse KL on the 2-D ring and grid (VEEGAN, PacGAN).
* :mod:`.stacked_mnist` - modes covered out of 1000 and KL to uniform on stacked MNIST (or any stacked
  10-class dataset: :func:`make_stacked`, :func:`stacked_modes`, :func:`kl_split`).
* :mod:`.classifier` - a cached LeNet domain classifier: test accuracy, features for FD and PRDC.
* :mod:`.random_features` - a fixed random CNN's features: FD and PRDC without labels (own images).
* :mod:`.frechet` - Fréchet distance between feature sets.
* :mod:`.prdc` - improved precision/recall (k=3) and density/coverage (k=5); :mod:`.knn` their radii.
* :mod:`.memorisation` - nearest-training-sample distances and a side-by-side PNG grid.
* :mod:`.code_usage` - how a second stage's samples use the GLO codes (evenness, distance to them).
* :mod:`.fid` - Inception FID, only with locally cached weights (never downloads).
* :mod:`.aggregate` - mean and standard error over seeds.

Metrics take tensors (or arrays) and small callables; they use :mod:`glann_ext.ops` for search.
"""

from __future__ import annotations

from .aggregate import aggregate_seeds, mean_sem
from .classifier import ARCH_VERSION, DomainClassifier, LeNet, cache_path
from .code_usage import CodeUsage, code_usage, moment_ratios, nearest_other_code
from .fid import FIDResult, InceptionBackend, find_inception_backend, standard_fid
from .frechet import feature_statistics, frechet_distance, frechet_distance_from_statistics
from .knn import ball_membership_counts, knn_radii, knn_radii_each
from .memorisation import MemorisationReport, memorisation_report, nearest_train, save_neighbour_grid
from .mixtures import (
    GRID_5X5,
    RING_PACGAN,
    RING_VEEGAN,
    MixturePreset,
    ModeCoverage,
    grid_centres,
    mode_coverage,
    reverse_kl_uniform,
    ring_centres,
)
from .prdc import PRDC, density_coverage, prdc, precision_recall
from .random_features import RandomEmbedding
from .stacked_mnist import (
    StackedModes,
    kl_split,
    label_stacked,
    make_stacked,
    stacked_modes,
)

__all__ = [
    "ARCH_VERSION",
    "GRID_5X5",
    "PRDC",
    "RING_PACGAN",
    "RING_VEEGAN",
    "CodeUsage",
    "DomainClassifier",
    "FIDResult",
    "InceptionBackend",
    "LeNet",
    "MemorisationReport",
    "MixturePreset",
    "ModeCoverage",
    "RandomEmbedding",
    "StackedModes",
    "aggregate_seeds",
    "ball_membership_counts",
    "cache_path",
    "code_usage",
    "density_coverage",
    "feature_statistics",
    "find_inception_backend",
    "frechet_distance",
    "frechet_distance_from_statistics",
    "grid_centres",
    "kl_split",
    "knn_radii",
    "knn_radii_each",
    "label_stacked",
    "make_stacked",
    "mean_sem",
    "memorisation_report",
    "mode_coverage",
    "moment_ratios",
    "nearest_other_code",
    "nearest_train",
    "prdc",
    "precision_recall",
    "reverse_kl_uniform",
    "ring_centres",
    "save_neighbour_grid",
    "stacked_modes",
    "standard_fid",
]  # fmt: skip

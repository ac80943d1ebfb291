"""glann_ext: GLO, IMLE and GLANN with fused C++/CUDA kernels.

Kernels (CPU and CUDA):

* :func:`nn_argmin` - exact, tiled, deterministic nearest-neighbour argmin in squared L2.
* :func:`laplacian_pyramid_loss` - the GLO paper's Laplacian-pyramid L1 loss, fused forward and backward
  (:class:`LaplacianPyramidLoss`: the same as a module).
* :func:`project_to_sphere` / :func:`project_to_sphere_` - rows to unit L2 norm;
  :class:`SphereSparseAdam` / :class:`SphereSparseSGD` (:mod:`glann_ext.optim`) - fused optimizer step
  plus re-projection on the rows of a latent table that a batch touched.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._info import __version__ as __version__
from ._info import build_info, cuda_available
from .ops.laplacian import LaplacianPyramidLoss, laplacian_pyramid_loss
from .ops.nn_argmin import nn_argmin
from .ops.sphere import fused_latent_adam_, fused_latent_sgd_, project_to_sphere, project_to_sphere_
from .optim import SphereSparseAdam, SphereSparseSGD

__all__ = [
    "LaplacianPyramidLoss",
    "SphereSparseAdam",
    "SphereSparseSGD",
    "build_info",
    "cuda_available",
    "fused_latent_adam_",
    "fused_latent_sgd_",
    "laplacian_pyramid_loss",
    "nn_argmin",
    "project_to_sphere",
    "project_to_sphere_",
]

# The subpackages a user reaches as glann_ext.<name>: imported on first access (PEP 562), so that
# ``import glann_ext`` stays the kernels alone and ``glann_ext.train.fit`` still works after it.
_SUBMODULES = (
    "backend", "data", "distributed", "errors", "evaluate", "images", "metrics", "models", "ops", "optim",
    "seeding", "train",
)  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    # the public names and the subpackages: not this module's own imports (Any, importlib, annotations)
    return sorted({*__all__, *_SUBMODULES, "__version__", *(n for n in globals() if n.startswith("__"))})

"""Training: the in-memory pipeline (:func:`fit`), its stage trainers and epoch loop, and run folders
(:func:`train`, :func:`load_model`, and :func:`save_model` beside it) with checkpoints, exact resume, metrics and grids.

Layers (see docs/ARCHITECTURE.md): ``pipeline`` (Fit: the model and its stages) -> ``glo``/``imle`` (one step
of each stage) -> ``loop`` (the one epoch loop and its hooks); ``run`` puts a folder around a Fit.
"""

from glann_ext.backend import Ops, get_ops
from glann_ext.models import GLANN, PixelIMLE, save_model, slerp

from .build import build_model
from .config import PRESETS, TrainConfig, preset
from .glo import GLOTrainer
from .imle import IMLETrainer
from .loop import Hook, run_epoch, run_epochs
from .pipeline import Fit, fit, fit_imle
from .run import Run, load_model, train

__all__ = [
    "GLANN",
    "PRESETS",
    "Fit",
    "GLOTrainer",
    "Hook",
    "IMLETrainer",
    "Ops",
    "PixelIMLE",
    "Run",
    "TrainConfig",
    "build_model",
    "fit",
    "fit_imle",
    "get_ops",
    "load_model",
    "preset",
    "run_epoch",
    "run_epochs",
    "save_model",
    "slerp",
    "train",
]

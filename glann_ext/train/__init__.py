"""Training: GLO and IMLE trainers, the GLANN model, run folders with checkpoints, configuration."""

from .backend import Ops, get_ops
from .config import PRESETS, TrainConfig, preset
from .glann import GLANN, slerp
from .glo import GLOTrainer
from .imle import IMLETrainer
from .run import Run, load_model, train

__all__ = [
    "GLANN",
    "PRESETS",
    "GLOTrainer",
    "IMLETrainer",
    "Ops",
    "Run",
    "TrainConfig",
    "get_ops",
    "load_model",
    "preset",
    "slerp",
    "train",
]

"""Networks and the trained generative models.

* networks: the DCGAN-style image generator, the MLP (noise-to-latent mapping, 2-D toy generator), the
  optional VGG perceptual loss and the reconstruction loss;
* models: :class:`GLANN` and :class:`PixelIMLE`, each owning its export and load
  (:func:`save_model` / :func:`load_model_file`: safetensors with a JSON description).
"""

from .files import load_model_file, read_model_file, save_model
from .generative import GLANN, GenerativeModel, PixelIMLE, fit_gaussian, model_from_export, slerp
from .generator import DCGANGenerator, start_size
from .losses import ReconstructionLoss, mse_loss
from .mlp import MLP

__all__ = [
    "GLANN",
    "MLP",
    "DCGANGenerator",
    "GenerativeModel",
    "PixelIMLE",
    "ReconstructionLoss",
    "fit_gaussian",
    "load_model_file",
    "model_from_export",
    "mse_loss",
    "read_model_file",
    "save_model",
    "slerp",
    "start_size",
]

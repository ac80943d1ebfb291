"""Networks: the DCGAN-style image generator and the MLPs (noise-to-latent mapping, 2-D toy generator)."""

from .generator import DCGANGenerator, start_size
from .mlp import MLP

__all__ = ["MLP", "DCGANGenerator", "start_size"]

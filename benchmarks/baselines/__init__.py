"""Baselines for the quality comparison of issue 4 (not part of the glann_ext API).

* :mod:`.vae` - a convolutional VAE whose decoder is the package's :class:`~glann_ext.models.DCGANGenerator`.
* :mod:`.dcgan` - a DCGAN (non-saturating loss) with the same generator and a DCGAN discriminator.
* :mod:`.toy_gan` - a vanilla GAN with the PacGAN MLPs for the 2-D mixtures.

GLO + Gaussian on codes and pixel-space IMLE come from the package's own trainers (``GLANN.sample_gaussian``,
``imle_space="pixel"``). Every trainer here is seeded (same seed, same result on CPU) and counts its budget in
epochs over the training set (images) or optimiser steps (2-D), like the package's trainers.
"""

from .dcgan import DCGAN, DCGANDiscriminator, train_dcgan
from .toy_gan import ToyGAN, train_toy_gan
from .vae import VAE, ConvEncoder, train_vae

__all__ = [
    "DCGAN",
    "VAE",
    "ConvEncoder",
    "DCGANDiscriminator",
    "ToyGAN",
    "train_dcgan",
    "train_toy_gan",
    "train_vae",
]

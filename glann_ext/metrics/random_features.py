"""A fixed, randomly initialised CNN as a label-free feature space for FD and PRDC.

Images without a labelled test split have no trained evaluator (the LeNet of :mod:`.classifier` needs
labels, Inception needs weights the package never downloads). Naeem et al. (2020, "Reliable Fidelity and
Diversity Metrics for Generative Models", ICML, Sec. 5) show that the features of a randomly initialised
network rank generators sensibly where no trained one fits the domain, notably for density and coverage.
:class:`RandomEmbedding` is that space for ``glann eval --test``: three 3x3 convolutions (64, 128, 256
channels; He-normal weights, no biases) with ReLU and 2x2 average pooling, and after each block the
channels' spatial mean and maximum (896 features). Images in [0, 1] are mapped to [-1, 1] first.

The weights come from NumPy's PCG64 generator at a fixed seed, not from torch's initialisers, so the space
is the same in every run and on every machine with the same NumPy. Its numbers are comparable only with
numbers from the same space (the same seed, widths and image size): they sit on another scale than the
LeNet's (at the 25-epoch Fashion-MNIST recipe, docs/training.md: training images against held-out ones
0.09, G(codes) 1.05, GLANN's samples 1.05, GLO + Gaussian 6.6), and they rank samplers as the LeNet does.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from ..data.datasets import check_unit_images
from ._checks import as_images

WIDTHS = (64, 128, 256)
ACTIVATION_BYTES = 1 << 26  # first-layer activations per chunk of images (64 MiB of float32)


class RandomEmbedding:
    """Features of a fixed random CNN (module docstring) for images of ``channels`` channels."""

    name = "random CNN (Naeem et al. 2020)"

    def __init__(self, channels: int, *, seed: int = 0, widths: tuple[int, ...] = WIDTHS):
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be positive ints, got {widths!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ValueError(
                f"seed must be an integer in [0, 2**63) (the space is fixed by it), got {seed!r}"
            )
        rng = np.random.default_rng(seed)
        self.channels, self.seed, self.widths = channels, seed, tuple(widths)
        self.weights: list[torch.Tensor] = []
        fan_in = channels
        for width in self.widths:
            w = rng.standard_normal((width, fan_in, 3, 3)) * np.sqrt(2.0 / (9 * fan_in))  # He-normal
            self.weights.append(torch.from_numpy(w.astype(np.float32)))
            fan_in = width

    @property
    def dim(self) -> int:
        """Features per image: the mean and the maximum of every block's channels."""
        return 2 * sum(self.widths)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, :attr:`dim`) float32 features of ``images`` (N, channels, H, W) in [0, 1], computed a chunk of
        images at a time (the same values as all at once)."""
        x = as_images("images", images, channels=self.channels)
        if x.shape[0] and min(x.shape[2:]) < 1:
            raise ValueError(f"images must be at least 1 x 1 pixels, got {tuple(x.shape[2:])}")
        check_unit_images(x)  # 0..255 levels would land in another part of the space, unsaid
        per_image = 4 * self.widths[0] * x.shape[2] * x.shape[3]
        chunk = max(1, ACTIVATION_BYTES // per_image)
        with torch.no_grad():
            if x.shape[0] == 0:
                return torch.zeros(0, self.dim)
            return torch.cat([self._features(x[i : i + chunk].float()) for i in range(0, x.shape[0], chunk)])

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        h, out = x * 2 - 1, []
        for w in self.weights:
            h = F.relu(F.conv2d(h, w, padding=1))
            if min(h.shape[2:]) >= 2:  # 28 x 28: 14, 7, 3
                h = F.avg_pool2d(h, 2)
            out += [h.mean((2, 3)), h.amax((2, 3))]
        return torch.cat(out, 1)

"""A convolutional VAE for 28x28 (or any DCGAN-sized) images; its decoder is the package's DCGANGenerator."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from glann_ext.models import DCGANGenerator, start_size
from glann_ext.train.build import adam, place_for_training

from ._common import epoch_batches, sample_from


class ConvEncoder(nn.Module):
    """Mirror of the generator: k stride-2 4x4 convs (LeakyReLU 0.2) down to (s0, s0), then two linear heads
    (mean and log-variance of a diagonal Gaussian)."""

    def __init__(self, latent_dim: int, image_size: int = 28, channels: int = 1, width: int = 32):
        super().__init__()
        s0, ups = start_size(image_size)
        layers: list[nn.Module] = []
        ch_in, ch = channels, width
        for _ in range(ups):
            layers += [nn.Conv2d(ch_in, ch, 4, 2, 1), nn.LeakyReLU(0.2, True)]
            ch_in, ch = ch, ch * 2
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.mu = nn.Linear(ch_in * s0 * s0, latent_dim)
        self.logvar = nn.Linear(ch_in * s0 * s0, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.mu(h), self.logvar(h).clamp(-10, 10)


class VAE(nn.Module):
    """Encoder + DCGANGenerator decoder (sigmoid output); loss = Bernoulli NLL (BCE summed over pixels) + KL,
    averaged over the batch (Kingma & Welling 2014)."""

    def __init__(self, latent_dim: int = 32, image_size: int = 28, channels: int = 1, width: int = 32):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = ConvEncoder(latent_dim, image_size, channels, width)
        self.decoder = DCGANGenerator(latent_dim, image_size, channels, width)

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mu, logvar = self.encoder(x)
        eps = torch.randn(mu.shape, generator=generator)
        z = mu + (0.5 * logvar).exp() * eps
        rec = self.decoder(z).clamp(1e-6, 1 - 1e-6)
        nll = F.binary_cross_entropy(rec, x, reduction="sum") / x.shape[0]
        kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum() / x.shape[0]
        return nll + kl

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        return sample_from(self.decoder, self.latent_dim, n, seed)


@dataclass
class TrainLog:
    losses: list[float] = field(default_factory=list)  # mean loss per epoch


def train_vae(
    images: torch.Tensor,
    *,
    epochs: int,
    latent_dim: int = 32,
    width: int = 32,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[VAE, TrainLog]:
    """Train a :class:`VAE` on images (N, C, H, W) in [0, 1] for ``epochs`` epochs; Adam, seeded."""
    torch.manual_seed(seed)
    # the layout and optimizer step of GLANN's trainers, so that the report's times compare like with like
    vae = place_for_training(VAE(latent_dim, images.shape[-1], images.shape[1], width), images.device)
    opt = adam(vae.parameters(), lr, (0.9, 0.999))
    g = torch.Generator().manual_seed(seed + 17)
    log = TrainLog()
    for epoch in range(epochs):
        vae.train()
        total = 0.0
        batches = epoch_batches(images.shape[0], batch_size, seed, epoch)
        for idx in batches:
            loss = vae.loss(images[idx], g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        log.losses.append(total / len(batches))
    vae.eval()
    return vae, log

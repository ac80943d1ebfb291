"""DCGAN (Radford et al. 2016) with the non-saturating generator loss (Goodfellow et al. 2014), using the
package's DCGANGenerator as G and a mirror-image conv discriminator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from glann_ext.models import DCGANGenerator, start_size
from glann_ext.train.build import adam, place_for_training

from ._common import GANTrainLog, adversarial_step, epoch_batches, sample_from


class DCGANDiscriminator(nn.Module):
    """k stride-2 4x4 convs (BatchNorm after the first, LeakyReLU 0.2) down to (s0, s0), then a linear logit."""

    def __init__(self, image_size: int = 28, channels: int = 1, width: int = 32):
        super().__init__()
        s0, ups = start_size(image_size)
        layers: list[nn.Module] = []
        ch_in, ch = channels, width
        for i in range(ups):
            layers.append(nn.Conv2d(ch_in, ch, 4, 2, 1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(ch))
            layers.append(nn.LeakyReLU(0.2, True))
            ch_in, ch = ch, ch * 2
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(ch_in * s0 * s0, 1))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).squeeze(1)


class DCGAN(nn.Module):
    def __init__(self, noise_dim: int = 32, image_size: int = 28, channels: int = 1, width: int = 32):
        super().__init__()
        self.noise_dim = noise_dim
        self.G = DCGANGenerator(noise_dim, image_size, channels, width)
        self.D = DCGANDiscriminator(image_size, channels, width)

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """-log D(x) - log(1 - D(G(e))), as logits."""
        lr, lf = self.D(real), self.D(fake.detach())
        return F.softplus(-lr).mean() + F.softplus(lf).mean()

    def g_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """Non-saturating: -log D(G(e))."""
        return F.softplus(-self.D(fake)).mean()

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        return sample_from(self.G, self.noise_dim, n, seed)


def train_dcgan(
    images: torch.Tensor,
    *,
    epochs: int,
    noise_dim: int = 32,
    width: int = 32,
    batch_size: int = 128,
    lr: float = 2e-4,
    seed: int = 0,
) -> tuple[DCGAN, GANTrainLog]:
    """One D step and one G step per batch, Adam(lr 2e-4, betas (0.5, 0.999)) as in DCGAN; seeded."""
    torch.manual_seed(seed)
    # the layout and optimizer step of GLANN's trainers, so that the report's times compare like with like
    gan = place_for_training(DCGAN(noise_dim, images.shape[-1], images.shape[1], width), images.device)
    opt_d = adam(gan.D.parameters(), lr, (0.5, 0.999))
    opt_g = adam(gan.G.parameters(), lr, (0.5, 0.999))
    g = torch.Generator().manual_seed(seed + 17)
    log = GANTrainLog()
    for epoch in range(epochs):
        gan.train()
        td = tg = 0.0
        batches = epoch_batches(images.shape[0], batch_size, seed, epoch)
        for idx in batches:
            real = images[idx]
            fake = gan.G(torch.randn(len(idx), noise_dim, generator=g))
            ld, lg = adversarial_step(gan, opt_d, opt_g, real, fake)
            td, tg = td + ld, tg + lg
        log.d_losses.append(td / len(batches))
        log.g_losses.append(tg / len(batches))
    gan.eval()
    return gan, log

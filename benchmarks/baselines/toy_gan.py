"""Vanilla GAN with the PacGAN MLPs for the 2-D mixtures (PacGAN, Lin et al. 2018, Section 5.1 / App.).

PacGAN's 2-D generator: 4 hidden layers of 400 ReLU units with BatchNorm, noise dimension 2; discriminator:
3 hidden layers of 200 units. PacGAN uses maxout (5 pieces) units in the discriminator; we use LeakyReLU(0.2)
(a simplification, stated in the report). Loss: the original minimax GAN with the non-saturating G loss.
``pack`` > 1 gives PacGAN (the discriminator sees ``pack`` samples concatenated); the report uses pack = 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from glann_ext.models import MLP
from glann_ext.train.build import adam

from ._common import GANTrainLog, adversarial_step, sample_from


class ToyGAN(nn.Module):
    def __init__(self, noise_dim: int = 2, g_hidden: int = 400, d_hidden: int = 200, pack: int = 1):
        super().__init__()
        self.noise_dim, self.pack = noise_dim, pack
        self.G = MLP(noise_dim, 2, g_hidden, 4, batch_norm=True)
        self.D = nn.Sequential(
            nn.Linear(2 * pack, d_hidden), nn.LeakyReLU(0.2, True),
            nn.Linear(d_hidden, d_hidden), nn.LeakyReLU(0.2, True),
            nn.Linear(d_hidden, d_hidden), nn.LeakyReLU(0.2, True),
            nn.Linear(d_hidden, 1),
        )  # fmt: skip

    def _d(self, x: torch.Tensor) -> torch.Tensor:
        return self.D(x.reshape(-1, 2 * self.pack)).squeeze(1)

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return F.softplus(-self._d(real)).mean() + F.softplus(self._d(fake.detach())).mean()

    def g_loss(self, fake: torch.Tensor) -> torch.Tensor:
        return F.softplus(-self._d(fake)).mean()

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        return sample_from(self.G, self.noise_dim, n, seed, clamp=False)


def train_toy_gan(
    sample_real,
    *,
    steps: int,
    batch_size: int = 100,
    lr: float = 1e-4,
    seed: int = 0,
    pack: int = 1,
    log_every: int = 0,
) -> tuple[ToyGAN, GANTrainLog]:
    """``sample_real(n, generator)`` draws real 2-D points; one D and one G Adam step (lr 1e-4, betas (0.5,
    0.999)) per step on ``batch_size * pack`` points. ``log_every`` > 0 records losses every that many steps."""
    torch.manual_seed(seed)
    gan = ToyGAN(pack=pack)
    opt_d = adam(gan.D.parameters(), lr, (0.5, 0.999))  # the fused step of the IMLE rows it is compared with
    opt_g = adam(gan.G.parameters(), lr, (0.5, 0.999))
    g = torch.Generator().manual_seed(seed + 17)
    log = GANTrainLog()
    gan.train()
    n = batch_size * pack
    for step in range(steps):
        real = sample_real(n, g)
        fake = gan.G(torch.randn(n, gan.noise_dim, generator=g))
        ld, lg = adversarial_step(gan, opt_d, opt_g, real, fake)
        if log_every and (step % log_every == 0 or step == steps - 1):
            log.d_losses.append(ld)
            log.g_losses.append(lg)
    gan.eval()
    return gan, log

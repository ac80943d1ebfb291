"""DCGAN-style generator: latent vector -> image in [0, 1]."""

from __future__ import annotations

import torch
from torch import nn

from glann_ext._args import checked_int
from glann_ext.errors import ConfigError


def start_size(image_size: int) -> tuple[int, int]:
    """(s0, k) with image_size == s0 * 2**k and 3 <= s0 <= 7, the seed resolution the generator upsamples.

    28 -> (7, 2), 32 -> (4, 3), 64 -> (4, 4), 128 -> (4, 5). ``image_size`` may be any integer type (a numpy
    integer, a 0-d integer tensor).
    """
    image_size = checked_int("image_size", image_size, 8)
    size, ups = image_size, 0
    while size > 7 and size % 2 == 0:
        size //= 2
        ups += 1
    if size < 3 or size > 7 or ups < 1:
        raise ValueError(
            f"image_size must be s * 2**k with 3 <= s <= 7 and k >= 1 (e.g. 28, 32, 64, 128), "
            f"got {image_size}"
        )
    return size, ups


# The most parameters a generator may have (4 GiB of float32 weights, 16 GiB with Adam's moments and the
# gradient): far above any generator of the GLO/GLANN papers (a few million), so that a typo such as
# --gen-width 4096 --image-size 256 (a 65,536-channel first layer, 550 GB) is an error, not an allocation.
MAX_GENERATOR_PARAMETERS = 2**30


def generator_parameters(latent_dim: int, image_size: int, channels: int, width: int, depth: int) -> int:
    """The parameter count of ``DCGANGenerator(latent_dim, image_size, channels, width, depth)``, without
    building it."""
    s0, ups = start_size(image_size)
    ch = width * 2 ** (ups - 1)
    count = latent_dim * ch * s0 * s0 + 2 * ch * s0 * s0  # the linear layer and its BatchNorm
    count += depth * (ch * ch * 9 + 2 * ch)
    for _ in range(ups - 1):
        count += ch * (ch // 2) * 16 + 2 * (ch // 2)
        ch //= 2
        count += depth * (ch * ch * 9 + 2 * ch)
    return count + ch * channels * 16 + channels


def check_generator_size(latent_dim: int, image_size: int, channels: int, width: int, depth: int) -> None:
    """:class:`~glann_ext.errors.ConfigError` if that generator would exceed MAX_GENERATOR_PARAMETERS."""
    count = generator_parameters(latent_dim, image_size, channels, width, depth)
    if count > MAX_GENERATOR_PARAMETERS:
        _, ups = start_size(image_size)
        raise ConfigError(
            f"the generator would have {count:,} parameters (gen_width {width} at image_size {image_size}: "
            f"{width * 2 ** (ups - 1):,} channels in its first layer; latent_dim {latent_dim}, gen_depth "
            f"{depth}), more than the {MAX_GENERATOR_PARAMETERS:,} allowed; lower gen_width or image_size"
        )


class DCGANGenerator(nn.Module):
    """Linear to a (width * 2**(k-1), s0, s0) map, then k transposed-conv x2 upsamplings with BatchNorm+ReLU,
    and a sigmoid so that images lie in [0, 1].

    Args:
        latent_dim: length of the input code.
        image_size: output height and width (28, 32, 64, 128, ...; see :func:`start_size`).
        channels: output channels (1 or 3).
        width: channels of the last hidden layer; earlier layers double it.
        depth: extra 3x3 conv + BatchNorm + ReLU layers at every hidden resolution (0: the DCGAN generator
            of the GLO/GLANN papers; more depth sharpens at a small cost, since the layers run at low
            resolution).
    """

    def __init__(
        self, latent_dim: int = 64, image_size: int = 28, channels: int = 1, width: int = 64, depth: int = 0
    ):
        super().__init__()
        latent_dim, channels = checked_int("latent_dim", latent_dim, 1), checked_int("channels", channels, 1)
        width, depth = checked_int("width", width, 1), checked_int("depth", depth, 0)
        image_size = checked_int("image_size", image_size, 8)
        check_generator_size(latent_dim, image_size, channels, width, depth)
        s0, ups = start_size(image_size)
        self.latent_dim, self.image_size, self.channels, self.width = latent_dim, image_size, channels, width
        self.depth = depth
        top = width * 2 ** (ups - 1)
        self.s0, self.top = s0, top
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, top * s0 * s0, bias=False), nn.BatchNorm1d(top * s0 * s0), nn.ReLU(True)
        )
        layers: list[nn.Module] = _refine(top, depth)
        ch = top
        for _ in range(ups - 1):
            layers += [
                nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch // 2),
                nn.ReLU(True),
            ]
            ch //= 2
            layers += _refine(ch, depth)
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)
        self.apply(_dcgan_init)

    def hparams(self) -> dict[str, int]:
        """The constructor arguments: ``DCGANGenerator(**g.hparams())`` builds the same architecture."""
        return {
            "latent_dim": self.latent_dim, "image_size": self.image_size, "channels": self.channels,
            "width": self.width, "depth": self.depth,
        }  # fmt: skip

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], self.top, self.s0, self.s0)
        return self.body(h)


def _refine(ch: int, depth: int) -> list[nn.Module]:
    """``depth`` x (3x3 conv, BatchNorm, ReLU) at ``ch`` channels and the same resolution."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)]
    return layers


def _dcgan_init(m: nn.Module) -> None:
    # DCGAN initialisation (N(0, 0.02) weights, N(1, 0.02) BN scales), as the GLO/GLANN reference code uses.
    if isinstance(m, (nn.ConvTranspose2d, nn.Conv2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)

"""Plain ReLU MLP: the IMLE mapping T (noise -> latent) and the generator of the 2-D toy studies."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """``layers`` hidden Linear+BatchNorm+ReLU blocks of ``hidden`` units and a linear output.

    BatchNorm follows the GLANN reference mapping (it speeds up IMLE noticeably); ``batch_norm=False``
    gives a plain MLP.
    """

    def __init__(
        self, in_dim: int, out_dim: int, hidden: int = 128, layers: int = 2, batch_norm: bool = True
    ):
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.hidden, self.layers, self.batch_norm = hidden, layers, batch_norm
        blocks: list[nn.Module] = []
        d = in_dim
        for _ in range(layers):
            blocks.append(nn.Linear(d, hidden, bias=not batch_norm))
            if batch_norm:
                blocks.append(nn.BatchNorm1d(hidden))
            blocks.append(nn.ReLU(True))
            d = hidden
        blocks.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*blocks)

    def hparams(self) -> dict[str, int | bool]:
        """The constructor arguments: ``MLP(**m.hparams())`` builds the same architecture."""
        return {
            "in_dim": self.in_dim, "out_dim": self.out_dim, "hidden": self.hidden, "layers": self.layers,
            "batch_norm": self.batch_norm,
        }  # fmt: skip

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.net(e)

"""Plain ReLU MLP: the IMLE mapping T (noise -> latent) and the generator of the 2-D toy studies."""

from __future__ import annotations

import torch
from torch import nn

from glann_ext._args import checked_int


class MLP(nn.Module):
    """``layers`` hidden Linear+BatchNorm+ReLU blocks of ``hidden`` units and a linear output.

    BatchNorm follows the GLANN reference mapping (it speeds up IMLE noticeably); ``batch_norm=False``
    gives a plain MLP. With ``output_affine`` a fixed (not trained) affine map follows: ``forward`` returns
    ``net(e) @ out_matrix.T + out_shift`` (identity until :meth:`set_output_affine`), which is how ``T``,
    trained on whitened codes (``TrainConfig.imle_whiten``), outputs codes; ``net`` alone is what trains.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int = 128,
        layers: int = 2,
        batch_norm: bool = True,
        output_affine: bool = False,
    ):
        super().__init__()
        in_dim, out_dim = checked_int("in_dim", in_dim, 1), checked_int("out_dim", out_dim, 1)
        hidden, layers = checked_int("hidden", hidden, 1), checked_int("layers", layers, 1)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.hidden, self.layers, self.batch_norm = hidden, layers, batch_norm
        self.output_affine = output_affine
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
        if output_affine:  # buffers: saved and moved with the module, never trained
            self.register_buffer("out_matrix", torch.eye(out_dim))
            self.register_buffer("out_shift", torch.zeros(out_dim))

    def hparams(self) -> dict[str, int | bool]:
        """The constructor arguments: ``MLP(**m.hparams())`` builds the same architecture."""
        return {
            "in_dim": self.in_dim, "out_dim": self.out_dim, "hidden": self.hidden, "layers": self.layers,
            "batch_norm": self.batch_norm, "output_affine": self.output_affine,
        }  # fmt: skip

    @torch.no_grad()
    def set_output_affine(self, matrix: torch.Tensor, shift: torch.Tensor) -> None:
        """Set the fixed output map to ``y -> y @ matrix.T + shift`` (``matrix`` (out, out), ``shift`` (out,))."""
        if not self.output_affine:
            raise ValueError("this MLP has no output affine map (build it with output_affine=True)")
        d = self.out_dim
        if tuple(matrix.shape) != (d, d) or tuple(shift.shape) != (d,):
            raise ValueError(
                f"set_output_affine: expected matrix ({d}, {d}) and shift ({d},), "
                f"got {tuple(matrix.shape)} and {tuple(shift.shape)}"
            )
        self.out_matrix.copy_(matrix)
        self.out_shift.copy_(shift)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        y = self.net(e)
        if not self.output_affine:
            return y
        return torch.addmm(self.out_shift.to(y.dtype), y, self.out_matrix.T.to(y.dtype))

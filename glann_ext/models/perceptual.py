"""Perceptual (VGG16 feature) distance, available only with weights the user already has on disk."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from glann_ext._io import FileChangedWhileRead, UnsafeTensorFile, load_tensors_with_digest
from glann_ext.errors import ConfigError

# torchvision's VGG16 ``features`` up to relu3_3: conv channel counts, "M" for max-pooling.
_VGG16_TO_RELU33 = [64, 64, "M", 128, 128, "M", 256, 256, 256]
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class VGGPerceptualLoss(nn.Module):
    """Mean L1 distance between VGG16 relu1_2, relu2_2 and relu3_3 features of two image batches in [0, 1].

    ``weights`` is a local torchvision-layout VGG16 state_dict (``features.N.weight`` keys); nothing is ever
    downloaded. Grey images are repeated to 3 channels. The network is frozen. ``weights_sha256`` is the
    SHA-256 of the file's bytes that were loaded (a run records it, and checks it on resume).
    """

    def __init__(self, weights: str | Path):
        super().__init__()
        path = Path(weights)
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: VGG16 weights file not found (perceptual loss needs local weights)"
            )
        if not path.is_file():  # /dev/zero, a FIFO or a folder: said so, never read
            kind = "folder" if path.is_dir() else "special file (a FIFO or a device)"
            raise ConfigError(f"{path}: a {kind}, not a VGG16 weights file")
        layers: list[nn.Module] = []
        c = 3
        for v in _VGG16_TO_RELU33:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)
        self._load(path)
        self.taps = {3, 8, 15}  # relu1_2, relu2_2, relu3_3
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def _load(self, path: Path) -> None:
        """The ``features.N.*`` tensors of a state_dict file, read with ``weights_only=True`` (no code runs),
        and the digest of the same bytes (:func:`~glann_ext._io.load_tensors_with_digest`)."""
        try:  # torchvision's legacy files hold tensors in a bare pickle
            state, self.weights_sha256 = load_tensors_with_digest(path, "sha256", archive_only=False)
        except UnsafeTensorFile as exc:
            raise ConfigError(f"{path}: not a loadable tensor file ({exc})") from None
        except FileChangedWhileRead:  # its digest and its weights might be of two versions of the file
            raise ConfigError(
                f"{path}: the VGG16 weights file changed while it was read (still being written?); run again "
                "once it is complete"
            ) from None
        except (RuntimeError, EOFError) as exc:
            raise ConfigError(f"{path}: not a loadable tensor file ({str(exc).splitlines()[0]})") from None
        if not isinstance(state, dict):
            raise ConfigError(f"{path}: not a VGG16 state_dict (a {type(state).__name__})")
        mine = {f"features.{k}" for k in self.features.state_dict()}
        ours = {k[len("features.") :]: v for k, v in state.items() if k in mine}
        try:
            missing = self.features.load_state_dict(ours, strict=False)
        except RuntimeError as exc:  # a tensor of another shape
            raise ConfigError(
                f"{path}: not a VGG16 state_dict ({str(exc).splitlines()[-1].strip()})"
            ) from None
        if missing.missing_keys:
            raise ConfigError(f"{path}: not a VGG16 state_dict (missing features.{missing.missing_keys[0]})")

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, y]).expand(-1, 3, -1, -1) if x.shape[1] == 1 else torch.cat([x, y])
        h = (h - self.mean) / self.std
        loss = h.new_zeros(())
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                a, b = h.chunk(2)
                loss = loss + F.l1_loss(a, b)
        return loss

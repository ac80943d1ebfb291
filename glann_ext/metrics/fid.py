"""Standard (Inception) FID, only when Inception weights are already on this machine.

Never downloads. Two backends are recognised, each with the weight file it would otherwise fetch
through ``torch.hub`` (so the file is looked for in ``<torch.hub.get_dir()>/checkpoints``):

* ``pytorch-fid`` (Seitzer): ``pt_inception-2015-12-05-6726825d.pth``
* ``torch-fidelity`` (Obukhov et al.): ``weights-inception-2015-12-05-6726825d.pth``

Both are the TF-FID Inception-v3 port; its 2048-D pool features go into
:func:`~glann_ext.metrics.frechet.frechet_distance`. When neither is usable the result is
``FIDResult(None, reason)`` instead of an exception, so evaluation scripts degrade gracefully.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ._checks import as_images
from .frechet import frechet_distance

PYTORCH_FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
TORCH_FIDELITY_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"


@dataclass(frozen=True)
class InceptionBackend:
    """A usable backend (``name``, ``weights`` path) or the ``reason`` none is (``name`` None)."""

    name: str | None
    weights: Path | None
    reason: str


@dataclass(frozen=True)
class FIDResult:
    value: float | None
    reason: str


def find_inception_backend(hub_dir: os.PathLike | None = None) -> InceptionBackend:
    """Which FID backend can run offline: the package must import and its weights be in the hub cache."""
    checkpoints = Path(hub_dir if hub_dir is not None else torch.hub.get_dir()) / "checkpoints"
    reasons = []
    for name, module, weights in (
        ("pytorch-fid", "pytorch_fid", PYTORCH_FID_WEIGHTS),
        ("torch-fidelity", "torch_fidelity", TORCH_FIDELITY_WEIGHTS),
    ):
        if importlib.util.find_spec(module) is None:
            reasons.append(f"{name} is not installed")
        elif not (checkpoints / weights).is_file():
            reasons.append(f"{name} is installed but {checkpoints / weights} is missing")
        else:
            return InceptionBackend(name, checkpoints / weights, f"using {name} with {checkpoints / weights}")
    return InceptionBackend(None, None, "; ".join(reasons) + " (weights are never downloaded)")


@torch.no_grad()
def _as_uint8(t: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats as the uint8 images the Inception extractors take."""
    return t.clamp(0, 1).mul(255).round().to(torch.uint8)


def _inception_features(backend: InceptionBackend, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if backend.name == "pytorch-fid":
        from pytorch_fid.inception import InceptionV3

        # pytorch-fid loads its weights from torch.hub's folder: pointed at the one the file was found in
        # (checked), so nothing is downloaded (with hub_dir elsewhere it read, or fetched, the default's)
        default_hub = torch.hub.get_dir()
        torch.hub.set_dir(str(backend.weights.parent.parent))
        try:
            model = InceptionV3(
                [InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True, normalize_input=True
            ).eval()
        finally:
            torch.hub.set_dir(default_hub)
        # The same 8-bit images torch-fidelity gets (and a score of saved PNGs reads), as floats in [0, 1].
        feats = [
            model(_as_uint8(images[i : i + batch_size]).float() / 255)[0].flatten(1)
            for i in range(0, len(images), batch_size)
        ]
    else:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        model = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(backend.weights)
        ).eval()
        feats = [
            model(_as_uint8(images[i : i + batch_size]))[0].flatten(1)
            for i in range(0, len(images), batch_size)
        ]
    return torch.cat(feats).double()


def standard_fid(
    real_images: torch.Tensor,
    fake_images: torch.Tensor,
    *,
    batch_size: int = 64,
    hub_dir: os.PathLike | None = None,
) -> FIDResult:
    """Inception FID of (N, 1 or 3, H, W) images with values in [0, 1], or ``value=None`` with a reason.

    Grey images are repeated to three channels; the backend resizes to 299x299 itself.
    """
    real = as_images("real_images", real_images)
    fake = as_images("fake_images", fake_images)
    for name, x in (("real_images", real), ("fake_images", fake)):
        if x.shape[1] not in (1, 3):
            raise ValueError(f"{name} must have 1 or 3 channels, got shape {tuple(x.shape)}")
    backend = find_inception_backend(hub_dir)
    if backend.name is None:
        return FIDResult(None, backend.reason)
    try:
        value = frechet_distance(
            _inception_features(backend, real, batch_size), _inception_features(backend, fake, batch_size)
        )
    except Exception as exc:  # noqa: BLE001 (an optional third-party backend: its failure is reported, not fatal)
        return FIDResult(None, f"{backend.name} failed: {type(exc).__name__}: {exc}")
    return FIDResult(value, backend.reason)

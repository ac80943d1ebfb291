"""Checks of what a caller hands the in-memory pipeline (:func:`~.pipeline.fit`, :class:`~.pipeline.Fit`,
:func:`~.pipeline.fit_imle`): the config, the training images and IMLE's targets.

The data loaders (:mod:`glann_ext.data`) already give float32 (n, C, H, W) images in [0, 1]; images built in
Python may be anything, and a wrong range or layout trains a useless model without a word (G outputs [0, 1],
so images in [0, 255] give a loss 255x too large that it can never lower). So each is refused here with the
argument, the rule and what was given.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from glann_ext.data.datasets import check_unit_images, layout_hint
from glann_ext.errors import ConfigError, NonFiniteError, UsageError
from glann_ext.models.custom_generator import probe_generator
from glann_ext.ops._checks import first_nonfinite_row

from .config import TrainConfig


def checked_config(cfg: Any) -> TrainConfig:
    """``cfg`` validated again (fields may have been set since it was made), else a ConfigError."""
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(
            f"cfg must be a TrainConfig (glann_ext.train.preset(name) or TrainConfig(...)), "
            f"got {type(cfg).__name__}"
        )
    return cfg.validate()


def _as_tensor(name: str, x: Any) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biuf" or x.dtype.byteorder == ">":
            raise UsageError(f"{name} must be a float tensor or array, got a numpy {x.dtype} array")
        return torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise UsageError(f"{name} must be a torch.Tensor (or numpy array), got {type(x).__name__}")
    if x.is_meta:
        raise UsageError(f"{name} must hold data, got a tensor on the meta device")
    return x.detach()


def _check_shape(shape: tuple[int, ...], cfg: TrainConfig) -> None:
    from glann_ext.models.generator import start_size

    if len(shape) != 4 or shape[1] < 1 or shape[2] != shape[3]:
        raise UsageError(f"images must be (n, C, H, W) with H == W, got shape {shape}{layout_hint(shape)}")
    n, c, size = shape[0], shape[1], shape[2]
    if n < 2:
        raise UsageError(f"images must hold at least 2 images (G's BatchNorm needs a batch), got {n}")
    try:
        start_size(size)
    except ValueError as exc:
        raise UsageError(f"images of size {size}x{size}: {exc}") from None
    for field, value in (("image_size", size), ("channels", c)):
        if getattr(cfg, field) not in (None, value):
            raise ConfigError(
                f"config field {field} is {getattr(cfg, field)} but the images have {field} {value}: set "
                f"{field}={value} (or None: the images' own)"
            )


def checked_images(images: Any, cfg: TrainConfig) -> torch.Tensor:
    """``images`` as a float32 (n, C, H, W) tensor in [0, 1] that ``cfg`` can train on (the same tensor when
    it already is one), else a UsageError/ConfigError/NonFiniteError naming ``images`` or the field."""
    x = _as_tensor("images", images)
    _check_shape(tuple(x.shape), cfg)
    lo, hi = check_unit_images(x)
    x = x.to(torch.float32)
    return x.clamp(0, 1) if lo < 0 or hi > 1 else x


def checked_targets(targets: Any) -> torch.Tensor:
    """IMLE's ``targets`` as a float (n, ...) tensor with n >= 1 finite rows, else a one-line error."""
    x = _as_tensor("targets", targets)
    if not x.is_floating_point() or x.dim() < 2 or x.shape[0] < 1 or x[0].numel() < 1:
        raise UsageError(
            f"targets must be a float (n, ...) tensor with n >= 1 rows of at least one value, "
            f"got {str(x.dtype)[6:]} of shape {tuple(x.shape)}"
        )
    row = first_nonfinite_row(x)
    if row is not None:
        raise NonFiniteError(f"targets hold NaN or Inf (first in row {row})", argument="targets", row=row)
    return x


def check_generator_output(
    generator: torch.nn.Module, targets: torch.Tensor, input_dim: int, what: str = "noise",
    field: str = "cfg.noise_dim", rows: str = "targets are rows",
) -> None:  # fmt: skip
    """UsageError unless ``generator`` maps ``what`` (B, ``input_dim``) to rows shaped like ``targets``' (one
    probe of two rows, :func:`~glann_ext.models.custom_generator.probe_generator`: eval mode, the global RNGs
    untouched): a mismatch would otherwise surface as a matrix-shape error inside torch, or in the first
    search, naming neither."""
    out = probe_generator(generator, input_dim, what, field)
    if not isinstance(out, torch.Tensor) or tuple(out.shape[1:]) != tuple(targets.shape[1:]):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(
            f"generator maps {what} (2, {input_dim}) to {got}, but {rows} of shape {tuple(targets.shape[1:])}"
        )

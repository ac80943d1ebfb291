"""Argument checks shared by the metrics: errors name the argument, what was expected and what came."""

from __future__ import annotations

import numpy as np
import torch

from glann_ext.errors import NonFiniteError


def as_float_matrix(name: str, x: object, *, columns: int | None = None, min_rows: int = 1) -> torch.Tensor:
    """A finite (N, D) float64 CPU tensor from a tensor or array, or a ``TypeError``/``ValueError``."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got {x.dim()}-D with shape {tuple(x.shape)}")
    if not (x.dtype.is_floating_point or x.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise TypeError(
            f"{name} must be floating or uint8/int32/int64, got dtype {str(x.dtype).replace('torch.', '')}"
        )
    if columns is not None and x.shape[1] != columns:
        raise ValueError(f"{name} must have {columns} columns, got shape {tuple(x.shape)}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} must have at least one column, got shape {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} rows, got shape {tuple(x.shape)}")
    x = x.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"{name} contains NaN or Inf values", argument=name)
    return x


def as_images(name: str, x: object, *, channels: int | None = None) -> torch.Tensor:
    """A finite (N, C, H, W) floating CPU tensor (``channels`` checked when given)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got {x.dim()}-D with shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating tensor, got dtype {str(x.dtype).replace('torch.', '')}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{name} must have {channels} channel(s) (N, {channels}, H, W), got shape {tuple(x.shape)}"
        )
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"{name} contains NaN or Inf values", argument=name)
    return x.detach().cpu()


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value

"""Argument checks shared by the metrics: errors name the argument, what was expected and what came."""

from __future__ import annotations

import math

import numpy as np
import torch

from glann_ext.errors import NonFiniteError, UsageError
from glann_ext.ops._checks import max_squared_norm


def as_float_matrix(name: str, x: object, *, columns: int | None = None, min_rows: int = 1) -> torch.Tensor:
    """A finite (N, D) float64 CPU tensor from a tensor or array, or a ``TypeError``/``ValueError``."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    check_not_meta(name, x)
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
    check_not_meta(name, x)
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


def check_not_meta(name: str, x: object) -> None:
    """A UsageError naming ``name`` for a meta tensor (a shape without values: nothing to measure)."""
    if isinstance(x, torch.Tensor) and x.is_meta:
        raise UsageError(
            f"{name} must be a tensor with values, got a meta tensor of shape {tuple(x.shape)} (no data)"
        )


def check_squarable(name: str, x: torch.Tensor) -> None:
    """A UsageError naming ``name`` and its first row whose norm is too large to square in ``x``'s float
    type: distances from the expansion ``|a|^2 + |b|^2 - 2 a.b`` (torch, :func:`glann_ext.nn_argmin`) would
    overflow to inf. The limit is nn_argmin's (a squared norm of a quarter of the type's maximum), so that
    the error names the metric's argument, not the search's."""
    if x.numel() == 0:
        return
    limit = math.sqrt(max_squared_norm(x.dtype))
    norms = torch.linalg.vector_norm(x, dim=1, dtype=torch.float64)  # inf if past float64: still refused
    big = (norms > limit).nonzero()
    if big.numel():
        row = int(big[0])
        top = float(x[row].abs().max())
        norm = top * float(torch.linalg.vector_norm(x[row].double() / top))  # past float64 too, unlike norms
        kind = "float64" if x.dtype == torch.float64 else "float32"
        raise UsageError(
            f"{name} has values too large to square in {kind}: row {row} has a norm of {norm:.3g} (largest "
            f"value {top:.3g}), above {limit:.3g}, and its squared distances would overflow; rescale {name}"
            + ("" if kind == "float64" else " or pass float64")
        )

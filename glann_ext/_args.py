"""Integer arguments of the public API, checked one way everywhere: numpy integers and 0-d integer tensors are
integers (``operator.index``); bools, floats (``2.0``) and strings are not, and are refused by name. And the
one rule for a positive finite number (:func:`is_positive_finite`)."""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import numpy as np
import torch

from glann_ext.errors import UsageError

# the largest seed any function takes: seeds feed torch.Generator.manual_seed (a signed 64-bit value), and
# seeding.generator reduces its derived seeds modulo 2**63, so 2**63 would draw what 0 draws
MAX_SEED = 2**63 - 1


def as_index(value: Any) -> int | None:
    """``value`` as a Python int if it is an integer (what ``operator.index`` takes: int, numpy integers,
    0-d integer tensors and arrays), else None: bools, floats, strings and tensors of other shapes are not."""
    if isinstance(value, bool) or (
        isinstance(value, torch.Tensor) and (value.dim() != 0 or value.dtype == torch.bool or value.is_meta)
    ):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def is_finite_number(value: float) -> bool:
    """``math.isfinite`` for an int or float, False (not OverflowError) for an int beyond a float's range:
    JSON, and so a model file or a config, may hold 10**400."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def as_finite_real(value: Any) -> float | None:
    """``value`` as a Python float if it is a finite real number (int, float, numpy scalars of any width, 0-d
    real tensors and arrays; not a bool), else None."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if value.ndim != 0 or (isinstance(value, torch.Tensor) and value.is_meta):
            return None
        value = value.item()  # a bool or complex item is refused below
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        return None
    return float(value) if is_finite_number(value) else None  # an int or Fraction past float64: None


def is_positive_finite(value: Any) -> bool:
    """Whether ``value`` is a real number (:func:`as_finite_real`'s: int, float, numpy scalars, 0-d real
    tensors and arrays; not a bool) that is finite and > 0."""
    number = as_finite_real(value)
    return number is not None and number > 0


def checked_positive_finite(name: str, value: Any) -> float:
    """``value`` as a Python float if it is a finite number > 0 (:func:`is_positive_finite`), else a
    one-line :class:`UsageError` naming ``name``."""
    if not is_positive_finite(value):
        raise UsageError(f"{name} must be a finite number > 0, got {value!r:.60}")
    return float(value)


def checked_int(name: str, value: Any, low: int | None, high: int | None = None) -> int:
    """``value`` as a Python int in [``low``, ``high``] (None: unbounded; see :func:`as_index`: ``2.0``,
    ``True`` and ``"5"`` are not integers), else a one-line :class:`UsageError` naming ``name``."""
    number = as_index(value)
    if number is None or (low is not None and number < low):
        rule = "an integer" if low is None else f"an integer >= {low}"
        raise UsageError(f"{name} must be {rule}, got {value!r:.60}")
    if high is not None and number > high:
        raise UsageError(f"{name} must be an integer in [{low}, {high:,}], got {number:,}")
    return number


def checked_seed(seed: Any, name: str = "seed") -> int:
    """``seed`` as an int in [0, :data:`MAX_SEED`], else a UsageError naming ``name``."""
    return checked_int(name, seed, 0, MAX_SEED)


def seed_or_drawn(seed: Any, name: str = "seed") -> int:
    """``seed`` as :func:`checked_seed` takes it; None draws one from torch's global generator, so that calls
    without a seed draw new samples each time (and ``torch.manual_seed`` makes them repeatable)."""
    if seed is None:
        return int(torch.randint(0, MAX_SEED, (), dtype=torch.int64))
    return checked_seed(seed, name)

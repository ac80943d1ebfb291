"""Exact rescaling by powers of two, so that squares of features neither underflow nor overflow.

Distances, covariances and Fréchet distances scale with a power of the features; multiplying by a power of
two changes no mantissa, so a metric computed on rescaled features and scaled back is the same number (away
from float64's subnormal range), without the squares of data at 1e-170 underflowing to 0 or those of data at
1e200 overflowing.
"""

from __future__ import annotations

import math

import torch


def largest(*sets: torch.Tensor) -> float:
    """The largest absolute value in any of ``sets`` (0 when all are empty)."""
    return max((float(x.abs().max()) for x in sets if x.numel()), default=0.0)


def unit_exponent(top: float) -> int:
    """The exponent e for which ``top * 2**e`` lies in [1, 2) (``top`` > 0, a largest absolute value); 0 for
    0."""
    return 1 - math.frexp(top)[1] if top > 0 else 0


def times_power_of_two(x: torch.Tensor, exponent: int) -> torch.Tensor:
    """``x * 2**exponent`` (``x`` itself for 0), in two exact halves: for a subnormal top, ``2**exponent``
    alone (up to 2^1074) is past float64's largest value."""
    if exponent == 0:
        return x
    x = x * math.ldexp(1.0, exponent // 2)
    return x.mul_(math.ldexp(1.0, exponent - exponent // 2))

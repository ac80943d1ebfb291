"""Mean and standard error over seeds."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._scale import unit_exponent


def mean_sem(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, standard error)`` with the sample standard deviation: ``sem = std(ddof=1) / sqrt(n)``.

    One value has no spread estimate: its sem is ``nan``. Empty input is a ``ValueError``.
    """
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("values must not be empty")
    if any(math.isinf(v) or math.isnan(v) for v in values):
        # inf - inf: the spread is undefined (and the mean inf, -inf or nan)
        return sum(values) / n, math.nan
    top = max(abs(v) for v in values)
    # values past 2^500 are first scaled by a power of two (exact), so that the sum and the squared deviations
    # neither overflow (an OverflowError at 1e200) nor reach inf (at 1e308); the others are left as they are
    # (the same bits as before, and a tiny value beside them is not scaled into the subnormal range)
    exponent = unit_exponent(top) if top > 2.0**500 else 0
    scaled = [math.ldexp(v, exponent) for v in values]
    mean = sum(scaled) / n
    if n == 1:
        return math.ldexp(mean, -exponent), math.nan
    var = sum((v - mean) ** 2 for v in scaled) / (n - 1)
    return math.ldexp(mean, -exponent), math.ldexp(math.sqrt(var / n), -exponent)


def aggregate_seeds(results: Sequence[Any]) -> dict[str, tuple[float, float]]:
    """``{field: (mean, sem)}`` over per-seed results (dataclasses or mappings of numbers).

    Only fields that are plain numbers in every result are aggregated (tensors and histograms are
    skipped), e.g. ``aggregate_seeds([mode_coverage(s, RING_VEEGAN) for s in runs])``.
    """
    if len(results) == 0:
        raise ValueError("results must not be empty")
    rows: list[Mapping[str, Any]] = []
    for i, r in enumerate(results):
        if dataclasses.is_dataclass(r) and not isinstance(r, type):
            rows.append({f.name: getattr(r, f.name) for f in dataclasses.fields(r)})
        elif isinstance(r, Mapping):
            rows.append(r)
        else:
            raise TypeError(f"results[{i}] must be a dataclass or a mapping, got {type(r).__name__}")
    keys = [k for k, v in rows[0].items() if _is_number(v)]
    out = {}
    for k in keys:
        if all(k in row and _is_number(row[k]) for row in rows):
            out[k] = mean_sem([row[k] for row in rows])
    return out


def _is_number(v: object) -> bool:
    # numpy scalars count too (np.float32 is not a float subclass, np.float64 is)
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))

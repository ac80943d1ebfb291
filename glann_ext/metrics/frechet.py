"""Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, the FID formula).

    FD = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

``tr((S1 S2)^(1/2))`` is computed without a non-symmetric matrix square root: with ``R = S1^(1/2)``
(symmetric, from an eigen-decomposition), ``S1 S2 = R (R S2 R) R^-1`` is similar to the symmetric PSD
matrix ``R S2 R``, so the trace is ``sum_i sqrt(lambda_i(R S2 R))``. Negative eigenvalues from
rounding are clipped to 0. Everything is float64; covariances use ``N - 1`` (as numpy.cov / pytorch-fid).
:func:`frechet_distance` computes it on features brought near 1 by a power of two (exact), and scales back
(the features' covariance would overflow first); :func:`frechet_distance_from_statistics` does the same with
the statistics it is given.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from glann_ext.errors import NonFiniteError, UsageError

from ._checks import as_float_matrix
from ._scale import largest, times_power_of_two, unit_exponent


def feature_statistics(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, float64 numpy, N >= 2."""
    x = as_float_matrix("features", features, min_rows=2).numpy()
    with np.errstate(over="ignore", invalid="ignore"):
        mean, cov = x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))
    if not (np.isfinite(mean).all() and np.isfinite(cov).all()):  # finite features: squares past float64
        raise UsageError(
            f"features has values too large to square in float64 (up to {float(np.abs(x).max()):.3g}): its "
            "covariance overflows; rescale it (frechet_distance takes features of any scale)"
        )
    return mean, cov


def _sym_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_from_statistics(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); covariances symmetric PSD. Statistics of
    any scale: computed on means and covariances brought near 1 by a power of two (exact), and scaled back."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    for name, m in (("mu1", mu1), ("mu2", mu2)):
        if m.shape != (d,):
            raise ValueError(f"{name} must have shape ({d},) like mu1's length, got {m.shape}")
        if not np.isfinite(m).all():
            raise NonFiniteError(f"{name} contains NaN or Inf values", argument=name)
    for name, s in (("sigma1", s1), ("sigma2", s2)):
        if s.shape != (d, d):
            raise ValueError(f"{name} must have shape ({d}, {d}), got {s.shape}")
        if not np.isfinite(s).all():
            raise NonFiniteError(f"{name} contains NaN or Inf values", argument=name)
    # FD and the covariances scale as the square of a feature, the middle matrix R S2 R as its fourth power:
    # on statistics of features near 1e80 it overflowed, near 1e-100 it underflowed (as frechet_distance says)
    top = max([float(np.abs(m).max(initial=0.0)) for m in (mu1, mu2)] + [
        math.sqrt(float(np.abs(s).max(initial=0.0))) for s in (s1, s2)
    ])  # fmt: skip
    shift = unit_exponent(top)
    mu1, mu2 = (np.ldexp(m, shift) for m in (mu1, mu2))
    s1, s2 = (np.ldexp(s, 2 * shift) for s in (s1, s2))
    for name, s in (("sigma1", s1), ("sigma2", s2)):  # scaled: subnormal entries round no worse than others
        low = float(np.linalg.eigvalsh((s + s.T) / 2).min()) if d else 0.0
        if low < -1e-6 * float(np.abs(s).max()):  # rounding aside, a covariance is PSD (at any scale)
            raise ValueError(
                f"{name} must be positive semi-definite, got an eigenvalue of {math.ldexp(low, -2 * shift):.3g}"
            )
    root1 = _sym_sqrt(s1)
    middle = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    fd = max(float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean), 0.0)  # below 0: rounding
    try:
        return math.ldexp(fd, -2 * shift)
    except OverflowError:
        raise UsageError(
            f"the statistics are too large (means or root covariances up to {top:.3g}): their Fréchet "
            f"distance, a squared distance, is past float64's maximum {np.finfo(np.float64).max:.3g}; rescale them"
        ) from None


def frechet_distance(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to (N1, D) and (N2, D) features (N >= 2 each)."""
    x1 = as_float_matrix("features1", features1, min_rows=2)
    x2 = as_float_matrix("features2", features2, columns=x1.shape[1], min_rows=2)
    # FD scales as the square of the features, and its middle matrix R S2 R as their fourth power: computed on
    # features scaled by a power of two (exact) to a largest value in [1, 2), neither overflows nor underflows
    # (features near 1e80 failed with "Eigenvalues did not converge", near 1e160 read as "sigma1 contains
    # NaN or Inf"; near 1e-100 the middle matrix underflowed to 0 and FD came out 7 times too large)
    tops = [largest(x1), largest(x2)]
    top = max(tops)
    shift = unit_exponent(top)
    x1, x2 = times_power_of_two(x1, shift), times_power_of_two(x2, shift)
    fd = frechet_distance_from_statistics(*feature_statistics(x1), *feature_statistics(x2))
    try:
        return math.ldexp(fd, -2 * shift)
    except OverflowError:
        name = "features1" if tops[0] >= tops[1] else "features2"
        raise UsageError(
            f"{name} has values too large to square in float64 (up to {top:.3g}): their Fréchet distance, "
            f"a squared distance, is past float64's maximum {np.finfo(np.float64).max:.3g}; rescale the features"
        ) from None

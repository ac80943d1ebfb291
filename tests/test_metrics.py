"""Known-answer tests for glann_ext.metrics (CPU, small inputs)."""

from __future__ import annotations

import copy
import functools
import math
from typing import ClassVar

import numpy as np
import pytest
import torch
from glann_testing import tensors_equal
from torch.nn import functional as F

from glann_ext._threads import intra_op_threads
from glann_ext.errors import CheckpointError
from glann_ext.metrics import (
    ARCH_VERSION,
    GRID_5X5,
    PRDC,
    RING_PACGAN,
    RING_VEEGAN,
    DomainClassifier,
    LeNet,
    aggregate_seeds,
    cache_path,
    code_usage,
    density_coverage,
    find_inception_backend,
    frechet_distance,
    frechet_distance_from_statistics,
    kl_split,
    knn_radii,
    knn_radii_each,
    make_stacked,
    mean_sem,
    memorisation_report,
    mode_coverage,
    moment_ratios,
    nearest_other_code,
    nearest_train,
    prdc,
    precision_recall,
    reverse_kl_uniform,
    save_neighbour_grid,
    stacked_modes,
    standard_fid,
)
from glann_ext.metrics import classifier as classifier_module
from glann_ext.metrics.classifier import FEATURE_DIM, TRAIN_THREADS
from glann_ext.metrics.knn import DEFAULT_TILE_BYTES

# --------------------------------------------------------------------------------------------------
# Mode coverage on 2-D mixtures
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", [RING_VEEGAN, RING_PACGAN, GRID_5X5], ids=lambda p: p.name)
def test_perfect_samples_cover_every_mode_with_kl_near_zero(preset):
    k = len(preset.centres)
    res = mode_coverage(preset.sample(400 * k, seed=1), preset)
    assert res.modes_covered == res.num_modes == k
    # 3-sigma disc of a 2-D isotropic Gaussian holds 1 - exp(-4.5) = 98.9 % of the mass.
    assert abs(res.high_quality_fraction - (1 - math.exp(-4.5))) < 0.01
    assert res.reverse_kl < 0.01
    assert int(res.mode_counts.sum()) == round(res.high_quality_fraction * 400 * k)


def test_presets_match_the_papers():
    assert RING_VEEGAN.std == 0.02 and RING_PACGAN.std == 0.01 and GRID_5X5.std == 0.05
    assert torch.allclose(RING_VEEGAN.centres.norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64))
    assert torch.allclose(RING_PACGAN.centres.norm(dim=1), torch.ones(8, dtype=torch.float64))
    assert sorted(set(GRID_5X5.centres[:, 0].tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]
    assert GRID_5X5.centres.shape == (25, 2)


def test_single_mode_generator_covers_one_mode_with_kl_log_k():
    samples = RING_VEEGAN.centres[3].float() + 0.02 * torch.randn(500, 2)
    res = mode_coverage(samples, RING_VEEGAN)
    assert res.modes_covered == 1
    assert res.mode_counts[3] == res.mode_counts.sum()
    assert res.reverse_kl == pytest.approx(math.log(8), abs=1e-12)


def test_off_manifold_samples_are_not_high_quality():
    # Midway between two ring modes: nearest mode is far beyond 3 std.
    samples = torch.zeros(10, 2)
    res = mode_coverage(samples, RING_PACGAN)
    assert res.high_quality_fraction == 0.0 and res.modes_covered == 0
    assert res.reverse_kl == math.inf  # documented: no HQ sample -> undefined histogram -> inf


def test_min_count_threshold_and_explicit_centres():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    samples = torch.tensor([[0.0, 0.0]] * 5 + [[10.0, 0.0]] * 2)
    assert mode_coverage(samples, centres, 1.0).modes_covered == 2
    assert mode_coverage(samples, centres, 1.0, min_count=3).modes_covered == 1
    p = torch.tensor([5 / 7, 2 / 7], dtype=torch.float64)
    expected = float((p * (2 * p).log()).sum())
    assert mode_coverage(samples.numpy(), centres, 1.0).reverse_kl == pytest.approx(expected, rel=1e-12)


def test_mode_coverage_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="samples"):
        mode_coverage(torch.zeros(4, 3), RING_VEEGAN)
    with pytest.raises(ValueError, match="samples"):
        mode_coverage(torch.full((4, 2), math.nan), RING_VEEGAN)
    with pytest.raises(TypeError, match="samples"):
        mode_coverage([[0.0, 0.0]], RING_VEEGAN)
    with pytest.raises(ValueError, match="std"):
        mode_coverage(torch.zeros(4, 2), RING_VEEGAN.centres, -1.0)
    with pytest.raises(ValueError, match="centres"):
        mode_coverage(torch.zeros(4, 2), torch.zeros(3, 3), 1.0)
    with pytest.raises(ValueError, match="min_count"):
        mode_coverage(torch.zeros(4, 2), RING_VEEGAN, min_count=0)


def test_aggregate_over_seeds():
    mean, sem = mean_sem([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and sem == pytest.approx(math.sqrt(5 / 3) / 2)
    assert math.isnan(mean_sem([1.0])[1])
    runs = [mode_coverage(RING_VEEGAN.sample(800, seed=s), RING_VEEGAN) for s in range(3)]
    agg = aggregate_seeds(runs)
    assert set(agg) == {"modes_covered", "num_modes", "high_quality_fraction", "reverse_kl"}
    assert agg["modes_covered"] == (8.0, 0.0)
    with pytest.raises(ValueError, match="results"):
        aggregate_seeds([])


def test_mode_coverage_boundaries_are_inclusive():
    """A sample exactly ``num_std * std`` from its centre is high quality (``<=``, exact here in float64), and a
    mode with exactly ``min_count`` HQ samples is covered (``>=``)."""
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    samples = torch.tensor([[3.0, 0.0], [0.0, -3.0], [10.0, 0.0], [10.0, 3.5]])  # the last is 3.5 std out
    res = mode_coverage(samples, centres, 1.0)
    assert res.mode_counts.tolist() == [2, 1] and res.high_quality_fraction == 0.75
    assert mode_coverage(samples, centres, 0.5, num_std=6.0).mode_counts.tolist() == [2, 1]
    assert mode_coverage(samples, centres, 1.0, min_count=2).modes_covered == 1
    two = torch.tensor([[0.0, 0.0]] * 5 + [[10.0, 0.0]] * 2)
    assert mode_coverage(two, centres, 1.0, min_count=2).modes_covered == 2


def test_mode_coverage_of_a_preset_takes_an_explicit_std():
    # 0.1 from every ring centre: 5 of RING_VEEGAN's own std (0.02), so not HQ, but HQ at std=0.05
    ring = RING_VEEGAN.centres
    samples = ring + 0.1 * ring / ring.norm(dim=1, keepdim=True)
    assert mode_coverage(samples, RING_VEEGAN).high_quality_fraction == 0.0
    wide = mode_coverage(samples, RING_VEEGAN, std=0.05)
    assert wide.high_quality_fraction == 1.0 and wide.modes_covered == 8
    assert torch.equal(wide.mode_counts, mode_coverage(samples, ring, 0.05).mode_counts)


def test_reverse_kl_of_even_counts_is_zero_not_a_rounding_negative():
    # p log(K p) summed over K even bins rounds below zero for some K (49 in float64): a KL is never negative
    kls = [reverse_kl_uniform(torch.ones(k)) for k in range(1, 60)]
    assert min(kls) >= 0.0 and max(kls) < 1e-12


def test_aggregate_seeds_takes_only_fields_that_are_numbers_in_every_result():
    rows = [
        {"a": 1.0, "b": 2, "c": 1.0, "converged": True},
        {"a": 3.0, "b": 4, "converged": False},  # no "c"
        {"a": 5.0, "b": "n/a", "c": 2.0, "converged": True},  # "b" is not a number here
    ]
    assert aggregate_seeds(rows) == {"a": (3.0, pytest.approx(math.sqrt(4 / 3)))}  # bools are not numbers


# --------------------------------------------------------------------------------------------------
# Stacked MNIST
# --------------------------------------------------------------------------------------------------


def _digit_images(labels: torch.Tensor) -> torch.Tensor:
    """Synthetic 'digits': pixel (0, d) lit, plus faint noise."""
    x = 0.05 * torch.rand(len(labels), 1, 28, 28)
    x[torch.arange(len(labels)), 0, 0, labels] = 1.0
    return x


def _fake_classifier(x: torch.Tensor) -> torch.Tensor:
    assert x.shape[1:] == (1, 28, 28)
    return 10.0 * x[:, 0, 0, :10]


def test_stacked_mnist_counts_the_expected_modes():
    labels = torch.arange(10).repeat(20)
    digits = _digit_images(labels)
    stacked, ids = make_stacked(digits, labels, num_samples=300, seed=3)
    assert stacked.shape == (300, 3, 28, 28)
    res = stacked_modes(_fake_classifier, stacked, batch_size=64)
    assert torch.equal(res.mode_ids, ids)
    assert res.modes_covered == len(torch.unique(ids))
    assert res.num_modes == 1000
    assert (res.kl_classes, res.kl_dependence) == kl_split(res.mode_counts)
    assert res.kl_classes + res.kl_dependence == pytest.approx(res.kl, rel=1e-9)
    # Seeded: the same seed gives the same dataset, another seed a different one.
    again, ids2 = make_stacked(digits, labels, num_samples=300, seed=3)
    assert torch.equal(stacked, again) and torch.equal(ids, ids2)
    assert not torch.equal(ids, make_stacked(digits[:, 0], labels, num_samples=300, seed=4)[1])


def test_stacked_mnist_all_modes_kl_zero_and_one_mode_kl_log_1000():
    modes = torch.arange(1000)
    digits = torch.stack([modes // 100, modes // 10 % 10, modes % 10], 1)
    stacked = torch.cat([_digit_images(digits[:, c]) for c in range(3)], 1)
    res = stacked_modes(_fake_classifier, stacked)
    assert res.modes_covered == 1000 and res.kl == pytest.approx(0.0, abs=1e-12)
    one = stacked_modes(_fake_classifier, stacked[[123] * 50])
    assert one.modes_covered == 1 and one.mode_ids.eq(123).all()
    assert one.kl == pytest.approx(math.log(1000))


def _kl_split_by_counting(counts: torch.Tensor) -> tuple[float, float]:
    """An independent spelling of the split: per-mode loops over (c0, c1, c2) in float64 Python numbers."""
    total = float(counts.sum())
    shares = [[0.0] * 10 for _ in range(3)]
    for mode, n in enumerate(counts.tolist()):
        for c, k in enumerate((mode // 100, mode // 10 % 10, mode % 10)):
            shares[c][k] += n / total
    classes = sum(q * math.log(10 * q) for share in shares for q in share if q > 0)
    dependence = 0.0
    for mode, n in enumerate(counts.tolist()):
        if n:
            a, b, c = mode // 100, mode // 10 % 10, mode % 10
            dependence += n / total * math.log(n / total / (shares[0][a] * shares[1][b] * shares[2][c]))
    return classes, dependence


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_split_matches_counting_and_adds_up_to_the_kl(seed):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 50, (1000,), generator=g)
    counts[torch.rand(1000, generator=g) < 0.3] = 0  # empty modes, as in generated samples
    classes, dependence = kl_split(counts)
    ref_classes, ref_dependence = _kl_split_by_counting(counts)
    assert classes == pytest.approx(ref_classes, rel=1e-9, abs=1e-12)
    assert dependence == pytest.approx(ref_dependence, rel=1e-9, abs=1e-12)
    assert classes + dependence == pytest.approx(reverse_kl_uniform(counts), rel=1e-9)
    assert dependence > 0.01 and classes > 1e-4  # random counts are neither independent nor even


def test_kl_split_known_histograms():
    modes = torch.arange(1000)
    c0, c1, c2 = modes // 100, modes // 10 % 10, modes % 10
    # independent channels with uneven shares: the whole KL is the shares', none is dependence
    w = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    counts = w[c0] * w[c1] * w[c2]
    q = w.double() / w.sum()
    one = float((q * (10 * q).log()).sum())
    classes, dependence = kl_split(counts)
    assert classes == pytest.approx(3 * one, rel=1e-12) and dependence == pytest.approx(0.0, abs=1e-12)
    assert kl_split(counts.numpy()) == (classes, dependence)  # an array too (an AttributeError before)
    # three equal channels (modes 000, 111, ..., 999): even shares, all dependence, log(100) of it
    diagonal = ((c0 == c1) & (c1 == c2)).long()
    assert kl_split(diagonal) == (pytest.approx(0.0, abs=1e-12), pytest.approx(math.log(100), rel=1e-12))
    # one mode: every channel is one class, and independent
    single = torch.zeros(1000, dtype=torch.long)
    single[123] = 7
    assert kl_split(single) == (pytest.approx(3 * math.log(10), rel=1e-12), pytest.approx(0.0, abs=1e-12))
    assert kl_split(torch.zeros(1000)) == (math.inf, math.inf)
    with pytest.raises(ValueError, match=r"counts must have shape \(1000,\), got \(10, 100\)"):
        kl_split(torch.ones(10, 100))
    for bad in (-1.0, math.nan, math.inf):
        counts = torch.ones(1000)
        counts[5] = bad
        with pytest.raises(ValueError, match="counts must be finite and >= 0"):
            kl_split(counts)


def test_stacked_generic_names_label_any_ten_class_items():
    """make_stacked / stacked_modes stack items of any 10-class set (stacked Fashion-MNIST too), labelled
    per channel: mode 100 c0 + 10 c1 + c2."""
    classes = torch.tensor([3, 9, 0, 7])
    items = _digit_images(classes)
    stacked, ids = make_stacked(items, classes, num_samples=64, seed=0)
    res = stacked_modes(_fake_classifier, stacked)
    assert torch.equal(res.mode_ids, ids)
    assert set(res.mode_ids.tolist()) <= {
        100 * a + 10 * b + c for a in (3, 9, 0, 7) for b in (3, 9, 0, 7) for c in (3, 9, 0, 7)
    }
    assert int(res.mode_counts.sum()) == 64 and res.modes_covered == len(set(ids.tolist()))


def test_stacked_mnist_bad_inputs():
    with pytest.raises(ValueError, match="images"):
        stacked_modes(_fake_classifier, torch.zeros(2, 1, 28, 28))
    with pytest.raises(TypeError, match="classifier"):
        stacked_modes(None, torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="classifier must return"):
        stacked_modes(lambda x: x[:, 0, 0, :5], torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="labels"):
        make_stacked(torch.zeros(4, 28, 28), torch.zeros(3, dtype=torch.long), num_samples=2)
    with pytest.raises(ValueError, match=r"labels must be integer digits 0..9, got float32 in \[0.0, 3.0\]"):
        make_stacked(torch.zeros(4, 28, 28), torch.arange(4.0), num_samples=2)


def test_kl_split_dependence_of_independent_channels_is_never_negative():
    # exactly independent histograms: the dependence is 0 but its float64 sum rounds below 0 for some of them
    modes = torch.arange(1000)
    c0, c1, c2 = modes // 100, modes // 10 % 10, modes % 10
    for seed in range(20):
        w = torch.randint(1, 10, (10,), generator=torch.Generator().manual_seed(seed))
        classes, dependence = kl_split(w[c0] * w[c1] * w[c2])
        assert 0.0 <= dependence < 1e-12, seed
        q = w.double() / w.sum()
        assert classes == pytest.approx(3 * float((q * (10 * q).log()).sum()), rel=1e-12)


def test_make_stacked_draws_every_image_in_every_channel():
    labels = torch.arange(3)
    _, ids = make_stacked(torch.rand(3, 1, 2, 2), labels, num_samples=300, seed=0)
    for digit in (ids // 100, ids // 10 % 10, ids % 10):
        counts = torch.bincount(digit, minlength=10)
        assert counts[3:].sum() == 0 and counts[:3].min() >= 70  # about 100 each: uniform with replacement


# --------------------------------------------------------------------------------------------------
# k-NN radii, Fréchet distance, PRDC
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("tile_bytes", [1, 8 * 37 * 3, 1 << 26])
def test_knn_radii_match_brute_force(k, tile_bytes):
    x = torch.randn(37, 4, dtype=torch.float64)
    x[5] = x[6]  # a duplicate: each is the other's neighbour at distance 0
    got = knn_radii(x, k, tile_bytes=tile_bytes)
    d = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    d.fill_diagonal_(math.inf)
    expected = d.sort(1).values[:, k - 1]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert got[5] == 0.0 if k == 1 else got[5] > 0
    with pytest.raises(ValueError, match="features"):
        knn_radii(x[:k], k)


def test_frechet_distance_identical_sets_is_zero():
    x = torch.randn(300, 16)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_closed_form_for_gaussians():
    rng = np.random.default_rng(0)
    d = 6
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)  # do not commute
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    scipy_linalg = pytest.importorskip("scipy.linalg")
    covmean = scipy_linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance_from_statistics(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    # Diagonal covariances: trace terms reduce to sum (sqrt(a_i) - sqrt(b_i))^2.
    va, vb = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    shift = np.array([3.0, 0.0, -1.0])
    fd = frechet_distance_from_statistics(np.zeros(3), np.diag(va), shift, np.diag(vb))
    assert fd == pytest.approx(10.0 + ((np.sqrt(va) - np.sqrt(vb)) ** 2).sum(), rel=1e-12)


def test_frechet_distance_from_statistics_of_any_scale():
    """Statistics of features scaled by 2**k give 4**k times the distance, to rounding, where the fourth power
    of the middle matrix used to overflow or underflow; past float64 the distance itself is refused, named."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    stats = (rng.normal(size=5), a @ a.T, rng.normal(size=5), b @ b.T)
    base = frechet_distance_from_statistics(*stats)
    for k in (-300, -100, 100, 300, 500):
        scaled = [np.ldexp(s, k if s.ndim == 1 else 2 * k) for s in stats]
        assert frechet_distance_from_statistics(*scaled) == pytest.approx(
            math.ldexp(base, 2 * k), rel=1e-9
        ), k
    with pytest.raises(ValueError, match="Fréchet distance, a squared distance, is past float64's maximum"):
        frechet_distance_from_statistics(
            *[np.ldexp(s, 520) if s.ndim == 1 else s for s in stats]
        )  # means 2**520


def test_frechet_distance_of_small_sets_uses_the_unbiased_covariance():
    # as pytorch-fid and the FID paper's code (np.cov): {0, 2} vs {0, 0, 3, 3} in 1-D, means 1 and 1.5,
    # variances 2 and 3 (n - 1 in the denominator): 0.25 + 2 + 3 - 2 sqrt(6)
    fd = frechet_distance(torch.tensor([[0.0], [2.0]]), torch.tensor([[0.0], [0.0], [3.0], [3.0]]))
    assert fd == pytest.approx(0.25 + 5 - 2 * math.sqrt(6), rel=1e-12)


def test_frechet_distance_of_shifted_gaussian_samples():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    y = 2.0 * torch.randn(20000, 3, generator=g, dtype=torch.float64) + torch.tensor([1.0, 0.0, 0.0])
    # ||mu||^2 + sum (1 - 2)^2 = 1 + 3
    assert frechet_distance(x, y) == pytest.approx(4.0, abs=0.15)


def test_frechet_bad_inputs():
    with pytest.raises(ValueError, match="features2"):
        frechet_distance(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(ValueError, match="features1"):
        frechet_distance(torch.randn(1, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="sigma2"):
        frechet_distance_from_statistics(np.zeros(2), np.eye(2), np.zeros(2), np.eye(3))
    for bad in (math.nan, math.inf):  # named, not numpy's "Array must not contain infs or NaNs"
        with pytest.raises(ValueError, match="sigma2 contains NaN or Inf values"):
            frechet_distance_from_statistics(np.zeros(2), np.eye(2), np.zeros(2), np.full((2, 2), bad))


def test_frechet_distance_of_identical_statistics_is_never_negative():
    # 2 tr(S) - 2 sum sqrt(eig(S^1/2 S S^1/2)) rounds below 0 for about half of these; a distance is >= 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        a, mu = rng.normal(size=(5, 5)), rng.normal(size=5)
        fd = frechet_distance_from_statistics(mu, a @ a.T, mu, a @ a.T)
        assert 0.0 <= fd < 1e-9, seed


def test_frechet_distance_of_float32_statistics_is_computed_in_float64():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    stats = [rng.normal(size=6), a @ a.T, rng.normal(size=6), b @ b.T]
    single = [s.astype(np.float32) for s in stats]
    want = frechet_distance_from_statistics(*(s.astype(np.float64) for s in single))  # the same values
    assert frechet_distance_from_statistics(*single) == pytest.approx(want, rel=1e-12)  # float32: 4e-7 off


def test_frechet_distance_clips_a_rounding_negative_eigenvalue_to_zero():
    # sigma2 = diag(1, -1e-8) passes the PSD check (rounding); its -1e-8 counts as 0 in the square root, not as
    # |-1e-8| (which would take 2e-4 off): ||0||^2 + tr(I) + (1 - 1e-8) - 2 * (1 + 0)
    fd = frechet_distance_from_statistics(np.zeros(2), np.eye(2), np.zeros(2), np.diag([1.0, -1e-8]))
    assert fd == pytest.approx(1.0 - 1e-8, rel=1e-12)


def test_prdc_identical_sets():
    x = torch.randn(400, 10)
    res = prdc(x, x.clone())
    assert (res.precision, res.recall, res.coverage) == (1.0, 1.0, 1.0)
    assert res.density == pytest.approx(1.0, abs=1e-12)


def test_prdc_disjoint_sets_and_brute_force():
    real = torch.randn(120, 5, dtype=torch.float64)
    far = torch.randn(90, 5, dtype=torch.float64) + 100.0
    assert prdc(real, far) == PRDC(0.0, 0.0, 0.0, 0.0)
    fake = 1.3 * torch.randn(90, 5, dtype=torch.float64) + 0.3
    d = torch.cdist(real, fake, compute_mode="donot_use_mm_for_euclid_dist")  # (N, M)
    r_real, r_fake = knn_radii(real, 3), knn_radii(fake, 3)
    p, r = precision_recall(real, fake, k=3, tile_bytes=1000)
    assert p == pytest.approx(float((d <= r_real[:, None]).any(0).double().mean()))
    assert r == pytest.approx(float((d <= r_fake[None, :]).any(1).double().mean()))
    r5 = knn_radii(real, 5)
    dens, cov = density_coverage(real, fake, k=5, tile_bytes=1000)
    assert dens == pytest.approx(float((d < r5[:, None]).double().sum(0).mean() / 5))
    assert cov == pytest.approx(float((d.min(1).values < r5).double().mean()))


def test_prdc_bad_inputs():
    with pytest.raises(ValueError, match="fake"):
        prdc(torch.randn(10, 3), torch.randn(10, 2))
    with pytest.raises(ValueError, match="k"):
        precision_recall(torch.randn(10, 3), torch.randn(10, 3), k=0)


def _prdc_brute_force(real, fake, k_pr, k_dc):
    """The papers' definitions on full float64 distance matrices (direct differences, no expansion)."""
    dist = functools.partial(torch.cdist, compute_mode="donot_use_mm_for_euclid_dist")
    d_rr, d_ff, d_rf = dist(real, real), dist(fake, fake), dist(real, fake)  # (N, N), (M, M), (N, M)
    rr_sorted = d_rr.sort(1).values  # column 0 is the point itself
    r_pr, r_dc, f_pr = rr_sorted[:, k_pr], rr_sorted[:, k_dc], d_ff.sort(1).values[:, k_pr]
    return PRDC(
        precision=float((d_rf <= r_pr[:, None]).any(0).double().mean()),
        recall=float((d_rf <= f_pr[None, :]).any(1).double().mean()),
        density=float((d_rf < r_dc[:, None]).double().sum()) / (k_dc * fake.shape[0]),
        coverage=float((d_rf.min(1).values < r_dc).double().mean()),
    )


@pytest.mark.parametrize(("k_pr", "k_dc"), [(3, 5), (5, 3), (2, 2), (1, 7)])
@pytest.mark.parametrize("tile_bytes", [1000, DEFAULT_TILE_BYTES])
def test_prdc_in_one_cross_pass_on_tied_points(k_pr, k_dc, tile_bytes):
    """prdc reads the real x fake distances once for all four metrics (cross_pass: balls on both sets and
    the nearest fake) and the real radii for both k at once (knn_radii_each). On points of a half-integer
    grid, where many distances tie with a radius and every one is exact, all four equal the definitions
    exactly, over several tiles and whichever k is larger; so do the metrics taken alone."""
    g = torch.Generator().manual_seed(k_pr * 10 + k_dc)
    real = torch.randint(-3, 4, (150, 4), generator=g).double()
    fake = torch.randint(-3, 4, (130, 4), generator=g).double() + 0.5 * (
        torch.rand(130, 1, generator=g) < 0.5
    )
    want = _prdc_brute_force(real, fake, k_pr, k_dc)
    assert prdc(real, fake, k_pr=k_pr, k_dc=k_dc, tile_bytes=tile_bytes) == want
    assert precision_recall(real, fake, k=k_pr, tile_bytes=tile_bytes) == (want.precision, want.recall)
    assert density_coverage(real, fake, k=k_dc, tile_bytes=tile_bytes) == (want.density, want.coverage)
    each = knn_radii_each(real, (k_pr, k_dc), tile_bytes=tile_bytes)
    assert torch.equal(each[0], knn_radii(real, k_pr)) and torch.equal(each[1], knn_radii(real, k_dc))


def test_prdc_names_the_k_that_is_wrong():
    x = torch.randn(6, 3)
    with pytest.raises(ValueError, match=r"^k_pr must be a positive int, got 0"):
        prdc(x, x, k_pr=0)
    with pytest.raises(ValueError, match=r"^k_dc must be a positive int, got 2\.0"):
        prdc(x, x, k_dc=2.0)
    with pytest.raises(ValueError, match=r"^real must have at least k_dc \+ 1 = 7 rows for k_dc=6, got 6"):
        prdc(x, x, k_dc=6)
    with pytest.raises(ValueError, match=r"^fake must have at least k_pr \+ 1 = 4 rows for k_pr=3, got 3"):
        prdc(x, x[:3], k_dc=2)


def test_prdc_ball_boundaries_on_exact_points():
    """Points on a ball's boundary: closed for precision and recall, open for density and coverage (as the
    papers' definitions and code). In 1-D with k = 1, reals 0, 1, 3, 6 have radii 1, 1, 2, 3 and fakes -1,
    0.5, 9, 20 radii 1.5, 1.5, 8.5, 11 (every distance exact in float64): fakes -1 and 9 lie on the balls of
    reals 0 and 6; 0.5 is inside two balls; 20 in none. Real 6's nearest fake (9) lies on its boundary."""
    real = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    fake = torch.tensor([[-1.0], [0.5], [9.0], [20.0]])
    assert precision_recall(real, fake, k=1) == (0.75, 1.0)  # open balls: 0.25
    assert density_coverage(real, fake, k=1) == (0.5, 0.5)  # closed: coverage 0.75 (real 6 counted)
    assert prdc(real, fake, k_pr=1, k_dc=1) == PRDC(precision=0.75, recall=1.0, density=0.5, coverage=0.5)


def test_recall_counts_a_real_on_a_fake_ball_boundary():
    """Recall's fake balls are closed too. In 1-D with k = 1, fakes 0, 2, 10, 11 have radii 2, 2, 1, 1 and reals
    0.5, 4, 20, 30 radii 3.5, 3.5, 10, 10 (exact in float64): real 4 lies only on fake 2's boundary, real 0.5
    inside, 20 and 30 in no fake ball; fake 10 lies only on real 20's boundary."""
    real = torch.tensor([[0.5], [4.0], [20.0], [30.0]])
    fake = torch.tensor([[0.0], [2.0], [10.0], [11.0]])
    assert knn_radii(fake, 1).tolist() == [2.0, 2.0, 1.0, 1.0]
    assert precision_recall(real, fake, k=1) == (1.0, 0.5)  # open balls: recall 0.25


def test_prdc_of_a_set_against_itself_is_exact_in_16_dimensions():
    # the expanded distance is not exactly symmetric: deciding by it alone, with the queries as rows, gave
    # density 1.0033 for most of these; every pair near a boundary is decided by its direct distance, so
    # recall's fake balls (the fake set is cross_pass's column operand) are exact too
    for seed in range(5):
        x = 3 * torch.randn(60, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 1
        assert prdc(x, x.clone()) == PRDC(1.0, 1.0, 1.0, 1.0), seed


# --------------------------------------------------------------------------------------------------
# Domain classifier
# --------------------------------------------------------------------------------------------------


def _bars(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three separable classes: a bright horizontal bar in the top, middle or bottom third."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(3, (n,), generator=g)
    x = 0.3 * torch.rand(n, 1, 28, 28, generator=g)
    for c in range(3):
        rows = slice(2 + 9 * c, 6 + 9 * c)
        x[y == c, :, rows, :] += 0.7
    return x, y


def test_domain_classifier_trains_and_cache_round_trips(tmp_path, monkeypatch):
    xtr, ytr = _bars(600, 0)
    xte, yte = _bars(200, 1)
    state = torch.get_rng_state()
    clf = DomainClassifier.load_or_train(
        "bars", xtr, ytr, xte, yte, cache_dir=tmp_path, num_classes=3, epochs=2, batch_size=32
    )
    assert torch.equal(state, torch.get_rng_state())  # training does not touch the global RNG
    assert clf.test_accuracy >= 0.95
    assert clf.accuracy(xte, yte) == pytest.approx(clf.test_accuracy)
    # inputs are standardised by the training images' own mean and standard deviation
    assert float(clf.model.mean) == pytest.approx(float(xtr.double().mean()), rel=1e-6)
    assert float(clf.model.std) == pytest.approx(float(xtr.double().std()), rel=1e-6)
    feats = clf.features(xte)
    assert feats.shape == (200, 84) and feats.dtype == torch.float32
    path = cache_path(tmp_path, "bars", seed=0, epochs=2)
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been loaded")

    monkeypatch.setattr(classifier_module, "_train", no_training)
    again = DomainClassifier.load_or_train(
        "bars", xtr, ytr, xte, yte, cache_dir=tmp_path, num_classes=3, epochs=2, batch_size=32
    )
    assert again.test_accuracy == clf.test_accuracy
    torch.testing.assert_close(again.features(xte), feats)
    torch.testing.assert_close(again(xte), clf(xte))
    with pytest.raises(ValueError, match="num_classes"):
        DomainClassifier.load_or_train(
            "bars", xtr, ytr, xte, yte, cache_dir=tmp_path, num_classes=4, epochs=2
        )


@pytest.mark.parametrize(
    "shape", [(4, 6, 28, 28), (3, 16, 10, 10), (2, 2, 7, 9), (5, 1, 13, 12), (1, 3, 2, 2)]
)
def test_fast_max_pool_equals_torch_including_nan_and_odd_sizes(shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.relu(torch.randn(shape, generator=g))  # ReLU outputs: many tied zeros, as in LeNet
    x.view(-1)[:: max(1, x.numel() // 5)] = float("nan")
    x[0, 0, 0, 1] = 7.0
    want = F.max_pool2d(x, 2)  # floor mode: an odd last row or column is dropped
    got = classifier_module.max_pool2(x)
    assert got.shape == want.shape
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(-1.0), want.nan_to_num(-1.0))


def test_lenet_scores_with_the_fast_pooling_and_trains_with_torchs(monkeypatch):
    torch.manual_seed(0)
    net = classifier_module.LeNet(1, 10, (28, 28)).eval()
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        fast = net.features(x)
    slow = net.features(x)  # with autograd: torch's max_pool2d
    assert slow.requires_grad and torch.equal(fast, slow.detach())
    pooled = []
    original = classifier_module.max_pool2
    monkeypatch.setattr(classifier_module, "max_pool2", lambda t: pooled.append(t.shape) or original(t))
    with torch.no_grad():
        net.features(x)
    net.features(x)
    assert pooled == [(6, 6, 28, 28), (6, 16, 10, 10)]  # the no-grad pass only


def test_domain_classifier_bad_inputs(tmp_path):
    x, y = _bars(8, 0)
    with pytest.raises(ValueError, match="train_labels"):
        DomainClassifier.load_or_train("b", x, y[:4], x, y, cache_dir=tmp_path, num_classes=3)
    with pytest.raises(ValueError, match="test_labels"):
        DomainClassifier.load_or_train("b", x, y, x, y + 5, cache_dir=tmp_path, num_classes=3)
    with pytest.raises(ValueError, match="dataset"):
        DomainClassifier.load_or_train("../evil", x, y, x, y, cache_dir=tmp_path, num_classes=3)
    with pytest.raises(TypeError, match="train_images"):
        DomainClassifier.load_or_train("b", x.long(), y, x, y, cache_dir=tmp_path, num_classes=3)


def test_domain_classifier_refuses_negative_or_float_labels_and_test_images_of_another_size(tmp_path):
    """Each is refused by name before training (nothing is cached): a negative label, float labels, and
    test images of another size than the training images."""
    x, y = _bars(8, 0)
    with pytest.raises(ValueError, match=r"train_labels must lie in \[0, 3\), got \[-1, 1\]"):
        DomainClassifier.load_or_train("b", x, y - 1, x, y, cache_dir=tmp_path, num_classes=3)
    with pytest.raises(ValueError, match=r"test_labels must be an integer \(8,\) tensor, got torch.float32"):
        DomainClassifier.load_or_train("b", x, y, x, y.float(), cache_dir=tmp_path, num_classes=3)
    with pytest.raises(
        ValueError, match=r"test_images must be \(1, 28, 28\) like train_images, got \(1, 29, 29\)"
    ):
        DomainClassifier.load_or_train(
            "b", x, y, F.pad(x, (0, 1, 0, 1)), y, cache_dir=tmp_path, num_classes=3
        )
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_a_classifier_of_constant_images_stays_finite_and_scores_only_its_own_size(tmp_path):
    """Blank training images have standard deviation 0: it is floored at 1e-6, so the inputs standardise to 0
    rather than 0 / 0 = NaN. Images of another size are refused even where LeNet's layers would take them
    (13 x 13 pools to the same 1 x 1 as 12 x 12)."""
    x, y = torch.full((12, 1, 12, 12), 0.5), torch.arange(12) % 2
    clf = DomainClassifier.load_or_train("flat", x, y, x, y, cache_dir=tmp_path, num_classes=2, epochs=1)
    assert float(clf.model.std) == pytest.approx(1e-6)
    assert bool(torch.isfinite(clf.features(x)).all()) and bool(torch.isfinite(clf(x)).all())
    with pytest.raises(ValueError, match=r"images must be \(12, 12\) pixels, got \(13, 13\)"):
        clf.features(torch.full((2, 1, 13, 13), 0.5))


def test_cache_path_names_dataset_architecture_seed_and_epochs(tmp_path):
    path = cache_path(tmp_path, "fashion-mnist", seed=3, epochs=7)
    assert path == tmp_path / f"fashion-mnist__lenet-v{ARCH_VERSION}__seed3__ep7.pt"
    assert cache_path(tmp_path, "fashion-mnist", seed=4, epochs=7) != path


def test_lenet_training_follows_the_documented_recipe(tmp_path):
    """An independent spelling of the training: LeNet initialised under ``torch.manual_seed(seed)``, inputs
    standardised by the training images' mean and (unbiased) std, Adam, every epoch a fresh permutation from a
    generator seeded with ``seed``, every batch (the last one short) a step from zeroed gradients."""
    x, y = _bars(40, 2)
    xte, yte = _bars(10, 3)
    clf = DomainClassifier.load_or_train(
        "bars", x, y, xte, yte, cache_dir=tmp_path, num_classes=3, seed=5, epochs=2, batch_size=16, lr=0.01
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        net = LeNet(1, 3, (28, 28))
    net.mean.fill_(float(x.double().mean()))
    net.std.fill_(float(x.double().std()))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    order = torch.Generator().manual_seed(5)
    with intra_op_threads(TRAIN_THREADS):
        for _ in range(2):
            for batch in torch.randperm(40, generator=order).split(16):  # 16, 16, 8
                loss = F.cross_entropy(net(x[batch]), y[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
    assert tensors_equal(clf.model.state_dict(), net.state_dict())
    plain = LeNet(1, 3, (28, 28))
    plain.load_state_dict({**net.state_dict(), "mean": torch.tensor(0.0), "std": torch.tensor(1.0)})
    with torch.no_grad():
        assert clf.test_accuracy == float((net(xte).argmax(1) == yte).double().mean())
        # the standardisation is the network's own first step: (x - mean) / std into conv1
        torch.testing.assert_close(net.features(x), plain.features((x - net.mean) / net.std))


def test_lenet_training_gives_the_same_weights_whatever_the_callers_thread_count(tmp_path):
    """torch's CPU convolutions split their gradient sums by thread: trained on the caller's 1 or 3 threads,
    the cached LeNet differed, and with it every FD scored in its features (9% on Fashion-MNIST). It trains
    on TRAIN_THREADS whatever the caller set, leaves the caller's setting as it was, and a cache written
    before (no thread count in its meta) is trained again rather than reused."""
    x, y = _bars(300, 2)
    xte, yte = _bars(30, 3)
    kwargs = {"num_classes": 3, "epochs": 2, "batch_size": 32}
    trained = []
    for threads in (1, 3):
        with intra_op_threads(threads):
            folder = tmp_path / str(threads)
            trained.append(DomainClassifier.load_or_train("bars", x, y, xte, yte, cache_dir=folder, **kwargs))
            assert torch.get_num_threads() == threads
    one, three = trained
    assert tensors_equal(one.model.state_dict(), three.model.state_dict()) and one.weights == three.weights
    assert one.meta["threads"] == TRAIN_THREADS and one.weights != _untrained_classifier().weights
    path = cache_path(tmp_path / "1", "bars", seed=0, epochs=2)
    blob = torch.load(path, weights_only=True)
    del blob["meta"]["threads"]
    torch.save(blob, path)
    DomainClassifier.load_or_train("bars", x, y, xte, yte, cache_dir=tmp_path / "1", **kwargs)
    assert torch.load(path, weights_only=True)["meta"]["threads"] == TRAIN_THREADS


def _untrained_classifier(num_classes: int = 3) -> DomainClassifier:
    meta = {"in_channels": 1, "image_size": [12, 12], "num_classes": num_classes}
    return DomainClassifier(LeNet(1, num_classes, (12, 12)), 0.5, meta)


def test_domain_classifier_scores_float64_images_as_float32():
    clf = _untrained_classifier()
    x = torch.rand(5, 1, 12, 12, dtype=torch.float64)
    assert torch.equal(clf.features(x), clf.features(x.float())) and clf.features(x).dtype == torch.float32
    assert torch.equal(clf(x, batch_size=2), clf(x.float(), batch_size=2))


def test_domain_classifier_accuracy_refuses_a_label_equal_to_num_classes():
    with pytest.raises(ValueError, match=r"test_labels must lie in \[0, 3\), got \[0, 3\]"):
        _untrained_classifier().accuracy(torch.rand(4, 1, 12, 12), torch.tensor([0, 1, 2, 3]))


def test_cached_classifier_reports_the_accuracy_on_the_test_set_it_is_given(tmp_path):
    # the same training data, other test labels: the accuracy is not the cached one of the first test set
    x, y = _bars(40, 2)
    xte, yte = _bars(30, 3)
    kwargs = {"cache_dir": tmp_path, "num_classes": 3, "epochs": 2, "batch_size": 16, "lr": 0.01}
    first = DomainClassifier.load_or_train("bars", x, y, xte, yte, **kwargs)
    other = DomainClassifier.load_or_train("bars", x, y, xte, (yte + 1) % 3, **kwargs)
    assert first.test_accuracy == first.accuracy(xte, yte) > 0.9
    assert other.test_accuracy == other.accuracy(xte, (yte + 1) % 3) < 0.1


def test_classifier_cache_tells_apart_data_of_another_dtype_with_the_same_bytes(tmp_path):
    x, y = _bars(20, 0)
    half = x.half()
    bf16 = half.view(torch.bfloat16)  # the same bytes, other values
    kwargs = {"cache_dir": tmp_path, "num_classes": 3, "epochs": 1}
    DomainClassifier.load_or_train("bars", half, y, half, y, **kwargs)
    clf = DomainClassifier.load_or_train("bars", bf16, y, bf16, y, **kwargs)
    assert float(clf.model.mean) == pytest.approx(float(bf16.double().mean()), rel=1e-6)  # trained on it


# --------------------------------------------------------------------------------------------------
# Memorisation
# --------------------------------------------------------------------------------------------------


def test_memorisation_of_training_subset_is_zero(tmp_path):
    train = torch.rand(200, 1, 12, 12)
    test = torch.rand(50, 1, 12, 12)
    copied = train[torch.tensor([3, 17, 17, 150])]
    index, dist = nearest_train(copied, train)
    assert index.tolist() == [3, 17, 17, 150] and dist.abs().max() < 1e-6
    rep = memorisation_report(copied, train, test)
    assert rep.generated_median < 1e-6 < rep.test_median
    assert rep.generated_fraction_below == 1.0
    assert rep.test_fraction_below <= 0.02
    rep2 = memorisation_report(copied, train, test, threshold=0.0)
    assert rep2.generated_fraction_below == 0.0  # strict "<"

    png = save_neighbour_grid(
        tmp_path / "grid.png", copied, train, pairs_per_row=3, index=rep.generated_index
    )
    from PIL import Image

    with Image.open(png) as im:
        assert im.mode == "L" and im.size == (3 * (2 * 12 + 2 + 6) + 6, 2 * (12 + 6) + 6)
        arr = np.asarray(im)
    # Left and right image of the first pair are the same picture (a copy and its neighbour).
    assert np.array_equal(arr[6:18, 6:18], arr[6:18, 20:32])
    rgb = save_neighbour_grid(tmp_path / "rgb.png", torch.rand(2, 3, 8, 8), torch.rand(5, 3, 8, 8))
    with Image.open(rgb) as im:
        assert im.mode == "RGB"


def test_memorisation_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="train"):
        nearest_train(torch.rand(3, 1, 4, 4), torch.rand(5, 1, 5, 5))
    with pytest.raises(TypeError, match="samples"):
        nearest_train([[0.0] * 4] * 3, torch.rand(5, 4))  # arrays are accepted (test_model_arguments.py)
    with pytest.raises(ValueError, match="samples"):
        save_neighbour_grid(tmp_path / "x.png", torch.rand(3, 2, 4, 4), torch.rand(5, 2, 4, 4))
    with pytest.raises(ValueError, match=r"threshold_quantile must lie in \[0, 1\], got 1.5"):
        memorisation_report(torch.rand(3, 4), torch.rand(5, 4), torch.rand(3, 4), threshold_quantile=1.5)
    with pytest.raises(
        ValueError, match=r"index must lie in \[0, 5\) \(train rows\), got values in \[0, 5\]"
    ):
        save_neighbour_grid(
            tmp_path / "x.png", torch.rand(2, 1, 4, 4), torch.rand(5, 1, 4, 4), index=torch.tensor([0, 5])
        )


def test_nearest_train_searches_in_the_wider_of_the_two_precisions():
    """float32 samples against float64 training rows are compared in float64: 1000.00003 rounds to 1000.0 in
    float32, which would make the distance 0."""
    idx, dist = nearest_train(torch.tensor([[1000.0]]), torch.tensor([[1000.00003]], dtype=torch.float64))
    assert idx.tolist() == [0] and float(dist[0]) == pytest.approx(3e-5, rel=1e-6)


def test_neighbour_grid_pixels_are_rounded_to_the_nearest_level_beside_the_indexed_neighbour(tmp_path):
    """Each cell: the sample at (gap, gap), its neighbour ``padding`` to its right, values in 0..1 mapped to
    the nearest of 0..255 (25.5 -> 26, 127.5 -> 128, as numpy's rint), not truncated."""
    from PIL import Image

    levels = torch.tensor([0.1, 0.5, 0.9, 1.0], dtype=torch.float64).reshape(1, 1, 2, 2)
    train = torch.cat([torch.zeros_like(levels), torch.ones_like(levels), 1 - levels])
    path = save_neighbour_grid(tmp_path / "g.png", levels, train, index=torch.tensor([2]))
    with Image.open(path) as im:
        arr = np.asarray(im)
    want = np.rint(levels[0, 0].numpy() * 255).astype(np.uint8)
    assert want.tolist() == [[26, 128], [230, 255]]
    assert np.array_equal(arr[6:8, 6:8], want)  # gap 3 * padding = 6
    assert np.array_equal(arr[6:8, 10:12], np.rint((1 - levels[0, 0].numpy()) * 255).astype(np.uint8))


def test_memorisation_threshold_fractions_count_strictly_below():
    # 1-D: test distances 1, 2, 3, 4 and generated 0, 2; at threshold 2 a distance of exactly 2 is not below
    train = torch.tensor([[0.0], [10.0]])
    test, generated = torch.tensor([[1.0], [2.0], [3.0], [4.0]]), torch.tensor([[0.0], [12.0]])
    rep = memorisation_report(generated, train, test, threshold=2.0)
    assert (rep.test_fraction_below, rep.generated_fraction_below) == (0.25, 0.5)
    by_quantile = memorisation_report(generated, train, test, threshold_quantile=1 / 3)  # 1 + 3 * (1 / 3) = 2
    assert by_quantile.threshold == 2.0 and by_quantile.test_fraction_below == 0.25


def test_neighbour_grid_maps_another_value_range_to_0_255(tmp_path):
    from PIL import Image

    levels = torch.tensor([-1.0, 0.0, 0.5, 1.0], dtype=torch.float64).reshape(1, 1, 2, 2)
    path = save_neighbour_grid(
        tmp_path / "g.png", levels, -levels, index=torch.tensor([0]), value_range=(-1, 1)
    )
    with Image.open(path) as im:
        arr = np.asarray(im)
    assert arr[6:8, 6:8].tolist() == [[0, 128], [191, 255]]  # (v + 1) / 2 * 255, rounded: 127.5 -> 128
    assert arr[6:8, 10:12].tolist() == [[255, 128], [64, 0]]  # the neighbour -levels


# --------------------------------------------------------------------------------------------------
# Standard FID (never downloads)
# --------------------------------------------------------------------------------------------------


def test_standard_fid_without_weights_returns_none_with_reason(tmp_path):
    backend = find_inception_backend(hub_dir=tmp_path)
    assert backend.name is None and "never downloaded" in backend.reason
    res = standard_fid(torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32), hub_dir=tmp_path)
    assert res.value is None and res.reason == backend.reason
    with pytest.raises(ValueError, match="fake_images"):
        standard_fid(torch.rand(4, 3, 32, 32), torch.rand(4, 2, 32, 32), hub_dir=tmp_path)
    with pytest.raises(
        ValueError, match=r"real_images must have 1 or 3 channels, got shape \(4, 2, 32, 32\)"
    ):
        standard_fid(torch.rand(4, 2, 32, 32), torch.rand(4, 3, 32, 32), hub_dir=tmp_path)


def test_images_reach_the_uint8_inception_extractor_rounded_to_the_nearest_level():
    from glann_ext.metrics.fid import _as_uint8

    levels = torch.tensor([-0.5, 0.0, 0.4, 0.6, 127.6, 254.4, 254.6, 255.0, 300.0]) / 255
    assert _as_uint8(levels).tolist() == [0, 0, 0, 1, 128, 254, 255, 255, 255]


def test_inception_backend_detection_needs_package_and_cached_weights(tmp_path, monkeypatch):
    import importlib.util

    from glann_ext.metrics import fid

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        fid.importlib.util,
        "find_spec",
        lambda name: object() if name == "torch_fidelity" else real_find_spec(name),
    )
    missing = find_inception_backend(hub_dir=tmp_path)
    assert missing.name is None and fid.TORCH_FIDELITY_WEIGHTS in missing.reason
    (tmp_path / "checkpoints" / fid.TORCH_FIDELITY_WEIGHTS).mkdir(parents=True)  # a folder is no weights file
    assert find_inception_backend(hub_dir=tmp_path).name is None
    (tmp_path / "checkpoints" / fid.TORCH_FIDELITY_WEIGHTS).rmdir()
    (tmp_path / "checkpoints" / fid.TORCH_FIDELITY_WEIGHTS).write_bytes(b"")
    found = find_inception_backend(hub_dir=tmp_path)
    assert (
        found.name == "torch-fidelity"
        and found.weights == tmp_path / "checkpoints" / fid.TORCH_FIDELITY_WEIGHTS
    )


def _pretend_installed(monkeypatch, *modules: str) -> None:
    """``find_spec`` finds exactly ``modules`` among the two Inception backends' packages."""
    import importlib.util

    from glann_ext.metrics import fid

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        fid.importlib.util,
        "find_spec",
        lambda name: (
            (object() if name in modules else None)
            if name in ("pytorch_fid", "torch_fidelity")
            else real_find_spec(name)
        ),
    )


def test_inception_backend_prefers_pytorch_fid_when_both_are_usable(tmp_path, monkeypatch):
    from glann_ext.metrics import fid

    _pretend_installed(monkeypatch, "pytorch_fid", "torch_fidelity")
    (tmp_path / "checkpoints").mkdir()
    for weights in (fid.PYTORCH_FID_WEIGHTS, fid.TORCH_FIDELITY_WEIGHTS):
        (tmp_path / "checkpoints" / weights).write_bytes(b"")
    found = find_inception_backend(hub_dir=tmp_path)
    assert found.name == "pytorch-fid" and found.weights == tmp_path / "checkpoints" / fid.PYTORCH_FID_WEIGHTS


def test_standard_fid_gives_torch_fidelity_uint8_rgb_batches_and_reports_its_failure(tmp_path, monkeypatch):
    """A stand-in torch-fidelity extractor (features: four pixel values of the uint8 RGB batch it gets): grey
    images reach it repeated to three channels, as uint8, in batches; its failure is a reason, not a raise."""
    import sys
    import types

    from glann_ext.metrics import fid

    _pretend_installed(monkeypatch, "torch_fidelity")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / fid.TORCH_FIDELITY_WEIGHTS).write_bytes(b"")
    seen = []

    class Extractor:
        def __init__(self, name, features, feature_extractor_weights_path):
            assert (name, features) == ("inception-v3-compat", ["2048"])
            assert feature_extractor_weights_path == str(
                tmp_path / "checkpoints" / fid.TORCH_FIDELITY_WEIGHTS
            )

        def eval(self):
            return self

        def __call__(self, x):
            seen.append((x.dtype, tuple(x.shape)))
            return (torch.cat([x[:, :, 1, 2], x[:, 2:, 2, 3]], 1).float(),)

    module = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    module.FeatureExtractorInceptionV3 = Extractor
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    g = torch.Generator().manual_seed(0)
    real, fake = torch.rand(6, 1, 8, 8, generator=g), 0.5 * torch.rand(5, 1, 8, 8, generator=g)
    res = standard_fid(real, fake, batch_size=4, hub_dir=tmp_path)
    assert seen == [(torch.uint8, (n, 3, 8, 8)) for n in (4, 2, 4, 1)]

    def features(t):  # the same pixels of the images rounded to 0..255 and repeated to three channels
        u8 = (t.clamp(0, 1) * 255).round().repeat(1, 3, 1, 1)
        return torch.cat([u8[:, :, 1, 2], u8[:, 2:, 2, 3]], 1)

    assert res.value == pytest.approx(frechet_distance(features(real), features(fake)), rel=1e-12)
    assert res.reason == find_inception_backend(hub_dir=tmp_path).reason

    def broken(self, x):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(Extractor, "__call__", broken)
    assert standard_fid(real, fake, hub_dir=tmp_path) == fid.FIDResult(
        None, "torch-fidelity failed: RuntimeError: out of memory"
    )


def test_standard_fid_gives_pytorch_fid_the_same_8_bit_images_as_torch_fidelity(tmp_path, monkeypatch):
    """pytorch-fid got the unquantised floats where torch-fidelity (and a score of saved PNGs) reads 8-bit
    images, so the two backends scored one set of samples differently: both now see round(255 x) / 255."""
    import sys
    import types

    from glann_ext.metrics import fid

    _pretend_installed(monkeypatch, "pytorch_fid")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / fid.PYTORCH_FID_WEIGHTS).write_bytes(b"")
    seen, hubs, default_hub = [], [], torch.hub.get_dir()

    class InceptionV3:
        BLOCK_INDEX_BY_DIM: ClassVar[dict[int, int]] = {2048: 3}

        def __init__(self, blocks, resize_input, normalize_input):
            assert (blocks, resize_input, normalize_input) == ([3], True, True)
            # pytorch-fid reads its weights from torch.hub's folder: it must be hub_dir's (it was the default)
            hubs.append(torch.hub.get_dir())

        def eval(self):
            return self

        def __call__(self, x):
            seen.append(x)
            return (x.flatten(1)[:, :6, None, None],)

    module = types.ModuleType("pytorch_fid.inception")
    module.InceptionV3 = InceptionV3
    monkeypatch.setitem(sys.modules, "pytorch_fid", types.ModuleType("pytorch_fid"))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    g = torch.Generator().manual_seed(0)
    real, fake = torch.rand(9, 1, 4, 4, generator=g), torch.rand(8, 1, 4, 4, generator=g) * 1.2
    res = standard_fid(real, fake, batch_size=4, hub_dir=tmp_path)
    images = torch.cat(seen)
    assert images.dtype == torch.float32 and images.shape == (17, 3, 4, 4)
    as_bytes = images * 255
    assert torch.equal(as_bytes, as_bytes.round()) and images.min() >= 0 and images.max() <= 1
    quantised = (torch.cat([real, fake]).clamp(0, 1) * 255).round().repeat(1, 3, 1, 1) / 255
    assert torch.equal(images, quantised)
    assert res.value is not None
    assert hubs == [str(tmp_path), str(tmp_path)] and torch.hub.get_dir() == default_hub  # restored after


# -- code usage (how a second stage's samples use the GLO codes) -------------------------------------------
def _sphere(n: int, d: int, seed: int) -> torch.Tensor:
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return z / z.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("k", [1, 3])
def test_nearest_other_code_excludes_itself_and_matches_brute_force(k):
    codes = _sphere(300, 8, 0)
    codes[7] = codes[3]  # a duplicate is another code, at distance 0
    d = torch.cdist(codes.double(), codes.double())
    d.fill_diagonal_(math.inf)
    v, i = d.topk(k, dim=1, largest=False)
    idx, dist = nearest_other_code(codes, k=k, block=64)  # several blocks: the diagonal moves with them
    assert torch.equal(idx, i[:, -1])
    torch.testing.assert_close(dist, v[:, -1])
    if k == 1:
        assert idx[7] == 3 and idx[3] == 7 and dist[7] == 0
    some = torch.tensor([5, 250, 3])  # a subset of queries, in any order
    idx_s, dist_s = nearest_other_code(codes, k=k, queries=some)
    assert torch.equal(idx_s, i[some, -1])
    torch.testing.assert_close(dist_s, v[some, -1])
    with pytest.raises(ValueError, match="k must be an int in"):
        nearest_other_code(codes[:3], k=3)
    with pytest.raises(ValueError, match="queries must index the 300 codes"):
        nearest_other_code(codes, queries=torch.tensor([0, 300]))
    with pytest.raises(TypeError, match="queries must be a 1-D int64"):
        nearest_other_code(codes, queries=torch.tensor([0.0]))
    with pytest.raises(ValueError, match="codes must have at least 2 rows"):
        nearest_other_code(codes[:1])


def test_code_usage_on_a_hand_checked_case():
    codes = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    samples = torch.tensor([[0.1, 0.0], [0.0, -0.2], [-0.3, 0.0], [1.0, 0.4]])  # 3 near code 0, 1 near code 1
    u = code_usage(samples, codes)
    assert (u.n_samples, u.n_codes, u.busiest_code) == (4, 4, 3)
    assert u.codes_hit == 0.5
    assert u.kl_over_codes == pytest.approx(0.75 * math.log(3.0))  # p = (3/4, 1/4, 0, 0) against 1/4 each
    assert u.sample_code_median == pytest.approx(0.2)  # distances 0.1, 0.2, 0.3, 0.4: torch's lower median
    assert u.sample_code_q10 == pytest.approx(0.13)  # linear interpolation between 0.1 and 0.2
    assert u.code_spacing == pytest.approx(1.0)  # nearest other code: 1, 1, 1, sqrt(41)
    # the 3rd nearest other code (5th capped at N - 1): codes 0 and 3 are the isolated tenth (a tie);
    # their mean count (3 + 0) / 2 over the others' (1 + 0) / 2
    assert u.isolated_share == pytest.approx(3.0)


def test_code_usage_isolated_share_takes_the_most_isolated_tenth():
    # 18 codes 0.1 apart on a line (5th nearest other code: 0.3 inside, 0.4 and 0.5 near the ends) and two
    # far outliers: the 0.9 quantile of the 20 distances lies above the ends' 0.5, so the isolated tenth is
    # the two outliers alone (a fifth would also take both ends, share (2 + 2 + 1 + 0) / 4 / 2 = 0.625)
    line = torch.stack([torch.arange(18, dtype=torch.float64) * 0.1, torch.zeros(18, dtype=torch.float64)], 1)
    outliers = torch.tensor([[100.0, 0.0], [0.0, 100.0]], dtype=torch.float64)
    codes = torch.cat([line, outliers])
    # two samples on every line code, one on the first outlier, none on the second
    samples = torch.cat([line.repeat(2, 1), outliers[:1]])
    u = code_usage(samples, codes)
    assert u.isolated_share == pytest.approx((1 + 0) / 2 / 2)


def _isolated_share_by_brute_force(samples: torch.Tensor, codes: torch.Tensor) -> float:
    """cdist and sort: each sample to its nearest code, the codes whose 5th nearest other code is at or above
    the 0.9 quantile of those distances against the rest."""
    d = torch.cdist(codes, codes)
    d.fill_diagonal_(math.inf)
    fifth = d.sort(1).values[:, 4]
    counts = torch.bincount(torch.cdist(samples, codes).argmin(1), minlength=len(codes)).double()
    isolated = fifth >= torch.quantile(fifth, 0.9)
    return float(counts[isolated].mean() / counts[~isolated].mean())


def test_code_usage_isolated_share_matches_brute_force_on_random_codes():
    for seed in range(4):  # the 4th nearest other code picks another tenth for seed 2
        g = torch.Generator().manual_seed(seed)
        codes = torch.randn(40, 3, generator=g, dtype=torch.float64)
        samples = torch.randn(400, 3, generator=g, dtype=torch.float64)
        want = _isolated_share_by_brute_force(samples, codes)
        assert code_usage(samples, codes).isolated_share == pytest.approx(want, rel=1e-12), seed


def test_code_usage_even_reference_and_an_even_sampler():
    codes = _sphere(50, 6, 1)
    u = code_usage(codes.repeat(40, 1), codes)  # every code exactly 40 times, each sample on its code
    assert u.codes_hit == 1.0 and u.kl_over_codes == pytest.approx(0.0, abs=1e-12) and u.busiest_code == 40
    assert u.sample_code_median == 0.0 and u.isolated_share == pytest.approx(1.0)
    # uniform draws of the same size: all codes hit, a small KL from sampling noise alone, but not zero
    assert u.codes_hit_even == 1.0 and 0 < u.kl_over_codes_even < 0.05
    assert code_usage(codes.repeat(40, 1), codes, seed=0) == u  # seeded
    # one code takes everything: KL log N
    one = code_usage(codes[:1].repeat(30, 1), codes)
    assert one.kl_over_codes == pytest.approx(math.log(50)) and one.codes_hit == 1 / 50


def test_code_usage_spacing_from_a_subset_of_queries():
    codes = _sphere(500, 4, 2)
    full = code_usage(codes[:10], codes, spacing_queries=10_000)
    part = code_usage(codes[:10], codes, spacing_queries=200)
    assert full.code_spacing == pytest.approx(float(nearest_other_code(codes)[1].median()))
    assert part.code_spacing == pytest.approx(full.code_spacing, rel=0.15)  # an estimate of the same median


def _moment_ratios_reference(samples, codes, share):
    """numpy, float64: eigen-decompose the codes' covariance, project both sets on its axes."""
    z, c = samples.double().numpy(), codes.double().numpy()
    w, v = np.linalg.eigh(np.cov(c, rowvar=False))
    order = np.argsort(w)[::-1]
    w, v = w[order], v[:, order]
    keep = w > 1e-12 * w[0]
    w, v = w[keep], v[:, keep]
    ratio = np.var(z @ v, axis=0, ddof=1) / w
    k = max(1, round(share * len(w)))
    offset = np.linalg.norm(z.mean(0) - c.mean(0))
    return offset, np.linalg.norm(c.mean(0)), ratio[:k].mean(), ratio[-k:].mean()


@pytest.mark.parametrize(("d", "share"), [(12, 0.25), (7, 0.1), (64, 0.1), (6, 0.25)])
def test_moment_ratios_against_an_independent_reference(d, share):
    g = torch.Generator().manual_seed(d)
    codes = torch.randn(400, d, generator=g) * torch.linspace(3.0, 0.1, d) + 0.3
    mix = torch.eye(d) + 0.3 * torch.randn(d, d, generator=g)  # another covariance, another mean
    samples = (torch.randn(300, d, generator=g) * torch.linspace(1.0, 0.5, d)) @ mix - 0.2
    got = moment_ratios(samples, codes, share=share)
    want = _moment_ratios_reference(samples, codes, share)
    assert [got[k] for k in ("mean_offset", "code_mean_norm", "variance_leading", "variance_trailing")] == (
        pytest.approx(list(want), rel=1e-9)
    )
    # code_usage carries the same four numbers
    u = code_usage(samples.float(), codes.float())
    assert u.variance_leading == pytest.approx(
        moment_ratios(samples.float(), codes.float())["variance_leading"]
    )


def test_moment_ratios_known_cases():
    g = torch.Generator().manual_seed(3)
    codes = (torch.randn(200, 10, generator=g) * torch.linspace(2.0, 0.5, 10) + 1.0).double()
    mean = codes.mean(0)
    same = moment_ratios(codes, codes)
    assert same["mean_offset"] == pytest.approx(0.0, abs=1e-12)
    assert same["code_mean_norm"] == pytest.approx(float(mean.norm()))
    assert same["variance_leading"] == pytest.approx(1.0) and same["variance_trailing"] == pytest.approx(1.0)
    # scaled about the codes' mean: the same mean, a^2 the variance in every direction
    wide = moment_ratios(mean + 1.5 * (codes - mean), codes)
    assert wide["mean_offset"] == pytest.approx(0.0, abs=1e-9)
    assert wide["variance_leading"] == pytest.approx(2.25)
    assert wide["variance_trailing"] == pytest.approx(2.25)
    # shifted: the offset is the shift, the variances unchanged
    shift = torch.tensor([0.3, -0.4] + [0.0] * 8, dtype=torch.float64)
    moved = moment_ratios(codes + shift, codes)
    assert moved["mean_offset"] == pytest.approx(0.5) and moved["variance_leading"] == pytest.approx(1.0)
    # squeezed along the codes' leading axis only (x0.5 in standard deviation): leading 0.25, last 1
    top = torch.linalg.eigh(torch.cov(codes.T))[1][:, -1:]
    squeezed = codes - 0.5 * ((codes - mean) @ top) @ top.T
    r = moment_ratios(squeezed, codes, share=0.1)
    assert r["variance_leading"] == pytest.approx(0.25) and r["variance_trailing"] == pytest.approx(1.0)
    # one sample: no variance (NaN), the offset still defined
    one = moment_ratios(codes[:1], codes)
    assert math.isnan(one["variance_leading"]) and math.isnan(one["variance_trailing"])
    assert one["mean_offset"] == pytest.approx(float((codes[0] - mean).norm()))
    # two codes vary along one direction only: the rest are left out, leading and last are that one
    pair = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    r = moment_ratios(torch.tensor([[2.0, 5.0, 0.0], [-2.0, -5.0, 1.0]]), pair)
    assert r["variance_leading"] == pytest.approx(4.0) and r["variance_trailing"] == pytest.approx(4.0)
    # codes all equal: no direction to compare along (NaN, no warning), the offset still defined
    flat = moment_ratios(torch.zeros(3, 3), torch.ones(4, 3))
    assert math.isnan(flat["variance_leading"]) and flat["mean_offset"] == pytest.approx(math.sqrt(3))


def test_moment_ratios_of_codes_in_a_plane_leave_out_the_rounding_directions():
    """Codes spanning a 2-D plane of 6-D: the other four eigenvalues of their covariance are rounding (about
    1e-17, some positive); they are left out (at most 1e-12 of the largest), so the ratios are those along the
    plane's two axes (as numpy finds them), not a variance over 1e-17 (about 1e16)."""
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        basis = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0][:, :2]
        plane = torch.randn(100, 2, generator=g, dtype=torch.float64)
        codes = (plane * torch.tensor([2.0, 1.0])) @ basis.T + 0.5
        samples = torch.randn(80, 6, generator=g, dtype=torch.float64)
        got = moment_ratios(samples, codes, share=0.5)  # one axis each: the plane's first and second
        names = ("mean_offset", "code_mean_norm", "variance_leading", "variance_trailing")
        assert [got[k] for k in names] == pytest.approx(
            list(_moment_ratios_reference(samples, codes, 0.5)), rel=1e-9
        ), seed


def test_moment_ratios_share_is_checked():
    codes = _sphere(10, 4, 0)
    with pytest.raises(ValueError, match=r"share must be a number in \(0, 1\], got 0"):
        moment_ratios(codes, codes, share=0)
    with pytest.raises(ValueError, match="share must be"):
        moment_ratios(codes, codes, share=True)


@pytest.mark.parametrize("measure", [code_usage, moment_ratios])
def test_code_measures_bad_inputs_name_the_argument(measure):
    codes = _sphere(10, 4, 0)
    with pytest.raises(ValueError, match="codes must have 4 columns"):
        measure(codes, codes[:, :3])
    with pytest.raises(ValueError, match="codes must have at least 2 rows"):
        measure(codes, codes[:1])
    with pytest.raises(ValueError, match="samples contains NaN"):
        measure(torch.full((2, 4), math.nan), codes)
    with pytest.raises(ValueError, match="samples contains NaN"):
        measure(torch.full((2, 4), math.inf), codes)
    with pytest.raises(TypeError, match=r"samples must be a torch\.Tensor"):
        measure([[0.0] * 4], codes)


def _brute_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Euclidean distances from direct differences (no |a|^2 + |b|^2 - 2 a.b expansion)."""
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def _brute_coverage(x: np.ndarray, y: np.ndarray, k: int = 5) -> float:
    radii = np.sort(_brute_dist(x, x), 1)[:, k]
    return float((_brute_dist(x, y).min(1) < radii).mean())


def _brute_prdc(x: np.ndarray, y: np.ndarray) -> PRDC:
    """All four with the default k (3 and 5) from direct differences: closed balls for P/R, open for D/C."""
    dxy, rx, ry3 = _brute_dist(x, y), np.sort(_brute_dist(x, x), 1), np.sort(_brute_dist(y, y), 1)[:, 3]
    return PRDC(
        precision=float((dxy <= rx[:, 3, None]).any(0).mean()),
        recall=float((dxy <= ry3[None, :]).any(1).mean()),
        density=float((dxy < rx[:, 5, None]).sum() / (5 * len(y))),
        coverage=_brute_coverage(x, y),
    )


@pytest.mark.parametrize(("offset", "spread"), [(1000.0, 1e-3), (100.0, 1e-2), (0.0, 1.0)])
def test_coverage_matches_float64_brute_force_on_offset_small_spread_sets(offset, spread):
    # the nearest-fake search ran in float32 while the radii were float64: 0.117 instead of 0.983
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3)) * spread + offset
    y = rng.normal(size=(60, 3)) * spread + offset
    assert density_coverage(x, y)[1] == _brute_coverage(x, y)
    assert prdc(torch.from_numpy(x), torch.from_numpy(y)).coverage == _brute_coverage(x, y)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["binary", "integers", "offset_integers"])
def test_all_four_prdc_values_match_brute_force_on_grid_data(seed, kind):
    """Data on a grid (binary codes, small integers, quantised pixels) puts many points exactly on a ball's
    boundary. The sets were centred on the real mean (inexact, e.g. 7/3), so those points fell inside or
    outside at random: on binary data precision was off by up to 0.07 and density by 0.04 against direct
    differences. Now the shift is exact and every boundary is decided by the papers' rule."""
    rng = np.random.default_rng(seed)
    if kind == "binary":
        x, y = (rng.random((120, 16)) < 0.3).astype(np.uint8), (rng.random((100, 16)) < 0.35).astype(np.uint8)
    else:
        x, y = rng.integers(0, 5, (120, 3)), rng.integers(0, 6, (100, 3))
        if kind == "offset_integers":
            x, y = x + 1_000_003, y + 1_000_003
    got = prdc(torch.from_numpy(x), torch.from_numpy(y))
    assert got == _brute_prdc(x.astype(np.float64), y.astype(np.float64))


def test_prdc_does_not_change_with_the_scale():
    """Squared distances underflowed at 1e-170 (every distance and radius 0: (1, 1, 0, 0)) and overflowed at
    1e200 (a NaN error for finite data); the sets are now brought near 1 by a power of two first."""
    g = torch.Generator().manual_seed(3)
    x, y = (
        torch.randn(80, 6, generator=g, dtype=torch.float64),
        torch.randn(70, 6, generator=g, dtype=torch.float64),
    )
    want = prdc(x, y)
    assert want.density > 0 and want.precision < 1
    # about 2.6e-169, 4.8e198, 9.3e-302 and subnormal 1e-310 (2 ** 1028 overflowed): exact scalings
    for scale in (2.0**-560, 2.0**660, 2.0**-1000, 2.0**-1030):
        assert prdc(x * scale, y * scale) == want, scale


def test_prdc_boundary_cases_with_inexact_means_and_duplicated_reals():
    """Two 1-D cases checked by hand (k = 1), and reals repeated k + 1 times: their radius is 0, so an open
    ball holds nothing, but coverage compared an exact distance 0 with a radius rounded to about 1e-8 and
    counted an exact copy among the fakes as covering it (0.25 instead of 0)."""
    # fakes 4, 7 have radius 3; real 1 is on fake 4's closed ball (the real mean 7/3 is inexact)
    assert precision_recall(torch.tensor([[0.0], [6.0], [1.0]]), torch.tensor([[4.0], [7.0]]), k=1) == (
        1.0,
        2 / 3,
    )
    # reals 0, 1, 3, 5, 7 have radii 1, 1, 2, 2, 2; the fakes at 2 lie on the open balls of reals 1, 3 and 0
    real, fake = torch.tensor([[5.0], [7.0], [3.0], [0.0], [1.0]]), torch.tensor([[2.0], [5.0], [2.0], [2.0]])
    assert density_coverage(real, fake, k=1) == (1.0, 0.4)
    base = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert density_coverage(base.repeat_interleave(6, 0), base.clone(), k=5) == (0.0, 0.0)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_prdc_does_not_depend_on_how_the_expansion_rounds(monkeypatch, sign):
    """The matrix product behind the expanded distances rounds otherwise with its shape and the CPU: on an
    AVX-512 EPYC the duplicated reals above scored (0.3, 0.25) where they must score (0, 0), the copies among
    the fakes put inside their balls by a rounding of 1e-16. With every expanded distance pushed by two roundings
    a product term either way, all four values still equal brute force on duplicates, copies and grid data."""
    from glann_ext.metrics import knn

    expanded = knn._expanded_sq

    def rounded_otherwise(q, keys, key_sq):
        d2 = expanded(q, keys, key_sq)
        scale = (q * q).sum(1, keepdim=True) + key_sq.unsqueeze(0)
        return (d2 + sign * q.shape[1] * 2.0**-52 * scale).clamp_min_(0.0)  # 2 roundings a product term

    monkeypatch.setattr(knn, "_expanded_sq", rounded_otherwise)
    base = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert density_coverage(base.repeat_interleave(6, 0), base.clone(), k=5) == (0.0, 0.0)
    rng = np.random.default_rng(1)
    x = np.repeat(rng.integers(0, 3, size=(20, 4)).astype(np.float64), 2, axis=0)  # duplicates, on a grid
    y = np.concatenate([x[:10], rng.integers(0, 3, size=(30, 4)).astype(np.float64)])  # copies among fakes
    assert prdc(torch.from_numpy(x), torch.from_numpy(y)) == _brute_prdc(x, y)


def test_radii_and_prdc_of_tight_clusters_far_apart_match_brute_force():
    """Neighbours closer together than the expansion's rounding: the k + 1 nearest by the expansion were the
    only candidates, so a radius could be another point's (all 200 wrong, up to 2.2x; PRDC density 17.05
    against 1.019: found by a review). Every candidate the expansion cannot tell from the (k + 1)-th counts
    now, and identical rows (a set of copies) are at 0 without a subtraction."""
    from glann_ext.metrics import knn

    rng = np.random.default_rng(0)
    centres = np.where(np.arange(200)[:, None] < 100, 1000.0, -1000.0) * np.ones((1, 16))
    x = centres + rng.normal(size=(200, 16)) * 1e-6  # mean about 0: centring the sets does not help
    y = centres + rng.normal(size=(200, 16)) * 1e-6
    want = np.sort(_brute_dist(x, x), 1)[:, 3]
    got = knn.knn_radii(torch.from_numpy(x), 3, tile_bytes=1)
    torch.testing.assert_close(got, torch.from_numpy(want), rtol=1e-9, atol=0)  # numpy sums in another order
    assert prdc(torch.from_numpy(x), torch.from_numpy(y)) == _brute_prdc(x, y)
    same = torch.from_numpy(np.repeat(x[:3], 40, axis=0))  # copies only
    assert torch.equal(knn.knn_radii(same, 5), torch.zeros(120, dtype=torch.float64))


@pytest.mark.parametrize(("offset", "spread"), [(1e5, 1e-2), (1e8, 1.0)])
def test_all_four_prdc_values_match_brute_force_on_far_offset_sets(offset, spread):
    """The radii and ball counts expand |a - b|^2 as |a|^2 + |b|^2 - 2 a.b: far from the origin that loses
    every digit of a small distance (at 1e8 every point was in every ball), so the sets are centred on the real
    mean first. Reference: direct differences in float64 numpy (:func:`_brute_prdc`)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3)) * spread + offset
    y = rng.normal(size=(60, 3)) * spread + offset
    assert prdc(torch.from_numpy(x), torch.from_numpy(y)) == _brute_prdc(x, y)


def test_prdc_with_a_far_outlier_among_the_fakes_matches_brute_force():
    """The sets are centred on the real mean, not the fake one: one fake at 1e9 moves the fake mean to 1.7e7,
    and centred there the reals' small distances (spread 1e-2) lose every digit (precision 0.98, coverage 0)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3)) * 1e-2
    y = rng.normal(size=(60, 3)) * 1e-2
    y[-1] = [1e9, 0.0, 0.0]
    assert prdc(torch.from_numpy(x), torch.from_numpy(y)) == _brute_prdc(x, y)


def test_code_usage_and_mode_coverage_search_in_float64():
    z = torch.tensor([[1000.0001, 0.0]], dtype=torch.float64)
    codes = torch.tensor([[1000.0, 0.0], [1000.0002, 0.0]], dtype=torch.float64)
    assert code_usage(z, codes).sample_code_median == pytest.approx(1e-4, rel=1e-6)
    pts = torch.tensor([[0.3, 0.0], [0.29, 0.0], [10.0, 0.31]], dtype=torch.float64)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0]], dtype=torch.float64)
    # 0.3 ** 2 <= (3 * 0.1) ** 2 in float64: both points near the first centre are high quality
    assert mode_coverage(pts, centres, 0.1).mode_counts.tolist() == [2, 0]


def test_nearest_train_keeps_float64_and_accepts_no_samples():
    train = torch.tensor([[1000.0], [1000.0002]], dtype=torch.float64).reshape(2, 1, 1, 1)
    idx, dist = nearest_train(torch.tensor([1000.00015], dtype=torch.float64).reshape(1, 1, 1, 1), train)
    assert idx.tolist() == [1] and float(dist[0]) == pytest.approx(5e-5, rel=1e-6)
    idx, dist = nearest_train(torch.zeros(0, 1, 2, 2), torch.zeros(3, 1, 2, 2))
    assert idx.shape == (0,) and dist.shape == (0,)


def test_cached_classifier_is_retrained_for_other_data_lr_or_batch_size(tmp_path):
    # the cache was keyed on dataset/seed/epochs only: other data got the first classifier and its accuracy
    xtr, ytr = _bars(300, 0)
    xte, yte = _bars(100, 1)
    first = DomainClassifier.load_or_train(
        "bars", xtr, ytr, xte, yte, cache_dir=tmp_path, num_classes=3, epochs=1, batch_size=32
    )
    path = cache_path(tmp_path, "bars", seed=0, epochs=1)
    cached = path.read_bytes()
    flipped_tr, flipped_te = xtr.flip(2), xte.flip(2)
    for kwargs in ({}, {"lr": 0.01}, {"batch_size": 16}):  # each differs from the first in one thing only
        path.write_bytes(cached)
        other = (flipped_tr, ytr, flipped_te, yte) if not kwargs else (xtr, ytr, xte, yte)
        clf = DomainClassifier.load_or_train(
            "bars", *other, cache_dir=tmp_path, num_classes=3, epochs=1, **{"batch_size": 32, **kwargs}
        )
        assert not torch.equal(clf.features(xte), first.features(xte)), kwargs
        # the accuracy it reports is the one on the test set it was given (recomputed independently)
        assert clf.test_accuracy == pytest.approx(
            float((clf(other[2]).argmax(1) == other[3]).double().mean())
        )
    assert first.features(torch.zeros(0, 1, 28, 28)).shape == (0, 84)
    assert first(torch.zeros(0, 1, 28, 28)).shape == (0, 3)
    with pytest.raises(ValueError, match=r"test_labels must lie in \[0, 3\), got \[10, 12\]"):
        first.accuracy(xte, yte + 10)  # gave 0.0


def test_prdc_too_few_rows_names_real_or_fake():
    with pytest.raises(ValueError, match=r"fake must have at least k \+ 1 = 4 rows for k=3, got 3"):
        precision_recall(torch.rand(20, 2), torch.rand(3, 2))
    with pytest.raises(ValueError, match=r"real must have at least k_pr \+ 1 = 4 rows for k_pr=3, got 3"):
        prdc(torch.rand(3, 2), torch.rand(20, 2))  # prdc names its own argument


def test_smaller_metric_argument_checks():
    from glann_ext.metrics.knn import ball_membership_counts

    with pytest.raises(ValueError, match="mu1 contains NaN or Inf"):
        frechet_distance_from_statistics(np.array([np.nan, 0.0]), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match=r"mu1 must have shape \(2,\)"):
        frechet_distance_from_statistics(np.zeros((2, 2)), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="sigma1 must be positive semi-definite, got an eigenvalue of -1"):
        frechet_distance_from_statistics(np.zeros(2), -np.eye(2), np.zeros(2), np.eye(2))  # gave 0.0
    with pytest.raises(TypeError, match="features1 must be floating or uint8/int32/int64, got dtype int16"):
        frechet_distance(torch.zeros(4, 2, dtype=torch.int16), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"counts must be finite and >= 0, got values in \[-1, 2\]"):
        reverse_kl_uniform(torch.tensor([-1.0, 2.0, 0.0]))  # gave 3.58
    with pytest.raises(ValueError, match=r"labels must be integer digits 0..9, got int64 in \[0, 45\]"):
        make_stacked(torch.rand(10, 1, 4, 4), torch.arange(10) * 5, num_samples=3)
    q, c = np.zeros((3, 2)), np.array([[0.0, 0.0], [3.0, 0.0]])
    counts = ball_membership_counts(q, c, np.ones(2), strict=False)  # numpy radii: AttributeError
    assert counts.tolist() == [1, 1, 1]
    assert aggregate_seeds([{"a": np.float32(1)}, {"a": np.float32(3)}]) == {"a": (2.0, 1.0)}  # gave {}


def test_shared_argument_checks_of_the_metrics():
    """metrics/_checks: a count of True is not 1, a matrix needs a column, images must be finite, and uint8
    features are taken as their values (what a metric of raw pixels gets)."""
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [4.0, 3.0]])
    with pytest.raises(ValueError, match="k must be a positive int, got True"):
        precision_recall(x, x, k=True)
    with pytest.raises(ValueError, match=r"features1 must have at least one column, got shape \(3, 0\)"):
        frechet_distance(torch.zeros(3, 0), torch.zeros(3, 0))
    images = torch.zeros(2, 3, 28, 28)
    images[1, 2, 5, 5] = math.nan
    with pytest.raises(ValueError, match="images contains NaN or Inf values"):
        stacked_modes(_fake_classifier, images)
    assert torch.equal(knn_radii(x.to(torch.uint8), 1), knn_radii(x.double(), 1))
    assert torch.equal(knn_radii(x.double(), 1), torch.tensor([1.0, 1.0, 3.0, 4.0], dtype=torch.float64))


def test_code_usage_isolated_share_when_every_code_ties():
    # every 5th-neighbour distance equals the 0.9 quantile, so all codes were "isolated" and the share NaN
    codes = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)  # a square
    u = code_usage(codes + 1e-3, codes)
    assert u.isolated_share == pytest.approx(1.0)  # one sample per code: the isolated fare like the rest


# Mutation test (2026-12-07): stacked_modes ignored min_count (counts > 0)
def test_stacked_modes_min_count_counts_only_modes_with_that_many_samples():
    def classifier(x):  # the digit is 10 x the channel's mean value: one-hot logits
        digit = (x.mean((1, 2, 3)) * 10).round().long().clamp(0, 9)
        return torch.nn.functional.one_hot(digit, 10).float()

    digits = torch.tensor([[1, 2, 3], [1, 2, 3], [4, 5, 6]])  # mode 123 twice, mode 456 once
    images = (digits.float() / 10)[:, :, None, None].expand(-1, -1, 4, 4).contiguous()
    assert stacked_modes(classifier, images).modes_covered == 2
    result = stacked_modes(classifier, images, min_count=2)
    assert result.mode_counts[123] == 2 and result.mode_counts[456] == 1
    assert result.modes_covered == 1


# Mutation test (2026-12-07): the PSD check's tolerance was absolute (-1e-6), not relative to the covariance's
# scale
def test_frechet_statistics_accept_a_rounding_negative_eigenvalue_at_a_large_scale():
    from glann_ext.metrics.frechet import frechet_distance_from_statistics

    mu = np.zeros(2)
    sigma1 = np.diag([1e8, -1e-3])  # -1e-3 is rounding beside 1e8 (tolerance 1e-6 x 1e8 = 100)
    sigma2 = np.diag([1e8, 0.0])
    fd = frechet_distance_from_statistics(mu, sigma1, mu, sigma2)
    assert 0.0 <= fd < 1e-2
    with pytest.raises(ValueError, match="sigma1 must be positive semi-definite"):
        frechet_distance_from_statistics(mu, np.diag([1e8, -1e3]), mu, sigma2)


# Mutation test (2026-12-07): threshold_quantile = 0 (the smallest test distance) was refused
def test_memorisation_threshold_quantile_zero_is_the_smallest_test_distance():
    from glann_ext.metrics.memorisation import memorisation_report

    train = torch.tensor([[0.0], [10.0]])
    test = torch.tensor([[1.0], [3.0], [6.0]])  # distances 1, 3, 4
    generated = torch.tensor([[0.5], [2.0]])  # distances 0.5, 2
    report = memorisation_report(generated, train, test, threshold_quantile=0.0)
    assert report.threshold == 1.0
    assert report.generated_fraction_below == 0.5 and report.test_fraction_below == 0.0


# Mutation test (2026-12-07): int64 pixels/features were searched in float32 (large values lost their last
# bits)
def test_nearest_train_searches_int64_rows_in_float64():
    from glann_ext.metrics.memorisation import nearest_train

    big = 2**25  # float32 spacing is 4 here: big + 2 and big + 3 are not float32 values
    train = torch.tensor([[big], [big + 2]], dtype=torch.int64)
    index, dist = nearest_train(torch.tensor([[big + 3]], dtype=torch.int64), train)
    assert index.tolist() == [1] and dist.tolist() == [1.0]


# Mutation tests (2026-12-07): each test below fails on a one-line bug that no earlier test caught.
def test_lenet_features_are_the_relu_of_fc2_of_the_documented_layers():
    """The module docstring's network, spelt out with torch's own layers: standardise -> conv1 (pad 2) -> ReLU
    -> max-pool 2 -> conv2 -> ReLU -> max-pool 2 -> fc1 -> ReLU -> fc2 -> ReLU [features]; the logits are
    head(features). The features are 84 non-negative numbers (after fc2's ReLU, as FD/PRDC take them)."""
    torch.manual_seed(0)
    net = LeNet(1, 10, (28, 28))
    net.mean.fill_(0.3)
    net.std.fill_(0.2)
    clf = DomainClassifier(net, 0.5, {"in_channels": 1, "image_size": [28, 28], "num_classes": 10})
    x = torch.rand(5, 1, 28, 28)
    h = (x - 0.3) / 0.2
    h = F.max_pool2d(F.relu(F.conv2d(h, net.conv1.weight, net.conv1.bias, padding=2)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, net.conv2.weight, net.conv2.bias)), 2)
    h = F.relu(F.linear(h.flatten(1), net.fc1.weight, net.fc1.bias))
    feats = F.relu(F.linear(h, net.fc2.weight, net.fc2.bias))
    got = clf.features(x)
    assert got.shape == (5, FEATURE_DIM) and bool((got >= 0).all())
    torch.testing.assert_close(got, feats, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(clf(x), F.linear(feats, net.head.weight, net.head.bias), rtol=1e-5, atol=1e-6)


def test_a_classifier_cache_with_a_single_inf_or_nan_weight_is_refused(tmp_path):
    """test_trust's case multiplies a whole bias by NaN; one Inf (or NaN) among finite weights also scores
    every feature non-finite and must be refused naming the tensor, the file and the cure."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 14, 14, generator=g), torch.randint(3, (40,), generator=g)
    DomainClassifier.load_or_train("d", x, y, x, y, cache_dir=tmp_path, num_classes=3, epochs=1)
    path = cache_path(tmp_path, "d", seed=0, epochs=1)
    good = torch.load(path, weights_only=True)
    for key, value in (("fc2.weight", float("inf")), ("conv1.bias", float("nan"))):
        bad = good["state_dict"][key].clone()
        bad.view(-1)[1] = value
        torch.save({"meta": good["meta"], "state_dict": {**good["state_dict"], key: bad}}, path)
        with pytest.raises(
            CheckpointError, match=rf"not a cached classifier \({key} holds NaN or Inf values\)"
        ):
            DomainClassifier.load(path)


def test_train_threads_is_the_count_the_committed_quality_reports_lenets_trained_on():
    """Every FD in LeNet features follows the thread count its LeNet trained on (the same samples' FD 9% apart
    on Fashion-MNIST between 1 and 2 threads), and benchmarks/QUALITY.md's LeNets trained on 2: another
    TRAIN_THREADS silently moves every score away from the committed report's. Change it with the report."""
    assert TRAIN_THREADS == 2


def test_classifier_weights_change_with_any_weight_or_input_statistic():
    """``weights`` names the network *and* its input standardisation (mean/std buffers, which move every
    feature), and tells apart weights that differ by a small amount (a hash of the bytes, not of the values
    cast to integers)."""
    base = _untrained_classifier()

    def variant(change) -> str:
        model = copy.deepcopy(base.model)
        with torch.no_grad():
            change(model)
        return DomainClassifier(model, base.test_accuracy, base.meta).weights

    assert variant(lambda m: None) == base.weights and len(base.weights) == 32
    others = [
        variant(lambda m: m.mean.fill_(0.25)),
        variant(lambda m: m.std.fill_(0.5)),
        variant(lambda m: m.fc2.weight[0, 0].add_(1e-4)),
    ]
    assert base.weights not in others and len(set(others)) == 3


def test_lenet_trains_on_train_threads_whatever_the_callers_setting(tmp_path, monkeypatch):
    """Every training step runs on TRAIN_THREADS threads and the caller's count is back after: checked
    directly, so that it holds on a CPU whose convolutions happen to round alike on 1 and 3 threads (there
    test_lenet_training_gives_the_same_weights_whatever_the_callers_thread_count passes without the setting)."""
    seen = []
    loss = F.cross_entropy

    def counting(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return loss(*args, **kwargs)

    monkeypatch.setattr(classifier_module.F, "cross_entropy", counting)
    x, y = _bars(64, 0)
    caller = 3 if TRAIN_THREADS != 3 else 1
    with intra_op_threads(caller):
        DomainClassifier.load_or_train(
            "bars", x, y, x, y, cache_dir=tmp_path, num_classes=3, epochs=1, batch_size=32
        )
        assert torch.get_num_threads() == caller
    assert len(seen) == 2 and set(seen) == {TRAIN_THREADS}


# Mutation tests (2026-12-07, thirty-first session): knn's near-tie paths, ball counts across scales


def test_knn_radius_of_two_neighbours_the_expansion_cannot_order():
    """k = 1 and two neighbours whose squared distances differ by ~2e-10, far below the expansion's rounding
    at a norm of ~3e4 (~1e-6): the radius is the nearer one's direct distance, so the tie band must be taken
    around the (k + 1)-th expanded distance and a row with k + 2 candidates must go the exact way."""
    g = torch.Generator().manual_seed(0)
    centre = 1e4 * torch.randn(24, 8, generator=g, dtype=torch.float64)  # triplets far apart
    u = F.normalize(torch.randn(24, 8, generator=g, dtype=torch.float64), dim=1)
    gap = 1e-10 * torch.where(torch.rand(24, 1, generator=g) < 0.5, 1.0, -1.0).double()
    x = torch.cat([centre, centre + u, centre - u * (1 + gap)])  # each centre: neighbours at 1 and 1 + gap
    d = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    want = d.sort(1).values[:, 1]  # column 0: the point itself
    for tile_bytes in (1, DEFAULT_TILE_BYTES):
        torch.testing.assert_close(knn_radii(x, 1, tile_bytes=tile_bytes), want, rtol=1e-13, atol=0)


@pytest.mark.parametrize("strict", [False, True])
def test_ball_membership_counts_on_exact_boundaries_match_brute_force(strict):
    """Balls on small centres whose radii are exactly the distance to a far query (norm ~1e3; one query at
    the origin): the expansion's error there (~1e-10) is set by the queries' norms, so the rounding bound
    must take the largest query, the radii must stay float64, and ``strict`` must pick open or closed."""
    from glann_ext.metrics.knn import ball_membership_counts

    g = torch.Generator().manual_seed(1)
    centres = 0.5 * torch.randn(20, 2, generator=g, dtype=torch.float64)
    far = 1e3 * torch.randn(40, 2, generator=g, dtype=torch.float64)
    queries = torch.cat([far, torch.zeros(1, 2, dtype=torch.float64)])  # and one at the origin
    d = torch.cdist(queries, centres, compute_mode="donot_use_mm_for_euclid_dist")  # (queries, centres)
    radii = d.diagonal().clone()  # centre j's boundary passes through query j exactly
    assert torch.equal(radii, ((queries[:20] - centres) ** 2).sum(1).sqrt())  # the direct distance exactly
    want = (d < radii).sum(1) if strict else (d <= radii).sum(1)
    assert torch.equal(ball_membership_counts(queries, centres, radii, strict=strict), want)


def test_decisions_hold_for_any_expansion_error_within_the_rounding_bound(monkeypatch):
    """Contract of knn._rounding: every expanded squared distance may be off by up to the bound (here 0.9 of
    it, + on even keys and - on odd ones). Two keys at distance 1 and 1 + 2^-52 of a point then swap order
    in the expansion; the nearest distance and the k = 1 radius must still be the nearer one's (1 exactly):
    the candidate bands must take the errors of two distances (2 x the bound)."""
    from glann_ext.metrics import knn

    expanded = knn._expanded_sq

    def off_by_the_bound(q, keys, key_sq):
        tol = knn._rounding((q * q).sum(1), key_sq, q.shape[1])  # (t, 1)
        sign = 1.0 - 2.0 * (torch.arange(keys.shape[0]) % 2).double()  # (M,)
        return (expanded(q, keys, key_sq) + 0.9 * tol * sign).clamp_min_(0.0)

    monkeypatch.setattr(knn, "_expanded_sq", off_by_the_bound)
    far = 1.0 + 2.0**-52
    keys = torch.tensor([[1.0, 0.0], [0.0, far]], dtype=torch.float64)  # the nearer (1) is pushed up
    origin = torch.zeros(1, 2, dtype=torch.float64)
    assert knn.cross_pass(origin, keys, nearest=True).nearest.tolist() == [1.0]
    x = torch.tensor([[0.0, 0.0], [0.0, far], [1.0, 0.0]], dtype=torch.float64)  # odd column 1: the farther
    assert knn_radii(x, 1).tolist()[0] == 1.0


@pytest.mark.parametrize("scale", [2.0**-560, 2.0**-1066, 2.0**-3])
def test_knn_radii_and_ball_counts_of_tiny_data_do_not_underflow(scale):
    """Squared distances of data at 2^-560 underflow to 0 in float64: every radius came back 0, and an open
    ball of radius 2^-560 held every point. The public helpers scale such data up by a power of two (exact)
    and their radii back, so the results are the unscaled data's times the scale (exact here: at 2^-1066 the
    points are subnormal multiples of 2^-1074 and so are their radii; the scaling takes two halves)."""
    from glann_ext.metrics.knn import ball_membership_counts

    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    assert knn_radii(x * scale, 1).tolist() == [scale * v for v in (1.0, 1.0, 2.0, 4.0)]
    assert [r.tolist() for r in knn_radii_each(x * scale, (1, 2))] == [
        [scale * v for v in (1.0, 1.0, 2.0, 4.0)],
        [scale * v for v in (3.0, 2.0, 3.0, 6.0)],
    ]
    q, radii = torch.tensor([[2.0]], dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    for strict, want in ((True, 0), (False, 2)):  # 2 is at distance 1 of the points 1 and 3
        assert ball_membership_counts(q * scale, x * scale, radii * scale, strict=strict).tolist() == [want]
    huge = torch.full(
        (4,), 1e300, dtype=torch.float64
    )  # scaled up with the points: 2e300 or past float64 (inf)
    assert ball_membership_counts(q * scale, x * scale, huge, strict=True).tolist() == [4]
    a, b = knn_radii_each(x * scale, (2, 2))  # a k given twice: one tensor, scaled back once
    assert a is b


def test_knn_radii_each_gives_a_repeated_k_one_tensor():
    x = torch.rand(30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 1.0  # not scaled
    a, b, c = knn_radii_each(x, (3, 1, 3))
    assert a is c and torch.equal(a, knn_radii(x, 3)) and torch.equal(b, knn_radii(x, 1))


# Mutation tests (2026-12-07, thirty-first session): the Fréchet distance's clipping, memorisation's
# summaries, and the edges of the statistics


def test_frechet_distance_clips_a_rounding_negative_eigenvalue_of_sigma1_too():
    """_sym_sqrt took the root of |w| for sigma1's rounding-negative eigenvalues instead of clipping them to
    0, as the module says (the other test covers sigma2 only). sigma1 = diag(1, -1e-8) passes the PSD check;
    its root is diag(1, 0), not diag(1, 1e-4): FD = (1 - 1e-8) + 2 - 2; and FD is symmetric."""
    z, s1, s2 = np.zeros(2), np.diag([1.0, -1e-8]), np.eye(2)
    fd = frechet_distance_from_statistics(z, s1, z, s2)
    assert fd == pytest.approx(1.0 - 1e-8, rel=1e-12)
    assert fd == pytest.approx(frechet_distance_from_statistics(z, s2, z, s1), rel=1e-12)


def test_frechet_distance_of_identical_statistics_with_a_tolerated_negative_eigenvalue_is_zero():
    """A negative FD is clipped to 0, not folded up by abs(): with a covariance eigenvalue inside the PSD
    check's tolerance (clipped in the root, counted in the trace) it is -2e-7 here, not only rounding."""
    s = np.diag([1.0, -1e-7])
    assert frechet_distance_from_statistics(np.zeros(2), s, np.zeros(2), s) == 0.0


@pytest.mark.parametrize("scale", [1.0, 2.0**-30, 2.0**30])
def test_frechet_statistics_refuse_an_indefinite_covariance_at_any_scale(scale):
    """The PSD check's tolerance was 1e-6 x max(1, max|s|): absolute below scale 1, so diag(1, -1) x 2^-30
    passed and its -9.3e-10 was clipped to 0 (FD 0), where diag(1, -1) is refused. It is relative now."""
    z = np.zeros(2)
    with pytest.raises(ValueError, match="sigma1 must be positive semi-definite"):
        frechet_distance_from_statistics(z, np.diag([1.0, -1.0]) * scale, z, np.eye(2) * scale)
    ok = frechet_distance_from_statistics(z, np.diag([1.0, -1e-9]) * scale, z, np.eye(2) * scale)
    assert ok == pytest.approx((1.0 - 1e-9) * scale, rel=1e-12)  # rounding-sized negatives still pass


def test_frechet_statistics_of_subnormal_covariances_pass_the_psd_check():
    """The check runs on the statistics scaled near 1: a PSD covariance of subnormal entries, whose own
    rounding is far more than 1e-6 of them, is not refused (the relative tolerance read it unscaled)."""
    a = np.random.default_rng(0).standard_normal((5, 3))
    s = (a @ a.T) * 1e-318
    assert frechet_distance_from_statistics(np.zeros(5), s, np.zeros(5), s) == 0.0


def test_memorisation_medians_are_torch_lower_medians_not_means():
    train = torch.tensor([[0.0]])
    generated = torch.tensor([[1.0], [-2.0], [3.0], [10.0]])  # distances 1, 2, 3, 10: lower median 2, mean 4
    test = torch.tensor([[-1.0], [5.0], [-6.0], [20.0], [7.0]])  # distances 1, 5, 6, 20, 7: median 6
    rep = memorisation_report(generated, train, test, threshold=0.0)
    assert (rep.generated_median, rep.test_median) == (2.0, 6.0)


def test_memorisation_default_threshold_is_the_1_percent_quantile_of_the_test_distances():
    test = torch.arange(101.0)[:, None]  # distances 0, 1, ..., 100 to the one train row: quantile q is 100 q
    rep = memorisation_report(torch.tensor([[0.5], [1.5]]), torch.zeros(1, 1), test)
    assert rep.threshold == pytest.approx(1.0)
    assert rep.test_fraction_below == pytest.approx(1 / 101) and rep.generated_fraction_below == 0.5


@pytest.mark.parametrize(
    "threshold", [np.float32(2.0), np.int64(2), np.array(2.0), torch.tensor(2.0), torch.tensor(2)]
)
def test_memorisation_threshold_takes_numpy_and_tensor_numbers(threshold):
    """np.float32(0.5) and torch.tensor(0.5) were refused as "must be a finite number"."""
    test = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    rep = memorisation_report(torch.tensor([[0.0], [2.0]]), torch.zeros(1, 1), test, threshold=threshold)
    assert rep.threshold == 2.0 and type(rep.threshold) is float
    assert (rep.generated_fraction_below, rep.test_fraction_below) == (0.5, 0.25)


@pytest.mark.parametrize("threshold", [10**400, True, np.bool_(False), torch.tensor([2.0]), torch.tensor(1j)])
def test_memorisation_threshold_refuses_what_is_no_finite_real_number(threshold):
    """An int past float64 raised OverflowError from math.isfinite; bools, 1-element tensors and complex
    numbers are not thresholds."""
    args = (torch.tensor([[0.0]]), torch.zeros(1, 1), torch.tensor([[1.0]]))
    with pytest.raises(ValueError, match=r"^threshold must be a finite number \(or None\), got "):
        memorisation_report(*args, threshold=threshold)


def test_mean_sem_of_values_near_the_ends_of_float64():
    """(v - mean) ** 2 raised OverflowError for deviations past 1.3e154, and the sum of two values near
    1e308 reached inf. Computed on values scaled by a power of two, they are what the definition gives."""
    assert mean_sem([1e200, -1e200]) == (0.0, 1e200)  # std sqrt(2) 1e200, over sqrt(2)
    assert mean_sem([1e308, 1e308]) == (1e308, 0.0)
    assert mean_sem([1e308, -1e308, 1e308])[0] == pytest.approx(1e308 / 3, rel=1e-15)
    assert mean_sem([5e-324, 5e-324]) == (5e-324, 0.0)
    assert mean_sem([3.0, 5.0]) == (4.0, 1.0)
    values = [0.1, 2.1, 9.7]  # ordinary values: the plain formula's very bits (pow, not products)
    mean = sum(values) / 3
    assert mean_sem(values) == (mean, math.sqrt(sum((v - mean) ** 2 for v in values) / 2 / 3))
    assert mean_sem([1e150, -1e150, 3e-170])[0] == (1e150 - 1e150 + 3e-170) / 3  # not scaled to subnormal
    assert math.isnan(mean_sem([math.inf, 1.0])[1]) and mean_sem([math.inf, 1.0])[0] == math.inf

"""Argument checks of the metrics and the toy data: bad input gets a one-line error naming the argument,
never a raw torch/numpy traceback or a silent wrong answer. Each test says what used to happen."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from glann_ext.data import arrays, fingerprint_change
from glann_ext.data.arrays import read_cap
from glann_ext.data.fingerprint import array_fingerprint
from glann_ext.data.toy import RING_PACGAN, SAMPLE_BYTES, MixturePreset, grid_centres
from glann_ext.errors import NonFiniteError, UsageError
from glann_ext.metrics import (
    code_usage,
    feature_statistics,
    frechet_distance,
    kl_split,
    knn_radii,
    make_stacked,
    memorisation_report,
    moment_ratios,
    nearest_other_code,
    nearest_train,
    reverse_kl_uniform,
    ring_centres,
    save_neighbour_grid,
)

BIG = 1e160  # finite, but its square is past float64's maximum


def _latent(n: int, d: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spacing_queries": 0}, "spacing_queries must be an integer >= 1, got 0"),
        ({"spacing_queries": -1}, "spacing_queries must be an integer >= 1, got -1"),
        ({"spacing_queries": 2.5}, "spacing_queries must be an integer >= 1, got 2.5"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"seed": "0"}, "seed must be an integer >= 0, got '0'"),
    ],
)
def test_code_usage_checks_spacing_queries_and_seed(kwargs, message):
    """spacing_queries=0 raised torch's "quantile() input tensor must be non-empty"; -1 and seed=-1 were
    taken silently (randperm(...)[:-1] dropped one code, a negative seed wrapped around)."""
    with pytest.raises(UsageError, match=f"^{message}$"):
        code_usage(_latent(30), _latent(20, seed=1), **kwargs)


def test_nearest_other_code_checks_block():
    """block=-1 reached Tensor.split with a negative size (a raw RuntimeError)."""
    with pytest.raises(UsageError, match=r"^block must be an integer >= 1, got -1$"):
        nearest_other_code(_latent(5), block=-1)


def test_save_neighbour_grid_checks_padding(tmp_path):
    """padding=-3 raised torch's "Trying to create tensor with negative dimension"."""
    samples, train = torch.rand(4, 1, 8, 8), torch.rand(6, 1, 8, 8)
    with pytest.raises(UsageError, match=r"^padding must be an integer >= 0, got -3$"):
        save_neighbour_grid(tmp_path / "g.png", samples, train, padding=-3)
    with pytest.raises(UsageError, match="padding must be an integer"):
        save_neighbour_grid(tmp_path / "g.png", samples, train, padding=1.5)
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("index", [torch.tensor([0.5, 1.7, 2.0, 3.0]), np.array([True, False, True, True])])
def test_save_neighbour_grid_refuses_a_non_integer_index(tmp_path, index):
    """A float index was truncated (1.7 drew train row 1) and a bool one read as rows 0 and 1: a grid of
    the wrong neighbours, written without a word."""
    samples, train = torch.rand(4, 1, 8, 8), torch.rand(6, 1, 8, 8)
    with pytest.raises(UsageError, match=r"^index must hold integer train rows, got dtype (float32|bool)$"):
        save_neighbour_grid(tmp_path / "g.png", samples, train, index=index)


@pytest.mark.parametrize("which", ["samples", "train"])
def test_save_neighbour_grid_with_its_own_index_refuses_nan_pixels(tmp_path, which):
    """Given ``index`` (no search to refuse them), NaN pixels drew black without a word; a NaN in a training
    image the grid does not show is no matter."""
    images = {"samples": torch.rand(4, 1, 8, 8), "train": torch.rand(6, 1, 8, 8)}
    images["train"][5, 0, 0, 0] = math.nan  # not shown
    save_neighbour_grid(tmp_path / "ok.png", **images, index=torch.tensor([0, 1, 2, 3]))
    images[which][1, 0, 3, 3] = math.nan
    with pytest.raises(NonFiniteError, match=rf"^{which} contains NaN or Inf values$"):
        save_neighbour_grid(tmp_path / "g.png", **images, index=torch.tensor([0, 1, 2, 3]))
    assert not (tmp_path / "g.png").exists()


def test_save_neighbour_grid_refuses_a_grid_past_memory(tmp_path):
    """A padding whose canvas cannot fit in memory reached torch's allocator (a raw RuntimeError)."""
    padding = math.isqrt(read_cap()) + 1  # the canvas is at least padding ** 2 bytes
    with pytest.raises(UsageError, match=r"^padding = .* GiB, more than this machine's .* GiB of memory$"):
        save_neighbour_grid(
            tmp_path / "g.png", torch.rand(1, 1, 2, 2), torch.rand(1, 1, 2, 2), padding=padding
        )


@pytest.mark.parametrize("value_range", [(0.0, math.inf), "01", (0, 1, 2)])
def test_save_neighbour_grid_checks_value_range(tmp_path, value_range):
    """An infinite high mapped every pixel to black without a word; a string was unpacked into its characters
    and a triple raised Python's "too many values to unpack"."""
    with pytest.raises(ValueError, match=r"^value_range must be \(low, high\), finite numbers"):
        save_neighbour_grid(
            tmp_path / "g.png", torch.rand(2, 1, 4, 4), torch.rand(3, 1, 4, 4), value_range=value_range
        )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ring_centres(-1), "num_modes must be an integer >= 1, got -1"),
        (lambda: ring_centres(0), "num_modes must be an integer >= 1, got 0"),
        (lambda: ring_centres(2.0), "num_modes must be an integer >= 1, got 2.0"),
        (lambda: ring_centres(8, float("nan")), "radius must be a finite number > 0, got nan"),
        (lambda: ring_centres(8, -1.0), "radius must be a finite number > 0, got -1.0"),
        (lambda: grid_centres(()), r"values must be a non-empty tuple of finite numbers, got \(\)"),
        (lambda: grid_centres((0.0, math.inf)), "values must be a non-empty tuple of finite numbers"),
        (lambda: MixturePreset("m", torch.zeros(0, 2), 1.0), r"centres must be a \(K >= 1, 2\) tensor"),
        (lambda: MixturePreset("m", torch.full((2, 2), math.nan), 1.0), "centres must be finite floats"),
        (lambda: MixturePreset("m", torch.zeros(2, 2), math.nan), "std must be a finite number > 0, got nan"),
        (lambda: RING_PACGAN.sample(-1), "n must be an integer >= 0, got -1"),
        (lambda: RING_PACGAN.sample(3, seed=-1), "seed must be an integer >= 0, got -1"),
        (lambda: RING_PACGAN.sample(3, generator=5), "generator must be a CPU torch.Generator"),
        (lambda: RING_PACGAN.sample(10**15), r"n = 1,000,000,000,000,000 asks for .* GiB, more than"),
    ],
)
def test_toy_data_checks_its_arguments(call, message):
    """ring_centres(-1) raised torch's "upper bound and lower bound inconsistent with step sign", ring_centres(0)
    gave no centres and a NaN radius NaN centres; a NaN grid value, an empty grid and a preset with NaN
    centres or std were taken and sampled NaN; sample(-1) raised torch's randint error, a negative seed was
    taken and 10**15 samples reached the allocator."""
    with pytest.raises(UsageError, match=f"^{message}"):
        call()


def test_toy_data_defaults_still_work():
    """The checks leave good calls as they were, and take numpy integers as the package's other counts and
    seeds do (sample(seed=np.int64(3)) raised torch's "TypeError: an integer is required")."""
    assert torch.allclose(ring_centres(4, 2).norm(dim=1), torch.full((4,), 2.0, dtype=torch.float64))
    assert grid_centres((0, 1)).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert RING_PACGAN.sample(5, seed=np.int64(3)).shape == (5, 2)


def test_make_stacked_refuses_more_than_memory():
    """num_samples=10**12 reached torch's allocator ("DefaultCPUAllocator: can't allocate memory")."""
    with pytest.raises(
        UsageError, match=r"^num_samples = 1,000,000,000,000 asks for [\d,.]+ GiB, more than this machine's"
    ):
        make_stacked(torch.rand(10, 1, 28, 28), num_samples=10**12)


def test_make_stacked_checks_seed():
    """A negative seed was taken silently."""
    with pytest.raises(UsageError, match=r"^seed must be an integer >= 0, got -1$"):
        make_stacked(torch.rand(10, 1, 4, 4), num_samples=2, seed=-1)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda m: frechet_distance(m, m), "features1"),
        (lambda m: feature_statistics(m), "features"),
        (lambda m: knn_radii(m, 1), "features"),
        (lambda m: code_usage(m, torch.zeros(5, 3)), "samples"),
        (lambda m: nearest_train(torch.zeros(5, 3), m), "train"),
        (lambda m: make_stacked(m.reshape(5, 1, 3), num_samples=2), "images"),
        (lambda m: kl_split(m), "counts"),
        (lambda m: reverse_kl_uniform(m), "counts"),
    ],
)
def test_meta_tensors_are_refused_by_name(call, name):
    """frechet_distance raised "NotImplementedError: Cannot copy out of meta tensor" (as did the others that
    copy to the CPU); make_stacked returned meta "images" without a word."""
    with pytest.raises(UsageError, match=f"^{name} must be a tensor with values, got a meta tensor"):
        call(torch.zeros(5, 3, device="meta"))


def test_fingerprint_change_refuses_a_new_fingerprint_that_is_not_one():
    """fingerprint_change(fp, None) raised "TypeError: 'NoneType' object is not subscriptable"."""
    fp = array_fingerprint(np.zeros((3, 2)))
    for new in (None, [1], {"kind": "archive", "rows": 3}):
        with pytest.raises(UsageError, match=r"^new must be a dataset fingerprint"):
            fingerprint_change(fp, new)
    # an old record of any JSON value is still described, not refused (it comes from a checkpoint)
    assert "not one this version of glann_ext reads" in fingerprint_change(None, fp)
    assert fingerprint_change(fp, dict(fp)) is None


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda big, ok: code_usage(big, ok), "samples"),
        (lambda big, ok: code_usage(ok, big), "codes"),
        (lambda big, ok: nearest_train(big, ok), "samples"),
        (lambda big, ok: nearest_train(ok, big), "train"),
        (lambda big, ok: memorisation_report(big, ok, ok), "generated"),
        (lambda big, ok: memorisation_report(ok, ok, big), "test"),
        (lambda big, ok: moment_ratios(big, ok), "samples"),
    ],
)
def test_values_too_large_to_square_name_the_metrics_argument(call, name):
    """Values near 1e160 raised nn_argmin's "queries row 0 has a squared L2 norm above ...", naming the
    search's argument, not the metric's (memorisation_report's "generated" was called "samples")."""
    big, ok = _latent(6) * BIG, _latent(5, seed=1)
    with pytest.raises(UsageError, match=f"^{name} has values too large to square in float64: row 0 "):
        call(big, ok)


def test_values_too_large_to_square_in_float32_suggest_float64():
    """float32 rows of norm 1e19 raised nn_argmin's error naming its "queries"."""
    big = torch.full((3, 4), 1e19)
    with pytest.raises(
        UsageError, match=r"^samples has values too large to square in float32: .* or pass float64$"
    ):
        nearest_train(big, torch.zeros(2, 4))


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda big: knn_radii(big, 2), "features"),
        (lambda big: knn_radii(big, 2, name="real"), "real"),
        (lambda big: nearest_other_code(big), "codes"),
        (lambda big: feature_statistics(big), "features"),
    ],
)
def test_radii_and_distances_of_values_too_large_to_square_are_refused(call, name):
    """knn_radii and nearest_other_code returned inf radii and distances without a word, and
    feature_statistics an inf covariance."""
    with pytest.raises(UsageError, match=f"^{name} has values too large to square in float64"):
        call(_latent(6) * BIG)


def test_frechet_distance_does_not_depend_on_the_features_scale():
    """Features near 1e160 read as "sigma1 contains NaN or Inf values", near 1e80 raised numpy's "Eigenvalues
    did not converge", and near 1e-100 the distance came out 7 times too large (an underflowed product)."""
    a, b = _latent(50), _latent(50, seed=1) + 0.5
    want = frechet_distance(a, b)
    for exponent in (-330, -100, 80, 260, 500):  # scales by powers of two: exact
        scale = 2.0**exponent
        got = frechet_distance(a * scale, b * scale)
        assert got / scale / scale == pytest.approx(want, rel=1e-12)


def test_a_frechet_distance_past_float64_names_the_features():
    """A distance past float64's range (features near 1e160 apart) raised "sigma1 contains NaN or Inf"."""
    with pytest.raises(UsageError, match=r"^features2 has values too large to square in float64"):
        frechet_distance(_latent(10), _latent(10, seed=1) * BIG)


# Mutation test (2026-12-07): mode_coverage took num_std = 0 (every sample off every mode, silently)
@pytest.mark.parametrize("num_std", [0, -1.0, math.inf, math.nan, True, None])
def test_mode_coverage_refuses_a_num_std_that_is_not_a_positive_finite_number(num_std):
    # an infinite radius would count a point 1e6 away as high quality; True would read as 1
    from glann_ext.metrics.mixtures import RING_VEEGAN, mode_coverage

    with pytest.raises(ValueError, match="num_std must be a positive finite number"):
        mode_coverage(torch.zeros(4, 2), RING_VEEGAN, num_std=num_std)


def test_mode_coverage_takes_a_numpy_num_std():
    from glann_ext.metrics.mixtures import RING_VEEGAN, mode_coverage

    got = mode_coverage(RING_VEEGAN.centres, RING_VEEGAN, num_std=np.float32(3.0))
    assert got.modes_covered == 8


@pytest.mark.parametrize("std", [True, math.inf])
def test_mode_coverage_refuses_a_std_that_is_not_a_positive_finite_number(std):
    from glann_ext.metrics.mixtures import mode_coverage

    with pytest.raises(ValueError, match="std must be a positive finite number"):
        mode_coverage(torch.zeros(4, 2), torch.zeros(2, 2), std)


# Mutation test (2026-12-07): make_stacked took a label 10 (its mode id then collides with another triple's)
def test_make_stacked_refuses_a_label_of_ten():
    from glann_ext.metrics.stacked_mnist import make_stacked

    images = torch.zeros(3, 1, 4, 4)
    with pytest.raises(ValueError, match=r"labels must be integer digits 0\.\.9"):
        make_stacked(images, torch.tensor([0, 5, 10]), num_samples=4)


# Mutation test (2026-12-07): radii a hair below 0 were taken (the check compared with -1e-12)
def test_ball_membership_refuses_any_negative_radius():
    from glann_ext.metrics.knn import ball_membership_counts

    c = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"radii must be >= 0"):
        ball_membership_counts(c, c, torch.tensor([1.0, -1e-15], dtype=torch.float64), strict=False)


# Mutation test (2026-12-07): nearest_other_code took negative code indices (read from the end, as Python
# indexing does)
def test_nearest_other_code_refuses_a_negative_query_index():
    from glann_ext.metrics.code_usage import nearest_other_code

    codes = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"queries must index the 5 codes \(0\.\.4\)"):
        nearest_other_code(codes, queries=torch.tensor([0, -1]))


# Mutation tests (2026-12-07): each test below fails on a one-line bug that no earlier test caught.
def test_toy_sample_memory_check_counts_the_bytes_of_every_sample(monkeypatch):
    """The memory check is of n * SAMPLE_BYTES (48 per sample), not n: with a cap of 100 samples' worth,
    100 samples are drawn and 101 refused (checking n bytes would let 48x too many through to the allocator)."""
    monkeypatch.setattr(arrays, "read_cap", lambda: 100 * SAMPLE_BYTES)
    assert RING_PACGAN.sample(100, seed=0).shape == (100, 2)
    with pytest.raises(UsageError, match=r"^n = 101 asks for"):
        RING_PACGAN.sample(101, seed=0)

"""Balanced sampling (glann_ext.models.balance): the usage counts and acceptances against independent
references, the rejection sampler's statistics and determinism, and the model's use, export and refusal of
bad tables."""

from __future__ import annotations

import math

import pytest
import torch
from glann_testing import OPS

from glann_ext import seeding
from glann_ext.backend import get_ops
from glann_ext.errors import CheckpointError, ConfigError, UsageError
from glann_ext.models import GLANN, MLP, DCGANGenerator, PixelIMLE, balance, load_model_file, save_model
from glann_ext.train.config import TrainConfig, preset, saved_config


def _cdist_nearest(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The reference search: float64 cdist, then argmin (lowest index on ties)."""
    return torch.cdist(queries.double(), keys.double()).argmin(dim=1)


def test_acceptance_by_hand():
    counts = torch.tensor([0, 4, 2, 8, 1])
    # non-zero counts 4, 2, 8, 1: median 3; a code never hit keeps all of its (rare) draws
    torch.testing.assert_close(balance.acceptance(counts, 0.5), torch.tensor([1.0, 0.75, 1.0, 0.375, 1.0]))
    torch.testing.assert_close(balance.acceptance(counts, 0.0), torch.tensor([1.0, 0.25, 0.5, 0.125, 1.0]))
    assert torch.equal(balance.acceptance(counts, 1.0), torch.ones(5))
    assert torch.equal(balance.acceptance(torch.zeros(3, dtype=torch.int64), 0.25), torch.ones(3))


def test_calibration_draws_round_up_and_give_every_code_one():
    assert balance.calibration_draws(3, 2.5) == 8  # 7.5 draws round up, so no code gets fewer than asked
    assert balance.calibration_draws(7, 0.1) == 7  # at least one per code
    assert balance.min_acceptance(4, 2.0) == 1 / 8


def test_usage_counts_match_an_independent_count_across_chunks():
    """More draws than one calibration chunk, so the count is stitched from two seeded blocks."""
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(7, 3, generator=g)
    W = torch.randn(2, 3, generator=g)

    def map_noise(e):
        return e @ W

    draws = balance.CALIBRATION_CHUNK + 1234
    got = balance.usage_counts(map_noise, _cdist_nearest, codes, 2, draws, seed=5)
    e = torch.cat([
        torch.randn(balance.CALIBRATION_CHUNK, 2, generator=seeding.generator(5, "balance", block=0)),
        torch.randn(1234, 2, generator=seeding.generator(5, "balance", block=1)),
    ])  # fmt: skip
    expected = torch.bincount(_cdist_nearest(e @ W, codes), minlength=7)
    assert torch.equal(got, expected) and int(got.sum()) == draws


def _square_codes() -> torch.Tensor:
    return torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])


def test_rejection_sample_keeps_each_region_at_its_acceptance():
    """2-D noise, identity map, one code per quadrant (each a quarter of the draws): kept shares must follow
    the acceptances (1, 1/2, 1/4, 1/8), normalised; also prefix-stable, seeded and never a code."""
    codes = _square_codes()
    accept = torch.tensor([1.0, 0.5, 0.25, 0.125])
    n = 6000
    z = balance.rejection_sample(lambda e: e, _cdist_nearest, codes, accept, 2, n, seed=3)
    assert z.shape == (n, 2)
    share = torch.bincount(_cdist_nearest(z, codes), minlength=4).double() / n
    expected = accept.double() / accept.sum()
    tolerance = 5 * torch.sqrt(expected * (1 - expected) / n)  # five binomial standard errors
    assert bool(((share - expected).abs() < tolerance).all()), (share, expected)
    assert torch.equal(
        balance.rejection_sample(lambda e: e, _cdist_nearest, codes, accept, 2, 100, 3), z[:100]
    )
    other = balance.rejection_sample(lambda e: e, _cdist_nearest, codes, accept, 2, 100, seed=4)
    assert not torch.equal(other, z[:100])
    assert balance.rejection_sample(lambda e: e, _cdist_nearest, codes, accept, 2, 0, 3).shape == (0, 2)


def test_rejection_sample_draws_noise_and_coins_from_their_own_streams():
    """The first round by hand: the noise from generator(seed, "sample"), the coin flips from
    generator(seed, "accept"), kept where coin < acceptance (drawing the coins from the noise's stream, or
    comparing with <=, passed every other test)."""
    codes, accept = _square_codes(), torch.full((4,), 0.5)
    z = balance.rejection_sample(lambda e: e, _cdist_nearest, codes, accept, 2, 50, seed=7)
    noise = torch.randn(balance.SAMPLING_CHUNK, 2, generator=seeding.generator(7, "sample"))
    coins = torch.rand(balance.SAMPLING_CHUNK, generator=seeding.generator(7, "accept"))
    assert torch.equal(z, noise[coins < 0.5][:50])
    exact = torch.ones(
        4
    )  # the first draw's coin equals its code's acceptance: a rejection (keep if coin < p)
    exact[int(_cdist_nearest(noise[:1], codes))] = coins[0]
    kept = balance.rejection_sample(lambda e: e, _cdist_nearest, codes, exact, 2, 1, seed=7)
    assert not torch.equal(kept[0], noise[0])


def test_rejection_sampling_gives_up_after_its_budget_of_draws():
    """A broken table (every acceptance 1e-30) stops after 16 rounds plus MAX_DRAWS_PER_SAMPLE draws per
    wanted sample, here 16 + ceil(2 x 10,000 / 4,096) = 21 rounds of 4,096 draws, with a UsageError that
    names the draws, the mean acceptance and the way out, instead of looping for ever."""
    accept = torch.full((4,), 1e-30)
    with pytest.raises(
        UsageError,
        match=r"^balanced sampling kept 0 of 86016 draws for 2 samples: the model's code_accept "
        r"\(mean 1e-30\) is too small; recalibrate it \(calibrate_sampler\(refresh=True\)\) or sample plainly$",
    ):
        balance.rejection_sample(lambda e: e, _cdist_nearest, _square_codes(), accept, 2, 2, seed=0)


def _model(
    balance_draws: float = 10.0, *, skewed: bool = True, n_codes: int = 40, scale: float = 1.0
) -> GLANN:
    """A small untrained GLANN whose T sends most draws to a few codes (skewed) or is plain random."""
    torch.manual_seed(0)
    G = DCGANGenerator(latent_dim=8, image_size=28, channels=1, width=8)
    T = MLP(4, 8, hidden=16, layers=2, batch_norm=False)
    codes = get_ops(OPS).project(torch.randn(n_codes, 8))
    if skewed:  # half of the codes sit near T's typical outputs, half far away
        with torch.no_grad():
            out = get_ops(OPS).project(T(torch.randn(n_codes // 2, 4)))
            codes[: n_codes // 2] = get_ops(OPS).project(out + 0.05 * torch.randn_like(out))
    cfg = {**TrainConfig().to_dict(), "balance_draws": balance_draws, "seed": 1, "sample_noise_scale": scale}
    cfg["sample_local_spread"] = 0.0  # T's samples as they are: these tests are about the balancing alone
    return GLANN(G, codes, T, ops=OPS, config=cfg)


def test_plain_pixel_and_gaussian_samples_of_k_are_the_first_k_of_n_at_any_width():
    """Plain sampling, a pixel-space IMLE model and the Gaussian baseline draw their noise in one call; at
    widths that are not multiples of 16 (noise 5, latent 7) torch.randn redrew the last values with n. The
    noise is now the same bit for bit; the codes mapped from it may differ by the rounding of a matrix
    product over a batch of another size (about 1e-7), not by a redrawn value."""
    torch.manual_seed(0)
    G = DCGANGenerator(latent_dim=7, image_size=28, channels=1, width=4)
    codes = get_ops(OPS).project(torch.randn(30, 7))
    glann = GLANN(G, codes, MLP(5, 7, hidden=8, layers=2, batch_norm=False), ops=OPS, config={"seed": 1})
    pixel = PixelIMLE(G, ops=OPS)
    exact = (lambda n: glann.noise(n, seed=3), lambda n: pixel.sample_inputs(n, seed=3))
    mapped = (
        lambda n: glann.sample_inputs(n, seed=3, balanced=False),
        lambda n: glann.gaussian_codes(n, seed=3),
    )
    for k in (1, 3, 10, 40):
        for draw in exact:
            assert torch.equal(draw(k), draw(41)[:k])
        for draw in mapped:
            torch.testing.assert_close(draw(k), draw(41)[:k], rtol=0, atol=1e-6)


def _busiest_share(model: GLANN, z: torch.Tensor) -> float:
    return float(torch.bincount(_cdist_nearest(z, model.codes), minlength=len(model.codes)).max()) / len(z)


def test_balanced_sampling_evens_out_the_codes_and_plain_sampling_is_t_of_e():
    model = _model()
    assert model.balanced and model.code_accept is None
    plain = model.sample_inputs(2000, seed=0, balanced=False)
    torch.testing.assert_close(plain, model.map_noise(model.noise(2000, seed=0)), rtol=0, atol=0)
    balanced = model.sample_inputs(2000, seed=0)
    assert model.code_accept is not None and model.code_accept.shape == (40,)
    # the calibration: the configured draws per code, the configured quantile, the config's seed
    counts = balance.usage_counts(model.map_noise, _cdist_nearest, model.codes, 4, 400, seed=1)
    torch.testing.assert_close(model.code_accept, balance.acceptance(counts, 0.25))
    assert _busiest_share(model, balanced) < 0.6 * _busiest_share(model, plain)
    # every balanced sample is one of T's outputs, on the sphere
    torch.testing.assert_close(balanced.norm(dim=1), torch.ones(2000))
    images = model.sample(5, seed=0)
    torch.testing.assert_close(images, model.decode(balanced[:5]))
    # kept until refreshed: a changed T needs a new table
    table = model.code_accept
    with torch.no_grad():
        model.T.net[-1].bias.add_(1.0)
    assert model.calibrate_sampler() is table
    assert not torch.equal(model.calibrate_sampler(refresh=True), table)


def test_balance_off_in_the_config_and_configs_saved_before_it_sample_plainly():
    model = _model(balance_draws=0.0)
    assert not model.balanced
    torch.testing.assert_close(model.sample_inputs(50, seed=2), model.map_noise(model.noise(50, seed=2)))
    assert model.code_accept is None
    # asked for explicitly, it calibrates with the package default
    z = model.sample_inputs(50, seed=2, balanced=True)
    assert z.shape == (50, 8) and model.code_accept is not None
    legacy = TrainConfig().to_dict()
    del legacy["balance_draws"]
    assert saved_config(legacy).balance_draws == 0.0
    assert TrainConfig().balance_draws == balance.DEFAULT_DRAWS_PER_CODE
    assert TrainConfig().balance_quantile == balance.DEFAULT_QUANTILE


def test_the_noise_scale_scales_every_draw_and_the_calibration():
    model = _model(scale=1.7)
    assert model.noise_scale == 1.7
    e = model.noise(300, seed=3)
    plain = model.sample_inputs(300, seed=3, balanced=False)
    torch.testing.assert_close(plain, model.map_noise(1.7 * e), rtol=0, atol=0)
    assert not torch.allclose(plain, model.map_noise(e))
    # the acceptance table is counted on the scaled draws (so it matches what sampling draws)...
    model.calibrate_sampler()
    counts = balance.usage_counts(
        lambda d: model.map_noise(1.7 * d), _cdist_nearest, model.codes, 4, 400, seed=1
    )
    torch.testing.assert_close(model.code_accept, balance.acceptance(counts, 0.25))
    # ...and the balanced samples are the scaled draws the sampler kept
    expected = balance.rejection_sample(
        lambda d: model.map_noise(1.7 * d), _cdist_nearest, model.codes, model.code_accept, 4, 64, seed=5
    )
    torch.testing.assert_close(model.sample_inputs(64, seed=5), expected)
    # a config without the field (saved before it existed) samples at scale 1
    legacy = {k: v for k, v in model.config.items() if k != "sample_noise_scale"}
    assert GLANN(model.G, model.codes, model.T, ops=OPS, config=legacy).noise_scale == 1.0


def test_new_runs_sample_at_noise_scale_1_5_and_runs_saved_before_that_default_at_1():
    assert TrainConfig().sample_noise_scale == 1.5
    legacy = {k: v for k, v in TrainConfig().to_dict().items() if k != "sample_noise_scale"}
    assert saved_config(legacy).sample_noise_scale == 1.0  # what such a run sampled with
    assert TrainConfig.from_dict(legacy).sample_noise_scale == 1.5  # a config file to start from: today's
    saved = {**legacy, "sample_noise_scale": 1.0}  # saved with the field when its default was 1
    assert saved_config(saved).sample_noise_scale == 1.0
    # paper keeps the papers' sampling; laptop and laptop-30min were measured best at 1.5
    assert preset("paper").sample_noise_scale == 1.0
    assert preset("laptop").sample_noise_scale == preset("laptop-30min").sample_noise_scale == 1.5
    assert preset("tiny").sample_noise_scale == 1.5


def test_setting_the_noise_scale_recounts_the_table_and_travels_with_the_export():
    model, at_scale = _model(), _model(scale=1.7)
    table = model.calibrate_sampler()
    model.set_noise_scale(1.0)  # unchanged: the table stays
    assert model.code_accept is table
    model.set_noise_scale(1.7)
    assert model.code_accept is None and model.noise_scale == 1.7
    torch.testing.assert_close(model.sample_inputs(64, seed=5), at_scale.sample_inputs(64, seed=5))
    torch.testing.assert_close(model.code_accept, at_scale.code_accept)
    tensors, meta = model.export()
    assert GLANN.from_export(tensors, meta, ops=OPS).noise_scale == 1.7


def test_a_pixel_imle_model_scales_its_noise_too():
    torch.manual_seed(0)
    model = PixelIMLE(DCGANGenerator(latent_dim=8, image_size=28, channels=1, width=8), ops=OPS)
    e = model.noise(6, seed=2)
    model.set_noise_scale(0.5)
    torch.testing.assert_close(model.sample_inputs(6, seed=2), 0.5 * e, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), 11.0])
def test_a_bad_noise_scale_is_refused(bad):
    with pytest.raises(ConfigError, match="sample_noise_scale"):
        TrainConfig(sample_noise_scale=bad).validate()
    with pytest.raises(UsageError, match="noise scale"):
        _model().set_noise_scale(bad)
    with pytest.raises(UsageError, match="noise scale"):
        _model().set_noise_scale(True)


def test_the_table_travels_with_the_model_file(tmp_path):
    model = _model()
    z = model.sample_inputs(30, seed=7)
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = load_model_file(path, ops=OPS)
    assert torch.equal(loaded.code_accept, model.code_accept)
    assert torch.equal(loaded.sample_inputs(30, seed=7), z)


@pytest.mark.parametrize(
    "bad", [torch.zeros(40), torch.full((40,), math.nan), torch.full((40,), 1.5), torch.ones(39)]
)
def test_a_bad_table_in_a_model_file_is_refused(tmp_path, bad):
    """A zero acceptance would make the sampler loop forever: an untrusted file must not get that far."""
    model = _model()
    model.calibrate_sampler()
    model.code_accept = bad
    path = save_model(model, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="code_accept"):
        load_model_file(path, ops=OPS)


def test_a_glo_only_model_has_nothing_to_balance():
    model = _model()
    glo_only = GLANN(model.G, model.codes, None, ops=OPS, config=model.config)
    assert not glo_only.balanced
    with pytest.raises(UsageError, match="no IMLE mapping"):
        glo_only.calibrate_sampler()
    with pytest.raises(UsageError, match="n must be"):
        model.sample_inputs(-1)


def test_codes_and_a_mapping_must_fit_gs_input():
    model = _model()  # G takes 8-D codes
    for codes in (model.codes[:, :7], model.codes[0], model.codes.long()):
        with pytest.raises(ValueError, match=r"codes must be floating \(N, 8\)"):
            GLANN(model.G, codes, model.T, ops=OPS)
    with pytest.raises(ValueError, match="T must map to G's input of 8, got outputs of 7"):
        GLANN(model.G, model.codes, MLP(4, 7, hidden=16), ops=OPS)


def test_a_model_without_codes_samples_plainly_and_refuses_balancing():
    from glann_ext.models import PixelIMLE

    model = PixelIMLE(DCGANGenerator(latent_dim=8, image_size=28, channels=1, width=8), ops=OPS)
    torch.testing.assert_close(
        model.sample(3, seed=1, balanced=False), model.sample(3, seed=1), rtol=0, atol=0
    )
    with pytest.raises(UsageError, match="balanced sampling needs training codes"):
        model.sample(3, balanced=True)


# Mutation tests (2026-12-07): each test below fails on a one-line bug that no earlier test caught.
def test_min_acceptance_is_one_over_the_draws_calibration_actually_makes():
    """The floor follows calibration_draws: fractional draws round up and every code gets one (1 / (N x
    draws_per_code) would pass test_calibration_draws_round_up_and_give_every_code_one, whose draws are whole)."""
    assert balance.min_acceptance(3, 2.5) == 1 / 8
    assert balance.min_acceptance(7, 0.1) == 1 / 7


def test_rejection_sampling_stops_at_the_round_that_fills_n():
    """Every acceptance 1 and n one round of draws: one round of T, not two (``have > n`` would draw, map
    and search a whole extra round whenever a round ends exactly at n)."""
    calls = []

    def map_noise(e):
        calls.append(len(e))
        return e

    z = balance.rejection_sample(map_noise, _cdist_nearest, _square_codes(), torch.ones(4), 2,
                                 balance.SAMPLING_CHUNK, seed=0)  # fmt: skip
    assert z.shape == (balance.SAMPLING_CHUNK, 2) and calls == [balance.SAMPLING_CHUNK]

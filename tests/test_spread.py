"""GLANN's latent spread (``sample_spread``, ``GLANN.set_spread``): each sample's code moved by seeded isotropic
noise scaled to the codes' spread and projected back, checked against an independent reference; prefix
stability across noise blocks, the distance it moves a code, export, config checks and refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from glann_testing import OPS

from glann_ext import seeding
from glann_ext.backend import get_ops
from glann_ext.errors import ConfigError, UsageError
from glann_ext.models import GLANN, MLP, DCGANGenerator
from glann_ext.models.generative import SPREAD_CHUNK
from glann_ext.train.config import SAMPLING_FIELDS, TrainConfig


def _model(latent: int = 16, n_codes: int = 300, spread: float | None = None) -> GLANN:
    torch.manual_seed(0)
    G = DCGANGenerator(latent_dim=latent, image_size=28, channels=1, width=4)
    T = MLP(4, latent, hidden=16, layers=2, batch_norm=False)
    codes = get_ops(OPS).project(torch.randn(n_codes, latent))
    cfg = {**TrainConfig().to_dict(), "seed": 1}
    if spread is not None:
        cfg["sample_spread"] = spread
    return GLANN(G, codes, T, ops=OPS, config=cfg)


def _reference(z: torch.Tensor, codes: torch.Tensor, spread: float, seed: int) -> torch.Tensor:
    """z moved by the spread's noise, from numpy's standard deviation and a plain normalisation."""
    std = float(np.sqrt(codes.double().numpy().var(axis=0).mean()))
    blocks = math.ceil(len(z) / SPREAD_CHUNK)
    noise = torch.cat([
        torch.randn(SPREAD_CHUNK, z.shape[1], generator=seeding.generator(seed, "spread", block=b))
        for b in range(blocks)
    ])[: len(z)]  # fmt: skip
    moved = z.double() + spread * std * noise.double()
    return (moved / moved.norm(dim=1, keepdim=True)).float()


def test_no_spread_by_default_and_zero_changes_nothing():
    assert TrainConfig().sample_spread == 0.0 and "sample_spread" in SAMPLING_FIELDS
    model = _model()
    assert model.spread == 0.0
    legacy = {k: v for k, v in model.config.items() if k != "sample_spread"}  # saved before the field
    assert GLANN(model.G, model.codes, model.T, ops=OPS, config=legacy).spread == 0.0
    before = model.sample_inputs(50, seed=3)
    model.set_spread(0.0)
    assert torch.equal(model.sample_inputs(50, seed=3), before)


@pytest.mark.parametrize("balanced", [True, False])
def test_the_spread_moves_each_sample_by_its_seeded_noise(balanced):
    model = _model()
    z = model.sample_inputs(80, seed=5, balanced=balanced)
    model.set_spread(0.6)
    got = model.sample_inputs(80, seed=5, balanced=balanced)
    torch.testing.assert_close(got, _reference(z, model.codes, 0.6, seed=5), atol=2e-6, rtol=0)
    assert not torch.allclose(got, z, atol=1e-3)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(80))  # back on the sphere
    torch.testing.assert_close(model.sample(80, seed=5, balanced=balanced), model.decode(got))
    # another seed moves the samples otherwise
    assert not torch.allclose(model.sample_inputs(80, seed=6, balanced=balanced), got)


def test_the_first_samples_move_the_same_whatever_n():
    """Across the noise's block boundary: the first k of n balanced samples are the samples of k."""
    model = _model(latent=4, n_codes=20, spread=0.5)
    n = SPREAD_CHUNK + 40
    big = model.sample_inputs(n, seed=2)
    for k in (7, SPREAD_CHUNK + 3):
        torch.testing.assert_close(model.sample_inputs(k, seed=2), big[:k], rtol=0, atol=0)
    assert model.sample_inputs(0, seed=2).shape == (0, 4)


def test_the_spread_is_about_the_norm_of_the_move():
    """Codes spread over the sphere in 64-D have a per-coordinate deviation near 1/8, so noise of spread h has a
    norm near h, nearly orthogonal to the sample: projected, it lands 2 sin(atan(h) / 2) away."""
    model = _model(latent=64, n_codes=2000)
    z = model.sample_inputs(3000, seed=1, balanced=False)
    for h in (0.25, 0.5, 1.0):
        model.set_spread(h)
        moved = model.sample_inputs(3000, seed=1, balanced=False)
        distance = float((moved - z).norm(dim=1).median())
        assert distance == pytest.approx(2 * math.sin(math.atan(h) / 2), rel=0.05), h


def test_the_spread_travels_with_the_export():
    model = _model(spread=0.4)
    tensors, meta = model.export()
    back = GLANN.from_export(tensors, meta, ops=OPS)
    assert back.spread == 0.4
    torch.testing.assert_close(back.sample_inputs(30, seed=1), model.sample_inputs(30, seed=1))


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), 4.5, True, "0.5"])
def test_a_bad_spread_is_refused(bad):
    with pytest.raises(UsageError, match=r"spread must be a number in \[0, 4\]"):
        _model().set_spread(bad)
    if not isinstance(bad, (bool, str)):
        with pytest.raises(ConfigError, match="sample_spread"):
            TrainConfig(sample_spread=bad).validate()
    # a model file's config is not trusted: its spread is checked before any sample is drawn
    model = _model(spread=bad)
    with pytest.raises(UsageError, match="the model's sample_spread must be a number"):
        model.sample(2)


def test_every_noise_block_has_its_own_seeded_noise():
    """Past SPREAD_CHUNK samples the noise comes from the next block's generator, as the reference draws it
    (found by mutation testing: every block reusing block 0's noise kept the prefix stable and went unseen)."""
    model = _model(latent=4, n_codes=20)
    n = SPREAD_CHUNK + 40
    z = model.sample_inputs(n, seed=2, balanced=False)
    model.set_spread(0.5)
    got = model.sample_inputs(n, seed=2, balanced=False)
    torch.testing.assert_close(got, _reference(z, model.codes, 0.5, seed=2), atol=2e-6, rtol=0)

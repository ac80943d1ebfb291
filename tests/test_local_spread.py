"""GLANN's local spread (``sample_local_spread``, ``GLANN.set_local_spread``): each sample's code moved by seeded
Gaussian noise shaped like the spread of its k nearest training codes, checked against an independent float64
reference; the exact neighbour search across tiles, the noise's covariance, prefix stability across noise
blocks, old configs, the plain sampler, config checks and refusals."""

from __future__ import annotations

import math

import pytest
import torch
from glann_testing import OPS

from glann_ext import seeding
from glann_ext.backend import get_ops
from glann_ext.errors import ConfigError, UsageError
from glann_ext.evaluate import apply_sampling
from glann_ext.models import GLANN, MLP, DCGANGenerator, local_spread
from glann_ext.models.generative import check_sampling_config
from glann_ext.train.config import SAMPLING_FIELDS, TrainConfig, saved_config


def _model(latent: int = 8, n_codes: int = 200, **sampling) -> GLANN:
    torch.manual_seed(0)
    G = DCGANGenerator(latent_dim=latent, image_size=28, channels=1, width=4)
    T = MLP(4, latent, hidden=16, layers=2, batch_norm=False)
    codes = get_ops(OPS).project(torch.randn(n_codes, latent))
    cfg = {**TrainConfig().to_dict(), "seed": 1, **sampling}
    return GLANN(G, codes, T, ops=OPS, config=cfg)


def _reference_offsets(
    z: torch.Tensor, codes: torch.Tensor, k: int, spread: float, seed: int
) -> torch.Tensor:
    """The offsets from float64 distances, a stable argsort and a plain loop over the rows."""
    z64, c64 = z.double(), codes.double()
    chunks = math.ceil(len(z) / local_spread.CHUNK)
    w = torch.cat([
        torch.randn(local_spread.CHUNK, k, generator=seeding.generator(seed, "local_spread", block=b))
        for b in range(chunks)
    ])[: len(z)].double() / math.sqrt(k - 1)  # fmt: skip
    out = torch.empty_like(z64)
    for i in range(len(z)):
        d2 = ((c64 - z64[i]) ** 2).sum(1)
        nearest = torch.sort(torch.argsort(d2, stable=True)[:k]).values
        dev = c64[nearest] - c64[nearest].mean(0)
        out[i] = spread * (w[i].unsqueeze(1) * dev).sum(0)
    return out


@pytest.mark.parametrize(
    ("n", "n_codes", "d", "k"), [(1, 2, 3, 2), (37, 101, 7, 5), (300, 64, 16, 8), (5, 9, 2, 9)]
)
def test_nearest_codes_are_the_exact_k_nearest_in_increasing_index_order(monkeypatch, n, n_codes, d, k):
    monkeypatch.setattr(local_spread, "TILE_BYTES", 4 * n_codes * 3)  # tiles of 3 rows: every tile path
    g = torch.Generator().manual_seed(n + d)
    z, codes = torch.randn(n, d, generator=g), torch.randn(n_codes, d, generator=g)
    got = local_spread.nearest_codes(z, codes, k)
    d2 = torch.cdist(z.double(), codes.double())
    want = torch.sort(torch.argsort(d2, dim=1, stable=True)[:, :k], dim=1).values
    assert torch.equal(got, want)


def test_near_ties_and_exact_ties_at_the_kth_place_are_ranked_the_same_in_any_tile(monkeypatch):
    """The k-th and (k+1)-th codes 1e-8 apart (below float32 scores' rounding), and duplicate codes straddling
    the k-th place: the float64 ranking decides, ties go to the lower index, whatever tile a row is in."""
    g = torch.Generator().manual_seed(11)
    codes = get_ops(OPS).project(torch.randn(400, 16, generator=g))
    z = get_ops(OPS).project(torch.randn(300, 16, generator=g))
    k = 8
    kth = torch.cdist(z[:1].double(), codes.double()).argsort(dim=1, stable=True)[0, k - 1]
    near = codes[kth].clone()
    near[0] = torch.nextafter(near[0], torch.tensor(2.0))  # one float32 step from the k-th code
    codes = torch.cat([codes, near[None], codes[kth][None]])  # a near twin and an exact twin, last
    # the oracle sums squared differences: cdist's float64 matrix product rounds the twins' distances apart on
    # some CPUs (an AVX-512 EPYC ranked the exact twin above the k-th code for one row)
    d2 = (z.double()[:, None] - codes.double()[None]).square().sum(-1)
    want = torch.sort(torch.argsort(d2, dim=1, stable=True)[:, :k], dim=1).values
    for tile_bytes in (1, 8 * 24 * 16 * 2, local_spread.TILE_BYTES):  # 1 row, 2 rows, all rows a tile
        monkeypatch.setattr(local_spread, "TILE_BYTES", tile_bytes)
        assert torch.equal(local_spread.nearest_codes(z, codes, k), want)
        assert torch.equal(local_spread.nearest_codes(z[:1], codes, k), want[:1])
    twin, near_twin = len(codes) - 1, len(codes) - 2
    assert kth in want[0] or near_twin in want[0]  # row 0's k-th place is contested
    assert twin not in want[0]  # the exact twin ties the k-th code and loses to its lower index


def test_each_block_of_rows_has_its_own_weights_and_the_tiles_fit_their_budget():
    w = local_spread.weights(
        local_spread.CHUNK + 1, 8, seed=0, device=torch.device("cpu"), dtype=torch.float32
    )
    assert not torch.equal(w[0], w[local_spread.CHUNK])
    rows = local_spread.tile_rows(60_000, 256, 64, 4)
    assert (
        rows * 4 * 60_000 <= local_spread.TILE_BYTES and rows * 8 * (256 + 8) * 64 <= local_spread.TILE_BYTES
    )
    assert local_spread.tile_rows(10, 2, 2, 4) == local_spread.TILE_BYTES // (8 * 10 * 2)


def test_the_offsets_match_the_reference_and_their_covariance_is_the_neighbours():
    g = torch.Generator().manual_seed(3)
    codes = get_ops(OPS).project(torch.randn(150, 6, generator=g))
    z = get_ops(OPS).project(torch.randn(40, 6, generator=g))
    got = local_spread.local_offsets(z, codes, 8, 0.7, seed=4)
    torch.testing.assert_close(got.double(), _reference_offsets(z, codes, 8, 0.7, seed=4), atol=1e-6, rtol=0)
    # one point many times: the offsets' covariance is spread^2 times its neighbours' (Bessel-corrected)
    many = z[:1].expand(20_000, 6).contiguous()
    off = local_spread.local_offsets(many, codes, 8, 0.7, seed=5).double()
    nb = codes[local_spread.nearest_codes(z[:1], codes, 8)[0]].double()
    want = 0.49 * torch.cov(nb.T)
    torch.testing.assert_close(torch.cov(off.T), want, atol=0.05 * float(want.diagonal().max()), rtol=0)
    torch.testing.assert_close(off.mean(0), torch.zeros(6, dtype=torch.float64), atol=0.01, rtol=0)


def test_fewer_codes_than_neighbours_use_them_all_and_one_code_moves_nothing():
    codes = get_ops(OPS).project(torch.randn(5, 4))
    z = get_ops(OPS).project(torch.randn(9, 4))
    got = local_spread.local_offsets(z, codes, 8, 0.5, seed=0)
    torch.testing.assert_close(got.double(), _reference_offsets(z, codes, 5, 0.5, seed=0), atol=1e-6, rtol=0)
    assert torch.equal(local_spread.local_offsets(z, codes[:1], 8, 0.5, seed=0), torch.zeros_like(z))
    assert local_spread.local_offsets(z[:0], codes, 8, 0.5, seed=0).shape == (0, 4)


def test_on_by_default_for_new_runs_off_for_configs_saved_before_it():
    cfg = TrainConfig()
    assert (cfg.sample_local_spread, cfg.sample_local_neighbours) == (0.5, 8)
    assert {"sample_local_spread", "sample_local_neighbours"} <= set(SAMPLING_FIELDS)
    model = _model()
    assert (model.local_spread, model.local_neighbours) == (0.5, 8)
    legacy = {k: v for k, v in model.config.items() if not k.startswith("sample_local")}
    assert GLANN(model.G, model.codes, model.T, ops=OPS, config=legacy).local_spread == 0.0
    assert saved_config(legacy).sample_local_spread == 0.0  # a resumed old run samples as it did
    assert saved_config(model.config).sample_local_spread == 0.5


@pytest.mark.parametrize("balanced", [True, False])
def test_samples_move_by_their_offsets_then_the_isotropic_spread(balanced):
    model = _model(sample_local_spread=0.0)
    plain = model.sample_inputs(60, seed=5, balanced=balanced)
    model.set_local_spread(0.8, neighbours=6)
    got = model.sample_inputs(60, seed=5, balanced=balanced)
    moved = plain.double() + _reference_offsets(plain, model.codes, 6, 0.8, seed=5)
    torch.testing.assert_close(got.double(), moved / moved.norm(dim=1, keepdim=True), atol=2e-6, rtol=0)
    assert not torch.allclose(got, plain, atol=1e-3)
    torch.testing.assert_close(model.sample(60, seed=5, balanced=balanced), model.decode(got))
    model.set_spread(0.3)  # the isotropic spread moves the locally spread codes, as set_spread alone would
    both = model.sample_inputs(60, seed=5, balanced=balanced)
    only_local = model._spread_out(got, seed=5)
    torch.testing.assert_close(both, only_local, rtol=0, atol=0)
    model.set_local_spread(0.0)
    model.set_spread(0.0)
    assert torch.equal(model.sample_inputs(60, seed=5, balanced=balanced), plain)


def test_the_first_samples_move_the_same_whatever_n():
    model = _model(latent=4, n_codes=30)
    n = local_spread.CHUNK + 25
    big = model.sample_inputs(n, seed=2)
    for k in (9, local_spread.CHUNK + 2):
        torch.testing.assert_close(model.sample_inputs(k, seed=2), big[:k], rtol=0, atol=0)


def test_the_plain_sampler_is_t_of_e_unless_a_local_spread_is_given():
    model = _model()
    apply_sampling(model, "plain")
    assert model.local_spread == 0.0
    apply_sampling(model, "plain", local_spread=0.25)
    assert model.local_spread == 0.25
    apply_sampling(model, "glann")
    assert model.local_spread == 0.25  # the glann sampler keeps the model's
    with pytest.raises(UsageError, match="--local-spread applies to T's samples"):
        apply_sampling(model, "gaussian", local_spread=0.5)


@pytest.mark.parametrize(
    ("spread", "neighbours", "message"),
    [
        (-0.1, None, r"local spread must be a number in \[0, 4\], got -0.1"),
        (4.5, None, r"local spread must be a number in \[0, 4\], got 4.5"),
        ("0.5", None, r"local spread must be a number in \[0, 4\], got '0.5'"),
        (0.5, 1, r"neighbours must be an integer >= 2, got 1"),
        (0.5, 257, r"neighbours must be an integer in \[2, 256\], got 257"),
        (0.5, 2.0, r"neighbours must be an integer >= 2, got 2.0"),
    ],
)
def test_set_local_spread_refuses_bad_values_and_changes_nothing(spread, neighbours, message):
    model = _model()
    with pytest.raises(UsageError, match=message):
        model.set_local_spread(spread, neighbours)
    assert (model.local_spread, model.local_neighbours) == (0.5, 8)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sample_local_spread", -1.0, r"sample_local_spread must be in \[0, 4\]"),
        ("sample_local_spread", float("nan"), r"sample_local_spread must be in \[0, 4\]"),
        ("sample_local_neighbours", 1, r"sample_local_neighbours must be in \[2, 256\]"),
    ],
)
def test_train_config_refuses_bad_local_spreads(field, value, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{field: value}).validate()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sample_local_spread", 1e9),
        ("sample_local_spread", "0.5"),
        ("sample_local_neighbours", 10**9),
        ("sample_local_neighbours", "8"),
        ("sample_local_neighbours", True),
    ],
)
def test_a_model_files_config_is_checked(field, value):
    config = {**TrainConfig().to_dict(), field: value}
    with pytest.raises(ValueError, match=f"config.{field} must be"):
        check_sampling_config(config)
    model = _model()
    model.config[field] = value  # set behind the checks: reading it refuses, sampling never starts
    with pytest.raises(UsageError, match=f"the model's {field} must be"):
        model.sample_inputs(4, seed=0)


@pytest.mark.cuda
def test_on_cuda_the_offsets_are_the_cpus():
    g = torch.Generator().manual_seed(7)
    codes = get_ops(OPS).project(torch.randn(3000, 32, generator=g))
    z = get_ops(OPS).project(torch.randn(500, 32, generator=g))
    cpu = local_spread.local_offsets(z, codes, 8, 0.5, seed=3)
    gpu = local_spread.local_offsets(z.cuda(), codes.cuda(), 8, 0.5, seed=3)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)


@pytest.mark.parametrize("field", ["sample_local_spread", "sample_spread", "sample_noise_scale"])
def test_an_integer_beyond_floats_is_refused_not_an_overflow(field):
    """JSON holds any integer: 10**400 made math.isfinite raise OverflowError (a traceback from glann sample)."""
    with pytest.raises(ValueError, match=f"config.{field} must be in"):
        check_sampling_config({**TrainConfig().to_dict(), field: 10**400})
    with pytest.raises(ConfigError, match=f"config field {field} must be in"):
        TrainConfig(**{field: 10**400}).validate()


# Mutation tests (2026-12-07): each test below fails on a one-line bug that no earlier test caught.
def test_the_offsets_of_every_tile_use_their_own_rows_weights(monkeypatch):
    """Tiles of 3 rows: each tile's offsets take the weights of its own rows (every default-sized test
    fits one tile, so weighting each tile with w[:rows] would pass them all)."""
    g = torch.Generator().manual_seed(6)
    codes = get_ops(OPS).project(torch.randn(50, 5, generator=g))
    z = get_ops(OPS).project(torch.randn(10, 5, generator=g))
    monkeypatch.setattr(local_spread, "TILE_BYTES", 8 * (6 + local_spread.EXTRA_CANDIDATES) * 5 * 3)
    assert local_spread.tile_rows(len(codes), 6, 5, 4) == 3
    got = local_spread.local_offsets(z, codes, 6, 0.6, seed=2)
    torch.testing.assert_close(got.double(), _reference_offsets(z, codes, 6, 0.6, seed=2), atol=1e-6, rtol=0)


def test_exact_ties_beyond_sixteen_candidates_go_to_the_lower_index():
    """Every code four times (k = 10, so 18 candidates are ranked and the 10th place splits a group of
    duplicates): the lower indices win. torch's CPU sort is stable only up to 16 entries per row, so an unstable
    ranking would pass the tie test, whose k = 8 ranks exactly 16 candidates."""
    g = torch.Generator().manual_seed(9)
    distinct = get_ops(OPS).project(torch.randn(25, 6, generator=g))
    codes = distinct.repeat(4, 1)  # code i sits at i, i + 25, i + 50, i + 75
    z = get_ops(OPS).project(torch.randn(200, 6, generator=g))
    d2 = (z.double()[:, None] - codes.double()[None]).square().sum(-1)
    want = torch.sort(torch.argsort(d2, dim=1, stable=True)[:, :10], dim=1).values
    assert torch.equal(local_spread.nearest_codes(z, codes, 10), want)


def test_the_search_tiles_by_the_samples_element_size(monkeypatch):
    """1,000 codes, so a row's float32 distances (4,000 bytes) set the tile: a budget of 3 rows gives 4 tiles
    for 12 samples (tiling as if each distance took one byte would put all 12 in one tile, 4x over budget, and
    would pass every test, whose results do not depend on the tiling)."""
    g = torch.Generator().manual_seed(1)
    codes, z = torch.randn(1000, 2, generator=g), torch.randn(12, 2, generator=g)
    monkeypatch.setattr(local_spread, "TILE_BYTES", 3 * 4 * 1000)
    tiles = []
    real = local_spread._tile_nearest

    def spy(q, *args):
        tiles.append(len(q))
        return real(q, *args)

    monkeypatch.setattr(local_spread, "_tile_nearest", spy)
    local_spread.nearest_codes(z, codes, 2)
    assert tiles == [3, 3, 3, 3]


def test_more_duplicates_than_candidates_go_to_the_lower_indices():
    """40 copies of one code (rows 100-139), more than the k + EXTRA_CANDIDATES the search ranks: the k
    nearest are the lowest-indexed copies, as the docstring says. torch's topk chose among scores tied across
    its last place in no set order (rows 112, 113, 117, ...)."""
    g = torch.Generator().manual_seed(0)
    c = torch.nn.functional.normalize(torch.randn(1, 6, generator=g), dim=1)
    other = torch.nn.functional.normalize(torch.randn(200, 6, generator=g), dim=1)
    codes = torch.cat([other[:100], c.repeat(40, 1), other[100:]])
    z = torch.nn.functional.normalize(c + 0.01 * torch.randn(50, 6, generator=g), dim=1)
    d2 = (z.double()[:, None] - codes.double()[None]).square().sum(-1)
    want = torch.sort(torch.argsort(d2, dim=1, stable=True)[:, :8], dim=1).values
    assert torch.equal(want[:, 0], torch.full((50,), 100))  # the reference's answer: copies 100-107
    assert torch.equal(local_spread.nearest_codes(z, codes, 8), want)

"""benchmarks/latent_gap.py: the latent point sets it decodes, its code-usage figures, and a smoke run."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

# benchmarks/ is not installed: make the checkout's root importable (appended: the installed glann_ext wins)
sys.path.append(str(Path(__file__).resolve().parents[1]))

from benchmarks import latent_gap
from glann_ext.data.mnist import find_images_file
from glann_ext.models import GLANN, MLP, DCGANGenerator


def _sphere(n: int, d: int, seed: int) -> torch.Tensor:
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return z / z.norm(dim=1, keepdim=True)


def test_nearest_other_excludes_itself_and_matches_brute_force():
    codes = _sphere(300, 8, 0)
    codes[7] = codes[3]  # a duplicate: its nearest other code is its twin, at distance 0
    idx, dist = latent_gap.nearest_other(codes, block=64)  # several blocks, so the diagonal offset is used
    d = torch.cdist(codes.double(), codes.double())
    d.fill_diagonal_(math.inf)
    assert torch.equal(idx, d.argmin(1))
    torch.testing.assert_close(dist, d.min(1).values)
    assert idx[7] == 3 and idx[3] == 7 and dist[7] == 0
    idx3, dist3 = latent_gap.nearest_other(codes, k=3, block=64)  # the 3rd nearest other code
    v, i = d.topk(3, dim=1, largest=False)
    assert torch.equal(idx3, i[:, 2])
    torch.testing.assert_close(dist3, v[:, 2])


def test_kl_from_uniform():
    assert latent_gap.kl_from_uniform(torch.tensor([5, 5, 5, 5])) == pytest.approx(0.0, abs=1e-12)
    # all mass on one of 4 bins: log 4; empty bins count as bins
    assert latent_gap.kl_from_uniform(torch.tensor([0, 9, 0, 0])) == pytest.approx(math.log(4))
    assert latent_gap.kl_from_uniform(torch.tensor([1, 3])) == pytest.approx(
        0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    )


def _model(n_codes=200, latent=8, noise=4) -> GLANN:
    torch.manual_seed(0)
    G = DCGANGenerator(latent_dim=latent, image_size=28, channels=1, width=4)
    T = MLP(noise, latent, hidden=16)
    return GLANN(G, _sphere(n_codes, latent, 1), T).eval()


def test_latent_points():
    model = _model()
    codes = model.codes.float()
    pts = latent_gap.latent_points(model, 150, seed=3)
    assert set(pts) == set(latent_gap.ROWS[:6])
    for name, z in pts.items():
        assert z.shape == (150, 8), name
        torch.testing.assert_close(z.norm(dim=1), torch.ones(150), msg=name)  # on the sphere
    assert torch.equal(pts[latent_gap.ROWS[0]], codes[:150])
    # halfway points are equidistant from a code and its nearest other code, and nearer than the two are apart
    other, dist = latent_gap.nearest_other(codes)
    half = pts[latent_gap.ROWS[1]]
    da, db = (half - codes[:150]).norm(dim=1), (half - codes[other[:150]]).norm(dim=1)
    torch.testing.assert_close(da, db, atol=1e-5, rtol=0)
    assert bool((da < dist[:150].float()).all())
    # every "nearest code" row is a code and the nearest one to that T sample
    samples = pts[latent_gap.ROWS[4]]
    torch.testing.assert_close(samples, model.map_noise(model.noise(150, seed=3)))
    nearest = torch.cdist(samples, codes).argmin(1)
    assert torch.equal(pts[latent_gap.ROWS[3]], codes[nearest])


def test_code_usage():
    model = _model()
    u = latent_gap.code_usage(model, 1000, seed=0)
    assert set(u) == set(latent_gap.USAGE)
    assert (
        0 < u["codes_hit"] <= 1
        and u["isolated_share"] >= 0
        and u["kl_over_codes"] >= 0
        and u["busiest_code"] >= 1000 / 200
    )
    assert 0 < u["sample_code_q10"] <= u["sample_code_median"] <= 2
    assert u["code_spacing"] == pytest.approx(float(latent_gap.nearest_other(model.codes)[1].median()))


@pytest.mark.skipif(
    find_images_file("fashion-mnist", "test") is None,
    reason="Fashion-MNIST not installed (dataset-fashion-mnist)",
)
def test_smoke_run(tmp_path):
    out = tmp_path / "gap.md"
    res = latent_gap.main(
        ["--smoke", "--seeds", "0", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    )
    text = out.read_text()
    for row in latent_gap.ROWS:
        assert f"| {row} |" in text
        assert all(math.isfinite(v) for v in res["per_seed"][0]["scores"][row].values())
    assert "T's samples: nearest to" in text

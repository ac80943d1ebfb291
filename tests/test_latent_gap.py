"""benchmarks/latent_gap.py: the latent point sets it decodes, its code-usage figures, and a smoke run."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks import latent_gap
from glann_ext.data.mnist import find_images_file
from glann_ext.metrics import nearest_other_code
from glann_ext.models import GLANN, MLP, DCGANGenerator


def _sphere(n: int, d: int, seed: int) -> torch.Tensor:
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return z / z.norm(dim=1, keepdim=True)


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
    other, dist = nearest_other_code(codes)
    half = pts[latent_gap.ROWS[1]]
    da, db = (half - codes[:150]).norm(dim=1), (half - codes[other[:150]]).norm(dim=1)
    torch.testing.assert_close(da, db, atol=1e-5, rtol=0)
    assert bool((da < dist[:150].float()).all())
    # every "nearest code" row is a code and the nearest one to that T sample
    samples = pts[latent_gap.ROWS[4]]
    torch.testing.assert_close(samples, model.map_noise(model.noise(150, seed=3)))
    nearest = torch.cdist(samples, codes).argmin(1)
    assert torch.equal(pts[latent_gap.ROWS[3]], codes[nearest])


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
    assert "T's samples (" in text and res["per_seed"][0]["usage"].n_codes == 256
    scores = res["per_seed"][0]["scores"]
    # the codes and T's samples' nearest codes are codes: distance 0; T's samples and the unseen images'
    # codes are not
    for row in (latent_gap.ROWS[0], latent_gap.ROWS[3]):
        assert scores[row]["code_distance"] == pytest.approx(0.0, abs=1e-3), row
    for row in (latent_gap.ROWS[4], latent_gap.ROWS[7]):
        assert scores[row]["code_distance"] > 0.01, row

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
    assert set(pts) == set(latent_gap.ROWS[:6]) | set(latent_gap.ROWS[9:])
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


def test_jittered_codes():
    codes = _sphere(500, 64, 2)
    project = _model().ops.project
    g = torch.Generator().manual_seed(4)
    # bandwidth 0: the drawn codes themselves, drawn uniformly
    z, source = latent_gap.jittered_codes(codes, 20_000, 0.0, g, project)
    torch.testing.assert_close(z, codes[source])
    counts = torch.bincount(source, minlength=500).float()
    assert counts.min() > 10 and counts.max() < 70  # 40 expected per code
    # codes spread over the sphere have a per-coordinate std of 1/sqrt(D), so noise of bandwidth h has a norm
    # of about h, nearly orthogonal to the code: the projected point is 2 sin(atan(h) / 2) from it
    for h in (0.25, 0.5, 1.0):
        z, source = latent_gap.jittered_codes(codes, 4000, h, g, project)
        torch.testing.assert_close(z.norm(dim=1), torch.ones(4000))
        expected = 2 * math.sin(math.atan(h) / 2)
        assert float((z - codes[source]).norm(dim=1).median()) == pytest.approx(expected, rel=0.05), h
    # noise scaled to the codes' spread, not fixed: codes squeezed into a cap get proportionally less
    cap = project((codes * 0.1 + torch.tensor([1.0] + [0.0] * 63)).contiguous())
    z, source = latent_gap.jittered_codes(cap, 4000, 0.5, g, project)
    spread = float(cap.double().var(0).sum().sqrt())
    ratio = float((z - cap[source]).norm(dim=1).median()) / spread
    assert ratio == pytest.approx(0.5, rel=0.1)


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

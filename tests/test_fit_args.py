"""What a Python caller hands the in-memory pipeline: fit, Fit and fit_imle refuse images, targets and configs
they cannot train on with one error naming the argument or field, instead of training a useless model (images
in [0, 255]) or failing deep inside torch; a config is checked when it is made."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from glann_testing import tiny_config
from torch import nn

from glann_ext.backend import as_ops, get_ops
from glann_ext.errors import ConfigError, GlannError, NonFiniteError, UsageError
from glann_ext.models import MLP
from glann_ext.train import Fit, TrainConfig, build_model, fit, fit_imle, load_model, train


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda x: (x * 255).to(torch.uint8), "floating point in [0, 1], got uint8"),
        (lambda x: x * 255, "(images in [0, 255]: divide by 255)"),
        (lambda x: x - 0.5, "in [0, 1] (within 0.05), got values in [-0.5"),
        (lambda x: x[:, 0], "(n, C, H, W)"),
        (lambda x: x[0], "(one channel? images.unsqueeze(1); one image? images.unsqueeze(0))"),
        (lambda x: x.permute(0, 2, 3, 1), "channels last?"),
        (lambda x: x[:, :, :, :27], "H == W"),
        (lambda x: x[:1], "at least 2 images"),
        (lambda x: x[:, :, :9, :9], "images of size 9x9"),
        (lambda x: x.to("meta"), "meta device"),
        (lambda x: x.numpy().astype(object), "numpy object array"),
    ],
)
def test_fit_refuses_images_it_cannot_train_on_naming_them(blobs, make, message):
    with pytest.raises(UsageError, match="images") as err:
        fit(make(blobs), tiny_config())
    assert message in str(err.value)


def test_fit_names_the_first_nonfinite_image(blobs):
    x = blobs.clone()
    x[5, 0, 3, 3] = float("nan")
    with pytest.raises(NonFiniteError, match=r"images hold NaN or Inf \(first in row 5\)") as err:
        Fit(x, tiny_config())
    assert err.value.row == 5


def test_fit_takes_float64_numpy_and_grad_images_as_the_float32_tensor(blobs):
    cfg = tiny_config(glo_epochs=1, imle_epochs=0)
    expected = fit(blobs, cfg, stage="glo")
    for images in (blobs.double().numpy(), blobs.clone().requires_grad_(True)):
        model = fit(images, cfg, stage="glo")
        assert torch.equal(model.codes, expected.codes)


def test_a_small_resize_overshoot_is_clipped_as_the_loaders_do(blobs):
    x = blobs.clone()
    x[0, 0, 0, 0] = 1.03
    fitted = Fit(x, tiny_config())
    assert float(fitted.images.max()) == 1.0 and float(x[0, 0, 0, 0]) == pytest.approx(1.03)


@pytest.mark.parametrize(("field", "value"), [("image_size", 32), ("channels", 3)])
def test_fit_refuses_a_config_whose_image_shape_the_images_do_not_have(blobs, field, value):
    with pytest.raises(ConfigError, match=f"config field {field} is {value} but the images have {field}"):
        fit(blobs, tiny_config(**{field: value}))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"imle_space": "Pixel"}, "imle_space must be one of"),
        ({"glo_epochs": -3}, "glo_epochs must be >= 0"),
        ({"glo_epochs": 2.5}, "glo_epochs must be an integer"),
        ({"threads": 0}, "threads must be >= 1"),
        ({"lr_g": -1.0}, "lr_g must be"),
        ({"batch_size": 0}, "batch_size must be >= 2"),
        ({"latent_dim": 0}, "latent_dim must be >= 1"),
    ],
)
def test_a_config_is_checked_when_made_and_again_when_fit_starts(blobs, change, match):
    with pytest.raises(ConfigError, match=match):
        dataclasses.replace(tiny_config(), **change)
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**change)
    cfg = tiny_config()
    for name, value in change.items():
        setattr(cfg, name, value)  # set after it was made: fit checks again
    with pytest.raises(ConfigError, match=match):
        fit(blobs, cfg)


def test_fit_refuses_a_config_that_is_not_a_train_config(blobs):
    with pytest.raises(ConfigError, match=r"cfg must be a TrainConfig.*got dict"):
        fit(blobs, {"glo_epochs": 1})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_fit_refuses_a_device_this_machine_lacks(blobs):
    """Named as the Python argument it is (it read "--device cuda: ...; use --device cpu", the command's flag)."""
    with pytest.raises(ConfigError, match=r"^device 'cuda:9'") as err:
        fit(blobs, tiny_config(), device="cuda:9")
    assert "--" not in str(err.value) and err.value.field == "device"


@pytest.mark.parametrize(
    ("targets", "error", "match"),
    [
        (torch.zeros(0, 2), UsageError, r"n >= 1 rows.*shape \(0, 2\)"),
        (torch.zeros(10), UsageError, r"float \(n, \.\.\.\).*shape \(10,\)"),
        (torch.zeros(4, 2, dtype=torch.int64), UsageError, "got int64"),
        (torch.tensor([[0.0, 1.0], [float("inf"), 0.0]]), NonFiniteError, r"first in row 1"),
        ([[0.0, 1.0]], UsageError, "got list"),
    ],
)
def test_fit_imle_refuses_targets_naming_them(targets, error, match):
    with pytest.raises(error, match="targets") as err:
        fit_imle(targets, MLP(2, 2), tiny_config(noise_dim=2, imle_epochs=1))
    assert err.match(match)


def test_fit_imle_takes_numpy_targets_and_refuses_a_generator_that_is_not_a_module():
    cfg = tiny_config(noise_dim=2, imle_epochs=1)
    points = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    trainer = fit_imle(points, MLP(2, 2), cfg)
    assert trainer.generate(torch.zeros(3, 2)).shape == (3, 2)
    with pytest.raises(UsageError, match=r"generator must be a torch\.nn\.Module, got function"):
        fit_imle(points, lambda e: e, cfg)


def test_build_model_refuses_an_image_shape_that_is_not_square():
    with pytest.raises(UsageError, match=r"image_shape must be .*H == W, got \(1, 28, 30\)"):
        build_model(tiny_config(), (1, 28, 30))
    assert issubclass(UsageError, GlannError)


@pytest.mark.parametrize(
    ("generator", "match"),
    [
        (MLP(5, 2), r"generator cannot map noise of shape \(2, 2\) \(cfg\.noise_dim\)"),
        (MLP(2, 3), r"generator maps noise \(2, 2\) to \(2, 3\), but targets are rows of shape \(2,\)"),
    ],
)
def test_fit_imle_refuses_a_generator_whose_output_is_not_a_target_row(generator, match):
    """Torch's matrix-shape error, or the search's "keys must have D=3 columns", named neither argument."""
    points = torch.randn(64, 2)
    generator.train()
    with pytest.raises(UsageError, match=match):
        fit_imle(points, generator, tiny_config(noise_dim=2, imle_epochs=1))
    assert generator.training  # the probe puts the mode back


def test_train_refuses_a_config_that_is_not_a_train_config(tmp_path):
    with pytest.raises(ConfigError, match=r"cfg must be a TrainConfig.*got dict"):
        train({"glo_epochs": 1}, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_load_model_refuses_a_device_it_cannot_load_onto_before_reading(tmp_path):
    """device="meta" failed inside balanced sampling's calibration, and "cuda" on a CPU-only torch with
    torch's AssertionError: the device is checked as training checks it (ConfigError)."""
    with pytest.raises(ConfigError, match=r"^device 'meta': glann_ext trains on cpu or cuda, not meta$"):
        load_model(tmp_path / "no-such-run", device="meta")


def test_build_model_refuses_an_image_shape_of_two_sizes():
    with pytest.raises(UsageError, match=r"image_shape must be \(C, H, W\).*got \(28, 28\)"):
        build_model(tiny_config(), (28, 28))


def test_fit_and_fit_imle_take_a_backend_name_as_the_models_do(blobs):
    """``ops="fused"`` failed inside the trainers ('str' object has no attribute 'project')."""
    cfg = tiny_config(glo_epochs=1, imle_epochs=1)
    images = blobs[:32]
    by_name = fit(images, cfg, ops="reference")
    assert by_name.ops.name == "reference"
    assert torch.equal(by_name.codes, fit(images, cfg, ops=get_ops("reference")).codes)
    assert Fit(images, cfg, ops="fused").ops.name == "fused"
    points = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    assert (
        fit_imle(points, MLP(2, 2), tiny_config(noise_dim=2, imle_epochs=1), ops="reference").ops.name
        == "reference"
    )
    for bad, shown in (("Fused", "'Fused'"), (5, "int")):
        with pytest.raises(UsageError, match=rf"^ops must be an Ops or a backend name .*, got {shown}"):
            fit(images, cfg, ops=bad)


def test_the_training_layer_checks_counts_rows_and_codes_by_name(blobs):
    """Found by rerunning the API audit on names it had not called: build_model took a dict config ('dict'
    object has no attribute 'ops') and n_codes of -1 or 2.5 (torch's errors); Fit took rows outside the
    dataset (a torch.cat error, or nothing); run_epochs(trainer, 2.5) ran 3 epochs; GLANN took NaN codes,
    which a model file may not hold."""
    from glann_ext.models import GLANN
    from glann_ext.train import run_epochs

    cfg = tiny_config(glo_epochs=1, imle_epochs=1)
    with pytest.raises(ConfigError, match=r"^cfg must be a TrainConfig"):
        build_model(cfg.to_dict(), (1, 28, 28))
    for bad, rule in ((-1, ">= 0, got -1"), (2.5, ">= 0, got 2.5")):
        with pytest.raises(UsageError, match=rf"^n_codes must be an integer {rule}"):
            build_model(cfg, (1, 28, 28), n_codes=bad)
    images = blobs[:32]
    with pytest.raises(
        UsageError, match=r"^rows \[start, start \+ n\) = \[100, 132\) lie outside a dataset of total = 10"
    ):
        Fit(images, cfg, start=100, total=10)
    with pytest.raises(UsageError, match=r"^start must be an integer >= 0, got -1"):
        Fit(images, cfg, start=-1)
    fit_ = Fit(images, cfg)
    with pytest.raises(UsageError, match=r"^epochs must be an integer >= 0, got 2.5"):
        run_epochs(fit_.glo, 2.5)
    model = build_model(cfg, (1, 28, 28), n_codes=4)
    codes = torch.nn.functional.normalize(torch.randn(4, cfg.latent_dim), dim=1)
    codes[2, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"^codes hold NaN or Inf \(first in row 2\)") as err:
        GLANN(model.G, codes, model.T)
    assert err.value.argument == "codes"


def test_the_stage_trainers_take_a_backend_name_too(blobs):
    """GLOTrainer and IMLETrainer are public: ops="fused" (or None) failed at their first step with an
    AttributeError (final audit)."""
    from glann_ext.train import GLOTrainer, IMLETrainer

    cfg = tiny_config(glo_epochs=1, imle_epochs=1)
    images = blobs[:32]
    for ops in ("fused", None):
        trainer = GLOTrainer(images, cfg, ops)
        assert trainer.ops.name == "fused" and math.isfinite(trainer.train_step(torch.arange(8)))
    codes = torch.nn.functional.normalize(torch.randn(32, cfg.latent_dim), dim=1)
    imle = IMLETrainer(codes, MLP(cfg.noise_dim, cfg.latent_dim), cfg, "reference")
    imle.begin_epoch()
    assert imle.ops.name == "reference" and math.isfinite(imle.train_step(torch.arange(8)))
    with pytest.raises(UsageError, match=r"^ops must be an Ops or a backend name"):
        GLOTrainer(images, cfg, 3)


# Mutation tests (2026-12-07): each test below fails on a one-line bug that no earlier test caught.
def test_as_ops_takes_its_default_for_none():
    assert as_ops(None).name == "fused"
    assert as_ops(None, "reference").name == "reference"
    assert as_ops(None, default="fused").name == "fused"


def test_without_an_ops_argument_the_configs_ops_is_used():
    cfg = tiny_config(ops="reference", glo_epochs=1, imle_epochs=1)
    assert build_model(cfg, (1, 28, 28), n_codes=4).ops.name == "reference"
    images = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert Fit(images, cfg).ops.name == "reference"


def test_fit_imle_refuses_a_generator_whose_rows_differ_before_their_last_dimension():
    points = torch.randn(64, 2)
    generator = nn.Sequential(MLP(2, 6), nn.Unflatten(1, (3, 2)))  # (B, 3, 2): last dimension 2, as targets'
    with pytest.raises(
        UsageError,
        match=r"generator maps noise \(2, 2\) to \(2, 3, 2\), but targets are rows of shape \(2,\)",
    ):
        fit_imle(points, generator, tiny_config(noise_dim=2, imle_epochs=1))

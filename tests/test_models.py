"""Generators, MLPs and the ops backend indirection (reference latent optimizer vs torch.optim)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from glann_testing import OPS, tiny_glann, vgg_state

from glann_ext.backend import get_ops
from glann_ext.errors import ConfigError
from glann_ext.models import MLP, DCGANGenerator, ReconstructionLoss, start_size
from glann_ext.models.generator import (
    MAX_GENERATOR_PARAMETERS,
    check_generator_size,
    generator_parameters,
)
from glann_ext.ops import reference
from glann_ext.optim import SphereSparseAdam
from glann_ext.train import TrainConfig


@pytest.mark.parametrize(("size", "channels"), [(28, 1), (32, 3), (64, 1), (128, 3)])
def test_generator_shapes_and_range(size, channels):
    g = DCGANGenerator(latent_dim=16, image_size=size, channels=channels, width=8).eval()
    out = g(torch.randn(3, 16))
    assert out.shape == (3, channels, size, size) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("bad", [7, 30, 100, 0])
def test_generator_rejects_unsupported_sizes(bad):
    with pytest.raises(ValueError, match="image_size"):
        start_size(bad)


@pytest.mark.parametrize(
    "args", [(64, 28, 1, 32, 0), (64, 32, 3, 64, 2), (16, 64, 1, 8, 1), (8, 128, 3, 16, 0)]
)
def test_generator_parameter_count_is_known_before_building(args):
    g = DCGANGenerator(*args)
    assert generator_parameters(*args) == sum(p.numel() for p in g.parameters())


def test_a_generator_too_large_to_allocate_is_refused_before_building():
    """--gen-width 4096 --image-size 256 passed every per-field bound and asked for 550 GB (a traceback from
    the allocator); now a ConfigError says how many parameters and which fields to lower."""
    with pytest.raises(
        ConfigError, match=r"generator would have [\d,]+ parameters \(gen_width 4096 at image_size 256"
    ):
        DCGANGenerator(latent_dim=64, image_size=256, channels=3, width=4096)
    args = (64, 28, 1, 32, 0)
    assert generator_parameters(*args) <= MAX_GENERATOR_PARAMETERS


def test_mlp_shapes():
    m = MLP(5, 3, hidden=16, layers=3).eval()
    assert m(torch.randn(4, 5)).shape == (4, 3)
    with pytest.raises(ValueError, match="layers"):
        MLP(5, 3, layers=0)


def test_reference_latent_adam_matches_sparse_adam_then_projection():
    """Our reference optimizer = torch.optim.SparseAdam on the touched rows + re-projection, duplicates summed."""
    table = reference.project_to_sphere_reference(torch.randn(10, 4))
    expected = torch.nn.Parameter(table.clone())
    oracle = torch.optim.SparseAdam([expected], lr=0.05, betas=(0.5, 0.999))
    ours = SphereSparseAdam(table, lr=0.05, betas=(0.5, 0.999), backend="reference")
    for step in range(3):
        idx = torch.tensor([1, 3, 3, 7]) + step
        grad = torch.randn(4, 4)
        dense = torch.zeros(10, 4).index_add_(0, idx, grad)
        rows = torch.unique(idx)
        expected.grad = torch.sparse_coo_tensor(rows[None], dense[rows], (10, 4), check_invariants=True)
        oracle.step()
        with torch.no_grad():
            expected[rows] = reference.project_to_sphere_reference(expected[rows])
        ours.step(idx, grad)
        torch.testing.assert_close(table, expected.detach(), rtol=0, atol=1e-6)
    assert torch.allclose(table.norm(dim=1), torch.ones(10))


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_both_backends_refuse_a_grad_of_another_dtype_and_step_nothing(backend):
    """A float64 grad for a float32 table (or the reverse) is refused by both backends with the same error,
    the table and moments untouched: the reference backend used to round it to the table's dtype, so a
    script written against it failed on the fused default (the docs promise one set of checks)."""
    g = torch.Generator().manual_seed(1)
    for table_dtype, grad_dtype in ((torch.float32, torch.float64), (torch.float64, torch.float32)):
        table = reference.project_to_sphere_reference(torch.randn(20, 6, generator=g, dtype=table_dtype))
        before = table.clone()
        opt = SphereSparseAdam(table, lr=0.05, backend=backend)
        grad = torch.randn(8, 6, generator=g, dtype=grad_dtype)
        with pytest.raises(TypeError, match=r"grad must have the same dtype as table"):
            opt.step(torch.arange(8), grad)
        assert torch.equal(table, before) and not opt.exp_avg.any() and opt.step_count == 0


def test_latent_optimizer_state_round_trip():
    ops = get_ops(OPS)
    t1 = reference.project_to_sphere_reference(torch.randn(6, 3))
    t2 = t1.clone()
    o1 = ops.latent_optimizer(t1, "adam", lr=0.1)
    o1.step(torch.tensor([0, 2]), torch.randn(2, 3))
    o2 = ops.latent_optimizer(t2, "adam", lr=0.1)
    t2.copy_(t1)
    o2.load_state_dict(copy.deepcopy(o1.state_dict()))  # as a checkpoint would hand it over
    g = torch.randn(2, 3)
    o1.step(torch.tensor([2, 4]), g)
    o2.step(torch.tensor([2, 4]), g)
    assert torch.equal(t1, t2)


def test_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match="ops backend"):
        get_ops("faster")
    with pytest.raises(ValueError, match="latent optimizer"):
        get_ops(OPS).latent_optimizer(torch.ones(2, 2), "lbfgs")


@pytest.mark.parametrize("name", ["fused", "reference"])
def test_backend_optimizers_and_search_honour_their_arguments(name):
    """The latent optimizers an Ops builds run on its own backend with the hyperparameters asked for, and its
    nn_argmin returns the exact distances when asked."""
    ops = get_ops(name)
    table = reference.project_to_sphere_reference(torch.randn(6, 3))
    adam = ops.latent_optimizer(table, "adam", lr=0.05, betas=(0.5, 0.9), eps=1e-6)
    assert isinstance(adam, SphereSparseAdam) and adam.backend == name
    assert (adam.lr, adam.betas, adam.eps) == (0.05, (0.5, 0.9), 1e-6)
    sgd = ops.latent_optimizer(table, "sgd", lr=0.2)
    assert (sgd.kind, sgd.backend, sgd.lr) == ("sgd", name, 0.2)
    q, k = torch.randn(5, 3, dtype=torch.float64), torch.randn(9, 3, dtype=torch.float64)
    d = ((q[:, None] - k[None]) ** 2).sum(-1)
    idx, dist = ops.nn_argmin(q, k, return_distances=True)
    assert torch.equal(idx, d.argmin(1))
    torch.testing.assert_close(dist, d.min(1).values)


def test_reference_nn_argmin_accepts_chunks():
    q, k = torch.randn(7, 3), torch.randn(20, 3)
    ops = get_ops("reference")
    assert torch.equal(ops.nn_argmin(q, k.split(6)), reference.nn_argmin_exact(q, k))


def test_reference_ops_are_the_plain_pytorch_references():
    """get_ops("reference") is the oracle the kernels are tested against: every op it hands out is the one of
    glann_ext.ops.reference (found by mutation testing: the fused loss or projection in the reference Ops
    passed every test, their values being equal)."""
    ops = get_ops("reference")
    assert ops.lap_loss is reference.laplacian_pyramid_loss_reference
    assert ops.project is reference.project_to_sphere_reference


@pytest.mark.parametrize("name", ["fused", "reference"])
def test_backend_search_over_several_processes_passes_the_group_and_its_scores(monkeypatch, name):
    """With a distributed World the search is the collective one over the world's group, with this backend's
    scores and the distances when asked; a single-process World searches locally. Found by mutation testing:
    searching over the default group instead of the world's passed every test (their worlds used it)."""
    import glann_ext.distributed
    from glann_ext.train.world import World

    calls = []

    def collective(queries, keys, group, *, return_distances=False, scores=None):
        calls.append((group, return_distances, scores))
        return "collective"

    monkeypatch.setattr(glann_ext.distributed, "nn_argmin", collective)
    ops, group = get_ops(name), object()
    q, k = torch.randn(4, 3), torch.randn(7, 3)
    assert (
        ops.nn_argmin(q, k, return_distances=True, world=World(rank=1, size=2, group=group)) == "collective"
    )
    assert calls == [(group, True, None if name == "fused" else reference.nn_argmin_scores_reference)]
    assert torch.equal(ops.nn_argmin(q, k, world=World()), reference.nn_argmin_exact(q, k))
    assert len(calls) == 1


def test_perceptual_loss_uses_only_local_weights(tmp_path):
    from glann_ext.models import ReconstructionLoss
    from glann_ext.models.perceptual import VGGPerceptualLoss

    with pytest.raises(FileNotFoundError, match="VGG16 weights file not found"):
        VGGPerceptualLoss(tmp_path / "vgg16.pth")
    for special, kind in ((Path("/dev/zero"), "special file"), (tmp_path, "folder")):  # said as they are
        with pytest.raises(ConfigError, match=f"a {kind}.*, not a VGG16 weights file"):
            VGGPerceptualLoss(special)
    # A torchvision-layout state_dict with random weights stands in for the user's VGG16 file.
    state = vgg_state()
    state["classifier.0.weight"] = torch.zeros(1)  # ignored
    torch.save(state, tmp_path / "vgg16.pth")
    loss_fn = ReconstructionLoss(
        get_ops(OPS), l2_weight=0.5, vgg_weights=str(tmp_path / "vgg16.pth"), vgg_weight=0.1
    )
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    loss = loss_fn(x, torch.rand(2, 1, 28, 28))
    loss.backward()
    assert loss.ndim == 0 and x.grad is not None and torch.isfinite(x.grad).all()
    assert loss_fn(x, x.detach()).item() == pytest.approx(0.0, abs=1e-6)
    # a rank's part of a global batch (normalizer = the global batch): with every term on, the parts of a
    # batch of 5 split 2 + 3 add up to the whole batch's loss
    x, t = torch.rand(5, 1, 28, 28), torch.rand(5, 1, 28, 28)
    parts = loss_fn(x[:2], t[:2], normalizer=5) + loss_fn(x[2:], t[2:], normalizer=5)
    assert parts.item() == pytest.approx(loss_fn(x, t).item(), rel=1e-5)
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="not a VGG16 state_dict"):
        VGGPerceptualLoss(tmp_path / "partial.pth")


@pytest.mark.parametrize("ops_name", ["fused", "reference"])
def test_reconstruction_loss_level_weights(ops_name):
    """lap_weights="flat" weighs every pyramid level 1 (the reference's sum with ones), "paper" 4^j; the
    normalised per-rank form (``normalizer``) matches the plain mean for a whole batch."""
    from glann_ext.models import ReconstructionLoss

    ops = get_ops(ops_name)
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    t = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    levels = reference.default_levels(28, 28)
    for weights, expected in (("paper", reference.default_level_weights(levels)), ("flat", [1.0] * levels)):
        loss_fn = ReconstructionLoss(ops, lap_weights=weights)
        want = reference.laplacian_pyramid_loss_reference(x, t, levels=levels, level_weights=expected)
        torch.testing.assert_close(loss_fn(x, t), want.float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loss_fn(x, t, normalizer=3), want.float(), rtol=1e-5, atol=1e-6)
    # A constant offset lives in the coarsest level only (every finer L^j of a constant is 0): the two
    # weightings differ by exactly that level's weight 4^(J-1).
    flat, paper = ReconstructionLoss(ops, lap_weights="flat"), ReconstructionLoss(ops)
    shifted = t + 0.25
    assert flat(shifted, t).item() == pytest.approx(paper(shifted, t).item() / 4.0 ** (levels - 1), rel=1e-5)
    with pytest.raises(ValueError, match="lap_weights must be 'paper' or 'flat'"):
        ReconstructionLoss(ops, lap_weights="coarse")
    # non-square images: the default level count of the smaller side (32 x 8: 4 levels, not 32 x 32's 5)
    x, t = torch.rand(2, 1, 32, 8, dtype=torch.float64), torch.rand(2, 1, 32, 8, dtype=torch.float64)
    want = reference.laplacian_pyramid_loss_reference(x, t, levels=4, level_weights=[1.0] * 4)
    torch.testing.assert_close(flat(x, t), want.float(), rtol=1e-5, atol=1e-6)


def _np_slerp(a, b, t):
    """Independent reference: the textbook formula in numpy extended precision."""
    import numpy as np

    a = np.asarray(a, np.longdouble)
    b = np.asarray(b, np.longdouble)
    a, b = a / np.sqrt((a * a).sum()), b / np.sqrt((b * b).sum())
    omega = np.arccos(np.clip((a * b).sum(), -1, 1))
    t = np.asarray(t, np.longdouble)[:, None]
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


@pytest.mark.parametrize("eps", [1e-3, 1e-5])
def test_slerp_stays_on_the_sphere_for_near_antipodal_endpoints(eps):
    from torch.nn import functional as F

    from glann_ext.models.generative import slerp

    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(8, generator=g), dim=0)
    b = F.normalize(-a + eps * torch.randn(8, generator=g), dim=0)
    t = torch.linspace(0, 1, 5)
    out = slerp(a, b, t)
    # the float32 clamp at 1 - 1e-7 bent the path: norms 0.994, 0.989, ... for eps 1e-3
    assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-6)
    ref = torch.from_numpy(_np_slerp(a.numpy(), b.numpy(), t.numpy()).astype("float64")).float()
    assert torch.allclose(out, ref, atol=1e-5)


def test_slerp_of_antipodal_endpoints_takes_a_defined_half_circle():
    from torch.nn import functional as F

    from glann_ext.models.generative import slerp

    a = F.normalize(torch.randn(8, generator=torch.Generator().manual_seed(1)), dim=0)
    t = torch.linspace(0, 1, 5)
    out = slerp(a, -a, t)  # was [1.0, 0.707, 0.0, 0.707, 1.0] in norm: G decoded the zero vector
    assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-6)
    assert torch.allclose(out[0], a, atol=1e-6) and torch.allclose(out[-1], -a, atol=1e-6)
    angles = torch.arccos((out[:-1] * out[1:]).sum(1).double().clamp(-1, 1))
    assert torch.allclose(angles, torch.full((4,), torch.pi / 4, dtype=torch.float64), atol=1e-3)
    assert torch.equal(slerp(a, -a, t), out)  # deterministic
    # a code on an axis: the half turn goes through another axis (the one least aligned with it), not
    # through a itself made orthogonal to a (the zero vector: NaN)
    e0 = torch.zeros(8)
    e0[0] = 1
    axis = slerp(e0, -e0, t)
    assert torch.isfinite(axis).all() and torch.allclose(axis.norm(dim=1), torch.ones(5), atol=1e-6)
    assert abs(float(axis[2, 0])) < 1e-6  # the midpoint is orthogonal to the endpoints


def test_decode_and_map_noise_name_a_wrong_dtype_or_shape():
    from glann_ext.errors import UsageError

    m = tiny_glann()
    # these failed inside torch: "expected m1 and m2 to have the same dtype", "mat1 and mat2 shapes ..."
    with pytest.raises(UsageError, match=r"z must be a float32 \(n, 8\) tensor, got float64 \(2, 8\)"):
        m.decode(torch.zeros(2, 8, dtype=torch.float64))
    with pytest.raises(UsageError, match=r"z must be a float32 \(n, 8\) tensor, got float32 \(2, 5\)"):
        m.decode(torch.zeros(2, 5))
    with pytest.raises(UsageError, match=r"e must be a float32 \(n, 4\) tensor, got float64 \(3, 4\)"):
        m.map_noise(torch.zeros(3, 4, dtype=torch.float64))
    assert m.decode(torch.zeros(2, 8)).shape == (2, 1, 28, 28)


def test_invert_of_no_images_is_empty_and_float64_codes_are_usable():
    m = tiny_glann()
    codes, recs = m.invert(torch.zeros(0, 1, 28, 28), steps=1, restarts=1)
    assert codes.shape == (0, 8) and recs.shape == (0, 1, 28, 28)
    from glann_ext.models import GLANN

    m64 = GLANN(m.G, m.codes.double(), m.T, config={"balance_draws": 1.0})  # sample() raised TypeError
    assert torch.equal(m64.sample(2, 0), GLANN(m.G, m.codes, m.T, config={"balance_draws": 1.0}).sample(2, 0))


def test_sampling_and_interpolation_arguments_are_checked_by_name():
    from glann_ext.errors import UsageError

    m = tiny_glann()
    cases = [
        (lambda: m.sample(2.5), r"n must be an integer >= 0, got 2.5"),  # TypeError: slice indices
        (lambda: m.sample(True), r"n must be an integer >= 0, got True"),  # gave 1 sample
        (lambda: m.interpolate(torch.ones(5), torch.ones(5)), r"a must be a noise vector of shape \(4,\)"),
        (lambda: m.interpolate(0, 1), r"a must be a noise vector of shape \(4,\), got 0"),
        (lambda: m.interpolate(torch.tensor(2.0), 3, space="latent"), r"a must be a training index"),
        (lambda: m.interpolate(True, 0, space="latent"), r"a must be a training index .* got True"),
        (lambda: m.interpolate(10**6, 0, space="latent"), r"a must be a training index in \[0, 20\)"),
        (lambda: m.interpolate(-1, 0, space="latent"), r"a must be a training index in \[0, 20\)"),
        (
            lambda: m.interpolate(0, 1, steps=1, space="latent"),
            r"steps must be an integer >= 2, got 1",
        ),  # gave 1 image
        (lambda: m.invert(m.decode(m.codes[:1]), restarts=0), r"restarts must be an integer >= 1, got 0"),
        (lambda: m.reconstruct([100]), r"indices must lie in \[0, 20\), got values in \[100, 100\]"),
        (lambda: m.reconstruct([-1]), r"indices must lie in \[0, 20\)"),
        (lambda: m.reconstruct([20]), r"got values in \[20, 20\]"),  # one past the end (mutation testing)
        (
            lambda: m.sample_gaussian(2, fit=(torch.zeros(3), torch.eye(3))),
            r"fit must be \(mean \(8,\), cov \(8, 8\)\) like the codes, got \(3,\) and \(3, 3\)",
        ),
    ]
    for call, needle in cases:
        with pytest.raises(UsageError, match=needle):
            call()
    assert m.interpolate(0, 1, steps=3, space="latent").shape == (3, 1, 28, 28)
    assert m.interpolate([0.0] * 4, torch.ones(4), steps=3).shape == (3, 1, 28, 28)
    assert torch.equal(m.reconstruct([3]), m.decode(m.codes[3:4]))


def test_gaussian_codes_draw_the_fitted_covariance():
    # a narrow Gaussian around a point of the sphere: projecting it back changes its draws by O(scale), so
    # their covariance must be the fitted one (transposing the Cholesky factor or a large ridge would not be)
    m = tiny_glann()
    d = m.codes.shape[1]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(d - 1, d - 1, generator=g, dtype=torch.float64)
    cov = torch.zeros(d, d, dtype=torch.float64)
    cov[1:, 1:] = 1e-3 * (a @ a.T / d + 0.1 * torch.eye(d - 1, dtype=torch.float64))  # tangent to e_0
    mean = torch.zeros(d, dtype=torch.float64)
    mean[0] = 1.0
    z = m.gaussian_codes(20_000, seed=1, fit=(mean, cov)).double()
    assert torch.allclose(z.norm(dim=1), torch.ones(len(z), dtype=torch.float64), atol=1e-5)
    drawn = torch.cov(z[:, 1:].T)
    assert float((drawn - cov[1:, 1:]).norm() / cov[1:, 1:].norm()) < 0.05
    assert float(z[:, 1:].mean(0).abs().max()) < 3e-3  # the fitted mean, e_0, up to sampling noise


def test_invert_restores_requires_grad_and_fit_gaussian_refuses_no_rows():
    from glann_ext.models.generative import fit_gaussian

    m = tiny_glann()
    m.G.requires_grad_(False)  # frozen by the caller: invert made it trainable again on exit
    m.invert(m.decode(m.codes[:2]), steps=1, restarts=1)
    assert not any(p.requires_grad for p in m.G.parameters())
    m.G.requires_grad_(True)
    m.invert(m.decode(m.codes[:2]), steps=1, restarts=1)
    assert all(p.requires_grad for p in m.G.parameters())
    with pytest.raises(
        ValueError, match=r"codes must hold at least one row to fit a Gaussian, got shape \(0, 8\)"
    ):
        fit_gaussian(m.codes[:0])  # gave an all-NaN mean and covariance
    mean, cov = fit_gaussian(m.codes)
    assert torch.allclose(mean, m.codes.double().mean(0)) and torch.allclose(
        cov, torch.cov(m.codes.double().T)
    )


def _layers(module: torch.nn.Module) -> list[tuple]:
    """(layer type, weight shape or None, has a bias) of every leaf layer, in order."""
    return [
        (type(m).__name__, None if getattr(m, "weight", None) is None else tuple(m.weight.shape),
         getattr(m, "bias", None) is not None)
        for m in module.modules() if not list(m.children())
    ]  # fmt: skip


def test_generator_and_mlp_layers_follow_the_documented_layout():
    """G at 28 = 7 * 2^2 with width 8 and depth 1: a bias-free Linear to (16, 7, 7) (width * 2^(k-1)), a 3x3
    refinement at every hidden resolution, bias-free transposed convs halving the channels, and a biased last
    one into a sigmoid; T: bias-free Linear + BatchNorm + ReLU blocks (biased without BatchNorm)."""
    g = DCGANGenerator(latent_dim=16, image_size=28, channels=1, width=8, depth=1)
    relu = ("ReLU", None, False)
    assert _layers(g) == [
        ("Linear", (784, 16), False), ("BatchNorm1d", (784,), True), relu,
        ("Conv2d", (16, 16, 3, 3), False), ("BatchNorm2d", (16,), True), relu,
        ("ConvTranspose2d", (16, 8, 4, 4), False), ("BatchNorm2d", (8,), True), relu,
        ("Conv2d", (8, 8, 3, 3), False), ("BatchNorm2d", (8,), True), relu,
        ("ConvTranspose2d", (8, 1, 4, 4), True), ("Sigmoid", None, False),
    ]  # fmt: skip
    assert g.hparams() == {"latent_dim": 16, "image_size": 28, "channels": 1, "width": 8, "depth": 1}
    assert _layers(DCGANGenerator(**g.hparams())) == _layers(g)
    with pytest.raises(ValueError, match="depth must be an integer >= 0, got -1"):
        DCGANGenerator(latent_dim=16, width=8, depth=-1)
    assert _layers(MLP(5, 3, hidden=16, layers=2)) == [
        ("Linear", (16, 5), False), ("BatchNorm1d", (16,), True), relu,
        ("Linear", (16, 16), False), ("BatchNorm1d", (16,), True), relu, ("Linear", (3, 16), True),
    ]  # fmt: skip
    assert _layers(MLP(5, 3, hidden=16, layers=2, batch_norm=False)) == [
        ("Linear", (16, 5), True), relu, ("Linear", (16, 16), True), relu, ("Linear", (3, 16), True),
    ]  # fmt: skip


def test_generator_starts_from_the_dcgan_initialisation():
    """N(0, 0.02) conv and linear weights with zero biases, N(1, 0.02) BatchNorm scales with zero shifts."""
    g = DCGANGenerator(latent_dim=64, image_size=28, width=64)
    for name, p in g.named_parameters():
        p, layer = p.detach(), g.get_submodule(name.rsplit(".", 1)[0])
        batch_norm = isinstance(layer, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))
        if name.endswith("bias"):
            assert not p.any(), name
            continue
        n = p.numel()  # tolerances: 5 standard errors of the estimates at this many values
        assert float(p.mean()) == pytest.approx(1.0 if batch_norm else 0.0, abs=5 * 0.02 / n**0.5), name
        assert float(p.std()) == pytest.approx(0.02, rel=5 / (2 * n) ** 0.5), name


def test_mse_loss_parts_of_a_global_batch_add_up_to_its_mean():
    from glann_ext.models import mse_loss

    x, t = torch.rand(5, 2, 3, 3), torch.rand(5, 2, 3, 3)
    whole = torch.nn.functional.mse_loss(x, t)
    assert mse_loss(x, t) == whole
    parts = mse_loss(x[:2], t[:2], normalizer=5) + mse_loss(x[2:], t[2:], normalizer=5)
    torch.testing.assert_close(parts, whole)
    torch.testing.assert_close(mse_loss(x, t, normalizer=5), whole)
    empty = x[:0].clone().requires_grad_(True)
    loss = mse_loss(empty, t[:0], normalizer=5)
    loss.backward()  # a rank with no rows of the batch still has a graph to the generator
    assert loss.item() == 0.0 and empty.grad.shape == (0, 2, 3, 3)


def _vgg_distance(state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Independent reference: ImageNet-normalised RGB through VGG16's first three blocks, the mean L1 distance
    of relu1_2, relu2_2 and relu3_3 (the last ReLU of each block), summed."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    taps = []
    for img in (x, y):
        h = (img.expand(-1, 3, -1, -1) - mean) / std
        feats = []
        for block in ((0, 2), (5, 7), (10, 12, 14)):
            for i in block:
                h = torch.relu(
                    torch.nn.functional.conv2d(
                        h, state[f"features.{i}.weight"], state[f"features.{i}.bias"], padding=1
                    )
                )
            feats.append(h)
            h = torch.nn.functional.max_pool2d(h, 2)
        taps.append(feats)
    return sum((a - b).abs().mean() for a, b in zip(*taps))


def test_perceptual_loss_is_the_mean_l1_of_vgg16_relu_features_and_frozen(tmp_path):
    from glann_ext.models.perceptual import VGGPerceptualLoss

    state = vgg_state()
    torch.save(state, tmp_path / "vgg16.pth")
    vgg = VGGPerceptualLoss(tmp_path / "vgg16.pth")
    assert not any(p.requires_grad for p in vgg.parameters())  # the loss trains G, never the network
    gen = torch.Generator().manual_seed(1)
    for channels in (1, 3):
        x, y = (torch.rand(2, channels, 16, 16, generator=gen) for _ in range(2))
        torch.testing.assert_close(vgg(x, y), _vgg_distance(state, x, y), rtol=1e-4, atol=1e-6)


def test_sampling_settings_accept_their_documented_bounds():
    """The noise scale's (0, 10] and the spread's [0, 4] include their upper ends (found by mutation testing:
    a strict ``<`` refused the documented maxima)."""
    from glann_ext.errors import UsageError
    from glann_ext.models.generative import MAX_NOISE_SCALE, MAX_SPREAD

    m = tiny_glann()
    m.set_noise_scale(MAX_NOISE_SCALE)
    m.set_spread(MAX_SPREAD)
    assert (m.noise_scale, m.spread) == (10.0, 4.0)
    m.set_spread(0)
    assert m.spread == 0.0
    for setter, bad in ((m.set_noise_scale, 10.000001), (m.set_noise_scale, 0), (m.set_spread, 4.000001)):
        with pytest.raises(UsageError, match="must be a number in"):
            setter(bad)


def test_reconstruction_loss_of_a_rank_without_rows_is_zero_and_keeps_the_graph():
    """A rank that owns none of a global batch's rows (``normalizer`` set, no rows): loss 0 that still
    backpropagates into the inputs, so DDP's gradient hooks fire on every rank."""
    from glann_ext.models import ReconstructionLoss

    x = torch.rand(0, 1, 28, 28, requires_grad=True)
    loss = ReconstructionLoss(get_ops(OPS), l2_weight=0.5)(x, x.detach(), normalizer=4)
    loss.backward()
    assert loss.item() == 0.0 and loss.grad_fn is not None and x.grad.shape == (0, 1, 28, 28)


def test_an_output_shift_that_would_broadcast_is_refused():
    """A shift of shape (1,) would broadcast into every output coordinate: refused with both shapes named."""
    T = MLP(3, 4, 8, 2, output_affine=True)
    with pytest.raises(ValueError, match=r"matrix \(4, 4\) and shift \(4,\), got \(4, 4\) and \(1,\)"):
        T.set_output_affine(torch.eye(4), torch.ones(1))
    assert not T.out_shift.any()  # left as it was


# Found missing by a mutation test of sampling, eval and the config (2026-12-07).


def test_the_noise_scale_multiplies_the_noise_that_T_maps():
    m = tiny_glann()
    e = m.noise(6, seed=3)
    m.set_noise_scale(2.0)
    z = m.sample_inputs(6, seed=3, balanced=False)
    assert torch.allclose(z, m.map_noise(2.0 * e), atol=1e-6)
    assert not torch.allclose(z, m.map_noise(e), atol=1e-3)


def test_a_new_noise_scale_recalibrates_the_balanced_sampler():
    m = tiny_glann(balance_draws=10.0)
    m.calibrate_sampler()  # calibrated at scale 1
    m.set_noise_scale(3.0)
    fresh = tiny_glann(balance_draws=10.0, sample_noise_scale=3.0)
    assert torch.equal(m.calibrate_sampler(), fresh.calibrate_sampler())
    assert torch.equal(m.sample_inputs(8, seed=1), fresh.sample_inputs(8, seed=1))


def test_balanced_false_samples_T_of_e_even_when_the_model_balances():
    m = tiny_glann(balance_draws=10.0)
    assert m.balanced
    plain = m.map_noise(m.noise(16, seed=2))
    assert torch.equal(m.sample_inputs(16, seed=2, balanced=False), plain)
    assert not torch.equal(m.sample_inputs(16, seed=2, balanced=True), plain)


def test_decode_and_map_noise_run_the_networks_in_eval_mode_whatever_mode_they_are_in():
    m = tiny_glann()
    ref = copy.deepcopy(m).eval()
    e = m.noise(5, seed=0)
    z = ref.map_noise(e)
    m.train()
    assert torch.equal(m.map_noise(e), z)
    assert not m.T.training
    m.train()
    assert torch.equal(m.decode(z), ref.decode(z))
    assert not m.G.training
    m.train()
    assert torch.equal(m.sample(4, seed=1), ref.sample(4, seed=1))
    assert not m.G.training and not m.T.training


def test_noise_interpolation_ends_at_both_endpoints():
    m = tiny_glann()
    a, b = m.noise(2, seed=5)
    images = m.interpolate(a, b, steps=4)
    ends = m.decode(m.map_noise(torch.stack([a, b])))
    assert torch.allclose(images[0], ends[0], atol=1e-5)
    assert torch.allclose(images[-1], ends[1], atol=1e-5)


def test_latent_interpolation_ends_at_both_training_codes():
    m = tiny_glann()
    images = m.interpolate(3, 7, steps=4, space="latent")
    assert torch.allclose(images[0], m.reconstruct(3)[0], atol=1e-5)
    assert torch.allclose(images[-1], m.reconstruct(7)[0], atol=1e-5)


def _inversion_loss(m, z, target):
    from glann_ext.models.losses import ReconstructionLoss

    loss = ReconstructionLoss(m.ops, 0.0, lap_weights="paper")
    with torch.no_grad():
        return loss.lap(m.G(z).float(), target, "none")


def test_invert_keeps_the_best_restart_of_each_image():
    m = tiny_glann()
    with torch.random.fork_rng():
        torch.manual_seed(1)
        target = m.decode(torch.nn.functional.normalize(torch.randn(6, 8), dim=1))
    one, _ = m.invert(target, steps=3, restarts=1, seed=0)
    three, _ = m.invert(target, steps=3, restarts=3, seed=0)  # its first restart is `one`'s
    l1, l3 = _inversion_loss(m, one, target), _inversion_loss(m, three, target)
    assert bool((l3 <= l1 + 1e-6).all())


def test_inverted_codes_lie_on_the_unit_sphere():
    m = tiny_glann()
    with torch.random.fork_rng():
        torch.manual_seed(1)
        target = m.decode(torch.nn.functional.normalize(torch.randn(4, 8), dim=1))
    z, _ = m.invert(target, steps=5, restarts=2, lr=0.2, seed=0)
    assert torch.allclose(z.norm(dim=1), torch.ones(len(z)), atol=1e-5)


# Mutation tests (2026-12-07): each test below fails on a one-line bug that no earlier test caught.
def test_generator_reads_the_linear_layers_output_as_channels_then_rows_then_columns():
    """The docstring's "Linear to a (width * 2**(k-1), s0, s0) map": fc's output j is channel j // s0**2,
    row (j // s0) % s0, column j % s0 (reading it as (s0, s0, channels) would give images of the same shape and
    range from another network). Checked against the layers run by hand."""
    g = DCGANGenerator(latent_dim=6, image_size=28, channels=1, width=4).eval()
    z = torch.randn(3, 6)
    with torch.no_grad():
        h = g.fc(z)
        assert h.shape == (3, 8 * 7 * 7)
        by_hand = g.body(h.reshape(3, 8, 7, 7))
        torch.testing.assert_close(g(z), by_hand, rtol=0, atol=0)
        # one unit of the first (8, 7, 7) map changed changes the image around that unit's place only
        bumped = h.reshape(3, 8, 7, 7).clone()
        bumped[:, 2, 0, 0] += 10.0
        diff = (g.body(bumped) - by_hand).abs().sum((0, 1))
    assert diff[:8, :8].sum() > 0 and diff[14:, 14:].sum() == 0


def test_a_generator_one_channel_over_the_parameter_cap_is_refused_and_one_under_it_is_not():
    """The cap is exact: gen_width 312 at image_size 256 is 1,072,795,155 parameters (under 2**30) and passes
    the check; 313 is 1,079,649,057 and is refused (checked without building either network)."""
    assert generator_parameters(64, 256, 3, 312, 0) <= MAX_GENERATOR_PARAMETERS
    assert generator_parameters(64, 256, 3, 313, 0) > MAX_GENERATOR_PARAMETERS
    check_generator_size(64, 256, 3, 312, 0)
    with pytest.raises(ConfigError, match=r"generator would have 1,079,649,057 parameters \(gen_width 313"):
        check_generator_size(64, 256, 3, 313, 0)


@pytest.mark.parametrize(("size", "channels", "depth"), [(28, 1, 1), (32, 3, 2), (12, 1, 1)])
def test_generator_refinement_layers_keep_each_resolution(size, channels, depth):
    """gen_depth adds 3x3 convolutions "at the same resolution" (padding 1): with depth > 0 the output is
    still (channels, size, size) in [0, 1] (test_generator_shapes_and_range runs depth 0 only, and the layout
    test checks weight shapes, which a padding of 0 leaves as they are)."""
    g = DCGANGenerator(latent_dim=8, image_size=size, channels=channels, width=4, depth=depth).eval()
    out = g(torch.randn(2, 8))
    assert out.shape == (2, channels, size, size)
    assert out.min() >= 0 and out.max() <= 1


def test_a_configs_l2_weight_adds_that_multiple_of_the_pixel_mse():
    """lap_l1 + l2_weight * mse, for a weight below 1 too (the GLO paper's mixes are fractions), through
    from_config as through the constructor, and in the per-rank normalised form."""
    ops = get_ops(OPS)
    x, t = torch.rand(3, 1, 28, 28), torch.rand(3, 1, 28, 28)
    lap = reference.laplacian_pyramid_loss_reference(x.double(), t.double()).float()
    mse = torch.nn.functional.mse_loss(x, t)
    cfg = TrainConfig(l2_weight=0.5, ops=OPS)
    loss_fn = ReconstructionLoss.from_config(cfg, ops)
    assert (loss_fn.l2_weight, loss_fn.vgg_weight, loss_fn.vgg) == (0.5, 0.0, None)
    for fn in (loss_fn, ReconstructionLoss(ops, l2_weight=0.5)):
        torch.testing.assert_close(fn(x, t), lap + 0.5 * mse, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fn(x, t, normalizer=3), lap + 0.5 * mse, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ReconstructionLoss(ops)(x, t), lap, rtol=1e-5, atol=1e-6)

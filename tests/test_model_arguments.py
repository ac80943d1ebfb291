"""The public model API's argument checks: a bad argument is a one-line UsageError (NonFiniteError for NaN/Inf)
naming it, never a silent wrong answer, a hang or a raw torch error; integers of any kind (numpy, 0-d
tensors) and numpy arrays are accepted where the API takes integers and tensors."""

from __future__ import annotations

import signal
from contextlib import contextmanager

import pytest
import torch
from torch.nn import functional as F

from glann_ext.backend import get_ops
from glann_ext.errors import NonFiniteError, UsageError
from glann_ext.metrics import ball_membership_counts, memorisation_report, nearest_train
from glann_ext.metrics.memorisation import save_neighbour_grid
from glann_ext.models import (
    GLANN,
    MLP,
    DCGANGenerator,
    ReconstructionLoss,
)


def _glann(n_codes: int = 20, **config) -> GLANN:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        G = DCGANGenerator(latent_dim=8, image_size=28, channels=1, width=8)
        T = MLP(4, 8, hidden=16, layers=2)
        codes = F.normalize(torch.randn(n_codes, 8), dim=1)
    return GLANN(G, codes, T, config={"seed": 0, **config})


@contextmanager
def _deadline(seconds: int):
    """Fail instead of hanging (the balanced sampler looped for days on a huge n)."""

    def fail(*_):
        raise TimeoutError(f"did not return within {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_ball_membership_counts_refuses_negative_and_nan_radii():
    q, c = torch.zeros(3, 2), torch.ones(2, 2)
    with pytest.raises(ValueError, match=r"^radii must be >= 0 \(ball radii\), got -1 at row 1"):
        ball_membership_counts(q, c, torch.tensor([2.0, -1.0]), strict=False)
    with pytest.raises(NonFiniteError, match=r"^radii holds NaN at row 0"):
        ball_membership_counts(q, c, torch.tensor([float("nan"), 1.0]), strict=False)
    assert ball_membership_counts(q, c, torch.tensor([2.0, 0.0]), strict=False).tolist() == [1, 1, 1]


def test_reconstruction_loss_takes_a_backend_name_like_the_models():
    x, y = torch.rand(2, 1, 28, 28), torch.rand(2, 1, 28, 28)
    by_name = ReconstructionLoss("fused")(x, y)  # 'str' object has no attribute 'lap_loss'
    assert torch.equal(by_name, ReconstructionLoss(get_ops("fused"))(x, y))
    assert ReconstructionLoss("reference").ops.name == "reference"
    with pytest.raises(ValueError, match=r"ops backend must be one of"):
        ReconstructionLoss("Fused")
    with pytest.raises(UsageError, match=r"^ops must be an Ops or a backend name .* got 5"):
        ReconstructionLoss(5)


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: MLP(-1, 4), r"^in_dim must be an integer >= 1, got -1"),  # torch's negative dimension
        (lambda: MLP(4, 0), r"^out_dim must be an integer >= 1, got 0"),
        (lambda: MLP(4, 4, hidden=0), r"^hidden must be an integer >= 1, got 0"),  # built silently
        (lambda: MLP(4.0, 4), r"^in_dim must be an integer >= 1, got 4.0"),
        (lambda: MLP(4, 4, layers=True), r"^layers must be an integer >= 1, got True"),
        (lambda: DCGANGenerator(channels=0), r"^channels must be an integer >= 1, got 0"),  # built silently
        (lambda: DCGANGenerator(width=0), r"^width must be an integer >= 1, got 0"),
        (lambda: DCGANGenerator(latent_dim=0), r"^latent_dim must be an integer >= 1, got 0"),
        (lambda: DCGANGenerator(latent_dim=16.0), r"^latent_dim must be an integer >= 1, got 16.0"),
        (lambda: DCGANGenerator(depth=-1), r"^depth must be an integer >= 0, got -1"),
    ],
)
def test_network_sizes_are_checked_by_name(make, needle):
    with pytest.raises(UsageError, match=needle):
        make()


def test_memorisation_takes_arrays_and_uint8_images(tmp_path):
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (10, 1, 4, 4), generator=g, dtype=torch.uint8)
    samples = torch.randint(0, 256, (5, 1, 4, 4), generator=g, dtype=torch.uint8)
    test = torch.randint(0, 256, (6, 1, 4, 4), generator=g, dtype=torch.uint8)
    index, dist = nearest_train(samples.float(), train.float())
    for s, t in ((samples, train), (samples.numpy(), train.numpy()), (samples.float().numpy(), train)):
        got_index, got_dist = nearest_train(s, t)  # refused: "must be a torch.Tensor" / "a floating tensor"
        assert torch.equal(got_index, index) and torch.equal(got_dist, dist)
    report = memorisation_report(samples.numpy(), train.numpy(), test.numpy())
    assert (
        report.generated_median
        == memorisation_report(samples.float(), train.float(), test.float()).generated_median
    )
    assert save_neighbour_grid(
        tmp_path / "g.png", samples.float().numpy() / 255, train.float().numpy() / 255
    ).exists()
    nan = samples.float()
    nan[2, 0, 1, 1] = float("nan")
    with pytest.raises(NonFiniteError, match=r"^samples contains NaN or Inf"):
        nearest_train(nan, train)
    with pytest.raises(TypeError, match=r"^train must be floating or uint8/int32/int64, got dtype bool"):
        nearest_train(samples, train > 0)
    with pytest.raises(ValueError, match=r"^threshold must be a finite number \(or None\), got nan"):
        memorisation_report(samples, train, test, threshold=float("nan"))  # every fraction was 0

"""The public model API's argument checks: a bad argument is a one-line UsageError (NonFiniteError for NaN/Inf)
naming it, never a silent wrong answer, a hang or a raw torch error; integers of any kind (numpy, 0-d
tensors) and numpy arrays are accepted where the API takes integers and tensors."""

from __future__ import annotations

import signal
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from glann_testing import tiny_glann
from torch.nn import functional as F

from glann_ext.backend import get_ops
from glann_ext.errors import NonFiniteError, UsageError
from glann_ext.metrics import ball_membership_counts, memorisation_report, nearest_train
from glann_ext.metrics.memorisation import save_neighbour_grid
from glann_ext.models import (
    GLANN,
    MLP,
    DCGANGenerator,
    PixelIMLE,
    ReconstructionLoss,
    fit_gaussian,
    slerp,
    start_size,
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


# -- 4: reconstruct's indices ----------------------------------------------------------------------------
def test_reconstruct_refuses_float_indices_instead_of_truncating_them():
    m = _glann()
    for bad in ([1.9], torch.tensor([0.0, 1.0]), np.array([2.5])):
        with pytest.raises(UsageError, match=r"^indices must be integers in \[0, 20\).*got float"):
            m.reconstruct(bad)


def test_reconstruct_takes_a_bool_mask_as_a_selection_of_rows():
    m = _glann()
    mask = torch.zeros(20, dtype=torch.bool)
    assert m.reconstruct(mask).shape == (0, 1, 28, 28)  # was all 20 rows: indices 0, 0, ...
    mask[[2, 5]] = True
    assert torch.equal(m.reconstruct(mask), m.reconstruct([2, 5]))
    assert torch.equal(m.reconstruct(mask.numpy()), m.reconstruct([2, 5]))
    with pytest.raises(
        UsageError, match=r"^indices .* bool mask of length 20, got a bool mask of shape \(3,\)"
    ):
        m.reconstruct([True, False, True])


def test_reconstruct_names_indices_for_any_bad_shape_or_type():
    m = _glann()
    assert torch.equal(m.reconstruct(0), m.reconstruct([0]))  # one index: one image (named z before)
    assert torch.equal(m.reconstruct(np.int64(3)), m.reconstruct([3]))
    assert torch.equal(m.reconstruct(torch.tensor(4)), m.reconstruct([4]))
    assert torch.equal(m.reconstruct(np.array([1, 2])), m.reconstruct([1, 2]))
    assert m.reconstruct([]).shape == (0, 1, 28, 28)
    cases = [
        ([[0, 1], [2, 3]], r"got int64 of shape \(2, 2\)"),  # named z
        ("abc", r"got str 'abc'"),  # torch's "new(): invalid data type 'str'"
        (torch.tensor([0], device="meta"), r"got Tensor"),
        ([10**30], r"got list"),
    ]
    for bad, needle in cases:
        with pytest.raises(UsageError, match=r"^indices must be integers in \[0, 20\).*" + needle):
            m.reconstruct(bad)


# -- 5, 19: latent interpolation and slerp ----------------------------------------------------------------
def test_latent_interpolation_refuses_zero_and_nan_codes_by_endpoint():
    m = _glann()
    with pytest.raises(UsageError, match=r"^a must be a non-zero vector"):
        m.interpolate(torch.zeros(8), 7, steps=4, space="latent")  # gave all-NaN images
    b = torch.ones(8)
    b[3] = float("nan")
    with pytest.raises(NonFiniteError, match=r"^b holds NaN or Inf") as err:
        m.interpolate(7, b, steps=4, space="latent")
    assert err.value.argument == "b"
    with pytest.raises(NonFiniteError, match=r"^a holds NaN or Inf"):  # noise space: named z (the projection)
        m.interpolate(torch.full((4,), float("inf")), torch.zeros(4), steps=3)
    out = m.interpolate(m.codes[0].double() * 3, 7, steps=4, space="latent")  # any non-zero length is fine
    assert torch.allclose(out, m.interpolate(0, 7, steps=4, space="latent"), atol=1e-6)


def test_interpolation_space_names_both_spaces_of_a_glann_model():
    """A typo in ``space`` on a GLANN model named only 'noise' as valid (the base class's message)."""
    m = _glann()
    with pytest.raises(
        UsageError, match=r"space must be 'latent' or 'noise' for a glann model, got 'latnet'"
    ):
        m.interpolate(0, 7, steps=4, space="latnet")


def test_slerp_refuses_zero_nan_and_mismatched_endpoints_by_name():
    b, t = torch.tensor([1.0, 0, 0, 0]), torch.linspace(0, 1, 3)
    with pytest.raises(UsageError, match=r"^a must be a non-zero vector"):
        slerp(torch.zeros(4), b, t)  # all NaN, though every point was promised unit norm
    with pytest.raises(NonFiniteError, match=r"^b holds NaN"):
        slerp(b, torch.tensor([float("nan"), 1, 0, 0]), t)
    with pytest.raises(UsageError, match=r"^b must be a vector like a of shape \(4,\), got float32 \(3,\)"):
        slerp(b, b[:3], t)  # RuntimeError: the size of tensor a (4) must match ...
    with pytest.raises(UsageError, match=r"^a must be a vector of shape \(D,\), got float32 \(2, 4\)"):
        slerp(torch.ones(2, 4), b, t)
    with pytest.raises(UsageError, match=r"^t must be a number or a 1-D tensor"):
        slerp(b, b.flip(0), torch.ones(2, 2))
    with pytest.raises(UsageError, match=r"^t must be a number or a 1-D tensor"):
        slerp(b, b.flip(0), "half")
    with pytest.raises(NonFiniteError, match=r"^t holds NaN"):
        slerp(b, b.flip(0), torch.tensor([0.0, float("nan")]))


def test_slerp_takes_a_number_t_and_arrays():
    a, b = torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0])
    path = slerp(a, b, torch.tensor([0.25, 0.5]))
    assert torch.equal(slerp(a, b, 0.5), path[1])  # 'float' object has no attribute 'double'
    assert torch.equal(slerp(a, b, torch.tensor(0.25)), path[0])  # IndexError on a 0-d t
    assert slerp(a, b, 0.5).shape == (3,)
    assert torch.equal(slerp(a.numpy(), b.numpy(), np.array([0.25, 0.5])), path)
    assert torch.allclose(path[1], torch.tensor([0.5**0.5, 0.5**0.5, 0]))


# -- 6: invert -------------------------------------------------------------------------------------------
def test_invert_refuses_pixels_in_0_255_and_non_float_images():
    m = _glann()
    images = m.decode(m.codes[:2])
    with pytest.raises(
        UsageError,
        match=r"^images must be floating point in \[0, 1\], got uint8 \(uint8 pixels: divide by 255\)",
    ):
        m.invert((images * 255).to(torch.uint8), steps=1, restarts=1)
    with pytest.raises(
        UsageError, match=r"^images must lie in \[0, 1\] \(within 0.05\), got values in \[.*, 1?\d\d"
    ):
        m.invert(images * 255, steps=1, restarts=1)
    with pytest.raises(UsageError, match=r"^images must lie in \[0, 1\]"):
        m.invert(images - 0.6, steps=1, restarts=1)
    codes, _ = m.invert((images * 1.04).clamp(max=1.04), steps=0, restarts=1)  # a resize's overshoot is fine
    assert codes.shape == (2, 8)


def test_invert_checks_its_other_arguments_by_name():
    m = _glann()
    images = m.decode(m.codes[:2])
    nan = images.clone()
    nan[1, 0, 3, 3] = float("nan")
    cases = [
        ({"steps": 2.5}, UsageError, r"^steps must be an integer >= 0, got 2.5"),
        ({"restarts": 1.5}, UsageError, r"^restarts must be an integer >= 1, got 1.5"),
        ({"steps": "5"}, UsageError, r"^steps must be an integer >= 0, got '5'"),
        (
            {"lr": -1},
            UsageError,
            r"^lr must be a finite number > 0, got -1",
        ),  # torch's "Invalid learning rate"
        ({"lr": float("nan")}, UsageError, r"^lr must be a finite number > 0, got nan"),
        ({"seed": -1}, UsageError, r"^seed must be an integer >= 0, got -1"),
        ({"images": images.to("meta")}, UsageError, r"^images must be a float tensor or array .* got a meta"),
        ({"images": nan}, NonFiniteError, r"^images hold NaN or Inf"),  # named nn_argmin's queries
        ({"images": [[0.5]]}, UsageError, r"^images must be a float tensor or array .* got list"),
    ]
    for kwargs, error, needle in cases:
        kwargs = {"images": images, "steps": 1, "restarts": 1, **kwargs}
        with pytest.raises(error, match=needle):
            m.invert(**kwargs)
    codes, _ = m.invert(images.numpy(), steps=np.int64(1), restarts=torch.tensor(1))  # numpy images
    assert torch.equal(codes, m.invert(images, steps=1, restarts=1)[0])
    with pytest.raises(UsageError, match=r"^invert needs the training codes, and this model has none"):
        _glann(n_codes=0).invert(images, steps=1, restarts=1)  # cannot reshape tensor of 0 elements


def test_invert_says_it_starts_from_the_nearest_of_a_random_pool():
    doc = " ".join(GLANN.invert.__doc__.split())
    assert "pool of at most :data:`INVERT_POOL` (2,048) training codes drawn at random" in doc


# -- 9, 12-14: seeds and the balanced flag ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("seed", "needle"),
    [
        (2**63, r"^seed must be an integer in \[0, 9,223,372,036,854,775,807\]"),  # drew what seed 0 draws
        (-1, r"^seed must be an integer >= 0, got -1"),
        (1.5, r"^seed must be an integer >= 0, got 1.5"),  # manual_seed expected a long
        (True, r"^seed must be an integer >= 0, got True"),
        ("1", r"^seed must be an integer >= 0, got '1'"),
    ],
)
def test_sampling_seeds_must_be_integers_in_the_training_range(seed, needle):
    m = _glann()
    for call in (
        lambda: m.sample(2, seed=seed),
        lambda: m.sample(2, seed=seed, balanced=True),
        lambda: m.sample_gaussian(2, seed=seed),
        lambda: m.noise(2, seed=seed),
        lambda: m.invert(m.decode(m.codes[:1]), steps=0, restarts=1, seed=seed),
    ):
        with pytest.raises(UsageError, match=needle):
            call()


def test_sampling_without_a_seed_draws_anew_each_call_and_follows_torch_manual_seed():
    """Every sampling call took seed 0 by default, so five calls of ``sample(100)`` gave the same 100 images
    (found by a review). Without a seed each call now draws its own (from torch's global generator); a seed
    still gives the same images, and ``invert`` (an optimisation, not a draw) still starts from seed 0."""
    m = _glann(balance_draws=1.0)
    for draw in (
        lambda: m.sample(3), lambda: m.sample(3, balanced=False), lambda: m.sample_gaussian(3),
        lambda: m.noise(3), lambda: m.sample_inputs(3), lambda: m.gaussian_codes(3),
    ):  # fmt: skip
        torch.manual_seed(7)
        first, second = draw(), draw()
        assert not torch.equal(first, second)
        torch.manual_seed(7)
        assert torch.equal(draw(), first)
    assert torch.equal(m.sample(3, seed=0), m.sample(3, seed=0))
    with pytest.raises(UsageError, match=r"^seed must be an integer >= 0, got None"):
        m.invert(m.decode(m.codes[:1]), steps=0, restarts=1, seed=None)


def test_sampling_seeds_take_any_integer_type_up_to_the_largest():
    m = _glann()
    assert torch.equal(m.sample(2, seed=np.int64(5)), m.sample(2, seed=5))
    assert torch.equal(m.sample(2, seed=torch.tensor(5)), m.sample(2, seed=5))
    assert m.sample(1, seed=2**63 - 1).shape == (1, 1, 28, 28)


def test_balanced_must_be_a_bool_or_none():
    m = _glann(balance_draws=1.0)
    for bad in ("no", 0, 1, "False"):
        with pytest.raises(UsageError, match=r"^balanced must be True, False or None"):
            m.sample(2, balanced=bad)  # "no" is truthy: it sampled balanced
    p = PixelIMLE(m.G)
    with pytest.raises(UsageError, match=r"^balanced must be True, False or None"):
        p.sample(2, balanced="no")
    assert torch.equal(m.sample(2, 0, balanced=False), GLANN(m.G, m.codes, m.T).sample(2, 0))


def test_ball_membership_counts_refuses_negative_and_nan_radii():
    q, c = torch.zeros(3, 2), torch.ones(2, 2)
    with pytest.raises(ValueError, match=r"^radii must be >= 0 \(ball radii\), got -1 at row 1"):
        ball_membership_counts(q, c, torch.tensor([2.0, -1.0]), strict=False)
    with pytest.raises(NonFiniteError, match=r"^radii holds NaN at row 0"):
        ball_membership_counts(q, c, torch.tensor([float("nan"), 1.0]), strict=False)
    assert ball_membership_counts(q, c, torch.tensor([2.0, 0.0]), strict=False).tolist() == [1, 1, 1]


# -- 10, 11: counts too large for memory -------------------------------------------------------------------
def test_counts_too_large_for_memory_are_refused_before_allocating():
    m = _glann(balance_draws=1.0)
    cases = [
        (lambda: m.sample(10**12, balanced=False), r"^n = 1,000,000,000,000 asks for .* GiB"),  # allocator
        (lambda: m.sample(10**12), r"^n = 1,000,000,000,000 asks for"),  # balanced: looped for days
        (lambda: m.sample_inputs(10**14), r"^n = 100,000,000,000,000 asks for"),
        (lambda: m.sample_gaussian(10**12), r"^n = 1,000,000,000,000 asks for"),
        (lambda: m.noise(10**15), r"^n = 1,000,000,000,000,000 asks for"),
        (lambda: m.interpolate(0, 7, steps=10**9, space="latent"), r"^steps = 1,000,000,000 asks for"),  # OOM
        (lambda: m.interpolate(torch.zeros(4), torch.ones(4), steps=10**9), r"^steps = 1,000,000,000 asks"),
        (lambda: m.reconstruct(torch.zeros(1, dtype=torch.int64).expand(10**8)), r"^indices = "),
    ]
    with _deadline(60):
        for call, needle in cases:
            with pytest.raises(UsageError, match=needle + r".*more than this machine's .* GiB of memory"):
                call()


def test_the_count_limit_is_the_machines_memory(monkeypatch):
    import glann_ext.data.arrays

    m = _glann()
    monkeypatch.setattr(glann_ext.data.arrays, "read_cap", lambda: 100 * 28 * 28 * 4)  # 100 images
    assert m.sample(100).shape == (100, 1, 28, 28)
    with pytest.raises(UsageError, match=r"^n = 101 asks for"):
        m.sample(101)
    assert m.interpolate(0, 1, steps=100, space="latent").shape == (100, 1, 28, 28)
    with pytest.raises(UsageError, match=r"^steps = 101 asks for"):
        m.interpolate(0, 1, steps=101, space="latent")


# -- 12-15: integer arguments ------------------------------------------------------------------------------
def test_interpolation_steps_must_be_integers():
    m = _glann()
    for steps in (10.0, "5", 2.5, True):
        for space, a, b in (("latent", 0, 7), ("noise", torch.zeros(4), torch.ones(4))):
            with pytest.raises(UsageError, match=r"^steps must be an integer >= 2, got"):
                m.interpolate(a, b, steps=steps, space=space)  # TypeErrors from linspace and '<'


def test_numpy_and_tensor_integers_are_integers():
    m = _glann()
    assert torch.equal(
        m.sample(np.int64(3), 0), m.sample(3, 0)
    )  # "n must be an integer >= 0, got np.int64(3)"
    assert torch.equal(m.sample(torch.tensor(3), 0), m.sample(3, 0))
    latent = m.interpolate(0, 7, steps=3, space="latent")
    assert torch.equal(m.interpolate(np.int64(0), torch.tensor(7), steps=np.int32(3), space="latent"), latent)
    assert torch.equal(m.interpolate(np.array(0), 7, steps=3, space="latent"), latent)
    assert start_size(np.int64(28)) == (7, 2)
    assert start_size(torch.tensor(32)) == (4, 3)
    g = DCGANGenerator(
        latent_dim=np.int64(8), image_size=np.int64(28), channels=np.int64(1), width=np.int64(8)
    )
    assert g.hparams() == {"latent_dim": 8, "image_size": 28, "channels": 1, "width": 8, "depth": 0}
    assert all(type(v) is int for v in g.hparams().values())  # JSON-able in an export
    assert MLP(np.int64(4), np.int64(8)).hparams()["in_dim"] == 4


# -- 20: numpy inputs --------------------------------------------------------------------------------------
def test_fit_gaussian_and_glann_take_numpy_codes():
    m = _glann()
    mean, cov = fit_gaussian(m.codes.numpy())  # 'numpy.ndarray' object has no attribute 'detach'
    assert torch.equal(mean, fit_gaussian(m.codes)[0]) and torch.equal(cov, fit_gaussian(m.codes)[1])
    from_numpy = GLANN(m.G, m.codes.numpy(), m.T)  # ... has no attribute 'dim'
    assert torch.equal(from_numpy.sample(2, 0), m.sample(2, 0))
    with pytest.raises(UsageError, match=r"^codes must be a tensor or array \(N, d\) of numbers, got str"):
        fit_gaussian("codes")
    with pytest.raises(UsageError, match=r"^codes must be a tensor or array .* got a meta tensor"):
        fit_gaussian(torch.zeros(3, 2, device="meta"))
    with pytest.raises(UsageError, match=r"^codes must be a floating \(N, 8\) tensor, got list"):
        GLANN(m.G, m.codes.tolist(), m.T)


# -- 21: the Gaussian fit, decode's batch size, the loss's backend and the networks' sizes ------------------
def test_a_gaussian_fit_that_cannot_be_sampled_names_fit():
    m = _glann()
    with pytest.raises(UsageError, match=r"^fit's cov must be a positive semi-definite \(8, 8\) covariance"):
        m.sample_gaussian(2, fit=(torch.zeros(8), -torch.eye(8)))  # torch's _LinAlgError
    with pytest.raises(NonFiniteError, match=r"^fit holds NaN or Inf") as err:
        m.sample_gaussian(2, fit=(torch.full((8,), float("nan")), torch.eye(8)))  # named z (the projection)
    assert err.value.argument == "fit"
    with pytest.raises(UsageError, match=r"^fit must be a pair \(mean \(8,\), cov \(8, 8\)\), got 5"):
        m.sample_gaussian(2, fit=5)  # TypeError: cannot unpack non-iterable int
    psd = torch.zeros(8, 8)  # rank 0: semi-definite, sampled as the point (ridge of 1e-6)
    assert m.sample_gaussian(2, fit=(m.codes[0], psd)).shape == (2, 1, 28, 28)
    upper = torch.eye(8) + torch.triu(torch.ones(8, 8), 1)  # Cholesky read only its lower triangle
    with pytest.raises(
        UsageError, match=r"^fit's cov must be symmetric, got one with \|cov - cov.T\| up to 1"
    ):
        m.sample_gaussian(2, fit=(torch.zeros(8), upper))
    rounded = fit_gaussian(m.codes)[1].float().double()  # a float32 round trip stays symmetric
    assert m.gaussian_codes(2, fit=(m.codes.mean(0), rounded)).shape == (2, 8)


def test_a_spread_without_codes_says_it_needs_them():
    m = _glann()
    empty = GLANN(m.G, m.codes[:0], m.T)
    empty.set_spread(0.5)  # the spread's width is the codes' own deviation: NaN noise with no codes
    with pytest.raises(UsageError, match=r"^a spread > 0 needs the training codes, and this model has none"):
        empty.sample(2, balanced=False)


def test_decode_batch_size_must_be_a_positive_integer():
    m = _glann()
    for bad in (0, -1, 2.5, None):
        with pytest.raises(UsageError, match=r"^batch_size must be an integer >= 1"):
            m.decode(m.codes[:2], batch_size=bad)  # split_size can only be 0 if ...
    assert torch.equal(m.decode(m.codes[:3], batch_size=np.int64(1)), m.decode(m.codes[:3]))
    with pytest.raises(
        UsageError, match=r"^z must be a float32 \(n, 8\) tensor, got float32 \(2, 8\) on the meta"
    ):
        m.decode(torch.zeros(2, 8, device="meta"))


def test_reconstruction_loss_takes_a_backend_name_like_the_models():
    x, y = torch.rand(2, 1, 28, 28), torch.rand(2, 1, 28, 28)
    by_name = ReconstructionLoss("fused")(x, y)  # 'str' object has no attribute 'lap_loss'
    assert torch.equal(by_name, ReconstructionLoss(get_ops("fused"))(x, y))
    assert ReconstructionLoss("reference").ops.name == "reference"
    with pytest.raises(
        UsageError, match=r"^ops must be an Ops or a backend name \('fused', 'reference'\), got 'Fused'"
    ):
        ReconstructionLoss("Fused")
    with pytest.raises(UsageError, match=r"^ops must be an Ops or a backend name .* got int"):
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


# -- 26: memorisation takes arrays and integer pixels like the other metrics ---------------------------------
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


# -- 22: the reference latent optimizers check their arguments as the fused ones do --------------------------
@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_latent_optimizer_steps_check_their_arguments_on_both_backends(backend):
    from glann_ext.optim import SphereSparseAdam, SphereSparseSGD

    table = F.normalize(torch.randn(10, 4), dim=1)
    adam, sgd = (
        SphereSparseAdam(table.clone(), backend=backend),
        SphereSparseSGD(table.clone(), backend=backend),
    )
    cases = [
        (
            lambda: adam.step(torch.tensor([11]), torch.randn(1, 4)),
            ValueError,
            r"indices must be in \[0, 10\)",
        ),
        (
            lambda: sgd.step(torch.tensor([-1]), torch.randn(1, 4)),
            ValueError,
            r"indices must be in \[0, 10\)",
        ),
        (
            lambda: adam.step(torch.tensor([1]), torch.randn(1, 4), updates=0),
            ValueError,
            r"updates must be an int",
        ),
        (
            lambda: adam.step(torch.tensor([1]), torch.randn(1, 4), updates=2.5),
            ValueError,
            r"updates must be an",
        ),
        (lambda: adam.step(np.array([1]), torch.randn(1, 4)), TypeError, r"indices must be a torch.Tensor"),
        (
            lambda: adam.step(torch.tensor([1]), torch.randn(2, 4)),
            ValueError,
            r"grad must have shape \(len\(indices\), table.shape\[1\]\) = \(1, 4\)",
        ),
    ]
    for call, error, needle in cases:
        with pytest.raises(error, match=needle):
            call()
    assert torch.equal(adam.table, table) and torch.equal(sgd.table, table) and adam.step_count == 0
    adam.step(torch.tensor([1]), torch.randn(1, 4), updates=np.int64(3))
    assert adam.step_count == 1


def test_invert_shows_its_steps_when_asked_and_finds_the_same_codes(capsys):
    """600 images inverted for 22 s without a sign of life (own-data audit): ``progress=True`` (the CLI's on
    a terminal) shows a bar over restarts x steps; the codes do not depend on it."""
    m = _glann()
    images = m.decode(m.codes[:3]).clamp(0, 1)
    quiet, _ = m.invert(images, steps=4, restarts=2)
    assert capsys.readouterr().err == ""
    shown, _ = m.invert(images, steps=4, restarts=2, progress=True)
    err = capsys.readouterr().err
    assert "invert:" in err and "/8 [" in err, err  # restarts x steps
    assert torch.equal(quiet, shown)


# Found missing by a mutation test of sampling, eval and the config (2026-12-07).


def test_a_latent_endpoint_one_past_the_last_training_index_is_a_usage_error():
    m = tiny_glann()
    with pytest.raises(UsageError, match=r"b must be a training index in \[0, 20\) or a code \(8,\), got 20"):
        m.interpolate(0, 20, steps=3, space="latent")
    with pytest.raises(UsageError, match=r"a must be a training index in \[0, 20\)"):
        m.interpolate(20, 0, steps=3, space="latent")
    assert m.interpolate(0, 19, steps=3, space="latent").shape == (3, 1, 28, 28)


@pytest.mark.parametrize("number", [np.float32, np.float64, lambda v: torch.tensor(v), np.array])
def test_real_arguments_take_numpy_and_0d_tensor_numbers(number):
    """np.float32(0.5) was refused as "must be a number" by the sampling dials, invert's lr, moment_ratios'
    share and mode_coverage's std (num_std took it): each takes any finite real number now, kept as a float."""
    from glann_ext.metrics import RING_VEEGAN, mode_coverage, moment_ratios

    m = _glann()
    m.set_noise_scale(number(1.25))
    m.set_spread(number(0.5))
    m.set_local_spread(number(0.25))
    assert (m.noise_scale, m.spread, m.local_spread) == (1.25, 0.5, 0.25)
    assert all(
        type(m.config[k]) is float for k in ("sample_noise_scale", "sample_spread", "sample_local_spread")
    )
    codes, recon = m.invert(m.decode(m.codes[:2]), steps=1, restarts=1, lr=number(0.5))
    assert codes.shape == (2, m.codes.shape[1]) and recon.shape == (2, *m.image_shape)
    cov = mode_coverage(RING_VEEGAN.centres, RING_VEEGAN.centres, std=number(RING_VEEGAN.std))
    assert cov.modes_covered == 8 and cov.high_quality_fraction == 1.0
    g = torch.Generator().manual_seed(0)
    samples, codes = torch.randn(50, 4, generator=g), torch.randn(60, 4, generator=g)
    assert moment_ratios(samples, codes, share=number(0.5)) == moment_ratios(samples, codes, share=0.5)

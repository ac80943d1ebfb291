"""The trained generative models, one class per method, each owning its export and load.

* :class:`GLANN`: the GLO generator ``G`` (code -> image), the training codes (one per image, on the unit
  sphere) and the IMLE mapping ``T`` (noise -> code). Without ``T`` (a GLO-only run) it still reconstructs,
  interpolates codes, inverts images and samples the GLO + Gaussian baseline.
* :class:`PixelIMLE`: the original IMLE, a generator from noise straight to images.

Images are float32 (n, C, H, W) in [0, 1]. ``export()`` gives ``(tensors, meta)``: the weights as a flat
dict of tensors and a JSON-able description (kind, architecture, training config) from which
``from_export`` rebuilds the model without any code from the file (see :mod:`glann_ext.models.files`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from glann_ext import seeding
from glann_ext._args import (
    as_finite_real,
    as_index,
    checked_int,
    checked_positive_finite,
    checked_seed,
    is_finite_number,
    seed_or_drawn,
)
from glann_ext._info import __version__
from glann_ext.backend import Ops, as_ops
from glann_ext.errors import NonFiniteError, UsageError
from glann_ext.ops._checks import first_nonfinite_row

from . import balance, custom_generator, local_spread
from .generator import DCGANGenerator
from .mlp import MLP
from .training_data import checked_record

M = TypeVar("M", bound=nn.Module)

EXPORT_FORMAT = 1
# the widest sampling noise accepted (standard deviations; T trains on N(0, I))
MAX_NOISE_SCALE = 10.0
# the widest latent spread accepted (GLANN.set_spread: noise of about this norm on unit-sphere codes; 4 is
# already nearly a uniform draw on the sphere)
MAX_SPREAD = 4.0
# the most neighbours the local spread may span (GLANN.set_local_spread; a model file is untrusted: k = 1e9
# would sort every code for every sample)
MAX_LOCAL_NEIGHBOURS = 256
# TrainConfig's sample_local_neighbours, and what a model file without the field spreads over
DEFAULT_LOCAL_NEIGHBOURS = 8
# rows of the spread's noise drawn per seeded block, so that the first k samples of n are the samples of k
SPREAD_CHUNK = 4_096
# the most calibration draws per code a model file may ask for (TrainConfig's default is 10): a model file is
# untrusted, and balance_draws = 1e12 would calibrate for days
MAX_BALANCE_DRAWS = 10_000.0
# the most training codes invert searches for each image's first start (a random pool of them)
INVERT_POOL = 2_048
# starts per image of GLANN.invert (and `glann invert --restarts`): the nearest pool code's and random ones
INVERT_RESTARTS = 4
NO_MAPPING = (
    "this model has no IMLE mapping T yet (GLO stage only). Train its IMLE stage: `glann train --out RUN` on "
    "its run folder (when no other process is training it), or Fit(images, cfg).run('imle') after run('glo') "
    "in Python. Until then, what works without T: the GLO + Gaussian baseline (`glann sample --sampler "
    "gaussian`, model.sample_gaussian) and paths between training codes (`glann interpolate --space latent`, "
    "model.interpolate(i, j, space='latent'))"
)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Spherical interpolation between the directions of ``a`` and ``b`` (D,) (tensors or arrays, finite and
    non-zero: they are normalised first) at fractions ``t`` (S,) -> (S, D) (a number ``t``: one point (D,)),
    computed in float64 and returned in ``a``'s floating dtype (float32 for integer ``a``); every point has
    unit norm. Falls back to normalised lerp when they are parallel; antipodal endpoints have no unique great
    circle, so the path goes through ``u``, the basis vector least aligned with ``a`` made orthogonal to it
    (deterministic). Bad arguments: a UsageError (NonFiniteError for NaN/Inf) naming ``a``, ``b`` or ``t``."""
    dtype = a.dtype if isinstance(a, torch.Tensor) and a.is_floating_point() else torch.float32
    a = _direction("a", a, None, "a vector", torch.float64)
    b = _direction("b", b, len(a), "a vector like a", torch.float64)
    t, scalar = _fractions(t)
    a, b, t = a / a.norm(), b / b.norm(), t[:, None]
    omega = torch.arccos((a * b).sum().clamp(-1, 1))
    if omega < 1e-6:
        out = (1 - t) * a + t * b
    elif omega > math.pi - 1e-6:  # antipodal: a half turn through u
        u = torch.zeros_like(a)
        u[int(a.abs().argmin())] = 1
        u = u - (u @ a) * a
        u = u / u.norm()
        out = torch.cos(math.pi * t) * a + torch.sin(math.pi * t) * u
    else:
        out = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
    out = (out / out.norm(dim=1, keepdim=True)).to(dtype)
    return out[0] if scalar else out


def _fractions(t: Any) -> tuple[torch.Tensor, bool]:
    """slerp's ``t``, a number or a 1-D tensor/array of finite numbers, as float64 (S,) and whether it was a
    number, else a UsageError (NonFiniteError) naming ``t``."""
    try:
        ok = not isinstance(t, (bool, str)) and not (isinstance(t, torch.Tensor) and t.is_meta)
        f = (t.detach() if isinstance(t, torch.Tensor) else torch.as_tensor(t)) if ok else None
    except (TypeError, ValueError, RuntimeError):
        f = None
    if f is None or f.dim() > 1 or f.dtype == torch.bool or f.is_complex():
        got = f"{str(f.dtype)[6:]} {tuple(f.shape)}" if f is not None else f"{t!r:.40}"
        raise UsageError(f"t must be a number or a 1-D tensor of fractions (S,), got {got}")
    f = f.cpu().double()
    if not bool(torch.isfinite(f).all()):
        raise NonFiniteError("t holds NaN or Inf values", argument="t")
    return f.reshape(-1), f.dim() == 0


def fit_gaussian(codes: torch.Tensor | np.ndarray, world: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, covariance) in float64 of the code table (a tensor or array). The rows may be sharded over the
    ranks of ``world`` (a :class:`~glann_ext.train.world.World`; collective then: every rank calls it and gets
    the statistics of all rows)."""
    if isinstance(codes, np.ndarray):
        codes = torch.from_numpy(codes)
    if not isinstance(codes, torch.Tensor) or codes.is_meta or codes.dtype == torch.bool:
        got = "a meta tensor" if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise UsageError(f"codes must be a tensor or array (N, d) of numbers, got {got}")
    z = codes.detach().double().cpu()
    if z.dim() != 2:
        raise UsageError(f"codes must be (N, d), got shape {tuple(z.shape)}")
    d = z.shape[1]
    sums = torch.cat([z.sum(0), (z.T @ z).reshape(-1), torch.tensor([float(len(z))], dtype=torch.float64)])
    if world is not None:
        sums = world.sum(sums)
    n = sums[-1]
    if n < 1:
        raise UsageError(f"codes must hold at least one row to fit a Gaussian, got shape {tuple(z.shape)}")
    mean = sums[:d] / n
    cov = (sums[d:-1].reshape(d, d) - n * torch.outer(mean, mean)) / (n - 1).clamp_min(1)
    return mean, cov


def _checked_in_range(value: Any, name: str, high: float, *, zero_ok: bool) -> float:
    """``value`` as a number in [0, ``high``] (``zero_ok``) or (0, ``high``], or a UsageError naming ``name``
    (a latent spread may be 0; a noise scale may not)."""
    number = as_finite_real(value)  # numpy and 0-d tensor numbers too
    if number is None or not ((number >= 0 if zero_ok else number > 0) and number <= high):
        raise UsageError(
            f"{name} must be a number in {'[' if zero_ok else '('}0, {high:g}], got {value!r:.60}"
        )
    return number


def _check_count(n: Any, row_shape: tuple[int, ...] = (), name: str = "n", low: int = 0) -> int:
    """``n`` as an int >= ``low`` (numpy integers and 0-d integer tensors count; bools and floats do not),
    else a UsageError naming ``name``. With ``row_shape``, ``n`` is also the row count of a float32 result
    (n, *row_shape), refused before anything is allocated when it would not fit in this machine's physical
    memory (:func:`glann_ext.data.arrays.read_cap`; more could only end in the process being killed)."""
    n = checked_int(name, n, low)
    if row_shape:
        from glann_ext.data.arrays import check_fits_memory

        check_fits_memory(
            f"{name} = {n:,} asks for", n * math.prod(row_shape) * 4, of=f" of float32 rows {tuple(row_shape)}",
            advice="; ask for fewer at a time",
        )  # fmt: skip
    return n


def _check_balanced(balanced: Any) -> None:
    if balanced is not None and not isinstance(balanced, bool):
        raise UsageError(f"balanced must be True, False or None (the model's setting), got {balanced!r:.60}")


def _vector(
    name: str, v: Any, width: int | None, what: str, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``v`` (a tensor or array of shape (width,); any length for None) of finite numbers as a CPU vector of
    ``dtype``, else a UsageError (NonFiniteError for NaN/Inf) naming ``name``."""
    ok = isinstance(v, (torch.Tensor, list, tuple)) or hasattr(v, "__array__")
    try:
        t = torch.as_tensor(v) if ok and not (isinstance(v, torch.Tensor) and v.is_meta) else None
    except (TypeError, ValueError, RuntimeError):
        t = None
    if (
        t is None
        or t.dim() != 1
        or (width is not None and t.shape[0] != width)
        or not (t.is_floating_point() or t.dtype == torch.int64)
    ):
        got = f"{str(t.dtype)[6:]} {tuple(t.shape)}" if t is not None else repr(v)[:40]
        raise UsageError(f"{name} must be {what} of shape ({'D' if width is None else width},), got {got}")
    t = t.detach().cpu().to(dtype)
    if not bool(torch.isfinite(t).all()):
        raise NonFiniteError(f"{name} holds NaN or Inf values", argument=name)
    return t


def _direction(name: str, v: Any, width: int | None, what: str, dtype: torch.dtype) -> torch.Tensor:
    """A :func:`_vector` that is not zero: the endpoint of a spherical interpolation, normalised there."""
    t = _vector(name, v, width, what, dtype)
    if not bool(t.double().norm() > 0):
        raise UsageError(
            f"{name} must be a non-zero vector (it is normalised onto the sphere), got all zeros"
        )
    return t


def _indices(name: str, value: Any, n: int) -> torch.Tensor:
    """``value`` as int64 CPU row indices into ``n`` rows: integers in [0, n) (a list, tensor or array; one
    integer gives one index) or a bool mask of length ``n`` (its True rows, in order), else a UsageError
    naming ``name``: floats are not truncated, nor a mask read as the indices 0 and 1."""
    rule = f"{name} must be integers in [0, {n}) (a list, tensor or array) or a bool mask of length {n}"
    try:
        meta = isinstance(value, torch.Tensor) and value.is_meta
        idx = None if meta or isinstance(value, str) else torch.as_tensor(value).detach().cpu()
    except (TypeError, ValueError, RuntimeError, OverflowError):
        idx = None
    if idx is None:
        raise UsageError(f"{rule}, got {type(value).__name__} {value!r:.40}")
    if idx.dtype == torch.bool and idx.dim() > 0:
        if tuple(idx.shape) != (n,):
            raise UsageError(f"{rule}, got a bool mask of shape {tuple(idx.shape)}")
        return idx.nonzero().squeeze(1)
    if idx.numel() == 0 and idx.dim() == 1:  # [] is float32 to torch
        return idx.long()
    if idx.dim() > 1 or idx.dtype == torch.bool or idx.is_floating_point() or idx.is_complex():
        raise UsageError(f"{rule}, got {str(idx.dtype)[6:]} of shape {tuple(idx.shape)}")
    idx = idx.long().reshape(-1)
    if idx.numel() and not (int(idx.min()) >= 0 and int(idx.max()) < n):
        raise UsageError(f"{name} must lie in [0, {n}), got values in [{int(idx.min())}, {int(idx.max())}]")
    return idx


def _check_input(name: str, x: Any, width: int) -> None:
    """``x`` must be a float32 (n, ``width``) tensor (the networks' dtype), else a one-line UsageError."""
    if (
        not isinstance(x, torch.Tensor)
        or x.dim() != 2
        or x.shape[1] != width
        or x.dtype != torch.float32
        or x.is_meta
    ):
        got = type(x).__name__
        if isinstance(x, torch.Tensor):
            got = f"{str(x.dtype)[6:]} {tuple(x.shape)}{' on the meta device' if x.is_meta else ''}"
        raise UsageError(f"{name} must be a float32 (n, {width}) tensor, got {got}")


def _check_number(config: dict[str, Any], key: str, ok: Callable[[float], bool], rule: str) -> None:
    value = config.get(key)
    if key in config and (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not is_finite_number(value)
        or not ok(value)
    ):
        raise ValueError(f"config.{key} must be {rule}, got {value!r:.60}")


def check_sampling_config(config: Any) -> dict[str, Any]:
    """A model file's ``config`` (untrusted) with the fields sampling reads checked: ``sample_noise_scale``
    in (0, MAX_NOISE_SCALE], ``sample_spread`` and ``sample_local_spread`` in [0, MAX_SPREAD],
    ``sample_local_neighbours`` in [2, MAX_LOCAL_NEIGHBOURS], ``balance_draws`` in [0,
    MAX_BALANCE_DRAWS], ``balance_quantile`` in [0, 1], ``seed`` an int, ``ops`` a string (``ValueError``
    naming the field and value)."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise TypeError(f"config must be a JSON object, got {type(config).__name__} {config!r:.60}")
    _check_number(
        config, "sample_noise_scale", lambda v: 0 < v <= MAX_NOISE_SCALE, f"in (0, {MAX_NOISE_SCALE:g}]"
    )
    _check_number(config, "sample_spread", lambda v: 0 <= v <= MAX_SPREAD, f"in [0, {MAX_SPREAD:g}]")
    _check_number(config, "sample_local_spread", lambda v: 0 <= v <= MAX_SPREAD, f"in [0, {MAX_SPREAD:g}]")
    neighbours = config.get("sample_local_neighbours", DEFAULT_LOCAL_NEIGHBOURS)
    k = as_index(neighbours)
    if k is None or not 2 <= k <= MAX_LOCAL_NEIGHBOURS:
        raise ValueError(
            f"config.sample_local_neighbours must be an integer in [2, {MAX_LOCAL_NEIGHBOURS}], "
            f"got {neighbours!r:.60}"
        )
    _check_number(
        config, "balance_draws", lambda v: 0 <= v <= MAX_BALANCE_DRAWS, f"in [0, {MAX_BALANCE_DRAWS:g}]"
    )
    _check_number(config, "balance_quantile", lambda v: 0 <= v <= 1, "in [0, 1]")
    seed = config.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not abs(seed) < 2**63:
        raise ValueError(f"config.seed must be an int below 2**63, got {seed!r:.60}")
    if not isinstance(config.get("ops", ""), str):
        raise TypeError(f"config.ops must be a string, got {config['ops']!r:.60}")
    return config


def check_layer_count(
    hparams: Any, fields: tuple[str, ...], state: dict[str, torch.Tensor], name: str
) -> None:
    """A model file's description of ``name`` (``hparams``) must be a JSON object whose layer counts
    (``fields``) are no larger than the number of ``name``'s tensors in the file, since every layer has at
    least one: checked before anything is built, so a forged count of 10^7 costs nothing."""
    if not isinstance(hparams, dict):
        raise TypeError(f"the description of {name} must be a JSON object, got {type(hparams).__name__}")
    for field in fields:
        value = hparams.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > len(state):
            raise ValueError(
                f"{name} {field} = {value}: more layers than the file's {len(state)} tensors of {name}"
            )


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # copies: a module that uses one layer twice has two names for one tensor, which safetensors refuses
    return {
        f"{prefix}.{k}": v.detach().cpu().clone(memory_format=torch.contiguous_format)
        for k, v in state.items()
    }


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    p = prefix + "."
    return {k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)}


class GenerativeModel(nn.Module):
    """What every model shares: an image generator ``G`` (input -> image in [0, 1]), the backend of its
    kernels, the training config it came from, seeded noise, decoding, sampling and noise interpolation."""

    kind: ClassVar[str]

    def __init__(
        self, G: nn.Module, *, ops: Ops | str = "fused", config: dict[str, Any] | None = None,
        input_dim: int | None = None, image_shape: tuple[int, int, int] | None = None,
    ):  # fmt: skip
        super().__init__()
        # G's input width and image shape: the package's DCGANGenerator states them; a custom module is probed
        # (once: a Fit, which checked G before training, passes the shape it checked as image_shape)
        custom = custom_generator.is_custom(G)
        if custom:
            custom_generator.check_parameters(G)
        if image_shape is not None and not (
            isinstance(image_shape, (tuple, list))
            and len(image_shape) == 3
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in image_shape)
        ):
            raise UsageError(f"image_shape must be three ints >= 1 (C, H, W), got {image_shape!r:.60}")
        self._input_dim = checked_int("input_dim", input_dim, 1) if custom else G.latent_dim
        self._image_shape = (
            tuple(image_shape)
            if custom and image_shape is not None
            else custom_generator.generator_image_shape(G, self._input_dim)
        )
        if image_shape is not None and tuple(image_shape) != self._image_shape:  # the DCGANGenerator's own
            raise UsageError(f"image_shape {tuple(image_shape)} is not G's {self._image_shape}")
        self.G = G
        self.ops = as_ops(ops)
        self.config: dict[str, Any] = dict(config or {})
        # the images a model trained on in memory, as glann_ext.train.fit records them (models/training_data.py)
        self.training_data: dict[str, Any] | None = None
        self.written_by: str | None = None  # the glann_ext version of the model file it was loaded from

    @property
    def device(self) -> torch.device:
        return next(self.G.parameters()).device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of G's images."""
        return self._image_shape

    @property
    def input_dim(self) -> int:
        """The width of G's input: the code size (GLANN) or the noise size (pixel IMLE)."""
        return self._input_dim

    @property
    def noise_dim(self) -> int:
        raise NotImplementedError

    def noise(self, n: int, seed: int | None = None) -> torch.Tensor:
        """``n`` standard-normal noise vectors (n, noise_dim) on the CPU; the same seed (an integer in [0,
        2**63); None, the default: one drawn from torch's global generator) gives the same noise, and the
        first ``k`` of them whatever ``n >= k`` is. ``n`` is refused when the noise would not fit in this
        machine's physical memory (as for every count of the sampling methods)."""
        n, seed = _check_count(n, (self.noise_dim,)), seed_or_drawn(seed)
        return seeding.prefix_normal(n, self.noise_dim, seeding.generator(seed, "sample"))

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Images ``G(z)`` in eval mode, clamped to [0, 1], for float32 inputs ``z`` (n, :attr:`input_dim`),
        decoded ``batch_size`` (>= 1) rows at a time, in the standard contiguous layout whatever G's (a G that
        trained in channels-last on the CPU and the same G loaded from its file give the same tensors)."""
        _check_input("z", z, self.input_dim)
        batch_size = checked_int("batch_size", batch_size, 1)
        _check_count(len(z), self.image_shape, "the images of z")
        self.G.eval()
        outs = [self.G(c.to(self.device)).float().clamp(0, 1).contiguous() for c in z.split(batch_size)]
        return torch.cat(outs) if outs else z.new_zeros(0, *self.image_shape)

    def generator_input(self, e: torch.Tensor) -> torch.Tensor:
        """What ``G`` decodes for noise ``e`` (n, noise_dim)."""
        raise NotImplementedError

    @property
    def noise_scale(self) -> float:
        """The standard deviation of the noise when sampling: the config's ``sample_noise_scale`` (1, the
        training distribution, where absent)."""
        # checked on every read: a model file's config is untrusted
        return _checked_in_range(
            self.config.get("sample_noise_scale", 1.0),
            "the model's sample_noise_scale",
            MAX_NOISE_SCALE,
            zero_ok=False,
        )

    def set_noise_scale(self, scale: float) -> None:
        """Sample from now on with the noise at standard deviation ``scale`` (0 < scale <= 10). Kept in
        :attr:`config`, so an exported model samples the same way."""
        self.config["sample_noise_scale"] = _checked_in_range(
            scale, "noise scale", MAX_NOISE_SCALE, zero_ok=False
        )

    def _scaled(self, e: torch.Tensor) -> torch.Tensor:
        scale = self.noise_scale
        return e if scale == 1.0 else scale * e

    @torch.no_grad()
    def sample_inputs(self, n: int, seed: int | None = None, balanced: bool | None = None) -> torch.Tensor:
        """What :meth:`sample` decodes: ``generator_input`` of ``n`` seeded noise vectors (at
        :attr:`noise_scale`). ``balanced``:
        balanced sampling (see :class:`GLANN`); a model without training codes has only plain sampling, so
        ``balanced=False`` and None give it and True is refused."""
        _check_balanced(balanced)
        if balanced:
            raise UsageError(f"balanced sampling needs training codes; a {self.kind} model has none")
        return self.generator_input(self._scaled(self.noise(n, seed)))

    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None, balanced: bool | None = None) -> torch.Tensor:
        """``n`` samples, float32 (n, C, H, W) in [0, 1]; the same seed (an integer in [0, 2**63)) gives the
        same images. Without a seed (None) each call draws new ones, from a seed drawn from torch's global
        generator (``torch.manual_seed`` makes a script's draws repeatable). ``balanced``: balanced sampling
        on or off (None: the model's setting). ``n`` is refused (UsageError) when the images would not fit in
        this machine's physical memory: sample large sets in batches of seeds. Like :meth:`decode` and ``map_noise``, it leaves G and T in eval mode."""
        n = _check_count(n, self.image_shape)
        return self.decode(self.sample_inputs(n, seed, balanced))

    @torch.no_grad()
    def interpolate(
        self, a: torch.Tensor | int, b: torch.Tensor | int, steps: int = 10, space: str = "noise"
    ) -> torch.Tensor:
        """``steps`` images from ``a`` to ``b`` (endpoints included; ``steps`` >= 2, refused when the images
        would not fit in this machine's physical memory); ``space="noise"``: ``a``, ``b`` are noise vectors
        (noise_dim,), interpolated linearly, then mapped and decoded."""
        steps = _check_count(steps, self.image_shape, "steps", low=2)
        if space != "noise":
            raise UsageError(f"space must be 'noise' for a {self.kind} model, got {space!r:.60}")
        t = torch.linspace(0, 1, steps, dtype=torch.float32)[:, None]
        a, b = (
            _vector("a", a, self.noise_dim, "a noise vector"),
            _vector("b", b, self.noise_dim, "a noise vector"),
        )
        return self.decode(self.generator_input((1 - t) * a + t * b))

    # -- export ------------------------------------------------------------------------------------------
    def _meta(self, **arch: Any) -> dict[str, Any]:
        return {
            "format": EXPORT_FORMAT,
            "kind": self.kind,
            "image_shape": list(self.image_shape),
            "generator": custom_generator.describe(self.G),
            **arch,
            "config": self.config,
            **({} if self.training_data is None else {"training_data": self.training_data}),
            "written_by": __version__,
        }

    def export(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """``(tensors, meta)``: every weight as a flat dict of CPU tensors, and the JSON-able description
        that :meth:`from_export` needs to rebuild the model."""
        raise NotImplementedError


class GLANN(GenerativeModel):
    """GLO generator ``G`` (code -> image), the training ``codes`` (n, latent_dim) on the unit sphere, and the
    IMLE mapping ``T`` (noise -> code), which may be None for a GLO-only model.

    Sampling: ``e ~ N(0, I)`` in ``noise_dim``, ``z = T(e)`` projected to the unit sphere (G was trained on
    sphere codes only), image ``G(z)``. Balanced sampling (:mod:`.balance`; on when the config's
    ``balance_draws`` > 0, the default) keeps each draw with the acceptance of its
    nearest code, ``code_accept`` (N,), computed once by :meth:`calibrate_sampler` and saved with the model.
    With a :attr:`local_spread` > 0 (the config's ``sample_local_spread``; 0.5 for runs trained since
    2026-12-06, 0 for models saved without it) each sample's code then moves along the directions its
    nearest training codes vary in (:mod:`.local_spread`); with a :attr:`spread` > 0 (``sample_spread``; 0
    by default) it then moves by isotropic Gaussian noise. Both project back onto the sphere.

    ``G`` may be any module from codes to images (docs/training.md, "A generator of your own"): its image
    shape is then found by a probe, or taken from ``image_shape`` (C, H, W) when the caller has checked it
    (as :class:`~glann_ext.train.Fit` does).
    """

    kind = "glann"

    def __init__(
        self,
        G: nn.Module,
        codes: torch.Tensor,
        T: MLP | None = None,
        *,
        ops: Ops | str = "fused",
        config: dict[str, Any] | None = None,
        code_accept: torch.Tensor | None = None,
        image_shape: tuple[int, int, int] | None = None,
    ):
        """The model of ``G``, ``codes`` and ``T`` (the class docstring); ``config`` the training config's
        dict (its sampling fields set the samplers), ``code_accept`` the balanced sampler's saved
        acceptances (None: calibrated on first use), ``ops`` the kernels' backend."""
        codes = _checked_codes(G, codes)
        super().__init__(G, ops=ops, config=config, input_dim=codes.shape[1], image_shape=image_shape)
        codes = codes.float()  # G's input and the search's keys are float32
        bad = first_nonfinite_row(codes)
        if bad is not None:  # as a model file's NaN codes are refused: every use of them would give NaN
            raise NonFiniteError(f"codes hold NaN or Inf (first in row {bad})", argument="codes", row=bad)
        if code_accept is not None and code_accept.is_floating_point():
            code_accept = code_accept.float()
        if T is not None and T.out_dim != self.input_dim:
            raise ValueError(f"T must map to G's input of {self.input_dim}, got outputs of {T.out_dim}")
        self.T = T
        self.register_buffer("codes", codes)
        if code_accept is not None:
            _check_accept(code_accept, len(codes))
        self.register_buffer("code_accept", code_accept)
        self.eval()

    @property
    def noise_dim(self) -> int:
        if self.T is None:
            raise UsageError(NO_MAPPING)
        return self.T.in_dim

    @torch.no_grad()
    def map_noise(self, e: torch.Tensor) -> torch.Tensor:
        """Codes on the sphere for float32 noise ``e`` (n, noise_dim): project(T(e))."""
        if self.T is None:
            raise UsageError(NO_MAPPING)
        _check_input("e", e, self.T.in_dim)
        self.T.eval()
        return self.ops.project(self.T(e.to(self.device)).float().contiguous())

    generator_input = map_noise

    # -- balanced sampling (see glann_ext.models.balance) ---------------------------------------------------
    @property
    def balanced(self) -> bool:
        """Whether :meth:`sample` balances by default: the model has ``T`` and its config's ``balance_draws``
        is > 0 (a config without the field, saved before balanced sampling existed, samples plainly)."""
        return self.T is not None and float(self.config.get("balance_draws", 0.0)) > 0

    def set_noise_scale(self, scale: float) -> None:
        """As for every model; the balanced sampler's table is then recounted at the new scale on first use."""
        before = self.noise_scale
        super().set_noise_scale(scale)
        if self.noise_scale != before:
            self.code_accept = None

    def _map_draws(self, e: torch.Tensor) -> torch.Tensor:
        """``map_noise`` of standard-normal draws ``e`` at :attr:`noise_scale` (at 1, exactly ``map_noise``)."""
        return self.map_noise(self._scaled(e))

    def _nearest_code(self, queries: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return self.ops.nn_argmin(queries.contiguous(), codes.contiguous())

    @torch.no_grad()
    def calibrate_sampler(self, refresh: bool = False) -> torch.Tensor:
        """The per-code acceptance (N,) of balanced sampling, computed on first use from the config's
        ``balance_draws`` draws per code (10 where it is 0 or absent), ``balance_quantile`` (0.25) and
        ``seed``, then kept (and saved by :meth:`export`). ``refresh``: compute it anew (after changing ``T``
        or the codes)."""
        if self.code_accept is None or refresh:
            if self.T is None:
                raise UsageError(NO_MAPPING)
            per_code = float(self.config.get("balance_draws", 0.0)) or balance.DEFAULT_DRAWS_PER_CODE
            draws = balance.calibration_draws(len(self.codes), per_code)
            counts = balance.usage_counts(
                self._map_draws, self._nearest_code, self.codes, self.noise_dim, draws,
                int(self.config.get("seed", 0)),
            )  # fmt: skip
            quantile = float(self.config.get("balance_quantile", balance.DEFAULT_QUANTILE))
            self.code_accept = balance.acceptance(counts, quantile).to(self.codes.device)
        return self.code_accept

    # -- the latent spread -------------------------------------------------------------------------------
    @property
    def spread(self) -> float:
        """How far each sample's code moves before it is decoded: the config's ``sample_spread`` (0, none,
        where absent). See :meth:`set_spread`."""
        # checked on every read: a model file's config is untrusted
        return _checked_in_range(
            self.config.get("sample_spread", 0.0), "the model's sample_spread", MAX_SPREAD, zero_ok=True
        )

    def set_spread(self, spread: float) -> None:
        """Sample from now on with each code moved by ``N(0, s^2 I)``, ``s = spread`` times the codes' standard
        deviation per coordinate (noise of norm about ``spread`` for codes spread over the sphere), then
        projected back onto it (0 <= spread <= 4; 0: ``T``'s samples as they are). Kept in :attr:`config`,
        so an exported model samples the same way; balanced sampling is unchanged (it thins ``T``'s draws
        before they move)."""
        self.config["sample_spread"] = _checked_in_range(spread, "spread", MAX_SPREAD, zero_ok=True)

    def _spread_out(self, z: torch.Tensor, seed: int) -> torch.Tensor:
        """``z`` (n, latent_dim) on the sphere moved by the :attr:`spread`'s noise and projected back. The
        noise comes in seeded blocks of :data:`SPREAD_CHUNK` rows, so sample ``i`` moves the same way
        whatever ``n`` is."""
        self._need_codes("a spread > 0")  # its width is the codes' own
        n, d = z.shape
        std = float(self.codes.double().var(0, correction=0).mean().sqrt())
        noise = seeding.block_normal(n, d, seed, "spread", SPREAD_CHUNK)
        return self.ops.project((z + (self.spread * std) * noise.to(z.device, z.dtype)).contiguous())

    @property
    def local_spread(self) -> float:
        """How far each sample moves along its neighbouring codes' directions: the config's
        ``sample_local_spread`` (0, none, where absent). See :meth:`set_local_spread`."""
        # checked on every read: a model file's config is untrusted
        return _checked_in_range(
            self.config.get("sample_local_spread", 0.0),
            "the model's sample_local_spread",
            MAX_SPREAD,
            zero_ok=True,
        )

    @property
    def local_neighbours(self) -> int:
        """How many nearest training codes shape the local spread: the config's ``sample_local_neighbours``
        (8 where absent)."""
        return checked_int(
            "the model's sample_local_neighbours",
            self.config.get("sample_local_neighbours", DEFAULT_LOCAL_NEIGHBOURS),
            2,
            MAX_LOCAL_NEIGHBOURS,
        )

    def set_local_spread(self, spread: float, neighbours: int | None = None) -> None:
        """Sample from now on with each code moved by Gaussian noise whose covariance is ``spread^2`` times
        that of its ``neighbours`` nearest training codes (None: keep :attr:`local_neighbours`; 2 to 256),
        then projected back onto the sphere (0 <= spread <= 4; 0: none). Applied after balanced sampling and
        before the isotropic :attr:`spread`; kept in :attr:`config`, so an exported model samples the same
        way (:mod:`.local_spread`; docs/training.md, "The local spread")."""
        spread = _checked_in_range(spread, "local spread", MAX_SPREAD, zero_ok=True)
        if neighbours is not None:
            neighbours = checked_int("neighbours", neighbours, 2, MAX_LOCAL_NEIGHBOURS)
            self.config["sample_local_neighbours"] = neighbours
        self.config["sample_local_spread"] = spread

    def _moved(self, z: torch.Tensor, seed: int) -> torch.Tensor:
        """``z`` moved by the :attr:`local_spread` and then the :attr:`spread`, each when it is > 0."""
        spread = self.local_spread  # read (and checked) once
        if spread > 0:
            self._need_codes("a local spread > 0")
            offsets = local_spread.local_offsets(z, self.codes, self.local_neighbours, spread, seed)
            z = self.ops.project((z + offsets).contiguous())
        return self._spread_out(z, seed) if self.spread > 0 else z

    @torch.no_grad()
    def sample_inputs(self, n: int, seed: int | None = None, balanced: bool | None = None) -> torch.Tensor:
        """The codes :meth:`sample` decodes (n, latent_dim): ``project(T(e))`` of seeded draws (scaled by
        :attr:`noise_scale`), thinned by balanced sampling when ``balanced`` (None: :attr:`balanced`), then
        moved by the :attr:`local_spread` and the :attr:`spread` when they are > 0."""
        n, seed = _check_count(n, (self.codes.shape[1],)), seed_or_drawn(seed)
        _check_balanced(balanced)
        if not (self.balanced if balanced is None else balanced):
            z = super().sample_inputs(n, seed, balanced=False)  # plain project(T(e))
        else:
            self._need_codes("balanced sampling")
            accept = self.calibrate_sampler()
            z = balance.rejection_sample(
                self._map_draws, self._nearest_code, self.codes, accept, self.noise_dim, n, seed
            )
        return self._moved(z, seed)

    def _need_codes(self, what: str) -> None:
        if len(self.codes) == 0:
            raise UsageError(
                f"{what} needs the training codes, and this model has none (codes of shape (0, d))"
            )

    @torch.no_grad()
    def gaussian_codes(
        self, n: int, seed: int | None = None, fit: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """What :meth:`sample_gaussian` decodes: ``n`` draws of a full-covariance Gaussian fitted to the
        training codes (or the given ``fit = (mean, cov)``, see :func:`fit_gaussian`; ``cov`` positive
        semi-definite), projected to the sphere."""
        n, seed = _check_count(n, (self.codes.shape[1],)), seed_or_drawn(seed)
        mean, chol = self._gaussian_factor(fit)
        eps = seeding.prefix_normal(n, len(mean), seeding.generator(seed, "sample"), torch.float64)
        z = (mean + eps @ chol.T).float()
        return self.ops.project(z.contiguous())

    def _gaussian_factor(self, fit: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean and the Cholesky factor of the (ridged) covariance of ``fit`` (None: the codes' fit), in
        float64 on the CPU, else a UsageError (NonFiniteError for NaN/Inf) naming ``fit``."""
        d = self.codes.shape[1]
        try:
            mean, cov = fit if fit is not None else fit_gaussian(self.codes)
            mean, cov = torch.as_tensor(mean), torch.as_tensor(cov)
        except (TypeError, ValueError, RuntimeError):
            raise UsageError(f"fit must be a pair (mean ({d},), cov ({d}, {d})), got {fit!r:.60}") from None
        if tuple(mean.shape) != (d,) or tuple(cov.shape) != (d, d):
            raise UsageError(
                f"fit must be (mean ({d},), cov ({d}, {d})) like the codes, got {tuple(mean.shape)} and {tuple(cov.shape)}"
            )
        mean, cov = mean.double().cpu(), cov.double().cpu()
        if not bool(torch.isfinite(mean).all() and torch.isfinite(cov).all()):
            raise NonFiniteError("fit holds NaN or Inf values", argument="fit")
        # Cholesky reads one triangle only: an asymmetric cov would be half ignored without a word
        asym = float((cov - cov.T).abs().max()) if d else 0.0
        if asym > 1e-6 * max(float(cov.abs().max()), 1e-12):
            raise UsageError(f"fit's cov must be symmetric, got one with |cov - cov.T| up to {asym:.3g}")
        chol, info = torch.linalg.cholesky_ex(cov + 1e-6 * torch.eye(d, dtype=torch.float64))
        if int(info):
            raise UsageError(
                f"fit's cov must be a positive semi-definite ({d}, {d}) covariance (as fit_gaussian gives), got one "
                f"whose leading minor of order {int(info)} is not positive"
            )
        return mean, chol

    @torch.no_grad()
    def sample_gaussian(
        self, n: int, seed: int | None = None, fit: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """GLO-only baseline: :meth:`gaussian_codes` decoded (``n`` refused as :meth:`sample` refuses it)."""
        n = _check_count(n, self.image_shape)
        return self.decode(self.gaussian_codes(n, seed, fit))

    @torch.no_grad()
    def reconstruct(self, indices: Any) -> torch.Tensor:
        """G(codes[indices]): the model's rendering of training images by dataset index. ``indices``: integers
        in [0, N) (a list, tensor or array; one integer gives one image, (1, C, H, W)) or a bool mask of
        length N (the rows where it is True, in order)."""
        idx = _indices("indices", indices, len(self.codes))
        _check_count(len(idx), self.image_shape, "indices")
        return self.decode(self.codes[idx.to(self.device)])

    @torch.no_grad()
    def interpolate(
        self, a: torch.Tensor | int, b: torch.Tensor | int, steps: int = 10, space: str = "noise"
    ) -> torch.Tensor:
        """``steps`` images from ``a`` to ``b`` (endpoints included).

        ``space="noise"``: ``a``, ``b`` are noise vectors (noise_dim,); linear interpolation in noise space,
        then T and G. ``space="latent"``: ``a``, ``b`` are codes (latent_dim,) or training indices (int);
        spherical interpolation (slerp) along the great circle, so every point stays on the code sphere.
        """
        if space not in ("latent", "noise"):
            raise UsageError(f"space must be 'latent' or 'noise' for a {self.kind} model, got {space!r:.60}")
        if space == "noise":
            return super().interpolate(a, b, steps, space)
        steps = _check_count(steps, self.image_shape, "steps", low=2)
        t = torch.linspace(0, 1, steps, dtype=torch.float32)
        za, zb = (self._latent_endpoint(name, v) for name, v in (("a", a), ("b", b)))
        return self.decode(slerp(za.float(), zb.float(), t))

    def _latent_endpoint(self, name: str, v: Any) -> torch.Tensor:
        """A non-zero finite code (latent_dim,) or a training index (an integer in [0, N)) as a CPU code, else
        a UsageError (NonFiniteError for NaN/Inf) naming ``name``."""
        n, d = self.codes.shape
        index = as_index(v)
        if index is not None:
            if not 0 <= index < n:
                raise UsageError(f"{name} must be a training index in [0, {n}) or a code ({d},), got {index}")
            return self.codes[index].cpu()
        return _direction(name, v, d, "a training index or a code", torch.float32)

    def invert(
        self,
        images: torch.Tensor,
        steps: int = 200,
        lr: float = 0.05,
        restarts: int = INVERT_RESTARTS,
        seed: int = 0,
        progress: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes for new ``images``: G fixed, z optimised with Adam (learning rate ``lr`` > 0) for ``steps``
        steps on the reconstruction loss and re-projected to the sphere after each step, from ``restarts``
        starts; the best is kept for each image. The starts are codes of a pool of at most
        :data:`INVERT_POOL` (2,048) training codes drawn at random (from ``seed``; all of them when there are
        no more): the first restart starts from the pool's code whose reconstruction is nearest to the image
        in pixel space (not the nearest of all the codes when there are more), the others from random codes
        of the pool. Returns (codes (n, latent_dim), reconstructions). ``progress``: a tqdm bar over the
        ``restarts * steps`` steps.

        ``images``: float (n, C, H, W) of the model's :attr:`image_shape`, a tensor or array, in [0, 1] (an
        overshoot of up to :data:`glann_ext.data.datasets.FLOAT_OVERSHOOT`, a resize's ringing, is allowed;
        uint8 pixels in [0, 255] are refused: divide them by 255)."""
        from .losses import ReconstructionLoss

        images = self._checked_images(images)
        steps, restarts = checked_int("steps", steps, 0), checked_int("restarts", restarts, 1)
        seed = checked_seed(seed)
        lr = checked_positive_finite("lr", lr)  # numpy scalars too
        if len(images) == 0:  # nothing to invert
            return self.codes.new_zeros(0, self.codes.shape[1]), images.new_zeros(
                0, *self.image_shape
            ).float()
        self._need_codes("invert")
        trainable = {p: p.requires_grad for p in self.G.parameters()}  # restored as they were on exit
        self.G.eval().requires_grad_(False)
        target = images.to(self.device).float()
        loss_fn = ReconstructionLoss(
            self.ops, self.config.get("l2_weight", 0.0), lap_weights=self.config.get("lap_weights", "paper")
        )
        from tqdm import tqdm

        bar = tqdm(total=restarts * steps, desc="invert", unit="step", disable=not progress, leave=False)
        try:
            best_z = self._best_of_restarts(target, loss_fn, steps, lr, restarts, seed, bar.update)
        finally:
            bar.close()
            for p, flag in trainable.items():
                p.requires_grad_(flag)
        return best_z, self.decode(best_z)

    def _best_of_restarts(
        self, target: torch.Tensor, loss_fn, steps: int, lr: float, restarts: int, seed: int, on_step
    ) -> torch.Tensor:
        """:meth:`invert`'s search: for each image the best of ``restarts`` fits from codes of a seeded pool."""
        g = seeding.generator(seed, "invert")
        pool = self.codes[torch.randperm(len(self.codes), generator=g)[:INVERT_POOL].to(self.device)]
        recs = self.decode(pool).reshape(len(pool), -1)
        best_z, best_loss = None, None
        for r in range(restarts):
            start = (
                self.ops.nn_argmin(target.reshape(len(target), -1), recs)
                if r == 0
                else torch.randint(len(pool), (len(target),), generator=g).to(self.device)
            )
            z = self._fit_codes(pool[start].clone(), target, loss_fn, steps, lr, on_step)
            with torch.no_grad():
                per = loss_fn.lap(self.G(z).float(), target, "none")
            if best_z is None:
                best_z, best_loss = z, per
            else:
                better = per < best_loss
                best_z[better], best_loss = z[better], torch.minimum(per, best_loss)
        return best_z

    def _checked_images(self, images: Any) -> torch.Tensor:
        """:meth:`invert`'s ``images`` as a tensor, else a UsageError (NonFiniteError for NaN/Inf) naming it."""
        from glann_ext.data.datasets import checked_image_batch

        return checked_image_batch("images", images, self.image_shape)

    def _fit_codes(
        self,
        z: torch.Tensor,
        target: torch.Tensor,
        loss_fn,
        steps: int,
        lr: float,
        on_step: Callable[[], Any],
    ) -> torch.Tensor:
        """``steps`` Adam steps on codes ``z`` against ``target`` with G fixed, re-projected after each (and
        ``on_step()`` called)."""
        z.requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            loss = loss_fn(self.G(z), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                z.copy_(self.ops.project(z.detach().contiguous()))
            on_step()
        return z.detach()

    # -- export ------------------------------------------------------------------------------------------
    def export(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {**_prefixed("G", self.G.state_dict()), "codes": self.codes.detach().cpu().contiguous()}
        if self.T is not None:
            tensors.update(_prefixed("T", self.T.state_dict()))
        if self.code_accept is not None:
            tensors["code_accept"] = self.code_accept.detach().cpu().contiguous()
        return tensors, self._meta(mapping=None if self.T is None else self.T.hparams())

    @classmethod
    def from_export(
        cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], *, ops: Ops | str = "fused",
        device: str | torch.device = "cpu", generator: nn.Module | None = None,
    ) -> GLANN:  # fmt: skip
        G = _exported_generator(tensors, meta, generator)
        T = None
        if meta.get("mapping") is not None:
            check_layer_count(meta["mapping"], ("layers",), _unprefixed("T", tensors), "T")
            T = built_to_fit(lambda: MLP(**meta["mapping"]), _unprefixed("T", tensors), "T")
        model = cls(
            G, tensors["codes"], T, ops=ops, config=meta.get("config"), code_accept=tensors.get("code_accept")
        )  # fmt: skip
        check_unit_codes(model.codes)  # after the constructor's checks of their shape
        return model.to(device).eval()


UNIT_NORM_TOLERANCE = 1e-4
"""How far from 1 a stored code's norm may lie: training projects every code after every step, which leaves
float32 norms within a few 1e-7 of 1."""


def _checked_codes(G: nn.Module, codes: Any) -> torch.Tensor:
    """GLANN's ``codes`` as a floating (N, d) tensor, ``d`` a DCGANGenerator's ``latent_dim`` (a custom
    generator takes the codes' width), else an error naming them."""
    if isinstance(codes, np.ndarray):
        codes = torch.from_numpy(codes)
    width = "latent_dim" if custom_generator.is_custom(G) else G.latent_dim
    if not isinstance(codes, torch.Tensor):
        raise UsageError(f"codes must be a floating (N, {width}) tensor, got {type(codes).__name__}")
    wrong_width = isinstance(width, int) and codes.dim() == 2 and codes.shape[1] != width
    if codes.dim() != 2 or not codes.dtype.is_floating_point or wrong_width or codes.shape[1] < 1:
        raise ValueError(
            f"codes must be floating (N, {width}) like G's input, got {str(codes.dtype)[6:]} {tuple(codes.shape)}"
        )
    return codes


def check_unit_codes(codes: torch.Tensor) -> None:
    """Stored training codes must lie on the unit sphere, as training leaves them: balanced sampling, the
    spread and latent interpolation measure ``T``'s projected samples against them, so codes off the sphere
    (a forged or damaged file) would give wrong samples without an error."""
    block = 1 << 16  # rows at a time: a float64 copy of a whole table is twice its size
    for start in range(0, len(codes), block):
        off = (codes[start : start + block].double().norm(dim=1) - 1).abs()
        bad = torch.nonzero(~(off <= UNIT_NORM_TOLERANCE))
        if len(bad):
            row = start + int(bad[0])
            raise ValueError(
                f"codes must lie on the unit sphere (norms within {UNIT_NORM_TOLERANCE:g} of 1), got norm "
                f"{float(codes[row].double().norm()):.6g} at row {row}"
            )


def _check_accept(accept: torch.Tensor, n_codes: int) -> None:
    """A ``code_accept`` table must be (n_codes,) float with every entry in (0, 1]: a zero would let
    rejection sampling run forever (model files are untrusted)."""
    if accept.shape != (n_codes,) or not accept.is_floating_point():
        raise ValueError(
            f"code_accept must be a float tensor of shape ({n_codes},), got {accept.dtype} {tuple(accept.shape)}"
        )
    if not bool(((accept > 0) & (accept <= 1)).all()):
        raise ValueError("code_accept must lie in (0, 1] for every code")
    # calibration with at most MAX_BALANCE_DRAWS per code gives no smaller value; tiny ones make sampling hang
    low = float(torch.tensor(balance.min_acceptance(n_codes, MAX_BALANCE_DRAWS), dtype=accept.dtype))
    if float(accept.min()) < low:
        raise ValueError(
            f"code_accept must be at least {low:.3g} for {n_codes} codes, got {float(accept.min()):.3g}"
        )


class PixelIMLE(GenerativeModel):
    """The original IMLE (Li & Malik 2018): ``G`` maps noise (n, noise_dim) straight to images."""

    kind = "pixel_imle"

    def __init__(self, G: DCGANGenerator, *, ops: Ops | str = "fused", config: dict[str, Any] | None = None):
        if custom_generator.is_custom(G):  # a model file rebuilds it; fit_imle trains any generator
            raise UsageError(
                f"PixelIMLE's G must be the package's DCGANGenerator, got {type(G).__name__}; IMLE of a "
                "generator of your own: glann_ext.train.fit_imle"
            )
        super().__init__(G, ops=ops, config=config)
        self.eval()

    @property
    def noise_dim(self) -> int:
        return self.input_dim

    def generator_input(self, e: torch.Tensor) -> torch.Tensor:
        return e

    def export(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return _prefixed("G", self.G.state_dict()), self._meta()

    @classmethod
    def from_export(
        cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], *, ops: Ops | str = "fused",
        device: str | torch.device = "cpu", generator: nn.Module | None = None,
    ) -> PixelIMLE:  # fmt: skip
        G = _exported_generator(tensors, meta, generator)
        return cls(G, ops=ops, config=meta.get("config")).to(device).eval()


def _exported_generator(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], generator: nn.Module | None = None
) -> nn.Module:
    """G with an export's "G."-prefixed tensors: loaded into ``generator`` when the caller gives one (a
    custom generator's file needs it), else rebuilt from the export's hyper-parameters."""
    if generator is not None:
        return custom_generator.load_weights(generator, _unprefixed("G", tensors))
    name = custom_generator.custom_name(meta.get("generator"))
    if name is not None:
        raise custom_generator.GeneratorError(custom_generator.needs_generator(name))
    check_layer_count(meta.get("generator"), ("depth",), _unprefixed("G", tensors), "G")
    return built_to_fit(lambda: DCGANGenerator(**meta["generator"]), _unprefixed("G", tensors), "G")


def built_to_fit(make: Callable[[], M], state: dict[str, torch.Tensor], name: str) -> M:
    """``make()`` with ``state`` loaded, built for real only once a build on the meta device (no memory) has
    exactly ``state``'s names and shapes: a model file's description is untrusted, and a forged one must not
    make us allocate a network larger than the file itself (``ValueError`` naming the first difference)."""
    with torch.device("meta"):
        wanted = {k: tuple(v.shape) for k, v in make().state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    custom_generator.same_tensors(wanted, found, name, "the description asks for")
    module = make()
    module.load_state_dict(state)
    return module


MODEL_KINDS: dict[str, type[GenerativeModel]] = {GLANN.kind: GLANN, PixelIMLE.kind: PixelIMLE}


def model_from_export(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], *, ops: Ops | str | None = None,
    device: str | torch.device = "cpu", generator: nn.Module | None = None,
) -> GLANN | PixelIMLE:  # fmt: skip
    """The model an :meth:`~GenerativeModel.export` describes (its ``kind`` picks the class). ``ops``
    overrides the backend the training config names. ``generator``: the module to load G's weights into
    (needed for a model of a custom generator, whose file names its class but cannot rebuild it; its
    tensors' names and shapes, and the shape of its images, must be the file's)."""
    if not isinstance(meta, dict):
        raise TypeError(f"the description must be a JSON object, got {type(meta).__name__} {meta!r:.60}")
    kind = meta.get("kind")
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(MODEL_KINDS)}")
    if meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"format must be {EXPORT_FORMAT}, got {meta.get('format')!r:.40}")
    config = check_sampling_config(meta.get("config"))
    own = ("G.",) if kind == PixelIMLE.kind else ("G.", "T.", "codes", "code_accept")
    custom = custom_generator.custom_name(meta.get("generator")) is not None
    for key, t in tensors.items():
        if not key.startswith(own) or (key.startswith(("codes", "code_accept")) and key not in own):
            raise ValueError(f"tensor {key} is not part of a {kind} model")
        # the package's networks hold float32 weights and BatchNorm's int64 step count only; a generator of
        # the user's own may hold integer buffers of its own
        counter = key.endswith("num_batches_tracked")
        own_buffer = key.startswith("G.") and custom and not t.is_floating_point()
        if not own_buffer and t.dtype != (torch.int64 if counter else torch.float32):
            want = "int64" if counter else "float32"
            raise ValueError(f"tensor {key} has dtype {str(t.dtype)[6:]}, expected {want}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"tensor {key} holds NaN or Inf values")
        if key.endswith("running_var") and bool((t < 0).any()):  # BatchNorm takes its square root: NaN images
            raise ValueError(f"tensor {key} holds negative variances")
    if "codes" in tensors and (tensors["codes"].dim() != 2 or tensors["codes"].shape[0] < 1):
        raise ValueError(f"codes must be (N >= 1, d), got shape {tuple(tensors['codes'].shape)}")
    record = checked_record(meta.get("training_data"))
    ops = ops or config.get("ops", "fused")
    model = MODEL_KINDS[kind].from_export(tensors, meta, ops=ops, device=device, generator=generator)
    if generator is not None and list(model.image_shape) != meta.get("image_shape"):
        raise custom_generator.GeneratorError(
            f"the generator makes images of shape {model.image_shape}, the file's model made "
            f"{meta.get('image_shape')!r:.60}"
        )
    if "image_shape" in meta and list(model.image_shape) != meta["image_shape"]:  # a description that lies
        raise ValueError(f"image_shape {meta['image_shape']!r:.60} is not G's {list(model.image_shape)}")
    model.training_data = record
    written_by = meta.get("written_by")  # glann_ext's version; files of 0.3.0 and before say nothing
    model.written_by = written_by if isinstance(written_by, str) and len(written_by) <= 40 else None
    return model

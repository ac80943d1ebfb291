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

import torch
from torch import nn

from glann_ext import seeding
from glann_ext.backend import Ops, get_ops
from glann_ext.errors import UsageError

from . import balance
from .generator import DCGANGenerator
from .mlp import MLP

M = TypeVar("M", bound=nn.Module)

EXPORT_FORMAT = 1
# the widest sampling noise accepted (standard deviations; T trains on N(0, I))
MAX_NOISE_SCALE = 10.0
# the widest latent spread accepted (GLANN.set_spread: noise of about this norm on unit-sphere codes; 4 is
# already nearly a uniform draw on the sphere)
MAX_SPREAD = 4.0
# rows of the spread's noise drawn per seeded block, so that the first k samples of n are the samples of k
SPREAD_CHUNK = 4_096
# the most calibration draws per code a model file may ask for (TrainConfig's default is 10): a model file is
# untrusted, and balance_draws = 1e12 would calibrate for days
MAX_BALANCE_DRAWS = 10_000.0
NO_MAPPING = (
    "this model has no IMLE mapping T (a GLO-only run: train the IMLE stage with `glann train --out RUN`, or "
    "sample the GLO + Gaussian baseline: `--sampler gaussian`, sample_gaussian in Python)"
)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between unit vectors ``a`` and ``b`` (D,) at fractions ``t`` (S,) -> (S, D),
    computed in float64 and returned in ``a``'s dtype; every point has unit norm. Falls back to normalised
    lerp when they are parallel; antipodal endpoints have no unique great circle, so the path goes through
    ``u``, the basis vector least aligned with ``a`` made orthogonal to it (deterministic)."""
    dtype = a.dtype
    a, b, t = a.double(), b.double(), t.double()[:, None]
    a, b = a / a.norm(), b / b.norm()
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
    return (out / out.norm(dim=1, keepdim=True)).to(dtype)


def fit_gaussian(codes: torch.Tensor, world: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, covariance) in float64 of the code table. The rows may be sharded over the ranks of ``world``
    (a :class:`~glann_ext.train.world.World`; collective then: every rank calls it and gets the statistics
    of all rows)."""
    z = codes.detach().double().cpu()
    if z.dim() != 2:
        raise ValueError(f"codes must be (N, d), got shape {tuple(z.shape)}")
    d = z.shape[1]
    sums = torch.cat([z.sum(0), (z.T @ z).reshape(-1), torch.tensor([float(len(z))], dtype=torch.float64)])
    if world is not None:
        sums = world.sum(sums)
    n = sums[-1]
    if n < 1:
        raise ValueError(f"codes must hold at least one row to fit a Gaussian, got shape {tuple(z.shape)}")
    mean = sums[:d] / n
    cov = (sums[d:-1].reshape(d, d) - n * torch.outer(mean, mean)) / (n - 1).clamp_min(1)
    return mean, cov


def _checked_in_range(value: Any, name: str, high: float, *, zero_ok: bool) -> float:
    """``value`` as a number in [0, ``high``] (``zero_ok``) or (0, ``high``], or a UsageError naming ``name``
    (a latent spread may be 0; a noise scale may not)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and (value >= 0 if zero_ok else value > 0) and value <= high):
        raise UsageError(
            f"{name} must be a number in {'[' if zero_ok else '('}0, {high:g}], got {value!r:.60}"
        )
    return float(value)


def _check_count(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise UsageError(f"n must be an integer >= 0, got {n!r}")


def _vector(name: str, v: Any, width: int, what: str) -> torch.Tensor:
    """``v`` (a tensor or array of shape (width,)) as a float32 CPU vector, else a UsageError."""
    ok = isinstance(v, (torch.Tensor, list, tuple)) or hasattr(v, "__array__")
    try:
        t = torch.as_tensor(v) if ok else None
    except (TypeError, ValueError, RuntimeError):
        t = None
    if (
        t is None
        or t.dim() != 1
        or t.shape[0] != width
        or not (t.is_floating_point() or t.dtype == torch.int64)
    ):
        got = f"{str(t.dtype)[6:]} {tuple(t.shape)}" if t is not None else repr(v)[:40]
        raise UsageError(f"{name} must be {what} of shape ({width},), got {got}")
    return t.detach().cpu().float()


def _check_input(name: str, x: Any, width: int) -> None:
    """``x`` must be a float32 (n, ``width``) tensor (the networks' dtype), else a one-line UsageError."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != width or x.dtype != torch.float32:
        got = f"{str(x.dtype)[6:]} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise UsageError(f"{name} must be a float32 (n, {width}) tensor, got {got}")


def _check_number(config: dict[str, Any], key: str, ok: Callable[[float], bool], rule: str) -> None:
    value = config.get(key)
    if key in config and (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not ok(value)
    ):
        raise ValueError(f"config.{key} must be {rule}, got {value!r:.60}")


def check_sampling_config(config: Any) -> dict[str, Any]:
    """A model file's ``config`` (untrusted) with the fields sampling reads checked: ``sample_noise_scale``
    in (0, MAX_NOISE_SCALE], ``sample_spread`` in [0, MAX_SPREAD], ``balance_draws`` in [0,
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
    return {f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in state.items()}


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    p = prefix + "."
    return {k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)}


class GenerativeModel(nn.Module):
    """What every model shares: an image generator ``G`` (input -> image in [0, 1]), the backend of its
    kernels, the training config it came from, seeded noise, decoding, sampling and noise interpolation."""

    kind: ClassVar[str]

    def __init__(self, G: DCGANGenerator, *, ops: Ops | str = "fused", config: dict[str, Any] | None = None):
        super().__init__()
        self.G = G
        self.ops = get_ops(ops) if isinstance(ops, str) else ops
        self.config: dict[str, Any] = dict(config or {})

    @property
    def device(self) -> torch.device:
        return next(self.G.parameters()).device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.G.channels, self.G.image_size, self.G.image_size)

    @property
    def noise_dim(self) -> int:
        raise NotImplementedError

    def noise(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` standard-normal noise vectors (n, noise_dim) on the CPU; the same seed gives the same noise,
        and the first ``k`` of them whatever ``n >= k`` is."""
        return seeding.prefix_normal(n, self.noise_dim, seeding.generator(seed, "sample"))

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Images ``G(z)`` in eval mode, clamped to [0, 1], for float32 inputs ``z`` (n, G.latent_dim)."""
        _check_input("z", z, self.G.latent_dim)
        self.G.eval()
        outs = [self.G(c.to(self.device)).float().clamp(0, 1) for c in z.split(batch_size)]
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
    def sample_inputs(self, n: int, seed: int = 0, balanced: bool | None = None) -> torch.Tensor:
        """What :meth:`sample` decodes: ``generator_input`` of ``n`` seeded noise vectors (at
        :attr:`noise_scale`). ``balanced``:
        balanced sampling (see :class:`GLANN`); a model without training codes has only plain sampling, so
        ``balanced=False`` and None give it and True is refused."""
        _check_count(n)
        if balanced:
            raise UsageError(f"balanced sampling needs training codes; a {self.kind} model has none")
        return self.generator_input(self._scaled(self.noise(n, seed)))

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, balanced: bool | None = None) -> torch.Tensor:
        """``n`` samples, float32 (n, C, H, W) in [0, 1]; the same seed gives the same images. ``balanced``:
        balanced sampling on or off (None: the model's setting). Like :meth:`decode` and ``map_noise``, it
        leaves G and T in eval mode."""
        return self.decode(self.sample_inputs(n, seed, balanced))

    @torch.no_grad()
    def interpolate(
        self, a: torch.Tensor | int, b: torch.Tensor | int, steps: int = 8, space: str = "noise"
    ) -> torch.Tensor:
        """``steps`` images from ``a`` to ``b`` (endpoints included); ``space="noise"``: ``a``, ``b`` are noise
        vectors (noise_dim,), interpolated linearly, then mapped and decoded."""
        if steps < 2:
            raise UsageError(f"steps must be >= 2, got {steps}")
        if space != "noise":
            raise UsageError(f"space must be 'noise' for a {self.kind} model, got {space!r}")
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
            "generator": self.G.hparams(),
            **arch,
            "config": self.config,
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
    With a :attr:`spread` > 0 (the config's ``sample_spread``; 0 by default) each sample's code then moves
    by isotropic Gaussian noise and is projected back onto the sphere: more mixing and recall, less fidelity.
    """

    kind = "glann"

    def __init__(
        self,
        G: DCGANGenerator,
        codes: torch.Tensor,
        T: MLP | None = None,
        *,
        ops: Ops | str = "fused",
        config: dict[str, Any] | None = None,
        code_accept: torch.Tensor | None = None,
    ):
        super().__init__(G, ops=ops, config=config)
        if codes.dim() != 2 or not codes.dtype.is_floating_point or codes.shape[1] != G.latent_dim:
            raise ValueError(
                f"codes must be floating (N, {G.latent_dim}) like G's input, got {str(codes.dtype)[6:]} "
                f"{tuple(codes.shape)}"
            )
        codes = codes.float()  # G's input and the search's keys are float32
        if code_accept is not None and code_accept.is_floating_point():
            code_accept = code_accept.float()
        if T is not None and T.out_dim != G.latent_dim:
            raise ValueError(f"T must map to G's input of {G.latent_dim}, got outputs of {T.out_dim}")
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
        n, d = z.shape
        std = float(self.codes.double().var(0, correction=0).mean().sqrt())
        blocks = [
            torch.randn(SPREAD_CHUNK, d, generator=seeding.generator(seed, "spread", block=b))
            for b in range(-(-n // SPREAD_CHUNK))
        ]
        noise = torch.cat(blocks)[:n] if blocks else z.new_zeros(0, d)
        return self.ops.project((z + (self.spread * std) * noise.to(z.device, z.dtype)).contiguous())

    @torch.no_grad()
    def sample_inputs(self, n: int, seed: int = 0, balanced: bool | None = None) -> torch.Tensor:
        """The codes :meth:`sample` decodes (n, latent_dim): ``project(T(e))`` of seeded draws (scaled by
        :attr:`noise_scale`), thinned by balanced sampling when ``balanced`` (None: :attr:`balanced`), then
        moved by the :attr:`spread` when it is > 0."""
        _check_count(n)
        if not (self.balanced if balanced is None else balanced):
            z = super().sample_inputs(n, seed, balanced=False)  # plain project(T(e)), the check of n
        else:
            accept = self.calibrate_sampler()
            z = balance.rejection_sample(
                self._map_draws, self._nearest_code, self.codes, accept, self.noise_dim, n, seed
            )
        return self._spread_out(z, seed) if self.spread > 0 else z

    @torch.no_grad()
    def gaussian_codes(
        self, n: int, seed: int = 0, fit: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """What :meth:`sample_gaussian` decodes: ``n`` draws of a full-covariance Gaussian fitted to the
        training codes (or the given ``fit = (mean, cov)``, see :func:`fit_gaussian`), projected to the sphere."""
        _check_count(n)
        mean, cov = fit if fit is not None else fit_gaussian(self.codes)
        mean, cov = torch.as_tensor(mean), torch.as_tensor(cov)
        d = self.codes.shape[1]
        if tuple(mean.shape) != (d,) or tuple(cov.shape) != (d, d):
            raise UsageError(
                f"fit must be (mean ({d},), cov ({d}, {d})) like the codes, got {tuple(mean.shape)} and {tuple(cov.shape)}"
            )
        mean, cov = mean.double().cpu(), cov.double().cpu()
        chol = torch.linalg.cholesky(cov + 1e-6 * torch.eye(d, dtype=torch.float64))
        eps = seeding.prefix_normal(n, d, seeding.generator(seed, "sample"), torch.float64)
        z = (mean + eps @ chol.T).float()
        return self.ops.project(z.contiguous())

    @torch.no_grad()
    def sample_gaussian(
        self, n: int, seed: int = 0, fit: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """GLO-only baseline: :meth:`gaussian_codes` decoded."""
        return self.decode(self.gaussian_codes(n, seed, fit))

    @torch.no_grad()
    def reconstruct(self, indices: torch.Tensor | list[int]) -> torch.Tensor:
        """G(codes[indices]): the model's rendering of training images by dataset index."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        if idx.numel() and not (int(idx.min()) >= 0 and int(idx.max()) < len(self.codes)):
            raise UsageError(
                f"indices must lie in [0, {len(self.codes)}), got values in [{int(idx.min())}, {int(idx.max())}]"
            )
        return self.decode(self.codes[idx.to(self.device)])

    @torch.no_grad()
    def interpolate(
        self, a: torch.Tensor | int, b: torch.Tensor | int, steps: int = 8, space: str = "noise"
    ) -> torch.Tensor:
        """``steps`` images from ``a`` to ``b`` (endpoints included).

        ``space="noise"``: ``a``, ``b`` are noise vectors (noise_dim,); linear interpolation in noise space,
        then T and G. ``space="latent"``: ``a``, ``b`` are codes (latent_dim,) or training indices (int);
        spherical interpolation (slerp) along the great circle, so every point stays on the code sphere.
        """
        if space != "latent":
            return super().interpolate(a, b, steps, space)
        if steps < 2:
            raise UsageError(f"steps must be >= 2, got {steps}")
        t = torch.linspace(0, 1, steps, dtype=torch.float32)
        za, zb = (self._latent_endpoint(name, v) for name, v in (("a", a), ("b", b)))
        return self.decode(slerp(za.float(), zb.float(), t))

    def _latent_endpoint(self, name: str, v: Any) -> torch.Tensor:
        """A code (latent_dim,) or a training index (int in [0, N)) as a CPU code, else a UsageError."""
        n, d = self.codes.shape
        if isinstance(v, int) and not isinstance(v, bool):
            if not 0 <= v < n:
                raise UsageError(f"{name} must be a training index in [0, {n}) or a code ({d},), got {v}")
            return self.codes[v].cpu()
        return _vector(name, v, d, "a training index or a code")

    def invert(
        self, images: torch.Tensor, steps: int = 200, lr: float = 0.05, restarts: int = 4, seed: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes for new ``images`` (n, C, H, W) in [0, 1]: G fixed, z optimised with Adam on the
        reconstruction loss and re-projected to the sphere after each step. The first restart starts from
        the training code whose reconstruction is nearest in pixel space, the others from random ones; the
        best is kept. Returns (codes (n, latent_dim), reconstructions)."""
        from .losses import ReconstructionLoss

        if images.dim() != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise UsageError(f"images must be shaped (n, {', '.join(map(str, self.image_shape))}), "
                             f"got {tuple(images.shape)}")  # fmt: skip
        if steps < 0 or restarts < 1:
            raise UsageError(f"invert needs steps >= 0 and restarts >= 1, got {steps} and {restarts}")
        if len(images) == 0:  # nothing to invert
            return self.codes.new_zeros(0, self.codes.shape[1]), images.new_zeros(
                0, *self.image_shape
            ).float()
        trainable = {p: p.requires_grad for p in self.G.parameters()}  # restored as they were on exit
        self.G.eval().requires_grad_(False)
        target = images.to(self.device).float()
        loss_fn = ReconstructionLoss(
            self.ops, self.config.get("l2_weight", 0.0), lap_weights=self.config.get("lap_weights", "paper")
        )
        g = seeding.generator(seed, "invert")
        pool = self.codes[torch.randperm(len(self.codes), generator=g)[:2048].to(self.device)]
        recs = self.decode(pool).reshape(len(pool), -1)
        best_z, best_loss = None, None
        try:
            for r in range(restarts):
                start = (
                    self.ops.nn_argmin(target.reshape(len(target), -1), recs)
                    if r == 0
                    else torch.randint(len(pool), (len(target),), generator=g).to(self.device)
                )
                z = self._fit_codes(pool[start].clone(), target, loss_fn, steps, lr)
                with torch.no_grad():
                    per = loss_fn.lap(self.G(z).float(), target, "none")
                if best_z is None:
                    best_z, best_loss = z, per
                else:
                    better = per < best_loss
                    best_z[better], best_loss = z[better], torch.minimum(per, best_loss)
        finally:
            for p, flag in trainable.items():
                p.requires_grad_(flag)
        return best_z, self.decode(best_z)

    def _fit_codes(
        self, z: torch.Tensor, target: torch.Tensor, loss_fn, steps: int, lr: float
    ) -> torch.Tensor:
        """``steps`` Adam steps on codes ``z`` against ``target`` with G fixed, re-projected after each."""
        z.requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            loss = loss_fn(self.G(z), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                z.copy_(self.ops.project(z.detach().contiguous()))
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
        device: str | torch.device = "cpu",
    ) -> GLANN:  # fmt: skip
        G = _exported_generator(tensors, meta)
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


def check_unit_codes(codes: torch.Tensor) -> None:
    """Stored training codes must lie on the unit sphere, as training leaves them: balanced sampling, the
    spread and latent interpolation measure ``T``'s projected samples against them, so codes off the sphere
    (a forged or damaged file) would give wrong samples without an error."""
    off = (codes.double().norm(dim=1) - 1).abs()
    bad = torch.nonzero(~(off <= UNIT_NORM_TOLERANCE))
    if len(bad):
        row = int(bad[0])
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
        super().__init__(G, ops=ops, config=config)
        self.eval()

    @property
    def noise_dim(self) -> int:
        return self.G.latent_dim

    def generator_input(self, e: torch.Tensor) -> torch.Tensor:
        return e

    def export(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return _prefixed("G", self.G.state_dict()), self._meta()

    @classmethod
    def from_export(
        cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], *, ops: Ops | str = "fused",
        device: str | torch.device = "cpu",
    ) -> PixelIMLE:  # fmt: skip
        G = _exported_generator(tensors, meta)
        return cls(G, ops=ops, config=meta.get("config")).to(device).eval()


def _exported_generator(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> DCGANGenerator:
    """G rebuilt from an export's hyper-parameters and its "G."-prefixed tensors."""
    check_layer_count(meta.get("generator"), ("depth",), _unprefixed("G", tensors), "G")
    return built_to_fit(lambda: DCGANGenerator(**meta["generator"]), _unprefixed("G", tensors), "G")


def built_to_fit(make: Callable[[], M], state: dict[str, torch.Tensor], name: str) -> M:
    """``make()`` with ``state`` loaded, built for real only once a build on the meta device (no memory) has
    exactly ``state``'s names and shapes: a model file's description is untrusted, and a forged one must not
    make us allocate a network larger than the file itself (``ValueError`` naming the first difference)."""
    with torch.device("meta"):
        wanted = {k: tuple(v.shape) for k, v in make().state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if wanted != found:
        key = min(wanted.keys() ^ found.keys() or {k for k in wanted if wanted[k] != found[k]})
        raise ValueError(
            f"{name}.{key}: the description asks for {wanted.get(key, 'no such tensor')}, the file holds "
            f"{found.get(key, 'none')}"
        )
    module = make()
    module.load_state_dict(state)
    return module


MODEL_KINDS: dict[str, type[GenerativeModel]] = {GLANN.kind: GLANN, PixelIMLE.kind: PixelIMLE}


def model_from_export(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], *, ops: Ops | str | None = None,
    device: str | torch.device = "cpu",
) -> GLANN | PixelIMLE:  # fmt: skip
    """The model an :meth:`~GenerativeModel.export` describes (its ``kind`` picks the class). ``ops``
    overrides the backend the training config names."""
    if not isinstance(meta, dict):
        raise TypeError(f"the description must be a JSON object, got {type(meta).__name__} {meta!r:.60}")
    kind = meta.get("kind")
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(MODEL_KINDS)}")
    if meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"format must be {EXPORT_FORMAT}, got {meta.get('format')!r:.40}")
    config = check_sampling_config(meta.get("config"))
    own = ("G.",) if kind == PixelIMLE.kind else ("G.", "T.", "codes", "code_accept")
    for key, t in tensors.items():
        if not key.startswith(own) or (key.startswith(("codes", "code_accept")) and key not in own):
            raise ValueError(f"tensor {key} is not part of a {kind} model")
        if t.is_floating_point() and t.dtype != torch.float32:
            raise ValueError(f"tensor {key} has dtype {str(t.dtype)[6:]}, expected float32")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"tensor {key} holds NaN or Inf values")
        if key.endswith("running_var") and bool((t < 0).any()):  # BatchNorm takes its square root: NaN images
            raise ValueError(f"tensor {key} holds negative variances")
    if "codes" in tensors and (tensors["codes"].dim() != 2 or tensors["codes"].shape[0] < 1):
        raise ValueError(f"codes must be (N >= 1, d), got shape {tuple(tensors['codes'].shape)}")
    ops = ops or config.get("ops", "fused")
    return MODEL_KINDS[kind].from_export(tensors, meta, ops=ops, device=device)

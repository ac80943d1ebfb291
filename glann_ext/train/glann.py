"""The trained GLANN model: generator G, code table, mapping T; sampling, interpolation, inversion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from glann_ext.models import MLP, DCGANGenerator

from . import seeding
from .backend import Ops, get_ops
from .config import TrainConfig
from .world import World


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between unit vectors ``a`` and ``b`` (D,) at fractions ``t`` (S,) -> (S, D).
    Falls back to normalised lerp when they are (anti)parallel."""
    a, b = a / a.norm(), b / b.norm()
    omega = torch.arccos((a * b).sum().clamp(-1 + 1e-7, 1 - 1e-7))
    t = t[:, None]
    if omega.abs() < 1e-4:
        out = (1 - t) * a + t * b
        return out / out.norm(dim=1, keepdim=True)
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def fit_gaussian(codes: torch.Tensor, world: World | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, covariance) in float64 of the code table, whose rows may be sharded over ``world``'s ranks
    (collective then: every rank calls it and gets the statistics of all rows)."""
    world = world or World()
    z = codes.detach().double().cpu()
    d = z.shape[1]
    sums = world.sum(
        torch.cat([z.sum(0), (z.T @ z).reshape(-1), torch.tensor([float(len(z))], dtype=torch.float64)])
    )
    n = sums[-1]
    mean = sums[:d] / n
    cov = (sums[d:-1].reshape(d, d) - n * torch.outer(mean, mean)) / (n - 1).clamp_min(1)
    return mean, cov


class GLANN(nn.Module):
    """GLO generator ``G`` (code -> image in [0, 1]), the training codes, and the IMLE mapping ``T``
    (noise -> code). Without ``T`` only the Gaussian baseline sampler and reconstructions are available.

    Sampling: ``e ~ N(0, I)`` in ``noise_dim``, ``z = T(e)`` projected to the unit sphere (G was trained on
    sphere codes only), image ``G(z)``. Images are float32 (n, C, H, W) in [0, 1].
    """

    def __init__(
        self,
        G: DCGANGenerator,
        codes: torch.Tensor,
        T: nn.Module | None,
        cfg: TrainConfig,
        ops: Ops | None = None,
    ):
        super().__init__()
        self.G, self.T, self.cfg = G, T, cfg
        self.register_buffer("codes", codes)
        self.ops = ops or get_ops(cfg.ops)
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.codes.device

    # -- generation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Images G(z) for codes ``z`` (n, latent_dim) in eval mode, in [0, 1]."""
        self.G.eval()
        outs = [self.G(c.to(self.device)).float().clamp(0, 1) for c in z.split(batch_size)]
        return (
            torch.cat(outs) if outs else z.new_zeros(0, self.G.channels, self.G.image_size, self.G.image_size)
        )

    @torch.no_grad()
    def map_noise(self, e: torch.Tensor) -> torch.Tensor:
        """Codes on the sphere for noise ``e`` (n, noise_dim): project(T(e))."""
        if self.T is None:
            raise RuntimeError("this model has no IMLE mapping T (train the IMLE stage first)")
        self.T.eval()
        return self.ops.project(self.T(e.to(self.device)).float().contiguous())

    def noise(self, n: int, seed: int = 0) -> torch.Tensor:
        return torch.randn(n, self.cfg.noise_dim, generator=seeding.generator(seed, "sample"))

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` GLANN samples, float32 (n, C, H, W) in [0, 1]; the same seed gives the same images."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if self.cfg.imle_space == "pixel":  # the original IMLE: G maps noise straight to images
            return self.decode(self.noise(n, seed))
        return self.decode(self.map_noise(self.noise(n, seed)))

    @torch.no_grad()
    def sample_gaussian(
        self, n: int, seed: int = 0, fit: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """GLO-only baseline: codes from a full-covariance Gaussian fitted to the training codes (or the
        given ``fit = (mean, cov)``, see :func:`fit_gaussian`), projected to the sphere, decoded."""
        mean, cov = fit if fit is not None else fit_gaussian(self.codes)
        d = mean.shape[0]
        chol = torch.linalg.cholesky(cov + 1e-6 * torch.eye(d, dtype=torch.float64))
        eps = torch.randn(n, d, generator=seeding.generator(seed, "sample"), dtype=torch.float64)
        z = (mean + eps @ chol.T).float()
        return self.decode(self.ops.project(z.contiguous()))

    @torch.no_grad()
    def reconstruct(self, indices: torch.Tensor | list[int]) -> torch.Tensor:
        """G(codes[indices]): the model's rendering of training images by dataset index."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
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
        if steps < 2:
            raise ValueError(f"steps must be >= 2, got {steps}")
        t = torch.linspace(0, 1, steps, dtype=torch.float32)
        if space == "noise":
            a, b = (
                torch.as_tensor(a, dtype=torch.float32).cpu(),
                torch.as_tensor(b, dtype=torch.float32).cpu(),
            )
            e = (1 - t[:, None]) * a + t[:, None] * b
            return self.decode(self.map_noise(e))
        if space == "latent":
            za = self.codes[a].cpu() if isinstance(a, int) else torch.as_tensor(a, dtype=torch.float32)
            zb = self.codes[b].cpu() if isinstance(b, int) else torch.as_tensor(b, dtype=torch.float32)
            return self.decode(slerp(za.float(), zb.float(), t))
        raise ValueError(f"space must be 'noise' or 'latent', got {space!r}")

    def invert(
        self, images: torch.Tensor, steps: int = 200, lr: float = 0.05, restarts: int = 4, seed: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes for new ``images`` (n, C, H, W) in [0, 1]: G fixed, z optimised with Adam on the
        reconstruction loss and re-projected to the sphere after each step. Starts from the ``restarts``
        training codes whose reconstructions are nearest in pixel space and keeps the best.
        Returns (codes (n, latent_dim), reconstructions)."""
        from .losses import ReconstructionLoss

        if images.dim() != 4 or images.shape[1:] != (self.G.channels, self.G.image_size, self.G.image_size):
            raise ValueError(
                f"images must be shaped (n, {self.G.channels}, {self.G.image_size}, "
                f"{self.G.image_size}), got {tuple(images.shape)}"
            )
        self.G.eval().requires_grad_(False)
        target = images.to(self.device).float()
        loss_fn = ReconstructionLoss(self.ops, self.cfg.l2_weight)
        # Starting points: nearest reconstructions of a seeded subset of training codes.
        g = seeding.generator(seed, "invert")
        pool = self.codes[torch.randperm(len(self.codes), generator=g)[:2048].to(self.device)]
        recs = self.decode(pool).reshape(len(pool), -1)
        best_z, best_loss = None, None
        for r in range(max(1, restarts)):
            start = (
                self.ops.nn_argmin(target.reshape(len(target), -1), recs)
                if r == 0
                else torch.randint(len(pool), (len(target),), generator=g).to(self.device)
            )
            z = pool[start].clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=lr)
            for _ in range(steps):
                loss = loss_fn(self.G(z), target)
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    z.copy_(self.ops.project(z.detach().contiguous()))
            with torch.no_grad():
                per = self.ops.lap_loss(self.G(z).float(), target, reduction="none")
            if best_z is None:
                best_z, best_loss = z.detach().clone(), per
            else:
                better = per < best_loss
                best_z[better], best_loss = z.detach()[better], torch.minimum(per, best_loss)
        self.G.requires_grad_(True)
        return best_z, self.decode(best_z)

    # -- persistence ---------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        cfg: TrainConfig,
        image_shape: tuple[int, int, int],
        n_codes: int,
        with_mapping: bool = True,
        ops: Ops | None = None,
    ) -> GLANN:
        c, h, _ = image_shape
        in_dim = cfg.noise_dim if cfg.imle_space == "pixel" else cfg.latent_dim
        G = DCGANGenerator(in_dim, h, c, cfg.gen_width)
        T = (
            MLP(cfg.noise_dim, cfg.latent_dim, cfg.mapping_hidden, cfg.mapping_layers, cfg.mapping_batch_norm)
            if with_mapping
            else None
        )
        return cls(G, torch.zeros(n_codes, in_dim), T, cfg, ops)

    def export(self) -> dict[str, Any]:
        return {
            "cfg": self.cfg.__dict__,
            "image_shape": (self.G.channels, self.G.image_size, self.G.image_size),
            "G": self.G.state_dict(),
            "codes": self.codes.cpu(),
            "T": None if self.T is None else self.T.state_dict(),
        }

    @classmethod
    def from_export(cls, state: dict[str, Any], ops: str | None = None, device: str = "cpu") -> GLANN:
        cfg = TrainConfig.from_dict(state["cfg"])
        if ops is not None:
            cfg.ops = ops
        model = cls.build(cfg, tuple(state["image_shape"]), len(state["codes"]), state["T"] is not None)
        model.G.load_state_dict(state["G"])
        model.codes.copy_(state["codes"])
        if model.T is not None:
            model.T.load_state_dict(state["T"])
        return model.to(device).eval()

    @classmethod
    def load(cls, path: str | Path, ops: str | None = None, device: str = "cpu") -> GLANN:
        """A model from a run folder (its ``model.pt`` or, mid-training, its checkpoint) or a file."""
        from .run import load_model

        return load_model(path, ops=ops, device=device)

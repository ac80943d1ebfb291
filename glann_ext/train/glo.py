"""GLO stage: a generator G and one unit-sphere code per training image, fitted jointly."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable

import torch

from glann_ext.models import DCGANGenerator

from . import seeding
from .backend import Ops
from .config import TrainConfig
from .latents import initial_codes
from .losses import ReconstructionLoss

StepHook = Callable[[Any, dict], None]


def autocast_for(device: torch.device, enabled: bool):
    """bfloat16 autocast on CUDA (no loss scaling needed); a no-op on CPU, where it does not pay."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


class GLOTrainer:
    """Trains G and the code table on ``images`` (N, C, H, W) in [0, 1] held on CPU.

    Code ``i`` belongs to dataset index ``i``; a batch reads ``codes[idx]`` and the latent optimizer
    updates exactly those rows (and re-projects them), so the table could be sharded by index.
    Epoch ``e`` visits images in an order drawn from (seed, e) alone, which makes mid-epoch resume exact.
    """

    stage = "glo"

    def __init__(self, images: torch.Tensor, cfg: TrainConfig, ops: Ops, device: str | torch.device = "cpu"):
        self.cfg, self.ops, self.device = cfg, ops, torch.device(device)
        self.images = images
        _n, c, h, _w = images.shape
        torch.manual_seed(cfg.seed)
        self.G = DCGANGenerator(cfg.latent_dim, h, c, cfg.gen_width).to(self.device)
        self.codes = initial_codes(images, cfg.latent_dim, cfg.init, ops.project, cfg.seed).to(self.device)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=cfg.betas)
        self.opt_z = ops.make_latent_optimizer(self.codes, cfg.latent_optimizer, cfg.lr_z, cfg.betas)
        self.loss_fn = ReconstructionLoss.from_config(cfg, ops).to(self.device)
        self.epoch = 0  # epochs completed
        self.step_in_epoch = 0  # steps completed in the current epoch
        self.global_step = 0

    @property
    def steps_per_epoch(self) -> int:
        return len(seeding.batches(torch.arange(self.images.shape[0]), self.cfg.batch_size))

    def train_step(self, idx: torch.Tensor) -> float:
        """One joint update of G and of the codes ``idx``; returns the loss."""
        target = self.images[idx].to(self.device, non_blocking=True)
        idx = idx.to(self.device)
        z = self.codes[idx].clone().requires_grad_(True)
        self.G.train()
        with autocast_for(self.device, self.cfg.amp):
            out = self.G(z)
        loss = self.loss_fn(out, target)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        self.opt_z.step(idx, z.grad)
        return loss.item()

    def run_epoch(self, on_step: StepHook | None = None, progress=None) -> float:
        """Train from the current position to the end of the epoch; returns the mean loss of the steps run.

        ``on_step(trainer, info)`` runs after every step (checkpointing, logging, test interruptions).
        """
        perm = seeding.epoch_permutation(self.images.shape[0], self.cfg.seed, self.stage, self.epoch)
        all_batches = seeding.batches(perm, self.cfg.batch_size)
        total, count = 0.0, 0
        for idx in all_batches[self.step_in_epoch :]:
            loss = self.train_step(idx)
            total, count = total + loss, count + 1
            self.step_in_epoch += 1
            self.global_step += 1
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.4f}")
            if on_step is not None:
                on_step(
                    self, {"stage": self.stage, "epoch": self.epoch, "step": self.global_step, "loss": loss}
                )
        self.epoch += 1
        self.step_in_epoch = 0
        return total / max(count, 1)

    @torch.no_grad()
    def reconstruct(self, idx: torch.Tensor) -> torch.Tensor:
        self.G.eval()
        return self.G(self.codes[idx.to(self.device)]).float().clamp(0, 1)

    def state_dict(self) -> dict[str, Any]:
        return {
            "G": self.G.state_dict(),
            "codes": self.codes.clone(),
            "opt_g": self.opt_g.state_dict(),
            "opt_z": self.opt_z.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        self.codes.copy_(state["codes"])  # in place: the latent optimizer holds this tensor
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_z.load_state_dict(state["opt_z"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step = state["global_step"]

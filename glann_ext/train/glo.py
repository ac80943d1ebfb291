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
from .world import World, data_parallel, global_batch_part, global_batchnorm

StepHook = Callable[[Any, dict], None]


def autocast_for(device: torch.device, enabled: bool):
    """bfloat16 autocast on CUDA (no loss scaling needed); a no-op on CPU, where it does not pay."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


class GLOTrainer:
    """Trains G and the code table on ``images`` (N, C, H, W) in [0, 1] held on CPU.

    Code ``i`` belongs to dataset index ``i``; a batch reads ``codes[idx]`` and the latent optimizer
    updates exactly those rows (and re-projects them). Epoch ``e`` visits images in an order drawn from
    (seed, e) alone, which makes mid-epoch resume exact.

    Sharded (``world`` with several ranks): ``images`` are this rank's rows ``[start, start + len)`` of
    ``total``, and so are :attr:`codes` and the latent optimizer's state; G is replicated (DDP, with
    :class:`~glann_ext.train.world.GlobalBatchNorm`). Every rank walks the same global batches and trains on
    the members it owns, so the run computes what one process computes (see :mod:`.world`).
    """

    stage = "glo"

    def __init__(
        self,
        images: torch.Tensor,
        cfg: TrainConfig,
        ops: Ops,
        device: str | torch.device = "cpu",
        world: World | None = None,
        start: int = 0,
        total: int | None = None,
    ):
        self.cfg, self.ops, self.device = cfg, ops, torch.device(device)
        self.world = world or World()
        self.images = images
        self.start = start
        self.total = images.shape[0] if total is None else total
        _n, c, h, _w = images.shape
        torch.manual_seed(cfg.seed)
        self.G = global_batchnorm(DCGANGenerator(cfg.latent_dim, h, c, cfg.gen_width), self.world)
        self.G.to(self.device)
        self.G_train = data_parallel(self.G, self.world)
        self.codes = initial_codes(
            images, cfg.latent_dim, cfg.init, ops.project, cfg.seed, self.world, start, self.total
        ).to(self.device)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=cfg.betas)
        self.opt_z = ops.make_latent_optimizer(self.codes, cfg.latent_optimizer, cfg.lr_z, cfg.betas)
        self.loss_fn = ReconstructionLoss.from_config(cfg, ops).to(self.device)
        self.epoch = 0  # epochs completed
        self.step_in_epoch = 0  # steps completed in the current epoch
        self.global_step = 0

    @property
    def steps_per_epoch(self) -> int:
        return len(seeding.batches(torch.arange(self.total), self.cfg.batch_size))

    def train_step(self, idx: torch.Tensor, batch_size: int | None = None) -> float:
        """One joint update of G and of the codes ``idx`` (rows of this rank's shard); returns the loss.

        ``batch_size``: the global batch's size when ``idx`` is this rank's part of it (sharded runs); the
        returned loss is then this rank's share (the shares of all ranks add up to the batch's loss; they
        are summed once per epoch, not per step, to save a collective per step).
        """
        target = self.images[idx].to(self.device, non_blocking=True)
        idx = idx.to(self.device)
        z = self.codes[idx].clone().requires_grad_(True)
        self.G.train()
        with autocast_for(self.device, self.cfg.amp):
            out = self.G_train(z)
        if not self.world.distributed:
            loss = self.loss_fn(out, target)
            scaled = loss
        else:
            loss = self.loss_fn(out, target, normalizer=batch_size)
            # DDP averages gradients over ranks and the BatchNorm all-reduces sum them in backward, so every
            # rank differentiates world * (its share): parameters get the global gradient, codes world x it.
            scaled = loss * self.world.size
        self.opt_g.zero_grad(set_to_none=True)
        scaled.backward()
        self.opt_g.step()
        grad = z.grad if not self.world.distributed else z.grad / self.world.size
        self.opt_z.step(idx, grad)
        return loss.item()

    def run_epoch(self, on_step: StepHook | None = None, progress=None) -> float:
        """Train from the current position to the end of the epoch; returns the mean loss of the steps run.

        ``on_step(trainer, info)`` runs after every step (checkpointing, logging, test interruptions);
        in a sharded run ``info["loss"]`` and the progress bar show this rank's share of the step's loss.
        """
        perm = seeding.epoch_permutation(self.total, self.cfg.seed, self.stage, self.epoch)
        all_batches = seeding.batches(perm, self.cfg.batch_size)
        stop = self.start + self.images.shape[0]
        total, count = 0.0, 0
        for idx in all_batches[self.step_in_epoch :]:
            if self.world.distributed:
                loss = self.train_step(global_batch_part(idx, self.start, stop), len(idx))
            else:
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
        if self.world.distributed:  # the ranks' shares add up to the global batches' losses
            total = self.world.sum(torch.tensor([total], dtype=torch.float64)).item()
        self.epoch += 1
        self.step_in_epoch = 0
        return total / max(count, 1)

    @torch.no_grad()
    def reconstruct(self, idx: torch.Tensor) -> torch.Tensor:
        self.G.eval()
        return self.G(self.codes[idx.to(self.device)]).float().clamp(0, 1)

    def state_dict(self) -> dict[str, Any]:
        """Everything to resume; ``codes`` and ``opt_z`` hold this rank's rows only."""
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

"""GLO stage: a generator G and one unit-sphere code per training image, fitted jointly."""

from __future__ import annotations

from typing import Any

import torch

from glann_ext.backend import Ops, as_ops
from glann_ext.models import DCGANGenerator, ReconstructionLoss
from glann_ext.models.generative import check_unit_codes

from .build import adam, build_generator, check_tensor, load_adam_state, place_for_training
from .config import TrainConfig
from .latents import initial_codes
from .loop import StageTrainer, autocast_for, cosine_rate
from .world import World, data_parallel, global_batchnorm


class GLOTrainer(StageTrainer):
    """Trains G and the code table on ``images`` (N, C, H, W) in [0, 1] held on CPU.

    Code ``i`` belongs to dataset index ``i``; a batch reads ``codes[idx]`` and the latent optimizer
    updates exactly those rows (and re-projects them). ``G`` defaults to the configured generator
    (:func:`~glann_ext.train.build.build_generator`); the codes start from ``cfg.init`` (PCA or random).

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
        ops: Ops | str | None,
        device: str | torch.device = "cpu",
        world: World | None = None,
        start: int = 0,
        total: int | None = None,
        *,
        G: DCGANGenerator | None = None,
    ):
        super().__init__(cfg, world, start, images.shape[0], total)
        self.ops = ops = as_ops(ops, cfg.ops)
        self.device = torch.device(device)
        self.images = images
        G = G if G is not None else build_generator(cfg, tuple(images.shape[1:]))
        self.G = place_for_training(global_batchnorm(G, self.world), self.device)
        self.G_train = data_parallel(self.G, self.world)
        self.codes = initial_codes(
            images, cfg.latent_dim, cfg.init, ops.project, cfg.seed, self.world, start, self.total
        ).to(self.device)
        self.opt_g = adam(self.G.parameters(), cfg.lr_g, cfg.betas)
        self.opt_z = ops.latent_optimizer(self.codes, cfg.latent_optimizer, cfg.lr_z, cfg.betas)
        self.loss_fn = ReconstructionLoss.from_config(cfg, ops).to(self.device)

    def train_step(self, batch: torch.Tensor) -> float:
        """One joint update of G and of the codes of the global ``batch`` that this rank holds.

        Sharded, the loss is normalised by the global batch (this rank's share of the batch's loss is
        returned; the shares add up over ranks and are summed once per epoch, not per step).
        """
        if self.cfg.glo_lr_schedule == "cosine":
            total = self.cfg.glo_epochs * self.steps_per_epoch
            for group in self.opt_g.param_groups:
                group["lr"] = cosine_rate(self.cfg.lr_g, self.global_step, total)
            self.opt_z.lr = max(cosine_rate(self.cfg.lr_z, self.global_step, total), 1e-12)
        idx = self.local_part(batch)
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
            loss = self.loss_fn(out, target, normalizer=len(batch))
            # DDP averages gradients over ranks and the BatchNorm all-reduces sum them in backward, so every
            # rank differentiates world * (its share): parameters get the global gradient, codes world x it.
            scaled = loss * self.world.size
        self.opt_g.zero_grad(set_to_none=True)
        scaled.backward()
        self.opt_g.step()
        grad = z.grad if not self.world.distributed else z.grad / self.world.size
        if self.cfg.latent_optimizer == "adam" and self.cfg.latent_adam_steps == "rows":
            self.opt_z.step(idx, grad, updates=self.epoch + 1)  # every row is updated once per epoch
        else:
            self.opt_z.step(idx, grad)
        return loss.item()

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
            **self.counters(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # the codes as training leaves them (copy_ broadcast a forged width-1 table and cast an integer one,
        # and the run then trained on and saved a model its own loader refuses)
        check_tensor("glo codes", state["codes"], (self.codes.dtype, tuple(self.codes.shape)))
        check_unit_codes(state["codes"])
        self.G.load_state_dict(state["G"])
        self.codes.copy_(state["codes"])  # in place: the latent optimizer holds this tensor
        load_adam_state(self.opt_g, state["opt_g"], "opt_g")
        self.opt_z.load_state_dict(state["opt_z"])
        self.load_counters(state)
        if self.cfg.glo_lr_schedule == "constant":
            # the optimizers' states carry the rates they were saved with; a resume may change them (the
            # remedy for a diverged run), and the cosine schedule sets them every step anyway
            for group in self.opt_g.param_groups:
                group["lr"] = self.cfg.lr_g
            self.opt_z.lr = self.cfg.lr_z

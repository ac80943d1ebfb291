"""IMLE stage: train a generator from noise so that every target has a nearby generated sample.

Each epoch draws M = multiple x N noise vectors, maps them without gradients, finds for every target its
nearest generated sample with the backend's exact ``nn_argmin``, then regresses the generator's output on
the matched noise onto the target in minibatches. GLANN runs it in latent space (targets: GLO codes,
generator: the MLP mapping T); the original IMLE runs it in pixel space (targets: images).

Options of :class:`TrainConfig` (off by default): a cosine learning-rate decay (``imle_lr_schedule``), a
precision term that also pulls fresh samples onto their nearest target (``imle_precision_weight``) and a
one-to-one matching (``imle_match="unique"``). See docs/training.md, "IMLE options for tight modes".
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from glann_ext import seeding
from glann_ext.backend import Ops
from glann_ext.errors import ConfigError
from glann_ext.models import mse_loss

from .config import TrainConfig
from .loop import StageTrainer, autocast_for
from .world import World, data_parallel, global_batchnorm

# unique matching keeps the whole distance matrix when it has at most this many entries
DENSE_MATCH_LIMIT = 1 << 24
# noise vectors mapped per generator call when matching (bounds the activations' memory)
MATCH_CHUNK = 4096


@torch.no_grad()
def unique_nn_match(queries: torch.Tensor, keys: torch.Tensor, nn_argmin: Callable[..., Any]) -> torch.Tensor:
    """Greedy one-to-one matching: for every query the index of a distinct key (needs len(keys) >= len(queries)).

    In rounds: every unmatched query finds its nearest free key; a key claimed by several queries goes to the
    closest one (ties: the lower query index), the others retry on the keys left. Each round matches at least
    one query (the globally closest free pair), so there are at most ``len(queries)`` rounds; in practice
    about as many as the most queries that share a nearest key. Small problems keep the squared distance
    matrix; large ones call the exact ``nn_argmin`` on the free keys every round.
    """
    n, m = queries.shape[0], keys.shape[0]
    if m < n:
        raise ValueError(f"unique matching needs at least as many keys ({m}) as queries ({n})")
    dev = queries.device
    idx = torch.full((n,), -1, dtype=torch.int64, device=dev)
    free = torch.ones(m, dtype=torch.bool, device=dev)
    todo = torch.arange(n, device=dev)
    positions = torch.arange(n, device=dev)
    no_key = torch.full((m,), float("inf"), device=dev)
    # rows: the unmatched queries, in query order; taken keys' columns are set to +inf
    dense = torch.cdist(queries.float(), keys.float()).square_() if n * m <= DENSE_MATCH_LIMIT else None
    while todo.numel():
        if dense is not None:
            d, j = dense.min(1)
        else:
            free_keys = free.nonzero().squeeze(1)
            j, d = nn_argmin(queries[todo].float(), keys[free_keys].float(), return_distances=True)
            j, d = free_keys[j.to(dev)], d.to(dev)
        pos = positions[: len(todo)]
        best = no_key.clone().scatter_reduce_(0, j, d, reduce="amin")
        cand = torch.where(d == best[j], pos, n)  # the closest claimants of each key
        first = torch.full((m,), n, dtype=torch.int64, device=dev).scatter_reduce_(0, j, cand, reduce="amin")
        won = first[j] == pos  # of those, the lowest query index
        taken = j[won]
        idx[todo[won]] = taken
        free[taken] = False
        lost = ~won
        todo = todo[lost]
        if dense is not None and todo.numel():
            dense = dense[lost]
            dense[:, taken] = float("inf")
    return idx


class IMLETrainer(StageTrainer):
    """IMLE of ``generator`` (noise (B, noise_dim) -> target-shaped output) onto ``targets`` (N, ...).

    Matching runs the generator in eval mode (BatchNorm running statistics): the same function that
    sampling uses. ``loss_fn(output, target)`` defaults to the mean squared error.

    Sharded (``world`` with several ranks): ``targets`` are this rank's rows ``[start, start + len)`` of
    ``total``; the M noise draws are a seeded table (:func:`~glann_ext.seeding.normal_rows`) of which each
    rank maps its :func:`~glann_ext.data.shard_bounds` share; the backend's distributed search
    (:meth:`Ops.nn_argmin <glann_ext.backend.Ops.nn_argmin>` with the world) finds every target's nearest
    draw over all ranks exactly; the generator is replicated (DDP, GlobalBatchNorm) and the loss is
    normalised by the global batch, as in :class:`~glann_ext.train.glo.GLOTrainer`. The precision term and
    ``imle_match="unique"`` need all targets in one process and are single-process only.
    """

    stage = "imle"

    def __init__(
        self,
        targets: torch.Tensor,
        generator: nn.Module,
        cfg: TrainConfig,
        ops: Ops,
        device: str | torch.device = "cpu",
        loss_fn: Callable[..., torch.Tensor] | None = None,
        world: World | None = None,
        start: int = 0,
        total: int | None = None,
    ):
        super().__init__(cfg, world, start, targets.shape[0], total)
        self.ops, self.device = ops, torch.device(device)
        if self.world.distributed and (cfg.imle_match != "nearest" or cfg.imle_precision_weight != 0):
            raise ConfigError(
                "imle_match='unique' and imle_precision_weight > 0 need every target in one process; "
                f"got imle_match={cfg.imle_match!r}, imle_precision_weight={cfg.imle_precision_weight} "
                f"with {self.world.size} processes (train without torchrun, or turn these options off)"
            )
        self.targets = targets.to(self.device)
        self.generator = global_batchnorm(generator, self.world).to(self.device)
        self.generator_train = data_parallel(self.generator, self.world)
        self.loss_fn = loss_fn or mse_loss
        self.noise_dim = cfg.noise_dim
        self.opt = torch.optim.Adam(
            self.generator.parameters(), lr=cfg.imle_lr, betas=cfg.betas, weight_decay=cfg.imle_weight_decay
        )
        self.matched_noise: torch.Tensor | None = None  # this epoch's noise for each target
        self.fresh: torch.Tensor | None = None  # this epoch's noise of the precision term
        self.last_match_distance = float("nan")

    @property
    def num_noise(self) -> int:
        """M: noise draws per epoch over all ranks."""
        return round(self.cfg.imle_noise_multiple * self.total)

    def noise(self, rows: torch.Tensor | range, epoch: int) -> torch.Tensor:
        """Rows ``rows`` of epoch ``epoch``'s (M, noise_dim) noise table."""
        return seeding.normal_rows(rows, self.num_noise, self.noise_dim, self.cfg.seed, self.stage, epoch)

    @torch.no_grad()
    def generate(self, noise: torch.Tensor) -> torch.Tensor:
        """Generator outputs for ``noise`` in eval mode, chunked, in fp32."""
        self.generator.eval()
        outs = []
        for chunk in noise.split(MATCH_CHUNK):
            with autocast_for(self.device, self.cfg.amp):
                outs.append(self.generator(chunk.to(self.device)).float())
        return torch.cat(outs)

    @torch.no_grad()
    def match(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(noise, index) of this epoch: this rank's share of the M noise draws (seeded by (seed, epoch)) and,
        for every local target, the global index (into all M draws) of the draw whose output is nearest."""
        lo, hi = self.world.bounds(self.num_noise)
        noise = self.noise(range(lo, hi), epoch)
        samples = self.generate(noise).reshape(hi - lo, -1)
        queries = self.targets.reshape(self.targets.shape[0], -1).float()
        if self.cfg.imle_match == "unique":
            idx = unique_nn_match(queries, samples, self.ops.nn_argmin)
            dist = ((queries - samples[idx]) ** 2).sum(1)
        else:
            idx, dist = self.ops.nn_argmin(queries, samples, return_distances=True, world=self.world)
        self.last_match_distance = self.world.sum(dist.double().sum().reshape(1)).item() / self.total
        return noise, idx.cpu()

    def matched_noise_for(self, epoch: int) -> torch.Tensor:
        """For every local target, the noise vector of its matched draw in ``epoch``."""
        noise, idx = self.match(epoch)
        if not self.world.distributed:
            return noise[idx]
        return self.noise(idx, epoch)  # draws held by any rank: redrawn from their seeded blocks

    def lr_at(self, step: int) -> float:
        """The learning rate of global step ``step`` under ``cfg.imle_lr_schedule``."""
        if self.cfg.imle_lr_schedule == "constant":
            return self.cfg.imle_lr
        total = max(self.cfg.imle_epochs * self.steps_per_epoch, 1)  # steps of the run
        return self.cfg.imle_lr * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))

    def precision_noise(self, epoch: int) -> torch.Tensor | None:
        """The fresh noise of the precision term for every step of ``epoch`` (from (seed, epoch) alone, so a
        resumed epoch redraws it), shaped (steps, batch, noise_dim); None when the term is off."""
        if self.cfg.imle_precision_weight == 0:
            return None
        g = seeding.generator(self.cfg.seed, "imle_precision", epoch)
        size = min(self.cfg.batch_size, self.total)
        return torch.randn(self.steps_per_epoch, size, self.noise_dim, generator=g)

    # -- the loop's parts --------------------------------------------------------------------------------
    def begin_epoch(self) -> None:
        """Match (unless resuming mid-epoch with the matching restored from the checkpoint)."""
        if self.step_in_epoch == 0 or self.matched_noise is None:
            self.matched_noise = self.matched_noise_for(self.epoch)
        self.fresh = self.precision_noise(self.epoch)

    def train_step(self, batch: torch.Tensor) -> float:
        """One regression step on the matched noise of the global ``batch``'s local members, plus the
        precision term on this step's fresh noise; returns this rank's share of the loss (IMLE term +
        weighted precision term)."""
        local = self.local_part(batch)
        fresh = None if self.fresh is None else self.fresh[self.step_in_epoch]
        self.generator.train()
        noise = self.matched_noise[local].to(self.device)
        if fresh is not None:  # one forward pass for both, so BatchNorm sees one batch
            noise = torch.cat([noise, fresh.to(self.device)])
        with autocast_for(self.device, self.cfg.amp):
            out = self.generator_train(noise).float()
        target = self.targets[local.to(self.device)]
        if self.world.distributed:
            loss = self.loss_fn(out, target, normalizer=len(batch))
        else:
            loss = self.loss_fn(out[: len(local)], target)
        if fresh is not None:
            loss = loss + self.cfg.imle_precision_weight * self._precision_loss(out[len(local) :])
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.global_step)
        self.opt.zero_grad(set_to_none=True)
        # sharded: each rank differentiates world * its share (see GLOTrainer.train_step)
        (loss * self.world.size if self.world.distributed else loss).backward()
        self.opt.step()
        return loss.item()

    def _precision_loss(self, extra: torch.Tensor) -> torch.Tensor:
        """Fresh outputs regressed onto their nearest targets (the reverse half of a Chamfer distance)."""
        with torch.no_grad():
            flat = self.targets.reshape(self.targets.shape[0], -1).float()
            nearest = self.ops.nn_argmin(extra.detach().reshape(len(extra), -1), flat)
        return self.loss_fn(extra, self.targets[nearest.to(self.device)])

    def epoch_metrics(self) -> dict[str, Any]:
        return {"match_distance": self.last_match_distance}

    def end_epoch(self) -> None:
        self.matched_noise, self.fresh = None, None

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.state_dict(),
            "opt": self.opt.state_dict(),
            "matched_noise": None if self.matched_noise is None else self.matched_noise.clone(),
            "last_match_distance": self.last_match_distance,
            **self.counters(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.opt.load_state_dict(state["opt"])
        self.matched_noise = state["matched_noise"]
        self.last_match_distance = state["last_match_distance"]
        self.load_counters(state)

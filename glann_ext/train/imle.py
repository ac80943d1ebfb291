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

from . import seeding
from .backend import Ops
from .config import TrainConfig
from .glo import StepHook, autocast_for
from .losses import mse_loss
from .world import World, data_parallel, global_batch_part, global_batchnorm

# unique matching keeps the whole distance matrix when it has at most this many entries
DENSE_MATCH_LIMIT = 1 << 24


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


class IMLETrainer:
    """IMLE of ``generator`` (noise (B, noise_dim) -> target-shaped output) onto ``targets`` (N, ...).

    Matching runs the generator in eval mode (BatchNorm running statistics): the same function that
    sampling uses. ``loss_fn(output, target)`` defaults to the mean squared error.

    Sharded (``world`` with several ranks): ``targets`` are this rank's rows ``[start, start + len)`` of
    ``total``; the M noise draws are a seeded table (:func:`~glann_ext.train.seeding.normal_rows`) of which
    each rank maps its :func:`~glann_ext.data.shard_bounds` share; :func:`glann_ext.distributed.nn_argmin`
    finds every target's nearest draw over all ranks exactly; the generator is replicated (DDP,
    GlobalBatchNorm) and the loss is normalised by the global batch, as in :class:`GLOTrainer`. The
    precision term and ``imle_match="unique"`` need all targets in one process and are single-process only.
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
        match_chunk: int = 4096,
        world: World | None = None,
        start: int = 0,
        total: int | None = None,
    ):
        self.cfg, self.ops, self.device = cfg, ops, torch.device(device)
        self.world = world or World()
        if self.world.distributed and (cfg.imle_match != "nearest" or cfg.imle_precision_weight != 0):
            raise ValueError(
                "imle_match='unique' and imle_precision_weight > 0 need every target in one process; "
                f"got imle_match={cfg.imle_match!r}, imle_precision_weight={cfg.imle_precision_weight} "
                f"with {self.world.size} processes (train without torchrun, or turn these options off)"
            )
        self.targets = targets.to(self.device)
        self.start = start
        self.total = targets.shape[0] if total is None else total
        self.generator = global_batchnorm(generator, self.world).to(self.device)
        self.generator_train = data_parallel(self.generator, self.world)
        self.loss_fn = loss_fn or mse_loss
        self.noise_dim = cfg.noise_dim
        self.match_chunk = match_chunk
        self.opt = torch.optim.Adam(
            self.generator.parameters(), lr=cfg.imle_lr, betas=cfg.betas, weight_decay=cfg.imle_weight_decay
        )
        self.matched_noise: torch.Tensor | None = None  # this epoch's noise for each target
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
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
        for chunk in noise.split(self.match_chunk):
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
        if self.world.distributed:
            from glann_ext.distributed import nn_argmin as distributed_nn_argmin

            idx, dist = distributed_nn_argmin(queries, samples, self.world.group, return_distances=True)
        elif self.cfg.imle_match == "unique":
            idx = unique_nn_match(queries, samples, self.ops.nn_argmin)
            dist = ((queries - samples[idx]) ** 2).sum(1)
        else:
            idx, dist = self.ops.nn_argmin(queries, samples, return_distances=True)
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

    def train_step(
        self, batch: torch.Tensor, fresh: torch.Tensor | None = None, batch_size: int | None = None
    ) -> float:
        """One regression step on the matched noise of ``batch`` (rows of this rank's targets), plus the
        precision term on ``fresh`` noise; returns the total loss (IMLE term + weighted precision term).
        ``batch_size``: the global batch's size when ``batch`` is this rank's part of it (the loss returned is
        then this rank's share, see :meth:`GLOTrainer.train_step`)."""
        self.generator.train()
        noise = self.matched_noise[batch].to(self.device)
        if fresh is not None:  # one forward pass for both, so BatchNorm sees one batch
            noise = torch.cat([noise, fresh.to(self.device)])
        with autocast_for(self.device, self.cfg.amp):
            out = self.generator_train(noise).float()
        target = self.targets[batch.to(self.device)]
        if self.world.distributed:
            loss = self.loss_fn(out, target, normalizer=batch_size)
        else:
            loss = self.loss_fn(out[: len(batch)], target)
        if fresh is not None:
            extra = out[len(batch) :]
            with torch.no_grad():
                flat = self.targets.reshape(self.targets.shape[0], -1).float()
                nearest = self.ops.nn_argmin(extra.detach().reshape(len(extra), -1), flat)
            loss = loss + self.cfg.imle_precision_weight * self.loss_fn(
                extra, self.targets[nearest.to(self.device)]
            )
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.global_step)
        self.opt.zero_grad(set_to_none=True)
        # sharded: each rank differentiates world * its share (see GLOTrainer.train_step)
        (loss * self.world.size if self.world.distributed else loss).backward()
        self.opt.step()
        return loss.item()

    def run_epoch(self, on_step: StepHook | None = None, progress=None) -> float:
        """Match (unless resuming mid-epoch with the matching restored) then regress; returns mean loss."""
        if self.step_in_epoch == 0 or self.matched_noise is None:
            self.matched_noise = self.matched_noise_for(self.epoch)
        perm = seeding.epoch_permutation(self.total, self.cfg.seed, self.stage, self.epoch)
        fresh = self.precision_noise(self.epoch)
        stop = self.start + self.targets.shape[0]
        total, count = 0.0, 0
        for batch in seeding.batches(perm, self.cfg.batch_size)[self.step_in_epoch :]:
            if self.world.distributed:
                loss = self.train_step(global_batch_part(batch, self.start, stop), None, len(batch))
            else:
                loss = self.train_step(batch, None if fresh is None else fresh[self.step_in_epoch])
            total, count = total + loss, count + 1
            self.step_in_epoch += 1
            self.global_step += 1
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.4f}", match=f"{self.last_match_distance:.4f}")
            if on_step is not None:
                on_step(
                    self, {"stage": self.stage, "epoch": self.epoch, "step": self.global_step, "loss": loss}
                )
        if self.world.distributed:  # the ranks' shares add up to the global batches' losses
            total = self.world.sum(torch.tensor([total], dtype=torch.float64)).item()
        self.epoch += 1
        self.step_in_epoch = 0
        self.matched_noise = None
        return total / max(count, 1)

    @property
    def steps_per_epoch(self) -> int:
        return len(seeding.batches(torch.arange(self.total), self.cfg.batch_size))

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.state_dict(),
            "opt": self.opt.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "matched_noise": None if self.matched_noise is None else self.matched_noise.clone(),
            "last_match_distance": self.last_match_distance,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.opt.load_state_dict(state["opt"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step = state["global_step"]
        self.matched_noise = state["matched_noise"]
        self.last_match_distance = state["last_match_distance"]

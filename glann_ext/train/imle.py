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
from glann_ext._threads import intra_op_threads
from glann_ext.backend import Ops, as_ops
from glann_ext.errors import ConfigError
from glann_ext.models import mse_loss
from glann_ext.ops._checks import check_finite

from .build import adam, check_tensor, load_adam_state, place_for_training
from .config import TrainConfig
from .loop import StageTrainer, autocast_for, cosine_rate
from .threads import denormals_flushed, step_threads
from .world import World, data_parallel, global_batchnorm

# unique matching keeps the whole distance matrix when it has at most this many entries
DENSE_MATCH_LIMIT = 1 << 24
# noise vectors mapped per generator call when matching (bounds the activations' memory)
MATCH_CHUNK = 4096
# where RS-IMLE moves a rejected draw's output: finite (the search refuses NaN/Inf), far from every target
REJECTED = 1e6


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
    # as nn_argmin does: a NaN distance wins no key, so the rounds below would never end
    check_finite("queries", queries, op="unique_nn_match")
    check_finite("keys", keys, op="unique_nn_match")
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


def check_distributed_imle(cfg: TrainConfig, world: World) -> None:
    """ConfigError when ``world`` has several ranks and ``cfg`` asks for an IMLE option that needs every
    target in one process (a run checks it when it starts, before a GLO stage trains)."""
    if world.distributed and (cfg.imle_match != "nearest" or cfg.imle_precision_weight != 0):
        raise ConfigError(
            "imle_match='unique' and imle_precision_weight > 0 need every target in one process; "
            f"got imle_match={cfg.imle_match!r}, imle_precision_weight={cfg.imle_precision_weight} "
            f"with {world.size} processes (train without torchrun, or turn these options off)"
        )


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
        ops: Ops | str | None,
        device: str | torch.device = "cpu",
        loss_fn: Callable[..., torch.Tensor] | None = None,
        world: World | None = None,
        start: int = 0,
        total: int | None = None,
    ):
        super().__init__(cfg, world, start, targets.shape[0], total)
        self.ops, self.device = as_ops(ops, cfg.ops), torch.device(device)
        check_distributed_imle(cfg, self.world)
        self.targets = targets.to(self.device)
        self.generator = place_for_training(global_batchnorm(generator, self.world), self.device)
        self.generator_train = data_parallel(self.generator, self.world)
        self.loss_fn = loss_fn or mse_loss
        self.noise_dim = cfg.noise_dim
        # T on codes takes its own betas; G in pixel space keeps the generator's (TrainConfig.imle_betas)
        betas = cfg.imle_betas if cfg.imle_space == "latent" else cfg.betas
        self.opt = adam(self.generator.parameters(), cfg.imle_lr, betas, cfg.imle_weight_decay)
        # T's small steps run on one CPU thread (threads.py); matching keeps all of them
        self.step_threads = step_threads(self.generator, self.batch_size, self.device)
        self.matched_noise: torch.Tensor | None = None  # this epoch's noise for each target
        self.fresh: torch.Tensor | None = None  # this epoch's noise of the precision term
        self.threshold: torch.Tensor | None = None  # adaptive IMLE: per-target distance to reach
        self.since_match: torch.Tensor | None = None  # adaptive IMLE: epochs since each target was matched
        self.last_match_distance = float("nan")
        self.last_rematched = float("nan")  # adaptive IMLE: fraction of targets matched anew this epoch
        self.last_rejected = float("nan")  # RS-IMLE: fraction of draws rejected this epoch

    @property
    def batch_size(self) -> int:
        """``imle_batch_size`` for ``T`` on codes; pixel-space IMLE trains G with ``batch_size``."""
        return self.cfg.imle_batch_size if self.cfg.imle_space == "latent" else self.cfg.batch_size

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
        with denormals_flushed():
            for chunk in noise.split(MATCH_CHUNK):
                with autocast_for(self.device, self.cfg.amp):
                    outs.append(self.generator(chunk.to(self.device)).float())
        return torch.cat(outs)

    def _flat_targets(self) -> torch.Tensor:
        return self.targets.reshape(self.targets.shape[0], -1).float()

    @torch.no_grad()
    def match(
        self, epoch: int, which: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noise, index, distance) of this epoch: this rank's share of the M noise draws (seeded by (seed,
        epoch)) and, for every local target in ``which`` (default: all), the global index (into all M draws)
        of the draw whose output is nearest and its squared distance. With ``imle_reject_radius`` > 0, draws
        whose output lies within that radius of any target are left out first (RS-IMLE)."""
        lo, hi = self.world.bounds(self.num_noise)
        noise = self.noise(range(lo, hi), epoch)
        samples = self.generate(noise).reshape(hi - lo, -1)
        targets = self._flat_targets()
        kept = self._reject(samples, targets, epoch) if self.cfg.imle_reject_radius > 0 else None
        queries = targets if which is None else targets[which.to(targets.device)]
        if self.cfg.imle_match == "unique":
            idx = self._unique_match(queries, samples, kept, epoch)
            dist = ((queries - samples[idx]) ** 2).sum(1)
        else:
            idx, dist = self.ops.nn_argmin(queries, samples, return_distances=True, world=self.world)
        return noise, idx.cpu(), dist.cpu()

    def _unique_match(
        self, queries: torch.Tensor, samples: torch.Tensor, kept: torch.Tensor | None, epoch: int
    ) -> torch.Tensor:
        """One distinct draw per query (one process holds every draw), among the draws RS-IMLE kept."""
        if kept is None:
            return unique_nn_match(queries, samples, self.ops.nn_argmin)
        survivors = kept.nonzero().squeeze(1)
        if len(survivors) < len(queries):  # else some targets would be handed rejected draws and pull them
            radius = self.cfg.imle_reject_radius
            problem = (
                f"{radius:g} leaves {len(survivors)} of the {self.num_noise} draws of IMLE epoch {epoch + 1}, "
                f"fewer than the {len(queries)} targets that imle_match 'unique' matches one to one; resume "
                "with a smaller radius (a resume may change it)"
            )
            raise ConfigError(
                f"config field imle_reject_radius (--imle-reject-radius) {problem}",
                field="imle_reject_radius",
                problem=problem,
            )
        return survivors[unique_nn_match(queries, samples[survivors], self.ops.nn_argmin)]

    def _reject(self, samples: torch.Tensor, targets: torch.Tensor, epoch: int) -> torch.Tensor:
        """RS-IMLE's rejection, exact: a draw is out when its nearest target (over all targets of every rank)
        is within ``imle_reject_radius``. That is the fused search with the roles swapped (draws as queries,
        targets as keys), no distance matrix. Rejected outputs are moved far away (finite), so no target
        picks them while their global indices stay those of the noise table; returns the mask of the draws
        kept. A ConfigError when every draw is rejected: all targets would tie on the far point and pull one
        draw."""
        radius = self.cfg.imle_reject_radius
        _, nearest = self.ops.nn_argmin(samples, targets, return_distances=True, world=self.world)
        out = nearest < radius**2
        samples[out] = REJECTED
        rejected = self.world.sum(out.sum().double().reshape(1)).item()
        self.last_rejected = rejected / self.num_noise
        if rejected == self.num_noise:  # the sum is global, so every rank raises
            farthest = max(self.world.gather(nearest.max().item() if len(nearest) else 0.0)) ** 0.5
            problem = (
                f"{radius:g} rejects all {self.num_noise} draws of IMLE epoch {epoch + 1}: every output lies "
                f"within it of a target (the farthest {farthest:.4g} away, in the matching space); resume "
                "with a smaller radius (a resume may change it)"
            )
            raise ConfigError(
                f"config field imle_reject_radius (--imle-reject-radius) {problem}",
                field="imle_reject_radius",
                problem=problem,
            )
        return ~out

    def matched_noise_for(
        self, epoch: int, which: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For every local target in ``which`` (default: all), the noise vector of its matched draw in
        ``epoch`` and the squared distance of that draw's output."""
        noise, idx, dist = self.match(epoch, which)
        if not self.world.distributed:
            return noise[idx], dist
        return self.noise(idx, epoch), dist  # draws held by any rank: redrawn from their seeded blocks

    @torch.no_grad()
    def _adaptive_rematch(self) -> torch.Tensor:
        """Adaptive IMLE (Aghabozorgi, Peng & Li, ICML 2023): a target keeps its matched noise until it is
        fitted, i.e. its sample came closer than its threshold (after at least ``imle_staleness`` epochs), or
        until ``imle_force_rematch`` epochs have passed; then it is matched anew and its threshold becomes
        (1 - ``imle_adaptive_shrink``) x the squared distance its sample had reached (the paper's code; the
        first match sets it from that match's distance), so a fitted target's threshold only falls. Returns
        every local target's current squared distance."""
        cfg, n = self.cfg, self.targets.shape[0]
        if self.matched_noise is None:  # the first epoch: everyone
            which = torch.arange(n)
            current = torch.full((n,), math.inf)
            self.matched_noise = torch.zeros(n, self.noise_dim)
            self.threshold, self.since_match = torch.zeros(n), torch.zeros(n, dtype=torch.int64)
        else:
            outputs = self.generate(self.matched_noise).reshape(n, -1).cpu()
            current = ((outputs - self._flat_targets().cpu()) ** 2).sum(1)
            self.since_match += 1
            fitted = (current < self.threshold) & (self.since_match >= cfg.imle_staleness)
            which = (fitted | (self.since_match >= cfg.imle_force_rematch)).nonzero().squeeze(1)
        count = self.world.sum(torch.tensor([float(len(which))], dtype=torch.float64)).item()
        self.last_rematched = count / self.total
        if count == 0:  # no rank re-matches: no draws (RS-IMLE would reject them all with nothing to match)
            self.last_rejected = 0.0
            return current
        noise, dist = self.matched_noise_for(self.epoch, which)
        self.matched_noise[which] = noise
        # The bar is what the old sample reached, not the new match's distance: a fresh draw is often farther
        # than a sample pulled for epochs, and basing the bar on it loosened fitted targets' thresholds.
        reached = current[which]
        bar = torch.where(reached.isfinite(), reached, dist)
        self.threshold[which] = bar * (1 - cfg.imle_adaptive_shrink)
        self.since_match[which] = 0
        current[which] = dist
        return current

    def lr_at(self, step: int) -> float:
        """The learning rate of global step ``step`` under ``cfg.imle_lr_schedule``."""
        if self.cfg.imle_lr_schedule == "constant":
            return self.cfg.imle_lr
        return cosine_rate(self.cfg.imle_lr, step, self.cfg.imle_epochs * self.steps_per_epoch)

    def precision_noise(self, epoch: int) -> torch.Tensor | None:
        """The fresh noise of the precision term for every step of ``epoch`` (from (seed, epoch) alone, so a
        resumed epoch redraws it), shaped (steps, batch, noise_dim); None when the term is off."""
        if self.cfg.imle_precision_weight == 0:
            return None
        g = seeding.generator(self.cfg.seed, "imle_precision", epoch)
        size = min(self.batch_size, self.total)
        return torch.randn(self.steps_per_epoch, size, self.noise_dim, generator=g)

    # -- the loop's parts --------------------------------------------------------------------------------
    def begin_epoch(self) -> None:
        """Match (unless resuming mid-epoch with the matching restored from the checkpoint)."""
        if self.step_in_epoch == 0 or self.matched_noise is None:
            if self.cfg.imle_adaptive:
                dist = self._adaptive_rematch()
            else:
                self.matched_noise, dist = self.matched_noise_for(self.epoch)
            self.last_match_distance = self.world.sum(dist.double().sum().reshape(1)).item() / self.total
        self.fresh = self.precision_noise(self.epoch)

    def train_step(self, batch: torch.Tensor) -> float:
        """One regression step on the matched noise of the global ``batch``'s local members, plus the
        precision term on this step's fresh noise; returns this rank's share of the loss (IMLE term +
        weighted precision term). Runs on :attr:`step_threads` intra-op threads with denormals flushed
        (:mod:`.threads`: ``T``'s dead units otherwise slow its late steps several-fold)."""
        with intra_op_threads(self.step_threads), denormals_flushed():
            return self._regress(batch)

    def _regress(self, batch: torch.Tensor) -> float:
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
        """The IMLE columns of the epoch's metrics row: ``match_distance``, the mean over the targets of the
        *squared* L2 distance to the sample matched to each at this epoch's start, in the matching space
        (whitened codes for GLANN's ``T`` with ``imle_whiten``, pixels for pixel IMLE); ``rematched``
        (adaptive IMLE) and ``rejected`` (RS-IMLE) as fractions."""
        row = {"match_distance": self.last_match_distance}
        if self.cfg.imle_adaptive:
            row["rematched"] = self.last_rematched
        if self.cfg.imle_reject_radius > 0:
            row["rejected"] = self.last_rejected
        return row

    def end_epoch(self) -> None:
        self.fresh = None
        if not self.cfg.imle_adaptive:  # plain IMLE matches every epoch anew; adaptive keeps its matches
            self.matched_noise = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.state_dict(),
            "opt": self.opt.state_dict(),
            "matched_noise": None if self.matched_noise is None else self.matched_noise.clone(),
            "threshold": None if self.threshold is None else self.threshold.clone(),
            "since_match": None if self.since_match is None else self.since_match.clone(),
            "last_match_distance": self.last_match_distance,
            "last_rematched": self.last_rematched,
            "last_rejected": self.last_rejected,
            **self.counters(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = self.targets.shape[0]
        # per-target rows: each as this trainer's targets need it (a forged width failed mid-epoch)
        rows = {
            "matched_noise": (torch.float32, (n, self.noise_dim)),
            "threshold": (torch.float32, (n,)),
            "since_match": (torch.int64, (n,)),
        }
        for key, want in rows.items():
            if state.get(key) is not None:
                check_tensor(f"imle {key}", state[key], want)
        if state.get("since_match") is not None and bool((state["since_match"] < 0).any()):
            raise ValueError("imle since_match must be >= 0")
        self.generator.load_state_dict(state["generator"])
        load_adam_state(self.opt, state["opt"], "opt")
        self.matched_noise = state["matched_noise"]
        self.threshold, self.since_match = state.get("threshold"), state.get("since_match")
        self.last_match_distance = state["last_match_distance"]
        self.last_rematched = state.get("last_rematched", float("nan"))
        self.last_rejected = state.get("last_rejected", float("nan"))
        self.load_counters(state)

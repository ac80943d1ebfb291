"""The one epoch loop of every training stage, and the hooks callers attach to it.

A stage trainer (:class:`~glann_ext.train.glo.GLOTrainer`, :class:`~glann_ext.train.imle.IMLETrainer`) knows
how to take one step on a global batch of dataset indices; :func:`run_epochs` walks the epochs and their
batches, keeps the counters and the epoch's tally, and fires the events of :class:`Hook`. The loop knows
nothing of folders: checkpoints, metrics logs, image grids and progress bars are hooks (``train/run.py``
attaches them for a run folder; tests and benchmarks attach what they need).

Epoch ``e`` of a stage visits the dataset in an order drawn from (seed, stage, e) alone, so a run resumed
mid-epoch takes exactly the steps the interrupted one would have taken. The epoch's tally (loss sum, steps,
seconds) is part of the trainer's state, so a resumed epoch reports the mean over all of its steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch

from glann_ext import seeding
from glann_ext._args import checked_int
from glann_ext.errors import DivergedError

from .world import World, global_batch_part


def autocast_for(device: torch.device, enabled: bool):
    """bfloat16 autocast on CUDA (no loss scaling needed); a no-op on CPU, where it does not pay."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


class Hook:
    """Events of :func:`run_epochs`; override the ones you need. In a sharded run every rank calls every
    event at the same point (so a hook may run collectives), and writes files on rank 0 only."""

    def stage_started(self, trainer: StageTrainer) -> None:
        """Before the first epoch that :func:`run_epochs` runs (also when nothing is left to run)."""

    def epoch_started(self, trainer: StageTrainer) -> None:
        """Before the (rest of the) epoch ``trainer.epoch`` runs."""

    def step_completed(self, trainer: StageTrainer, info: dict[str, Any]) -> None:
        """After every step: ``info`` = {stage, epoch (the epoch running, from 0, where a metrics row counts
        epochs done, from 1), step (global), loss (this rank's share)}. To stop a fit early, raise: a
        :class:`~glann_ext.train.Fit` keeps its state and ``run()`` continues from this step."""

    def epoch_completed(self, trainer: StageTrainer, row: dict[str, Any]) -> None:
        """After the epoch's last step; ``row`` is its metrics row (stage, epoch (1-based, = epochs done),
        step, loss, seconds, steps and the stage's own measures); the counters already point past it."""

    def stage_completed(self, trainer: StageTrainer) -> None:
        """After the last epoch."""


class StageTrainer:
    """What both stages share: the counters, the epoch's tally, the batches of an epoch.

    Subclasses set ``stage`` and implement :meth:`train_step` (and optionally :meth:`begin_epoch`,
    :meth:`epoch_metrics`, :meth:`end_epoch`); ``rows`` holds this rank's dataset rows ``[start, start +
    rows)`` of ``total``.
    """

    stage: str = ""

    def __init__(self, cfg: Any, world: World | None, start: int, rows: int, total: int | None):
        self.cfg, self.world = cfg, world or World()
        self.start, self.rows = start, rows
        self.total = rows if total is None else total
        self.epoch = 0  # epochs completed
        self.step_in_epoch = 0  # steps completed in the current epoch
        self.global_step = 0
        self.tally = {"loss": 0.0, "steps": 0, "seconds": 0.0}  # of the current epoch, this rank's share

    @property
    def batch_size(self) -> int:
        """Dataset rows per global step of this stage."""
        return self.cfg.batch_size

    @property
    def steps_per_epoch(self) -> int:
        return seeding.num_batches(self.total, self.batch_size)

    def epoch_batches(self) -> list[torch.Tensor]:
        """The global batches (dataset indices) of the current epoch, in order."""
        perm = seeding.epoch_permutation(self.total, self.cfg.seed, self.stage, self.epoch)
        return seeding.batches(perm, self.batch_size)

    def local_part(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's members of a global batch as local row numbers (all of it for one process)."""
        if not self.world.distributed:
            return batch
        return global_batch_part(batch, self.start, self.start + self.rows)

    # -- the stage's own parts --------------------------------------------------------------------------
    def begin_epoch(self) -> None:
        """Per-epoch preparation (IMLE: the matching), also when resuming mid-epoch."""

    def train_step(self, batch: torch.Tensor) -> float:
        """One step on the global ``batch`` of dataset indices; returns this rank's share of its loss."""
        raise NotImplementedError

    def epoch_metrics(self) -> dict[str, Any]:
        """Extra entries of the epoch's metrics row."""
        return {}

    def end_epoch(self) -> None:
        """Per-epoch clean-up after the last step."""

    # -- state -----------------------------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "tally": dict(self.tally),
        }

    def load_counters(self, state: dict[str, Any]) -> None:
        if int(state["step_in_epoch"]) > self.steps_per_epoch:  # a forged count ran an epoch of no steps
            raise ValueError(
                f"step_in_epoch {state['step_in_epoch']} exceeds the {self.steps_per_epoch} steps of an epoch"
            )
        for name in ("epoch", "step_in_epoch", "global_step"):  # -1 steps ran only an epoch's last batch
            if int(state[name]) < 0:
                raise ValueError(f"{name} must be >= 0, got {state[name]}")
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        # checkpoints of glann_ext 0.1 have no tally: the resumed epoch then reports its remaining steps
        self.tally = dict(state.get("tally") or {"loss": 0.0, "steps": 0, "seconds": 0.0})
        if not self.world.is_main:  # the saved loss is the sum over ranks (gather_tally): rank 0 carries it
            self.tally["loss"] = 0.0

    def gather_tally(self) -> None:
        """Collective: rank 0's tally becomes the sum over ranks, the others' zero; so a checkpoint (which
        holds rank 0's replicated state) carries the whole epoch's sum so far, and sums stay exact. A resume
        gives that sum to its rank 0 only (:meth:`load_counters`), whatever the number of ranks."""
        if not self.world.distributed:
            return
        total = self.world.sum(torch.tensor([self.tally["loss"]], dtype=torch.float64)).item()
        self.tally["loss"] = total if self.world.is_main else 0.0


def cosine_rate(base: float, step: int, total: int) -> float:
    """``base`` annealed to 0 over ``total`` steps by half a cosine (Loshchilov & Hutter, SGDR, 2017)."""
    total = max(total, 1)
    return base * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


# The flags that set each stage's learning rates, for the divergence error.
_RATE_FLAGS = {"glo": "--lr-g and --lr-z", "imle": "--imle-lr"}


def diverged(trainer: StageTrainer, what: str) -> DivergedError:
    """The error of a stage whose training went non-finite (``what``: where it was seen)."""
    rates = _RATE_FLAGS.get(trainer.stage, "the learning rate")
    return DivergedError(
        f"the {trainer.stage.upper()} stage diverged: {what} at epoch {trainer.epoch + 1}, step "
        f"{trainer.global_step}. Nothing non-finite was saved: the last checkpoint holds the state before it "
        f"(metrics.jsonl has its epochs' losses); resume with lower {rates} (a resume may change the learning "
        f"rates), or start a new run folder"
    )


def run_epoch(trainer: StageTrainer, hooks: Sequence[Hook] = ()) -> dict[str, Any]:
    """Run the current epoch from its current step to its end; returns the epoch's metrics row."""
    for h in hooks:
        h.epoch_started(trainer)
    mark = time.perf_counter()
    trainer.begin_epoch()
    for batch in trainer.epoch_batches()[trainer.step_in_epoch :]:
        loss = trainer.train_step(batch)
        if not math.isfinite(loss) and not trainer.world.distributed:  # ranks agree at the epoch's end
            raise diverged(trainer, f"the loss is {loss}")
        now = time.perf_counter()
        trainer.tally["loss"] += loss
        trainer.tally["steps"] += 1
        trainer.tally["seconds"] += now - mark  # hook time lands in the next step's share
        mark = now
        trainer.step_in_epoch += 1
        trainer.global_step += 1
        info = {"stage": trainer.stage, "epoch": trainer.epoch, "step": trainer.global_step, "loss": loss}
        for h in hooks:
            h.step_completed(trainer, info)
    trainer.tally["seconds"] += time.perf_counter() - mark
    loss_sum = trainer.tally["loss"]
    if trainer.world.distributed:  # the ranks' shares add up to the global batches' losses
        loss_sum = trainer.world.sum(torch.tensor([loss_sum], dtype=torch.float64)).item()
    steps = trainer.tally["steps"]
    if not math.isfinite(loss_sum):  # the same on every rank (summed): no row, grid or checkpoint of it
        raise diverged(trainer, f"the epoch's loss is {loss_sum}")
    row = {
        "stage": trainer.stage,
        "epoch": trainer.epoch + 1,
        "step": trainer.global_step,
        "loss": loss_sum / max(steps, 1),
        "seconds": trainer.tally["seconds"],
        "steps": steps,
        **trainer.epoch_metrics(),
    }
    trainer.end_epoch()
    trainer.epoch += 1
    trainer.step_in_epoch = 0
    trainer.tally = {"loss": 0.0, "steps": 0, "seconds": 0.0}
    for h in hooks:
        h.epoch_completed(trainer, row)
    return row


def run_epochs(trainer: StageTrainer, epochs: int, hooks: Sequence[Hook] = ()) -> None:
    """Train until ``trainer.epoch == epochs`` (from wherever its counters stand)."""
    epochs = checked_int("epochs", epochs, 0)  # 2.5 ran 3 epochs
    for h in hooks:
        h.stage_started(trainer)
    while trainer.epoch < epochs:
        run_epoch(trainer, hooks)
    for h in hooks:
        h.stage_completed(trainer)

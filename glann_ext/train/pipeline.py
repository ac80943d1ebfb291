"""The training pipeline in memory: images and a config in, a trained model out. Every caller uses it: the
``glann train`` command and :func:`glann_ext.train.train` (through a run folder, :mod:`.run`), the quality
benchmark, tests, and every rank of a ``torchrun`` job.

GLANN (``imle_space="latent"``): GLO fits G and one code per image (:class:`~.glo.GLOTrainer`), then IMLE fits
the mapping T from noise to those codes (:class:`~.imle.IMLETrainer`). Pixel IMLE (``imle_space="pixel"``):
IMLE fits G from noise straight to the images. Both stages run in the one epoch loop of :mod:`.loop`, which
fires the hooks a caller attaches (checkpoints, logs, grids, progress: see :mod:`.run`).

    model = fit(images, preset("laptop"))             # GLANN, in memory, no files
    model.sample(64)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from glann_ext._args import checked_int
from glann_ext._threads import intra_op_threads
from glann_ext.backend import Ops, as_ops
from glann_ext.errors import RunFolderError, UsageError
from glann_ext.models import GLANN, PixelIMLE, ReconstructionLoss
from glann_ext.models.training_data import images_digest

from .build import build_model
from .config import TrainConfig, check_device, with_absolute_paths
from .glo import GLOTrainer
from .imle import IMLETrainer
from .inputs import check_generator_output, checked_config, checked_images, checked_targets
from .loop import Hook, run_epochs
from .whitening import code_whitening
from .world import World

STAGES = ("all", "glo", "imle")
PHASES = ("glo", "imle")


class Fit:
    """One training run in memory: the model being trained, its stage trainers and the phase.

    ``images`` (n, C, H, W) in [0, 1] on the CPU are the dataset rows ``[start, start + n)`` of ``total``
    (all of them for one process; a rank's shard under torchrun). The model's networks are built from the
    config's seed (:func:`~.build.build_model`), or G is the caller's ``generator`` (GLANN only: any module
    mapping codes (n, ``cfg.latent_dim``) to images shaped like ``images``, trained in place); the GLO codes
    from ``cfg.init``. ``cfg.threads`` (None: unchanged) holds while it is built, while :meth:`run` trains
    and while :meth:`load_state_dict` restores, as in :func:`fit` and a run folder, so all train the same
    model bit for bit.
    :meth:`state_dict`/:meth:`load_state_dict` hold everything needed to continue exactly (this rank's rows
    of the per-image state).
    """

    def __init__(
        self,
        images: torch.Tensor,
        cfg: TrainConfig,
        *,
        ops: Ops | str | None = None,
        world: World | None = None,
        device: str | torch.device | None = None,
        start: int = 0,
        total: int | None = None,
        record: bool = True,
        generator: torch.nn.Module | None = None,
    ):
        cfg = with_absolute_paths(checked_config(cfg))  # the model file's config names files from anywhere
        images = checked_images(images, cfg)
        self.cfg, self.ops, self.world = cfg, as_ops(ops, cfg.ops), world or World()
        self.device = torch.device(device if device is not None else cfg.device)
        self.images, self.start = images, checked_int("start", start, 0)
        self.total = images.shape[0] if total is None else checked_int("total", total, 1)
        if self.start + images.shape[0] > self.total:  # the rows must lie in the dataset
            raise UsageError(
                f"rows [start, start + n) = [{self.start}, {self.start + images.shape[0]}) lie outside a dataset of "
                f"total = {self.total} images"
            )
        self.image_shape: tuple[int, int, int] = tuple(images.shape[1:])
        # the record of the images every model of this Fit trained on (models/training_data.py), for models
        # trained in memory: a run folder (record=False) has its data's fingerprint, taken from the files and so
        # the same on every machine, where the digest of converted floats may differ between CPUs
        whole = record and self.world.size == 1 and self.start == 0 and self.total == images.shape[0]
        self.training_data = images_digest(images) if whole else None
        if generator is not None and self.world.distributed:
            _check_syncable(generator)
        # cfg.threads holds for the networks' and codes' initialisation (a PCA) here and for run(), as in
        # fit() and a run folder: a Fit trains bit for bit what they train
        with intra_op_threads(cfg.threads):
            built = build_model(cfg, self.image_shape, ops=self.ops, generator=generator)
            self.G = built.G
            self.T = built.T if isinstance(built, GLANN) else None
            self.phase = "glo" if isinstance(built, GLANN) else "imle"
            self.glo: GLOTrainer | None = None
            self.imle: IMLETrainer | None = None
            args = (cfg, self.ops, self.device, self.world, start, self.total)
            if self.pixel:
                loss = ReconstructionLoss.from_config(cfg, self.ops)
                self.imle = IMLETrainer(
                    images, self.G, cfg, self.ops, self.device, loss, self.world, start, self.total
                )
            else:
                self.glo = GLOTrainer(images, *args, G=self.G)

    @property
    def pixel(self) -> bool:
        return self.cfg.imle_space == "pixel"

    @property
    def vgg_digest(self) -> str | None:
        """The SHA-256 of the perceptual loss's weights file as the reconstruction loss loaded it (None
        without that term): a run folder records it in its checkpoints and checks it on resume."""
        return (self.imle if self.pixel else self.glo).loss_fn.vgg_sha256

    def _imle_trainer(self) -> IMLETrainer:
        """GLANN's IMLE stage on the GLO codes (built when the stage starts, or when a state needs it). With
        ``imle_whiten`` it fits ``T.net`` to the whitened codes and sets ``T``'s output map to the inverse
        whitening; recomputed from the finished codes, so a resumed stage gets the same map."""
        if self.imle is None:
            targets, mapping = self.glo.codes, self.T
            if self.cfg.imle_whiten:
                w = code_whitening(targets, self.world, self.total)
                self.T.set_output_affine(*w.output_map())
                self.T.to(self.device)  # the map's buffers too: the trainer moves only what it trains
                targets, mapping = w.whiten(targets), self.T.net
            self.imle = IMLETrainer(
                targets,
                mapping,
                self.cfg,
                self.ops,
                self.device,
                None,
                self.world,
                self.start,
                self.total,
            )
        return self.imle

    # -- the model ---------------------------------------------------------------------------------------
    @property
    def model(self) -> GLANN | PixelIMLE:
        """The model as trained so far (sharing the trainers' networks): for GLANN, T is left out until the
        IMLE stage has begun, so a GLO-only model samples only through the Gaussian baseline."""
        config = self.cfg.to_dict()
        if self.pixel:
            model = PixelIMLE(self.G, ops=self.ops, config=config)
        else:
            T = (
                self.T
                if self.phase == "imle" and self.imle is not None and self.imle.global_step > 0
                else None
            )
            model = GLANN(
                self.G, self.glo.codes, T, ops=self.ops, config=config, image_shape=self.image_shape
            )
        model.training_data = self.training_data
        return model

    # -- running -----------------------------------------------------------------------------------------
    def check_stage(self, stage: str) -> None:
        """Raise unless :meth:`run` can train ``stage`` from the current state (a run folder asks before it
        writes anything, so a refused start leaves the folder as it was)."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if (
            not self.pixel
            and stage == "imle"
            and self.phase == "glo"
            and self.glo.epoch < self.cfg.glo_epochs
        ):
            raise RunFolderError(
                f"stage imle (--stage imle) needs a finished GLO stage ({self.glo.epoch}/{self.cfg.glo_epochs} "
                "epochs done); train stage glo first (run('glo'), --stage glo)"
            )
        if (
            stage == "glo"
            and not self.pixel
            and self.phase == "imle"
            and self.imle.epoch < self.cfg.imle_epochs
        ):
            # it would return (and a run folder save) the model with T as the stopped IMLE stage left it
            raise RunFolderError(
                f"stage glo (--stage glo): the GLO stage is finished and the IMLE stage has begun "
                f"({self.imle.epoch}/{self.cfg.imle_epochs} epochs done); finish it with stage imle or all"
            )

    def run(self, stage: str = "all", hooks: Sequence[Hook] = ()) -> GLANN | PixelIMLE:
        """Train (or finish) ``stage``: "all" (GLO then IMLE), "glo", or "imle" (after a finished GLO stage;
        pixel IMLE has only its IMLE stage). Returns the model in eval mode."""
        self.check_stage(stage)
        with intra_op_threads(self.cfg.threads):  # this call only, as fit() and a run folder do
            return self._run(stage, hooks)

    def _run(self, stage: str, hooks: Sequence[Hook]) -> GLANN | PixelIMLE:
        cfg = self.cfg
        if not self.pixel:
            if self.phase == "glo":
                run_epochs(self.glo, cfg.glo_epochs, hooks)
            if stage == "glo":
                return self.model.eval()
            self.phase = "imle"
            self._imle_trainer()
        run_epochs(self.imle, cfg.imle_epochs, hooks)
        return self.model.eval()

    # -- state -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """{phase, glo, imle}: the stage trainers' states (None for a stage not begun)."""
        return {
            "phase": self.phase,
            "glo": None if self.glo is None else self.glo.state_dict(),
            "imle": None if self.imle is None else self.imle.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["phase"] not in PHASES:
            raise ValueError(f"state phase must be one of {PHASES}, got {state['phase']!r}")
        self.phase = state["phase"]
        if state.get("glo") is not None and self.glo is not None:
            self.glo.load_state_dict(state["glo"])
        if state.get("imle") is not None:
            # on cfg.threads, as the stage's start: the codes' whitening is computed anew here
            with intra_op_threads(self.cfg.threads):
                (self.imle if self.pixel else self._imle_trainer()).load_state_dict(state["imle"])

    def gather_tallies(self) -> None:
        """Collective: see :meth:`~.loop.StageTrainer.gather_tally` (before a checkpoint of the state)."""
        for trainer in (self.glo, self.imle):
            if trainer is not None:
                trainer.gather_tally()


def _check_syncable(generator: torch.nn.Module) -> None:
    """UsageError for a generator of one's own that a sharded run cannot train: each BatchNorm becomes a
    synchronised one (:class:`~.world.GlobalBatchNorm`), which needs running statistics for eval mode. (Not a
    module at all: :func:`~.build.check_own_generator` says so.)"""
    if not isinstance(generator, torch.nn.Module):
        return
    for name, m in generator.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not m.track_running_stats:
            raise UsageError(
                f"generator: its BatchNorm {name or '(the module itself)'} keeps no running statistics "
                "(track_running_stats=False); under torchrun every BatchNorm is replaced by a synchronised one, "
                "which needs them"
            )


def _check_device(cfg: TrainConfig, device: str | torch.device | None) -> None:
    """ConfigError unless this machine has the device the call trains on (``device``, else ``cfg.device``)."""
    check_device(str(device) if device is not None else cfg.device, fused=cfg.ops == "fused")


def fit(
    images: torch.Tensor,
    cfg: TrainConfig,
    *,
    ops: Ops | str | None = None,
    world: World | None = None,
    device: str | torch.device | None = None,
    hooks: Sequence[Hook] = (),
    stage: str = "all",
    generator: torch.nn.Module | None = None,
) -> GLANN | PixelIMLE:
    """Train the model of ``cfg`` on ``images`` (n, C, H, W) in [0, 1], in memory: GLANN, or pixel IMLE when
    ``cfg.imle_space == "pixel"``. ``hooks`` receive the loop's events (see :class:`~.loop.Hook`).
    ``cfg.threads`` (None: unchanged) holds for this call only, as in a run folder's :func:`~.run.train`.
    ``generator``: GLANN's G of your own instead of the configured DCGAN generator, any ``nn.Module``
    mapping float32 codes (n, ``cfg.latent_dim``) to images (n, C, H, W) in [0, 1] (end it in a sigmoid);
    it is trained in place and becomes the model's ``G`` (save the model with :func:`~.save_model`; loading
    it takes the module again, :func:`~.run.load_model`'s ``generator``).

    Raises UsageError (or ConfigError, NonFiniteError) for images that are not float (n, C, H, W) in [0, 1]
    with H == W, n >= 2 and sizes ``cfg`` agrees with, for an invalid config, and for a device this machine
    does not have."""
    _check_device(checked_config(cfg), device)
    return Fit(images, cfg, ops=ops, world=world, device=device, generator=generator).run(stage, hooks)


def fit_imle(
    targets: torch.Tensor,
    generator: torch.nn.Module,
    cfg: TrainConfig,
    *,
    ops: Ops | str | None = None,
    device: str | torch.device | None = None,
    loss_fn: Any = None,
    hooks: Sequence[Hook] = (),
) -> IMLETrainer:
    """IMLE of any ``generator`` (noise (B, cfg.noise_dim) -> target-shaped output) onto ``targets`` for
    ``cfg.imle_epochs`` epochs (e.g. GLANN's second stage on 2-D points); returns the trainer, whose
    :meth:`~.imle.IMLETrainer.generate` maps noise through the trained generator.

    ``generator`` is trained in place (moved to the device; a module of your own keeps its memory layout)
    and left in eval mode. The config's IMLE fields apply (``imle_*``, ``noise_dim``,
    ``seed``, ``amp``, ``threads`` for this call only): with ``imle_space="latent"`` (the default) steps take
    ``imle_batch_size`` targets and Adam ``imle_betas``, as GLANN's ``T`` does; with ``"pixel"``,
    ``batch_size`` and ``betas``, as the original IMLE's G does. ``imle_whiten`` is GLANN's, for its codes
    (:func:`fit`): ``targets`` here are matched as given."""
    _check_device(checked_config(cfg), device)
    targets = checked_targets(targets)
    check_generator_output(generator, targets, cfg.noise_dim)
    ops = as_ops(ops, cfg.ops)
    with intra_op_threads(cfg.threads):
        trainer = IMLETrainer(
            targets, generator, cfg, ops, device if device is not None else cfg.device, loss_fn
        )
        run_epochs(trainer, cfg.imle_epochs, hooks)
    trainer.generator.eval()
    return trainer

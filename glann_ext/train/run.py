"""A training run in a folder: config, atomic checkpoints, exact resume, metrics, PNG grids.

Folder layout::

    config.json        the TrainConfig (the run is reproducible from it)
    checkpoints/       latest training state: manifest.json + one step folder of per-rank files
                       (phase, trainers, optimizers incl. the latent optimizer, RNG; see .checkpoint)
    model.pt           the finished model (GLANN.export) once training is done
    metrics.jsonl      one JSON line per epoch
    images/            reconstructions and sample grids written during training
    tb/                TensorBoard events, when tensorboard is installed

Under torchrun (``WORLD_SIZE`` > 1) every process runs :class:`Run` on the same folder: each trains on its
shard of the dataset and writes its shard of the checkpoint; rank 0 alone writes config, metrics, images
and the model (see :mod:`.world` for why the result equals a single-process run).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from glann_ext.data import load_image_shard
from glann_ext.models import MLP, DCGANGenerator, start_size

from . import checkpoint as ckpt
from .backend import get_ops
from .config import CONFIG_FILE, TrainConfig
from .glann import GLANN, fit_gaussian
from .glo import GLOTrainer
from .images import save_grid
from .imle import IMLETrainer
from .losses import ReconstructionLoss
from .world import World, init_world, local_device

MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.jsonl"
# Fields that may change when a run is resumed: they do not alter what is computed, or extend it.
RESUMABLE_OVERRIDES = (
    "ops",
    "device",
    "threads",
    "glo_epochs",
    "imle_epochs",
    "ckpt_every",
    "sample_every",
    "data_root",
)
N_SHOW = 32  # images per row in reconstruction grids


class Run:
    """Trains (or resumes) the run in ``out``. ``on_step(trainer, info)`` is called after every step, after
    any checkpoint of that step was written (tests use it to interrupt a run)."""

    def __init__(
        self,
        out: str | Path,
        cfg: TrainConfig | None = None,
        *,
        progress: bool = True,
        on_step: Callable[[Any, dict], None] | None = None,
        log: Callable[[str], None] = print,
    ):
        self.out = Path(out)
        self.progress, self.user_hook, self._log = progress, on_step, log
        self.cfg = self._resolve_config(cfg)
        self.device = local_device(self.cfg.device)
        self.ops = get_ops(self.cfg.ops)
        self.tb = None
        self.world = World()
        self.total = 0

    def log(self, msg: str) -> None:
        if self.world.is_main:
            self._log(msg)

    # -- configuration -------------------------------------------------------------------------------
    def _resolve_config(self, cfg: TrainConfig | None) -> TrainConfig:
        path = self.out / CONFIG_FILE
        if path.exists():
            saved = TrainConfig.from_json(path)
            if cfg is not None:
                changed = {
                    k: v
                    for k, v in dataclasses.asdict(cfg).items()
                    if dataclasses.asdict(saved)[k] != v and k not in RESUMABLE_OVERRIDES
                }
                if changed:
                    raise ValueError(
                        f"{self.out} holds a run with a different config ({', '.join(sorted(changed))} "
                        f"differ); use another --out, or resume it without changing those options"
                    )
                for k in RESUMABLE_OVERRIDES:
                    setattr(saved, k, getattr(cfg, k))
            return saved.validate()
        if cfg is None:
            raise FileNotFoundError(f"{path}: no run to resume here, and no configuration given")
        return cfg.validate()  # written by train() once the data has loaded

    # -- bookkeeping ---------------------------------------------------------------------------------
    def _save(self, phase: str, glo: GLOTrainer | None, imle: IMLETrainer | None) -> None:
        """One checkpoint step (collective: every rank calls it at the same step)."""
        rows = len(glo.codes) if glo is not None else len(imle.targets)
        glo_rep, glo_rows = ckpt.split_state("glo", glo.state_dict() if glo else None, rows)
        imle_rep, imle_rows = ckpt.split_state("imle", imle.state_dict() if imle else None, rows)
        trainer = imle if phase == "imle" and imle is not None else glo
        ckpt.save_step(
            self.out,
            self.world,
            self.total,
            lambda: {
                "phase": phase,
                "glo": glo_rep,
                "imle": imle_rep,
                "rng": ckpt.rng_state(),
                "config": dataclasses.asdict(self.cfg),
                "image_shape": self.image_shape,
            },
            {**glo_rows, **imle_rows},
            {"phase": phase, "epoch": trainer.epoch, "global_step": trainer.global_step},
        )

    def _metrics(self, row: dict) -> None:
        if not self.world.is_main:
            return
        with open(self.out / METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k in ("loss", "match_distance", "seconds"):
                if k in row and row[k] is not None:
                    self.tb.add_scalar(f"{row['stage']}/{k}", row[k], row["epoch"])

    def _hook(self, phase_state: Callable[[], tuple]):
        def hook(trainer, info):
            if self.cfg.ckpt_every and info["step"] % self.cfg.ckpt_every == 0:
                self._save(*phase_state())
            if self.user_hook is not None:
                self.user_hook(trainer, info)

        return hook

    def _epochs(self, trainer, epochs: int, name: str, phase_state, after_epoch) -> None:
        from tqdm import tqdm

        while trainer.epoch < epochs:
            start_step, t0 = trainer.step_in_epoch, time.perf_counter()
            with tqdm(
                total=trainer.steps_per_epoch,
                initial=start_step,
                disable=not (self.progress and self.world.is_main),
                desc=f"{name} {trainer.epoch + 1}/{epochs}",
                unit="step",
                dynamic_ncols=True,
            ) as bar:
                loss = trainer.run_epoch(self._hook(phase_state), bar)
            seconds = time.perf_counter() - t0
            self._save(*phase_state())
            row = {
                "stage": trainer.stage,
                "epoch": trainer.epoch,
                "step": trainer.global_step,
                "loss": loss,
                "seconds": seconds,
                "steps": trainer.steps_per_epoch - start_step,
            }
            if isinstance(trainer, IMLETrainer):
                row["match_distance"] = trainer.last_match_distance
            self._metrics(row)
            self.log(f"{name} epoch {trainer.epoch}/{epochs}: loss {loss:.4f}, {seconds:.1f} s")
            if self.cfg.sample_every and (
                trainer.epoch % self.cfg.sample_every == 0 or trainer.epoch == epochs
            ):
                after_epoch(trainer.epoch)

    # -- the stages ----------------------------------------------------------------------------------
    def load_images(self) -> torch.Tensor:
        """This rank's shard of the training images (all of them for a single process)."""
        cfg = self.cfg
        shard = load_image_shard(
            cfg.dataset,
            self.world.rank,
            self.world.size,
            image_size=cfg.image_size,
            channels=cfg.channels,
            data_root=cfg.data_root,
            limit=cfg.limit,
        )
        self.start, self.total = shard.start, shard.total
        return shard.images

    def train(self, stage: str = "all") -> GLANN:
        """Run (or finish) ``stage``: "all" (GLO then IMLE), "glo" or "imle" (IMLE after a finished GLO).

        Under torchrun this joins (or, when none exists yet, creates and at the end destroys) the
        default process group; every rank must call it. On ranks other than 0 the returned model holds
        only that rank's codes."""
        if stage not in ("all", "glo", "imle"):
            raise ValueError(f"stage must be 'all', 'glo' or 'imle', got {stage!r}")
        import torch.distributed as dist

        created = dist.is_available() and not dist.is_initialized()
        self.world = init_world(self.device)
        created = created and self.world.distributed
        try:
            return self._train(stage)
        finally:
            if created:
                dist.destroy_process_group()

    def _train(self, stage: str) -> GLANN:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.world.check_same("the run configuration", dataclasses.asdict(cfg))
        images = self.load_images()  # first, so that bad data leaves no half-made run folder
        self.image_shape = tuple(images.shape[1:])
        if self.total < 2 * self.world.size:
            raise ValueError(
                f"{cfg.dataset}: {self.total} images cannot be shared by {self.world.size} processes"
            )
        try:
            start_size(images.shape[-1])
        except ValueError as exc:
            raise ValueError(
                f"{cfg.dataset}: images of size {images.shape[-1]} are not supported ({exc}); "
                f"set image_size (--image-size) to resize them"
            ) from exc
        if self.world.is_main:
            (self.out / "images").mkdir(parents=True, exist_ok=True)
            if not (self.out / CONFIG_FILE).exists():
                self.cfg.to_json(self.out / CONFIG_FILE)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out / "tb"))
            except ImportError:  # tensorboard is optional
                self.tb = None
        state = ckpt.load_step(self.out, self.world, self.total)
        if state is not None:
            main, rows = state
            ckpt.set_rng_state(main["rng"])
            state = {
                "phase": main["phase"],
                "glo": ckpt.join_state("glo", main["glo"], rows),
                "imle": ckpt.join_state("imle", main["imle"], rows),
            }
            self.log(f"resuming {self.out} from phase {state['phase']}")
        try:
            if cfg.imle_space == "pixel":
                return self._train_pixel_imle(images, state)
            return self._train_glann(images, state, stage)
        finally:
            if self.tb is not None:
                self.tb.close()

    def _train_glann(self, images: torch.Tensor, state: dict | None, stage: str) -> GLANN:
        cfg = self.cfg
        glo = GLOTrainer(images, cfg, self.ops, self.device, self.world, self.start, self.total)
        phase = "glo"
        if state is not None:
            phase = state["phase"]
            glo.load_state_dict(state["glo"])
        if stage == "imle" and (phase == "glo" and glo.epoch < cfg.glo_epochs):
            raise RuntimeError(
                f"{self.out}: --stage imle needs a finished GLO stage "
                f"({glo.epoch}/{cfg.glo_epochs} epochs done); run --stage glo first"
            )
        show = torch.arange(min(N_SHOW, len(images)))  # rank 0's first rows: dataset indices 0, 1, ...

        def glo_images(epoch: int) -> None:
            fit = fit_gaussian(glo.codes, self.world)  # collective
            if not self.world.is_main:
                return
            model = GLANN(glo.G, glo.codes, None, cfg, self.ops)
            save_grid(
                torch.cat([images[show], model.reconstruct(show).cpu()]),
                self.out / "images" / f"reconstructions_glo_{epoch:03d}.png",
                nrow=len(show),
            )
            save_grid(
                model.sample_gaussian(64, seed=0, fit=fit).cpu(),
                self.out / "images" / f"samples_gaussian_{epoch:03d}.png",
            )
            glo.G.train()

        if phase == "glo":
            self._epochs(glo, cfg.glo_epochs, "GLO", lambda: ("glo", glo, None), glo_images)
        if stage == "glo":
            model = GLANN(glo.G, glo.codes, None, cfg, self.ops)
            self._finish(model, images, show)
            return model
        torch.manual_seed(cfg.seed + 1)  # T's initialisation: the same whether or not GLO was resumed
        T = MLP(cfg.noise_dim, cfg.latent_dim, cfg.mapping_hidden, cfg.mapping_layers, cfg.mapping_batch_norm)
        imle = IMLETrainer(
            glo.codes, T, cfg, self.ops, self.device, world=self.world, start=self.start, total=self.total
        )
        if state is not None and state["imle"] is not None:
            imle.load_state_dict(state["imle"])
        if phase == "glo":
            self._save("imle", glo, imle)
        model = GLANN(glo.G, glo.codes, T, cfg, self.ops)

        def imle_images(epoch: int) -> None:
            if self.world.is_main:
                save_grid(
                    model.sample(64, seed=0).cpu(), self.out / "images" / f"samples_imle_{epoch:03d}.png"
                )

        self._epochs(imle, cfg.imle_epochs, "IMLE", lambda: ("imle", glo, imle), imle_images)
        self._finish(model, images, show)
        return model

    def _train_pixel_imle(self, images: torch.Tensor, state: dict | None) -> GLANN:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        G = DCGANGenerator(cfg.noise_dim, images.shape[-1], images.shape[1], cfg.gen_width)
        imle = IMLETrainer(
            images,
            G,
            cfg,
            self.ops,
            self.device,
            loss_fn=ReconstructionLoss.from_config(cfg, self.ops),
            world=self.world,
            start=self.start,
            total=self.total,
        )
        if state is not None and state["imle"] is not None:
            imle.load_state_dict(state["imle"])
        model = GLANN(G, torch.zeros(0, cfg.noise_dim, device=self.device), None, cfg, self.ops)

        def imle_images(epoch: int) -> None:
            if self.world.is_main:
                save_grid(
                    model.sample(64, seed=0).cpu(),
                    self.out / "images" / f"samples_pixel_imle_{epoch:03d}.png",
                )

        self._epochs(imle, cfg.imle_epochs, "IMLE-pixel", lambda: ("imle", None, imle), imle_images)
        self._finish(model, images, None)
        return model

    def _finish(self, model: GLANN, images: torch.Tensor, show: torch.Tensor | None) -> None:
        model.eval()
        self.world.barrier()  # the last checkpoint step is complete on every rank
        if self.world.is_main:
            if self.world.distributed and model.codes.numel():  # the whole code table, from the shards
                codes = ckpt.gather_rows(self.out, ["glo.codes"])["glo.codes"].to(model.device)
                model = GLANN(model.G, codes, model.T, self.cfg, self.ops)
            ckpt.save_atomic(model.export(), self.out / MODEL_FILE)
            if self.cfg.sample_every:
                if model.T is not None or self.cfg.imle_space == "pixel":
                    save_grid(model.sample(64, seed=0).cpu(), self.out / "samples.png")
                else:
                    save_grid(model.sample_gaussian(64, seed=0).cpu(), self.out / "samples.png")
                if show is not None:
                    save_grid(
                        torch.cat([images[show], model.reconstruct(show).cpu()]),
                        self.out / "reconstructions.png",
                        nrow=len(show),
                    )
        self.world.barrier()
        self.log(f"model written to {self.out / MODEL_FILE}")


def train(cfg: TrainConfig | None, out: str | Path, stage: str = "all", **kwargs: Any) -> GLANN:
    """Train (or resume) the run in ``out``; see :class:`Run`."""
    return Run(out, cfg, **kwargs).train(stage)


def load_model(path: str | Path, ops: str | None = None, device: str = "cpu") -> GLANN:
    """The model of run folder ``path`` (``model.pt``, else the latest checkpoint) or of a model file."""
    path = Path(path)
    if path.is_dir():
        if (path / MODEL_FILE).exists():
            return GLANN.from_export(ckpt.load(path / MODEL_FILE), ops=ops, device=device)
        if ckpt.read_manifest(path) is None:
            raise FileNotFoundError(
                f"{path}: no {MODEL_FILE} or {ckpt.CHECKPOINT_DIR}/{ckpt.MANIFEST_FILE} (not a glann run folder?)"
            )
        return GLANN.from_export(_export_from_checkpoint(path), ops=ops, device=device)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run folder or model file")
    return GLANN.from_export(ckpt.load(path), ops=ops, device=device)


def _export_from_checkpoint(run: Path) -> dict[str, Any]:
    """A :meth:`GLANN.export`-shaped dict assembled from the latest checkpoint of ``run`` (codes gathered
    from every shard)."""
    state = ckpt.latest_main(run)
    glo, imle, cfg = state["glo"], state["imle"], state["config"]
    if cfg["imle_space"] == "pixel":
        if imle is None:
            raise RuntimeError(f"{run}: checkpoint holds no IMLE state yet")
        G, codes, T = imle["generator"], torch.zeros(0, cfg["noise_dim"]), None
    else:
        if glo is None:
            raise RuntimeError(f"{run}: checkpoint holds no GLO stage yet")
        G, codes = glo["G"], ckpt.gather_rows(run, ["glo.codes"])["glo.codes"]
        T = imle["generator"] if imle is not None and imle["epoch"] > 0 else None
    return {"cfg": cfg, "image_shape": state["image_shape"], "G": G, "codes": codes, "T": T}

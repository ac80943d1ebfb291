"""A training run in a folder: the config, checkpoints and exact resume, metrics, PNG grids, the model file.

The training itself is :class:`~.pipeline.Fit`; a :class:`Run` adds the folder around it: it resolves the
config (a new run, or the saved one with the overrides a resume may change), restores the latest checkpoint,
and attaches the hooks that write the folder. Folder layout::

    config.json           the TrainConfig the run last trained with (a resume's overrides included)
    resumes.jsonl         one JSON line per resume that changed config.json: the fields (saved, new) and the
                          checkpoint it resumed from (config.json as first written + these = the run's history)
    checkpoints/          latest training state: manifest.json + one step folder of per-rank files
                          (see .checkpoint)
    model.safetensors     the finished model (weights + JSON description; glann_ext.models.files)
    metrics.jsonl         one JSON line per epoch
    images/               reconstructions and sample grids written during training
    samples.png, reconstructions.png   grids of the finished model
    tb/                   TensorBoard events, when tensorboard is installed

Under torchrun (``WORLD_SIZE`` > 1) every process runs :class:`Run` on the same folder: each trains on its
shard of the dataset and writes its shard of the checkpoint; rank 0 alone writes config, metrics, images
and the model (see :mod:`.world` for why the result equals a single-process run).
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import time
from pathlib import Path
from typing import Any, Callable

import torch

from glann_ext._io import (
    LOCK_FILE,
    TEMP_NAME,
    FolderLock,
    append_line,
    atomic_write,
    ensure_dir,
    read_regular,
    remove_stale_temps,
)
from glann_ext._threads import intra_op_threads
from glann_ext.backend import get_ops
from glann_ext.data import NAMED, DataError, fingerprint_change, load_image_shard
from glann_ext.errors import CheckpointError, ConfigError, GlannError, RunFolderError, UsageError
from glann_ext.images import PAIR_COLUMNS, paired_rows, save_grid, written_here
from glann_ext.models import (
    GLANN,
    GenerativeModel,
    PixelIMLE,
    fit_gaussian,
    load_model_file,
    save_model,
    start_size,
)
from glann_ext.models.generative import built_to_fit, check_unit_codes

from . import checkpoint as ckpt
from .build import build_generator, build_mapping
from .checkpoint import LEGACY_MODEL_FILE, MODEL_FILE
from .config import (
    CONFIG_FILE,
    PATH_FIELDS,
    SAMPLING_FIELDS,
    TrainConfig,
    check_device,
    load_run_config,
    with_absolute_paths,
)
from .imle import check_distributed_imle
from .inputs import checked_config
from .loop import Hook, StageTrainer, diverged
from .pipeline import Fit
from .whitening import code_whitening
from .world import World, disagreement, init_world, local_device

METRICS_FILE = "metrics.jsonl"
RESUMES_FILE = "resumes.jsonl"
# Fields that may change when a run is resumed: they do not alter what is computed, or extend it.
RESUMABLE_OVERRIDES = (
    "ops",
    "device",
    "threads",
    "lr_g",  # a run that diverged resumes from its last good checkpoint with a lower rate
    "lr_z",
    "imle_lr",
    "imle_reject_radius",  # likewise, a radius that came to reject every draw (RS-IMLE)
    "glo_epochs",
    "imle_epochs",
    "ckpt_every",
    "sample_every",
    "data_root",
    "dataset",  # data that moved: the checkpoint's fingerprint of the rows' content must still match
    *SAMPLING_FIELDS,  # the trained networks and codes are the same
)
# image_size / channels that a run left None (the data's own) and a resume names: the same images when they
# load at the checkpoint's image shape (checked in _restore; another shape is refused there)
SHAPE_FIELDS = ("image_size", "channels")
# What GLANN's IMLE stage alone reads (T is seeded on its own, so GLO never depends on them): a resume whose
# checkpoint is still in the GLO phase, no T trained yet, may change them (a finished `--stage glo` tried
# with another T), and trains what a new run with them would
IMLE_STAGE_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(TrainConfig)
    if (f.name.startswith(("imle_", "mapping_")) and f.name != "imle_space") or f.name == "noise_dim"
)
# what a resume may set: logged in resumes.jsonl
RECORDED_FIELDS = tuple(
    dict.fromkeys((*RESUMABLE_OVERRIDES, *SHAPE_FIELDS, *IMLE_STAGE_FIELDS, "vgg_weights"))
)
N_SHOW = 32  # images per row in reconstruction grids


def _may_change(field: str, saved: Any, new: Any, phase: str | None) -> bool:
    """Whether a resume may change ``field`` from ``saved`` to ``new`` when its checkpoint is in ``phase``
    (None: no checkpoint, a model file only): the IMLE stage's fields before IMLE has begun; a shape field
    to or from None (the data's own, checked against the checkpoint's image shape); RS-IMLE's radius only
    down (to 0: off), the way out of a radius that came to reject every draw, once IMLE trains with it; the
    VGG weights' path to another spelling of the same file."""
    if phase == "glo" and field in IMLE_STAGE_FIELDS:
        return True
    if field == "imle_reject_radius":
        return new <= saved
    if field == "vgg_weights" and _same_file(saved, new):
        # a run of 0.3.3 or before saved it as given (relative); the command that started it names it absolute
        return True
    return field in RESUMABLE_OVERRIDES or (field in SHAPE_FIELDS and None in (saved, new))


def _recorded_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[Any]]:
    """field -> [old, new] for the :data:`RECORDED_FIELDS` a resume changes (resumes.jsonl); a path field
    spelled otherwise for the same file is no change."""
    return {
        k: [old[k], new[k]]
        for k in RECORDED_FIELDS
        if old[k] != new[k] and not (k in PATH_FIELDS and _same_file(old[k], new[k]))
    }


def _same_file(saved: Any, new: Any) -> bool:
    """Whether two spellings of a path field name the same file here (relative to this folder): a run saved
    relative (by 0.3.4 or before from Python, by 0.3.3 from the command line) resumed under the absolute
    spelling is no change."""
    return isinstance(saved, str) and isinstance(new, str) and Path(saved).resolve() == Path(new).resolve()


# what None means in a field a resume's messages name, as the command line spells it ("none")
_NONE_MEANS = {"limit": "none (every image)", "threads": "none (torch's default)"}


def _change(field: str, old: Any, new: Any) -> str:
    """``field old -> new`` for a message: strings quoted, None as ``none`` (``limit 256 -> none (every
    image)``), not Python's ``None``."""
    old, new = (_NONE_MEANS.get(field, "none") if v is None else repr(v) for v in (old, new))
    return f"{field} {old} -> {new}"


def resized_note(sizes: frozenset[tuple[int, int]], size: int, image_size: int | None, new_run: bool) -> str:
    """What the data line adds when the images (``sizes``: their own (width, height)s, one for an array)
    were resized to ``size``: ", resized from 32 x 32 (set --image-size 32 to keep them)", the
    hint where the default size (``image_size`` None) enlarged them, G can make their own size, and the run
    is new (a resume keeps the run's size)."""
    if not sizes or sizes == {(size, size)}:
        return ""
    if len(sizes) > 1:
        small, *_, large = sorted(sizes, key=lambda wh: (wh[0] * wh[1], wh))
        return f", resized from {len(sizes)} sizes ({small[0]} x {small[1]} up to {large[0]} x {large[1]})"
    ((w, h),) = sizes
    if w != h:
        return f", resized and centre-cropped from {w} x {h}"
    keep = new_run and image_size is None and w < size and _generator_size(w)
    return f", resized from {w} x {h}" + (f" (set --image-size {w} to keep them)" if keep else "")


def _generator_size(size: int) -> bool:
    """Whether G can make images of ``size`` x ``size`` (:func:`start_size`)."""
    try:
        start_size(size)
    except ValueError:
        return False
    return True


def spread_rows(n: int, k: int) -> torch.Tensor:
    """``k <= n`` distinct rows of ``n`` spread evenly, the first and the last among them (a folder of class
    subfolders, sorted by path, holds one class in its first rows)."""
    return torch.linspace(0, n - 1, k).round().long()  # distinct: steps of at least 1


def reconstruction_grid(
    world: World,
    images: torch.Tensor,
    start: int,
    total: int,
    reconstruct: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, int] | None:
    """The images of a reconstruction grid and its width (collective): the :func:`shown_rows` of all
    ``total`` rows, each rank giving the originals and the reconstructions (``reconstruct`` of local row
    numbers) of the rows it holds (``images``, rows ``start`` on: under torchrun rank 0 holds its shard
    only), laid out as rows of originals above their reconstructions
    (:func:`~glann_ext.images.paired_rows`). On rank 0; None on the others."""
    rows = shown_rows(total)
    mine = rows[(rows >= start) & (rows < start + len(images))] - start
    parts = world.gather((images[mine], reconstruct(mine).cpu() if len(mine) else images[mine]))
    if not world.is_main:
        return None
    originals, recon = (torch.cat([part[i] for part in parts]) for i in (0, 1))
    cols = min(PAIR_COLUMNS, len(originals))
    return paired_rows(originals, recon, cols), cols


def shown_rows(n: int) -> torch.Tensor:
    """The dataset rows a reconstruction grid shows: :data:`N_SHOW` spread evenly over ``n`` (all when fewer).
    The first 32 of a folder of class subfolders, sorted by path, were all of one class."""
    return spread_rows(n, min(N_SHOW, n))


# what a run folder holds (besides atomic_write's temp files): --out may be an existing folder holding only
# these (a start killed before config.json was written), else it must be a run folder or empty
RUN_ENTRIES = {
    CONFIG_FILE, RESUMES_FILE, ckpt.CHECKPOINT_DIR, MODEL_FILE, LEGACY_MODEL_FILE, METRICS_FILE, "images",
    "samples.png", "reconstructions.png", "tb", LOCK_FILE,
}  # fmt: skip


def check_out_folder(out: Path) -> None:
    """Refuse an existing folder that is neither a run folder nor empty: training would write (and clean up)
    among the user's own files."""
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out}: exists and is not a folder")
    if not out.is_dir() or ckpt.is_run_folder(out):
        return
    foreign = sorted(p.name for p in out.iterdir() if not _written_by_a_run(p))
    if foreign:
        raise RunFolderError(
            f"{out}: not a glann run folder and not empty (it holds {foreign[0]!r}"
            f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}); give --out a new or empty folder"
        )


# what a run writes inside its folders (besides atomic_write's temp files), by the folder's path in the run
_RUN_FOLDER_NAMES = {
    ("images",): re.compile(
        r"(reconstructions_glo|samples_gaussian|samples_imle|samples_pixel_imle)_\d{3,}\.png"
    ),
    (ckpt.CHECKPOINT_DIR,): re.compile(rf"{re.escape(ckpt.MANIFEST_FILE)}|step-\d{{8}}"),
    (ckpt.CHECKPOINT_DIR, "*"): re.compile(r"main\.pt|shard-\d{5}-of-\d{5}\.pt"),
    ("tb",): re.compile(r"events\.out\.tfevents\..+"),
}


def _written_by_a_run(path: Path, within: tuple[str, ...] = ()) -> bool:
    """Whether ``path`` (an entry of a folder that is not yet a run folder, at ``within`` in it) is what a
    run killed before its config.json writes there: a run file, or a run folder holding only run files. A
    folder of the user's named ``images`` or ``checkpoints`` is not, and training would write and clean up
    in it (its files replaced, its ``step-*`` folders removed)."""
    if TEMP_NAME.fullmatch(path.name) and path.is_file() and not path.is_symlink():
        return True
    if not within:
        if path.name not in RUN_ENTRIES:
            return False
        if not path.is_dir() or path.is_symlink():  # a run file (a folder of that name is not the run's)
            return path.is_file() and not path.is_symlink()
        return all(_written_by_a_run(p, (path.name,)) for p in path.iterdir())
    names = _RUN_FOLDER_NAMES.get(within) or _RUN_FOLDER_NAMES.get((within[0], "*"))
    if names is None or path.is_symlink() or not names.fullmatch(path.name):
        return False
    if path.is_dir():
        return len(within) == 1 and all(_written_by_a_run(p, (*within, path.name)) for p in path.iterdir())
    return written_here(path) if within == ("images",) else path.is_file()  # grids carry the package's tag


def has_trained(out: Path) -> bool:
    """Whether run folder ``out`` holds training state (a checkpoint or a model): without it, its config.json
    is a start that failed, which does not bind the next command."""
    return (out / ckpt.CHECKPOINT_DIR / ckpt.MANIFEST_FILE).exists() or (out / MODEL_FILE).exists()


def check_out_outside_dataset(out: Path, dataset: str) -> None:
    """Refuse an ``out`` inside an image-folder dataset: the folder's images are listed recursively, so the
    run's grids would become training images (the next run trains on them, and this one cannot resume: the
    image count changed)."""
    from glann_ext.data.datasets import NAMED

    folder = Path(dataset)
    if dataset in NAMED or not folder.is_dir():
        return
    folder, where = folder.resolve(), out.resolve()
    if where == folder or folder in where.parents:
        raise RunFolderError(
            f"--out {out} lies inside the image folder --dataset {dataset}: the run's grids would become "
            "training images; give --out a folder outside it"
        )
    written = [where / name for name in ("images", ckpt.CHECKPOINT_DIR, "tb")]
    if any(place == folder or place in folder.parents for place in written):
        raise RunFolderError(
            f"--dataset {dataset} lies in a folder the run in --out {out} writes: its grids and checkpoints "
            "would change the training images; move the images out of it"
        )


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
        self.resume_changes: dict[str, list[Any]] = {}  # field -> [saved, new], set by _resolve_config
        check_out_folder(self.out)
        self._given = cfg
        self.cfg = self._resolve_config(cfg).check_runnable()
        check_out_outside_dataset(self.out, self.cfg.dataset)
        self.device = local_device(self.cfg.device)
        self.world = World()
        self.data_fingerprint: dict[str, Any] | None = None  # of the dataset, once loaded (_load_images)

    def log(self, msg: str) -> None:
        if self.world.is_main:
            self._log(msg)

    def _resolve_config(self, cfg: TrainConfig | None) -> TrainConfig:
        """The config to train with: ``cfg`` for a new run; for a run that has trained (a checkpoint or a
        model exists) the saved one, with the overrides a resume may change. A config.json without any
        training state is a start that failed: a new ``cfg`` replaces it."""
        path = self.out / CONFIG_FILE
        if cfg is not None:  # relative paths saved absolute, as the command line saves them
            cfg = with_absolute_paths(checked_config(cfg))
        if path.exists() and (has_trained(self.out) or cfg is None):
            saved = load_run_config(path)
            if cfg is not None:
                mine, theirs = dataclasses.asdict(saved), dataclasses.asdict(cfg)
                phase = (ckpt.read_manifest(self.out) or {}).get("phase")
                changed = {
                    k for k, v in theirs.items() if mine[k] != v and not _may_change(k, mine[k], v, phase)
                }
                if changed:
                    what = ", ".join(_change(k, mine[k], theirs[k]) for k in sorted(changed))
                    why = (
                        "; RS-IMLE's radius may only be lowered once IMLE has begun"
                        if "imle_reject_radius" in changed
                        else ""
                    )
                    raise RunFolderError(
                        f"{self.out} holds a run with a different config ({what}; the run's, then this "
                        f"command's){why}; use another --out, or resume it without changing those options"
                    )
                self.resume_changes = _recorded_changes(mine, theirs)
                for k in RECORDED_FIELDS:
                    setattr(saved, k, getattr(cfg, k))
            return saved.validate()
        if cfg is None:
            raise RunFolderError(f"{path}: no run to resume here, and no configuration given")
        return cfg  # written once the data has loaded

    # -- training ------------------------------------------------------------------------------------
    def train(self, stage: str = "all") -> GenerativeModel:
        """Run (or finish) ``stage``: "all" (GLO then IMLE), "glo" or "imle" (IMLE after a finished GLO).

        Under torchrun this joins (or, when none exists yet, creates and at the end destroys) the
        default process group; every rank must call it. On ranks other than 0 the returned model holds
        only that rank's codes."""
        import torch.distributed as dist

        created = dist.is_available() and not dist.is_initialized()
        self.world = init_world(self.device)
        created = created and self.world.distributed
        try:
            return self._train(stage)
        finally:
            if created:
                dist.destroy_process_group()

    def _lock(self) -> FolderLock | None:
        """Rank 0 takes the folder's lock (one job writes a run folder) and clears the temp files of killed
        writes; every rank learns whether it got it, so a refused job stops on all ranks before writing."""
        lock, error = None, None
        if self.world.is_main:
            try:
                check_out_folder(self.out)
                lock = FolderLock(self.out).acquire()
                self._check_config_unchanged()
                remove_stale_temps(self.out)
            except (RunFolderError, OSError) as exc:
                error = exc
        if self.world.sum(torch.tensor([float(error is not None)])).item():
            if lock is not None:
                lock.release()
            raise error or RunFolderError(f"{self.out}: run folder in use (by another job)")
        return lock

    def _check_config_unchanged(self) -> None:
        """The config was resolved before the lock was taken (the data it names loads first): resolved again
        under the lock, it must be the same, else another job wrote the folder meanwhile."""
        if dataclasses.asdict(self._resolve_config(self._given)) != dataclasses.asdict(self.cfg):
            raise RunFolderError(
                f"{self.out}: another job wrote this run folder while this one started; run the command again"
            )

    def _check_checkpoint_config(self, saved: Any) -> None:
        """The checkpoint's own copy of the config must agree with the config in use except where a resume may
        change it (:func:`_may_change`; config.json edited or deleted must not resume under other settings).
        Without config.json the resumable fields that differ from the checkpoint's are recorded as a resume's."""
        theirs = dataclasses.asdict(ckpt.checkpoint_config(saved["config"], self.out / ckpt.CHECKPOINT_DIR))
        mine, phase = dataclasses.asdict(self.cfg), saved["phase"]
        changed = sorted(
            k for k in mine if mine[k] != theirs[k] and not _may_change(k, theirs[k], mine[k], phase)
        )
        if changed:
            diff = ", ".join(_change(k, theirs[k], mine[k]) for k in changed)
            raise RunFolderError(
                f"{self.out}: the checkpoint was trained with another config ({diff}); restore its config.json, "
                f"resume without changing those options, or use another --out"
            )
        if not (self.out / CONFIG_FILE).exists():
            self.resume_changes = _recorded_changes(theirs, mine)

    def _check_image_shape(self, state: dict[str, Any] | None, shape: tuple[int, int, int]) -> None:
        """The images must load at the checkpoint's shape: a resume that names the image size or channels the
        run left to the data (:data:`SHAPE_FIELDS`) may only name what the data gave, and only where a
        checkpoint says what that was (a folder with the model file only would retrain at the new shape)."""
        named = ", ".join(_change(k, a, b) for k, (a, b) in self.resume_changes.items() if k in SHAPE_FIELDS)
        if state is None:
            if named:
                raise ConfigError(
                    f"{self.out}: no checkpoint records the image shape the run trained on ({named}); resume "
                    "without --image-size/--channels, or use another --out"
                )
            return
        saved = tuple(state["image_shape"])
        if saved != tuple(shape):
            raise ConfigError(
                f"{self.out}: the run trained on images of {' x '.join(map(str, saved))}, and this resume loads "
                f"them at {' x '.join(map(str, shape))} ({named or 'the data changed'}); resume without "
                "--image-size/--channels, or use another --out"
            )

    def _check_epochs(self, state: dict[str, Any]) -> None:
        """A resume may add epochs to the stage in progress (or to IMLE, not begun), never remove epochs
        already trained, nor change GLO's once IMLE has begun (they would be recorded but never run)."""
        for stage in ("glo", "imle"):
            field = f"{stage}_epochs"
            if field not in self.resume_changes or (stage == "glo" and self.cfg.imle_space == "pixel"):
                continue
            old, new = self.resume_changes[field]
            problem = None
            if stage == "glo" and state["phase"] == "imle":
                problem = (
                    f"{new}: the GLO stage of {self.out} finished after {old} epochs and its IMLE stage has "
                    f"begun; resume without changing it (or with {old})"
                )
            done = (state.get(stage) or {}).get("epoch", 0)
            if problem is None and new < done:
                problem = f"{new}: {self.out} has trained {done} {stage.upper()} epochs already; give at least {done}"
            if problem is not None:  # named as the config's field and its flag; `glann train` keeps the flag
                message = f"config field {field} (--{stage}-epochs) {problem}"
                raise ConfigError(message, field=field, problem=problem)

    def _load_images(self) -> tuple[torch.Tensor, int, int]:
        """(this rank's shard of the training images, its first dataset row, the dataset's size)."""
        cfg = self.cfg
        try:
            shard = load_image_shard(
                cfg.dataset, self.world.rank, self.world.size, image_size=cfg.image_size, channels=cfg.channels,
                data_root=cfg.data_root, limit=cfg.limit,
            )  # fmt: skip
        except DataError as exc:
            if has_trained(self.out) and cfg.dataset not in NAMED and not Path(cfg.dataset).exists():
                raise DataError(
                    f"{exc}; if the run's data moved, resume with --dataset naming its new place"
                ) from exc
            raise
        if shard.total < 2:
            raise ConfigError(f"{cfg.dataset}: training needs at least 2 images, got {shard.total}")
        if shard.total < 2 * self.world.size:
            raise ConfigError(
                f"{cfg.dataset}: {shard.total} images cannot be shared by {self.world.size} processes"
            )
        try:
            start_size(shard.images.shape[-1])
        except ValueError as exc:
            raise ConfigError(
                f"{cfg.dataset}: images of size {shard.images.shape[-1]} are not supported ({exc}); "
                f"set image_size (--image-size) to resize them"
            ) from exc
        self.data_fingerprint = shard.fingerprint  # what the checkpoints record, and a resume must find
        c, h, w = shard.images.shape[1:]
        capped = f" (limit {cfg.limit}: the first in dataset order)" if shard.total == cfg.limit else ""
        x = shard.images
        grey = (
            c == 3
            and self.world.is_main
            and bool(torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2]))
        )
        hint = " (all grey: --channels 1 trains a grey model, a third of the pixels)" if grey else ""
        resized = resized_note(shard.sizes, h, cfg.image_size, not has_trained(self.out))
        self.log(f"data {cfg.dataset}: {shard.total} images{capped} of {c} x {h} x {w}{resized}{hint}")
        return shard.images, shard.start, shard.total

    def _train(self, stage: str) -> GenerativeModel:
        # cfg.threads holds for this run only: the caller's thread count is back when it returns or fails
        with intra_op_threads(self.cfg.threads):
            return self._train_with_threads(stage)

    def _train_with_threads(self, stage: str) -> GenerativeModel:
        cfg = self.cfg
        # data and model first: what fails there leaves the folder exactly as it was (not even created)
        images, start, total = self._load_agreed(stage)
        if cfg.imle_space == "pixel" or stage != "glo":  # before the GLO stage trains, not after it
            check_distributed_imle(cfg, self.world)
        fit = Fit(
            images, cfg, ops=get_ops(cfg.ops), world=self.world, device=self.device, start=start, total=total,
            record=False,  # the checkpoint's fingerprint of the data stands for it
        )  # fmt: skip
        lock = self._lock()
        try:
            self._check_shared_folder()
            state = self._restore(fit, total)
            return self._finish(self._run(fit, stage, images, total, state), fit, images)
        finally:
            if lock is not None:
                lock.release()

    def _load_agreed(self, stage: str) -> tuple[torch.Tensor, int, int]:
        """:meth:`_load_images`, then the ranks' agreement (one collective, before any other): the same run
        configuration and stage, and the same dataset (size and fingerprint); else an error on every rank
        naming what differs. A rank that cannot load its data stops every rank too, rather than leaving them
        waiting in a collective it never joins."""
        error, images, start, total = None, None, 0, 0
        try:
            images, start, total = self._load_images()
        except (GlannError, OSError, ValueError) as exc:
            if not self.world.distributed:
                raise
            error = exc
        # paths as the caller spelled them: a relative one names node-local files on each node (its absolute
        # spelling differs where the nodes' working folders do; the data's fingerprint decides)
        spelled = {f: getattr(self._given, f) for f in PATH_FIELDS} if self._given is not None else {}
        mine = {
            "run": {**dataclasses.asdict(self.cfg), **spelled, "stage": stage},
            "error": None if error is None else f"{type(error).__name__}: {error}",
            "data": {"dataset size": total, "fingerprint": self.data_fingerprint},
        }
        ranks = self.world.gather(mine)
        differs = disagreement([r["run"] for r in ranks])
        if differs:
            raise ConfigError(f"ranks disagree on {differs} (launch every rank with the same options)")
        if error is not None:
            raise error
        failed = next((r for r, v in enumerate(ranks) if v["error"]), None)
        if failed is not None:
            raise ConfigError(f"rank {failed} could not load the dataset ({ranks[failed]['error']})")
        self._check_same_data([r["data"] for r in ranks])
        return images, start, total

    def _check_same_data(self, data: list[dict[str, Any]]) -> None:
        """Every rank must train on the same dataset: what one rank's --dataset holds is not another's on a
        node with other files (the manifest records rank 0's fingerprint only)."""
        sizes = [{"dataset size": d["dataset size"]} for d in data]
        differs = disagreement(sizes)
        if differs:
            raise ConfigError(f"ranks disagree on the {differs} (every rank must see the same images)")
        ours = data[0]["fingerprint"]
        other = next((r for r, d in enumerate(data) if d["fingerprint"] != ours), None)
        if other is not None:
            change = fingerprint_change(ours, data[other]["fingerprint"])
            raise ConfigError(
                f"ranks disagree on the dataset's images: rank {other}'s differ from rank 0's ({change}); "
                "every rank must see the same images"
            )

    def _check_shared_folder(self) -> None:
        """Every rank must see the run folder rank 0 sees (each rank writes its checkpoint shards there, rank
        0 the manifest naming them): rank 0 writes a token file of random content, every rank reads it back.
        Collective; rank 0 holds the folder's lock (a killed check's token is a stale temp file it clears)."""
        if not self.world.distributed:
            return
        token: tuple[str, str] | None = None
        if self.world.is_main:
            name, content = f".shared-check.{secrets.token_hex(4)}.tmp", secrets.token_hex(16)
            try:
                (self.out / name).write_text(content)
                token = (name, content)
            except OSError as exc:
                token = ("", f"{self.out}: cannot write to the run folder ({exc.strerror or exc})")
        name, content = self.world.broadcast(token)
        if not name:
            raise RunFolderError(content)
        blind = self.world.gather(not _sees(self.out / name, content))
        if self.world.is_main:
            (self.out / name).unlink(missing_ok=True)
        if any(blind):
            raise RunFolderError(
                f"{self.out}: rank {blind.index(True)} does not see the files rank 0 writes in the run folder; "
                f"the run folder (--out) must be one folder, named to every rank, on a file system all ranks "
                "share"
            )

    def _restore(self, fit: Fit, total: int) -> dict[str, Any] | None:
        """Load the latest checkpoint into ``fit`` (None when there is none)."""
        state = ckpt.load_step(self.out, self.world, total, self.data_fingerprint, self.cfg.dataset)
        if state is None:
            self._check_image_shape(None, fit.image_shape)
            return None
        self._check_checkpoint_config(state)  # records the resume's changes without config.json
        self._check_epochs(state)
        self._check_image_shape(state, fit.image_shape)
        # the perceptual loss's weights file is read anew on every resume: its digest as the loss loaded it
        # against the one recorded (None: a checkpoint of 0.3.3 or before, or no VGG loss)
        recorded = state.get(ckpt.VGG_DIGEST_KEY)
        if recorded is not None and fit.vgg_digest is not None and recorded != fit.vgg_digest:
            raise CheckpointError(
                f"{self.cfg.vgg_weights}: the VGG weights file has changed since {self.out} trained with it (its "
                "digest is not the checkpoint's); put that file back to resume the run, or use another --out"
            )
        try:
            fit.load_state_dict(state)
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:  # shapes or keys of another model
            msg = str(exc).strip().splitlines()[-1].strip()
            raise CheckpointError(
                f"{self.out}: the checkpoint does not fit this run's model ({msg})"
            ) from None
        self.log(f"resuming {self.out} from phase {state['phase']}")
        return state

    def _run(
        self, fit: Fit, stage: str, images: torch.Tensor, total: int, state: dict | None
    ) -> GenerativeModel:
        """Write the folder's config (a new run), attach the folder's hooks and train."""
        fit.check_stage(stage)  # before the first write: a refused start leaves the folder as it was
        tb = None
        if self.world.is_main:
            ensure_dir(self.out / "images")
            if state is None:
                self.cfg.to_json(self.out / CONFIG_FILE)
            elif self.resume_changes:
                self._record_resume(state)
            elif not (self.out / CONFIG_FILE).exists():  # deleted: the checkpoint's config, which is ours
                self.cfg.to_json(self.out / CONFIG_FILE)
            _prune_metrics(self.out / METRICS_FILE, fit)
            tb = _tensorboard(self.out / "tb")
        hooks: list[Hook] = [
            ProgressHook(self), MetricsHook(self, tb), GridsHook(self, fit, images), CheckpointHook(self, fit, total),
        ]  # fmt: skip
        if self.user_hook is not None:
            hooks.append(_CallbackHook(self.user_hook))
        try:
            return fit.run(stage, hooks)
        finally:
            if tb is not None:
                tb.close()

    def _record_resume(self, state: dict[str, Any]) -> None:
        """A resume changed fields it may change: log them (and where) in resumes.jsonl, then rewrite
        config.json, so the folder holds what the run trains with (a later resume keeps the new values). The
        log line goes first: a kill between the two writes leaves a repeated line, never a lost change."""
        phase = state["phase"]
        at = {k: (state.get(phase) or {}).get(k) for k in ("epoch", "step_in_epoch", "global_step")}
        entry = {"phase": phase, **at, "changed": self.resume_changes}
        append_line(self.out / RESUMES_FILE, json.dumps(entry))
        self.cfg.to_json(self.out / CONFIG_FILE)
        changed = ", ".join(_change(k, old, new) for k, (old, new) in self.resume_changes.items())
        self.log(f"resuming with {changed} (recorded in {RESUMES_FILE} and config.json)")

    def _finish(self, model: GenerativeModel, fit: Fit, images: torch.Tensor) -> GenerativeModel:
        self.world.barrier()  # the last checkpoint step is complete on every rank
        shown = None  # each rank's codes reconstruct its own rows (collective)
        if self.cfg.sample_every and isinstance(model, GLANN):
            shown = reconstruction_grid(self.world, images, fit.start, fit.total, model.reconstruct)
        if self.world.is_main:
            if self.world.distributed and isinstance(model, GLANN):  # the whole code table, from the shards
                codes = ckpt.gather_rows(self.out, ["glo.codes"])["glo.codes"].to(model.device)
                model = GLANN(model.G, codes, model.T, ops=model.ops, config=model.config)
            if isinstance(model, GLANN) and model.balanced:
                model.calibrate_sampler()  # saved with the model: sampling never repeats the calibration
            save_model(model, self.out / MODEL_FILE)
            if self.cfg.sample_every:
                samples = (
                    model.sample_gaussian(64, seed=0)
                    if isinstance(model, GLANN) and model.T is None
                    else model.sample(64, seed=0)
                )
                save_grid(samples.cpu(), self.out / "samples.png")
                if shown is not None:
                    save_grid(shown[0], self.out / "reconstructions.png", nrow=shown[1])
        self.world.barrier()
        self.log(f"model written to {self.out / MODEL_FILE}")
        return model


def _sees(path: Path, content: str, tries: int = 10) -> bool:
    """Whether ``path`` holds ``content``, retried for up to ~1 s (a network file system may show a new
    file to other nodes a moment late)."""
    for attempt in range(tries):
        try:
            if path.read_text() == content:
                return True
        except OSError:
            pass
        if attempt < tries - 1:
            time.sleep(0.1)
    return False


# -- the hooks that write the folder ------------------------------------------------------------------
class CheckpointHook(Hook):
    """A checkpoint every ``ckpt_every`` steps and at the end of every epoch (after the epoch's metrics row
    and grids, which the hooks before this one wrote: a kill never loses them)."""

    def __init__(self, run: Run, fit: Fit, total: int):
        self.run, self.fit, self.total = run, fit, total

    def save(self, trainer: StageTrainer) -> None:
        """One checkpoint step (collective: every rank calls it at the same step). A state holding NaN/Inf
        (a diverged step before it) is not saved: the ranks agree, and the run stops with the error."""
        fit, world = self.fit, self.run.world
        fit.gather_tallies()
        state = fit.state_dict()
        bad = _nonfinite_entry(state)
        if world.sum(torch.tensor([float(bad is not None)])).item():
            raise diverged(trainer, f"{bad or 'the state of another rank'} holds NaN or Inf")
        rows = len(fit.images)  # this rank's dataset rows
        glo_rep, glo_rows = ckpt.split_state("glo", state["glo"], rows)
        imle_rep, imle_rows = ckpt.split_state("imle", state["imle"], rows)
        main = {
            "phase": state["phase"], "glo": glo_rep, "imle": imle_rep, "config": self.run.cfg.to_dict(),
            "image_shape": list(fit.image_shape),
            **({ckpt.VGG_DIGEST_KEY: fit.vgg_digest} if fit.vgg_digest is not None else {}),
        }  # fmt: skip
        info = {"phase": state["phase"], "epoch": trainer.epoch, "global_step": trainer.global_step}
        per_row = {**glo_rows, **imle_rows}
        ckpt.save_step(
            self.run.out, world, self.total, lambda: main, per_row, info, self.run.data_fingerprint
        )

    def step_completed(self, trainer: StageTrainer, info: dict[str, Any]) -> None:
        every = self.run.cfg.ckpt_every
        if every and info["step"] % every == 0 and trainer.step_in_epoch < trainer.steps_per_epoch:
            self.save(trainer)  # (the epoch's last step is saved at epoch end, after its row)

    def epoch_completed(self, trainer: StageTrainer, row: dict[str, Any]) -> None:
        self.save(trainer)


def _nonfinite_entry(state: Any, path: str = "state") -> str | None:
    """The first floating-point tensor of a nested state (dicts, lists) holding NaN or Inf, by its path."""
    if isinstance(state, torch.Tensor):
        finite = not state.is_floating_point() or bool(torch.isfinite(state).all())
        return None if finite else path
    items = (
        state.items()
        if isinstance(state, dict)
        else enumerate(state)
        if isinstance(state, (list, tuple))
        else ()
    )
    for key, value in items:
        found = _nonfinite_entry(value, f"{path}.{key}")
        if found:
            return found
    return None


class MetricsHook(Hook):
    """metrics.jsonl (one row per epoch) and TensorBoard scalars, on rank 0."""

    def __init__(self, run: Run, tb: Any):
        self.run, self.tb = run, tb

    def epoch_completed(self, trainer: StageTrainer, row: dict[str, Any]) -> None:
        run = self.run
        run.log(
            f"{trainer.stage.upper()} epoch {row['epoch']}/{_epochs_of(run.cfg, trainer)}: loss {row['loss']:.4f}, "
            f"{row['seconds']:.1f} s"
        )
        if not run.world.is_main:
            return
        append_line(run.out / METRICS_FILE, json.dumps(row))
        if self.tb is not None:
            for k in ("loss", "match_distance", "seconds"):
                if row.get(k) is not None:
                    self.tb.add_scalar(f"{row['stage']}/{k}", row[k], row["epoch"])


class GridsHook(Hook):
    """Every ``sample_every`` epochs (and after the last): GLO reconstructions and GLO + Gaussian samples,
    IMLE samples, into ``images/``."""

    def __init__(self, run: Run, fit: Fit, images: torch.Tensor):
        self.run, self.fit, self.images = run, fit, images

    def epoch_completed(self, trainer: StageTrainer, row: dict[str, Any]) -> None:
        every, epoch = self.run.cfg.sample_every, row["epoch"]
        if not every or (epoch % every and epoch != _epochs_of(self.run.cfg, trainer)):
            return
        folder, model, world = self.run.out / "images", self.fit.model, self.run.world
        if trainer.stage == "glo":
            gaussian = fit_gaussian(model.codes, world)  # collective
            shown = reconstruction_grid(world, self.images, self.fit.start, self.fit.total, model.reconstruct)
            if world.is_main:
                ensure_dir(folder)
                save_grid(shown[0], folder / f"reconstructions_glo_{epoch:03d}.png", nrow=shown[1])
                samples = model.sample_gaussian(64, seed=0, fit=gaussian).cpu()
                save_grid(samples, folder / f"samples_gaussian_{epoch:03d}.png")
        elif world.is_main:
            ensure_dir(folder)
            name = "samples_pixel_imle" if self.fit.pixel else "samples_imle"
            # unbalanced here: balanced sampling needs every code and a calibration search per epoch
            save_grid(model.sample(64, seed=0, balanced=False).cpu(), folder / f"{name}_{epoch:03d}.png")


class ProgressHook(Hook):
    """A tqdm bar per epoch on rank 0 (when the run shows progress)."""

    def __init__(self, run: Run):
        self.run, self.bar = run, None

    def epoch_started(self, trainer: StageTrainer) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=trainer.steps_per_epoch, initial=trainer.step_in_epoch, unit="step", dynamic_ncols=True,
            desc=f"{trainer.stage.upper()} {trainer.epoch + 1}/{_epochs_of(self.run.cfg, trainer)}",
            disable=not (self.run.progress and self.run.world.is_main),
        )  # fmt: skip

    def step_completed(self, trainer: StageTrainer, info: dict[str, Any]) -> None:
        shown = {"loss": f"{info['loss']:.4f}"}
        if hasattr(trainer, "last_match_distance"):
            shown["match"] = f"{trainer.last_match_distance:.4f}"
        # refresh=False: the update redraws at tqdm's own rate, not on every step
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(1)

    def epoch_completed(self, trainer: StageTrainer, row: dict[str, Any]) -> None:
        self.bar.close()


class _CallbackHook(Hook):
    def __init__(self, fn: Callable[[Any, dict], None]):
        self.fn = fn

    def step_completed(self, trainer: StageTrainer, info: dict[str, Any]) -> None:
        self.fn(trainer, info)


def _epochs_of(cfg: TrainConfig, trainer: StageTrainer) -> int:
    return cfg.glo_epochs if trainer.stage == "glo" else cfg.imle_epochs


def _tensorboard(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(ensure_dir(folder)))


def _prune_metrics(path: Path, fit: Fit) -> None:
    """Drop the rows of epochs the restored state has not completed: a run killed after an epoch's row was
    written but before its checkpoint redoes that epoch and writes the row again (no duplicates)."""
    if not path.exists():
        return
    done = {"glo": fit.glo.epoch if fit.glo else 0, "imle": fit.imle.epoch if fit.imle else 0}
    # a row an epoch, a few hundred bytes: a file past 1 GiB is not a run's (a planted sparse file)
    lines = read_regular(path, limit=1 << 30).decode("utf-8", errors="replace").splitlines()
    keep = [line for line in lines if line.strip() and _row_done(line, done)]
    if len(keep) != len(lines):
        atomic_write(path, lambda f: f.write("".join(line + "\n" for line in keep).encode()))


def _row_done(line: str, done: dict[str, int]) -> bool:
    try:
        row = json.loads(line)
        return int(row["epoch"]) <= done[row["stage"]]
    except (ValueError, KeyError, TypeError, RecursionError):
        return False  # a torn or foreign line


# -- public functions ----------------------------------------------------------------------------------
def train(cfg: TrainConfig | None, out: str | Path, stage: str = "all", **kwargs: Any) -> GenerativeModel:
    """Train (or resume) the run in ``out``; see :class:`Run`."""
    return Run(out, cfg, **kwargs).train(stage)


def load_model(
    path: str | Path, ops: str | None = None, device: str = "cpu", generator: torch.nn.Module | None = None
) -> GenerativeModel:
    """The model of run folder ``path`` (its ``model.safetensors``, else its latest checkpoint) or of a
    model file, on ``device`` (a ConfigError when this machine has no such device). ``generator``: the
    module to load G's weights into, built as for training; a model file of a generator of your own
    (``fit(..., generator=...)``) needs it, since the file names its class but cannot rebuild it."""
    check_device(str(device), fused=ops != "reference")
    path = Path(path)
    if path.is_dir():
        if (path / MODEL_FILE).exists():
            return load_model_file(path / MODEL_FILE, ops=ops, device=device, generator=generator)
        if (path / LEGACY_MODEL_FILE).exists():
            raise CheckpointError(
                f"{path / LEGACY_MODEL_FILE}: a model file of glann_ext 0.1 (a pickle, not loaded: loading one "
                f"can run code); convert the run once with `{ckpt.UPGRADE_HINT.format(run=path)}`"
            )
        if ckpt.read_manifest(path) is None:
            raise RunFolderError(
                f"{path}: no {MODEL_FILE} or {ckpt.CHECKPOINT_DIR}/{ckpt.MANIFEST_FILE} (not a glann run folder?)"
            )
        if generator is not None:  # a checkpoint rebuilds the package's generator from the run's config
            raise UsageError(
                f"generator: {path} has no {MODEL_FILE} yet; its checkpoints hold the package's generator, "
                "which they rebuild themselves"
            )
        return model_from_checkpoint(path, ops=ops, device=device)
    if not path.exists():
        raise RunFolderError(f"{path}: no such run folder or model file")
    return load_model_file(path, ops=ops, device=device, generator=generator)


def model_file_behind(run: str | Path, model: GenerativeModel) -> str | None:
    """A line for a reader of run folder ``run`` whose ``model.safetensors`` (loaded as ``model``) is behind
    the run: a resume that added epochs (config.json asks for more than the file was trained to), or the IMLE
    stage of a run whose file holds its GLO stage, was stopped or is still training. Readers load the model
    file, the run's last finished model, so they say which one they read. None when the file is current, or
    ``run`` is a model file or a folder without a checkpoint or a readable config.json."""
    run = Path(run)
    try:  # a damaged manifest or config.json: the model file is what the reader reads, and no note
        manifest = ckpt.read_manifest(run) if run.is_dir() else None
        wanted = None if manifest is None else load_run_config(run / CONFIG_FILE)
    except (GlannError, OSError):
        return None
    if manifest is None:
        return None
    mark = getattr(model, "from_checkpoint", None)
    if mark is not None:
        return _checkpoint_note(run, mark, wanted)
    stage = "glo" if isinstance(model, GLANN) and model.T is None else "imle"
    trained = {s: model.config.get(f"{s}_epochs") for s in ("glo", "imle")}
    added = trained != {"glo": wanted.glo_epochs, "imle": wanted.imle_epochs}
    if not added and not (stage == "glo" and manifest["phase"] == "imle"):
        return None
    phase = manifest["phase"]
    return (
        f"{run / MODEL_FILE} is the model trained to {stage.upper()} epoch {trained[stage]}; the run's latest "
        f"checkpoint has done {manifest['epoch']} of its {getattr(wanted, f'{phase}_epochs')} {phase.upper()} "
        f"epochs, and maybe part of the next (a resume stopped or still training): `glann train --out {run}` "
        "finishes it"
    )


def _checkpoint_note(run: Path, mark: dict[str, Any], wanted: TrainConfig) -> str | None:
    """The reader's line for a model read from ``run``'s checkpoint (no model file yet): the run's training
    is still running or was stopped, and the model is as far as its checkpoint. None for a final one."""
    phase, epoch = mark["phase"], mark["epoch"]
    of = getattr(wanted, f"{phase}_epochs")
    if phase == "imle" and epoch >= of:
        return None
    return (
        f"{run} has no {MODEL_FILE} yet: this is the model of its latest checkpoint, {phase.upper()} epoch "
        f"{epoch} of {of} done (step {mark['global_step']}), of a training still running or stopped; "
        f"`glann train --out {run}` finishes it"
    )


def _mapping_state(cfg: TrainConfig, imle: dict[str, Any], codes: torch.Tensor) -> dict[str, torch.Tensor]:
    """``T``'s state as the IMLE stage left it. With ``imle_whiten`` the stage steps ``T.net`` on whitened
    codes, so the checkpoint holds ``T.net``'s tensors, and ``T``'s output map is the codes' inverse
    whitening, recomputed here as the pipeline computes it when the stage starts."""
    if not cfg.imle_whiten:
        return imle["generator"]
    matrix, shift = code_whitening(codes).output_map()
    net = {f"net.{k}": v for k, v in imle["generator"].items()}
    return {**net, "out_matrix": matrix, "out_shift": shift}


def model_from_checkpoint(run: str | Path, ops: str | None = None, device: str = "cpu") -> GenerativeModel:
    """The model as of the latest checkpoint of ``run`` (codes gathered from every shard). The networks are
    built to the checkpoint's own tensors (:func:`~glann_ext.models.generative.built_to_fit`): a config
    that names other sizes is refused before anything of its size is allocated."""
    manifest, main, rows = ckpt.read_step(run, names=["glo.codes"])
    cfg = ckpt.checkpoint_config(main["config"], run)
    model = _model_of_step(run, cfg, main, rows, ops, device)
    # what readers say they read, and eval.json records: which checkpoint, not a finished model file
    model.from_checkpoint = {k: manifest[k] for k in ("phase", "epoch", "global_step")}
    return model


def _model_of_step(
    run: str | Path, cfg: TrainConfig, main: dict[str, Any], rows: dict[str, torch.Tensor], ops, device
) -> GenerativeModel:
    """The model of a checkpoint's states (:func:`model_from_checkpoint`)."""
    glo, imle = main["glo"], main["imle"]
    pixel = cfg.imle_space == "pixel"
    if (imle if pixel else glo) is None:
        raise CheckpointError(f"{run}: checkpoint holds no {'IMLE' if pixel else 'GLO'} stage yet")
    if not pixel and "glo.codes" not in rows:  # pixel IMLE has no codes
        raise CheckpointError(f"{run}: the checkpoint's shards hold no rows 'glo.codes'")
    image_shape = tuple(main["image_shape"])
    kwargs = {"ops": get_ops(ops or cfg.ops), "config": cfg.to_dict()}
    try:
        g_state = imle["generator"] if pixel else glo["G"]  # pixel IMLE's generator is G itself
        G = built_to_fit(lambda: build_generator(cfg, image_shape), g_state, "G")
        if pixel:
            return PixelIMLE(G, **kwargs).to(device).eval()
        T = None
        if imle is not None and imle["global_step"] > 0:
            T = built_to_fit(lambda: build_mapping(cfg), _mapping_state(cfg, imle, rows["glo.codes"]), "T")
        model = GLANN(G, rows["glo.codes"], T, **kwargs)
        check_unit_codes(model.codes)
        return model.to(device).eval()
    # a forged or foreign state: shapes, types, missing keys (G or T's weights), values off the sphere
    except (ValueError, TypeError, RuntimeError, KeyError, AttributeError) as exc:
        what = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
        raise CheckpointError(f"{run}: the checkpoint does not describe a usable model ({what})") from None

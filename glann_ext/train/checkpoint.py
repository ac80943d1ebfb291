"""Atomic, sharded checkpoints and the random-number-generator state that exact resumption needs.

A run folder's checkpoints live in ``checkpoints/``::

    checkpoints/manifest.json            names the latest complete step and how it is sharded
    checkpoints/step-00000012/main.pt    replicated state (networks, their optimizers, counters), rank 0
    checkpoints/step-00000012/shard-00000-of-00002.pt   rows [start, stop) of the per-image state of rank 0
    checkpoints/step-00000012/shard-00001-of-00002.pt   ... of rank 1

Per-image state ("rows") is the GLO code table, the latent optimizer's per-row moments and the IMLE stage's
matched noise: each rank writes only its own rows. Every file is written atomically (temp file, fsync,
rename); only after all of a step's files exist (a barrier) does rank 0 replace the manifest, atomically,
and delete older steps. A kill at any moment therefore leaves the manifest naming a complete step.
:func:`reshard` rewrites the latest step for another number of processes, reading each old shard
memory-mapped, so no process needs the whole table.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from glann_ext._io import (
    BARE_PICKLE,
    NOT_TORCH,
    FolderLock,
    UnsafeTensorFile,
    atomic_write,
    ensure_dir,
    load_tensors_only,
    read_regular,
    remove_stale_temps,
)
from glann_ext.data import fingerprint_change, shard_bounds
from glann_ext.data.labelled import changed_data_advice, rows_may_predate_031
from glann_ext.errors import CheckpointError, ConfigError

from .config import CONFIG_FILE, TrainConfig, saved_config
from .world import World

CHECKPOINT_DIR = "checkpoints"
MANIFEST_FILE = "manifest.json"
MAIN_FILE = "main.pt"
FORMAT_VERSION = 2  # 1: glann_ext 0.1 (main.pt also held pickled numpy/python RNG state)
# trainer state entries that hold one row per dataset image (sharded); the rest is replicated
ROW_KEYS = {"glo": ("codes", "opt_z"), "imle": ("matched_noise", "threshold", "since_match")}


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`glann_ext._io.atomic_write`: a kill at any moment leaves either the old
    or the new file, never a partial one. ``obj`` holds only tensors and plain values, so that
    :func:`load` reads it with ``weights_only=True``."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """A file written by :func:`save_atomic`, read with ``weights_only=True``: tensors and plain values
    only, so a planted pickle payload cannot run."""
    try:
        if Path(path).is_file() and Path(path).stat().st_size == 0:
            raise CheckpointError(f"{path}: empty (a damaged checkpoint file)")
        return load_tensors_only(path, map_location=map_location, mmap=mmap)
    except UnsafeTensorFile as exc:
        what = (
            "not a torch.save archive (damaged, a file of glann_ext 0.1, or not ours)"
            if str(exc) in (BARE_PICKLE, NOT_TORCH)
            else "holds objects other than tensors and plain values (a file of glann_ext 0.1, or not ours)"
        )
        raise CheckpointError(
            f"{path}: {what}; it is not loaded, since loading such a file can run code"
        ) from exc
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{path}: cannot load checkpoint ({exc})") from exc


MAIN_KEYS = ("phase", "glo", "imle", "config", "image_shape")
# main.pt's optional record of the perceptual loss's weights file (its SHA-256), checked when a run resumes
VGG_DIGEST_KEY = "vgg_weights_sha256"
COUNTERS = ("epoch", "step_in_epoch", "global_step")


def load_main(path: str | Path) -> dict[str, Any]:
    """A step's ``main.pt`` (:func:`load`), checked: a dict with :data:`MAIN_KEYS`, a known phase, a config
    dict, an image shape, and trainer states whose counters are integers >= 0 (a forged file is a one-line
    :class:`CheckpointError`, never a TypeError or extra epochs trained)."""
    main = load(path)
    problem = _main_problem(main)
    if problem:
        raise CheckpointError(f"{path}: not a checkpoint of glann_ext ({problem})")
    return main


def _is_count(v: Any, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _main_problem(main: Any) -> str | None:
    if not isinstance(main, dict):
        return f"expected a dict, got {type(main).__name__}"
    missing = [k for k in MAIN_KEYS if k not in main]
    if missing:
        return f"no {', '.join(missing)}"
    if main["phase"] not in ("glo", "imle"):
        return f"phase must be 'glo' or 'imle', got {main['phase']!r:.40}"
    if not isinstance(main["config"], dict):
        return f"config must be a dict, got {type(main['config']).__name__}"
    shape = main["image_shape"]
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3 and all(_is_count(v, 1) for v in shape)):
        return f"image_shape must be 3 positive integers, got {shape!r:.60}"
    if not isinstance(main.get(VGG_DIGEST_KEY, ""), str):
        return f"{VGG_DIGEST_KEY} must be a string, got {type(main[VGG_DIGEST_KEY]).__name__}"
    for stage in ("glo", "imle"):
        state = main[stage]
        if state is None:
            continue
        if not isinstance(state, dict):
            return f"{stage} must be a dict or None, got {type(state).__name__}"
        for k in COUNTERS:
            if not _is_count(state.get(k)):
                return f"{stage}.{k} must be an integer >= 0, got {state.get(k)!r:.40}"
        tally = state.get("tally")  # optional: checkpoints of glann_ext 0.1 have none
        if tally is not None and not _is_tally(tally):
            return f"{stage}.tally must be {{'loss': float, 'steps': int >= 0, 'seconds': float}}, got {tally!r:.60}"
    return None


def _is_tally(tally: Any) -> bool:
    """Whether ``tally`` is an epoch's tally as the loop keeps it: loss and seconds numbers, steps a count."""
    if not (isinstance(tally, dict) and set(tally) == {"loss", "steps", "seconds"}):
        return False
    numbers = all(
        isinstance(tally[k], (int, float)) and not isinstance(tally[k], bool) for k in ("loss", "seconds")
    )
    return numbers and _is_count(tally["steps"])


def checkpoint_config(saved: Any, where: str | Path) -> TrainConfig:
    """A checkpoint's copy of its run's config (``main.pt``'s ``config``) as the config the run trained with
    (:func:`~.config.saved_config`); one that is not a valid config is a :class:`CheckpointError` naming
    ``where``."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{where}: the checkpoint's config is {type(saved).__name__}, expected a dict")
    try:
        return saved_config(saved)
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{where}: the checkpoint's config is not valid ({exc})") from None


def load_shard(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """A step's shard file (:func:`load`), checked: ``{start, stop, total, rows}`` with integer bounds and a
    dict of tensors of ``stop - start`` rows each, float32 where floating (training keeps every table in
    float32: another dtype is a forged or foreign file, which would fail later with a dtype traceback)."""
    shard = load(path, mmap=mmap)
    ok = (
        isinstance(shard, dict)
        and all(_is_count(shard.get(k)) for k in ("start", "stop"))
        and isinstance(shard.get("rows"), dict)
        and all(isinstance(t, torch.Tensor) for t in shard["rows"].values())
    )
    if not ok:
        raise CheckpointError(f"{path}: not a checkpoint shard of glann_ext (expected start, stop and rows)")
    n = shard["stop"] - shard["start"]
    for key, t in shard["rows"].items():
        if t.dim() == 0 or t.shape[0] != n or (t.is_floating_point() and t.dtype != torch.float32):
            raise CheckpointError(
                f"{path}: rows {key!r} are {t.dtype} {tuple(t.shape)}, expected float32 (or integer) with "
                f"{n} rows"
            )
    return shard


# -- splitting trainer states into replicated parts and rows ------------------------------------------------


def _split_rows(obj: Any, rows: int) -> tuple[Any, dict[str, torch.Tensor]]:
    """(obj with its (rows, ...) tensors replaced by ``{"__rows__": key}``, {key: tensor})."""
    found: dict[str, torch.Tensor] = {}

    def walk(o: Any, path: str) -> Any:
        if isinstance(o, torch.Tensor) and o.dim() >= 1 and o.shape[0] == rows:
            found[path] = o.detach().cpu()
            return {"__rows__": path}
        if isinstance(o, dict):
            return {k: walk(v, f"{path}.{k}") for k, v in o.items()}
        return o

    return walk(obj, ""), found


def _join_rows(obj: Any, found: dict[str, torch.Tensor], prefix: str) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__rows__"}:
            if obj["__rows__"] not in found:  # main.pt names rows its shard does not hold
                raise CheckpointError(
                    f"the shard holds no rows {prefix + str(obj['__rows__'])!r:.60}, which main.pt names"
                )
            return found[obj["__rows__"]]
        return {k: _join_rows(v, found, prefix) for k, v in obj.items()}
    return obj


def split_state(stage: str, state: dict[str, Any] | None, rows: int) -> tuple[Any, dict[str, torch.Tensor]]:
    """A trainer's state_dict as (replicated part, {name: per-row tensor}); only the entries of
    ``ROW_KEYS[stage]`` may hold rows, so no network weight is ever mistaken for per-image state."""
    if state is None:
        return None, {}
    replicated, found = dict(state), {}
    for key in ROW_KEYS[stage]:
        if key in state:
            replicated[key], part = _split_rows(state[key], rows)
            found.update({f"{stage}.{key}{p}": t for p, t in part.items()})
    return replicated, found


def join_state(stage: str, replicated: Any, found: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    if replicated is None:
        return None
    state = dict(replicated)
    for key in ROW_KEYS[stage]:
        if key in state:
            prefix = f"{stage}.{key}"
            state[key] = _join_rows(
                state[key], {p[len(prefix) :]: t for p, t in found.items() if p.startswith(prefix)}, prefix
            )
    return state


# -- the manifest ---------------------------------------------------------------------------------------------


# a run folder's model file, and glann_ext 0.1's pickled one (``glann upgrade`` converts it)
MODEL_FILE = "model.safetensors"
LEGACY_MODEL_FILE = "model.pt"
# a folder holding one of these is a run folder (written by this package); commands that take a lock and
# clean up in a folder (reshard, upgrade) refuse any other folder, which is the user's
RUN_MARKERS = (CONFIG_FILE, f"{CHECKPOINT_DIR}/{MANIFEST_FILE}", MODEL_FILE, LEGACY_MODEL_FILE)


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding one of :data:`RUN_MARKERS`."""
    path = Path(path)
    return path.is_dir() and any((path / m).exists() for m in RUN_MARKERS)


def checkpoint_dir(run: str | Path) -> Path:
    return Path(run) / CHECKPOINT_DIR


STEP_NAME = re.compile(r"step-\d{8}")  # a step folder's name: f"step-{seq:08d}"


def shard_name(rank: int, world: int) -> str:
    return f"shard-{rank:05d}-of-{world:05d}.pt"


UPGRADE_HINT = "glann upgrade --run {run} --trust-pickle"
_MANIFEST_KEYS = {
    "format": int, "seq": int, "step_dir": str, "world_size": int, "total": int, "bounds": list,
    "shards": list, "phase": str, "epoch": int, "global_step": int,
}  # fmt: skip


MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a few hundred bytes


def read_manifest_object(run: str | Path) -> dict[str, Any] | None:
    """The JSON object in run folder ``run``'s manifest, of any format and its entries unchecked (what
    ``glann upgrade`` reads to find a format-1 checkpoint); None when there is no manifest."""
    path = checkpoint_dir(run) / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        manifest = json.loads(read_regular(path, limit=MAX_MANIFEST_BYTES).decode("utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8, not JSON, a 4,300-digit integer
        raise CheckpointError(f"{path}: unreadable manifest ({exc})") from exc
    except RecursionError:
        raise CheckpointError(f"{path}: unreadable manifest (JSON nested too deeply)") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(
            f"{path}: not a checkpoint manifest (expected a JSON object, got {type(manifest).__name__})"
        )
    return manifest


def read_manifest(run: str | Path) -> dict[str, Any] | None:
    """The manifest of run folder ``run``, or None when it has no checkpoint yet. Every entry is checked:
    the step folder and shard names must be the plain names this module writes (so no path from the file
    can point outside ``checkpoints/``), and bounds must be the contiguous split of ``total``."""
    path = checkpoint_dir(run) / MANIFEST_FILE
    manifest = read_manifest_object(run)
    if manifest is None:
        return None
    if manifest.get("format") == 1:
        raise CheckpointError(
            f"{path}: a checkpoint of glann_ext 0.1, whose files are pickles; convert the run once with "
            f"`{UPGRADE_HINT.format(run=run)}` (only if you trust where it came from)"
        )
    if manifest.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {manifest.get('format')!r}, expected {FORMAT_VERSION}"
        )
    check_manifest(path, manifest)
    return manifest


def check_manifest(path: Path, m: dict[str, Any]) -> None:
    """CheckpointError, naming ``path``, unless ``m`` is a well-formed manifest of the current format."""
    for key, kind in _MANIFEST_KEYS.items():
        if key not in m:
            raise CheckpointError(f"{path}: manifest has no {key!r}")
        if not isinstance(m[key], kind) or isinstance(m[key], bool):
            raise CheckpointError(f"{path}: manifest {key!r} must be a {kind.__name__}, got {m[key]!r}")
    w, total = m["world_size"], m["total"]
    if w < 1 or total < 1 or m["seq"] < 0 or m["step_dir"] != f"step-{m['seq']:08d}":
        raise CheckpointError(
            f"{path}: manifest names an impossible step ({m['step_dir']!r}, seq {m['seq']})"
        )
    if m["shards"] != [shard_name(r, w) for r in range(w)]:
        raise CheckpointError(
            f"{path}: manifest shard names {m['shards']!r} are not the {w} shards of a step"
        )
    if m["bounds"] != [list(shard_bounds(total, w, r)) for r in range(w)]:  # JSON: lists of 2 integers
        raise CheckpointError(f"{path}: manifest bounds do not split {total} rows over {w} shards")
    if m["phase"] not in ("glo", "imle"):
        raise CheckpointError(f"{path}: manifest phase {m['phase']!r} is not glo or imle")
    if not isinstance(m.get(DATASET_KEY, {}), dict):  # optional: manifests before it have none
        raise CheckpointError(f"{path}: manifest {DATASET_KEY!r} must be a dict, got {m[DATASET_KEY]!r:.60}")


# the manifest's fingerprint of the rows the run trains on (glann_ext.data.fingerprint), recorded by the first
# checkpoint of a run and carried by every later one; a resume on other data is refused
DATASET_KEY = "dataset"


def _check_data(
    where: Path, recorded: Any, current: dict[str, Any] | None, dataset: Any, dataset_now: Any = None
) -> None:
    """Refuse a resume whose dataset's rows (``current``: the fingerprint of what this run loaded) differ
    from the fingerprint the checkpoint recorded (a renamed image moves every later image behind another's
    code, silently); a manifest from before fingerprints (``recorded`` None) is not checked, and its next
    checkpoint records the data loaded now."""
    if rows_may_predate_031(dataset, recorded):  # a checkpoint from before fingerprints (glann_ext 0.1)
        raise CheckpointError(
            f"{where}: records no fingerprint of its data; " + changed_data_advice(dataset, "")
        )
    if recorded is None or current is None:
        return
    change = fingerprint_change(recorded, current)
    if change is not None and dataset_now is not None and dataset_now != dataset:  # named at a new place
        raise CheckpointError(
            f"{where}: the data at {dataset_now} is not what the checkpoint trained on ({dataset}): {change}; "
            f"name the run's data or start a new run folder"
        )
    if change is not None:
        raise CheckpointError(
            f"{where}: the dataset's files changed since the checkpoint ({dataset}): {change}; "
            + changed_data_advice(dataset, "restore them or start a new run folder")
        )


def write_manifest(run: Path, manifest: dict[str, Any]) -> None:
    atomic_write(
        checkpoint_dir(run) / MANIFEST_FILE, lambda f: f.write(json.dumps(manifest, indent=1).encode())
    )


def _delete_older(run: Path, keep: str) -> None:
    """Remove the step folders before ``keep``: only names a run writes (``step-`` and 8 digits), never a
    link nor a folder of another name (``step-0-old`` sorted before them all)."""
    for d in checkpoint_dir(run).glob("step-*"):
        # fixed-width names: string order is step order
        if STEP_NAME.fullmatch(d.name) and d.name < keep and d.is_dir() and not d.is_symlink():
            shutil.rmtree(d, ignore_errors=True)


def save_step(
    run: str | Path,
    world: World,
    total: int,
    main: Callable[[], dict[str, Any]],
    rows: dict[str, torch.Tensor],
    info: dict[str, Any],
    data: dict[str, Any] | None = None,
) -> None:
    """Write one checkpoint step of a run: this rank's ``rows`` (rows ``world.bounds(total)``), and on rank 0
    ``main()`` (the replicated state); then, once every rank's file is on disk, the manifest (rank 0), with
    the fingerprint of the run's dataset (the one the previous step recorded, else ``data``: the
    :class:`~glann_ext.data.ImageShard`'s). Collective: every rank calls it at the same step."""
    run = Path(run)
    previous = read_manifest(run)
    seq = 0 if previous is None else previous["seq"] + 1
    step_dir = checkpoint_dir(run) / f"step-{seq:08d}"
    if world.is_main:  # real folders (a link planted in their place is replaced)
        ensure_dir(step_dir.parent)
        ensure_dir(step_dir)
    world.barrier()
    start, stop = world.bounds(total)
    save_atomic(
        {"start": start, "stop": stop, "total": total, "rows": rows},
        step_dir / shard_name(world.rank, world.size),
    )
    if world.is_main:
        save_atomic(main(), step_dir / MAIN_FILE)
        # the first fingerprint is carried, except one in an older format, which this run's data (checked
        # against it on resume) replaces, so that later resumes compare in the current, stronger format
        recorded = (previous or {}).get(DATASET_KEY)
        data = recorded if recorded is not None and "version" in recorded else (data or recorded)
    world.barrier()  # every shard of this step is on disk
    if world.is_main:
        manifest = {
            "format": FORMAT_VERSION,
            "seq": seq,
            "step_dir": step_dir.name,
            "world_size": world.size,
            "total": total,
            "bounds": world.all_bounds(total),
            "shards": [shard_name(r, world.size) for r in range(world.size)],
            **info,
            **({DATASET_KEY: data} if data is not None else {}),
        }
        write_manifest(run, manifest)
        _delete_older(run, step_dir.name)
    world.barrier()  # nobody reads the manifest of the next step before this one is written


def load_step(
    run: str | Path, world: World, total: int, data: dict[str, Any] | None = None, dataset: str | None = None
) -> dict[str, Any] | None:
    """The training state ``{phase, glo, imle}`` of the latest complete step with this rank's rows, or None
    without a checkpoint. ``data``: the fingerprint of the dataset this run loaded (None: not checked), from
    ``dataset`` (the config's, named in the refusal when it is not the checkpoint's).

    Raises :class:`CheckpointError` (and changes nothing) when the step was written by another number of
    processes, for another dataset size or for rows whose files have changed since (the manifest's
    fingerprint of the data, :data:`DATASET_KEY`), or when a file of it is missing.
    """
    manifest = read_manifest(run)
    if manifest is None:
        return None
    where = checkpoint_dir(run) / MANIFEST_FILE
    if manifest["world_size"] != world.size:
        raise CheckpointError(
            f"{run}: the checkpoint was written by {manifest['world_size']} process(es) and this job has "
            f"{world.size}; resume with {manifest['world_size']} process(es), or convert it first: "
            f"glann reshard --run {run} --world-size {world.size}"
        )
    if manifest["total"] != total:
        raise CheckpointError(
            f"{where}: the checkpoint holds {manifest['total']} images' codes but the dataset now has {total} "
            f"(a different --dataset or --limit, or image files added to or removed from its folder?)"
        )
    step_dir = checkpoint_dir(run) / manifest["step_dir"]
    for name in [MAIN_FILE, *manifest["shards"]]:
        if not (step_dir / name).exists():
            raise CheckpointError(
                f"{step_dir / name}: missing; the checkpoint named by {where} is incomplete"
            )
    shard = load_shard(step_dir / manifest["shards"][world.rank])
    if (shard["start"], shard["stop"]) != world.bounds(total):
        raise CheckpointError(
            f"{step_dir}: shard {world.rank} holds rows {shard['start']}..{shard['stop']}, expected {world.bounds(total)}"
        )
    main, rows = load_main(step_dir / MAIN_FILE), shard["rows"]
    _check_data(where, manifest.get(DATASET_KEY), data, main["config"].get("dataset"), dataset)
    return {
        "phase": main["phase"],
        **_joined(step_dir, main, rows),
        "config": main["config"],
        "image_shape": tuple(main["image_shape"]),
        VGG_DIGEST_KEY: main.get(VGG_DIGEST_KEY),
    }


def _joined(step_dir: Path | str, main: dict[str, Any], rows: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Both trainer states of a step with their rows put back (a row set main.pt names and no shard holds is
    a CheckpointError naming the step)."""
    try:
        return {stage: join_state(stage, main[stage], rows) for stage in ("glo", "imle")}
    except CheckpointError as exc:
        raise CheckpointError(f"{step_dir}: {exc}") from None


READ_TRIES = 10  # reads of a step that a training job replaced meanwhile, before a reader gives up


def read_step(
    run: str | Path, *, main: bool = True, rows: bool = True, names: list[str] | None = None
) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, torch.Tensor] | None]:
    """(manifest, main state, per-row tensors of every shard concatenated) of the latest complete step, all
    from the same step. For readers that do not hold the run's lock (sample, eval, export): when a training
    job replaces the step while it is read (its files vanish), the new manifest is read and the read
    retried, so a reader never mixes two steps nor sees a half-written one. ``names`` limits the rows."""
    for attempt in range(READ_TRIES):
        if attempt:  # a job checkpointing every step replaces them fast: give it a moment to finish one
            time.sleep(min(0.2, 0.005 * 2**attempt))
        manifest = read_manifest(run)
        if manifest is None:
            raise CheckpointError(f"{run}: no checkpoint ({CHECKPOINT_DIR}/{MANIFEST_FILE} missing)")
        step_dir = checkpoint_dir(run) / manifest["step_dir"]
        try:
            state = load_main(step_dir / MAIN_FILE) if main else None
            table = _rows_in(step_dir, manifest, 0, manifest["total"], names) if rows else None
            return manifest, state, table
        except CheckpointError:
            again = read_manifest(run)
            if again is None or again["seq"] == manifest["seq"]:
                raise  # not a step that moved on: the checkpoint is damaged
    raise CheckpointError(f"{run}: the checkpoint kept changing while it was read; try again")


def latest_main(run: str | Path) -> dict[str, Any]:
    """The replicated state of the latest complete step (no rows)."""
    return read_step(run, rows=False)[1]


def load_latest(run: str | Path) -> dict[str, Any]:
    """The latest complete step of ``run`` as one state (phase, trainer states with every shard's rows
    concatenated, config): for inspection, tests and export, not for resuming a sharded job."""
    manifest, main, rows = read_step(run)
    return {**main, **_joined(checkpoint_dir(run) / manifest["step_dir"], main, rows)}


def gather_rows(run: str | Path, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """The per-row tensors of the latest step with all shards concatenated (whole table in memory: for
    exporting a finished model, not for training)."""
    return read_step(run, main=False, names=names)[2]


def _rows_in(
    step_dir: Path, manifest: dict[str, Any], start: int, stop: int, names: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """Rows ``[start, stop)`` of every per-row tensor of a step, read from the shards that overlap them."""
    parts: dict[str, list[torch.Tensor]] = {}
    for name, (lo, hi) in zip(manifest["shards"], manifest["bounds"]):
        a, b = max(lo, start), min(hi, stop)
        path = step_dir / name
        if not path.exists():
            raise CheckpointError(f"{path}: missing; the checkpoint step {step_dir.name} is incomplete")
        if a >= b and parts:  # no rows wanted from this shard, and its tensor names are known already
            continue
        rows = load_shard(path, mmap=True)["rows"]
        for key, t in rows.items():
            if names is not None and key not in names:
                continue
            parts.setdefault(key, [])
            if a < b:
                parts[key].append(t[a - lo : b - lo].clone())
            elif not parts[key]:
                parts[key].append(t[:0].clone())
    return {k: torch.cat(v) for k, v in parts.items()}


def _shards(n: int) -> str:
    return "1 shard" if n == 1 else f"{n} shards"


def reshard(run: str | Path, world_size: int, log: Callable[[str], None] = print) -> None:
    """Rewrite the latest checkpoint of ``run`` for ``world_size`` processes (a new step; the old one is
    deleted only after the new manifest is written), holding the run folder's lock. Each new shard is
    assembled from memory-mapped old shards, so peak memory is about one new shard."""
    run = Path(run)
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    # checked before the lock: not the user's folder. exists(), not is_file(): a manifest that is a FIFO or a
    # folder is then named as such by read_manifest, not reported missing
    if not (checkpoint_dir(run) / MANIFEST_FILE).exists():
        raise CheckpointError(f"{run}: no checkpoint to reshard (no {CHECKPOINT_DIR}/{MANIFEST_FILE})")
    with FolderLock(run):
        remove_stale_temps(run)
        manifest = read_manifest(run)
        if manifest is None:
            raise CheckpointError(f"{run}: no checkpoint to reshard (no {CHECKPOINT_DIR}/{MANIFEST_FILE})")
        total = manifest["total"]
        if world_size > total // 2:
            raise CheckpointError(
                f"{run}: {total} images cannot be shared by {world_size} processes (each needs at least 2; "
                f"at most {total // 2})"
            )
        if manifest["world_size"] == world_size:
            log(f"{run}: already sharded for {world_size} process(es); nothing to do")
            return
        new_dir = _write_resharded(run, manifest, world_size)
    log(
        f"{run}: checkpoint step {manifest['step_dir']} ({_shards(manifest['world_size'])}) rewritten as "
        f"{new_dir.name} ({_shards(world_size)})"
    )


def _write_resharded(run: Path, manifest: dict[str, Any], world_size: int) -> Path:
    old_dir = checkpoint_dir(run) / manifest["step_dir"]
    if not (old_dir / MAIN_FILE).exists():
        raise CheckpointError(f"{old_dir / MAIN_FILE}: missing; the checkpoint is incomplete")
    total, seq = manifest["total"], manifest["seq"] + 1
    new_dir = checkpoint_dir(run) / f"step-{seq:08d}"
    shutil.rmtree(new_dir, ignore_errors=True)  # a step a killed job had begun: never named by a manifest
    ensure_dir(new_dir)
    bounds = [shard_bounds(total, world_size, r) for r in range(world_size)]
    for r, (lo, hi) in enumerate(bounds):
        rows = _rows_in(old_dir, manifest, lo, hi)
        save_atomic(
            {"start": lo, "stop": hi, "total": total, "rows": rows}, new_dir / shard_name(r, world_size)
        )
    save_atomic(load_main(old_dir / MAIN_FILE), new_dir / MAIN_FILE)  # loaded, so only safe content travels
    new = {
        **manifest,
        "seq": seq,
        "step_dir": new_dir.name,
        "world_size": world_size,
        "bounds": [list(b) for b in bounds],
        "shards": [shard_name(r, world_size) for r in range(world_size)],
    }
    write_manifest(run, new)
    _delete_older(run, new_dir.name)
    return new_dir

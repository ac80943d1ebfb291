"""Converting a run folder written by glann_ext 0.1 to the current formats: ``glann upgrade``.

glann_ext 0.1 wrote ``model.pt`` and the checkpoints' ``main.pt`` with plain ``torch.save`` (pickles: the
checkpoint also held numpy's and Python's RNG state). Loading a pickle can run code, so nothing in the package
opens one, except this module, and only when the user says they trust the files (``--trust-pickle``). The
conversion holds the run folder's lock; the old model file is kept beside the new one, renamed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from glann_ext._io import FolderLock, open_regular, remove_stale_temps
from glann_ext.errors import CheckpointError, RunFolderError, UsageError
from glann_ext.models import GLANN, save_model

from . import checkpoint as ckpt
from .build import build_model
from .config import CONFIG_FILE, read_config_object, saved_config

KEPT_SUFFIX = ".glann-0.1"  # model.pt is kept as model.pt.glann-0.1


def upgrade_run(
    run: str | Path, *, trust_pickle: bool = False, log: Callable[[str], None] = print
) -> list[str]:
    """Convert the 0.1 files of run folder ``run`` (model.pt, a format-1 checkpoint, config.json); returns
    what was converted. Refuses a run holding 0.1's pickles (its model.pt or checkpoint) unless ``trust_pickle``:
    they are unpickled to convert them."""
    run = Path(run)
    if not run.is_dir():
        raise RunFolderError(f"{run}: no such run folder")
    if not ckpt.is_run_folder(run):  # before the lock: a folder that is not a run is left untouched
        raise RunFolderError(
            f"{run}: not a glann run folder (none of {', '.join(ckpt.RUN_MARKERS)} in it); nothing to upgrade"
        )
    _check_trust(run, trust_pickle)  # before the lock: a refusal leaves the folder as it was
    done = []
    with FolderLock(run):
        manifest = _check_trust(run, trust_pickle)  # what the lock now holds (nothing unpickled untrusted)
        remove_stale_temps(run)
        # checked before any file is rewritten: a manifest the current format cannot hold leaves the run as
        # 0.1 wrote it (checked after, a second upgrade found format 2 and called a run nothing loads done)
        converted = _converted_manifest(run, manifest) if _format_1(manifest) else None
        if (run / CONFIG_FILE).exists() and _upgrade_config(run / CONFIG_FILE):
            done.append(f"{CONFIG_FILE} (the old behaviour of fields it lacked kept)")
        if converted is not None:
            _upgrade_checkpoint(run, converted)
            done.append(f"{ckpt.CHECKPOINT_DIR}/ (format 1 -> {ckpt.FORMAT_VERSION})")
        if (run / ckpt.LEGACY_MODEL_FILE).exists():
            _upgrade_model(run)
            done.append(
                f"{ckpt.LEGACY_MODEL_FILE} -> {ckpt.MODEL_FILE} (old file kept as {ckpt.LEGACY_MODEL_FILE}{KEPT_SUFFIX})"
            )
    log(f"{run}: " + ("; ".join(done) if done else "nothing to upgrade"))
    return done


def _check_trust(run: Path, trust_pickle: bool) -> dict[str, Any] | None:
    """UsageError unless ``trust_pickle`` where ``run`` holds a 0.1 file that converting means unpickling
    (model.pt or a format-1 checkpoint); a run without one (a current run) is not asked for trust. Returns
    the checkpoint manifest it read (None without one)."""
    manifest = ckpt.read_manifest_object(run)
    pickles = _format_1(manifest) or (run / ckpt.LEGACY_MODEL_FILE).exists()
    if pickles and not trust_pickle:
        raise UsageError(
            f"{run}: converting glann_ext 0.1 files means unpickling them, which runs any code planted in "
            "them; pass --trust-pickle if these files are your own"
        )
    return manifest


def _format_1(manifest: dict[str, Any] | None) -> bool:
    """Whether ``manifest`` (None: no checkpoint) is 0.1's format-1 checkpoint, whose shards are pickles."""
    return manifest is not None and manifest.get("format") == 1


def _upgrade_config(path: Path) -> bool:
    """Drops 0.1's unused "extra" and pins the 0.1 behaviour of fields added since with other defaults
    (:func:`~glann_ext.train.config.saved_config`); whether the file changed (a current run's is left as it
    is)."""
    saved = read_config_object(path, run_file=True)
    upgraded = saved_config({k: v for k, v in saved.items() if k != "extra"})
    if upgraded.to_dict() == saved:
        return False
    upgraded.to_json(path)
    return True


def _unpickle(path: Path) -> Any:
    try:
        with open_regular(path) as f:
            return torch.load(f, map_location="cpu", weights_only=False)  # the one trusted unpickling
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read it as a glann_ext 0.1 file ({exc})") from exc


def _converted_manifest(run: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The current format's manifest for 0.1's ``manifest``, checked as a reader checks it; CheckpointError
    when it names files outside checkpoints/ or the current format cannot hold it."""
    step = ckpt.checkpoint_dir(run) / str(manifest.get("step_dir", ""))
    names = manifest.get("shards", [])
    if not (
        step.parent == ckpt.checkpoint_dir(run)
        and step.name.startswith("step-")
        and isinstance(names, list)
        and all(isinstance(n, str) and Path(n).name == n and n.startswith("shard-") for n in names)
    ):
        raise CheckpointError(f"{run}: its manifest names files outside checkpoints/; not converted")
    converted = {**manifest, "format": ckpt.FORMAT_VERSION}
    ckpt.check_manifest(ckpt.checkpoint_dir(run) / ckpt.MANIFEST_FILE, converted)
    return converted


def _upgrade_checkpoint(run: Path, converted: dict[str, Any]) -> None:
    """Rewrites the pickles of the step ``converted`` (a :func:`_converted_manifest`) names, then the
    manifest: it says format 2 only once every file it names is converted."""
    step = ckpt.checkpoint_dir(run) / converted["step_dir"]
    main = _unpickle(step / ckpt.MAIN_FILE)
    main.pop("rng", None)  # the run's RNG is no longer global state
    if isinstance(main.get("config"), dict):
        main["config"].pop("extra", None)
        main["config"] = saved_config(main["config"]).to_dict()
    ckpt.save_atomic(main, step / ckpt.MAIN_FILE)
    for name in converted["shards"]:
        ckpt.save_atomic(_unpickle(step / name), step / name)
    ckpt.write_manifest(run, converted)


def _upgrade_model(run: Path) -> None:
    old = _unpickle(run / ckpt.LEGACY_MODEL_FILE)
    try:
        cfg = saved_config({k: v for k, v in old["cfg"].items() if k != "extra"})
        model = build_model(cfg, tuple(old["image_shape"]))
        model.G.load_state_dict(old["G"])
        if isinstance(model, GLANN):
            T = None
            if old["T"] is not None:
                T = model.T
                T.load_state_dict(old["T"])
            model = GLANN(model.G, old["codes"].float(), T, ops=model.ops, config=model.config)
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"{run / ckpt.LEGACY_MODEL_FILE}: not a glann_ext 0.1 model file ({exc})"
        ) from exc
    save_model(model, run / ckpt.MODEL_FILE)
    (run / ckpt.LEGACY_MODEL_FILE).rename(run / (ckpt.LEGACY_MODEL_FILE + KEPT_SUFFIX))

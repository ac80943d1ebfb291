"""Training configuration: one flat dataclass, saved as JSON in each run folder, plus named presets."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glann_ext._args import MAX_SEED, is_finite_number
from glann_ext._io import open_regular
from glann_ext.errors import ConfigError
from glann_ext.models.generative import (
    DEFAULT_LOCAL_NEIGHBOURS,
    MAX_BALANCE_DRAWS,
    MAX_LOCAL_NEIGHBOURS,
    MAX_NOISE_SCALE,
    MAX_SPREAD,
)

CONFIG_FILE = "config.json"
# Fields read only when sampling from a finished model: training is the same whatever they hold.
SAMPLING_FIELDS = (
    "balance_draws",
    "balance_quantile",
    "sample_noise_scale",
    "sample_local_spread",
    "sample_local_neighbours",
    "sample_spread",
)


@dataclass
class TrainConfig:
    """Everything that defines a GLANN run. Defaults follow the GLANN reference code for Fashion-MNIST
    (latent 64, noise 32, batch 128, Adam betas (0.5, 0.999), codes lr 0.01, mapping lr 0.001, M = 2 x number
    of codes noise draws per IMLE epoch) except where the quality report measured better: G's rate 2e-3
    (``lr_g``; the reference's 1e-3), the cosine IMLE rate, IMLE on whitened codes (``imle_whiten``) with
    ``T``'s Adam betas (0.9, 0.9) (``imle_betas``), balanced sampling, ``T``'s batch of 32
    (``imle_batch_size``), its noise 1.5 wide when sampling (``sample_noise_scale``) and the local spread
    of each sample along its nearest codes' directions (``sample_local_spread``).

    A config is validated when it is made (``TrainConfig(...)``, ``dataclasses.replace``, :func:`preset`):
    a bad field is a :class:`~glann_ext.errors.ConfigError` naming it. Fields set afterwards are checked
    again when training starts."""

    # data
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    limit: int | None = None  # keep only the first `limit` images
    image_size: int | None = None  # None: an array's own size; an image folder is read at 64 x 64
    channels: int | None = None  # None: an array's own channels; an image folder is read as RGB (3)
    # GLO
    latent_dim: int = 64
    gen_width: int = 64
    gen_depth: int = 0  # extra 3x3 conv layers per hidden resolution of G (0: the papers' DCGAN generator)
    batch_size: int = 128
    glo_epochs: int = 25
    lr_g: float = 2e-3
    """G's Adam rate: twice the 1e-3 of earlier releases, which won at every budget measured on 2 CPU cores
    (docs/training.md, "G's rate"); the ``paper`` preset keeps 1e-3."""
    lr_z: float = 1e-2
    betas: tuple[float, float] = (0.5, 0.999)
    glo_lr_schedule: str = "constant"
    """"constant" (the GLO/GLANN papers' fixed rates) or "cosine": ``lr_g`` and ``lr_z`` decay per step to 0
    over ``glo_epochs`` (cosine annealing, Loshchilov & Hutter 2017), so that short runs end refined."""
    latent_optimizer: str = "adam"  # "adam" (sparse Adam) or "sgd"
    latent_adam_steps: str = "global"
    """Adam's bias correction for the codes: "global" counts optimizer steps, as ``torch.optim.SparseAdam``
    does (the papers' code): after the first epoch a code's steps grow to several times ``lr`` per coordinate
    (towards ``lr (1 - 0.5^k) / sqrt(0.001 k)`` at its k-th update as the step count passes a few
    thousand); "rows" counts each code's own updates (the exact Adam of a row touched once per epoch): better
    reconstructions, but codes that IMLE samples worse at the budgets measured (docs/training.md, "Choices and
    why")."""
    init: str = "pca"  # "pca" or "random"
    lap_weights: str = "paper"
    """Level weights of the Laplacian-pyramid loss: "paper" (the GLO paper's 4^j, j = 0 the finest: every
    level's total weight is about equal) or "flat" (1 per level: the finest level dominates)."""
    l2_weight: float = 0.0  # weight of an extra pixel L2 term
    vgg_weights: str | None = None  # local VGG16 state_dict; enables the perceptual term
    vgg_weight: float = 0.0
    # IMLE
    imle_space: str = "latent"  # "latent" (GLANN) or "pixel" (original IMLE, no GLO stage)
    imle_epochs: int = 50
    imle_batch_size: int = 32
    """Targets per step of ``T`` in the IMLE stage on codes (pixel-space IMLE trains G with ``batch_size``).
    Smaller than G's batch: the stage's cost is one matching per epoch plus ``T``'s arithmetic per target, so
    a smaller batch buys 4x the steps for 1.7-2.3x the stage's time; in the quality report (its Xeon run) batch
    32 takes FD from 27.8 (batch 128) to 23.7 (3 seeds) at the same recall (docs/training.md, "The IMLE
    stage's batch"). The GLANN code uses 128; run folders saved before this field keep ``batch_size`` when
    resumed."""
    noise_dim: int = 32
    imle_lr: float = 1e-3
    imle_betas: tuple[float, float] = (0.9, 0.9)
    """Adam's betas for the mapping ``T`` of the IMLE stage on codes (``betas`` serves G and the codes, and G
    in pixel-space IMLE). (0.9, 0.9), a short second-moment memory, lets ``T``'s steps follow the matched
    targets, which change every epoch. With whitened IMLE it takes the quality issue's 25-epoch budget from
    1.56 to 1.24 times the ceiling's FD (three seeds, better on each) at the same recall, wins at the quality
    report's budget (benchmarks/QUALITY.md part (d)) and ties on ``laptop`` (FD level, precision +0.013,
    recall -0.015; docs/training.md, "T's Adam betas with whitened IMLE"); the 2-D mixtures train with it too.
    (0.5, 0.999) is the GLANN code's, shared there between both stages, and this default until 2026-12-04:
    run folders keep the betas they were saved with, and those saved before this field existed keep ``betas``
    here when resumed (:func:`saved_config`)."""
    imle_weight_decay: float = 1e-5
    imle_noise_multiple: float = 2.0  # noise draws per epoch = multiple x number of targets, rounded
    imle_lr_schedule: str = "cosine"
    """"cosine" (default) or "constant" (the paper): with "cosine" the IMLE learning rate decays per step from
    ``imle_lr`` to 0 over ``imle_epochs`` (Loshchilov & Hutter, SGDR, ICLR 2017), so that late epochs refine
    instead of jitter. The quality report's ablation (benchmarks/QUALITY.md, part (d)) measures it ahead at no
    cost on Fashion-MNIST: FD 20.21 +- 1.77 against 22.13 +- 2.33, recall 0.777 against 0.760 over three seeds
    (when it became the default, in an earlier report: 51.9 +- 2.5 against 64.8 +- 12.2)."""
    # Options for tight, well-separated modes (off by default: the paper's IMLE). See docs/training.md.
    imle_precision_weight: float = 0.0
    """Weight of a precision term added to the IMLE loss: each step also draws a batch of fresh noise
    vectors and regresses each output onto its nearest target (the reverse half of a Chamfer distance).
    IMLE alone pulls only the sample nearest to each target, so samples between modes get no gradient; this
    term pulls them in. 0 (default): plain IMLE."""
    imle_match: str = "nearest"
    """"nearest" (the paper: each target takes its nearest sample, so several targets may share one) or
    "unique": every target gets a sample of its own (greedy one-to-one matching in rounds: each unmatched
    target claims its nearest free sample, the closest claimant wins; needs ``imle_noise_multiple >= 1``).
    With "unique" a mode holding k targets needs k samples, so sample mass follows data mass; it balances
    modes when the precision term is on. Best with ``imle_noise_multiple`` > 1 (the default 2)."""
    imle_adaptive: bool = False
    """Adaptive IMLE (Aghabozorgi, Peng & Li, ICML 2023, "Adaptive IMLE for Few-shot Pretraining-free
    Generative Modelling"): each target keeps its matched noise across epochs and is matched anew only once
    it is fitted (its sample came closer than a per-target threshold, which then becomes
    ``(1 - imle_adaptive_shrink)`` x the squared distance that sample had reached) or after
    ``imle_force_rematch`` epochs."""
    imle_adaptive_shrink: float = 0.04  # the paper's gamma
    imle_staleness: int = 1  # epochs a target keeps its match at least (the paper: 7 of thousands)
    imle_force_rematch: int = 10  # epochs after which a target is matched anew anyway (the paper: 30)
    imle_reject_radius: float = 0.0
    """Rejection-sampling IMLE (Vashist, Peng & Li, ECCV 2024): before matching, draws whose output lies
    within this (Euclidean) radius of any target are discarded, so training pulls the samples that sampling
    will produce rather than ones that already sit on a target. Exact over all targets (the paper asks each
    target for its 5 nearest draws); 0 (default): off. In the matching space (GLANN's codes, whitened with
    ``imle_whiten``)."""
    imle_whiten: bool = True
    """IMLE on codes in whitened coordinates (:mod:`glann_ext.train.whitening`): the codes' principal
    directions all scaled to their mean variance, so the exact matching and ``T``'s regression weigh every
    direction alike; ``T`` ends in a fixed affine map back to codes, so sampling is unchanged. On raw codes
    ``T`` fits the few leading directions and averages the rest away, and G decodes its samples as blends:
    at the quality issue's 25-epoch budget whitening takes the samples from 1.75x to 1.38x the
    reconstruction ceiling's FD (three seeds; 1.18-1.63x) with recall up from 0.763 to 0.791
    (docs/training.md, "Whitened IMLE"). False: the papers' Euclidean IMLE on the codes. Distances in the
    stage (``imle_reject_radius``, its logged match distance) are whitened ones. Latent-space IMLE only:
    pixel-space IMLE has no codes and ignores it."""
    mapping_hidden: int = 128
    mapping_layers: int = 2
    mapping_batch_norm: bool = True
    # sampling
    balance_draws: float = 10.0
    """Balanced sampling (:mod:`glann_ext.models.balance`): after training, this many draws of ``T`` per code
    count how often each code is a draw's nearest, and sampling keeps a draw with probability
    ``min(1, tau / count)`` of its nearest code, so ``T``'s mass spreads evenly over the codes. 0: plain
    ``T(e)`` sampling (the papers'). Sampling only: training is the same either way. In the quality report it
    raises recall a little for a little FD (each within a seed's spread); at ``laptop`` it lowered FD and
    raised recall on every seed (docs/training.md, "Balanced sampling")."""
    balance_quantile: float = 0.25  # tau: this quantile of the non-zero counts (lower: more even, more draws)
    sample_noise_scale: float = 1.5
    """Standard deviation of ``T``'s noise when sampling (``T`` trains on N(0, I)); the balanced sampler
    calibrates at the same scale. Above 1 reaches the codes that a ``T`` trained for many steps (as on
    ``imle_batch_size`` 32) has drawn in: on the quality issue's 25-epoch budget 1.5 lowers FD by a tenth to a
    fifth and raises recall, on ``laptop`` it lowers FD by a quarter, after a long IMLE stage it takes FD from
    1.30x to 1.21x the ceiling; at the quality report's short budget it lowers FD (20.21 against 24.44 at 1)
    (docs/training.md, "The default noise scale"). 1 samples as the papers do. Sampling only: run folders
    saved before 1.5 became the default keep 1."""
    sample_local_spread: float = 0.5
    """GLANN: move each sample's code by Gaussian noise with this many times the spread of its
    ``sample_local_neighbours`` nearest training codes (their covariance scaled by its square), then project
    it back onto the sphere before decoding: the sample moves along the directions the codes vary in near it
    (a manifold Parzen window around ``T``'s sample). 0: ``T``'s samples as they are (run folders and model
    files saved before the field keep 0). At 0.5, on every seed of four budgets (the quality report's, the
    25-epoch recipe, ``laptop``, ``laptop-30min``) it lowers FD, and it raises recall, precision and coverage
    on average (on every seed of the quality report's two image tables), and it moves both
    stacked tables towards GLO + Gaussian; at 0.75 and 1 recall rises further and FD worsens at the 25-epoch
    recipe (docs/training.md, "The local spread"). Sampling only."""
    sample_local_neighbours: int = DEFAULT_LOCAL_NEIGHBOURS  # k of the local spread (2 to 256)
    sample_spread: float = 0.0
    """GLANN: move each sample's code by isotropic Gaussian noise of about this norm (per coordinate, this
    many times the codes' standard deviation) and project it back onto the sphere before decoding. 0 (the
    default): ``T``'s samples as they are. More spread mixes more (a kernel smoothing of ``T``'s samples):
    recall and the stacked tables' mode counts rise, precision and FD worsen. At the quality report's budget
    (its Xeon run of 2026-12-05) 0.75 puts GLANN ahead of GLO + Gaussian in FD, precision, coverage and
    stacked KL (on every seed) and level in stacked modes and Fashion-MNIST recall, at 1.56x the default's FD
    (1.74x in the committed report, benchmarks/QUALITY.md part (c));
    at the 25-epoch recipe 0.25 costs 15% in FD for +0.008 recall (docs/training.md, "Spreading the samples").
    Sampling only."""
    # execution
    ops: str = "fused"  # "fused" kernels or "reference" PyTorch ops
    device: str = "cpu"
    amp: bool = True  # bfloat16 autocast for G and T on CUDA; ignored on CPU
    threads: int | None = None  # torch's intra-op threads while fit() / train() runs (None: as they are)
    seed: int = 0
    ckpt_every: int = 200  # steps between mid-epoch checkpoints (0: only at epoch ends)
    sample_every: int = 1  # epochs between PNG grids

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> TrainConfig:
        """Raise :class:`~glann_ext.errors.ConfigError` (a ValueError) naming the first bad field: a wrong
        type, a non-finite or out-of-range number, or a choice not offered. (Whether the device exists here
        is :meth:`check_runnable`'s question: a config trained on a GPU stays valid on a laptop.)"""
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), _FIELD_TYPES[f.name])
        for name, ok, rule in _range_checks(self):
            if not ok:
                raise _field_error(name, f"must be {rule}, got {_shown(getattr(self, name))}")
        for name, most in MAXIMA.items():
            value = getattr(self, name)
            if value is not None and value > most:
                shown = most if isinstance(most, int) else f"{most:g}"
                raise _field_error(name, f"must be at most {shown}, got {_shown(value)}")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise _field_error(name, f"must be one of {allowed}, got {_shown(getattr(self, name))}")
        if self.image_size is not None:
            from glann_ext.models.generator import start_size

            try:
                start_size(self.image_size)
            except ValueError as exc:
                # start_size's message names the field itself ("image_size must be ..."): the problem follows
                problem = str(exc).removeprefix("image_size ")
                raise _field_error("image_size", problem, message=f"config field image_size: {exc}") from None
        if self.imle_adaptive and self.imle_match != "nearest":
            raise _field_error(
                "imle_adaptive", "needs imle_match 'nearest' (adaptive IMLE re-matches subsets)"
            )
        if self.vgg_weight > 0 and not self.vgg_weights:
            raise _field_error("vgg_weight", "> 0 needs vgg_weights: a local VGG16 state_dict file")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        self.imle_betas = (float(self.imle_betas[0]), float(self.imle_betas[1]))
        return self

    def check_runnable(self) -> TrainConfig:
        """Raise ConfigError unless this machine can run the config: the device exists here, and CUDA
        kernels were built when the fused ops are to run on CUDA."""
        try:
            check_device(self.device, fused=self.ops == "fused")
        except ConfigError as exc:  # a field of this config: named as one
            raise _field_error("device", exc.problem) from None
        return self

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-able values (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self, path: str | Path) -> None:
        """Write the config atomically (other ranks of a job may be reading the folder)."""
        from glann_ext._io import atomic_write

        text = json.dumps(dataclasses.asdict(self), indent=2) + "\n"
        atomic_write(path, lambda f: f.write(text.encode()))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        d = dict(d)
        if d.get("extra") == {}:  # an unused field of glann_ext 0.1's configs
            del d["extra"]
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown config fields: {sorted(unknown)}")
        for name in ("betas", "imle_betas"):
            if isinstance(d.get(name), list):
                d[name] = tuple(d[name])
        return cls(**d).validate()

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        """A config file to start from: fields it lacks take today's defaults."""
        return cls.from_dict(read_config_object(path))


PATH_FIELDS = ("dataset", "data_root", "vgg_weights")  # paths a run folder's config saves absolute


def absolute_path(value: str) -> str:
    """A dataset, data root or weights file given as a relative path that exists, made absolute: the run
    folder's config must name the same files when the run is resumed, or its model evaluated, from another
    directory (``FILE.npz:NAME``: its file). Dataset names (fashion-mnist, ...) are kept as they are, as they
    win over a path of that name."""
    from glann_ext.data.datasets import NAMED, array_file

    path = Path(value)
    member = array_file(value)
    if member is not None and member[1] is not None:
        return f"{absolute_path(str(member[0]))}:{member[1]}"
    if value in NAMED or path.is_absolute() or not path.exists():
        return value
    return str(path.absolute())


def saved_path(value: str) -> str:
    """A path field as a run folder's config saves it: :func:`absolute_path`, but not under torch.distributed
    (torchrun), where a relative path names each node's own files and the nodes' working folders may differ:
    there ``value`` as spelled, the same on every rank."""
    from .world import in_process_group

    return value if in_process_group() else absolute_path(value)


def with_absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its :data:`PATH_FIELDS` as :func:`saved_path` saves them (a copy when one changes): what
    the command line does to its flags, for a config a Python caller hands to a run or a fit."""
    paths = {f: saved_path(v) for f in PATH_FIELDS if isinstance(v := getattr(cfg, f), str)}
    changed = {f: v for f, v in paths.items() if v != getattr(cfg, f)}
    return dataclasses.replace(cfg, **changed) if changed else cfg


MAX_CONFIG_BYTES = 1 << 20  # a config is a few kB; `--config /dev/zero` was read until memory ran out


def read_config_object(path: str | Path, *, run_file: bool = False) -> dict[str, Any]:
    """The JSON object in config file ``path``, or :class:`ConfigError` naming what it is instead."""
    # a run folder's file must be a regular one (a planted FIFO would block); a config the user names may be
    # a pipe (`--config <(...)`)
    with open_regular(path) if run_file else open(path, "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: more than {MAX_CONFIG_BYTES:,} bytes, too large to be a config")
    try:
        saved = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except ValueError as exc:  # not JSON, or an integer of more than 4,300 digits (not a JSONDecodeError)
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    except RecursionError:
        raise ConfigError(f"{path}: JSON nested too deeply to be a config") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{path}: expected a JSON object of config fields, got {type(saved).__name__}")
    return saved


# Fields added since glann_ext 0.1 first saved run folders, each with the value a save without it trained with
# (computed from the save), so that a resumed or converted run keeps computing what it computed whatever the
# field's default is or becomes. (Fields added with the old behaviour as a default that stays need no entry.)
_ADDED_SINCE_SAVED = {
    "latent_adam_steps": lambda saved: "global",
    "imle_lr_schedule": lambda saved: "constant",
    "imle_betas": lambda saved: saved.get("betas", list(TrainConfig.betas)),
    "balance_draws": lambda saved: 0.0,  # runs saved before balanced sampling sampled T(e) plainly
    "imle_batch_size": lambda saved: saved.get("batch_size", TrainConfig.batch_size),
    "sample_noise_scale": lambda saved: 1.0,  # the field came with default 1; 1.5 since 2026-12-03
    "imle_whiten": lambda saved: False,  # IMLE on the raw codes before 2026-12-04
    "sample_local_spread": lambda saved: 0.0,  # T's samples as they were before 2026-12-06
}


def saved_config(saved: dict[str, Any]) -> TrainConfig:
    """The config a run saved as ``saved`` (its config.json, or a checkpoint's copy) trained with. Unlike
    :meth:`TrainConfig.from_dict` (missing fields take today's defaults), fields the save predates take the
    value its run used."""
    pinned = {name: legacy(saved) for name, legacy in _ADDED_SINCE_SAVED.items() if name not in saved}
    return TrainConfig.from_dict({**saved, **pinned})


def load_run_config(path: str | Path) -> TrainConfig:
    """The config a run folder's ``config.json`` trained with (:func:`saved_config`)."""
    return saved_config(read_config_object(path, run_file=True))


def _kind(annotation: str) -> str:
    """The check of a field from its annotation: "int", "float", "bool", "str", "betas", "?" if optional."""
    base = annotation.replace(" | None", "")
    kind = {"int": "int", "float": "float", "bool": "bool", "str": "str", "tuple[float, float]": "betas"}[
        base
    ]
    return kind + ("?" if base != annotation else "")


_FIELD_TYPES = {f.name: _kind(str(f.type)) for f in dataclasses.fields(TrainConfig)}
_CHOICES = {
    "latent_optimizer": ("adam", "sgd"),
    "init": ("pca", "random"),
    "imle_space": ("latent", "pixel"),
    "imle_lr_schedule": ("constant", "cosine"),
    "glo_lr_schedule": ("constant", "cosine"),
    "latent_adam_steps": ("rows", "global"),
    "lap_weights": ("paper", "flat"),
    "imle_match": ("nearest", "unique"),
    "ops": ("fused", "reference"),
    "channels": (None, 1, 3),
}
# A learning rate above this is a typo (1e39 is finite as a Python float but infinite in float32): every
# optimizer here steps in float32, so such a rate made the first step Inf and a Cholesky error later.
MAX_RATE = 1e6
MAX_THREADS = 1024  # torch's thread pools: far beyond any machine's cores; 100000 crashes torch
# Generous upper bounds of the sizes (each far above any run the package is meant for), so that a typo such as
# --gen-width 1000000 is a one-line config error, not an allocation traceback or a hang while building G.
MAXIMA: dict[str, float] = {
    "latent_dim": 16384,
    "noise_dim": 16384,
    "gen_width": 4096,
    "gen_depth": 64,
    "mapping_hidden": 16384,
    "mapping_layers": 64,
    "image_size": 1024,
    # beyond these the step counts and batch shapes leave int64 and float (10**400 epochs cannot be
    # scheduled); a million epochs or a batch of 2**24 is already far past any run
    "glo_epochs": 1_000_000,
    "imle_epochs": 1_000_000,
    "batch_size": 1 << 24,
    "imle_batch_size": 1 << 24,
    "threads": MAX_THREADS,
    # IMLE draws multiple x (number of targets) noise vectors per epoch and matches each against the targets:
    # 1000 x 60000 targets is already 6e7 draws; beyond that only memory runs out (after GLO has trained)
    "imle_noise_multiple": 1000,
    # what a model file may ask for, so that every run writes a model file that loads
    "balance_draws": MAX_BALANCE_DRAWS,
}


def _finite(x: float, low: float, *, strict: bool = False) -> bool:
    return is_finite_number(x) and (x > low if strict else x >= low)


_RATE_RULE = f"in (0, {MAX_RATE:g}]"


def _rate_ok(rate: float) -> bool:
    return _finite(rate, 0, strict=True) and rate <= MAX_RATE


def _range_checks(c: TrainConfig) -> list[tuple[str, bool, str]]:
    """(field, whether its value is allowed, the rule in words) for every field with a range."""
    return [
        ("latent_dim", c.latent_dim >= 1, ">= 1"),
        ("noise_dim", c.noise_dim >= 1, ">= 1"),
        ("batch_size", c.batch_size >= 2, ">= 2"),
        ("imle_batch_size", c.imle_batch_size >= 2, ">= 2"),
        ("glo_epochs", c.glo_epochs >= 0, ">= 0"),
        ("imle_epochs", c.imle_epochs >= 0, ">= 0"),
        ("lr_g", _rate_ok(c.lr_g), _RATE_RULE),
        ("lr_z", _rate_ok(c.lr_z), _RATE_RULE),
        ("imle_lr", _rate_ok(c.imle_lr), _RATE_RULE),
        ("imle_weight_decay", _finite(c.imle_weight_decay, 0), "finite and >= 0"),
        ("imle_noise_multiple", _finite(c.imle_noise_multiple, 1), "finite and >= 1"),
        ("betas", all(0 <= b < 1 for b in c.betas), "each in [0, 1)"),
        ("imle_betas", all(0 <= b < 1 for b in c.imle_betas), "each in [0, 1)"),
        ("gen_width", c.gen_width >= 4, ">= 4"),
        ("gen_depth", c.gen_depth >= 0, ">= 0"),
        ("mapping_hidden", c.mapping_hidden >= 1, ">= 1"),
        ("mapping_layers", c.mapping_layers >= 1, ">= 1"),
        ("ckpt_every", c.ckpt_every >= 0, ">= 0 (0: at epoch ends only)"),
        ("sample_every", c.sample_every >= 0, ">= 0 (0: never)"),
        ("l2_weight", _finite(c.l2_weight, 0), "finite and >= 0"),
        ("vgg_weight", _finite(c.vgg_weight, 0), "finite and >= 0"),
        ("imle_precision_weight", _finite(c.imle_precision_weight, 0), "finite and >= 0"),
        (
            "imle_adaptive_shrink",
            _finite(c.imle_adaptive_shrink, 0) and c.imle_adaptive_shrink < 1,
            "in [0, 1)",
        ),
        ("imle_staleness", c.imle_staleness >= 0, ">= 0"),
        ("imle_force_rematch", c.imle_force_rematch >= 1, ">= 1"),
        ("imle_reject_radius", _finite(c.imle_reject_radius, 0), "finite and >= 0"),
        ("balance_draws", _finite(c.balance_draws, 0), "finite and >= 0"),
        ("balance_quantile", _finite(c.balance_quantile, 0) and c.balance_quantile <= 1, "in [0, 1]"),
        (
            "sample_noise_scale",
            _finite(c.sample_noise_scale, 0, strict=True) and c.sample_noise_scale <= MAX_NOISE_SCALE,
            f"in (0, {MAX_NOISE_SCALE:g}]",
        ),
        (
            "sample_spread",
            _finite(c.sample_spread, 0) and c.sample_spread <= MAX_SPREAD,
            f"in [0, {MAX_SPREAD:g}]",
        ),
        (
            "sample_local_spread",
            _finite(c.sample_local_spread, 0) and c.sample_local_spread <= MAX_SPREAD,
            f"in [0, {MAX_SPREAD:g}]",
        ),
        (
            "sample_local_neighbours",
            2 <= c.sample_local_neighbours <= MAX_LOCAL_NEIGHBOURS,
            f"in [2, {MAX_LOCAL_NEIGHBOURS}]",
        ),
        ("limit", c.limit is None or c.limit >= 2, ">= 2, or null for every image"),
        ("threads", c.threads is None or c.threads >= 1, ">= 1, or null for torch's default"),
        ("seed", 0 <= c.seed <= MAX_SEED, f"in [0, {MAX_SEED}]"),
    ]


def _shown(value: Any) -> str:
    """``repr(value)`` for an error message, cut short when long (an integer of 400 digits)."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


def _field_error(name: str, problem: str, *, message: str | None = None) -> ConfigError:
    """The :class:`ConfigError` of field ``name``: "config field NAME PROBLEM" (or ``message``), with its
    ``field`` and ``problem`` set, so that the ``glann`` command can name the field's flag instead."""
    return ConfigError(message or f"config field {name} {problem}", field=name, problem=problem)


def _check_type(name: str, value: Any, kind: str) -> None:
    """``kind``: "int", "float", "bool", "str", "betas", optionally followed by "?" (None allowed)."""
    if kind.endswith("?"):
        if value is None:
            return
        kind = kind[:-1]
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "betas": isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in value),
    }[kind]
    if not ok:
        expected = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                    "betas": "two numbers [beta1, beta2]"}[kind]  # fmt: skip
        got = "null" if value is None else f"{_shown(value)} ({type(value).__name__})"
        raise _field_error(name, f"must be {expected}, got {got}")


def check_device(spec: str, *, fused: bool = True) -> None:
    """Raise ConfigError unless ``spec`` names a device this machine has: ``cpu``, or ``cuda``/``cuda:N``
    with torch built for CUDA, a GPU N present, and (for the fused ops) glann_ext's CUDA kernels built. The
    error reads ``device 'cuda': ...`` with its field and problem set, so that the ``glann`` command names
    its flag instead (``--device 'cuda': ...``)."""
    import torch

    def refused(problem: str) -> ConfigError:  # named as an argument; a config names it as its field
        return _field_error("device", f"{spec!r}: {problem}", message=f"device {spec!r}: {problem}")

    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError) as exc:
        raise refused(f"not a device ({exc})") from None
    if dev.type == "cpu":
        if dev.index not in (None, 0):
            raise refused("the CPU device takes no index (use 'cpu')")
        return
    if dev.type != "cuda":
        raise refused(f"glann_ext trains on cpu or cuda, not {dev.type}")
    if not torch.cuda.is_available():
        why = "is a CPU-only build" if torch.version.cuda is None else "sees no GPU"
        raise refused(f"this torch ({torch.__version__}) {why}; use 'cpu'")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise refused(f"only {torch.cuda.device_count()} GPU(s) here")
    if fused:
        from glann_ext._info import cuda_available

        if not cuda_available():
            raise refused(
                "glann_ext was built without CUDA kernels; rebuild with nvcc present, or use the reference "
                "ops (ops 'reference')"
            )


PRESETS: dict[str, dict[str, Any]] = {
    # The main command: GLANN on Fashion-MNIST in about 2 minutes of `glann train` on a 2-core laptop CPU
    # (measured on a quiet 2-core AVX2 EPYC: 115 s with GLO 56 s, IMLE 46 s, start-up, grids and checkpoints;
    # 3.4-4.5 min on slow stretches of the shared machine): 15k images, a narrower generator at G's default
    # rate 2e-3 (the ablation's free win when it was twice the default, benchmarks/QUALITY.md), the rest of
    # the budget in IMLE epochs (cheap on codes) with the cosine-annealed rate, and T fed 16-D noise (a
    # quarter of the latent size: its samples sit nearer the codes; FD better on 3 of 3 seeds, recall level,
    # docs/studies.md). On the development evaluator (docs/studies.md, AMD EPYC, 2 threads): FD 41.6 against
    # 43.2 with 32-D noise and 46.7 for the previous 20 + 40 epochs at lr_g 1e-3, with 4/5 of its GLO work.
    # Against the 20k-image, 25 + 50 epoch run, with under half of its GLO work: better FD and recall (41.6 /
    # 0.26 against 44.8 / 0.24), lower precision and coverage (0.77 / 0.52 against 0.83 / 0.57). T steps on 64 codes
    # at a time (twice the steps of G's 128, 80 s of IMLE instead of 60): LeNet FD 6.5 against 7.9 over seeds
    # 0-2 (better on each), precision 0.82 against 0.80, coverage 0.82 against 0.80, recall 0.71 against 0.73;
    # 32 was no better here and slower (docs/training.md, "The IMLE stage's batch"). Sampled with T's noise
    # 1.5 wide, which such a T needs to reach its isolated codes again: LeNet FD 4.9 against 6.5 at 1, recall
    # 0.75 against 0.71 (better on every seed; coverage 0.83, precision 0.81), sampling only. T keeps the GLANN
    # code's Adam betas (0.5, 0.999): the default's (0.9, 0.9) tie here with whitened IMLE (LeNet FD 4.67 both
    # over seeds 0-2; precision 0.803 against 0.790, recall 0.750 against 0.765; 2026-12-04).
    "laptop": {
        "dataset": "fashion-mnist",
        "limit": 15000,
        "gen_width": 32,
        "glo_epochs": 16,
        "imle_epochs": 40,
        "imle_batch_size": 64,
        "noise_dim": 16,
        "mapping_hidden": 256,
        "imle_betas": (0.5, 0.999),
        "sample_noise_scale": 1.5,
        "threads": 2,
        "ckpt_every": 200,
    },
    # The laptop recipe on every Fashion-MNIST training image for about half an hour on 2 CPU cores:
    # 30 GLO + 60 IMLE epochs (measured end to end: GLO 20-24 s per quiet epoch, IMLE 17.3 s per epoch, the
    # search over 60k codes x 120k draws being most of it; 33 min of wall time on a machine shared with
    # benchmark runs; docs/studies.md). G at the default 2e-3 ties 1e-3 here with whitened IMLE: one GLO
    # stage per seed and rate in one process, LeNet FD 1.74 +- 0.23 against 2.11 +- 0.22; `glann train` +
    # `glann eval`, 1.87 +- 0.21 (1.02x the ceiling, recall 0.835) against 1.79 +- 0.11 (1.00x, 0.828), seeds
    # 0-2, 2026-12-04; before whitening the development evaluator had it behind (40.6 / 36.6);
    # 16-D noise for T did (FD 32.7 against 37.8 with the IMLE stage retrained on this preset's codes, recall
    # level; 29.2 with recall 0.36 for the whole preset run end to end). T keeps G's batch of 128, the recipe
    # measured (60k codes give it 468 steps an epoch; smaller batches are not measured at this size). With
    # whitened IMLE its samples at noise scale 1 / 1.25 / 1.5 / 2 score LeNet FD 3.59 / 2.32 / 1.99 / 2.70
    # (ceiling 1.86; 2026-12-04, seed 0; Euclidean IMLE at 1.5: 2.61), so it samples 1.5 wide as `laptop` does.
    # T keeps the GLANN code's Adam betas (0.5, 0.999), the recipe its figures were measured with: the default's
    # (0.9, 0.9) tie here (LeNet FD 1.98 +- 0.26 against 2.11 +- 0.22 over seeds 0-2, better on two, worse on
    # seed 0: 2.48 against 1.94; recall 0.825 against 0.824), at T's batch of 128 on 16-D noise (2026-12-04).
    "laptop-30min": {
        "dataset": "fashion-mnist",
        "gen_width": 32,
        "glo_epochs": 30,
        "imle_epochs": 60,
        "imle_batch_size": 128,
        "sample_noise_scale": 1.5,
        "noise_dim": 16,
        "mapping_hidden": 256,
        "imle_betas": (0.5, 0.999),
        "threads": 2,
        "ckpt_every": 500,
    },
    # Seconds-long smoke run for tests and CI.
    "tiny": {
        "limit": 256,
        "gen_width": 8,
        "latent_dim": 16,
        "noise_dim": 8,
        "batch_size": 32,
        "glo_epochs": 2,
        "imle_epochs": 2,
        "mapping_hidden": 32,
        "ckpt_every": 0,
    },
    # The reference schedule on a GPU (the GLANN code's Fashion-MNIST setup: all 60k images, latent 64,
    # noise 32, width 64, 200 GLO epochs), with our 50 IMLE epochs on the codes; fails on a machine without CUDA.
    # The GLANN code's IMLE batch (128) and Adam betas for T (0.5, 0.999) too: its steps per epoch are what this
    # schedule was set for; and the papers' sampling noise, N(0, I). G at 1e-3, the rate this schedule was set
    # with: the default 2e-3 was measured at CPU budgets only.
    "paper": {
        "dataset": "fashion-mnist",
        "device": "cuda",
        "glo_epochs": 200,
        "imle_epochs": 50,
        "imle_batch_size": 128,
        "imle_betas": (0.5, 0.999),
        "sample_noise_scale": 1.0,
        "lr_g": 1e-3,
    },
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """The named preset with ``overrides`` applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return TrainConfig.from_dict({**PRESETS[name], **overrides})

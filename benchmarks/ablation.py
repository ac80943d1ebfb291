"""Part (d) of the quality report: what each GLANN change does, one at a time, on Fashion-MNIST.

Every row trains GLANN at the budget of part (c) with the ablation seeds, changing one thing against the
base recipe (the package's TrainConfig defaults; the presets adopt what wins here); FD, FD / ceiling (the same run's
G(codes) of training images), precision/recall (k=3) and coverage (k=5) in the LeNet's features against
held-out test images, mean ± standard error over seeds.
"""

from __future__ import annotations

import dataclasses

import torch

from benchmarks.glo_stages import GLOStages, glo_key
from glann_ext.metrics import aggregate_seeds, frechet_distance, prdc
from glann_ext.train import TrainConfig
from glann_ext.train.config import _CHOICES

# What each row changes against the base recipe (the package's TrainConfig defaults at the ablation budget);
# a recipe field's row sets the value that is *not* its default, so the table stays right when a default
# changes. "<field>_factor" scales the base recipe's value of that field (width, epochs of a stage).
CHANGES: list[dict] = [
    {"glo_lr_schedule": None},
    {"imle_lr_schedule": None},
    # IMLE on the raw codes, as the papers do (the default matches and regresses in whitened coordinates)
    {"imle_whiten": False},
    {"latent_adam_steps": None},
    {"lap_weights": None},
    # T's Adam with G's long memory, as the GLANN code shares (0.5, 0.999) between both stages (the default's
    # (0.9, 0.9) is what the 2-D mixtures train with too)
    {"imle_betas": (0.5, 0.999)},
    {"imle_adaptive": True},
    # 0.45: the 10% quantile of the draws' nearest-code distances at the quick budget (1%: 0.36, median 0.60;
    # a code's nearest other code: 0.50); 0.2 rejected nothing.
    {"imle_reject_radius": 0.45},
    {"imle_noise_multiple": 10.0},
    # T's steps on G's batch, as the GLANN code does (a quarter of the steps of the default's 32 per epoch)
    {"imle_batch_size": 128},
    # sampling without balanced sampling (the model and its training unchanged; the local spread stays on)
    {"balance_draws": 0.0},
    # T's samples decoded where they are, as the papers do (the default moves each along its nearest codes'
    # directions: docs/training.md, "The local spread")
    {"sample_local_spread": 0.0},
    # T's noise as wide as in training, the papers' sampling (the default samples 1.5 wide; the balanced
    # sampler calibrates at the same scale), then a long IMLE stage (8x the epochs, T twice as wide) at scale
    # 1 and at the default: a T trained that long draws in the isolated codes, which the wider noise reaches
    # again (docs/training.md, "The default noise scale")
    {"sample_noise_scale": 1.0},
    {"imle_epochs_factor": 8, "mapping_hidden_factor": 2, "sample_noise_scale": 1.0},
    {"imle_epochs_factor": 8, "mapping_hidden_factor": 2},
    {"gen_width_factor": 2},
    {"gen_depth": 1},
    {"batch_size": 64},
    {"glo_epochs_factor": 2},
    {"imle_epochs_factor": 2},
    # the rates: G's and the codes' (the reference halves its rates every 20 epochs, which a 10-epoch
    # budget never reaches; the cosine row above is the schedule that does act here)
    {"lr_g_factor": 2},
    {"lr_g_factor": 0.5},
    {"lr_z_factor": 2},
    {"lr_z_factor": 0.5},
]
BASE = "base recipe (package defaults)"


def _resolved(change: dict) -> dict:
    """``change`` with each None replaced by the other choice of that field (two-choice fields only)."""
    defaults = TrainConfig()
    out = {}
    for field, value in change.items():
        if value is None:
            (value,) = [c for c in _CHOICES[field] if c != getattr(defaults, field)]
        out[field] = value
    return out


def _scaled_field(key: str) -> str | None:
    """The field a "<field>_factor" change key scales, or None for a plain field."""
    return key.removesuffix("_factor") if key.endswith("_factor") else None


def rows(b=None) -> list[tuple[str, dict]]:
    """(label, change) for the base recipe and every :data:`CHANGES` entry; for a budget ``b`` without
    ``ablation_glo_rows``, only the rows that keep the base recipe's GLO stage (they reuse it: IMLE options and
    T's architecture)."""
    out = [(BASE, {})]
    for change in map(_resolved, CHANGES):
        label = ", ".join(
            f"{field} x {v}" if (field := _scaled_field(k)) else f"{k} = {v}" for k, v in change.items()
        )
        out.append((label, change))
    if b is not None and not b.ablation_glo_rows:
        base_key = glo_key(base_config(b, 0))
        out = [(label, change) for label, change in out if glo_key(_config(b, 0, change)) == base_key]
    return out


def base_config(b, seed: int) -> TrainConfig:
    """The base recipe at the report's ablation budget."""
    return TrainConfig(
        latent_dim=b.latent, gen_width=b.width, glo_epochs=b.epochs, imle_epochs=b.imle_latent_epochs,
        mapping_hidden=256, ckpt_every=0, sample_every=0, seed=seed,
    )  # fmt: skip


def _config(b, seed: int, change: dict) -> TrainConfig:
    cfg = base_config(b, seed)
    fields = {}
    for k, v in change.items():
        field = _scaled_field(k)
        fields[field or k] = getattr(cfg, field) * v if field else v
    return dataclasses.replace(cfg, **fields).validate()


def _scores(clf, real_f: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
    f = clf.features(x)
    p = prdc(real_f, f)
    return {"fd": frechet_distance(real_f, f), "precision": p.precision, "recall": p.recall,
            "coverage": p.coverage}  # fmt: skip


def run_ablation(
    train_x: torch.Tensor, test_x: torch.Tensor, clf, b, log, stages: GLOStages | None = None, data: str = ""
) -> dict:
    """Every row of :func:`rows` for every seed of ``b.ablation_seeds`` on the ``b.fmnist_train`` images of
    part (c), with its epochs: the base row is (c)'s GLANN recipe. Rows that change only IMLE options share
    their GLO stage through ``stages`` (under ``data``: pass part (c)'s to reuse its stages too)."""
    stages = stages or GLOStages()
    n_eval = min(b.fmnist_eval, len(test_x))
    real_f = clf.features(test_x[:n_eval])
    x = train_x[: b.fmnist_train]
    table = {}
    for label, change in rows(b):
        per_seed = []
        for seed in b.ablation_seeds:
            model, times = stages.fit(data, x, _config(b, seed, change))
            samples = torch.cat([model.sample(min(4096, n_eval - i), seed=seed * 1000 + i // 4096)
                                 for i in range(0, n_eval, 4096)])  # fmt: skip
            k = min(n_eval, len(x))
            ceiling = torch.cat(
                [model.reconstruct(torch.arange(i, min(i + 1000, k))) for i in range(0, k, 1000)]
            )
            s, c = _scores(clf, real_f, samples), _scores(clf, real_f, ceiling)
            per_seed.append({**s, "fd_over_ceiling": s["fd"] / c["fd"], "ceiling_fd": c["fd"],
                             "seconds": times["glo"] + times["imle"]})  # fmt: skip
        table[label] = aggregate_seeds(per_seed)
        log(
            f"ablation {label}: FD {table[label]['fd'][0]:.2f}, x{table[label]['fd_over_ceiling'][0]:.2f} ceiling"
        )
    return {"rows": table, "n_train": len(x), "n_eval": n_eval}


def _describe(cfg: TrainConfig) -> str:
    return (
        f"GLO rates {cfg.glo_lr_schedule}, IMLE rate {cfg.imle_lr_schedule}, code Adam steps "
        f"{cfg.latent_adam_steps}, Laplacian weights {cfg.lap_weights}, IMLE M = {cfg.imle_noise_multiple:g} N "
        f"nearest-neighbour matching, T's Adam betas {cfg.imle_betas}, G depth {cfg.gen_depth}, batch {cfg.batch_size}, rates lr_g {cfg.lr_g:g}, "
        f"lr_z {cfg.lr_z:g}, IMLE {cfg.imle_lr:g}, T {cfg.mapping_hidden} wide, T's batch {cfg.imle_batch_size}; balanced sampling with "
        f"{cfg.balance_draws:g} draws per code, quantile {cfg.balance_quantile:g}, noise scale {cfg.sample_noise_scale:g}, local spread "
        f"{cfg.sample_local_spread:g} over {cfg.sample_local_neighbours} codes"
    )


def markdown(res: dict, b, pm) -> list[str]:
    """The part's section of QUALITY.md (``pm`` formats a (mean, sem) pair)."""
    base = base_config(b, 0)
    subset = (
        ""
        if b.ablation_glo_rows
        else " This variant runs only the rows that reuse the base recipe's GLO stage (IMLE options); the full "
        "report also has the rows that change G, the codes or the rates."
    )
    L = [
        "## (d) Ablations: what each change does",
        "",
        (
            f"GLANN on the first {res['n_train']} Fashion-MNIST training images, {b.epochs} GLO + "
            f"{b.imle_latent_epochs} IMLE epochs (the budget of (c)), latent {base.latent_dim}, width {base.gen_width}. The first "
            f"row is the base recipe: the package's defaults ({_describe(base)}); every other row changes the "
            "one thing it names (a row that changes only sampling, the noise scale or balanced sampling, samples "
            f"the networks its recipe trained, and its train s is that training's). Scores as in (c) against {res['n_eval']} test images; ceiling: the same run's "
            f"G(codes) of the training images; FD / ceiling per seed; mean ± standard error over seeds "
            + ", ".join(map(str, b.ablation_seeds))
            + "."
            + subset
        ),
        "",
        "| change | FD ↓ | FD / ceiling ↓ | ceiling FD ↓ | precision ↑ | recall ↑ | coverage ↑ | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, m in res["rows"].items():
        L.append(
            f"| {label} | {pm(m['fd'])} | {pm(m['fd_over_ceiling'])} | {pm(m['ceiling_fd'])} | "
            f"{pm(m['precision'], '{:.3f}')} | {pm(m['recall'], '{:.3f}')} | {pm(m['coverage'], '{:.3f}')} | "
            f"{pm(m['seconds'], '{:.1f}')} |"
        )
    L.append("")
    return L

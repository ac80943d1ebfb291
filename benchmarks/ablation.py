"""Part (d) of the quality report: what each GLANN change does, one at a time, on Fashion-MNIST.

Every row trains GLANN with the report's ablation budget and seeds, changing one thing against the base
recipe (the package's default image recipe, the one the presets use); FD, FD / ceiling (the same run's
G(codes) of training images), precision/recall (k=3) and coverage (k=5) in the LeNet's features against
held-out test images, mean ± standard error over seeds.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from glann_ext.metrics import aggregate_seeds, frechet_distance, prdc
from glann_ext.train import TrainConfig, fit

# (row, what changes against the base recipe); the first row is the base recipe itself.
ROWS: list[tuple[str, dict]] = [
    ("base recipe", {}),
    (
        "paper GLANN: constant rates, plain IMLE",
        {"glo_lr_schedule": "constant", "imle_lr_schedule": "constant"},
    ),
    ("GLO: constant rates", {"glo_lr_schedule": "constant"}),
    ("IMLE: constant rate", {"imle_lr_schedule": "constant"}),
    ("IMLE: adaptive IMLE", {"imle_adaptive": True}),
    ("IMLE: RS-IMLE (reject radius 0.2)", {"imle_reject_radius": 0.2}),
    ("IMLE: 10x candidates", {"imle_noise_multiple": 10.0}),
    ("G: width x2", {"gen_width_factor": 2}),
    ("G: one more conv layer per resolution", {"gen_depth": 1}),
]


def base_config(b, seed: int) -> TrainConfig:
    """The base recipe at the report's ablation budget."""
    return TrainConfig(
        latent_dim=b.latent, gen_width=b.width, glo_epochs=b.epochs, imle_epochs=b.imle_latent_epochs,
        mapping_hidden=256, ckpt_every=0, sample_every=0, seed=seed, glo_lr_schedule="cosine",
        imle_lr_schedule="cosine",
    )  # fmt: skip


def _config(b, seed: int, change: dict) -> TrainConfig:
    change = dict(change)
    factor = change.pop("gen_width_factor", 1)
    cfg = base_config(b, seed)
    return dataclasses.replace(cfg, gen_width=cfg.gen_width * factor, **change).validate()


def _scores(clf, real_f: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
    f = clf.features(x)
    p = prdc(real_f, f)
    return {"fd": frechet_distance(real_f, f), "precision": p.precision, "recall": p.recall,
            "coverage": p.coverage}  # fmt: skip


def run_ablation(train_x: torch.Tensor, test_x: torch.Tensor, clf, b, log) -> dict:
    """Every row of :data:`ROWS` for every seed of ``b.img_seeds`` on ``b.fmnist_train`` images."""
    n_eval = min(b.fmnist_eval, len(test_x))
    real_f = clf.features(test_x[:n_eval])
    x = train_x[: b.fmnist_train]
    rows = {}
    for label, change in ROWS:
        per_seed = []
        for seed in b.img_seeds:
            t0 = time.perf_counter()
            model = fit(x, _config(b, seed, change))
            seconds = time.perf_counter() - t0
            samples = torch.cat([model.sample(min(4096, n_eval - i), seed=seed * 1000 + i // 4096)
                                 for i in range(0, n_eval, 4096)])  # fmt: skip
            k = min(n_eval, len(x))
            ceiling = torch.cat(
                [model.reconstruct(torch.arange(i, min(i + 1000, k))) for i in range(0, k, 1000)]
            )
            s, c = _scores(clf, real_f, samples), _scores(clf, real_f, ceiling)
            per_seed.append({**s, "fd_over_ceiling": s["fd"] / c["fd"], "ceiling_fd": c["fd"],
                             "seconds": seconds})  # fmt: skip
        rows[label] = aggregate_seeds(per_seed)
        log(
            f"ablation {label}: FD {rows[label]['fd'][0]:.2f}, x{rows[label]['fd_over_ceiling'][0]:.2f} ceiling"
        )
    return {"rows": rows, "n_train": len(x), "n_eval": n_eval}


def markdown(res: dict, b, pm) -> list[str]:
    """The part's section of QUALITY.md (``pm`` formats a (mean, sem) pair)."""
    base = base_config(b, 0)
    L = [
        "## (d) Ablations: what each change does",
        "",
        (
            f"GLANN on the first {res['n_train']} Fashion-MNIST training images, {b.epochs} GLO + "
            f"{b.imle_latent_epochs} IMLE epochs, latent {base.latent_dim}, width {base.gen_width}, one change per "
            f"row against the base recipe (first row: cosine-annealed rates for both stages, plain IMLE with "
            f"M = 2N, the paper's generator); scores as in (c) against {res['n_eval']} test images; ceiling: "
            f"the same run's G(codes) of the training images; mean ± standard error over seeds "
            + ", ".join(map(str, b.img_seeds))
            + "."
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

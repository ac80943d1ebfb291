"""Where GLANN's samples lose against the reconstruction ceiling: decode chosen latent points and score them.

    python -m benchmarks.latent_gap                       # seeds 0 1 2, about 3 min a seed on one busy core
    python -m benchmarks.latent_gap --seeds 0 --out /tmp/gap.md
    python -m benchmarks.latent_gap --smoke               # seconds (tests/test_latent_gap.py)

Per seed, GLANN trains at the budget of part (c) of the quality report (benchmarks/quality.py: Fashion-MNIST,
3,000 images, 10 GLO + 30 IMLE epochs, latent 32). Its G then decodes sets of latent points (all on the unit
sphere, as G was trained): the codes themselves (the ceiling), each code moved halfway towards its nearest
other code (does G decode between neighbouring codes?), codes drawn uniformly with replacement, the nearest
code of each of T's samples (T's mass over the codes, without its distance to them), T's samples (GLANN),
midpoints of two codes drawn at random, GLO + Gaussian, the codes of held-out test images (other than
those scored against) fitted with G fixed (``GLANN.invert``): what a second stage that generalises perfectly
would hand G, and a kernel density estimate of the codes at three bandwidths (a code drawn uniformly plus
isotropic Gaussian noise, then projected: the simplest sampler that stays as near the codes as it is told).
Each set is scored like part (c) (FD, precision, recall, coverage in the LeNet's features against held-out
test images) with the memorisation check's copy ratio (median distance of the images to
their nearest training image over the same for test images) and its median distance to the nearest training
code, and T's use of the codes is summarised (docs/studies.md, "Where the gap to the ceiling is").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks.ablation import base_config
from benchmarks.quality import BUDGETS, Budget, fashion_classifier
from glann_ext import nn_argmin
from glann_ext.data.labelled import load_labelled
from glann_ext.evaluate import DEFAULT_CACHE_DIR
from glann_ext.metrics import code_usage, frechet_distance, nearest_other_code, nearest_train, prdc
from glann_ext.train import fit

ROWS = (
    "the codes themselves: the ceiling",
    "halfway from each code to its nearest other code",
    "codes drawn uniformly (with replacement)",
    "the nearest code of each of T's samples",
    "GLANN's samples, T(e)",
    "midpoints of two codes drawn at random",
    "GLO + Gaussian (sample_gaussian)",
    "codes of unseen test images (inverted, G fixed)",
    "GLANN's balanced samples (the package's sampling)",
)
# the kernel density rows: noise of about this norm (per coordinate, this many times the codes' standard
# deviation; the codes' own spacing is about 0.5 at this budget), from nearly copies to past GLANN's distance
KDE_BANDWIDTHS = (0.5, 0.7, 1.0)
ROWS += tuple(f"codes plus noise of norm {h:g} (a kernel density estimate)" for h in KDE_BANDWIDTHS)
SCORES = ("fd", "precision", "recall", "coverage", "copy_ratio", "code_distance")
# GLANN.invert's budget for the unseen images' codes: one start (the training code whose reconstruction is
# nearest) and 200 Adam steps; the training images inverted this way score FD 18 where their own codes score
# 21 (seed 0), so the fit is not what limits that row
INVERT_STEPS, INVERT_RESTARTS = 200, 1


def jittered_codes(
    codes: torch.Tensor, n: int, bandwidth: float, generator: torch.Generator, project
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` draws of a kernel density estimate of ``codes`` (N, D) on the sphere, and the index of the code
    each came from: a code drawn uniformly plus N(0, s^2 I), ``s = bandwidth`` times the codes' standard
    deviation per coordinate (so the noise's norm is about ``bandwidth`` for codes spread over the sphere),
    then ``project``-ed back onto it."""
    codes = codes.float()
    std = float(codes.double().var(0).mean().sqrt())
    source = torch.randint(len(codes), (n,), generator=generator)
    noise = torch.randn(n, codes.shape[1], generator=generator)
    return project((codes[source] + bandwidth * std * noise).contiguous()), source


def latent_points(model, n: int, seed: int) -> dict[str, torch.Tensor]:
    """The latent point sets of :data:`ROWS` (all but GLO + Gaussian, the unseen codes and the balanced
    samples), ``n`` points each, on the sphere."""
    codes = model.codes.float()
    g = torch.Generator().manual_seed(seed)
    first = codes[: min(n, len(codes))]
    other, _ = nearest_other_code(codes)
    samples = model.map_noise(model.noise(n, seed=seed))
    nearest = nn_argmin(samples.contiguous(), codes.contiguous())
    a = torch.randint(len(codes), (n,), generator=g)
    b = torch.randint(len(codes), (n,), generator=g)
    project = model.ops.project
    points = {
        ROWS[0]: first,
        ROWS[1]: project((0.5 * (first + codes[other[: len(first)]])).contiguous()),
        ROWS[2]: codes[torch.randint(len(codes), (n,), generator=g)],
        ROWS[3]: codes[nearest],
        ROWS[4]: samples,
        ROWS[5]: project((0.5 * (codes[a] + codes[b])).contiguous()),
    }
    for row, h in zip(ROWS[9:], KDE_BANDWIDTHS):
        points[row] = jittered_codes(codes, n, h, g, project)[0]
    return points


def run_seed(
    b: Budget,
    seed: int,
    clf,
    train: torch.Tensor,
    real: torch.Tensor,
    test_median: float,
    unseen: torch.Tensor,
) -> dict:
    """Scores of every row of :data:`ROWS` and T's code usage, for one GLANN run (``real``: the test images'
    features; ``test_median``: their median distance to the nearest training image; ``unseen``: other test
    images, whose codes the last row decodes)."""
    model = fit(train, base_config(b, seed)).eval()
    n = b.fmnist_eval
    points = latent_points(model, n, seed)
    points[ROWS[6]] = model.gaussian_codes(n, seed=seed)  # what sample_gaussian decodes
    points[ROWS[8]] = model.sample_inputs(n, seed=seed, balanced=True)  # what model.sample decodes
    points[ROWS[7]], _ = model.invert(unseen, steps=INVERT_STEPS, restarts=INVERT_RESTARTS, seed=seed)
    images = {name: model.decode(z) for name, z in points.items()}
    scores = {}
    for name, x in images.items():
        f = clf.features(x)
        p = prdc(real, f)
        copy = float(nearest_train(x, train)[1].median()) / test_median
        scores[name] = {
            "fd": frechet_distance(real, f), "precision": p.precision, "recall": p.recall,
            "coverage": p.coverage, "copy_ratio": copy,
            "code_distance": code_usage(points[name], model.codes, seed=seed).sample_code_median,
        }  # fmt: skip
    usage = code_usage(
        model.map_noise(model.noise(10 * len(model.codes), seed=seed + 1)), model.codes, seed=seed
    )
    return {"scores": scores, "usage": usage}


def run(b: Budget, seeds: tuple[int, ...], cache_dir: Path) -> dict:
    """Every seed's results (:func:`run_seed`), in seed order."""
    clf = fashion_classifier(b, cache_dir)
    train, _ = load_labelled("fashion-mnist", "train", limit=b.fmnist_train)
    test, _ = load_labelled("fashion-mnist", "test", limit=2 * b.fmnist_eval)
    test, unseen = test[: b.fmnist_eval], test[b.fmnist_eval :]
    # what every row is measured against, the same for every seed: computed once
    real = clf.features(test)
    test_median = float(nearest_train(test, train)[1].median())
    per_seed = [run_seed(b, s, clf, train, real, test_median, unseen) for s in seeds]
    return {"seeds": seeds, "per_seed": per_seed}


def markdown(res: dict) -> str:
    """The decomposition table (per-seed values, separated by " / ") and the code-usage line."""

    def seeds(values: list[float], fmt: str) -> str:
        return " / ".join(fmt.format(v) for v in values)

    L = [
        f"Seeds {', '.join(map(str, res['seeds']))} (values per seed).",
        "",
        "| decoded points | FD | precision | recall | coverage | copy ratio | distance to the nearest code |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        cells = [
            seeds([r["scores"][row][k] for r in res["per_seed"]], "{:.1f}" if k == "fd" else "{:.2f}")
            for k in SCORES
        ]
        L.append(f"| {row} | " + " | ".join(cells) + " |")
    u = {k: [getattr(r["usage"], k) for r in res["per_seed"]] for k in vars(res["per_seed"][0]["usage"])}
    usage = (
        f"T's samples ({u['n_samples'][0]}): nearest to {seeds([100 * v for v in u['codes_hit']], '{:.0f}')}% of the "
        f"codes ({seeds([100 * v for v in u['codes_hit_even']], '{:.0f}')}% for uniform draws; the most isolated "
        f"tenth of the codes: {seeds(u['isolated_share'], '{:.2f}')}x the others' samples), KL of that histogram "
        f"from uniform {seeds(u['kl_over_codes'], '{:.2f}')} ({seeds(u['kl_over_codes_even'], '{:.2f}')} for "
        f"uniform draws), busiest code {seeds(u['busiest_code'], '{:.0f}')} samples; distance to the nearest "
        f"code: median {seeds(u['sample_code_median'], '{:.2f}')}, 10% quantile "
        f"{seeds(u['sample_code_q10'], '{:.2f}')}; the codes' median distance to their nearest other code "
        f"{seeds(u['code_spacing'], '{:.2f}')}."
    )
    L += ["", usage, ""]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--smoke", action="store_true", help="tiny budget (seconds), for the tests")
    p.add_argument("--out", type=Path, help="write the markdown table here (else print it)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    args = p.parse_args(argv)
    res = run(BUDGETS["smoke" if args.smoke else "quick"], tuple(args.seeds), args.cache_dir)
    text = markdown(res)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return res


if __name__ == "__main__":
    main(sys.argv[1:])

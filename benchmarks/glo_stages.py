"""Finished GLO stages shared between rows of the quality report that differ only in IMLE options.

The ablation's IMLE rows (schedule, Adaptive IMLE, RS-IMLE, more draws, more IMLE epochs) and its base row
(the GLANN recipe of the Fashion-MNIST table) all start from the same GLO stage: same images, seed and GLO
fields. The stage is deterministic given those, so it is trained once per (data, seed) and every row runs
its own IMLE stage on a copy of the finished stage. Scores are those of separate runs (``tests/test_quality.py``
checks the networks bit for bit); a row's time is the shared GLO stage's time plus its own IMLE time, what
the recipe costs on its own.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time

import torch

from glann_ext.models import GLANN
from glann_ext.train import Hook, TrainConfig, get_ops
from glann_ext.train.config import SAMPLING_FIELDS
from glann_ext.train.pipeline import Fit


def glo_key(cfg: TrainConfig) -> str:
    """What the GLO stage (and T's initialisation) depends on: ``cfg`` with every IMLE-stage and sampling
    option reset to its default (``imle_space`` kept: pixel IMLE has no GLO stage)."""
    defaults = TrainConfig()
    reset = {
        f.name: getattr(defaults, f.name)
        for f in dataclasses.fields(TrainConfig)
        if (f.name.startswith("imle_") and f.name != "imle_space") or f.name in SAMPLING_FIELDS
    }
    return json.dumps(dataclasses.replace(cfg, **reset).to_dict(), sort_keys=True, default=str)


class GLOStages:
    """GLANN fits that train each distinct GLO stage once (see the module docstring)."""

    def __init__(self) -> None:
        self._done: dict[tuple[str, str], tuple[Fit, float]] = {}  # finished GLO stage, its seconds

    def fit(
        self, data: str, images: torch.Tensor, cfg: TrainConfig, hooks: tuple[Hook, ...] = ()
    ) -> tuple[GLANN, dict[str, float]]:
        """GLANN of ``cfg`` on ``images`` (named ``data`` for the cache) and its stage times {"glo", "imle"}
        in seconds; ``hooks`` see only the stages run by this call."""
        if cfg.imle_space != "latent":
            raise ValueError(f"GLOStages fits GLANN (imle_space 'latent'), got {cfg.imle_space!r}")
        key = (data, glo_key(cfg))
        if key not in self._done:
            t0 = time.perf_counter()
            stage = Fit(images, cfg, ops=get_ops("fused"))
            stage.run("glo", hooks)
            self._done[key] = (stage, time.perf_counter() - t0)
        stage, glo_seconds = self._done[key]
        t0 = time.perf_counter()
        run = copy.deepcopy(stage)
        # Same GLO fields (the key), so only the IMLE stage, which Fit builds from its config when the stage
        # starts, sees what differs. A copy rather than a new Fit resumed from the state: that would redo the
        # code initialisation (a PCA, seconds on stacked images) and bill it to the IMLE stage.
        run.cfg = cfg
        model = run.run("all", hooks)
        return model, {"glo": glo_seconds, "imle": time.perf_counter() - t0}

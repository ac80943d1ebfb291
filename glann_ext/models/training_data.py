"""The record a model keeps of the images it trained on in memory, so that evaluating it later cannot
compare its samples with other images.

A run folder knows its data (its checkpoint holds the dataset's fingerprint, taken from the files); a model
trained in memory (:func:`glann_ext.train.fit`, or a :class:`~glann_ext.train.Fit` of one process) on tensors
does not: its config still names the preset's dataset and limit. Such a model therefore carries
:func:`images_digest` of its float32 images (saved in the model file's description as ``training_data``), and
``glann eval`` refuses a model whose record differs from the images its config names, instead of scoring it
against them. (A digest of converted floats can differ between CPUs where a conversion rounds otherwise, so
run folders keep their files' fingerprint instead.)
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import torch

_SHA256 = re.compile(r"[0-9a-f]{64}")


def images_digest(images: torch.Tensor) -> dict[str, Any]:
    """``{"shape": [n, C, H, W], "sha256": hex}`` of ``images`` as contiguous float32 on the CPU: equal for
    equal images, whatever device or layout they were given in."""
    x = images.detach().to("cpu", torch.float32).contiguous()
    return {"shape": list(x.shape), "sha256": hashlib.sha256(x.numpy()).hexdigest()}


def checked_record(value: Any) -> dict[str, Any] | None:
    """A model file's ``training_data`` (untrusted): None, or a record as :func:`images_digest` makes; any
    other value raises ValueError naming what is wrong."""
    if value is None:
        return None
    ok = (
        isinstance(value, dict)
        and set(value) == {"shape", "sha256"}
        and isinstance(value["shape"], list)
        and len(value["shape"]) == 4
        and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**62 for s in value["shape"])
        and isinstance(value["sha256"], str)
        and _SHA256.fullmatch(value["sha256"]) is not None
    )
    if not ok:
        raise ValueError(
            f"training_data must be null or {{'shape': [n, C, H, W], 'sha256': 64 hex digits}}, got {value!r:.80}"
        )
    return {"shape": list(value["shape"]), "sha256": value["sha256"]}

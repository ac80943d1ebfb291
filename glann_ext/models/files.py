"""Model files: one ``.safetensors`` file holding the weights and, in its header, the model's JSON
description (kind, architecture, training config).

Loading never runs code from the file: safetensors holds raw tensors, the description is plain JSON, and
the architecture is rebuilt from it by :func:`~glann_ext.models.generative.model_from_export`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from glann_ext._io import atomic_write, open_regular
from glann_ext.errors import CheckpointError

from .generative import GenerativeModel, model_from_export

META_KEY = "glann_ext"  # the safetensors header entry that holds the JSON description


def save_model(model: GenerativeModel, path: str | Path) -> Path:
    """Write ``model`` to ``path`` (atomically: a kill leaves the old file or the new one)."""
    from safetensors.torch import save

    tensors, meta = model.export()
    data = save(tensors, metadata={META_KEY: json.dumps(meta)})
    return atomic_write(path, lambda f: f.write(data))


def read_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, meta)`` of a model file written by :func:`save_model`."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    path = Path(path)
    try:
        with open_regular(path):  # safe_open maps the file by its name; a FIFO there would block it for ever
            pass
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: not a readable model file ({exc})") from exc
    if META_KEY not in header:
        raise CheckpointError(f"{path}: a safetensors file without a glann_ext model description")
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt model description ({exc})") from exc
    return tensors, meta


def load_model_file(
    path: str | Path, *, ops: str | None = None, device: str | torch.device = "cpu"
) -> GenerativeModel:
    """The model stored in ``path`` (see :func:`save_model`) on ``device``; ``ops`` overrides its backend."""
    tensors, meta = read_model_file(path)
    try:
        return model_from_export(tensors, meta, ops=ops, device=device)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # wrong keys, shapes or description
        raise CheckpointError(f"{path}: the model file does not describe a usable model ({exc})") from exc

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

from .custom_generator import GeneratorError
from .generative import GenerativeModel, model_from_export

META_KEY = "glann_ext"  # the safetensors header entry that holds the JSON description


def save_model(model: GenerativeModel, path: str | Path) -> Path:
    """Write ``model`` to ``path`` (atomically: a kill leaves the old file or the new one)."""
    from safetensors.torch import save

    tensors, meta = model.export()
    data = save(tensors, metadata={META_KEY: json.dumps(meta)})
    return atomic_write(path, lambda f: f.write(data))


def read_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, meta)`` of a model file written by :func:`save_model`.

    The bytes come from the one file checked to be regular (:func:`~glann_ext._io.open_regular`): opening
    the path a second time (``safe_open`` maps a file by its name) would read whatever lies there by then, a
    FIFO that blocks for ever or another file."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    try:
        with open_regular(path) as f:
            data = f.read()
        tensors = load(data)  # validates the header and every tensor's extent before building any
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: not a readable model file ({exc})") from exc
    header = _metadata(data)
    if META_KEY not in header:
        raise CheckpointError(f"{path}: a safetensors file without a glann_ext model description")
    try:
        meta = json.loads(header[META_KEY])
    except (json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested too deep to parse
        raise CheckpointError(f"{path}: corrupt model description ({type(exc).__name__}: {exc})") from None
    return tensors, meta


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes that :func:`safetensors.torch.load` has accepted: the format
    is an 8-byte little-endian header length, then the header's JSON."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]).get("__metadata__") or {}


def load_model_file(
    path: str | Path, *, ops: str | None = None, device: str | torch.device = "cpu",
    generator: torch.nn.Module | None = None,
) -> GenerativeModel:  # fmt: skip
    """The model stored in ``path`` (see :func:`save_model`) on ``device``; ``ops`` overrides its backend;
    ``generator``: the module to load G's weights into (see :func:`model_from_export`)."""
    tensors, meta = read_model_file(path)
    try:
        return model_from_export(tensors, meta, ops=ops, device=device, generator=generator)
    except GeneratorError as exc:  # the caller's part (a custom generator's file loaded without one)
        raise GeneratorError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # wrong keys, shapes or description
        raise CheckpointError(f"{path}: the model file does not describe a usable model ({exc})") from exc

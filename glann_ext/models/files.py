"""Model files: one ``.safetensors`` file holding the weights and, in its header, the model's JSON
description (kind, architecture, training config).

Loading never runs code from the file: safetensors holds raw tensors, the description is plain JSON, and
the architecture is rebuilt from it by :func:`~glann_ext.models.generative.model_from_export`.
"""

from __future__ import annotations

import json
import os
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
    FIFO that blocks for ever or another file. The header is read and checked first: the file is read whole
    only when it holds exactly the bytes its header describes (a sparse 12 GB file of zeros was read whole
    before safetensors looked at its first 8 bytes)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    try:
        with open_regular(path) as f:
            header = _checked_header(path, f)
            f.seek(0)
            data = f.read()
        tensors = load(data)  # validates the header and every tensor's extent before building any
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: not a readable model file ({exc})") from exc
    except MemoryError:
        raise CheckpointError(f"{path}: not enough memory to read this model file") from None
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or META_KEY not in metadata:
        raise CheckpointError(f"{path}: a safetensors file without a glann_ext model description")
    try:
        meta = json.loads(metadata[META_KEY])
    except (ValueError, RecursionError) as exc:  # too deep, or an integer of more than 4,300 digits
        raise CheckpointError(f"{path}: corrupt model description ({type(exc).__name__}: {exc})") from None
    return tensors, meta


MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on its JSON header


def _data_end(entry: object) -> object:
    """Where a header entry's tensor data ends (its ``data_offsets``' second value), None if malformed."""
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    return offsets[1] if isinstance(offsets, list) and len(offsets) == 2 else None


def _checked_header(path: Path, f: Any) -> dict[str, Any]:
    """The JSON header of the safetensors file open as ``f`` (an 8-byte little-endian length, then the JSON),
    checked to describe exactly the file's bytes; a :class:`CheckpointError` otherwise."""
    size = os.fstat(f.fileno()).st_size
    head = f.read(8)
    n = int.from_bytes(head, "little") if len(head) == 8 else 0
    if not 0 < n <= min(MAX_HEADER_BYTES, size - 8):
        raise CheckpointError(f"{path}: not a readable model file (a header of {n:,} bytes in {size:,})")
    try:
        header = json.loads(f.read(n))
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: not a readable model file (header: {type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a readable model file (its header is not a JSON object)")
    ends = [_data_end(entry) for name, entry in header.items() if name != "__metadata__"]
    if not all(type(end) is int for end in ends) or 8 + n + max(ends, default=0) != size:
        raise CheckpointError(
            f"{path}: not a readable model file (its header does not describe its {size:,} bytes)"
        )
    return header


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

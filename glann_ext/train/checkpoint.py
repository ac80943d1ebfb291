"""Atomic checkpoints and the random-number-generator state that exact resumption needs."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write

CHECKPOINT_FILE = "checkpoint.pt"


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`glann_ext._io.atomic_write`: a kill at any moment leaves either the old
    or the new checkpoint, never a partial one."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by :func:`save_atomic` (our own files only: ``weights_only=False``)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise RuntimeError(f"{path}: cannot load checkpoint ({exc})") from exc


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

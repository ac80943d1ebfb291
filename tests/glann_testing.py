"""Helpers shared by the tests: the ops backend to use, tiny datasets made on the fly, a dispatch mode that
records the ops a call runs, and planted pickles that prove whether loading a file ran code."""

from __future__ import annotations

import functools
import math
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

# The trainer tests run on the fused kernels (the reference backend has its own tests in test_models.py).
OPS = "fused"


def child_kwargs(cwd, **env_overrides: str) -> dict:
    """``subprocess`` keyword arguments for a child Python: it runs in ``cwd`` (outside the repository, so
    it imports the installed package, not the source folder) with ``PYTHONPATH`` made absolute (so a
    development checkout stays importable) and ``env_overrides`` added to the environment."""
    env = dict(os.environ, **env_overrides)
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p
        )
    return {"cwd": str(cwd), "env": env}


@functools.cache
def hardware_cpu_isa() -> str:
    """The best SIMD copy this CPU runs. ``build_info()['cpu_isa']`` in this process is capped by any
    GLANN_EXT_CPU_ISA the suite runs under (scripts/sanitize_cpu.sh runs it once per copy), so a child
    without the cap answers."""
    code = "import glann_ext; print(glann_ext.build_info()['cpu_isa'])"
    kwargs = child_kwargs(tempfile.gettempdir(), GLANN_EXT_CPU_ISA="")  # empty: no cap
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, **kwargs)
    return out.stdout.strip()


def blob_images(n: int = 64, size: int = 28, channels: int = 1, seed: int = 0) -> np.ndarray:
    """uint8 (n, size, size[, 3]) images of a bright Gaussian blob at a random position and width."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.empty((n, size, size), dtype=np.float64)
    for i in range(n):
        cy, cx = rng.uniform(size * 0.25, size * 0.75, 2)
        s = rng.uniform(size * 0.08, size * 0.2)
        out[i] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    arr = (out * 255).round().astype(np.uint8)
    return np.repeat(arr[..., None], 3, -1) if channels == 3 else arr


class Interrupt(Exception):
    """Raised by :func:`interrupt_at` hooks: a training run killed at a chosen step."""


def interrupt_at(stage: str, step: int):
    """An ``on_step`` hook that raises :class:`Interrupt` after global step ``step`` of ``stage``."""

    def hook(trainer, info):
        if info["stage"] == stage and info["step"] == step:
            raise Interrupt

    return hook


def free_port() -> int:
    """A free TCP port on localhost (for a test's process group)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_config(**overrides):
    """A seconds-long config on in-test data (set ``dataset`` to a file the test wrote)."""
    from glann_ext.train.config import preset

    base = {"ops": OPS, "threads": 1, "sample_every": 0}
    base.update(overrides)
    return preset("tiny", **base)


def save_image(path, arr, **kw):
    """``arr`` (H x W grey or H x W x C) written by Pillow to ``path`` (its format from the suffix, ``kw`` to
    ``save``), its folder made first; returns ``path``."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def traced_peak(fn):
    """(``fn()``, the peak bytes Python allocated while it ran, tracemalloc's count): what the memory tests
    bound."""
    import tracemalloc

    tracemalloc.start()
    try:
        value = fn()
        return value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def tensors_equal(a, b) -> bool:
    """Deep, bit-exact equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True  # both NaN
    return a == b


def swap_in_after_the_check(monkeypatch, module, replacement: Path) -> None:
    """Makes ``module.open_regular`` move ``replacement`` onto the path right after opening and checking
    it: the race of a file (or FIFO) swapped in between the check and any second open by the path."""
    checked = module.open_regular

    def swapped(path):
        f = checked(path)
        os.replace(replacement, path)
        return f

    monkeypatch.setattr(module, "open_regular", swapped)


class RecordOps(TorchDispatchMode):
    """A dispatch mode that records the name of every op it sees (``names``) and runs it: under it the
    ops' eager fast paths step aside and the registered ops run."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


class Payload:
    """Unpickling this creates the file ``marker``: the proof that loading ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_pickle(path: Path, marker: Path) -> None:
    """Writes at ``path`` a bare pickle whose loading would create ``marker``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"G": Payload(marker)}, f)


def vgg_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision-layout VGG16 state_dict (up to relu3_3) with random He-scaled weights and biases."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {
        0: (64, 3),
        2: (64, 64),
        5: (128, 64),
        7: (128, 128),
        10: (256, 128),
        12: (256, 256),
        14: (256, 256),
    }
    state = {}
    for i, (cout, cin) in shapes.items():
        state[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * (2 / (9 * cin)) ** 0.5
        state[f"features.{i}.bias"] = torch.randn(cout, generator=gen) * 0.1
    return state


def tiny_glann(**config):
    """A GLANN of untrained networks (latent 8, noise 4, 20 codes), its BatchNorm running statistics moved off
    (0, 1) so that eval and train mode differ for sure; no training."""
    from glann_ext.models import GLANN, MLP, DCGANGenerator

    with torch.random.fork_rng():
        torch.manual_seed(0)
        G = DCGANGenerator(latent_dim=8, image_size=28, channels=1, width=8)
        T = MLP(4, 8, hidden=16, layers=2)
        codes = torch.nn.functional.normalize(torch.randn(20, 8), dim=1)
        for bn in [*G.modules(), *T.modules()]:
            if isinstance(bn, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)

    return GLANN(G, codes, T, config={"seed": 0, **config})


def write_idx(path: Path, arr: np.ndarray, compress: bool) -> None:
    """``arr`` as an unsigned-byte IDX file at ``path`` (gzip-compressed if ``compress``)."""
    import gzip
    import struct

    raw = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    raw += arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)

"""A small LeNet-style domain classifier, trained once per dataset and cached on disk.

Its test accuracy is reported and its penultimate-layer features (84-D) feed the Fréchet distance and
PRDC, the way FID uses Inception features, but for the small-image domains (MNIST-like) where an
in-domain network is the meaningful feature space and no download is needed.

Architecture (version :data:`ARCH_VERSION`; bump it whenever the network or training changes so old
caches are not reused): per-dataset input standardisation (train mean/std) -> conv5x5(C->6, pad 2) ->
ReLU -> maxpool2 -> conv5x5(6->16) -> ReLU -> maxpool2 -> fc(->120) -> ReLU -> fc(120->84) -> ReLU
[features] -> fc(84->classes). Trained with Adam (lr 1e-3, batch 128) from a fixed seed, on
:data:`TRAIN_THREADS` intra-op threads whatever the caller's setting: torch's CPU convolutions split their
gradient sums by thread, so a LeNet trained on 1 thread and one trained on 2 differ (weights by up to 0.18
after 3 epochs, and the same samples' FD by 9% on Fashion-MNIST), while scoring is the same on any count.
The CPU's instruction set changes the rounding too, so FDs compare within one cache file, whose weights
``glann eval`` names (``classifier.weights`` in eval.json).

The cache file is ``<cache_dir>/<dataset>__lenet-v<ARCH_VERSION>__seed<seed>__ep<epochs>.pt``, written
atomically (temporary file in the same folder, then ``os.replace``) and read with
``torch.load(weights_only=True)``: a cache folder may hold files someone else put there, so a file that
is not such a cache (a bare pickle, another structure, tensors of other shapes) is a
:class:`~glann_ext.errors.CheckpointError` naming it, and no code in it runs.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from functools import cached_property, partial
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .._args import is_positive_finite
from .._io import UnsafeTensorFile, atomic_write, load_tensors_only
from .._threads import intra_op_threads
from ..errors import CheckpointError, UsageError
from ._checks import as_images, check_positive_int

ARCH_VERSION = 1
# the count the committed quality report's LeNets were trained with, and glann eval's default on 2 cores
# (caches from before it was fixed lack the field and are trained again)
TRAIN_THREADS = 2
FEATURE_DIM = 84


def max_pool2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` of (N, C, H, W), the same values (NaN propagates too), as two elementwise
    maxima of strided views: rows first, so the first pass reads whole rows. On the CPU about 7x faster than
    torch's NCHW max-pooling, which was half of LeNet's scoring time (2-core AMD EPYC, 1024 x 6 x 28 x 28)."""
    h, w = x.shape[2] // 2 * 2, x.shape[3] // 2 * 2
    rows = torch.maximum(x[:, :, 0:h:2, :w], x[:, :, 1:h:2, :w])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


class LeNet(nn.Module):
    """LeNet-5 with ReLU and max-pooling; input (N, C, H, W) with H, W >= 12."""

    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int]):
        super().__init__()
        h, w = image_size
        h2, w2 = (h // 2 - 4) // 2, (w // 2 - 4) // 2
        if h2 < 1 or w2 < 1:
            raise ValueError(f"image_size must be at least 12x12 for LeNet, got {image_size}")
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * h2 * w2, 120)
        self.fc2 = nn.Linear(120, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # Scoring runs without autograd and takes the fast pooling (same values); training keeps torch's
        # max_pool2d, whose gradient picks one of tied maxima, so that cached classifiers stay reproducible.
        pool = max_pool2 if not torch.is_grad_enabled() else partial(F.max_pool2d, kernel_size=2)
        x = (x - self.mean) / self.std
        x = pool(F.relu(self.conv1(x)))
        x = pool(F.relu(self.conv2(x)))
        x = F.relu(self.fc1(x.flatten(1)))
        return F.relu(self.fc2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def cache_path(cache_dir: str | os.PathLike, dataset: str, *, seed: int, epochs: int) -> Path:
    """Where the classifier for ``dataset`` / architecture version / seed / epochs is cached."""
    if not isinstance(dataset, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", dataset):
        raise ValueError(
            f"dataset must be a non-empty name of letters, digits, '.', '_', '-', got {dataset!r}"
        )
    return Path(cache_dir) / f"{dataset}__lenet-v{ARCH_VERSION}__seed{seed}__ep{epochs}.pt"


def _check_split(prefix: str, images: object, labels: object, num_classes: int | None) -> tuple:
    x = as_images(f"{prefix}_images", images)
    if (
        not isinstance(labels, torch.Tensor)
        or labels.shape != (x.shape[0],)
        or labels.dtype.is_floating_point
    ):
        got = (
            f"{labels.dtype} {tuple(labels.shape)}"
            if isinstance(labels, torch.Tensor)
            else type(labels).__name__
        )
        raise ValueError(f"{prefix}_labels must be an integer ({x.shape[0]},) tensor, got {got}")
    if x.shape[0] == 0:
        raise ValueError(f"{prefix}_images must not be empty")
    y = labels.long().cpu()
    if int(y.min()) < 0 or (num_classes is not None and int(y.max()) >= num_classes):
        raise ValueError(
            f"{prefix}_labels must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]"
        )
    return x, y


class DomainClassifier:
    """A trained :class:`LeNet` plus its test accuracy; call it for logits, :meth:`features` for 84-D."""

    def __init__(self, model: LeNet, test_accuracy: float, meta: dict):
        self.model = model.eval()
        self.test_accuracy = test_accuracy
        self.meta = meta

    @cached_property
    def weights(self) -> str:
        """A hash of the network's weights and input statistics: scores in its features compare with scores
        of a classifier of the same hash only."""
        return _fingerprint(*self.model.state_dict().values())

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
        """Logits (N, num_classes); a drop-in classifier for :func:`stacked_modes`."""
        return self._batched(self.model, images, batch_size)

    @torch.no_grad()
    def features(self, images: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
        """Penultimate-layer features (N, 84), float32, of images in the training images' value range."""
        return self._batched(self.model.features, images, batch_size)

    @torch.no_grad()
    def accuracy(self, test_images: torch.Tensor, test_labels: torch.Tensor) -> float:
        """Fraction of ``test_images`` whose arg-max logit equals ``test_labels``."""
        x, y = _check_split("test", test_images, test_labels, self.meta["num_classes"])
        return float((self(x).argmax(1) == y).double().mean())

    def _batched(self, fn, images: torch.Tensor, batch_size: int) -> torch.Tensor:
        x = as_images("images", images, channels=self.meta["in_channels"])
        if tuple(x.shape[2:]) != tuple(self.meta["image_size"]):
            raise ValueError(
                f"images must be {tuple(self.meta['image_size'])} pixels, got {tuple(x.shape[2:])}"
            )
        batch_size = check_positive_int("batch_size", batch_size)
        if x.shape[0] == 0:  # no images: no rows, of the width ``fn`` gives
            return fn(torch.zeros(1, *x.shape[1:]))[:0]
        return torch.cat([fn(x[i : i + batch_size].float()) for i in range(0, x.shape[0], batch_size)])

    @classmethod
    def load_or_train(
        cls,
        dataset: str,
        train_images: torch.Tensor,
        train_labels: torch.Tensor,
        test_images: torch.Tensor,
        test_labels: torch.Tensor,
        *,
        cache_dir: str | os.PathLike,
        num_classes: int = 10,
        seed: int = 0,
        epochs: int = 2,
        batch_size: int = 128,
        lr: float = 1e-3,
        verbose: bool = False,
    ) -> DomainClassifier:
        """Load the cached classifier of ``dataset`` or train one (fixed seed) and cache it atomically.

        Images are (N, C, H, W) floats in the value range the generated images will use; labels (N,)
        integers in ``[0, num_classes)``. A cache whose image shape or class count disagrees with the
        data is an error (pass another ``dataset`` name) rather than silently reused.
        """
        num_classes = check_positive_int("num_classes", num_classes)
        epochs = check_positive_int("epochs", epochs)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        path = cache_path(cache_dir, dataset, seed=seed, epochs=epochs)
        xtr, ytr = _check_split("train", train_images, train_labels, num_classes)
        xte, yte = _check_split("test", test_images, test_labels, num_classes)
        if xte.shape[1:] != xtr.shape[1:]:
            raise ValueError(
                f"test_images must be {tuple(xtr.shape[1:])} like train_images, got {tuple(xte.shape[1:])}"
            )
        meta = {
            "dataset": dataset, "arch_version": ARCH_VERSION, "seed": seed, "epochs": epochs,
            "in_channels": int(xtr.shape[1]), "image_size": [int(xtr.shape[2]), int(xtr.shape[3])],
            "num_classes": num_classes,
        }  # fmt: skip
        batch_size = check_positive_int("batch_size", batch_size)
        if not is_positive_finite(lr):  # numpy scalars too
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        # what the cache was trained on and with: another data set, lr, batch size or thread count (none
        # before 0.3.9) trains it again
        data = _fingerprint(xtr, ytr, xte, yte)
        trained_on = {"lr": float(lr), "batch_size": batch_size, "threads": TRAIN_THREADS, "data": data}
        if path.exists():
            cached = cls.load(path, expect=meta)
            if all(cached.meta.get(k) == v for k, v in trained_on.items()):
                return cached
        meta.update(trained_on)
        model = _train(xtr, ytr, meta, batch_size=batch_size, lr=float(lr), verbose=verbose)
        model.eval()
        with torch.no_grad():
            preds = torch.cat(
                [model(xte[i : i + 1024].float()).argmax(1) for i in range(0, xte.shape[0], 1024)]
            )
        acc = float((preds == yte).double().mean())
        meta["test_accuracy"] = acc
        _atomic_save({"meta": meta, "state_dict": model.state_dict()}, path)
        return cls(model, acc, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, *, expect: dict | None = None) -> DomainClassifier:
        """Load a cached classifier; ``expect`` (meta fields) must match what the file records
        (:class:`~glann_ext.errors.UsageError`, a ``ValueError``, if not). A file that is not a cache this
        module wrote raises :class:`~glann_ext.errors.CheckpointError`; nothing in it is run."""
        meta, state = _read_cache(Path(path))
        for key, value in (expect or {}).items():
            if meta.get(key) != value:
                raise UsageError(
                    f"cached classifier {path} has {key}={meta.get(key)!r}, expected {value!r}; "
                    "use another dataset name or delete the cache file"
                )
        try:
            with torch.random.fork_rng(
                devices=[]
            ):  # its initial weights, replaced at once: the caller's RNG kept
                model = LeNet(meta["in_channels"], meta["num_classes"], tuple(meta["image_size"]))
            model.load_state_dict(state)
        except (RuntimeError, ValueError, TypeError) as exc:  # tensors of other shapes, or odd sizes
            raise CheckpointError(_not_a_cache(path, str(exc).strip().splitlines()[-1])) from None
        return cls(model, float(meta["test_accuracy"]), meta)


def _fingerprint(*tensors: torch.Tensor) -> str:
    """A hash of the tensors' shapes, dtypes and values: the data a cached classifier was trained and tested on."""
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)} {t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too
    return h.hexdigest()


def _not_a_cache(path: str | os.PathLike, why: str) -> str:
    return f"{path}: not a cached classifier ({why}); delete it and the classifier is trained again"


# what a cache's meta holds and of which types (bool is an int to Python, so it is refused by name)
_META_TYPES = {"in_channels": int, "num_classes": int, "image_size": list, "test_accuracy": float}


def _read_cache(path: Path) -> tuple[dict, dict]:
    """(meta, state_dict) of a cache file, checked for the structure :meth:`DomainClassifier.load_or_train`
    writes; anything else is a :class:`CheckpointError`. Only tensors and plain values are unpickled."""
    try:
        blob = load_tensors_only(path)
    except UnsafeTensorFile as exc:
        raise CheckpointError(_not_a_cache(path, str(exc))) from None
    except (RuntimeError, EOFError) as exc:  # a damaged archive
        raise CheckpointError(_not_a_cache(path, str(exc).strip().splitlines()[0])) from None
    meta = blob.get("meta") if isinstance(blob, dict) else None
    state = blob.get("state_dict") if isinstance(blob, dict) else None
    if not isinstance(meta, dict) or not isinstance(state, dict):
        raise CheckpointError(_not_a_cache(path, "no 'meta' and 'state_dict' dicts"))
    for key, kind in _META_TYPES.items():
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise CheckpointError(_not_a_cache(path, f"meta {key}={value!r} is not a {kind.__name__}"))
    # the sizes the meta names must be those of the file's own tensors, so that the LeNet built from them
    # is no larger than the file (a forged meta cannot ask for a network of any size)
    size = meta["image_size"]
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 12 for v in size):
        raise CheckpointError(_not_a_cache(path, f"meta image_size={size!r} is not two sizes >= 12"))
    h2, w2 = ((v // 2 - 4) // 2 for v in size)
    shapes = {
        "conv1.weight": (6, meta["in_channels"], 5, 5),
        "fc1.weight": (120, 16 * h2 * w2),
        "head.weight": (meta["num_classes"], FEATURE_DIM),
    }
    for key, shape in shapes.items():
        have = tuple(state[key].shape) if isinstance(state.get(key), torch.Tensor) else None
        if have != shape:
            raise CheckpointError(_not_a_cache(path, f"{key} is {have}, its meta says {shape}"))
    # NaN weights scored every feature NaN: an error that named neither the file nor the cure
    for key, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(_not_a_cache(path, f"{key} holds NaN or Inf values"))
    return meta, state


def _train(
    x: torch.Tensor, y: torch.Tensor, meta: dict, *, batch_size: int, lr: float, verbose: bool
) -> LeNet:
    # A private generator and fork_rng: training is reproducible and leaves the caller's RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(meta["seed"])
        model = LeNet(meta["in_channels"], meta["num_classes"], tuple(meta["image_size"]))
    g = torch.Generator().manual_seed(meta["seed"])
    model.mean.fill_(float(x.double().mean()))
    model.std.fill_(max(float(x.double().std()), 1e-6))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    start = time.perf_counter()
    with intra_op_threads(TRAIN_THREADS):  # the gradients' rounding follows the thread count
        for epoch in range(meta["epochs"]):
            order = torch.randperm(x.shape[0], generator=g)
            for i in range(0, x.shape[0], batch_size):
                idx = order[i : i + batch_size]
                loss = F.cross_entropy(model(x[idx].float()), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if verbose:
                seconds = time.perf_counter() - start
                print(f"[lenet {meta['dataset']}] epoch {epoch + 1}: loss {loss.item():.4f}, {seconds:.1f}s")
    return model


def _atomic_save(obj: dict, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))

"""The networks and the model of a training configuration, initialised from its seed.

Initialisation draws from the global torch RNG (the layers' own ``reset_parameters``), so each network is
built inside :func:`torch.random.fork_rng` seeded from the run seed: the weights depend on the seed alone,
whatever was drawn before, and the caller's RNG state is left exactly as it was (the library never reseeds
it). G takes the run seed and T the run seed + 1, as in glann_ext 0.1, so the same seeds give the same
weights as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from glann_ext._args import checked_int
from glann_ext.backend import Ops, as_ops
from glann_ext.errors import UsageError
from glann_ext.models import GLANN, MLP, DCGANGenerator, PixelIMLE

from .config import TrainConfig
from .inputs import check_generator_output, checked_config

M = TypeVar("M", bound=nn.Module)


def seeded(seed: int, make: Callable[[], M]) -> M:
    """``make()`` with the global torch RNG seeded to ``seed`` for its duration only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def build_generator(cfg: TrainConfig, image_shape: tuple[int, int, int]) -> DCGANGenerator:
    """G: codes (GLANN) or noise (pixel IMLE) of the configured size -> images of ``image_shape``."""
    if len(image_shape) != 3 or image_shape[0] < 1 or image_shape[1] != image_shape[2]:
        raise UsageError(f"image_shape must be (C, H, W) with C >= 1 and H == W, got {tuple(image_shape)}")
    c, h, _ = image_shape
    in_dim = cfg.noise_dim if cfg.imle_space == "pixel" else cfg.latent_dim
    return seeded(cfg.seed, lambda: DCGANGenerator(in_dim, h, c, cfg.gen_width, cfg.gen_depth))


def build_mapping(cfg: TrainConfig) -> MLP:
    """T: noise -> codes, the IMLE mapping of GLANN's second stage."""
    return seeded(
        cfg.seed + 1,
        lambda: MLP(
            cfg.noise_dim,
            cfg.latent_dim,
            cfg.mapping_hidden,
            cfg.mapping_layers,
            cfg.mapping_batch_norm,
            output_affine=cfg.imle_whiten,
        ),
    )


def check_own_generator(generator: object, cfg: TrainConfig, image_shape: tuple[int, int, int]) -> None:
    """UsageError unless ``generator`` can be GLANN's G for ``cfg``: a module (with parameters) that maps codes
    (n, ``cfg.latent_dim``) to images of ``image_shape``; pixel IMLE builds its own (``fit_imle`` trains any
    generator by IMLE)."""
    if cfg.imle_space == "pixel":
        raise UsageError(
            "generator: a generator of your own trains GLANN (imle_space='latent'); for IMLE of your own "
            "generator from noise to images use glann_ext.train.fit_imle"
        )
    check_generator_output(
        generator, torch.empty(0, *image_shape), cfg.latent_dim, "codes", "cfg.latent_dim", "the images are"
    )


def place_for_training(module: M, device: torch.device) -> M:
    """``module`` moved to ``device`` for training: the package's generator on the CPU with its convolution
    weights in channels-last layout, oneDNN's native one (with :func:`adam`, a width-32 generator's GLO step
    at batch 128 measured 1.14-1.24x faster than in NCHW with the per-tensor Adam step,
    benchmarks/bench_train_step.py). On CUDA the layout is left as it is (not measured there), and so is a
    caller's own module's (its ``forward`` may ``view`` a convolution's output, which channels-last breaks).
    Only 4-D parameters change layout; an MLP is just moved."""
    module = module.to(device)
    own = type(module) is DCGANGenerator
    return module.to(memory_format=torch.channels_last) if device.type == "cpu" and own else module


def adam(params, lr: float, betas: tuple[float, float], weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam with the fused multi-tensor step (one pass over all parameters instead of a handful of kernel
    calls per tensor: about 1 ms less per step of T or G on two CPU cores)."""
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)


def load_adam_state(opt: torch.optim.Adam, state: Any, name: str) -> None:
    """``opt.load_state_dict(state)`` after checking every moment against its parameter: the fused step
    trusts their shapes and would read and write out of bounds for a checkpoint's forged or mismatched
    state (a crash, not an error). A ValueError names the optimizer, the entry and the expected shape."""
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict):
        raise TypeError(f"{name}: not an optimizer state (a dict with 'state' and 'param_groups')")
    groups = state.get("param_groups")
    if not isinstance(groups, list) or not all(
        isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups
    ):
        raise ValueError(f"{name}: param_groups must be a list of groups, each with a list of params")
    saved = [i for g in groups for i in g["params"]]
    params = [p for g in opt.param_groups for p in g["params"]]
    if len(saved) != len(params):
        raise ValueError(f"{name}: the state is of {len(saved)} parameters, this model has {len(params)}")
    for i, p in zip(saved, params):
        entry = state["state"].get(i, {})
        for key, value in entry.items() if isinstance(entry, dict) else [("state", entry)]:
            # the step count is a float32 scalar; every moment a tensor like its parameter
            want = (torch.float32, ()) if key == "step" else (p.dtype, tuple(p.shape))
            check_tensor(f"{name}: {key} of parameter {i}", value, want)
    opt.load_state_dict(state)


def check_tensor(name: str, value: Any, want: tuple[torch.dtype, tuple[int, ...]]) -> None:
    """ValueError "NAME is (dtype, shape), expected WANT" unless ``value`` is a tensor of ``want``'s dtype
    and shape (a checkpoint's state checked before a trainer takes it)."""
    if not isinstance(value, torch.Tensor) or (value.dtype, tuple(value.shape)) != want:
        got = (value.dtype, tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} is {got}, expected {want}")


def build_model(
    cfg: TrainConfig, image_shape: tuple[int, int, int], n_codes: int = 0, *, ops: Ops | None = None,
    generator: nn.Module | None = None,
) -> GLANN | PixelIMLE:  # fmt: skip
    """The untrained model of ``cfg``: :class:`GLANN` (G, ``n_codes`` zero codes, T) or :class:`PixelIMLE`.
    ``generator``: a GLANN's G of the caller's own (codes (n, ``cfg.latent_dim``) -> images of
    ``image_shape``), used as given, instead of the configured :class:`DCGANGenerator`."""
    cfg = checked_config(cfg)
    n_codes = checked_int("n_codes", n_codes, 0)
    ops = as_ops(ops, cfg.ops)
    config = cfg.to_dict()
    if generator is not None:
        check_own_generator(generator, cfg, image_shape)
    G = build_generator(cfg, image_shape) if generator is None else generator
    if cfg.imle_space == "pixel":
        return PixelIMLE(G, ops=ops, config=config)
    codes = torch.zeros(n_codes, cfg.latent_dim)
    shape = tuple(image_shape) if generator is not None else None  # checked above: no second probe
    return GLANN(G, codes, build_mapping(cfg), ops=ops, config=config, image_shape=shape)

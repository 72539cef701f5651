"""The package layering of ``docs/architecture.md``, checked on the source.

Every module under ``src/edgequant`` is parsed with ``ast``; every import in it (module level and inside
functions, ``import x`` / ``from x import y`` / relative ``from .. import y``, and the module names of lazy
``__getattr__`` maps such as ``{"name": "edgequant.models.load"}``) gives an edge between two subpackages.
An edge may point down the layer table or sideways within a row, never up; the graph between subpackages must
be acyclic. Imports inside one subpackage are not checked here (``qat/``'s internal order is its own).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "edgequant"
DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"

# Top to bottom; a package may import the packages of its own row and of every row below it.
LAYERS: list[tuple[str, ...]] = [
    ("__main__",),
    ("cli",),
    ("workflows",),
    ("eval",),
    ("analysis",),
    ("qat",),
    ("nn", "optim"),
    ("models",),
    ("gguf", "bnb"),
    ("kernels",),
    ("core",),
]
# Importable from everywhere; they import nothing of edgequant but each other.
ANYWHERE = {"errors", "_version"}
# The package root (``edgequant/__init__.py``) is a facade over the library layers.
ROOT = "__init__"

RANK = {pkg: i for i, row in enumerate(LAYERS) for pkg in row}
_LAZY = re.compile(r"^edgequant(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def _package_of(path: Path) -> str:
    rel = path.relative_to(SRC).parts
    return rel[0] if len(rel) > 1 else rel[0].removesuffix(".py")


def _module_parts(path: Path) -> list[str]:
    parts = ["edgequant", *path.relative_to(SRC).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def _is_module(name: str) -> bool:
    return (SRC / name).is_dir() or (SRC / f"{name}.py").is_file()


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module name) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _module_parts(path)
    is_pkg = path.name == "__init__.py"
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_pkg else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            # `from edgequant import nn` names a subpackage, not an attribute of the root
            if mod == "edgequant":
                out += [(node.lineno, f"edgequant.{a.name}") for a in node.names if _is_module(a.name)]
        elif isinstance(node, ast.Dict):
            for v in node.values:
                if isinstance(v, ast.Constant) and isinstance(v.value, str) and _LAZY.match(v.value):
                    out.append((node.lineno, v.value))
    return out


def _edges() -> dict[tuple[str, str], list[str]]:
    """(from package, to package) -> ["file:line", ...] for every cross-package import."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        src = _package_of(path)
        for line, mod in _imported_modules(path):
            parts = mod.split(".")
            if parts[0] != "edgequant" or len(parts) < 2:
                continue
            dst = parts[1]
            if dst != src:
                edges.setdefault((src, dst), []).append(f"{path.relative_to(SRC.parent)}:{line}")
    return edges


def _subpackages() -> set[str]:
    return {_package_of(p) for p in SRC.rglob("*.py")}


def test_every_package_has_a_layer():
    known = set(RANK) | ANYWHERE | {ROOT}
    missing = _subpackages() - known
    assert not missing, f"place {sorted(missing)} in LAYERS here and in docs/architecture.md"


def test_imports_point_down():
    bad = []
    for (src, dst), where in sorted(_edges().items()):
        if src in ANYWHERE:
            if dst not in ANYWHERE:
                bad.append(f"{src} -> {dst} ({src} must import nothing else of edgequant): {where}")
        elif dst in ANYWHERE:
            continue
        elif src == ROOT:
            if dst in ("__main__", "cli", "workflows"):
                bad.append(f"{src} -> {dst} (the package root is a facade over the library): {where}")
        elif RANK[dst] < RANK[src]:
            bad.append(f"{src} -> {dst} imports upward: {where}")
    assert not bad, "layering violations (docs/architecture.md):\n" + "\n".join(bad)


def test_package_graph_is_acyclic():
    graph: dict[str, set[str]] = {}
    for src, dst in _edges():
        graph.setdefault(src, set()).add(dst)
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    path: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                pytest.fail("import cycle between packages: " + " -> ".join([*path[path.index(m) :], m]))
            if m not in state:
                visit(m)
        path.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_doc_lists_every_layer():
    text = DOC.read_text(encoding="utf-8")
    for pkg in [p for row in LAYERS[1:] for p in row] + sorted(ANYWHERE - {"_version"}) + ["tests/support"]:
        assert f"`{pkg}/`" in text or f"`{pkg}`" in text, f"docs/architecture.md does not mention `{pkg}/`"


def test_library_never_imports_the_test_helpers():
    """``tests/support`` is not installed (the wheel holds ``edgequant`` only), so no module of the package
    may import it, not even inside a function."""
    bad = [
        f"{path.relative_to(SRC.parent)}:{line}: {mod}"
        for path in sorted(SRC.rglob("*.py"))
        for line, mod in _imported_modules(path)
        if mod.split(".")[0] == "tests"
    ]
    assert not bad, "library code imports the test helpers:\n" + "\n".join(bad)


def test_checker_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    """The parser itself: an upward import hidden in a function or written relatively is still an edge."""
    pkg = tmp_path / "edgequant"
    (pkg / "gguf").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "gguf" / "__init__.py").write_text("")
    (pkg / "gguf" / "bad.py").write_text(
        "def f():\n    from edgequant.models.safetensors import W\n\nfrom ..workflows import quantize\n"
        "_LAZY = {'x': 'edgequant.cli.main'}\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "SRC", pkg)
    mods = {m for _, m in _imported_modules(pkg / "gguf" / "bad.py")}
    assert {"edgequant.models.safetensors", "edgequant.workflows", "edgequant.cli.main"} <= mods

"""The package's import graph: no cycles among the modules of ``kasa_lightning``, ``kasa_lightning.callbacks`` and
``kasa_lightning.datamodules``, and no import of the bare top-level ``callbacks`` / ``datamodules`` folders.

Every import statement counts: at module level, inside functions and under ``TYPE_CHECKING``. Importing ``a.b.c``
counts as importing the packages ``a.b`` and ``a`` as well (Python runs their ``__init__`` first), except the
importer's own packages: those are already initialised when the importer's code runs, so naming them runs nothing.
``from a.b import c`` imports ``a.b`` and, where ``c`` is a module, ``a.b.c``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the package name it installs as (pyproject's package-dir)
SOURCES = {
    "kasa_lightning": "kasa_lightning",
    "callbacks": "kasa_lightning.callbacks",
    "datamodules": "kasa_lightning.datamodules",
}
BARE = ("callbacks", "datamodules")


def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package ``__init__``)."""
    found = {}
    for folder, package in SOURCES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            found[".".join([package, *parts])] = (path, is_package)
    return found


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imported(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that the import statements of ``tree`` name, anywhere in the file."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the importer's package
                package = module if is_package else module.rpartition(".")[0]
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    targets: set[str] = set()
    for name in names:
        for candidate in [*_ancestors(name), name]:
            if candidate in known:
                targets.add(candidate)
    own = {module, *_ancestors(module)}  # already initialised while this module runs
    return targets - own


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {
        name: _imported(ast.parse(path.read_text(), str(path)), name, is_package, known)
        for name, (path, is_package) in modules.items()
    }


def test_graph_covers_the_package():
    graph = import_graph()
    # the checker sees the mapped folders under their installed names, and the edges it must see
    assert {"kasa_lightning.callbacks.heatmaps", "kasa_lightning.datamodules.glue", "kasa_lightning.kasa.layer"} <= set(
        graph
    )
    assert "kasa_lightning.kasa.layer" in graph["kasa_lightning.kasa.inject"]  # relative import
    assert "kasa_lightning.kasa" in graph["kasa_lightning.callbacks.heatmaps"]  # the package of an imported name
    assert "kasa_lightning.training.fsdp" in graph["kasa_lightning.training.module"]  # an import inside a function


def test_no_import_cycles():
    try:
        order = list(TopologicalSorter(import_graph()).static_order())
    except CycleError as err:
        cycle = err.args[1]
        raise AssertionError("import cycle: " + " -> ".join(cycle)) from None
    assert "kasa_lightning.kasa.config" in order


def test_the_checker_finds_a_cycle(tmp_path):
    """The rule above on a package whose __init__ imports a module that imports a sibling package back."""
    graph = {
        "p": set(),
        "p.a": {"p.b", "p.b.x"},  # `import p.b.x`: p.b's __init__ runs first
        "p.b": {"p.b.y"},
        "p.b.x": set(),
        "p.b.y": {"p.a"},
    }
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError as err:
        assert set(err.args[1]) >= {"p.a", "p.b", "p.b.y"}
    else:
        raise AssertionError("the cycle p.a -> p.b -> p.b.y -> p.a was not found")
    source = "from . import b\nimport p.b.x\n"
    assert _imported(ast.parse(source), "p.a", False, set(graph)) == {"p.b", "p.b.x"}


def _files_outside_the_package() -> list[Path]:
    folders = [*SOURCES, "tests", "benchmarks", "examples", "configs"]
    return [path for folder in folders for path in sorted((ROOT / folder).rglob("*.py"))]


def test_no_bare_callbacks_or_datamodules_imports():
    offending = []
    for path in _files_outside_the_package():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            offending += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in BARE]
    assert not offending, "import these as kasa_lightning.callbacks / kasa_lightning.datamodules: " + ", ".join(
        offending
    )


def test_no_bare_callbacks_or_datamodules_module_at_run_time():
    """Importing every module of the package (the callbacks and DataModules included) in a fresh process loads no
    top-level ``callbacks`` or ``datamodules`` module."""
    names = sorted(name for name in _modules() if name != "kasa_lightning.__main__")
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {BARE!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"

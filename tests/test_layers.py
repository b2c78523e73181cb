"""Data flows one way: configuration -> data -> models -> attacks -> training -> UnMask's rules ->
metrics -> the decision rules -> report -> experiment -> the library -> command line. No module
imports from a layer after its own (function-level imports included), so each can be read,
tested and reused without the ones after it. One exception, declared here: the package
``unmask`` exports the library's names lazily (PEP 562), importing ``unmask.protect`` inside its
module ``__getattr__`` only."""

from __future__ import annotations

import ast
from pathlib import Path

import unmask

LAYERS: tuple[tuple[str, ...], ...] = (
    ("unmask", "unmask.constants", "unmask.io", "unmask.parts", "unmask.provenance", "unmask.runtime",
     "unmask.environment", "unmask.benchmark"),
    ("unmask.config",),
    ("unmask.data",),
    ("unmask.models",),
    ("unmask.attacks",),
    ("unmask.train",),
    ("unmask.defense",),
    ("unmask.metrics",),
    ("unmask.rules",),
    ("unmask.evaluation",),
    ("unmask.report",),
    ("unmask.publish", "unmask.docs", "unmask.rule_comparison"),
    ("unmask.experiment.plan",),
    ("unmask.experiment.stages", "unmask.experiment.batches", "unmask.experiment.folder"),
    ("unmask.experiment.evaluator",),
    ("unmask.experiment.adaptive",),
    ("unmask.experiment.outputs",),
    ("unmask.experiment.run", "unmask.experiment"),
    ("unmask.protect",),
    ("unmask.cli",),
)
"""Each module belongs to the layer of its longest listed prefix (foundation modules first)."""

LAZY_EXPORT = ("unmask", "__getattr__", "unmask.protect")
"""The one import from a later layer: (module, the function it is in, what it imports)."""

PACKAGE = Path(unmask.__file__).parent


def layer_of(module: str) -> int:
    matches = [(len(prefix), index) for index, layer in enumerate(LAYERS) for prefix in layer
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} belongs to no layer: add it to LAYERS"
    return max(matches)[1]


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(text: str) -> list[tuple[str, str | None]]:
    """(imported module, the function the import is in or None) of every import of the package in
    ``text``; ``from unmask import protect`` imports the module ``unmask.protect``."""
    found: list[tuple[str, str | None]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name, function) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.append((submodule if _is_module(submodule) else node.module, function))
        for child in ast.iter_child_nodes(node):
            visit(child, node.name if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else function)

    visit(ast.parse(text), None)
    return [(name, function) for name, function in found if name == "unmask" or name.startswith("unmask.")]


def violations(module: str, text: str) -> list[str]:
    """The imports of ``module`` (source ``text``) from a layer after its own, but the lazy export."""
    return [f"{module} imports {imported}, a later layer" for imported, function in imports_of(text)
            if layer_of(imported) > layer_of(module) and (module, function, imported) != LAZY_EXPORT]


def test_no_module_imports_from_a_layer_after_its_own():
    checked = 0
    for source in sorted(PACKAGE.rglob("*.py")):
        parts = source.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        text = source.read_text(encoding="utf-8")
        assert violations(module, text) == []
        checked += len(imports_of(text))
    assert checked > 100


def test_the_layer_rule_catches_an_import_from_a_later_layer():
    assert layer_of("unmask.attacks.adaptive.engine") < layer_of("unmask.defense")
    assert layer_of("unmask.experiment.stages") < layer_of("unmask.experiment.evaluator")
    assert layer_of("unmask.experiment") < layer_of("unmask.protect") < layer_of("unmask.cli")
    assert layer_of("unmask.constants") == 0 and layer_of("unmask.cli") == len(LAYERS) - 1
    assert violations("unmask.defense", "from unmask import experiment") == [
        "unmask.defense imports unmask.experiment, a later layer"]
    assert violations("unmask.parts", "def f():\n    import unmask.protect.run") != []


def test_only_the_lazy_export_may_import_the_library_into_the_package():
    lazy = "def __getattr__(name):\n    from unmask import protect\n    return getattr(protect, name)\n"
    assert violations("unmask", lazy) == []
    assert violations("unmask", "from unmask import protect") != []  # at import time: not lazy
    assert violations("unmask", lazy.replace("__getattr__", "load")) != []
    assert violations("unmask", lazy.replace("protect", "cli")) != []
    assert violations("unmask.io", lazy) != []
    assert imports_of((PACKAGE / "__init__.py").read_text(encoding="utf-8")) == [("unmask.protect", "__getattr__")]

"""Data flows one way: configuration -> data -> models -> attacks -> training -> UnMask's rules ->
metrics -> report -> experiment -> command line. No module imports from a layer after its own
(function-level imports included), so each can be read, tested and reused without the ones after it."""

from __future__ import annotations

import ast
from pathlib import Path

import unmask

LAYERS: tuple[tuple[str, ...], ...] = (
    ("unmask", "unmask.constants", "unmask.io", "unmask.parts", "unmask.provenance", "unmask.runtime"),
    ("unmask.config",),
    ("unmask.data",),
    ("unmask.models",),
    ("unmask.attacks",),
    ("unmask.train",),
    ("unmask.defense",),
    ("unmask.metrics",),
    ("unmask.evaluation",),
    ("unmask.report",),
    ("unmask.experiment.plan",),
    ("unmask.experiment.stages", "unmask.experiment.batches", "unmask.experiment.folder"),
    ("unmask.experiment.evaluator",),
    ("unmask.experiment.adaptive",),
    ("unmask.experiment.outputs",),
    ("unmask.experiment.run", "unmask.experiment"),
    ("unmask.cli",),
)
"""Each module belongs to the layer of its longest listed prefix (foundation modules first)."""


def layer_of(module: str) -> int:
    matches = [(len(prefix), index) for index, layer in enumerate(LAYERS) for prefix in layer
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} belongs to no layer: add it to LAYERS"
    return max(matches)[1]


def imports_of(source: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return [name for name in names if name == "unmask" or name.startswith("unmask.")]


def test_no_module_imports_from_a_layer_after_its_own():
    package = Path(unmask.__file__).parent
    checked = 0
    for source in sorted(package.rglob("*.py")):
        parts = source.relative_to(package.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for imported in imports_of(source):
            assert layer_of(imported) <= layer_of(module), f"{module} imports {imported}, a later layer"
            checked += 1
    assert checked > 100


def test_the_layer_rule_catches_an_import_from_a_later_layer():
    assert layer_of("unmask.attacks.adaptive.engine") < layer_of("unmask.defense")
    assert layer_of("unmask.experiment.stages") < layer_of("unmask.experiment.evaluator")
    assert layer_of("unmask.constants") == 0 and layer_of("unmask.cli") == len(LAYERS) - 1

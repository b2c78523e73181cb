"""UnMask: adversarial detection and defense through building-block (part) alignment.

Data flows one way: configuration -> data -> models -> attacks -> UnMask rules -> metrics ->
report -> experiment -> the library (``unmask.protect``) -> command line; no module imports from
a stage after its own. ``unmask.UnMask`` and the library's other names are exported lazily
(PEP 562): ``import unmask`` imports neither torch nor the experiment, so the foundation modules
that import the package stay light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

LAZY_EXPORTS: tuple[str, ...] = ("UnMask", "UnMaskResult", "StandIn", "FinishedRun", "load_classifier")
"""Names of ``unmask.protect`` that ``unmask`` exports, imported on first use."""

__all__ = ["__version__", *LAZY_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in LAZY_EXPORTS:
        from unmask import protect

        return getattr(protect, name)
    raise AttributeError(f"module 'unmask' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *LAZY_EXPORTS])

"""The benchmarks' measured output as JSON: one record per run of a ``bench/*.py`` script.

Every script takes ``--json PATH`` (``add_json_option``) and, when given it, writes what it
printed as named tables of rows, with the script's options and the run's provenance (code,
date, command, libraries, machine: ``unmask.environment``). ``python main.py publish PATH --name
NAME`` then commits it under ``results/published/NAME/``, and ``python main.py docs`` generates
the documentation's tables from it::

    parser = argparse.ArgumentParser(...)
    add_json_option(parser)
    args = parser.parse_args()
    record = BenchmarkRecord("bench_attacks", args)
    record.table("throughput", [{"model": "compact", "vector": "pgd_linf:8", "images_per_s": 117.2}, ...],
                 description="attacked images per second per vector")
    record.write(args.json, device=device)  # nothing without --json
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from unmask.environment import load_average, run_environment
from unmask.io import atomic_write_json

BENCHMARK_FORMAT = 1
"""The layout of a benchmark record (``kind: benchmark``)."""

BENCHMARK_KIND = "benchmark"


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """``--json PATH``: also write the measured figures as JSON (``BenchmarkRecord.write``)."""
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write the measured figures, the options and the machine as JSON to PATH "
                             "(publish it with: python main.py publish PATH --name NAME)")


def _plain(value: Any) -> Any:
    """A JSON-ready copy: paths and other objects as strings, non-finite numbers as null."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # a NumPy or torch scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


class BenchmarkRecord:
    """What one run of a benchmark script measured: named tables (each a list of rows with the
    same keys, and what the table measures) and single values, with the script's options."""

    def __init__(self, script: str, options: argparse.Namespace | Mapping[str, Any]) -> None:
        self.script = script
        self.options = _plain(vars(options) if isinstance(options, argparse.Namespace) else dict(options))
        self.options.pop("json", None)  # where the record goes is not how it was measured
        self.tables: dict[str, dict[str, Any]] = {}
        self.values: dict[str, Any] = {}
        self.load_at_start = load_average()

    def table(self, name: str, rows: Sequence[Mapping[str, Any]], *, description: str) -> None:
        """Add the table ``name``: ``rows`` in order, their columns those of the first row."""
        rows = [_plain(row) for row in rows]
        columns = list(rows[0]) if rows else []
        for row in rows:
            if list(row) != columns:
                raise ValueError(f"benchmark table {name!r}: every row needs the columns {columns}, got {list(row)}")
        self.tables[name] = {"description": description, "columns": columns, "rows": rows}

    def value(self, name: str, value: Any) -> None:
        """Add one measured value (a number or a short text)."""
        self.values[name] = _plain(value)

    def as_dict(self, device: torch.device | str) -> dict[str, Any]:
        """The record as written, with the provenance of ``device`` taken now."""
        return {"format": BENCHMARK_FORMAT, "kind": BENCHMARK_KIND, "script": self.script, "options": self.options,
                "tables": self.tables, "values": self.values,
                "provenance": {**run_environment(device),
                               "load_average": {"start": self.load_at_start, "end": load_average()}}}

    def write(self, path: str | Path | None, *, device: torch.device | str = "cpu") -> Path | None:
        """Write the record to ``path`` (atomically) and say so; nothing when ``path`` is None."""
        if path is None:
            return None
        path = Path(path)
        atomic_write_json(path, self.as_dict(device))
        print(f"measured figures written to {path} (python main.py publish {path} --name NAME publishes them)")
        return path

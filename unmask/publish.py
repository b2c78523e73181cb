"""Published runs: the figures the documentation cites, committed as data.

``results/published/<name>/`` holds, for each run the documentation cites, its ``metrics.json``
and ``tables.md`` (small files: no images, predictions or weights), or a benchmark's JSON record
(``benchmark.json``, written by ``bench/*.py --json``). ``python main.py publish SOURCE --name
NAME`` copies them there from a finished run's folder (or a benchmark record), refusing one
that does not record its provenance (code, date, command, libraries, machine:
``unmask.environment``), so every published figure names what made it. ``python main.py docs``
then generates the documentation's tables from them (``unmask.docs``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unmask.benchmark import BENCHMARK_KIND
from unmask.environment import missing_keys
from unmask.io import UnmaskError, atomic_write_text

PUBLISHED_DIR = Path("results") / "published"
"""Where published runs live, relative to the repository (committed: see .gitignore)."""

RUN_FILES: tuple[str, ...] = ("metrics.json", "tables.md")
"""What is copied from a run's folder: its figures and their tables, nothing large."""

RUN_EXTRAS: dict[str, str] = {"active_tests.json": "active/active_tests.json"}
"""Small results of other commands on a run's models, copied with it when the run has them (name in
the publication: path in the run's folder): the attack unit tests' summary (``python main.py
active-tests``)."""

BENCHMARK_FILE = "benchmark.json"
"""What a published benchmark record is called in its folder."""

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
"""A publication's name: lower-case letters, digits, '.', '_' and '-' (it names a folder and appears in
the documentation's markers)."""


class PublishError(UnmaskError, ValueError):
    """A source that cannot be published, or a published folder that cannot be read; the message
    names the file and what was expected."""


@dataclass(frozen=True)
class Publication:
    """One published run (``kind`` ``run``: ``data`` is its ``metrics.json``, with each of
    ``RUN_EXTRAS`` it has under its file's stem, e.g. ``active_tests``) or benchmark
    (``benchmark``: ``data`` is its record), in ``folder``."""

    name: str
    folder: Path
    kind: str
    data: Mapping[str, Any]

    @property
    def provenance(self) -> Mapping[str, Any]:
        return self.data.get("provenance") or {}


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise PublishError(f"{path} does not exist; expected {what}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PublishError(f"{path} is not valid JSON ({error}); expected {what}") from None
    if not isinstance(data, dict):
        raise PublishError(f"{path} holds a {type(data).__name__}; expected {what}")
    return data


def _check_provenance(path: Path, data: Mapping[str, Any]) -> None:
    missing = missing_keys(data.get("provenance"))
    if missing:
        raise PublishError(
            f"{path} records no provenance (it lacks {', '.join(missing)}): it was written by an earlier version of "
            "unmask, so its figures cannot name the code and machine that made them. Publish a run made by this "
            "version (metrics.json format 6 or later), or a benchmark record written with --json.")


def check_name(name: str) -> str:
    """``name`` when it can name a publication (``NAME_PATTERN``); else a ``PublishError``."""
    if not NAME_PATTERN.fullmatch(name or ""):
        raise PublishError(f"--name {name!r} cannot name a publication; expected lower-case letters, digits, '.', "
                           "'_' and '-' (at most 64), starting with a letter or digit, e.g. default or robust-fgsm")
    return name


def read_source(source: str | Path) -> tuple[str, dict[str, str]]:
    """(kind, {file name in the publication: its text}) of what ``source`` would publish: a
    finished run's folder (``RUN_FILES``) or a benchmark record (``BENCHMARK_FILE``); a
    ``PublishError`` names what is missing."""
    source = Path(source)
    if source.is_dir():
        metrics_path = source / "metrics.json"
        metrics = _read_json(metrics_path, "the figures of a finished run (python main.py writes metrics.json last)")
        _check_provenance(metrics_path, metrics)
        tables = source / "tables.md"
        if not tables.is_file():
            raise PublishError(f"{tables} does not exist; expected the run's tables beside its metrics.json")
        files = {name: (source / name).read_text(encoding="utf-8") for name in RUN_FILES}
        for name, path in RUN_EXTRAS.items():
            if (source / path).is_file():
                _check_provenance(source / path, _read_json(source / path, "a summary with its provenance"))
                files[name] = (source / path).read_text(encoding="utf-8")
        return "run", files
    if source.suffix == ".json" and source.is_file():
        record = _read_json(source, "a benchmark record (bench/*.py --json PATH)")
        if record.get("kind") != BENCHMARK_KIND:
            raise PublishError(f"{source} is not a benchmark record (its kind is {record.get('kind')!r}); expected "
                               "the output of bench/*.py --json PATH, or a run's folder")
        _check_provenance(source, record)
        return "benchmark", {BENCHMARK_FILE: source.read_text(encoding="utf-8")}
    raise PublishError(f"{source} is neither a run's folder (with metrics.json and tables.md) nor a benchmark "
                       "record (bench/*.py --json PATH)")


def read_metrics_of(run: str | Path, *, published: str | Path = PUBLISHED_DIR) -> dict[str, Any]:
    """The ``metrics.json`` of ``run``: a finished run's folder, else a published run's name; a
    ``PublishError`` names what is missing (a run without provenance cannot be cited)."""
    folder = Path(run)
    if not folder.is_dir():
        if not NAME_PATTERN.fullmatch(str(run)):
            raise PublishError(f"{run} is neither a run's folder nor a publication's name")
        folder = Path(published) / str(run)
    path = folder / "metrics.json"
    metrics = _read_json(path, "a finished run's figures (a run folder, or the name of a published run)")
    _check_provenance(path, metrics)
    return metrics


def publish(source: str | Path, name: str, *, published: str | Path = PUBLISHED_DIR) -> Publication:
    """Copy ``source`` (a finished run's folder, or a benchmark record) to ``published/name/``,
    replacing an earlier publication of that name (git keeps the old one)."""
    check_name(name)
    kind, files = read_source(source)
    folder = Path(published) / name
    if Path(source).resolve() == folder.resolve():
        raise PublishError(f"{source} is already the publication {name!r}")
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (*RUN_FILES, *RUN_EXTRAS, BENCHMARK_FILE):
        if stale not in files:
            (folder / stale).unlink(missing_ok=True)
    for file_name, text in files.items():
        atomic_write_text(folder / file_name, text)
    return read_publication(folder)


def read_publication(folder: str | Path) -> Publication:
    """The publication in ``folder`` (its name is the folder's)."""
    folder = Path(folder)
    if (folder / BENCHMARK_FILE).is_file():
        return Publication(folder.name, folder, "benchmark",
                           _read_json(folder / BENCHMARK_FILE, "a published benchmark record"))
    data = _read_json(folder / "metrics.json", "a published run's figures")
    for name in RUN_EXTRAS:  # beside the run's own sections, by their file's stem: active_tests
        if (folder / name).is_file():
            data[Path(name).stem] = _read_json(folder / name, "a published summary")
    return Publication(folder.name, folder, "run", data)


def read_publications(published: str | Path = PUBLISHED_DIR) -> dict[str, Publication]:
    """Every publication under ``published``, by name (none when the folder does not exist)."""
    published = Path(published)
    if not published.is_dir():
        return {}
    return {folder.name: read_publication(folder) for folder in sorted(published.iterdir()) if folder.is_dir()}

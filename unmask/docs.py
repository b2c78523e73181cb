"""The documentation's figures, generated from the published runs (``results/published/``).

Every result table in ``README.md`` and ``docs/*.md`` sits between markers naming a published
run (or benchmark) and one of its tables, and every figure prose cites sits between value
markers naming a path into its ``metrics.json``::

    <!-- table: default/accuracy -->
    (generated: a caption naming the run, its code, date and machine, then the table)
    <!-- end table -->

    UnMask gains <!-- value: default/summary.mean_gain_over_adv_training as points -->+44.5<!-- end value --> points.

``python main.py docs`` rewrites what is between the markers from the data (markers inside fenced
code blocks are left alone: they document the syntax); ``python main.py docs
--check`` (and the test suite) reports every block that differs from what the data generates and
every marker that names a publication, table or value that does not exist. The run's tables are
made by the same formatters as its ``tables.md`` (``unmask.report``), so the two cannot disagree.

Table names of a published run (``RUN_TABLES``): accuracy, detection, k, stages, threat-models,
white-box, comparisons, strongest, adaptive-attacks, threat-model-scopes, robust, budget, ladder,
active-tests, active-setups. A published benchmark's tables are those its record holds
(``bench/*.py --json``).

Value paths: keys separated by dots; a list element by its index or by ``[key=value,...]`` (the
first element whose fields match, e.g. ``adaptive_summary[defense=UnMask,epsilon=8,over=all
attacks].accuracy_system``); ``@machine``, ``@code`` and ``@environment`` give the run's machine,
code and both in words. Formats (``as name``): percent, signed-percent, points, number, integer,
seconds, minutes, text, date.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unmask.attacks.adaptive.active.table import active_setups_table, active_tests_table
from unmask.environment import describe_code, describe_environment, describe_machine
from unmask.io import UnmaskError, atomic_write_text
from unmask.publish import PUBLISHED_DIR, Publication, read_publications
from unmask.report import (
    accuracy_table,
    adaptive_attacks_table,
    budget_note,
    comparisons_table,
    detection_table,
    format_ladder,
    format_robust,
    k_table,
    strongest_attacks_table,
    threat_model_scopes_table,
    threat_models_table,
    timing_table,
)

TABLE_BLOCK = re.compile(r"<!-- table: (?P<ref>[^\n]*?) -->\n(?P<body>(?:(?!<!-- table: ).)*?)<!-- end table -->",
                         re.S)
VALUE_BLOCK = re.compile(r"<!-- value: (?P<ref>[^\n]+?)(?: as (?P<format>[a-z-]+))? -->(?P<body>[^\n]*?)"
                         r"<!-- end value -->")
"""``<!-- value: NAME/PATH [as FORMAT] -->...<!-- end value -->`` on one line (no ``|``: it may sit in a table)."""
OPENINGS = re.compile(r"<!-- (?P<kind>table|value): ")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
"""A fenced code block: markers shown inside one (to document the syntax) are not generated."""


class DocsError(UnmaskError, ValueError):
    """A marker that cannot be generated: an unknown publication, table or value."""


# --- what a marker can name ---------------------------------------------------------------------


def _fprs(metrics: Mapping[str, Any]) -> str:
    rates = sorted({row["fpr_target"] for row in metrics.get("adaptive_summary") or [] if row.get("fpr_target")})
    return " and ".join(f"{100 * rate:g}%" for rate in rates) or "?"


def _gray_box_note(metrics: Mapping[str, Any]) -> str:
    return (f"Gray-box: the attacker knows M only; {metrics['clean']['n_images']} test images; UnMask's figure is "
            "its re-classification of every image.")


def _detection_note(metrics: Mapping[str, Any]) -> str:
    return (f"Gray-box; detection threshold fixed on clean validation images at "
            f"{100 * metrics['thresholds']['target_fpr']:g}% FPR.")


def _threat_note(metrics: Mapping[str, Any]) -> str:
    images = max((row["n_images"] for row in metrics["adaptive_summary"]), default=0)
    return (f"White-box (the attacker knows M, K, the part table and the thresholds) unless a row says otherwise; "
            f"detection threshold fixed on clean validation images at {_fprs(metrics)} FPR; a sample of {images} "
            "test images M gets right; each figure the per-image worst case over every attack at that budget or a "
            "smaller one, [95% interval].")


def _without_heading(text: str) -> str:
    """A section without its Markdown heading (the documentation has its own)."""
    lines = text.splitlines()
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)
    return "\n".join(lines) + "\n"


def _active_note(metrics: Mapping[str, Any]) -> str:
    summary = metrics["active_tests"]
    return (f"Attack unit tests (Zimmermann et al. 2022) of the white-box attacks on this run's models, "
            f"{summary.get('n_images', '?')} images of its white-box sample; each row's FPR is the detection "
            "threshold's, fixed on clean validation images.")


@dataclass(frozen=True)
class RunTable:
    """A table a published run generates: ``render`` (a formatter of ``unmask.report``) of its
    ``metrics.json``, which needs the sections ``needs``; ``note`` adds to the caption what the
    figures assume (threat model, threshold, images); ``made_by``: the section whose provenance
    the caption names, when another command than the run made it (None: the run's)."""

    render: Callable[[Mapping[str, Any]], str]
    needs: tuple[str, ...]
    note: Callable[[Mapping[str, Any]], str] | None = None
    summary: str = ""
    made_by: str | None = None


RUN_TABLES: dict[str, RunTable] = {
    "accuracy": RunTable(accuracy_table, ("clean", "attacks", "summary"), _gray_box_note,
                         "accuracy of undefended M, adversarial training and UnMask per gray-box attack vector"),
    "detection": RunTable(detection_table, ("attacks", "thresholds"), _detection_note,
                          "the original's detection protocol per gray-box vector: AUC, TPR and FPR at the threshold"),
    "k": RunTable(k_table, ("k",), lambda m: "K (and the robust K) on the part extractor's test split.",
                  "K's COCO mAP and part-set precision and recall"),
    "stages": RunTable(timing_table, ("timing",),
                       lambda m: "Wall-clock seconds per stage; a stage that reused saved results takes seconds.",
                       "seconds per stage of the run"),
    "threat-models": RunTable(functools.partial(threat_models_table, note=False), ("adaptive_summary",), _threat_note,
                              "per budget, the baselines and each UnMask-like defense under its worst case"),
    "white-box": RunTable(functools.partial(threat_models_table, norms=("linf",), epsilons=(8.0, 16.0), note=False),
                          ("adaptive_summary",), _threat_note, "the threat-model table at L-inf 8 and 16"),
    "comparisons": RunTable(comparisons_table, ("adaptive_summary", "adaptive_comparisons"), _threat_note,
                            "each UnMask-like defense minus each baseline on the same images"),
    "strongest": RunTable(strongest_attacks_table, ("adaptive_summary",), _threat_note,
                          "the attack that did the most against each figure"),
    "adaptive-attacks": RunTable(adaptive_attacks_table, ("adaptive",), _threat_note,
                                 "every defense x threat model x attack x budget row"),
    "threat-model-scopes": RunTable(threat_model_scopes_table, ("adaptive_summary",), _threat_note,
                                    "UnMask's worst case per threat model"),
    "robust": RunTable(lambda m: _without_heading(format_robust(m)), ("k_robust", "defenses", "adaptive_summary"),
                       _threat_note, "UnMask-R: the robust K against adversarial training"),
    "budget": RunTable(budget_note, ("adaptive_ladder",), _threat_note,
                       "the white-box budget, and by how much a published ladder moved each figure"),
    "ladder": RunTable(lambda m: _without_heading(format_ladder(m)), ("adaptive_ladder", "adaptive_summary"),
                       _threat_note, "the budget ladder: each rung, each figure's curve and converged value"),
    "active-tests": RunTable(lambda m: active_tests_table(m["active_tests"]), ("active_tests",), _active_note,
                             "the attack unit tests: per test, attack and budget, the share passed",
                             made_by="active_tests"),
    "active-setups": RunTable(lambda m: active_setups_table(m["active_tests"]), ("active_tests",), _active_note,
                              "the attack unit tests' setups: how each image was set up", made_by="active_tests"),
}
"""The tables of a published run, by the name markers give them."""


def caption(publication: Publication, note: str | None = None, *, made_by: str | None = None) -> str:
    """The one-line caption of a generated table: the publication, its run folder or command,
    code, date, machine and torch (of the section ``made_by`` when another command made it), and
    what the figures assume."""
    provenance = publication.provenance
    if made_by is not None:
        provenance = {"run": provenance.get("run"), **(publication.data[made_by].get("provenance") or {})}
    if publication.kind == "run":
        source = f"run `{publication.name}` (folder `{provenance.get('run', '?')}`)"
    else:
        source = f"benchmark `{publication.name}` (`{provenance.get('command', '?')}`)"
    return f"*{source[0].upper()}{source[1:]}: {describe_environment(provenance)}.{' ' + note if note else ''}*"


def _benchmark_table(record: Mapping[str, Any], name: str) -> str:
    table = record["tables"][name]
    columns = table["columns"]
    lines = [table["description"], "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table["rows"]:
        lines.append("| " + " | ".join(_cell(row[column]) for column in columns) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def render_table(publication: Publication, table: str) -> str:
    """The generated body of a ``table`` marker: the caption, then the table."""
    if publication.kind == "benchmark":
        tables = publication.data.get("tables") or {}
        if table not in tables:
            raise DocsError(f"benchmark {publication.name!r} has no table {table!r}; it has: "
                            f"{', '.join(tables) or 'none'}")
        return f"{caption(publication)}\n\n{_benchmark_table(publication.data, table)}"
    spec = RUN_TABLES.get(table)
    if spec is None:
        raise DocsError(f"unknown table {table!r} of run {publication.name!r}; expected one of: "
                        f"{', '.join(RUN_TABLES)}")
    missing = [key for key in spec.needs if not publication.data.get(key)]
    if missing:
        raise DocsError(f"run {publication.name!r} has no {', '.join(missing)} in its metrics.json, which the table "
                        f"{table!r} needs ({spec.summary})")
    metrics = publication.data
    return (f"{caption(publication, spec.note(metrics) if spec.note else None, made_by=spec.made_by)}\n\n"
            f"{spec.render(metrics).rstrip()}\n")


# --- values -------------------------------------------------------------------------------------

_SEGMENT = re.compile(r"(?P<key>[^\[\]]*)(?:\[(?P<where>[^\]]*)\])?")


def _segments(path: str) -> list[str]:
    """``a.b[x=0.1,y=z].c`` -> ``["a", "b[x=0.1,y=z]", "c"]`` (dots inside brackets kept)."""
    segments, depth, current = [], 0, ""
    for character in path:
        depth += {"[": 1, "]": -1}.get(character, 0)
        if character == "." and depth == 0:
            segments.append(current)
            current = ""
        else:
            current += character
    return [*segments, current]


def _matches(value: Any, wanted: str) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value) == wanted
    try:
        return math.isclose(float(wanted), value)
    except ValueError:
        return False


def lookup(data: Mapping[str, Any], path: str) -> Any:
    """The value at ``path`` in ``data`` (see the module's docstring); a ``DocsError`` names the
    first segment that does not exist."""
    value: Any = data
    for segment in _segments(path):
        parsed = _SEGMENT.fullmatch(segment)
        if parsed is None:
            raise DocsError(f"cannot read the path segment {segment!r}")
        key, where = parsed["key"], parsed["where"]
        try:
            if key:
                value = value[int(key)] if isinstance(value, list) else value[key]
            if where is not None:
                conditions = [condition.split("=", 1) for condition in where.split(",")]
                if any(len(condition) != 2 for condition in conditions):
                    raise DocsError(f"{segment!r}: expected [key=value,...]")
                value = next(item for item in value
                             if all(_matches(item.get(name), wanted) for name, wanted in conditions))
        except (KeyError, IndexError, TypeError, ValueError, StopIteration, AttributeError):
            raise DocsError(f"no value at {segment!r} of the path {path!r}") from None
    return value


VALUE_FORMATS: dict[str, Callable[[Any], str]] = {
    "percent": lambda v: f"{100 * v:.1f}",
    "signed-percent": lambda v: f"{100 * v:+.1f}",
    "points": lambda v: f"{v:+.1f}",
    "number": lambda v: f"{v:.3f}",
    "integer": lambda v: f"{round(v):,}",
    "seconds": lambda v: f"{v:,.0f}",
    "minutes": lambda v: f"{v / 60:.0f}",
    "text": str,
    "date": lambda v: str(v)[:10],
}
"""How a value marker shows its value (``as name``); without one, text as is and numbers by ``number``."""


def render_value(publication: Publication, path: str, value_format: str | None = None) -> str:
    """The generated text of a ``value`` marker."""
    describers = {"@machine": describe_machine, "@code": describe_code, "@environment": describe_environment}
    if path in describers:
        return describers[path](publication.provenance)
    value = lookup(publication.data, path)
    if value_format is None:
        value_format = "number" if isinstance(value, float) else "text"
    if value_format not in VALUE_FORMATS:
        raise DocsError(f"unknown value format {value_format!r}; expected one of: {', '.join(VALUE_FORMATS)}")
    if value is None or isinstance(value, Mapping | list):
        raise DocsError(f"the value at {path!r} of {publication.name!r} is {'null' if value is None else 'not one value'}")
    try:
        return VALUE_FORMATS[value_format](value)
    except (TypeError, ValueError):
        raise DocsError(f"the value at {path!r} ({value!r}) cannot be shown as {value_format}") from None


# --- markers in a file --------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """Something wrong with a marker: where (file and line) and what."""

    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def _publication(ref: str, publications: Mapping[str, Publication]) -> tuple[Publication, str]:
    name, slash, rest = ref.partition("/")
    if not slash or not rest:
        raise DocsError(f"marker {ref!r}: expected NAME/TABLE or NAME/PATH")
    if name not in publications:
        raise DocsError(f"no published run {name!r} in {PUBLISHED_DIR}/ (published: "
                        f"{', '.join(publications) or 'none'}); publish it with python main.py publish RUN_FOLDER "
                        f"--name {name}")
    return publications[name], rest


def regenerate(text: str, publications: Mapping[str, Publication], path: Path = Path("?")
               ) -> tuple[str, list[Problem], list[Problem]]:
    """``text`` with every table and value marker's content generated from ``publications``; the
    problems found (a marker that cannot be generated keeps its content), and the markers whose
    content the generation changed."""
    problems: list[Problem] = []
    changed: list[Problem] = []

    source = text  # the text the current substitution reads (values are read after the tables)

    def line_of(position: int) -> int:
        return source.count("\n", 0, position) + 1

    def fenced(match: re.Match[str]) -> bool:
        return any(start <= match.start() < end for start, end in fences)

    def table(match: re.Match[str]) -> str:
        if fenced(match):
            return match[0]
        try:
            publication, name = _publication(match["ref"], publications)
            body = render_table(publication, name)
        except DocsError as error:
            problems.append(Problem(path, line_of(match.start()), str(error)))
            return match[0]
        generated = f"<!-- table: {match['ref']} -->\n{body}\n<!-- end table -->"
        if generated != match[0]:
            changed.append(Problem(path, line_of(match.start()), f"the table {match['ref']} differs from what the "
                                   "published data generates (python main.py docs rewrites it)"))
        return generated

    def value(match: re.Match[str]) -> str:
        if fenced(match):
            return match[0]
        try:
            publication, value_path = _publication(match["ref"], publications)
            shown = render_value(publication, value_path, match["format"])
        except DocsError as error:
            problems.append(Problem(path, line_of(match.start()), str(error)))
            return match[0]
        suffix = f" as {match['format']}" if match["format"] else ""
        generated = f"<!-- value: {match['ref']}{suffix} -->{shown}<!-- end value -->"
        if generated != match[0]:
            changed.append(Problem(path, line_of(match.start()), f"the value {match['ref']} differs from what the "
                                   f"published data generates ({shown}; python main.py docs rewrites it)"))
        return generated

    fences = [match.span() for match in FENCE.finditer(text)]
    closed = {match.start() for pattern in (TABLE_BLOCK, VALUE_BLOCK) for match in pattern.finditer(text)}
    for opening in OPENINGS.finditer(text):
        if opening.start() not in closed and not fenced(opening):
            problems.append(Problem(path, line_of(opening.start()), f"a {opening['kind']} marker without its "
                                    f"<!-- end {opening['kind']} --> (a value marker must close on its line)"))
    source = TABLE_BLOCK.sub(table, text)
    fences = [match.span() for match in FENCE.finditer(source)]
    generated = VALUE_BLOCK.sub(value, source)
    return generated, sorted(problems, key=lambda p: p.line), sorted(changed, key=lambda p: p.line)


def documentation_files(root: str | Path = ".") -> list[Path]:
    """The files whose markers are generated: ``README.md`` and every ``docs/**/*.md``."""
    root = Path(root)
    return [path for path in [root / "README.md", *sorted((root / "docs").rglob("*.md"))] if path.is_file()]


@dataclass
class DocsReport:
    """What ``generate_docs`` did: the markers whose content differed from what the data
    generates (``changed``; their files, ``differing``, rewritten unless checking), and the
    markers that cannot be generated (``problems``)."""

    differing: list[Path] = field(default_factory=list)
    changed: list[Problem] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.changed and not self.problems


def generate_docs(root: str | Path = ".", *, published: str | Path | None = None, check: bool = False,
                  files: Sequence[Path] | None = None) -> DocsReport:
    """Generate every marker of the documentation under ``root`` from ``published`` (default:
    ``root/results/published``); with ``check``, write nothing and report each file whose
    generated content differs."""
    root = Path(root)
    publications = read_publications(root / PUBLISHED_DIR if published is None else published)
    report = DocsReport()
    for path in documentation_files(root) if files is None else files:
        text = path.read_text(encoding="utf-8")
        generated, problems, changed = regenerate(text, publications,
                                                  path.relative_to(root) if path.is_relative_to(root) else path)
        report.problems += problems
        report.changed += changed
        if generated != text:
            report.differing.append(path)
            if not check:
                atomic_write_text(path, generated)
    return report

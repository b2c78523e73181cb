"""The per-image worst cases over the attacks, their intervals, and the paired differences to the
baselines.

The worst case of a defense at a budget is taken per image over every attack at that budget or
a smaller one of the same norm (an image within L-inf 8 of the clean one is within 16), at
every rung of the budget ladder run (or up to a given rung: the ladder's curve), each figure
with a bootstrap 95% interval over the images; the paired differences set each UnMask-like
defense's figures beside each baseline's accuracy on the same images.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from unmask.evaluation import Outcomes, strongest, worst_case
from unmask.experiment.adaptive.defenses import CleanView
from unmask.experiment.adaptive.rows import FIGURES, Row, entry, figures
from unmask.experiment.plan import THREAT_MODELS
from unmask.metrics import bootstrap_rate

View = Callable[[Row], CleanView | None]
"""A row's defense's own view of the sample's clean images (None for M alone)."""


def clean_views(clean: Mapping[str, CleanView]) -> View:
    """``View`` of the defenses' clean views ``clean``; raises ``ValueError`` for an UnMask-like
    defense without one."""

    def view(row: Row) -> CleanView | None:
        if row.judged.detection is None:
            return None  # M alone: nothing is flagged, clean or attacked
        if row.defense not in clean:
            raise ValueError(f"{row.defense}: no clean detection scores of its own pipeline were given")
        return clean[row.defense]

    return view


def summarise(rows: list[Row], labels: np.ndarray, clean: Mapping[str, CleanView], *, seed: int) -> dict[str, Any]:
    """The ``metrics.json`` sections of the rows of a sample with these ``labels`` (``clean``:
    each UnMask-like defense's own view of the sample's clean images): one entry per row, the
    per-image worst cases (over every rung of the ladder run) and the paired differences to the
    baselines (bootstrap intervals drawn with ``seed``)."""
    view = clean_views(clean)
    entries = []
    for row in rows:
        own = view(row)
        entries.append(entry(row, labels[row.positions], None if own is None else own.detection[row.positions],
                             None if own is None else own.parts[row.positions]))
    summary, comparisons = worst_cases([row for row in rows if row.in_worst_case], labels, view, seed=seed)
    return {"adaptive": entries, "adaptive_summary": summary, "adaptive_comparisons": comparisons}


def budgets(rows: Sequence[Row]) -> list[tuple[float, str, float]]:
    """Every (FPR, norm, epsilon) the rows cover, in order."""
    return sorted({(row.fpr, row.norm.name, row.epsilon) for row in rows})


def worst_outcomes(rows: Sequence[Row], labels: np.ndarray, view: View, key: tuple[float, str, float], *,
                   rung: int | None = None) -> dict[str, dict[str, Outcomes]]:
    """Per defense, each of its attacks' outcomes over the whole sample at ``key`` (FPR, norm,
    epsilon): the rows at that FPR and norm at the budget or a smaller one (named
    ``attack:epsilon`` when smaller), at ``rung`` of the ladder or a smaller one (None: every
    rung), keyed by "<threat model> <attack>"."""
    fpr, norm, epsilon = key
    named: dict[str, dict[str, Outcomes]] = {}
    for row in rows:
        if (row.fpr, row.norm.name) != (fpr, norm) or row.epsilon > epsilon or (rung is not None and row.rung > rung):
            continue
        own = view(row)
        name = f"{row.threat_model} {row.attack}" + ("" if row.epsilon == epsilon else f":{row.epsilon:g}") \
            + ("" if row.rung == 1 else f"@x{row.rung}")
        named.setdefault(row.defense, {})[name] = row.on_the_sample(labels, None if own is None else own.detection)
    return named


def worst_cases(rows: list[Row], labels: np.ndarray, view: View, *, seed: int
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per false-positive rate, norm, budget and defense: the per-image worst case over every
    attack run there (every threat model: the headline) and over each threat model's attacks;
    and, over every attack, each UnMask-like defense's figures minus each baseline's accuracy on
    the same images. ``view(row)``: the row's defense's ``CleanView`` (None for M alone)."""
    summary, comparisons = [], []
    for key in budgets(rows):
        headline: dict[str, Outcomes] = {}
        for defense, named in worst_outcomes(rows, labels, view, key).items():
            scopes = [("all attacks", named)] + [(model, {name: outcome for name, outcome in named.items()
                                                          if name.split(" ")[0] == model}) for model in THREAT_MODELS]
            for scope, scoped in scopes:
                if not scoped:
                    continue
                worst = worst_case(list(scoped.values()))
                if scope == "all attacks":
                    headline[defense] = worst
                values, intervals = figures(worst, lambda array: bootstrap_rate(array, seed=seed))
                summary.append({
                    "fpr_target": key[0], "norm": key[1], "epsilon": key[2], "defense": defense, "over": scope,
                    "attacks": list(scoped), "n_images": int(len(labels)), **values, "intervals": intervals,
                    "strongest": {FIGURES[figure]: strongest(scoped, figure) for figure in FIGURES
                                  if getattr(worst, figure) is not None},
                })
        comparisons += paired_differences(key, headline, seed=seed)
    return summary, comparisons


def paired_differences(key: tuple[float, str, float], headline: dict[str, Outcomes], *,
                       seed: int) -> list[dict[str, Any]]:
    """Each UnMask-like defense's robust accuracy with detection and its deployed decision's
    accuracy minus each baseline's accuracy, per image on the same images (paired bootstrap);
    ``significant`` when the 95% interval excludes 0."""
    entries = []
    for defense, outcome in headline.items():
        if outcome.reclassification is None:
            continue  # a baseline, not UnMask
        for baseline, other in headline.items():
            if other.reclassification is not None:
                continue
            for figure in ("handled", "system"):
                difference = bootstrap_rate(getattr(outcome, figure).astype(float) - other.m.astype(float), seed=seed)
                entries.append({"fpr_target": key[0], "norm": key[1], "epsilon": key[2], "defense": defense,
                                "baseline": baseline, "figure": FIGURES[figure], "difference": difference.value,
                                "interval": [difference.low, difference.high],
                                "significant": bool(difference.low > 0 or difference.high < 0)})
    return entries

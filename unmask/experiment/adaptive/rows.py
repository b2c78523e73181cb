"""One row of the threat-model table: a defense x threat model x attack x budget x rung x
false-positive rate, the hard pipeline's verdicts on the images it attacked, and how it is
written out (``entry``: its figures with Wilson 95% intervals, K's parts against the clean ones).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from unmask.attacks import Norm
from unmask.evaluation import Outcomes, attack_outcomes
from unmask.metrics import rate
from unmask.train.part_extractor import part_set_precision_recall

FIGURES: dict[str, str] = {
    "evaded": "success_rate", "handled": "robust_accuracy_with_detection", "reclassification": "accuracy_unmask",
    "system": "accuracy_system", "m": "accuracy_m",
}
"""Each figure of ``Outcomes`` and its key in ``metrics.json``."""

HEADLINE_FIGURES: dict[bool, tuple[str, ...]] = {
    True: ("evaded", "handled", "reclassification", "system"),
    False: ("m",),
}
"""The headline figures of an UnMask-like defense (True) and of M alone (False, where every
other figure is M's accuracy or its complement)."""


@dataclass(frozen=True)
class Judged:
    """The hard pipeline's verdict on the attacked versions of the covered images, and what the
    attack itself reports (``goal``: its own aim reached; ``distance``: for minimisation
    attacks; ``seconds``: each image's share of its batch's attack time, when it was computed).
    A defense that is M alone has only ``m``. Under a deployed rule other than the paper's
    (``unmask.rules``), ``flagged`` is that rule's flag, ``detection`` its score and ``unmask``
    its re-classification."""

    m: np.ndarray
    parts: np.ndarray | None = None
    detection: np.ndarray | None = None
    unmask: np.ndarray | None = None
    goal: np.ndarray | None = None
    distance: np.ndarray | None = None
    seconds: np.ndarray | None = None
    flagged: np.ndarray | None = None


@dataclass
class Row:
    """One defense x threat model x attack x budget x false-positive rate, at one ``rung`` of the
    budget ladder (1: the run's own budget), judged on the images of the adaptive sample it
    covers (``positions``; the label-only attacks run on a sub-sample and stay out of the worst
    cases; a later attack skips the images an earlier one broke). Under a deployed rule other
    than the paper's, ``clean_flagged`` is that rule's flag of every clean image of the sample at
    this FPR (its threshold alone cannot say it) and ``reject`` its variant."""

    defense: str
    threat_model: str
    attack: str
    norm: Norm
    epsilon: float
    fpr: float
    threshold: float | None
    judged: Judged
    positions: np.ndarray
    in_worst_case: bool = True
    rung: int = 1
    clean_flagged: np.ndarray | None = None
    reject: bool = False

    def outcomes(self, labels: np.ndarray, clean_detection: np.ndarray | None) -> Outcomes:
        """Per covered image, how each figure fared (``labels`` and ``clean_detection``, the
        defense's own detection scores of the clean images: of the covered images; None for M alone)."""
        judged = self.judged
        if judged.detection is None:
            return attack_outcomes(labels, judged.m)
        if judged.flagged is not None:  # a deployed rule other than the paper's
            return attack_outcomes(labels, judged.m, detection=judged.detection, reclassified=judged.unmask,
                                   flagged=judged.flagged, clean_flagged=self.clean_flagged[self.positions],
                                   reject=self.reject)
        return attack_outcomes(labels, judged.m, detection=judged.detection, reclassified=judged.unmask,
                               threshold=self.threshold, clean_detection=clean_detection)

    def on_the_sample(self, labels: np.ndarray, clean_detection: np.ndarray | None) -> Outcomes:
        """The row's outcomes over the whole sample (``labels``, ``clean_detection``: of every
        image of the sample): images it did not attack count as unbroken by it."""
        covered = self.outcomes(labels[self.positions],
                                None if clean_detection is None else clean_detection[self.positions])
        full = {}
        for figure in Outcomes.FIGURES:
            values = getattr(covered, figure)
            if values is None:
                full[figure] = None
                continue
            whole = np.full(len(labels), figure != "evaded")
            whole[self.positions] = values
            full[figure] = whole
        return Outcomes(**full)

    @property
    def seconds(self) -> float | None:
        """The attack's seconds on the images it covered, when every batch recorded them."""
        seconds = self.judged.seconds
        return None if seconds is None else float(np.sum(seconds))


def broken(outcome: Outcomes, aims: str) -> np.ndarray:
    """Per image, whether the output ``aims`` names (a figure of ``Outcomes``) is broken:
    evaded, or that figure wrong."""
    return outcome.evaded if aims == "evaded" else ~getattr(outcome, aims)


def figures(outcome: Outcomes, interval: Callable[[np.ndarray], Any]) -> tuple[dict[str, float | None],
                                                                              dict[str, list[float]]]:
    """Each figure of ``outcome`` by its ``metrics.json`` key, and its ``interval`` (a ``Rate``)."""
    values, intervals = {}, {}
    for figure, key in FIGURES.items():
        array = getattr(outcome, figure)
        if array is None:
            values[key] = None
            continue
        measured = interval(array)
        values[key] = measured.value
        intervals[key] = [measured.low, measured.high]
    return values, intervals


def entry(row: Row, labels: np.ndarray, clean_detection: np.ndarray | None,
          clean_parts: np.ndarray | None) -> dict[str, Any]:
    """The row as ``metrics.json``'s ``adaptive`` section keeps it (``labels``, ``clean_*``: of
    the images it covered): its figures with Wilson intervals, K's parts against the clean ones
    and the attack's own goal rate."""
    values, intervals = figures(row.outcomes(labels, clean_detection), rate)
    written = {
        "defense": row.defense, "threat_model": row.threat_model, "attack": row.attack, "norm": row.norm.name,
        "epsilon": row.epsilon, "fpr_target": row.fpr, "rung": row.rung,
        "detection_threshold": None if row.threshold is None else float(row.threshold),
        "n_images": int(len(labels)), "in_worst_case": row.in_worst_case, **values, "intervals": intervals,
    }
    if row.judged.parts is not None:
        parts = part_set_precision_recall(row.judged.parts, clean_parts)
        written.update(part_precision=parts["part_precision"], part_recall=parts["part_recall"],
                       parts_changed=float((row.judged.parts != clean_parts).sum(axis=1).mean()) if len(labels)
                       else math.nan)
    if row.judged.goal is not None:
        written["goal_rate"] = float(row.judged.goal.mean()) if len(labels) else math.nan
    return written

"""The budget ladder's bookkeeping: each headline figure's curve over the rungs, the stopping
rule, and, for a run at one rung, the offsets a published ladder measured on the same models.

A figure has converged at a rung's budget when no larger rung moved it from there by more than
``BudgetLadder.tolerance`` images of the sample (2 points on 100 images) at that FPR, norm and
epsilon (so, at the least, the last doubling moved it by at most that); the ladder stops after
the rung at which every headline figure of every defense has converged
(``every_figure_converged``), and otherwise reports "not converged at the top rung" beside the
figure. The converged value is the figure at the last rung run (the strongest
attacker the ladder had), with its bootstrap 95% interval.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unmask.attacks import AttackVector
from unmask.attacks.adaptive import ReclassifyAttack
from unmask.evaluation import worst_case
from unmask.experiment.adaptive.defenses import UNMASK_R, Defense
from unmask.experiment.adaptive.rows import FIGURES, HEADLINE_FIGURES, Row
from unmask.experiment.adaptive.worst_cases import View, budgets, worst_outcomes
from unmask.experiment.plan import AdaptiveSpec, BudgetLadder
from unmask.metrics import bootstrap_rate
from unmask.provenance import digest
from unmask.report import ladder_timing_key

CONVERGED_COMMAND = "python main.py --profile converged"
"""The ladder on the default run's models (white-box, L-inf 8 and 16, 10% FPR, 100 images)."""
CONVERGED_ROBUST_COMMAND = ("python main.py --profile robust --adaptive-ladder 1,2,4,8 --adaptive-fprs 0.1 "
                            "--adaptive-attacks joint_linf:8,reclassify_linf:8,transplant_linf:8,joint_linf:16,"
                            "reclassify_linf:16,transplant_linf:16")
"""The same for the robust profile's defenses (UnMask-R and UnMask-R + adv. M beside them)."""


def converged_from(counts: Sequence[int], tolerance: int) -> int | None:
    """The index of the first rung from which no larger rung moved a figure (its ``counts`` of
    images, one per rung) by more than ``tolerance`` images: the budget at which it had
    converged. None when the last doubling moved it by more (not converged at the top rung), or
    there was none (one rung)."""
    for first in range(len(counts) - 1):
        if all(abs(count - counts[first]) <= tolerance for count in counts[first + 1:]):
            return first
    return None


def _headline_arrays(rows: Sequence[Row], labels: np.ndarray, view: View, rungs: Sequence[int]
                     ) -> dict[tuple[tuple[float, str, float], str, str], list[np.ndarray]]:
    """Per (FPR, norm, epsilon), defense and headline figure, the per-image worst case at each
    of ``rungs`` (over the rows at that rung or a smaller one)."""
    arrays: dict[tuple[tuple[float, str, float], str, str], list[np.ndarray]] = {}
    in_worst_case = [row for row in rows if row.in_worst_case]
    for key in budgets(in_worst_case):
        for rung in rungs:
            for defense, named in worst_outcomes(in_worst_case, labels, view, key, rung=rung).items():
                worst = worst_case(list(named.values()))
                for figure in HEADLINE_FIGURES[worst.reclassification is not None]:
                    arrays.setdefault((key, defense, figure), []).append(getattr(worst, figure))
    return arrays


def every_figure_converged(rows: Sequence[Row], labels: np.ndarray, view: View, rungs: Sequence[int], *,
                           tolerance: int) -> bool:
    """The stopping rule: after ``rungs`` (run so far, at least two), whether every headline
    figure of every defense, at every FPR and budget, has converged (``converged_from``)."""
    return all(converged_from([int(array.sum()) for array in curve], tolerance) is not None
               for curve in _headline_arrays(rows, labels, view, rungs).values())


def curves(rows: Sequence[Row], labels: np.ndarray, view: View, rungs: Sequence[int], *, tolerance: int,
           seed: int) -> list[dict[str, Any]]:
    """Each headline figure's curve over ``rungs``: per rung its value, bootstrap 95% interval
    and count of images; whether it converged, from which rung, and its converged value (at the
    last rung) with its interval."""
    entries = []
    for ((fpr, norm, epsilon), defense, figure), arrays in _headline_arrays(rows, labels, view, rungs).items():
        points = []
        for rung, array in zip(rungs, arrays, strict=True):
            measured = bootstrap_rate(array, seed=seed)
            points.append({"rung": rung, "value": measured.value, "interval": [measured.low, measured.high],
                           "count": int(array.sum())})
        first = converged_from([point["count"] for point in points], tolerance)
        entries.append({"fpr_target": fpr, "norm": norm, "epsilon": epsilon, "defense": defense,
                        "figure": FIGURES[figure], "n_images": int(len(labels)), "curve": points,
                        "converged": None if len(rungs) < 2 else first is not None,
                        "converged_at": None if first is None else rungs[first],
                        "value": points[-1]["value"], "interval": points[-1]["interval"]})
    return entries


def rung_budgets(spec: AdaptiveSpec, rung: int, vectors: Sequence[AttackVector], classes: int
                 ) -> dict[str, dict[str, Any]]:
    """Each laddered attack's budget at ``rung``: steps, runs per target, targets (0: every
    other class), for the re-classification attack its losses, and the attack's revision when it
    has one (a published ladder measured with an earlier revision of an attack is not the same
    budget: its offsets do not apply; revision 0 is left out, as in saved results' keys)."""
    budget = {}
    for vector in vectors:
        attack = vector.attack.attack_class
        chooses_losses = issubclass(attack, ReclassifyAttack)
        options = spec.ladder.options(spec.options, rung, targeted=attack.targeted, chooses_losses=chooses_losses,
                                      classes=classes)
        budget[vector.name] = {"steps": options.steps, "restarts": options.restarts,
                               "targets": options.targets if attack.targeted else None,
                               **({"reclassify_losses": list(options.reclassify_losses)} if chooses_losses else {}),
                               **({"revision": attack.revision} if attack.revision else {})}
    return budget


def fingerprints(sample_fingerprint: Any, defenses: Sequence[Defense]) -> dict[str, Any]:
    """What a ladder's figures are comparable by: the adaptive sample (the test and validation
    images' contents and which images were drawn) and each defense's M and K."""
    return {"sample": digest(sample_fingerprint), "defenses": {defense.name: defense.fingerprint
                                                               for defense in defenses}}


def ladder_section(spec: AdaptiveSpec, rows: Sequence[Row], labels: np.ndarray, view: View, rungs: Sequence[int],
                   *, laddered: Sequence[AttackVector], classes: int, sample_fingerprint: Any,
                   defenses: Sequence[Defense], seed: int) -> tuple[dict[str, Any], dict[str, float]]:
    """``metrics.json``'s ``adaptive_ladder``: the rungs asked for and run (each with its
    doublings, every laddered attack's budget and the attack x image pairs it ran), why the
    ladder stopped, the figures' curves, and the fingerprints a run at one rung matches a
    published ladder by; and, for ``timing``, each rung's seconds: its attacks' time when they
    were computed, summed over their batches (``rung_timing``; left out when a saved result
    predates the record; ``ladder_timing_key``)."""
    ladder = spec.ladder
    laddered_names = {vector.name for vector in laddered}
    rung_entries, timing = [], {}
    for rung in rungs:
        # M alone's rows are shared by every FPR: each attack once
        own = list({id(row.judged): row for row in rows if row.rung == rung and row.attack in laddered_names}.values())
        seconds = [row.seconds for row in own]
        rung_entries.append({"rung": rung, "doublings": list(ladder.doublings(rung)),
                             "budget": rung_budgets(spec, rung, laddered, classes),
                             "attacked": int(sum(len(row.positions) for row in own))})
        if all(s is not None for s in seconds):
            timing[ladder_timing_key(rung)] = float(sum(seconds))
    stopped = "one rung" if len(ladder.rungs) == 1 else "converged early" if len(rungs) < len(ladder.rungs) \
        else "top rung"
    section = {"rungs_requested": list(ladder.rungs), "growth": list(ladder.growth),
               "tolerance_images": ladder.tolerance, "rungs": rung_entries, "stopped": stopped,
               "fingerprints": fingerprints(sample_fingerprint, defenses),
               "figures": curves(rows, labels, view, rungs, tolerance=ladder.tolerance, seed=seed)}
    return section, timing


# --- a run at one rung: the offsets a published ladder measured on the same models ---------------


def published_ladders(folder: Path | None) -> list[tuple[str, dict[str, Any]]]:
    """The published runs under ``folder`` (``<folder>/<name>/metrics.json``) whose ladder ran
    more than one rung, by name; unreadable files are skipped (named on the console by the caller)."""
    if folder is None or not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*/metrics.json")):
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        ladder = metrics.get("adaptive_ladder") if isinstance(metrics, dict) else None
        if isinstance(ladder, dict) and len(ladder.get("rungs", [])) > 1:
            found.append((path.parent.name, ladder))
    return found


def offsets(ours: dict[str, Any], ladder: BudgetLadder) -> dict[str, Any]:
    """For a run at one rung (``ours``: its ``adaptive_ladder`` section): by how much a published
    ladder on the same sample, defenses (M's and K's fingerprints) and first-rung budget moved
    each of this run's headline figures, from its first rung to its last; the first published
    run (by name) that matches any defense. Without one, the command that would measure it."""
    robust = UNMASK_R in ours["fingerprints"]["defenses"]
    command = CONVERGED_ROBUST_COMMAND if robust else CONVERGED_COMMAND
    for name, published in published_ladders(ladder.published):
        if (published.get("fingerprints", {}).get("sample") != ours["fingerprints"]["sample"]
                or published["rungs"][0].get("budget") != ours["rungs"][0]["budget"]):
            continue
        theirs = published["fingerprints"].get("defenses", {})
        same = {defense for defense, fingerprint in ours["fingerprints"]["defenses"].items()
                if theirs.get(defense) == fingerprint}
        if not same:
            continue
        measured = {(e["fpr_target"], e["norm"], e["epsilon"], e["defense"], e["figure"]): e
                    for e in published.get("figures", []) if e["defense"] in same}
        figures = []
        for figure in ours["figures"]:
            key = (figure["fpr_target"], figure["norm"], figure["epsilon"], figure["defense"], figure["figure"])
            found = measured.get(key)
            if found is None:
                continue
            first, last = found["curve"][0], found["curve"][-1]
            figures.append({"fpr_target": key[0], "norm": key[1], "epsilon": key[2], "defense": key[3],
                            "figure": key[4], "this_run": figure["value"], "first_rung": first["value"],
                            "top_rung": last["rung"], "ladder": last["value"], "interval": last["interval"],
                            "moved": _difference(last["value"], first["value"]),
                            "converged": found.get("converged"), "converged_at": found.get("converged_at")})
        return {"published": name, "defenses": sorted(same), "figures": figures, "command": command}
    return {"published": None, "defenses": [], "figures": [], "command": command}


def _difference(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return None
    return a - b

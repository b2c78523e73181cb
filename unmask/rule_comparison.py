"""The deployed decision rules side by side (``python main.py compare-rules``).

Each rule is its own run (``--decision-rule``, ``--flagged-decision``; docs/unmask-r.md "The
comparison"), on the same models, sample and thresholds' false-positive rate. This gathers, from
their ``metrics.json``, per rule and UnMask-like defense: the clean cost (M's, the
re-classification's and the deployed decision's accuracy, the share of clean test images
flagged) and the rule's ceiling (``unflagged_wrong_class``: the share of the sample on which
another class passes the rule with K's clean parts, which no K can defend); and, per defense the
run attacked and budget, the worst-case white-box figures with how the budget ladder left them
(converged from which rung, or not) and their paired differences to adversarial training.

The result is a benchmark-style record (``unmask.benchmark``: tables and values, published with
``python main.py publish``) whose ``runs`` table names the run (code, machine) behind each
rule's figures, and a figure of the defense every run attacked. It reads published figures and
computes nothing new: a rule's claim is only as good as the ladder of its own run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402

from unmask.benchmark import BenchmarkRecord  # noqa: E402
from unmask.environment import describe_environment  # noqa: E402
from unmask.io import UnmaskError  # noqa: E402
from unmask.report import save_figure, signed_points, with_interval  # noqa: E402

__all__ = ["BASELINE", "BAR", "compare_rules", "plot_rules", "rule_label", "value_key"]

BASELINE = "adversarial training"
"""What every rule is compared with: the adversarially trained M alone."""

PAPER_UNMASK = "UnMask"
"""Whose clean deployed decision (under the paper's rule) a rule's clean cost is measured against."""

BAR = {"gain": 0.10, "clean_points": 0.03}
"""The issue's bar: a part-based defense at least 10 points above adversarial training (interval
above zero) at L-inf 8, its clean deployed decision within 3 points of UnMask's."""

FIGURES = {"robust_accuracy_with_detection": "robust acc. w/ det.", "accuracy_system": "system acc."}
"""The white-box figures compared, and their names in tables."""

SHORT = {"robust_accuracy_with_detection": "robust w/ det.", "accuracy_system": "system"}


def value_key(defense: str) -> str:
    """A defense's key in the record's values, a path segment the documentation's markers can
    name: "UnMask-R + adv. M" -> "unmask-r-adv-m" (as in the run's file names)."""
    return re.sub(r"[^a-z0-9]+", "-", defense.lower()).strip("-")


def rule_label(metrics: Mapping[str, Any]) -> str:
    """A run's deployed decision: ``paper``, or the rule's name, ``+reject`` for its reject variant."""
    for entry in metrics.get("defenses") or []:
        record = entry.get("decision_rule")
        if record:
            return f"{record['rule']}+reject" if record.get("reject") else str(record["rule"])
    return "paper"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _points(value: float | None, interval: Sequence[float] | None) -> str:
    return "n/a" if value is None or not interval else signed_points(value, interval)


def _attacked(metrics: Mapping[str, Any]) -> list[str]:
    """The UnMask-like defenses the run's white-box attacks aimed at (those with white-box rows)."""
    alone = {BASELINE, "undefended M"}
    return list(dict.fromkeys(entry["defense"] for entry in metrics.get("adaptive") or []
                              if entry.get("threat_model") == "white-box" and entry["defense"] not in alone))


def _clean_rows(label: str, metrics: Mapping[str, Any], fpr: float, reference: float | None) -> list[dict[str, Any]]:
    ceilings = {(entry["defense"], entry["fpr_target"]): entry for entry in metrics.get("unflagged_wrong_class") or []}
    rows = []
    for entry in metrics.get("defenses") or []:
        if entry.get("fpr_target") != fpr or entry.get("accuracy_unmask") is None:
            continue
        ceiling = ceilings.get((entry["defense"], fpr), {})
        system = entry["accuracy_system"]
        rows.append({"rule": label, "defense": entry["defense"], "M": _percent(entry["accuracy_m"]),
                     "re-classification": _percent(entry["accuracy_unmask"]),
                     "deployed decision": with_interval(system, entry["intervals"].get("accuracy_system")),
                     "vs UnMask (paper)": "n/a" if reference is None else f"{100 * (system - reference):+.1f}",
                     "flagged": _percent(entry["flag_rate"]),
                     "ceiling": with_interval(ceiling.get("rate"), ceiling.get("interval"))})
    return rows


def _ladder_status(entry: Mapping[str, Any] | None, top: int) -> str:
    if entry is None:
        return "–"
    if entry.get("converged") is None:
        return "one rung"
    return f"from x{entry['converged_at']}" if entry["converged"] else f"not converged at x{top}"


def _figure(worst: Mapping[str, Any], figure: str, curve: Mapping[str, Any] | None) -> dict[str, Any]:
    """A figure's worst case with its interval, and how the ladder left it."""
    return {"value": worst[figure], "interval": worst["intervals"].get(figure),
            "converged": None if curve is None else curve["converged"],
            "converged_at": None if curve is None else curve["converged_at"]}


def _white_box(label: str, metrics: Mapping[str, Any], fpr: float, epsilons: Sequence[float],
               clean_gap: Mapping[str, float]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    summary = {(e["defense"], e["epsilon"]): e for e in metrics.get("adaptive_summary") or []
               if e["fpr_target"] == fpr and e["norm"] == "linf" and e["over"] == "all attacks"}
    differences = {(e["defense"], e["epsilon"], e["figure"]): e for e in metrics.get("adaptive_comparisons") or []
                   if e["fpr_target"] == fpr and e["norm"] == "linf" and e["baseline"] == BASELINE}
    ladder = metrics.get("adaptive_ladder") or {}
    top = max((rung["rung"] for rung in ladder.get("rungs") or []), default=1)
    curves = {(e["defense"], e["epsilon"], e["figure"]): e for e in ladder.get("figures") or []
              if e["fpr_target"] == fpr and e["norm"] == "linf"}
    rows, values = [], {}
    for defense in _attacked(metrics):
        for epsilon in epsilons:
            worst = summary.get((defense, float(epsilon)))
            if worst is None:
                continue
            row: dict[str, Any] = {"rule": label, "defense": defense, "ε": f"{epsilon:g}"}
            figures: dict[str, Any] = {}
            for figure, name in FIGURES.items():
                difference = differences.get((defense, float(epsilon), figure), {})
                curve = curves.get((defense, float(epsilon), figure))
                row[f"{name} (converged)"] = (f"{with_interval(worst[figure], worst['intervals'].get(figure))} "
                                              f"({_ladder_status(curve, top)})")
                row[f"{SHORT[figure]} − adv. training"] = _points(difference.get("difference"),
                                                                  difference.get("interval"))
                figures[figure] = {**_figure(worst, figure, curve), "difference": difference.get("difference"),
                                   "difference_interval": difference.get("interval")}
            row["meets the bar"] = _verdict(figures, clean_gap.get(defense)) if epsilon == 8 else "–"
            # the re-classification's figure too: what an attacker who cannot evade goes for
            reclassification = _figure(worst, "accuracy_unmask",
                                       curves.get((defense, float(epsilon), "accuracy_unmask")))
            values.setdefault(f"eps{epsilon:g}", {})[value_key(defense)] = {
                **figures, "accuracy_unmask": reclassification}
            rows.append(row)
    return rows, values


def _verdict(figures: Mapping[str, Mapping[str, Any]], clean_gap: float | None) -> str:
    """Whether a defense at L-inf 8 clears ``BAR``: a converged figure at least 10 points above
    adversarial training with its interval above zero, the clean deployed decision within 3
    points of UnMask's; otherwise why the figure closest to it does not."""
    def shortfall(figure: Mapping[str, Any]) -> str | None:
        if figure["difference"] is None:
            return "no comparison"
        if figure["difference"] < BAR["gain"]:
            return f"{100 * figure['difference']:+.0f} points"
        if not figure["difference_interval"] or figure["difference_interval"][0] <= 0:
            return "its interval reaches 0"
        return None if figure["converged"] else "not converged"

    reasons = {name: shortfall(figure) for name, figure in figures.items()}
    cleared = [SHORT[name] for name, reason in reasons.items() if reason is None]
    if not cleared:
        best = max(figures, key=lambda name: -1.0 if figures[name]["difference"] is None
                   else figures[name]["difference"])
        return f"no: {SHORT[best]} {reasons[best]}"
    if clean_gap is None or clean_gap < -BAR["clean_points"] - 1e-9:  # 3 points on 300 images is exactly 9
        return "no: clean deployed " + ("n/a" if clean_gap is None else f"{100 * clean_gap:+.1f}") + " vs UnMask"
    return "yes: " + ", ".join(cleared)


def _half_budget(runs: Sequence[Mapping[str, Any]], fpr: float) -> dict[tuple[str, float], Mapping[str, Any]]:
    """Per (defense, L-inf budget), the worst case of every run that attacked it white-box there
    (the first such run's): adversarial training's, and an UnMask-like defense's re-classification
    where the re-classification attack was aimed at it."""
    found: dict[tuple[str, float], Mapping[str, Any]] = {}
    for metrics in runs:
        for entry in metrics.get("adaptive_summary") or []:
            if entry["norm"] != "linf" or entry["over"] != "all attacks" or entry["fpr_target"] != fpr:
                continue
            aimed = entry["defense"] == BASELINE or any(attack.startswith("white-box reclassify")
                                                         for attack in entry.get("attacks") or [])
            if aimed:
                found.setdefault((entry["defense"], float(entry["epsilon"])), entry)
    return found


def _tramer_rows(white_rows: Sequence[Mapping[str, Any]], values: Mapping[str, Any],
                 halves: Mapping[str, Mapping[tuple[str, float], Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Tramèr (ICML 2022): a detector robust at ε gives a classifier robust at ε/2 with the same
    robust accuracy (with detection). Each claim beside the classifiers measured at ε/2:
    adversarial training, and the defense's own re-classification (a classifier from K's parts
    alone) under the re-classification attack. A claim far above the best of them is first a
    reason to suspect the attack; one below a classifier measured there is what the bound allows."""
    rows = []
    for row in white_rows:
        epsilon = float(row["ε"])
        claim = values[row["rule"]][f"eps{epsilon:g}"][value_key(row["defense"])]["robust_accuracy_with_detection"]
        half = halves[row["rule"]]
        baseline = half.get((BASELINE, epsilon / 2))
        if baseline is None:
            continue
        trained = baseline["robust_accuracy_with_detection"]
        parts = half.get((row["defense"], epsilon / 2), {})
        by_parts = parts.get("accuracy_unmask")
        best = max(trained, by_parts if by_parts is not None else 0.0)
        rows.append({"rule": row["rule"], "defense": row["defense"], "ε": row["ε"],
                     "robust acc. w/ det. at ε": with_interval(claim["value"], claim["interval"]),
                     "adversarial training at ε/2": with_interval(
                         trained, baseline["intervals"].get("robust_accuracy_with_detection")),
                     "re-classification at ε/2": with_interval(by_parts, (parts.get("intervals") or {}).get(
                         "accuracy_unmask")),
                     "claim − best at ε/2": f"{100 * (claim['value'] - best):+.1f}"})
    return rows


def compare_rules(runs: Sequence[tuple[str, Mapping[str, Any]]], *, fpr: float = 0.1,
                  epsilons: Sequence[float] = (8.0, 16.0),
                  baselines: Sequence[Mapping[str, Any]] = ()) -> BenchmarkRecord:
    """The record comparing the rules of ``runs`` ((source, metrics.json) each, one rule per
    run; the paper's rule's run gives the clean reference): tables ``clean``, ``white-box``,
    ``tramer`` (each claim beside adversarial training at half the budget, from ``runs`` and
    ``baselines``: runs that attacked it at other budgets) and ``runs``, and per rule the values
    behind them (``values.<rule>``)."""
    labelled: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for source, metrics in runs:
        label = rule_label(metrics)
        if label in labelled:
            raise UnmaskError(f"{source} and {labelled[label][0]} both ran the rule {label!r}; "
                              "compare one run per rule")
        labelled[label] = (source, metrics)
    reference = None
    if "paper" in labelled:
        reference = next((entry["accuracy_system"] for entry in labelled["paper"][1].get("defenses") or []
                          if entry["defense"] == PAPER_UNMASK and entry.get("fpr_target") == fpr), None)
    record = BenchmarkRecord("compare-rules", {"runs": [source for source, _ in runs], "fpr": fpr,
                                               "epsilons": list(epsilons)})
    clean_rows, white_rows, run_rows = [], [], []
    for label, (source, metrics) in labelled.items():
        clean = _clean_rows(label, metrics, fpr, reference)
        gaps = {entry["defense"]: entry["accuracy_system"] - reference for entry in metrics.get("defenses") or []
                if reference is not None and entry.get("fpr_target") == fpr
                and entry.get("accuracy_unmask") is not None}
        rows, values = _white_box(label, metrics, fpr, epsilons, gaps)
        clean_rows += clean
        white_rows += rows
        provenance = metrics.get("provenance") or {}
        ladder = metrics.get("adaptive_ladder") or {}
        run_rows.append({"rule": label, "run": str(provenance.get("run", source)),
                         "rungs": ",".join(f"x{rung['rung']}" for rung in ladder.get("rungs") or []) or "–",
                         "stopped": ladder.get("stopped", "–"), "made by": describe_environment(provenance)})
        record.value(label, {"clean": {value_key(entry["defense"]): {key: entry[key] for key in
                                                          ("accuracy_m", "accuracy_unmask", "accuracy_system",
                                                           "flag_rate")}
                                       for entry in metrics.get("defenses") or []
                                       if entry.get("fpr_target") == fpr and entry.get("accuracy_unmask") is not None},
                             "ceiling": {value_key(entry["defense"]): entry["rate"] for entry in
                                         metrics.get("unflagged_wrong_class") or [] if entry["fpr_target"] == fpr},
                             **values})
    record.table("clean", clean_rows, description=(
        f"Clean test images, thresholds fixed on clean validation images at {fpr:.0%} FPR: accuracy (%) of M, of "
        "the rule's re-classification and of its deployed decision (95% interval), the deployed decision minus "
        "UnMask's under the paper's rule (points), the share flagged, and the rule's ceiling: the share of the "
        "white-box sample on which another class passes the rule with K's clean parts (what no K can defend)."))
    record.table("white-box", white_rows, description=(
        f"White-box adaptive attacks aimed at every output of the deployed rule (its worst case over the budget "
        f"ladder and the gray-box attack), L-inf, {fpr:.0%} FPR on validation data, the run's white-box sample: "
        "robust accuracy "
        "with detection and system accuracy (%, 95% interval), from which rung each converged, and the paired "
        "difference to adversarial training (points, 95% interval). 'meets the bar' at L-inf 8: a converged "
        "figure +10 points or more with its interval above zero, and a clean deployed decision within 3 points "
        "of UnMask's."))
    # each rule's own run first: its re-classification at half the budget is its own re-classifier's
    halves = {label: _half_budget([metrics, *baselines, *(other for _, other in runs)], fpr)
              for label, (_, metrics) in labelled.items()}
    record.table("tramer", _tramer_rows(white_rows, record.values, halves), description=(
        "Tramèr (ICML 2022): a detector robust at ε gives a (slow) classifier robust at ε/2 with the same "
        "robust accuracy. Each rule's robust accuracy with detection (%; thresholds fixed at "
        f"{fpr:.0%} FPR on clean validation images) beside two classifiers measured at ε/2 on "
        "the same sample (white-box, the worst case over each one's ladder): adversarial training, and the "
        "defense's own re-classification from K's parts under the re-classification attack (n/a: not measured). "
        "A claim far above the best of them is first a reason to suspect the attack."))
    record.table("runs", run_rows, description="The run behind each rule's figures: its folder, the ladder's rungs "
                 "and why it stopped, its code and machine.")
    return record


def plot_rules(record: BenchmarkRecord, path_stem: Path, *, defense: str = "UnMask-R + adv. M") -> list[Path]:
    """Per L-inf budget, each rule's white-box figures for ``defense`` (bars with 95% intervals;
    hatched: not converged at the ladder's top rung) beside adversarial training's robust accuracy
    on the same images (dashed)."""
    rules = [label for label, values in record.values.items()
             if any(value_key(defense) in values.get(key, {}) for key in values if key.startswith("eps"))]
    epsilons = sorted({key for label in rules for key in record.values[label] if key.startswith("eps")},
                      key=lambda key: float(key[3:]))
    figure, axes = plt.subplots(1, max(len(epsilons), 1), figsize=(5.2 * max(len(epsilons), 1), 3.6), squeeze=False)
    width = 0.38
    for axis, key in zip(axes[0], epsilons, strict=False):
        for offset, (name, title) in zip((-width / 2, width / 2), FIGURES.items(), strict=True):
            for index, label in enumerate(rules):
                entry = record.values[label].get(key, {}).get(value_key(defense), {}).get(name)
                if entry is None:
                    continue
                low, high = entry["interval"] or (entry["value"], entry["value"])
                axis.bar(index + offset, 100 * entry["value"], width, color="C0" if offset < 0 else "C1",
                         hatch=None if entry["converged"] else "//", label=title if index == 0 else None,
                         yerr=[[100 * (entry["value"] - low)], [100 * (high - entry["value"])]], capsize=3)
                baseline = entry["value"] - (entry["difference"] or 0.0)
                if offset < 0 and entry["difference"] is not None:
                    axis.hlines(100 * baseline, index - width, index + width, colors="k", linestyles="--",
                                label="adversarial training" if index == 0 else None)
        axis.set_xticks(range(len(rules)), rules, rotation=20)
        axis.set_xlim(-0.7, len(rules) - 0.3)
        axis.set_ylim(0, 100)
        axis.set_ylabel("% of the white-box sample")
        axis.set_title(f"{defense}, L-inf {key[3:]}/255")
        axis.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    return save_figure(figure, path_stem)

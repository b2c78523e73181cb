"""Tables and figures from an experiment's numbers: the paper-style Markdown tables, ROC curves,
accuracy bars and an example panel of K's parts on a clean and an adversarial image.

Everything here takes plain numbers and arrays (the contents of ``metrics.json`` and the cached
per-image results), so a finished run can be re-reported without recomputing anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from unmask.attacks.norms import NORMS  # noqa: E402
from unmask.io import atomic_path  # noqa: E402
from unmask.parts import PARTS  # noqa: E402

FIGURE_FORMATS = ("png", "pdf")


def _percent(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _title(metrics: Mapping[str, Any]) -> str:
    config = metrics.get("config", {})
    return f"{config.get('class_set', '?')} · M = {config.get('model', '?')} · {config.get('dataset', '?')} data"


def format_tables(metrics: Mapping[str, Any]) -> str:
    """The run's tables as Markdown, each under its heading: the paper-style gray-box accuracy and
    detection tables, K's test metrics, and with the adaptive evaluation the threat-model
    tables (and UnMask-R's comparison). The documentation generates its tables from the same
    section formatters (``accuracy_table``, ``detection_table``, ...), so the two cannot disagree."""
    title = _title(metrics)
    blocks = [f"### Accuracy (%) — {title} · gray-box (the attacker knows M only)", accuracy_table(metrics),
              f"### Detection — {title} · gray-box", detection_table(metrics)]
    if metrics.get("k"):
        blocks += ["### K, the part extractor, on its test split", k_table(metrics)]
    if metrics.get("adaptive"):
        blocks.append(format_threat_models(metrics))
        if _ladder_ran(metrics):
            blocks.append(format_ladder(metrics))
        if metrics.get("k_robust") is not None and metrics.get("defenses"):
            blocks.append(format_robust(metrics))
    return _blocks(blocks)


def _blocks(blocks: Sequence[str]) -> str:
    """Markdown blocks (headings, paragraphs, tables) one blank line apart."""
    return "\n\n".join(block.rstrip("\n") for block in blocks) + "\n"


def accuracy_table(metrics: Mapping[str, Any]) -> str:
    """Gray-box accuracy (%) of undefended M, adversarial training and UnMask, clean and per attack
    vector, their means, and UnMask's mean gain over adversarial training."""
    clean, attacks, summary = metrics["clean"], metrics["attacks"], metrics["summary"]
    lines = [
        "| attack | ε (0-255) | undefended M | adversarial training | UnMask |",
        "|---|---:|---:|---:|---:|",
        f"| none (clean) | 0 | {_percent(clean['accuracy_m'])} | {_percent(clean['accuracy_adv_trained'])} | "
        f"{_percent(clean['accuracy_unmask'])} |",
    ]
    for entry in attacks:
        lines.append(
            f"| {entry['name']} | {entry['epsilon']:g} | {_percent(entry['accuracy_m'])} | "
            f"{_percent(entry['accuracy_adv_trained'])} | {_percent(entry['accuracy_unmask'])} |"
        )
    lines.append(
        f"| **mean over attacks** | | {_percent(summary.get('mean_accuracy_m'))} | "
        f"{_percent(summary['mean_accuracy_adv_trained'])} | {_percent(summary['mean_accuracy_unmask'])} |"
    )
    gain = summary.get("mean_gain_over_adv_training")
    lines += [
        "",
        f"UnMask vs adversarial training, mean over the attack vectors: "
        f"{'n/a' if gain is None or math.isnan(gain) else f'{gain:+.1f}'} percentage points "
        f"({clean['n_images']} test images).",
    ]
    return "\n".join(lines) + "\n"


def detection_table(metrics: Mapping[str, Any]) -> str:
    """The original's detection protocol per attack vector: pairs, AUC (set and soft Jaccard),
    and the TPR and FPR at the threshold fixed on clean validation images."""
    lines = [
        "Pairs: images whose adversarial version fools M, and their clean versions (the original's protocol). "
        f"Threshold fixed on clean validation images at a {_percent(metrics['thresholds']['target_fpr'])}% "
        "false-positive rate; TPR on the fooled adversarial test images, FPR on all clean test images.",
        "",
        "| attack | ε (0-255) | pairs | AUC | AUC (soft) | TPR @ thr | FPR @ thr | TPR (soft) | FPR (soft) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in metrics["attacks"]:
        detection = entry["detection"]
        lines.append(
            f"| {entry['name']} | {entry['epsilon']:g} | {detection['n_pairs']} | {_number(detection['auc'])} | "
            f"{_number(detection['auc_soft'])} | {_percent(detection['tpr'])} | {_percent(detection['fpr'])} | "
            f"{_percent(detection.get('tpr_soft'))} | {_percent(detection.get('fpr_soft'))} |"
        )
    return "\n".join(lines) + "\n"


def k_table(metrics: Mapping[str, Any]) -> str:
    """K's test metrics (and the robust K's, with one): COCO mask and box mAP (at IoU 0.5 and
    averaged over 0.5:0.95), and part-set precision and recall per image."""
    lines = ["| K | mask mAP@0.5 | mask mAP | box mAP@0.5 | box mAP | part precision | part recall |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for key, name in K_NAMES.items():
        k = metrics.get(key)
        if k:
            lines.append(f"| {name} | " + " | ".join(_number(k.get(field)) for field in (
                "map_mask_50", "map_mask", "map_box_50", "map_box", "part_precision", "part_recall")) + " |")
    return "\n".join(lines) + "\n"


STAGE_NAMES: dict[str, str] = {
    "data": "data: generate or check the images",
    "train_m": "M and the adversarially trained M: train, or load from the cache",
    "train_k": "K: train, or load from the cache",
    "train_k_robust": "UnMask-R's robust K: fine-tune adversarially, or load from the cache",
    "eval_k": "K's test metrics (COCO mAP, part precision and recall)",
    "clean": "clean predictions of M, the baseline and K (test and validation images)",
    "attacks": "gray-box attack vectors against M and the baseline, K on every attacked image",
    "adaptive": "threat models: the adaptive (white-box) attacks and the baselines' APGD",
    "report": "tables and figures",
}
"""What each stage of ``metrics.json``'s ``timing`` does (``run_experiment``'s stages)."""


def timing_table(metrics: Mapping[str, Any]) -> str:
    """Wall-clock seconds per stage of the run and in all (``metrics.json``'s ``timing``); a stage
    that reused saved results (cached models, saved predictions) takes only seconds."""
    timing = metrics["timing"]
    stages = {key: value for key, value in timing.items() if key in STAGE_NAMES or not key.startswith("ladder_x")}
    stages.pop("total", None)
    lines = ["| stage | seconds |", "|---|---:|"]
    for stage, seconds in stages.items():
        lines.append(f"| {STAGE_NAMES.get(stage, stage)} | {seconds:,.0f} |")
        if stage == "adaptive":  # a ladder's rungs are parts of this stage, not stages of their own
            lines += [f"| of which the attacks of ladder rung ×{key.removeprefix('ladder_x')} | {value:,.0f} |"
                      for key, value in timing.items() if key.startswith("ladder_x")]
    total = timing.get("total", sum(stages.values()))
    lines.append(f"| **total** | {total:,.0f} ({total / 60:.0f} min) |")
    return "\n".join(lines) + "\n"


HEADLINE_DEFENSES = ("undefended M", "adversarial training")
"""The baselines of the threat-model table, beside UnMask (a defense the table does not name is
shown in the detail rows)."""


def signed_points(value: float, interval: Sequence[float]) -> str:
    """A difference of two rates in percentage points with its 95% interval: +8.0 [-0.0, +16.0]."""
    return f"{100 * value:+.1f} [{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]"


def with_interval(value: float | None, interval: Sequence[float] | None) -> str:
    """A rate in percent with its 95% interval (n/a when there is none)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if not interval:
        return _percent(value)
    return f"{_percent(value)} [{_percent(interval[0])}, {_percent(interval[1])}]"


def _cell(row: Mapping[str, Any] | None, key: str) -> str:
    if row is None or row.get(key) is None:
        return "–"
    return with_interval(row[key], row.get("intervals", {}).get(key))


def _worst(summary: Sequence[Mapping[str, Any]], key: tuple, defense: str,
           over: str = "all attacks") -> Mapping[str, Any] | None:
    """The summary's worst case of ``defense`` at ``key`` (FPR, norm, epsilon) over ``over``'s attacks."""
    return next((row for row in summary if (row["fpr_target"], row["norm"], row["epsilon"]) == key
                 and row["defense"] == defense and row["over"] == over), None)


def _summary_keys(summary: Sequence[Mapping[str, Any]], *, norms: Sequence[str] | None = None,
                  epsilons: Sequence[float] | None = None) -> list[tuple]:
    """The (FPR, norm, epsilon) budgets of the summary, sorted; only ``norms`` and ``epsilons``
    when given."""
    return sorted({(row["fpr_target"], row["norm"], row["epsilon"]) for row in summary
                   if (norms is None or row["norm"] in norms) and (epsilons is None or row["epsilon"] in epsilons)})


def _unmask_names(summary: Sequence[Mapping[str, Any]]) -> list[str]:
    """The UnMask-like defenses of a summary (those with a re-classification), in order."""
    return list(dict.fromkeys(row["defense"] for row in summary if row.get("accuracy_unmask") is not None))


def format_threat_models(metrics: Mapping[str, Any]) -> str:
    """The adaptive evaluation's tables: the headline (per budget, each defense under its own
    strongest attacks: the per-image worst case over every attack, with 95% intervals), the
    attack that did the most against each figure, the paired differences between UnMask and
    the baselines, every defense x threat model x attack x budget row, and UnMask's worst case
    per threat model (the section formatters below, each under its introduction)."""
    config = metrics.get("config", {})
    n_images = max(entry["n_images"] for entry in metrics["adaptive"])
    blocks = [f"### Threat models (%) — {config.get('class_set', '?')} · M = {config.get('model', '?')} · "
              f"{n_images} test images M gets right", threat_models_table(metrics)]
    if metrics.get("adaptive_ladder"):
        blocks.append(budget_note(metrics))
    blocks += ["The attack that did the most against each figure (alone), over every attack of the budget:",
              strongest_attacks_table(metrics)]
    if metrics.get("adaptive_comparisons"):
        blocks += ["UnMask minus each baseline on the same images (percentage points, worst case over every "
                   "attack; [95% interval], paired bootstrap; * where the interval excludes 0):",
                   comparisons_table(metrics)]
    blocks += ["Every attack (each on the images no earlier attack of its budget or a smaller one had already "
               "broken for the output it aims at; the label-only check on its own sub-sample, outside the worst "
               "case):", adaptive_attacks_table(metrics),
               "UnMask's worst case per image over each threat model's attacks, then over every attack; "
               "gray-box · transfer · white-box · every attack:", threat_model_scopes_table(metrics)]
    return _blocks(blocks)


THREAT_MODELS_NOTE = (
    "gray-box: the attacker knows M (the paper's PGD); transfer: M and a surrogate K' (another seed, half of "
    "K's data); white-box: M, K, the part table and the thresholds. Detection threshold fixed on clean "
    "validation images at the FPR shown. Judged on the real pipeline and 8-bit images: success = M wrong and "
    "not flagged; robust accuracy with detection = the clean image is not flagged and the attacked one is "
    "classified right or flagged; re-classification = UnMask's re-classified class is right; system = the "
    "decision UnMask deploys (M's class unless flagged, else the re-classified class) is right. Undefended M "
    "and adversarial training are M alone under the same white-box engine (APGD-CE and -DLR), budgets and "
    "images, and the paper's gray-box PGD. Each figure is the per-image worst case over every attack that "
    "ran at that budget; [95% interval] (bootstrap over the images).")
"""What the threat-model table's figures mean (printed above it in ``tables.md``)."""


def threat_models_table(metrics: Mapping[str, Any], *, norms: Sequence[str] | None = None,
                        epsilons: Sequence[float] | None = None, note: bool = True) -> str:
    """The headline: per budget (only ``norms`` and ``epsilons`` when given), the baselines'
    accuracy and each UnMask-like defense's robust accuracy with detection, success,
    re-classification and system accuracy, each the per-image worst case over every attack, with
    its 95% interval; ``note``: the figures' definitions above the table."""
    summary = metrics["adaptive_summary"]
    unmask_names = _unmask_names(summary)
    lines = [THREAT_MODELS_NOTE, ""] if note else []
    lines += [
        "| FPR | norm | ε (0-255) | undefended M | adversarial training | " + " | ".join(
            f"{name}: robust acc. w/ detection | {name}: success | {name}: re-classification | {name}: system"
            for name in unmask_names) + " |",
        "|---:|---|---:|---:|---:|" + "---:|" * (4 * len(unmask_names)),
    ]
    for key in _summary_keys(summary, norms=norms, epsilons=epsilons):
        cells = [_cell(_worst(summary, key, name), "accuracy_m") for name in HEADLINE_DEFENSES]
        for name in unmask_names:
            row = _worst(summary, key, name)
            cells += [_cell(row, figure) for figure in ("robust_accuracy_with_detection", "success_rate",
                                                        "accuracy_unmask", "accuracy_system")]
        lines.append(f"| {_percent(key[0])} | {key[1]} | {key[2]:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def strongest_attacks_table(metrics: Mapping[str, Any]) -> str:
    """Per budget and defense, the attack that did the most against each figure, alone."""
    summary = metrics["adaptive_summary"]
    lines = ["| FPR | ε (0-255) | defense | success | robust acc. w/ detection | re-classification | system | M |",
             "|---:|---:|---|---|---|---|---|---|"]
    for key in _summary_keys(summary):
        for row in (r for r in summary if (r["fpr_target"], r["norm"], r["epsilon"]) == key
                    and r["over"] == "all attacks"):
            names = [row["strongest"].get(figure, "–") for figure in (
                "success_rate", "robust_accuracy_with_detection", "accuracy_unmask", "accuracy_system", "accuracy_m")]
            lines.append(f"| {_percent(key[0])} | {key[2]:g} | {row['defense']} | " + " | ".join(names) + " |")
    return "\n".join(lines) + "\n"


def comparisons_table(metrics: Mapping[str, Any], *, norms: Sequence[str] | None = None,
                      epsilons: Sequence[float] | None = None, baselines: Sequence[str] | None = None) -> str:
    """Each UnMask-like defense minus each baseline (only ``baselines`` when given) on the same
    images, per budget (only ``norms`` and ``epsilons`` when given): robust accuracy with
    detection and system accuracy, in percentage points with the paired bootstrap's 95% interval."""
    summary, comparisons = metrics["adaptive_summary"], metrics.get("adaptive_comparisons") or []
    comparisons = [c for c in comparisons if baselines is None or c["baseline"] in baselines]
    lines = ["| FPR | ε (0-255) | defense | baseline | robust acc. w/ detection − baseline | system − baseline |",
             "|---:|---:|---|---|---:|---:|"]
    for key in _summary_keys(summary, norms=norms, epsilons=epsilons):
        pairs = dict.fromkeys((c["defense"], c["baseline"]) for c in comparisons
                              if (c["fpr_target"], c["norm"], c["epsilon"]) == key)
        for defense, baseline in pairs:
            cells = []
            for figure in ("robust_accuracy_with_detection", "accuracy_system"):
                c = next(c for c in comparisons if (c["fpr_target"], c["norm"], c["epsilon"]) == key
                         and (c["defense"], c["baseline"], c["figure"]) == (defense, baseline, figure))
                cells.append(f"{signed_points(c['difference'], c['interval'])}{' *' if c['significant'] else ''}")
            lines.append(f"| {_percent(key[0])} | {key[2]:g} | {defense} | {baseline} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def adaptive_attacks_table(metrics: Mapping[str, Any]) -> str:
    """Every defense x threat model x attack x budget row of the adaptive evaluation (at a rung of
    the budget ladder above the first: "(x rung)" after the attack)."""
    lines = ["| defense | threat model | attack | ε (0-255) | FPR | images | success | robust acc. w/ detection | "
             "re-classification | system | M | K part recall | parts changed |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for entry in metrics["adaptive"]:
        lines.append(
            f"| {entry['defense']} | {entry['threat_model']} | {entry['attack']}{_rung_suffix(entry)} | "
            f"{entry['epsilon']:g} | {_percent(entry['fpr_target'])} | {entry['n_images']} | "
            f"{_percent(entry['success_rate'])} | "
            f"{_percent(entry['robust_accuracy_with_detection'])} | {_percent(entry.get('accuracy_unmask'))} | "
            f"{_percent(entry.get('accuracy_system'))} | {_percent(entry['accuracy_m'])} | "
            f"{_percent(entry.get('part_recall'))} | {_number(entry.get('parts_changed'), 1)} |")
    return "\n".join(lines) + "\n"


def threat_model_scopes_table(metrics: Mapping[str, Any]) -> str:
    """Each UnMask-like defense's worst case per image over each threat model's attacks, then over
    every attack."""
    summary = metrics["adaptive_summary"]
    scopes = ("gray-box", "transfer", "white-box", "all attacks")
    lines = ["| defense | FPR | norm | ε (0-255) | success | robust acc. w/ detection | re-classification | system |",
             "|---|---:|---|---:|---|---|---|---|"]
    for name in _unmask_names(summary):
        for key in _summary_keys(summary):
            def cells(field: str, key: tuple = key, name: str = name) -> str:
                rows = {scope: _worst(summary, key, name, scope) for scope in scopes}
                return " · ".join(_percent(rows[scope][field]) if rows[scope] else "–" for scope in scopes)

            lines.append(f"| {name} | {_percent(key[0])} | {key[1]} | {key[2]:g} | {cells('success_rate')} | "
                         f"{cells('robust_accuracy_with_detection')} | {cells('accuracy_unmask')} | "
                         f"{cells('accuracy_system')} |")
    return "\n".join(lines) + "\n"


LADDER_FIGURES: dict[str, str] = {
    "robust_accuracy_with_detection": "robust acc. w/ detection", "success_rate": "success",
    "accuracy_unmask": "re-classification", "accuracy_system": "system", "accuracy_m": "accuracy",
}
"""The ladder's headline figures as its tables name them, in their order."""


def ladder_timing_key(rung: int) -> str:
    """The key of a ladder rung's seconds in ``metrics.json``'s ``timing``: its attacks' time when
    they were computed, summed over their batches."""
    return f"ladder_x{rung}"


def _rung_suffix(entry: Mapping[str, Any]) -> str:
    rung = entry.get("rung", 1)
    return "" if rung == 1 else f" (×{rung})"


def _ladder_ran(metrics: Mapping[str, Any]) -> bool:
    """Whether the run climbed the budget ladder (more than one rung)."""
    return len((metrics.get("adaptive_ladder") or {}).get("rungs", [])) > 1


def _budget_text(budget: Mapping[str, Mapping[str, Any]]) -> str:
    """Each laddered attack's budget at one rung, attacks with the same budget together."""
    grouped: dict[str, list[str]] = {}
    for attack, options in budget.items():
        parts = [f"{options['steps']} steps", f"{options['restarts']} run{'s' if options['restarts'] > 1 else ''}"
                 + (" per target" if options.get("targets") is not None else "")]
        if options.get("targets") is not None:
            parts.append("every other class" if options["targets"] == 0 else f"{options['targets']} targets")
        if options.get("reclassify_losses"):
            parts.append("+".join(options["reclassify_losses"]))
        grouped.setdefault(", ".join(parts), []).append(f"`{attack}`")
    return "; ".join(f"{', '.join(attacks)}: {text}" for text, attacks in grouped.items())


def _ladder_key(entry: Mapping[str, Any]) -> tuple:
    return entry["fpr_target"], entry["norm"], entry["epsilon"]


def budget_note(metrics: Mapping[str, Any]) -> str:
    """What budget the white-box figures above were measured at. After a ladder: its rungs and
    that each figure is the worst case over every rung run. At one rung (the reduced budget): by
    how much a published ladder on the same models and sample moved each figure (measured), or
    that the offset was not measured and the command that measures it."""
    ladder = metrics["adaptive_ladder"]
    rungs = ladder["rungs"]
    if len(rungs) > 1:
        names = ", ".join(f"×{rung['rung']}" for rung in rungs)
        return (f"White-box budget: the budget ladder, rungs {names} of "
                f"{_budget_text(rungs[0]['budget'])} ({_stopped(ladder)}); each figure is the per-image worst case "
                "over every rung. Its convergence: \"Budget ladder\" below.")
    text = (f"White-box budget: reduced ({_budget_text(rungs[0]['budget'])}), one rung of the budget ladder. ")
    offsets = ladder.get("offsets") or {}
    if not offsets.get("published"):
        return text + (f"Offset not measured for these models: run `{offsets.get('command', 'the ladder')}` on them "
                       "and publish it (docs/convergence.md); until then every UnMask-like figure above is an upper "
                       "bound.")
    measured = offsets["figures"]
    lines = [text + f"The budget ladder on the same models and sample (published run `{offsets['published']}`, "
             f"{', '.join(offsets['defenses'])}) moved each figure from its first rung to its last by (percentage "
             "points; [95% interval] of the ladder's value):", "",
             "| FPR | ε (0-255) | defense | figure | this run | ladder ×1 | ladder, last rung | moved | converged |",
             "|---:|---:|---|---|---:|---:|---|---:|---|"]
    for entry in measured:
        moved = "n/a" if entry["moved"] is None else f"{100 * entry['moved']:+.1f}"
        converged = ("–" if entry["converged"] is None else f"from ×{entry['converged_at']}" if entry["converged"]
                     else f"not converged at the top rung (×{entry['top_rung']})")
        lines.append(f"| {_percent(entry['fpr_target'])} | {entry['epsilon']:g} | {entry['defense']} | "
                     f"{LADDER_FIGURES.get(entry['figure'], entry['figure'])} | {_percent(entry['this_run'])} | "
                     f"{_percent(entry['first_rung'])} | ×{entry['top_rung']}: "
                     f"{with_interval(entry['ladder'], entry['interval'])} | {moved} | {converged} |")
    if not measured:
        lines.append("| – | – | – | – | – | – | – | – | – |")
    return "\n".join(lines) + "\n"


def _stopped(ladder: Mapping[str, Any]) -> str:
    top = ladder["rungs_requested"][-1]
    return {"converged early": f"stopped early: every headline figure converged before ×{top}",
            "top rung": f"ran to the top rung, ×{top}",
            "one rung": "one rung"}.get(ladder["stopped"], ladder["stopped"])


def format_ladder(metrics: Mapping[str, Any]) -> str:
    """The budget ladder: its rungs (each attack's budget, the attack x image pairs run and their
    seconds), each headline figure's curve over the rungs with its converged value and 95%
    interval (or "not converged at the top rung"), and the paired differences to adversarial
    training on the converged values."""
    ladder = metrics["adaptive_ladder"]
    blocks = [f"### Budget ladder (%) — convergence of the white-box figures ({_stopped(ladder)})",
              "Each rung doubles the budget below it (the doublings named); an attack at a rung is given only the "
              "images whose output it aims at no smaller rung or budget, nor an earlier attack, broke, and skips "
              "the runs the rung below made. A figure has converged when every doubling from a rung on moved it "
              f"by at most {ladder['tolerance_images']} images of the sample; its converged value is the worst case "
              "over every rung run, [95% interval] (bootstrap over the images). Seconds: the attacks' time when "
              "computed, summed over their batches (this run's machine: metrics.json's provenance).",
              ladder_rungs_table(metrics), ladder_table(metrics)]
    if any(c["baseline"] == "adversarial training" for c in metrics.get("adaptive_comparisons") or []):
        blocks += ["Each UnMask-like defense minus adversarial training on the converged values (the same images; "
                   "percentage points, [95% interval], paired bootstrap; * where the interval excludes 0):",
                   comparisons_table(metrics, baselines=("adversarial training",))]
    return _blocks(blocks)


def ladder_rungs_table(metrics: Mapping[str, Any]) -> str:
    """Per rung run: how it grew the budget, each laddered attack's budget, the attack x image
    pairs it ran and their seconds."""
    timing = metrics.get("timing") or {}
    lines = ["| rung | doublings | budget | attack × image pairs | seconds |", "|---|---|---|---:|---:|"]
    for rung in metrics["adaptive_ladder"]["rungs"]:
        seconds = timing.get(ladder_timing_key(rung["rung"]))
        lines.append(f"| ×{rung['rung']} | {', '.join(rung['doublings']) or '–'} | {_budget_text(rung['budget'])} | "
                     f"{rung['attacked']} | {_number(seconds, 0)} |")
    return "\n".join(lines) + "\n"


def ladder_table(metrics: Mapping[str, Any], *, norms: Sequence[str] | None = None,
                 epsilons: Sequence[float] | None = None) -> str:
    """Per FPR, budget (only ``norms`` and ``epsilons`` when given), defense and headline figure:
    its value at every rung (the convergence curve), its converged value with its 95% interval,
    and from which rung it converged or "not converged at the top rung"."""
    ladder = metrics["adaptive_ladder"]
    rungs = [rung["rung"] for rung in ladder["rungs"]]
    lines = ["| FPR | ε (0-255) | defense | figure | " + " | ".join(f"×{rung}" for rung in rungs)
             + " | converged value | converged |", "|---:|---:|---|---|" + "---:|" * len(rungs) + "---|---|"]
    order = {figure: index for index, figure in enumerate(LADDER_FIGURES)}
    entries = [e for e in ladder["figures"] if (norms is None or e["norm"] in norms)
               and (epsilons is None or e["epsilon"] in epsilons)]
    for entry in sorted(entries, key=lambda e: (_ladder_key(e), order.get(e["figure"], len(order)))):
        curve = {point["rung"]: point["value"] for point in entry["curve"]}
        converged = (f"from ×{entry['converged_at']}" if entry["converged"]
                     else f"not converged at the top rung (×{rungs[-1]})")
        lines.append(f"| {_percent(entry['fpr_target'])} | {entry['epsilon']:g} | {entry['defense']} | "
                     f"{LADDER_FIGURES.get(entry['figure'], entry['figure'])} | "
                     + " | ".join(_percent(curve.get(rung)) for rung in rungs)
                     + f" | {with_interval(entry['value'], entry['interval'])} | {converged} |")
    return "\n".join(lines) + "\n"


def _defense_order(metrics: Mapping[str, Any]) -> list[str]:
    """The defenses of a run's ``defenses`` section, the baselines (M alone) first, then the UnMask-like ones."""
    names = list(dict.fromkeys(entry["defense"] for entry in metrics["defenses"]))
    unmask_like = {entry["defense"] for entry in metrics["defenses"] if entry.get("flag_rate") is not None}
    return [name for name in names if name not in unmask_like] + [name for name in names if name in unmask_like]


K_NAMES = {"k": "K", "k_robust": "robust K"}
"""The ``metrics.json`` section of a defense's K, as the comparison names it."""


def format_robust(metrics: Mapping[str, Any]) -> str:
    """UnMask-R's comparison: per defense (the baselines first), its clean figures at each
    threshold and its K's test metrics (the price of robustness), then per budget its per-image
    worst case over every attack (white-box and gray-box) with 95% intervals, and the K-only
    sanity attacks (each reaching its own goal: every part gone, or K's parts passing detection
    for another class)."""
    summary, order = metrics["adaptive_summary"], _defense_order(metrics)
    lines = [
        "### UnMask-R: the robust K against adversarial training (%)",
        "",
        "Clean test images: M's accuracy, the re-classification's and the deployed decision's (M's class unless "
        "flagged, else the re-classified one), the share of clean test images flagged at the threshold fixed on "
        "clean validation images at the FPR shown by each defense's own M and K, and its K's test metrics "
        "(mask mAP@0.5, part-set precision and recall per image); [95% interval] (Wilson).",
        "",
        "| defense | FPR | threshold | M | re-classification | system | flagged (clean test) | K | K mask mAP@0.5 | "
        "K part precision | K part recall |",
        "|---|---:|---:|---|---|---|---|---|---:|---:|---:|",
    ]
    for name in order:
        for entry in (e for e in metrics["defenses"] if e["defense"] == name):
            k = metrics.get(entry["k"]) if entry.get("k") and entry.get("flag_rate") is not None else None
            lines.append(
                f"| {name} | {_percent(entry['fpr_target'])} | {_number(entry.get('detection_threshold'))} | "
                + " | ".join(_cell(entry, figure) for figure in ("accuracy_m", "accuracy_unmask", "accuracy_system",
                                                                 "flag_rate"))
                + f" | {K_NAMES.get(entry['k'], '–') if k is not None else '–'} | "
                + " | ".join("–" if k is None else _number(k.get(key)) for key in ("map_mask_50", "part_precision",
                                                                                  "part_recall")) + " |")
    lines += _format_robust_training((metrics.get("k_robust") or {}).get("training"))
    lines += ["", "Under attack: each defense's per-image worst case over every attack at the budget or a smaller one "
              "of the same norm (white-box: M, K, the part table and the thresholds; and the paper's gray-box PGD); "
              "for M alone every figure is M's accuracy; [95% interval] (bootstrap over the images):", "",
              "| FPR | norm | ε (0-255) | defense | images | robust acc. w/ detection | re-classification | system |",
              "|---:|---|---:|---|---:|---|---|---|"]
    for key in _summary_keys(summary):
        for name in order:
            row = _worst(summary, key, name)
            if row is not None:
                lines.append(f"| {_percent(key[0])} | {key[1]} | {key[2]:g} | {name} | {row['n_images']} | "
                             + " | ".join(_cell(row, figure) for figure in (
                                 "robust_accuracy_with_detection", "accuracy_unmask", "accuracy_system")) + " |")
    ceilings = metrics.get("unflagged_wrong_class") or []
    if ceilings:
        lines += ["", "What no K can defend: the share of the sample's clean images on which another class passes "
                  "detection with the defense's own K's clean parts at its threshold. An M made to say that class is "
                  "not flagged even if K's parts never move, so 100 minus it bounds robust acc. w/ detection and "
                  "system accuracy for any K (against an M that can be made to say every class); [95% interval] "
                  "(Wilson):", "",
                  "| defense | FPR | threshold | images | another class passes detection | bound for any K, if M can be made to say any class |",
                  "|---|---:|---:|---:|---|---:|"]
        for entry in ceilings:
            lines.append(f"| {entry['defense']} | {_percent(entry['fpr_target'])} | "
                         f"{_number(entry['detection_threshold'])} | {entry['n_images']} | "
                         f"{with_interval(entry['rate'], entry['interval'])} | "
                         f"{_percent(None if entry['rate'] is None else 1 - entry['rate'])} |")
    sanity = [entry for entry in metrics["adaptive"] if entry["attack"].startswith("k_")]
    if sanity:
        lines += ["", "K-only sanity attacks (a robust K that does not fall at a huge budget hides broken gradients): "
                  "the share of images where the attack reached its goal on the real K, and K's parts against its "
                  "clean ones:", "",
                  "| defense | attack | ε (0-255) | FPR | images | goal reached | K part recall | K part precision |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for entry in sanity:
            lines.append(f"| {entry['defense']} | {entry['attack']} | {entry['epsilon']:g} | "
                         f"{_percent(entry['fpr_target'])} | {entry['n_images']} | {_percent(entry.get('goal_rate'))} | "
                         f"{_percent(entry.get('part_recall'))} | {_percent(entry.get('part_precision'))} |")
    return "\n".join(lines) + "\n"


ROBUST_TRAINING_COLUMNS = {
    "loss": "training loss", "val_part_recall": "part recall", "val_vanish_part_recall": "part recall, vanish attack",
    "val_clean_reclassify_accuracy": "re-classification", "val_reclassify_accuracy": "re-classification, "
    "transplant attack"}
"""The robust K's per-epoch figures the comparison shows (``metrics.json``'s ``k_robust.training``)."""


def _format_robust_training(training: Mapping[str, Any] | None) -> list[str]:
    """The robust K's fine-tune per epoch: its training loss and validation figures (clean and
    under the cheap PGD attacks of its validation), the kept epoch marked."""
    if not training or not training.get("epochs"):
        return []
    epochs = training["epochs"]
    columns = [key for key in ROBUST_TRAINING_COLUMNS if any(key in record for record in epochs)]
    lines = ["", "The robust K's fine-tune per epoch: its training loss, and on validation images its part recall "
             "(clean, and under a PGD attack that makes every part vanish) and the share re-classified right from "
             "its parts among every class with parts (clean, and under a PGD attack towards the nearest other "
             "class's parts), each attack at K's training epsilon with few steps, for choosing an epoch, not a "
             "result; * the epoch whose weights it kept:", "",
             "| epoch | " + " | ".join(ROBUST_TRAINING_COLUMNS[key] for key in columns) + " | seconds |",
             "|---:|" + "---:|" * (len(columns) + 1)]
    for record in epochs:
        mark = " *" if record["epoch"] == training.get("kept_epoch") else ""
        lines.append(f"| {record['epoch']}{mark} | "
                     + " | ".join(_number(record.get(key)) if key == "loss" else _percent(record.get(key))
                                  for key in columns)
                     + f" | {_number(record.get('seconds'), 0)} |")
    return lines


def format_grid_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line per finished grid configuration: its mean figures over the attack vectors."""
    lines = [
        "| class set | M | M adversarially trained | clean M | mean attacked M | mean adv. training | "
        "mean UnMask | gain (pp) | mean AUC | results |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['class_set']} | {row['model']} | {'yes' if row['m_adv_trained'] else 'no'} | "
            f"{_percent(row['clean_accuracy_m'])} | {_percent(row['mean_accuracy_m'])} | "
            f"{_percent(row['mean_accuracy_adv_trained'])} | {_percent(row['mean_accuracy_unmask'])} | "
            f"{_number(row['mean_gain_over_adv_training'], 1)} | {_number(row['mean_auc'])} | {row['run']} |"
        )
    return "\n".join(lines) + "\n"


def save_figure(figure: plt.Figure, path_stem: Path) -> list[Path]:
    """Write ``figure`` as ``path_stem`` in every ``FIGURE_FORMATS`` (atomically) and close it."""
    paths = []
    for extension in FIGURE_FORMATS:
        path = path_stem.with_suffix(f".{extension}")
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format=extension, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(figure)
    return paths


@dataclass(frozen=True)
class RocSeries:
    label: str
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float


def plot_roc(set_curves: Sequence[RocSeries], soft_curves: Sequence[RocSeries], path_stem: Path) -> list[Path]:
    """ROC curves of every attack vector on one plot per score: set Jaccard and confidence-weighted."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    colours = plt.get_cmap("tab10")
    for axis, curves, title in ((axes[0], set_curves, "set Jaccard"), (axes[1], soft_curves, "confidence-weighted")):
        for index, curve in enumerate(curves):
            if curve.fpr.size:
                axis.plot(curve.fpr, curve.tpr, color=colours(index % 10), lw=1.6,
                          label=f"{curve.label} (AUC {_number(curve.auc)})")
        axis.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        axis.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false-positive rate", title=f"UnMask detection, {title}")
        axis.legend(loc="lower right", fontsize=8)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("true-positive rate")
    return save_figure(figure, path_stem)


def plot_accuracy(metrics: Mapping[str, Any], path_stem: Path) -> list[Path]:
    """Grouped bars: accuracy per attack vector for undefended M, adversarial training and UnMask."""
    clean, attacks = metrics["clean"], metrics["attacks"]
    labels = ["clean", *[f"{a['name']}\nε={a['epsilon']:g}" for a in attacks]]
    series = {
        "undefended M": [clean["accuracy_m"], *[a["accuracy_m"] for a in attacks]],
        "adversarial training": [clean["accuracy_adv_trained"], *[a["accuracy_adv_trained"] for a in attacks]],
        "UnMask": [clean["accuracy_unmask"], *[a["accuracy_unmask"] for a in attacks]],
    }
    figure, axis = plt.subplots(figsize=(max(7.0, 1.1 * len(labels)), 4.2))
    width = 0.8 / len(series)
    positions = np.arange(len(labels))
    for index, (name, values) in enumerate(series.items()):
        heights = [100 * v if v is not None and not math.isnan(v) else 0.0 for v in values]
        axis.bar(positions + (index - 1) * width, heights, width, label=name)
    axis.set_xticks(positions, labels, fontsize=8)
    axis.set(ylim=(0, 105), ylabel="accuracy (%)", title="Accuracy under attack")
    axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=len(series), frameon=False)
    axis.grid(axis="y", alpha=0.3)
    return save_figure(figure, path_stem)


@dataclass(frozen=True)
class Series:
    """One line of a figure: its label, x values and y values with their 95% interval (in %)."""

    label: str
    x: list[float]
    y: list[float]
    low: list[float]
    high: list[float]
    style: str = "o-"


THREAT_MODEL_LINES: tuple[tuple[str, str, str, str], ...] = (
    ("undefended M", "accuracy_m", "undefended M: accuracy", "o-"),
    ("adversarial training", "accuracy_m", "adversarial training: accuracy", "s-"),
    ("UnMask", "robust_accuracy_with_detection", "UnMask: robust accuracy with detection", "^-"),
    ("UnMask", "accuracy_unmask", "UnMask: re-classification", "v-"),
    ("UnMask", "accuracy_system", "UnMask: system (deployed decision)", "D-"),
)
"""The threat-model figure's lines: (defense, figure, label, style); the defenses the run had."""


def threat_model_series(metrics: Mapping[str, Any], norm: str, fpr: float, *, over: str = "all attacks",
                        lines: Sequence[tuple[str, str, str, str]] = THREAT_MODEL_LINES) -> list[Series]:
    """The threat-model figure's series for one norm and FPR: each defense's figure against
    epsilon, its per-image worst case over every attack (``over``), with its 95% interval."""
    series = []
    for defense, figure, label, style in lines:
        rows = sorted((row for row in metrics["adaptive_summary"] if row["norm"] == norm and row["fpr_target"] == fpr
                       and row["defense"] == defense and row["over"] == over and row.get(figure) is not None),
                      key=lambda row: row["epsilon"])
        if rows:
            series.append(Series(label, [row["epsilon"] for row in rows], [100 * row[figure] for row in rows],
                                 [100 * row["intervals"][figure][0] for row in rows],
                                 [100 * row["intervals"][figure][1] for row in rows], style))
    return series


def _draw_series(axis: plt.Axes, series: Sequence[Series], norm: str, title: str) -> None:
    """Lines with their 95% intervals as error bars against epsilon (log scale, the budgets as ticks)."""
    epsilons: list[float] = []
    for line in series:
        errors = [[y - low for y, low in zip(line.y, line.low, strict=True)],
                  [high - y for y, high in zip(line.y, line.high, strict=True)]]
        axis.errorbar(line.x, line.y, yerr=errors, fmt=line.style, capsize=3, label=line.label)
        epsilons = sorted(set(epsilons) | set(line.x))
    symbol = NORMS[norm].symbol
    axis.set(xscale="log", xlabel=f"ε ({symbol}, 0-255 scale)", ylabel="accuracy (%), worst case over attacks",
             ylim=(-2, 102), title=title)
    axis.minorticks_off()  # log-scale minor labels would collide with the budgets'
    axis.set_xticks(epsilons or [1], [f"{e:g}" for e in epsilons] or ["1"])
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)


def plot_threat_models(metrics: Mapping[str, Any], path_stem: Path) -> list[Path]:
    """Accuracy against epsilon, one panel per norm, at the first detection FPR: each defense
    under its own strongest attacks (the per-image worst case over every attack), with 95%
    intervals as error bars (``threat_model_series``)."""
    summary = metrics["adaptive_summary"]
    fpr = min(row["fpr_target"] for row in summary)
    norms = [norm for norm in ("linf", "l2") if any(row["norm"] == norm for row in summary)]
    figure, axes = plt.subplots(1, len(norms), figsize=(6.0 * len(norms), 5.0), squeeze=False)
    for axis, norm in zip(axes[0], norms, strict=True):
        _draw_series(axis, threat_model_series(metrics, norm, fpr), norm,
                     f"{NORMS[norm].symbol} attacks, white-box and every other, detection at {100 * fpr:g}% FPR")
    return save_figure(figure, path_stem)


ROBUST_PANELS: tuple[tuple[str, str], ...] = (
    ("robust_accuracy_with_detection", "robust accuracy with detection"),
    ("accuracy_system", "system accuracy (the deployed decision)"),
)
"""The robust figure's panels: (figure, title); for M alone both are M's accuracy."""
ROBUST_STYLES = ("o-", "s-", "^-", "v-", "D-", "P-", "X-")


def robust_series(metrics: Mapping[str, Any], figure: str, norm: str = "linf",
                  fpr: float | None = None) -> list[Series]:
    """One line per defense (the baselines first): its per-image worst case over every attack
    of ``figure`` against epsilon at ``fpr`` (default: the first), with its 95% interval."""
    summary = metrics["adaptive_summary"]
    fpr = min(row["fpr_target"] for row in summary) if fpr is None else fpr
    lines = [(name, figure, name, ROBUST_STYLES[index % len(ROBUST_STYLES)])
             for index, name in enumerate(_defense_order(metrics))]
    return threat_model_series(metrics, norm, fpr, lines=lines)


def plot_robust(metrics: Mapping[str, Any], path_stem: Path) -> list[Path]:
    """UnMask-R's figure: accuracy against L-inf epsilon, one line per defense, each under its
    own worst case over every attack (white-box and gray-box), at the first detection FPR, with
    95% intervals as error bars (``robust_series``): robust accuracy with detection, and the
    deployed decision's accuracy."""
    fpr = min(row["fpr_target"] for row in metrics["adaptive_summary"])
    figure, axes = plt.subplots(1, len(ROBUST_PANELS), figsize=(6.0 * len(ROBUST_PANELS), 5.0), squeeze=False)
    for axis, (name, title) in zip(axes[0], ROBUST_PANELS, strict=True):
        _draw_series(axis, robust_series(metrics, name, fpr=fpr), "linf",
                     f"{title}, detection at {100 * fpr:g}% FPR")
    return save_figure(figure, path_stem)


LADDER_PANELS: tuple[tuple[str, str], ...] = ROBUST_PANELS
"""The ladder figure's rows: (figure, title); for M alone both are M's accuracy."""


def ladder_series(metrics: Mapping[str, Any], figure: str, epsilon: float, *, norm: str = "linf",
                  fpr: float | None = None) -> list[Series]:
    """One line per defense (the baselines first): ``figure`` (M's accuracy for M alone) against
    the ladder's rung at ``norm`` and ``epsilon`` and ``fpr`` (default: the first), with its 95%
    interval."""
    entries = metrics["adaptive_ladder"]["figures"]
    fpr = min(entry["fpr_target"] for entry in entries) if fpr is None else fpr
    defenses = list(dict.fromkeys(entry["defense"] for entry in entries))
    alone = [name for name in defenses if not any(e["defense"] == name and e["figure"] != "accuracy_m"
                                                  for e in entries)]
    series = []
    for index, name in enumerate([*alone, *(name for name in defenses if name not in alone)]):
        wanted = "accuracy_m" if name in alone else figure
        entry = next((e for e in entries if (e["defense"], e["figure"], e["norm"], e["epsilon"], e["fpr_target"])
                      == (name, wanted, norm, epsilon, fpr)), None)
        if entry is None:
            continue
        points = entry["curve"]
        series.append(Series(name, [point["rung"] for point in points], [100 * point["value"] for point in points],
                             [100 * point["interval"][0] for point in points],
                             [100 * point["interval"][1] for point in points],
                             ROBUST_STYLES[index % len(ROBUST_STYLES)]))
    return series


def plot_ladder(metrics: Mapping[str, Any], path_stem: Path) -> list[Path]:
    """The budget ladder's figure: accuracy against the budget (the rung, x the first), one
    column per L-inf epsilon the ladder ran, robust accuracy with detection and the deployed
    decision's accuracy, one line per defense with its 95% interval, at the first detection FPR."""
    entries = metrics["adaptive_ladder"]["figures"]
    fpr = min(entry["fpr_target"] for entry in entries)
    epsilons = sorted({entry["epsilon"] for entry in entries if entry["norm"] == "linf"})
    rungs = [rung["rung"] for rung in metrics["adaptive_ladder"]["rungs"]]
    figure, axes = plt.subplots(len(LADDER_PANELS), max(1, len(epsilons)),
                                figsize=(5.6 * max(1, len(epsilons)), 4.2 * len(LADDER_PANELS) + 0.6), squeeze=False)
    for column, epsilon in enumerate(epsilons):
        for row, (name, title) in enumerate(LADDER_PANELS):
            axis = axes[row, column]
            for line in ladder_series(metrics, name, epsilon, fpr=fpr):
                errors = [[y - low for y, low in zip(line.y, line.low, strict=True)],
                          [high - y for y, high in zip(line.y, line.high, strict=True)]]
                axis.errorbar(line.x, line.y, yerr=errors, fmt=line.style, capsize=3, label=line.label)
            axis.set(xscale="log", xlabel="budget (× the first rung's)", ylabel="accuracy (%), worst case",
                     ylim=(-2, 102))
            axis.set_title(f"{title}\nL∞ ε = {epsilon:g}, detection at {100 * fpr:g}% FPR", fontsize=10)
            axis.minorticks_off()
            axis.set_xticks(rungs, [f"×{rung}" for rung in rungs])
            axis.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    return save_figure(figure, path_stem)


@dataclass(frozen=True)
class ExamplePanel:
    """One image with K's detections and the verdicts to print above it."""

    title: str
    image: np.ndarray  # (H, W, 3) in [0, 1]
    masks: np.ndarray  # (detections, H, W) bool
    part_indices: np.ndarray  # (detections,) index into PARTS
    caption: str


def plot_examples(panels: Sequence[ExamplePanel], path_stem: Path) -> list[Path]:
    """Side-by-side images with K's part masks outlined and named, and the verdicts below."""
    from skimage.segmentation import find_boundaries

    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.9))
    axes = np.atleast_1d(axes)
    colours = plt.get_cmap("tab20")
    for axis, panel in zip(axes, panels, strict=True):
        shown = panel.image.copy()
        for mask, part in zip(panel.masks, panel.part_indices, strict=True):
            colour = np.array(colours(int(part) % 20)[:3])
            shown[find_boundaries(mask, mode="inner")] = colour
        axis.imshow(shown, interpolation="nearest")
        for mask, part in zip(panel.masks, panel.part_indices, strict=True):
            rows, columns = np.nonzero(mask)
            if rows.size:
                axis.text(columns.mean(), rows.mean(), PARTS[int(part)], fontsize=7, ha="center", va="center",
                          color="white", bbox={"facecolor": colours(int(part) % 20), "alpha": 0.75, "pad": 1, "lw": 0})
        axis.set_title(panel.title, fontsize=10)
        axis.set_xlabel(panel.caption, fontsize=8)
        axis.set_xticks([])
        axis.set_yticks([])
    return save_figure(figure, path_stem)


TRAINING_LOSSES: tuple[str, ...] = ("train_loss", "loss")
"""The record keys of a training's loss per epoch: M's mean training loss, K's total loss."""


def plot_training(histories: Mapping[str, Sequence[Mapping[str, float]] | None],
                  path_stem: Path) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """Training curves, one column per model (``histories``: a name -> its per-epoch records, as
    ``history.json`` keeps them; None or empty: not trained by this run, left out): the training
    loss on top (``TRAINING_LOSSES``), every validation metric (``val_*`` keys: M's accuracy and
    adversarial accuracy, K's part precision and recall) below, against the epoch. Returns what
    was drawn, read back from the figure: {panel title: {line label: (epochs, values)}}."""
    trained = {name: list(records) for name, records in histories.items() if records}
    figure, axes = plt.subplots(2, max(1, len(trained)), figsize=(4.4 * max(1, len(trained)), 6.2), squeeze=False,
                                sharex="col")
    for column, (name, records) in enumerate(trained.items()):
        epochs = [record["epoch"] for record in records]
        loss_key = next((key for key in TRAINING_LOSSES if key in records[0]), None)
        loss_axis, metric_axis = axes[0, column], axes[1, column]
        if loss_key is not None:
            loss_axis.plot(epochs, [record[loss_key] for record in records], "o-", color="tab:red",
                           label=loss_key.replace("_", " "))
        metrics = [key for key in records[0] if key.startswith("val_")]
        for index, key in enumerate(metrics):
            metric_axis.plot(epochs, [100 * record[key] for record in records], "o-", color=f"C{index}",
                             label=key.removeprefix("val_").replace("_", " "))
        loss_axis.set(title=f"{name}: training loss", ylabel="loss")
        metric_axis.set(title=f"{name}: validation", xlabel="epoch", ylabel="%", ylim=(0, 102))
        for axis in (loss_axis, metric_axis):
            axis.grid(alpha=0.3)
            if axis.lines:
                axis.legend(fontsize=8)
    drawn = {axis.get_title(): {line.get_label(): ([float(x) for x in line.get_xdata()],
                                                   [float(y) for y in line.get_ydata()]) for line in axis.lines}
             for axis in axes.flat if axis.get_title()}
    save_figure(figure, path_stem)
    return drawn

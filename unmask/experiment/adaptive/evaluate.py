"""``adaptive_evaluation``: the threat-model evaluation's sequence, defense x attack x budget x
rung of the budget ladder, and its ``metrics.json`` sections."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from unmask.attacks import NORMS, AttackKind, AttackOptions, AttackVector
from unmask.attacks.adaptive import ADAPTIVE_ATTACKS
from unmask.data.sampling import stratified_sample
from unmask.evaluation import Scored, fix_thresholds
from unmask.experiment.adaptive.defenses import (
    CleanView,
    Defense,
    clean_figures,
    defenses_of,
    evidence_of,
    slug,
    unflagged_wrong_classes,
)
from unmask.experiment.adaptive.ladder import every_figure_converged, ladder_section, offsets
from unmask.experiment.adaptive.rows import Row
from unmask.experiment.adaptive.sequence import attack_sequence, gray_box_rows
from unmask.experiment.adaptive.worst_cases import clean_views, summarise
from unmask.experiment.evaluator import Evaluator
from unmask.experiment.plan import AdaptiveSpec
from unmask.experiment.stages import TrainedPartExtractor


def adaptive_evaluation(evaluator: Evaluator, spec: AdaptiveSpec, gray_box: dict[AttackVector, Scored], *,
                        gray_box_options: AttackOptions, defenses: list[Defense] | None = None,
                        surrogate: TrainedPartExtractor | None = None) -> dict[str, Any]:
    """Every row of the threat-model table and its summary: the ``adaptive``,
    ``adaptive_summary``, ``adaptive_comparisons`` and ``adaptive_ladder`` sections of
    ``metrics.json``, and each rung's seconds for its ``timing``. ``gray_box`` holds the run's gray-box vectors (reused where a budget
    matches; the others are attacked on the sample with ``gray_box_options``); ``surrogate`` is
    K' of the transfer threat model (needed with it); ``defenses``: default
    ``defenses_of(evaluator)``. Also the ``defenses`` section (each defense's clean figures) and
    ``unflagged_wrong_class``.

    The sequence runs rung by rung of ``spec.ladder``; within a rung, budget by budget (smallest
    first, per norm), defense by defense, and per UnMask-like defense per FPR and threat model,
    its attacks in the order given; M alone meets ``m_apgd`` (once per budget and rung: it has
    no threshold). After each rung from the second, the ladder stops if every headline figure
    has converged."""
    defenses = defenses or defenses_of(evaluator)
    for defense in defenses:
        if defense.k is not None and (defense.clean is None or defense.validation is None):
            raise ValueError(f"{defense.name}: an UnMask-like defense needs its own clean test and validation "
                             "predictions (they fix its thresholds)")
    labels, clean = evaluator.labels, evaluator.clean()
    correct = np.flatnonzero(clean.m == labels)
    sample = correct[stratified_sample(labels[correct], spec.max_images, seed=evaluator.spec.seed)]
    label_only = stratified_sample(labels[sample], spec.label_only_images, seed=evaluator.spec.seed)
    budgets = sorted({(vector.norm.name, vector.epsilon) for vector in spec.vectors})
    surrogate_validation = _surrogate_validation(evaluator, spec, defenses, surrogate)
    views = {defense.name: CleanView(defense.clean.detection[sample], defense.clean.predictions.parts[sample],
                                     None if defense.decision.is_paper else evidence_of(defense.clean.subset(sample)))
             for defense in defenses if defense.clean is not None}
    view, sample_labels, classes = clean_views(views), labels[sample], len(evaluator.class_set.classes)

    # a defense --adaptive-defenses leaves out gets no row at all: a worst case over the gray-box
    # attack alone would read as its white-box figure
    attacked = [defense for defense in defenses if defense.k is None or spec.attacks(slug(defense.name))]
    rows: list[Row] = [row for fpr in spec.fprs for norm, epsilon in budgets
                       for row in gray_box_rows(evaluator, gray_box, gray_box_options, sample, attacked, NORMS[norm],
                                                epsilon, fpr)]
    alone_fpr = spec.fprs[0]  # M alone flags nothing: its rows are computed once, at the first FPR
    rungs: list[int] = []
    for rung in spec.ladder.rungs:
        if rungs and evaluator.runtime.progress:
            tqdm.write(f"[adaptive] budget ladder: rung x{rung} ({', '.join(spec.ladder.doublings(rung))})")
        for norm, epsilon in budgets:
            for defense in attacked:
                if defense.k is None:
                    vector = ADAPTIVE_ATTACKS.vector(f"m_apgd_{norm}", epsilon)
                    rows += attack_sequence(evaluator, spec, sample, label_only, rows, [vector], defense, "white-box",
                                            alone_fpr, rung, None, None, None, None)
                    continue
                vectors = [vector for vector in spec.vectors if (vector.norm.name, vector.epsilon) == (norm, epsilon)
                           and vector.attack.attack_class.needs_part_model]
                for fpr in spec.fprs:
                    threshold = defense.threshold(fpr)
                    for threat_model in spec.threat_models:
                        attacker, attacker_threshold = defense.k, threshold
                        if threat_model == "transfer":
                            attacker = surrogate
                            attacker_threshold = fix_thresholds(surrogate_validation[defense.name], fpr).set_jaccard
                        rows += attack_sequence(evaluator, spec, sample, label_only, rows, vectors, defense,
                                                threat_model, fpr, rung, threshold, attacker, attacker_threshold,
                                                defense.clean.detection[sample])
        rungs.append(rung)
        if len(rungs) > 1 and every_figure_converged(rows, sample_labels, view, rungs,
                                                     tolerance=spec.ladder.tolerance):
            break
    alone = {defense.name for defense in defenses if defense.k is None}
    rows += [dataclasses.replace(row, fpr=fpr) for row in rows if row.defense in alone and row.fpr == alone_fpr
             and row.threat_model != "gray-box" for fpr in spec.fprs[1:]]
    order = {defense.name: index for index, defense in enumerate(defenses)}
    rows.sort(key=lambda row: (row.fpr, budgets.index((row.norm.name, row.epsilon)), row.rung,
                               row.threat_model != "gray-box", order[row.defense]))

    laddered = sorted({vector for vector in (*spec.vectors, *(ADAPTIVE_ATTACKS.vector(f"m_apgd_{norm}", epsilon)
                                                               for norm, epsilon in budgets))
                       if vector.attack.attack_class.aims is not None and vector.attack.kind is not AttackKind.LABEL_ONLY},
                      key=lambda vector: vector.label)
    ladder, timing = ladder_section(spec, rows, sample_labels, view, rungs, laddered=laddered, classes=classes,
                            sample_fingerprint={"test": evaluator.test.fingerprint, "sample": sample.tolist(),
                                                "validation": evaluator.validation_images.fingerprint},
                            defenses=defenses, seed=evaluator.spec.seed)
    if len(rungs) == 1:
        ladder["offsets"] = offsets(ladder, spec.ladder)
    return {**summarise(rows, sample_labels, views, seed=evaluator.spec.seed),
            "adaptive_ladder": ladder, "timing": timing,
            "defenses": clean_figures(evaluator, defenses, spec.fprs),
            "unflagged_wrong_class": unflagged_wrong_classes(evaluator.class_set, defenses, views, sample_labels,
                                                             spec.fprs)}


def _surrogate_validation(evaluator: Evaluator, spec: AdaptiveSpec, defenses: list[Defense],
                          surrogate: TrainedPartExtractor | None) -> dict[str, Scored]:
    """Per UnMask-like defense, K' with the defense's M on the validation images: they fix the
    transfer attacker's thresholds (empty without the transfer threat model)."""
    if "transfer" not in spec.threat_models:
        return {}
    if surrogate is None:
        raise ValueError("the transfer threat model needs the surrogate K'")
    found = {}
    for defense in (d for d in defenses if d.k is not None):
        own = defense.m is evaluator.m
        found[defense.name] = evaluator.clean_predictions(
            evaluator.validation_images, evaluator.folder.path / "adaptive" / (
                "surrogate-validation.npz" if own else f"{slug(defense.name)}-surrogate-validation.npz"),
            baseline=False, m=None if own else defense.m, k=surrogate,
            what="K' on the validation images" + ("" if own else f" ({defense.name}'s M)"))
    return found

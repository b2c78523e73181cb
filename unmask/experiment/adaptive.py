"""The security evaluation the paper never had: attacks that know K, beside the paper's gray-box
attacks, all judged on the real pipeline.

On a seeded, class-stratified sample of test images that M classifies correctly when clean, and
for each detection threshold (fixed on clean validation images at each false-positive rate of
``--adaptive-fprs``), every attack and budget runs in batches (sharded over ``torchrun``'s
processes, resumable, stamped with what made it), and every adversarial image — 8-bit, as it
would be saved — is judged by the hard pipeline: M's argmax, K's real detection rule, UnMask's
set-Jaccard detection score against the threshold and its re-classification.

Threat models (every row names its own):

- ``gray-box``: the paper's attacker knows M only: PGD on M (``pgd_linf`` / ``pgd_l2``) at the
  same budgets as the adaptive attacks;
- ``transfer``: crafted against M and a surrogate K' (K's recipe, another seed, half of K's
  training split) with thresholds fixed the same way on K'; judged on the real K;
- ``white-box``: crafted against M, K, the part table and the real thresholds.

Per row: the attack's success rate (M wrong and not flagged), robust accuracy with detection
(Tramèr 2022's risk with rejection: an image counts as handled when its clean version is not
flagged and its attacked version is either classified right or flagged), UnMask's defended
(re-classification) accuracy, M's accuracy, and K's part precision and recall on the attacked
images against K's parts on their clean versions. The summary is the per-image worst case over
every attack of a norm and budget (AutoAttack-style).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unmask.attacks import AttackVector
from unmask.attacks.adaptive import LABEL_ONLY_ATTACKS, DefenseTarget, adaptive_attack
from unmask.data.sampling import stratified_sample
from unmask.evaluation import Predictions, Scored, fix_thresholds
from unmask.experiment.batches import Arrays, BatchComputation, resumable_result
from unmask.experiment.plan import AdaptiveVector, Plan
from unmask.experiment.stages import (
    TrainedClassifier,
    TrainedPartExtractor,
    attacked_predictions,
    clean_predictions,
    hard_judge,
    trained_surrogate_part_extractor,
)
from unmask.metrics import accuracy
from unmask.provenance import digest
from unmask.runtime import Runtime
from unmask.train.part_extractor import part_set_precision_recall

GRAY_BOX_ATTACK = {"linf": "pgd_linf", "l2": "pgd_l2"}
"""The paper's M-only attack of each norm: the gray-box row beside each adaptive budget."""


@dataclass(frozen=True)
class Judged:
    """The hard pipeline's verdict on the attacked versions of the sample's images, and what the
    attack itself reports (``goal``: its own aim reached; ``distance``: for minimisation attacks)."""

    m: np.ndarray
    parts: np.ndarray
    detection: np.ndarray
    unmask: np.ndarray
    goal: np.ndarray | None = None
    distance: np.ndarray | None = None


@dataclass
class Row:
    """One threat model x attack x budget x false-positive rate, with its per-image outcomes."""

    threat_model: str
    attack: str
    norm: str
    epsilon: float
    fpr: float
    threshold: float
    judged: Judged
    adv_trained_correct: np.ndarray | None = None
    positions: np.ndarray | None = None
    """Which images of the adaptive sample the row covers (None: all; the label-only attacks run
    on a sub-sample and stay out of the worst cases)."""


@dataclass
class AdaptiveContext:
    """What the adaptive evaluation reads from the run: the evaluated test images (and labels),
    their clean and the validation images' predictions, the models and the gray-box vectors."""

    plan: Plan
    runtime: Runtime
    folder: Path
    images: torch.Tensor
    labels: torch.Tensor
    clean: Scored
    validation: Scored
    validation_images: torch.Tensor
    m: TrainedClassifier
    adv_trained: TrainedClassifier | None
    k: TrainedPartExtractor
    gray_box: dict[AttackVector, Scored]
    inputs: dict[str, Any]
    """What every prediction on the test sample depends on (data, sample, models)."""
    validation_data: str
    """The validation split's fingerprint."""
    precision: str = "float32"
    """M's (and the baseline's) inference precision (K's is its extractor's)."""


def adaptive_evaluation(context: AdaptiveContext) -> dict[str, Any]:
    """Every row of the threat-model table and its summary: the ``adaptive`` and
    ``adaptive_summary`` sections of ``metrics.json``."""
    plan, runtime = context.plan, context.runtime
    spec = plan.adaptive
    labels = context.labels.numpy()
    correct = np.flatnonzero(context.clean.m == labels)
    sample = correct[stratified_sample(labels[correct], spec.max_images, seed=plan.evaluation.seed)]
    clean_parts = context.clean.predictions.parts[sample]
    label_only_positions = stratified_sample(labels[sample], spec.label_only_images, seed=plan.evaluation.seed)
    budgets = sorted({(vector.norm, vector.epsilon) for vector in spec.vectors})
    surrogate = trained_surrogate_part_extractor(plan, runtime) if "transfer" in spec.threat_models else None
    surrogate_validation = None
    if surrogate is not None:
        surrogate_validation = Scored.of(Predictions.from_arrays(_in_batches(
            context, context.folder / "adaptive" / "surrogate-validation.npz",
            {"data": context.validation_data, "m": context.m.fingerprint, "k": surrogate.fingerprint,
             "m_inference": context.inputs["m_inference"]},
            len(context.validation_images),
            lambda number, indices: (clean_predictions(context.validation_images[indices], context.m.model, None,
                                                       surrogate.extractor, precision=context.precision).arrays(),
                                     {}),
            batch_size=plan.evaluation.batch_size, what="K' on the validation images")), plan.class_set)

    rows: list[Row] = []
    for fpr in spec.fprs:
        threshold = fix_thresholds(context.validation, fpr).set_jaccard
        for norm, epsilon in budgets:
            rows.append(_gray_box_row(context, sample, norm, epsilon, fpr, threshold))
        for threat_model in spec.threat_models:
            if threat_model == "white-box":
                attacker, attacker_threshold = context.k, threshold
            else:
                attacker, attacker_threshold = surrogate, fix_thresholds(surrogate_validation, fpr).set_jaccard
            for vector in spec.vectors:
                positions = label_only_positions if vector.name in LABEL_ONLY_ATTACKS else None
                row = _adaptive_row(context, sample if positions is None else sample[positions], vector,
                                    threat_model, fpr, threshold, attacker, attacker_threshold)
                rows.append(replace(row, positions=positions))
    clean_detection = context.clean.detection[sample]
    entries = [_entry(row, labels[sample][_all(row.positions)], clean_detection[_all(row.positions)],
                      clean_parts[_all(row.positions)]) for row in rows]
    summary = _worst_cases([row for row in rows if row.positions is None], labels[sample], clean_detection)
    return {"adaptive": entries, "adaptive_summary": summary}


# --- the rows -------------------------------------------------------------------------------------


def _gray_box_row(context: AdaptiveContext, sample: np.ndarray, norm: str, epsilon: float, fpr: float,
                  threshold: float) -> Row:
    """The paper's attack at this budget (PGD on M; the baseline attacked through its own
    gradients), from the run's vectors when it ran it, else computed on the sample."""
    vector = AttackVector(GRAY_BOX_ATTACK[norm], epsilon)
    if vector in context.gray_box:
        scored = context.gray_box[vector].subset(sample)
    else:
        plan = context.plan
        fingerprint = {**context.inputs, "sample": digest(sample.tolist()),
                       "attack": {"vector": vector.label, **asdict(plan.attack)}, "seed": plan.evaluation.seed}
        images, labels = context.images[sample], context.labels[sample]
        scored = Scored.of(Predictions.from_arrays(_in_batches(
            context, context.folder / "adaptive" / f"gray-box-{vector.name}-eps{epsilon:g}.npz", fingerprint,
            len(sample),
            lambda number, indices: (attacked_predictions(
                vector, images[indices], labels[indices], context.m.model,
                context.adv_trained.model if context.adv_trained is not None else None, context.k.extractor,
                options=plan.attack, seed=plan.evaluation.seed, batch=number,
                precision=context.precision)[0].arrays(), {}),
            batch_size=plan.evaluation.batch_size, what=f"gray-box {vector.label} on the adaptive sample")),
            plan.class_set)
    predictions = scored.predictions
    judged = Judged(predictions.m, predictions.parts, scored.detection, scored.unmask)
    baseline = predictions.adv_trained
    return Row("gray-box", vector.name, norm, epsilon, fpr, threshold, judged,
               None if baseline is None else baseline == context.labels.numpy()[sample])


def _adaptive_row(context: AdaptiveContext, sample: np.ndarray, vector: AdaptiveVector, threat_model: str,
                  fpr: float, threshold: float, attacker: TrainedPartExtractor, attacker_threshold: float) -> Row:
    """An adaptive attack crafted against ``attacker`` (K, or K' for transfer) at
    ``attacker_threshold``, judged on the real pipeline at ``threshold``."""
    plan = context.plan
    class_set = plan.class_set
    real_judge = hard_judge(context.m.model, context.k.extractor, class_set, threshold, precision=context.precision)
    target = DefenseTarget(
        classifier=context.m.model, part_model=attacker.extractor.model,
        class_parts=torch.from_numpy(np.asarray(class_set.expected, dtype=np.float32)),
        k_score_threshold=plan.k.rule.score_threshold, detection_threshold=attacker_threshold,
        judge=real_judge if threat_model == "white-box" else
        hard_judge(context.m.model, attacker.extractor, class_set, attacker_threshold, precision=context.precision))
    fingerprint = {**context.inputs, "sample": digest(sample.tolist()), "threat_model": threat_model,
                   "attacker_k": attacker.fingerprint, "attack": {"vector": vector.label, **asdict(plan.adaptive.options)},
                   "attacker_threshold": attacker_threshold, "threshold": threshold}
    images, labels = context.images[sample], context.labels[sample]

    def attack_batch(number: int, indices: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        # each image's random starts derive from its position in the test sample, not from the batch
        result = adaptive_attack(target, images[indices], labels[indices], vector.name, vector.epsilon,
                                 plan.adaptive.options, indices=torch.from_numpy(sample[indices]))
        verdict = result.verdict if threat_model == "white-box" else real_judge(result.images)
        arrays = {"m": verdict.m_prediction.numpy(), "parts": verdict.parts.numpy(),
                  "detection": verdict.detection_score.numpy(), "unmask": verdict.unmask_prediction.numpy(),
                  "goal": result.success.numpy()}
        if result.distances is not None:
            arrays["distance"] = result.distances.numpy().astype(np.float64)
        return arrays, {}

    name = f"{threat_model}-{vector.name}-eps{vector.epsilon:g}-fpr{fpr:g}.npz"
    arrays = _in_batches(context, context.folder / "adaptive" / name, fingerprint, len(sample), attack_batch,
                         batch_size=plan.adaptive.batch_size, what=f"{threat_model} {vector.label} at {fpr:.0%} FPR")
    judged = Judged(arrays["m"], arrays["parts"].astype(bool), arrays["detection"], arrays["unmask"],
                    arrays["goal"].astype(bool), arrays.get("distance"))
    return Row(threat_model, vector.name, vector.norm, vector.epsilon, fpr, threshold, judged)


def _in_batches(context: AdaptiveContext, result: Path, fingerprint: dict[str, Any], count: int,
                compute: BatchComputation, *, batch_size: int, what: str) -> Arrays:
    return resumable_result(result, fingerprint, count=count, batch_size=batch_size, compute=compute,
                            runtime=context.runtime, what=what)


# --- figures of a row ----------------------------------------------------------------------------


def _outcomes(row: Row, labels: np.ndarray, clean_detection: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: the attack succeeded (M wrong, not flagged); the image was handled (clean not
    flagged, attacked right or flagged); UnMask's re-classification was right; M was right."""
    flagged = row.judged.detection >= row.threshold
    m_right = row.judged.m == labels
    clean_flagged = clean_detection >= row.threshold
    return {"success": ~m_right & ~flagged, "handled": ~clean_flagged & (m_right | flagged),
            "unmask": (row.judged.unmask == labels), "m": m_right}


def _all(positions: np.ndarray | None) -> slice | np.ndarray:
    return slice(None) if positions is None else positions


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _entry(row: Row, labels: np.ndarray, clean_detection: np.ndarray, clean_parts: np.ndarray) -> dict[str, Any]:
    outcomes = _outcomes(row, labels, clean_detection)
    parts = part_set_precision_recall(row.judged.parts, clean_parts)
    entry = {
        "threat_model": row.threat_model, "attack": row.attack, "norm": row.norm, "epsilon": row.epsilon,
        "fpr_target": row.fpr, "detection_threshold": _finite(row.threshold), "n_images": int(len(labels)),
        "success_rate": float(outcomes["success"].mean()) if len(labels) else math.nan,
        "robust_accuracy_with_detection": float(outcomes["handled"].mean()) if len(labels) else math.nan,
        "accuracy_unmask": accuracy(row.judged.unmask, labels),
        "accuracy_m": accuracy(row.judged.m, labels),
        "accuracy_adv_trained": float(row.adv_trained_correct.mean()) if row.adv_trained_correct is not None
        else None,
        "part_precision": parts["part_precision"], "part_recall": parts["part_recall"],
        "parts_changed": float((row.judged.parts != clean_parts).sum(axis=1).mean()) if len(labels) else math.nan,
    }
    if row.judged.goal is not None:
        entry["goal_rate"] = float(row.judged.goal.mean()) if len(labels) else math.nan
    return entry


def _worst_cases(rows: list[Row], labels: np.ndarray, clean_detection: np.ndarray) -> list[dict[str, Any]]:
    """Per false-positive rate, norm and budget: the per-image worst case over every attack run
    there (every threat model: the headline), and over each threat model's attacks."""
    summary = []
    for key in sorted({(row.fpr, row.norm, row.epsilon) for row in rows}):
        group = [row for row in rows if (row.fpr, row.norm, row.epsilon) == key]
        scopes = [("all attacks", group)] + [(model, [row for row in group if row.threat_model == model])
                                             for model in ("gray-box", "transfer", "white-box")]
        for scope, members in scopes:
            if not members:
                continue
            outcomes = [_outcomes(row, labels, clean_detection) for row in members]
            summary.append({
                "fpr_target": key[0], "norm": key[1], "epsilon": key[2], "over": scope,
                "attacks": [f"{row.threat_model} {row.attack}" for row in members], "n_images": int(len(labels)),
                "success_rate": float(np.logical_or.reduce([o["success"] for o in outcomes]).mean()),
                "robust_accuracy_with_detection": float(np.logical_and.reduce([o["handled"] for o in outcomes]).mean()),
                "accuracy_unmask": float(np.logical_and.reduce([o["unmask"] for o in outcomes]).mean()),
                "accuracy_m": float(np.logical_and.reduce([o["m"] for o in outcomes]).mean()),
            })
    return summary

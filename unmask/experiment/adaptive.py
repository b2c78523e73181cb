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
from typing import Any

import numpy as np
import torch

from unmask.attacks import GRAY_BOX_ATTACKS, NORMS, PAPER_ATTACK, AttackKind, AttackOptions, AttackVector, Norm
from unmask.attacks.adaptive import DefenseTarget, adaptive_attack
from unmask.data.sampling import stratified_sample
from unmask.evaluation import Scored, fix_thresholds
from unmask.experiment.batches import Arrays
from unmask.experiment.evaluator import Evaluator
from unmask.experiment.plan import THREAT_MODELS, AdaptiveSpec
from unmask.experiment.stages import TrainedPartExtractor, hard_judge
from unmask.metrics import accuracy
from unmask.provenance import digest
from unmask.train.part_extractor import part_set_precision_recall


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
    norm: Norm
    epsilon: float
    fpr: float
    threshold: float
    judged: Judged
    adv_trained_correct: np.ndarray | None = None
    positions: np.ndarray | None = None
    """Which images of the adaptive sample the row covers (None: all; the label-only attacks run
    on a sub-sample and stay out of the worst cases)."""


def adaptive_evaluation(evaluator: Evaluator, spec: AdaptiveSpec, gray_box: dict[AttackVector, Scored], *,
                        gray_box_options: AttackOptions, surrogate: TrainedPartExtractor | None = None
                        ) -> dict[str, Any]:
    """Every row of the threat-model table and its summary: the ``adaptive`` and
    ``adaptive_summary`` sections of ``metrics.json``. ``gray_box`` holds the run's gray-box
    vectors (reused where a budget matches; the others are attacked on the sample with
    ``gray_box_options``); ``surrogate`` is K' of the transfer threat model (needed with it)."""
    labels, clean = evaluator.labels, evaluator.clean()
    correct = np.flatnonzero(clean.m == labels)
    sample = correct[stratified_sample(labels[correct], spec.max_images, seed=evaluator.spec.seed)]
    clean_parts = clean.predictions.parts[sample]
    label_only_positions = stratified_sample(labels[sample], spec.label_only_images, seed=evaluator.spec.seed)
    budgets = sorted({(vector.norm.name, vector.epsilon) for vector in spec.vectors})
    surrogate_validation = None
    if "transfer" in spec.threat_models:
        if surrogate is None:
            raise ValueError("the transfer threat model needs the surrogate K'")
        surrogate_validation = evaluator.clean_predictions(
            evaluator.validation_images, evaluator.folder.path / "adaptive" / "surrogate-validation.npz",
            baseline=False, k=surrogate, what="K' on the validation images")

    rows: list[Row] = []
    for fpr in spec.fprs:
        threshold = evaluator.thresholds(fpr).set_jaccard
        for norm, epsilon in budgets:
            rows.append(_gray_box_row(evaluator, gray_box, gray_box_options, sample, NORMS[norm], epsilon, fpr,
                                      threshold))
        for threat_model in spec.threat_models:
            if threat_model == "white-box":
                attacker, attacker_threshold = evaluator.k, threshold
            else:
                attacker, attacker_threshold = surrogate, fix_thresholds(surrogate_validation, fpr).set_jaccard
            for vector in spec.vectors:
                positions = label_only_positions if vector.attack.kind is AttackKind.LABEL_ONLY else None
                row = _adaptive_row(evaluator, spec, sample if positions is None else sample[positions], vector,
                                    threat_model, fpr, threshold, attacker, attacker_threshold)
                rows.append(replace(row, positions=positions))
    clean_detection = clean.detection[sample]
    entries = [_entry(row, labels[sample][_all(row.positions)], clean_detection[_all(row.positions)],
                      clean_parts[_all(row.positions)]) for row in rows]
    summary = _worst_cases([row for row in rows if row.positions is None], labels[sample], clean_detection)
    return {"adaptive": entries, "adaptive_summary": summary}


# --- the rows -------------------------------------------------------------------------------------


def _gray_box_row(evaluator: Evaluator, gray_box: dict[AttackVector, Scored], options: AttackOptions,
                  sample: np.ndarray, norm: Norm, epsilon: float, fpr: float, threshold: float) -> Row:
    """The paper's attack at this budget (PGD on M; the baseline attacked through its own
    gradients), from the run's vectors when it ran it, else computed on the sample."""
    vector = GRAY_BOX_ATTACKS.vector(PAPER_ATTACK[norm], epsilon)
    if vector in gray_box:
        scored = gray_box[vector].subset(sample)
    else:
        scored = evaluator.attacked(
            vector, options, sample=sample,
            path=evaluator.folder.path / "adaptive" / f"gray-box-{vector.name}-eps{epsilon:g}.npz",
            what=f"gray-box {vector.label} on the adaptive sample")
    predictions = scored.predictions
    judged = Judged(predictions.m, predictions.parts, scored.detection, scored.unmask)
    baseline = predictions.adv_trained
    return Row("gray-box", vector.name, vector.norm, epsilon, fpr, threshold, judged,
               None if baseline is None else baseline == evaluator.labels[sample])


def _adaptive_row(evaluator: Evaluator, spec: AdaptiveSpec, sample: np.ndarray, vector: AttackVector,
                  threat_model: str, fpr: float, threshold: float, attacker: TrainedPartExtractor,
                  attacker_threshold: float) -> Row:
    """An adaptive attack crafted against ``attacker`` (K, or K' for transfer) at
    ``attacker_threshold``, judged on the real pipeline at ``threshold``."""
    class_set, m = evaluator.class_set, evaluator.m.inference
    real_judge = hard_judge(m, evaluator.k.extractor, class_set, threshold)
    target = DefenseTarget(
        classifier=m.model, part_model=attacker.extractor.model,
        class_parts=torch.from_numpy(np.asarray(class_set.expected, dtype=np.float32)),
        k_score_threshold=attacker.extractor.score_threshold, detection_threshold=attacker_threshold,
        judge=real_judge if threat_model == "white-box" else
        hard_judge(m, attacker.extractor, class_set, attacker_threshold))
    key = evaluator.key(sample=digest(sample.tolist()), threat_model=threat_model, attacker_k=attacker.fingerprint,
                        attack={"vector": vector.label, **asdict(spec.options)},
                        attacker_threshold=attacker_threshold, threshold=threshold)
    images, labels = evaluator.test.images[sample], evaluator.test.labels[sample]

    def attack_batch(number: int, indices: np.ndarray) -> tuple[Arrays, Arrays]:
        # each image's random starts derive from its position in the test sample, not from the batch
        result = adaptive_attack(target, images[indices], labels[indices], vector, spec.options,
                                 indices=torch.from_numpy(sample[indices]))
        verdict = result.verdict if threat_model == "white-box" else real_judge(result.images)
        arrays = {"m": verdict.m_prediction.numpy(), "parts": verdict.parts.numpy(),
                  "detection": verdict.detection_score.numpy(), "unmask": verdict.unmask_prediction.numpy(),
                  "goal": result.success.numpy()}
        if result.distances is not None:
            arrays["distance"] = result.distances.numpy().astype(np.float64)
        return arrays, {}

    name = f"{threat_model}-{vector.name}-eps{vector.epsilon:g}-fpr{fpr:g}.npz"
    arrays = evaluator.result(evaluator.folder.path / "adaptive" / name, key, len(sample), attack_batch,
                              batch_size=spec.batch_size, what=f"{threat_model} {vector.label} at {fpr:.0%} FPR")
    judged = Judged(arrays["m"], arrays["parts"].astype(bool), arrays["detection"], arrays["unmask"],
                    arrays["goal"].astype(bool), arrays.get("distance"))
    return Row(threat_model, vector.name, vector.norm, vector.epsilon, fpr, threshold, judged)


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


def _entry(row: Row, labels: np.ndarray, clean_detection: np.ndarray, clean_parts: np.ndarray) -> dict[str, Any]:
    outcomes = _outcomes(row, labels, clean_detection)
    parts = part_set_precision_recall(row.judged.parts, clean_parts)
    entry = {
        "threat_model": row.threat_model, "attack": row.attack, "norm": row.norm.name, "epsilon": row.epsilon,
        "fpr_target": row.fpr, "detection_threshold": float(row.threshold), "n_images": int(len(labels)),
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
    for key in sorted({(row.fpr, row.norm.name, row.epsilon) for row in rows}):
        group = [row for row in rows if (row.fpr, row.norm.name, row.epsilon) == key]
        scopes = [("all attacks", group)] + [(model, [row for row in group if row.threat_model == model])
                                             for model in THREAT_MODELS]
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

"""From per-image predictions and part detections to the paper's figures (reference section 3).

Pure functions over arrays: no model runs here. The experiment feeds them the predictions of M,
of the adversarially trained M and K's part matrices for the clean and the attacked test images
(and the clean validation images, which fix the detection thresholds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from unmask.attacks import AttackVector
from unmask.defense import ClassSet, detection_scores, reclassify_batch
from unmask.io import atomic_path
from unmask.metrics import accuracy, detection_pairs, rates_at_threshold, roc, threshold_at_fpr


@dataclass
class Predictions:
    """What M, the adversarially trained M and K said about one batch of images.

    ``m`` and ``adv_trained`` are class indices in the class set's order (``adv_trained`` is
    None without the baseline); ``part_scores`` is K's (images, 44) matrix of each part's highest
    score, 0 where K found nothing, and ``parts`` the thresholded presence matrix.
    """

    m: np.ndarray
    parts: np.ndarray
    part_scores: np.ndarray
    adv_trained: np.ndarray | None = None

    def save(self, path: Path) -> None:
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        with atomic_path(path) as temporary, open(temporary, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    @classmethod
    def load(cls, path: Path) -> Predictions:
        with np.load(path, allow_pickle=False) as data:
            return cls(**{name: data[name] for name in data.files})


@dataclass(frozen=True)
class Thresholds:
    """Detection thresholds fixed on clean validation images at a target false-positive rate."""

    set_jaccard: float
    soft_jaccard: float
    target_fpr: float


def detection_score_pair(predictions: Predictions, class_set: ClassSet) -> tuple[np.ndarray, np.ndarray]:
    """(set-Jaccard score, confidence-weighted score) of each image against M's prediction."""
    return (detection_scores(predictions.parts, predictions.m, class_set),
            detection_scores(predictions.part_scores, predictions.m, class_set))


def fix_thresholds(validation: Predictions, class_set: ClassSet, target_fpr: float) -> Thresholds:
    """Thresholds at ``target_fpr`` on clean validation images scored against M's predictions."""
    set_scores, soft_scores = detection_score_pair(validation, class_set)
    return Thresholds(threshold_at_fpr(set_scores, target_fpr), threshold_at_fpr(soft_scores, target_fpr),
                      target_fpr)


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def clean_metrics(labels: np.ndarray, clean: Predictions, class_set: ClassSet) -> dict:
    return {
        "accuracy_m": accuracy(clean.m, labels),
        "accuracy_adv_trained": accuracy(clean.adv_trained, labels) if clean.adv_trained is not None else math.nan,
        "accuracy_unmask": accuracy(reclassify_batch(clean.parts, class_set), labels),
        "accuracy_unmask_soft": accuracy(reclassify_batch(clean.part_scores, class_set), labels),
        "n_images": int(len(labels)),
    }


def vector_metrics(
    vector: AttackVector,
    labels: np.ndarray,
    clean: Predictions,
    attacked: Predictions,
    class_set: ClassSet,
    thresholds: Thresholds,
) -> dict:
    """One attack vector's entry of ``metrics.json``.

    Accuracies are over all test images ("no prediction" counts as wrong). Detection follows the
    original: only images whose adversarial version fools M count, each giving the adversarial
    image as a positive and its clean version as a negative; AUC over those pairs. The deployable
    TPR is measured on the same fooled adversarial images, the FPR on all clean test images, both
    at the threshold fixed on validation data.
    """
    clean_set, clean_soft = detection_score_pair(clean, class_set)
    attacked_set, attacked_soft = detection_score_pair(attacked, class_set)
    pairs = detection_pairs(labels, attacked.m, clean_set, attacked_set)
    soft_pairs = detection_pairs(labels, attacked.m, clean_soft, attacked_soft)
    tpr, fpr = rates_at_threshold(pairs.positive, clean_set, thresholds.set_jaccard)
    tpr_soft, fpr_soft = rates_at_threshold(soft_pairs.positive, clean_soft, thresholds.soft_jaccard)
    adv_trained = attacked.adv_trained
    return {
        "name": vector.name,
        "norm": vector.norm,
        "epsilon": vector.epsilon,
        "accuracy_m": accuracy(attacked.m, labels),
        "accuracy_adv_trained": accuracy(adv_trained, labels) if adv_trained is not None else math.nan,
        "accuracy_unmask": accuracy(reclassify_batch(attacked.parts, class_set), labels),
        "accuracy_unmask_soft": accuracy(reclassify_batch(attacked.part_scores, class_set), labels),
        "detection": {
            "auc": roc(pairs.positive, pairs.negative).auc,
            "auc_soft": roc(soft_pairs.positive, soft_pairs.negative).auc,
            "n_pairs": len(pairs),
            "threshold": _finite(thresholds.set_jaccard),
            "tpr": tpr,
            "fpr": fpr,
            "threshold_soft": _finite(thresholds.soft_jaccard),
            "tpr_soft": tpr_soft,
            "fpr_soft": fpr_soft,
        },
    }


def summary_metrics(attack_entries: list[dict]) -> dict:
    """Means over the attack vectors; the gain is the paper's "31.18%" figure, in percentage points."""

    def mean(key: str) -> float:
        values = [entry[key] for entry in attack_entries if not math.isnan(entry[key])]
        return float(np.mean(values)) if values else math.nan

    aucs = [e["detection"]["auc"] for e in attack_entries if not math.isnan(e["detection"]["auc"])]
    unmask, adv_trained = mean("accuracy_unmask"), mean("accuracy_adv_trained")
    return {
        "mean_accuracy_m": mean("accuracy_m"),
        "mean_accuracy_unmask": unmask,
        "mean_accuracy_adv_trained": adv_trained,
        "mean_gain_over_adv_training": 100 * (unmask - adv_trained),
        "mean_auc": float(np.mean(aucs)) if aucs else math.nan,
    }

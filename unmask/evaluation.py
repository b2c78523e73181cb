"""From per-image predictions and part detections to the paper's figures (reference section 3).

Pure functions over arrays: no model runs here. The experiment feeds them the predictions of M,
of the adversarially trained M and K's part matrices for the clean and the attacked test images
(and the clean validation images, which fix the detection thresholds). Each set of predictions
is scored by UnMask's rules once (``Scored``); metrics, the per-image table, the figures and the
example choice all read those scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from unmask.defense import NO_PREDICTION, detection_scores, reclassify_batch
from unmask.io import atomic_path
from unmask.metrics import RocCurve, accuracy, detection_pairs, rates_at_threshold, roc, threshold_at_fpr
from unmask.parts import ClassSet


@dataclass
class Predictions:
    """What M, the adversarially trained M and K said about one batch of images.

    ``m`` and ``adv_trained`` are class indices in the class set's order (``adv_trained`` is
    None without the baseline); ``parts`` is K's (images, 44) bool matrix of detected parts and
    ``part_scores`` each part's highest detection score, 0 where K found nothing.
    """

    m: np.ndarray
    parts: np.ndarray
    part_scores: np.ndarray
    adv_trained: np.ndarray | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-image arrays by field name (a missing baseline left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Predictions:
        return cls(**{f.name: arrays[f.name] for f in fields(cls) if f.name in arrays})

    def save(self, path: Path) -> None:
        with atomic_path(path) as temporary, open(temporary, "wb") as handle:
            np.savez_compressed(handle, **self.arrays())

    @classmethod
    def load(cls, path: Path) -> Predictions:
        with np.load(path, allow_pickle=False) as data:
            return cls.from_arrays({name: data[name] for name in data.files})


@dataclass(frozen=True)
class Scored:
    """One set of predictions with UnMask's verdicts on it, computed once.

    ``detection`` is the set-Jaccard detection score of each image against M's prediction
    (high: likely adversarial) and ``unmask`` UnMask's re-classification from K's parts
    (``NO_PREDICTION`` when no class shares a part); the ``_soft`` twins use K's part scores
    (confidence-weighted Jaccard).
    """

    predictions: Predictions
    detection: np.ndarray
    detection_soft: np.ndarray
    unmask: np.ndarray
    unmask_soft: np.ndarray

    @classmethod
    def of(cls, predictions: Predictions, class_set: ClassSet) -> Scored:
        return cls(
            predictions,
            detection=detection_scores(predictions.parts, predictions.m, class_set),
            detection_soft=detection_scores(predictions.part_scores, predictions.m, class_set),
            unmask=reclassify_batch(predictions.parts, class_set),
            unmask_soft=reclassify_batch(predictions.part_scores, class_set),
        )

    @property
    def m(self) -> np.ndarray:
        return self.predictions.m

    def subset(self, indices: np.ndarray) -> Scored:
        """The same scores for the images ``indices`` only."""
        predictions = Predictions.from_arrays({name: array[indices] for name, array in self.predictions.arrays().items()})
        return Scored(predictions, self.detection[indices], self.detection_soft[indices], self.unmask[indices],
                      self.unmask_soft[indices])


@dataclass(frozen=True)
class Thresholds:
    """Detection thresholds fixed on clean validation images at a target false-positive rate."""

    set_jaccard: float
    soft_jaccard: float
    target_fpr: float


def fix_thresholds(validation: Scored, target_fpr: float) -> Thresholds:
    """Thresholds at ``target_fpr`` on clean validation images scored against M's predictions."""
    return Thresholds(threshold_at_fpr(validation.detection, target_fpr),
                      threshold_at_fpr(validation.detection_soft, target_fpr), target_fpr)


def clean_metrics(labels: np.ndarray, clean: Scored) -> dict:
    adv_trained = clean.predictions.adv_trained
    return {
        "accuracy_m": accuracy(clean.m, labels),
        "accuracy_adv_trained": accuracy(adv_trained, labels) if adv_trained is not None else math.nan,
        "accuracy_unmask": accuracy(clean.unmask, labels),
        "accuracy_unmask_soft": accuracy(clean.unmask_soft, labels),
        "n_images": int(len(labels)),
    }


@dataclass(frozen=True)
class DetectionCurves:
    """ROC curves of one attack's detection pairs, for set Jaccard and the soft variant."""

    set_jaccard: RocCurve
    soft_jaccard: RocCurve


def detection_curves(labels: np.ndarray, clean: Scored, attacked: Scored) -> DetectionCurves:
    """The original's detection protocol: images whose adversarial version fools M, each giving
    the adversarial image as a positive and its clean version as a negative."""
    pairs = detection_pairs(labels, attacked.m, clean.detection, attacked.detection)
    soft_pairs = detection_pairs(labels, attacked.m, clean.detection_soft, attacked.detection_soft)
    return DetectionCurves(roc(pairs.positive, pairs.negative), roc(soft_pairs.positive, soft_pairs.negative))


def vector_metrics(labels: np.ndarray, clean: Scored, attacked: Scored, thresholds: Thresholds,
                   curves: DetectionCurves) -> dict:
    """One attack vector's figures for ``metrics.json`` (the caller adds its name and budget).

    Accuracies are over all test images ("no prediction" counts as wrong). Detection follows the
    original: ``curves`` over the pairs of images whose adversarial version fools M. The
    deployable TPR is measured on the same fooled adversarial images, the FPR on all clean test
    images, both at the threshold fixed on validation data.
    """
    fooled = attacked.m != labels
    tpr, fpr = rates_at_threshold(attacked.detection[fooled], clean.detection, thresholds.set_jaccard)
    tpr_soft, fpr_soft = rates_at_threshold(attacked.detection_soft[fooled], clean.detection_soft,
                                            thresholds.soft_jaccard)
    adv_trained = attacked.predictions.adv_trained
    return {
        "accuracy_m": accuracy(attacked.m, labels),
        "accuracy_adv_trained": accuracy(adv_trained, labels) if adv_trained is not None else math.nan,
        "accuracy_unmask": accuracy(attacked.unmask, labels),
        "accuracy_unmask_soft": accuracy(attacked.unmask_soft, labels),
        "detection": {
            "auc": curves.set_jaccard.auc,
            "auc_soft": curves.soft_jaccard.auc,
            "n_pairs": int(fooled.sum()),
            "threshold": float(thresholds.set_jaccard),
            "tpr": tpr,
            "fpr": fpr,
            "threshold_soft": float(thresholds.soft_jaccard),
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


# --- what an attack did to each of UnMask's outputs ---------------------------------------------


@dataclass(frozen=True)
class Outcomes:
    """Per image of an attacked sample (every image right when clean), how each figure of the
    threat-model evaluation fared, judged on the real pipeline:

    - ``evaded``: the attack succeeded: M is wrong and the image is not flagged;
    - ``handled``: robust accuracy with detection (Tramer 2022's risk with rejection): the
      clean image is not flagged, and the attacked one is classified right by M or flagged;
    - ``reclassification``: UnMask's re-classification is right (None for a defense without
      a detector, which has none);
    - ``system``: the decision UnMask deploys is right: M's class when the image is not
      flagged, else the re-classified class;
    - ``m``: M is right.

    A defense that is M alone (no K) flags nothing: ``evaded`` is M wrong, ``handled`` and
    ``system`` are M right.
    """

    evaded: np.ndarray
    handled: np.ndarray
    reclassification: np.ndarray | None
    system: np.ndarray
    m: np.ndarray

    FIGURES = ("evaded", "handled", "reclassification", "system", "m")
    """Every figure; ``evaded`` is the attacker's (a success), the others the defense's (right)."""

    def __len__(self) -> int:
        return len(self.m)


def attack_outcomes(labels: np.ndarray, m: np.ndarray, *, detection: np.ndarray | None = None,
                    reclassified: np.ndarray | None = None, threshold: float | None = None,
                    clean_detection: np.ndarray | None = None, flagged: np.ndarray | None = None,
                    clean_flagged: np.ndarray | None = None, reject: bool = False) -> Outcomes:
    """The ``Outcomes`` of attacked images from M's classes and, for UnMask, their detection
    scores and re-classified classes, the detection threshold (flagged: score >= it) and the
    clean images' detection scores (None for M alone). A deployed decision rule other than the
    paper's (``unmask.rules``) gives its own ``flagged`` and ``clean_flagged`` instead, and
    ``reject``: a flagged image gets no class."""
    labels, m = np.asarray(labels), np.asarray(m)
    m_right = m == labels
    if detection is None:
        return Outcomes(evaded=~m_right, handled=m_right, reclassification=None, system=m_right, m=m_right)
    flagged = np.asarray(detection) >= threshold if flagged is None else np.asarray(flagged, dtype=bool)
    clean_flagged = np.asarray(clean_detection) >= threshold if clean_flagged is None else \
        np.asarray(clean_flagged, dtype=bool)
    reclassified = np.asarray(reclassified)
    deployed = np.where(flagged, np.full_like(reclassified, NO_PREDICTION) if reject else reclassified, m)
    return Outcomes(evaded=~m_right & ~flagged, handled=~clean_flagged & (m_right | flagged),
                    reclassification=reclassified == labels, system=deployed == labels, m=m_right)


def worst_case(outcomes: list[Outcomes]) -> Outcomes:
    """Per image, the worst over several attacks (AutoAttack-style): evaded if any attack
    evaded; right for a figure only if right under every attack."""
    if not outcomes:
        raise ValueError("the worst case of no attack is undefined")

    def every(name: str) -> np.ndarray | None:
        arrays = [getattr(outcome, name) for outcome in outcomes]
        return None if any(array is None for array in arrays) else np.logical_and.reduce(arrays)

    return Outcomes(evaded=np.logical_or.reduce([outcome.evaded for outcome in outcomes]), handled=every("handled"),
                    reclassification=every("reclassification"), system=every("system"), m=every("m"))


def strongest(named: dict[str, Outcomes], figure: str) -> str:
    """The attack that alone did the most against ``figure`` (most evasions, or fewest right);
    ties: the first named."""
    def damage(outcome: Outcomes) -> float:
        values = getattr(outcome, figure)
        return float(values.mean()) if figure == "evaded" else -float(values.mean())

    candidates = {name: outcome for name, outcome in named.items() if getattr(outcome, figure) is not None}
    return max(candidates, key=lambda name: damage(candidates[name])) if candidates else ""

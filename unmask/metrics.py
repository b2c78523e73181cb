"""Detection and defense metrics: accuracy, the original's detection pairs, ROC/AUC, and
thresholds fixed on validation data at a target false-positive rate.

Scores follow ``unmask.defense``: higher means "more likely adversarial", and an image is
flagged when its score is at least the threshold (sklearn's ``roc_curve`` convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from unmask.defense import NO_PREDICTION


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Share of correct predictions; ``NO_PREDICTION`` (-1) counts as wrong. NaN for no images."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} differ in shape")
    if labels.size == 0:
        return math.nan
    return float(np.mean((predictions == labels) & (predictions != NO_PREDICTION)))


@dataclass(frozen=True)
class DetectionPairs:
    """The original's detection protocol: for each image whose adversarial version fools M, one
    positive (the adversarial image's score) and one negative (its clean version's score)."""

    positive: np.ndarray
    negative: np.ndarray
    kept: np.ndarray  # indices of the kept images

    def __len__(self) -> int:
        return len(self.kept)

    @property
    def labels(self) -> np.ndarray:
        """1 for adversarial, 0 for clean, in the order of ``scores``."""
        return np.concatenate([np.ones(len(self.positive)), np.zeros(len(self.negative))])

    @property
    def scores(self) -> np.ndarray:
        return np.concatenate([self.positive, self.negative])


def detection_pairs(
    labels: np.ndarray,
    adversarial_predictions: np.ndarray,
    clean_scores: np.ndarray,
    adversarial_scores: np.ndarray,
    *,
    clean_predictions: np.ndarray | None = None,
) -> DetectionPairs:
    """Keep images whose adversarial version fools M (prediction differs from the label).

    ``clean_scores`` must be scored against M's clean prediction and ``adversarial_scores``
    against M's adversarial prediction. When ``clean_predictions`` is given, images M already
    gets wrong when clean are dropped too (a stricter variant; the original does not do this).
    """
    labels = np.asarray(labels)
    fooled = np.asarray(adversarial_predictions) != labels
    if clean_predictions is not None:
        fooled &= np.asarray(clean_predictions) == labels
    kept = np.flatnonzero(fooled)
    return DetectionPairs(
        positive=np.asarray(adversarial_scores, dtype=np.float64)[kept],
        negative=np.asarray(clean_scores, dtype=np.float64)[kept],
        kept=kept,
    )


@dataclass(frozen=True)
class RocCurve:
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float


def roc(positive_scores: np.ndarray, negative_scores: np.ndarray) -> RocCurve:
    """ROC curve and AUC (scikit-learn). AUC is NaN unless both classes are present."""
    positive = np.asarray(positive_scores, dtype=np.float64)
    negative = np.asarray(negative_scores, dtype=np.float64)
    if positive.size == 0 or negative.size == 0:
        empty = np.array([], dtype=np.float64)
        return RocCurve(empty, empty, empty, math.nan)
    y_true = np.concatenate([np.ones(positive.size), np.zeros(negative.size)])
    y_score = np.concatenate([positive, negative])
    fpr, tpr, thresholds = roc_curve(y_true, y_score, drop_intermediate=False)
    return RocCurve(fpr, tpr, thresholds, float(roc_auc_score(y_true, y_score)))


def threshold_at_fpr(negative_scores: np.ndarray, target_fpr: float) -> float:
    """The smallest threshold whose false-positive rate on ``negative_scores`` is at most
    ``target_fpr`` (flagged: score >= threshold).

    Among the thresholds that keep the constraint, the smallest flags the most, so it gives the
    highest true-positive rate. With discrete scores the achieved rate can be well below the
    target; when only "flag no clean image" meets it, the threshold sits just above the largest
    clean score.
    """
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target false-positive rate must lie in [0, 1], got {target_fpr}")
    negative = np.sort(np.asarray(negative_scores, dtype=np.float64))
    if negative.size == 0:
        raise ValueError("cannot fix a threshold without negative (clean) scores")
    for candidate in np.unique(negative):  # ascending: the first that meets the target wins
        if np.mean(negative >= candidate) <= target_fpr:
            return float(candidate)
    return float(np.nextafter(negative[-1], math.inf))


def rates_at_threshold(
    positive_scores: np.ndarray, negative_scores: np.ndarray, threshold: float
) -> tuple[float, float]:
    """(true-positive rate, false-positive rate) when flagging scores >= ``threshold``."""
    positive = np.asarray(positive_scores, dtype=np.float64)
    negative = np.asarray(negative_scores, dtype=np.float64)
    tpr = float(np.mean(positive >= threshold)) if positive.size else math.nan
    fpr = float(np.mean(negative >= threshold)) if negative.size else math.nan
    return tpr, fpr


# --- uncertainty --------------------------------------------------------------------------------

Z_95 = 1.959963984540054
"""The two-sided 95% quantile of the standard normal."""

BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class Rate:
    """A proportion over ``n`` images with its 95% confidence interval [``low``, ``high``]."""

    value: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}


def wilson_interval(successes: int, n: int, *, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (Wilson 1927): unlike the normal
    approximation it stays inside [0, 1] and does not collapse at 0% or 100%."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (0.0 if successes == 0 else max(0.0, centre - half)), (1.0 if successes == n else min(1.0, centre + half))


def rate(hits: np.ndarray) -> Rate:
    """The share of true entries of a per-image boolean array, with its Wilson interval."""
    hits = np.asarray(hits, dtype=bool)
    low, high = wilson_interval(int(hits.sum()), hits.size)
    return Rate(float(hits.mean()) if hits.size else math.nan, low, high, int(hits.size))


def bootstrap_rate(values: np.ndarray, *, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> Rate:
    """The mean of per-image ``values`` (booleans, or differences such as -1/0/1 between two
    defenses on the same images) with a percentile bootstrap 95% interval: the images are
    resampled with replacement (Efron & Tibshirani 1993), so a difference keeps its pairing."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return Rate(math.nan, math.nan, math.nan, 0)
    draws = np.random.default_rng(seed).integers(0, values.size, size=(resamples, values.size))
    means = values[draws].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return Rate(float(values.mean()), float(low), float(high), int(values.size))

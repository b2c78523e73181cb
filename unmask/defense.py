"""UnMask's decision rules: Jaccard similarity, the detection score and re-classification.

Every rule exists twice: one image at a time on Python sets (or part -> score mappings), and
vectorised over a batch on a part matrix of shape (images, 44) whose columns follow
``unmask.parts.PARTS``. A set-Jaccard matrix is the soft Jaccard of a 0/1 matrix, so one
vectorised core serves both; the per-image functions are written independently and the tests
check that the two paths agree.

Conventions (reference section 2): J(A, B) = |A ∩ B| / |A ∪ B|, and 0 when both are empty.
Detection score s = 1 - J(V[predicted], parts), high means likely adversarial. Re-classification
is the argmax of J over the class set, ties to the class that comes first in the class set's
order, and no prediction (None, or -1 in batches) when J is 0 for every class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from unmask.constants import NO_PREDICTION
from unmask.parts import PART_INDEX, PARTS, ClassSet, UnknownNameError

__all__ = ["NO_PREDICTION", "detection_score", "detection_scores", "jaccard", "jaccard_matrix", "part_matrix",
           "part_sets", "reclassify", "reclassify_batch", "soft_detection_score", "soft_jaccard", "soft_reclassify",
           "unflagged_wrong_class"]


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    """|A ∩ B| / |A ∪ B| of two part sets, 0.0 when both are empty."""
    a, b = set(a), set(b)
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def soft_jaccard(scores: Mapping[str, float], expected: Iterable[str]) -> float:
    """Confidence-weighted Jaccard Σ min / Σ max between part scores in [0, 1] and a part set.

    ``scores`` maps each detected part to its highest detection score (absent parts count as 0).
    With every score 1 this equals ``jaccard``. 0.0 when both sides are empty.
    """
    expected = set(expected)
    parts = expected | set(scores)
    numerator = sum(min(scores.get(p, 0.0), 1.0 if p in expected else 0.0) for p in parts)
    denominator = sum(max(scores.get(p, 0.0), 1.0 if p in expected else 0.0) for p in parts)
    return numerator / denominator if denominator > 0 else 0.0


def detection_score(part_set: Iterable[str], predicted_class: str, class_set: ClassSet) -> float:
    """1 - J(V[predicted_class], part_set): how badly the detected parts fit M's prediction."""
    return 1.0 - jaccard(class_set.expected_parts(predicted_class), part_set)


def soft_detection_score(
    scores: Mapping[str, float], predicted_class: str, class_set: ClassSet
) -> float:
    """1 - soft Jaccard between the part scores and V[predicted_class]."""
    return 1.0 - soft_jaccard(scores, class_set.expected_parts(predicted_class))


def _argmax_first(similarities: Sequence[float], classes: tuple[str, ...]) -> str | None:
    best_index, best = 0, similarities[0]
    for index, value in enumerate(similarities):
        if value > best:  # strict: a tie keeps the earlier class
            best_index, best = index, value
    return classes[best_index] if best > 0 else None


def reclassify(part_set: Iterable[str], class_set: ClassSet) -> str | None:
    """The class whose expected parts best match ``part_set``; None when none shares any part."""
    part_set = set(part_set)
    similarities = [jaccard(class_set.expected_parts(c), part_set) for c in class_set.classes]
    return _argmax_first(similarities, class_set.classes)


def soft_reclassify(scores: Mapping[str, float], class_set: ClassSet) -> str | None:
    """``reclassify`` with the confidence-weighted Jaccard."""
    similarities = [soft_jaccard(scores, class_set.expected_parts(c)) for c in class_set.classes]
    return _argmax_first(similarities, class_set.classes)


# --- vectorised over a batch -------------------------------------------------------------------


def part_matrix(part_sets: Iterable[Iterable[str]]) -> np.ndarray:
    """Boolean matrix (images, 44) of part sets; raises on a name outside ``PARTS``."""
    rows = list(part_sets)
    matrix = np.zeros((len(rows), len(PARTS)), dtype=bool)
    for row, parts in enumerate(rows):
        for part in parts:
            if part not in PART_INDEX:
                raise UnknownNameError(f"unknown part {part!r}; expected one of: {', '.join(PARTS)}")
            matrix[row, PART_INDEX[part]] = True
    return matrix


def part_sets(matrix: np.ndarray) -> list[frozenset[str]]:
    """Inverse of ``part_matrix``: the set of parts with a non-zero entry, per row."""
    return [frozenset(PARTS[j] for j in np.flatnonzero(row)) for row in np.asarray(matrix)]


def jaccard_matrix(parts: np.ndarray, class_set: ClassSet) -> np.ndarray:
    """Jaccard of every image (rows of ``parts``) with every class: shape (images, classes).

    ``parts`` is (images, 44): boolean for set Jaccard, or part scores in [0, 1] for the
    confidence-weighted variant (Σ min / Σ max).
    """
    scores = _check_part_matrix(parts)
    expected = class_set.expected
    # Σ_p min(s_p, v_p) and Σ_p max(s_p, v_p) with v in {0, 1}: min is s on V, max is 1 on V, s off V
    intersection = scores @ expected.T
    union = expected.sum(axis=1)[None, :] + scores.sum(axis=1, keepdims=True) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)


def detection_scores(
    parts: np.ndarray, predicted: np.ndarray, class_set: ClassSet
) -> np.ndarray:
    """Detection score per image: 1 - J(V[predicted[i]], parts[i]); ``predicted`` holds class
    indices into the class set's order."""
    similarities = jaccard_matrix(parts, class_set)
    predicted = np.asarray(predicted, dtype=np.int64)
    n_classes = similarities.shape[1]
    if predicted.shape != (similarities.shape[0],):
        raise ValueError(f"predicted must have shape ({similarities.shape[0]},), got {predicted.shape}")
    if predicted.size and (predicted.min() < 0 or predicted.max() >= n_classes):
        raise ValueError(f"predicted class indices must lie in [0, {n_classes}); got {predicted}")
    return 1.0 - similarities[np.arange(len(predicted)), predicted]


def unflagged_wrong_class(parts: np.ndarray, labels: np.ndarray, class_set: ClassSet,
                          threshold: float) -> np.ndarray:
    """Per image: whether some class other than its label would pass detection with these
    parts (1 - J(V[c], parts) < ``threshold``). On such an image an attacker who only moves M
    to that class is not flagged even if K's parts do not move at all: a robust K cannot
    defend it at this threshold."""
    similarities = jaccard_matrix(parts, class_set)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (similarities.shape[0],):
        raise ValueError(f"labels must have shape ({similarities.shape[0]},), got {labels.shape}")
    others = similarities.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    return 1.0 - others.max(axis=1, initial=-np.inf) < threshold


def reclassify_batch(parts: np.ndarray, class_set: ClassSet) -> np.ndarray:
    """Re-classified class index per image (class set order), ``NO_PREDICTION`` when every J is 0.

    ``np.argmax`` returns the first maximum, which is the tie rule.
    """
    similarities = jaccard_matrix(parts, class_set)
    best = similarities.argmax(axis=1)
    return np.where(similarities.max(axis=1, initial=0.0) > 0, best, NO_PREDICTION)


def _check_part_matrix(parts: np.ndarray) -> np.ndarray:
    parts = np.asarray(parts)
    if parts.ndim != 2 or parts.shape[1] != len(PARTS):
        raise ValueError(f"part matrix must have shape (images, {len(PARTS)}), got {parts.shape}")
    scores = parts.astype(np.float64)
    if scores.size and (scores.min() < 0 or scores.max() > 1):
        raise ValueError("part scores must lie in [0, 1]")
    return scores

"""UnMask's deployed decision as a choice of rule: when to flag an image, and what class it gets.

The paper (Freitas et al. 2020) flags an image when K's parts fit M's class badly (detection
score 1 - J(V[M's class], parts) at least a threshold fixed on clean validation images at a
stated false-positive rate) and re-classifies it as the best-matching class. UnMask-R measured
the gap that rule leaves: another class often passes detection with K's *clean* parts, so an
attacker who moves M alone is never flagged, however robust K is. The rules here close that gap
in different ways, in the spirit of KEMLP (Gürel et al., ICML 2021: a main model and weak
"knowledge" models joined by logical rules; M must agree with the part evidence):

- ``PaperRule`` (``paper``): the paper's rule, unchanged;
- ``AgreementRule`` (``agreement``): also flags an image whose M's class is not the best match
  of K's parts, so that evading needs M *and* K's parts to point to the same wrong class;
- ``PerClassRule`` (``per-class``): the paper's score against one threshold per M class, each at
  the stated rate on the validation images M assigns to it (so the overall rate is the stated one);
- ``PartClassifierRule`` (``part-classifier``): a small classifier on K's soft part evidence
  (presence and confidence per part), trained on K's outputs for clean training images; it is
  the re-classifier, its probability of M's class the detection score, and it must agree with M.

Every rule is fixed (``fixed``) on the clean validation images at the stated false-positive
rate: the flags that need no threshold (a disagreement) count against that rate first, and the
threshold takes what remains. Each has a ``reject`` variant: a flagged image gets no class
(``NO_PREDICTION``) instead of the re-classified one. Tramèr (ICML 2022) bounds what any
detector can claim (robust detection at ε gives a robust classifier at ε/2): the sanity check
for whatever these rules measure.

The white-box attacks know the deployed rule: ``DefenseTarget.rule`` hands them this object,
whose ``hard`` is the hard pipeline's decision on their iterates (the joint attack's gate, every
attack's surrogate verdict) and whose ``reclassifier_logits`` the re-classification attack
aims at (``unmask.attacks.adaptive``); the judge applies ``decide``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from unmask.constants import NO_PREDICTION
from unmask.defense import jaccard_matrix
from unmask.metrics import threshold_at_fpr
from unmask.parts import PARTS, ClassSet

__all__ = ["DECISION_RULES", "FLAGGED_DECISIONS", "PART_CLASSIFIER_DATA", "AgreementRule", "DecisionRule", "Evidence", "PaperRule",
           "PartClassifier", "PartClassifierRule", "PerClassRule", "RuleDecision", "decision_rule",
           "train_part_classifier"]

FLAGGED_DECISIONS: tuple[str, ...] = ("reclassify", "reject")
"""What a flagged image gets: its re-classified class (the paper's defense) or no class at all."""

PART_CLASSIFIER_DATA: tuple[str, ...] = ("clean", "clean+attacked")
"""What the part-classifier rule is trained on: K's evidence for M's clean training images, or
also for the same images under a K-only attack towards another class's parts, labelled with
their own class (adversarial training of the rule's classifier on K's outputs)."""


@dataclass(frozen=True)
class Evidence:
    """What the rules see of N images: M's classes ``m`` (N,) int64 in class-set order, K's
    hard parts ``parts`` (N, 44) bool and their confidences ``part_scores`` (N, 44) in [0, 1]
    (each part's highest detection score, 0 where K found none; the parts themselves when None)."""

    m: np.ndarray
    parts: np.ndarray
    part_scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        m = np.asarray(self.m, dtype=np.int64).reshape(-1)
        parts = np.asarray(self.parts).astype(bool)
        scores = parts.astype(np.float64) if self.part_scores is None else np.asarray(self.part_scores, np.float64)
        if parts.shape != (len(m), len(PARTS)) or scores.shape != parts.shape:
            raise ValueError(f"Evidence: expected parts and part_scores of shape ({len(m)}, {len(PARTS)}), got "
                             f"{parts.shape} and {scores.shape}")
        object.__setattr__(self, "m", m)
        object.__setattr__(self, "parts", parts)
        object.__setattr__(self, "part_scores", scores)

    def __len__(self) -> int:
        return len(self.m)

    def features(self) -> np.ndarray:
        """(N, 88) the part classifier's input: presence, then confidence, per part."""
        return np.concatenate([self.parts.astype(np.float64), self.part_scores], axis=1)

    @classmethod
    def concatenate(cls, *evidences: Evidence) -> Evidence:
        """The images of ``evidences``, in order, as one."""
        return cls(np.concatenate([e.m for e in evidences]), np.concatenate([e.parts for e in evidences]),
                   np.concatenate([e.part_scores for e in evidences]))


@dataclass(frozen=True)
class RuleDecision:
    """A rule's answer for N images: ``score`` (high: likely adversarial), ``flagged``, the
    re-classified class ``reclassified`` (``NO_PREDICTION`` when the re-classifier has none) and
    ``deployed``: M's class unless flagged, else the re-classified class (or ``NO_PREDICTION``
    under ``reject``)."""

    score: np.ndarray
    flagged: np.ndarray
    reclassified: np.ndarray
    deployed: np.ndarray


@dataclass(frozen=True, kw_only=True)
class DecisionRule:
    """The base of the rules: ``threshold`` (N/A until ``fixed``: NaN) against a detection score,
    ``reject`` (a flagged image gets no class), ``target_fpr`` (the rate it was fixed at).

    A subclass defines ``name``, ``scores`` and, where it has them, ``forced`` (flags that need no
    threshold) and ``reclassify``; per-class thresholds override ``thresholds_of`` and ``fixed``."""

    name: ClassVar[str] = ""
    class_set: ClassSet
    reject: bool = False
    threshold: float = math.nan
    target_fpr: float | None = None

    # --- what a rule is made of ------------------------------------------------------------

    def similarities(self, evidence: Evidence) -> np.ndarray:
        """(N, C) set Jaccard of K's hard parts with each class's expected parts."""
        return jaccard_matrix(evidence.parts, self.class_set)

    def scores(self, evidence: Evidence) -> np.ndarray:
        """(N,) detection score: the paper's 1 - J(V[M's class], parts)."""
        return 1.0 - self.similarities(evidence)[np.arange(len(evidence)), evidence.m]

    def forced(self, evidence: Evidence) -> np.ndarray:
        """(N,) bool: flagged whatever the threshold (none, for the paper's rule)."""
        return np.zeros(len(evidence), dtype=bool)

    def reclassify(self, evidence: Evidence) -> np.ndarray:
        """(N,) the re-classified class: argmax J (ties: the earlier class), ``NO_PREDICTION``
        when no class shares a part (``unmask.defense.reclassify_batch``)."""
        similarities = self.similarities(evidence)
        return np.where(similarities.max(axis=1, initial=0.0) > 0, similarities.argmax(axis=1), NO_PREDICTION)

    def thresholds_of(self, classes: np.ndarray) -> np.ndarray:
        """(N,) the threshold an image's score meets when M says ``classes`` (one for every class here)."""
        self._check_fixed()
        return np.full(len(classes), self.threshold, dtype=np.float64)

    # --- the decision ----------------------------------------------------------------------

    def decide(self, evidence: Evidence) -> RuleDecision:
        """The deployed decision on ``evidence``."""
        score = self.scores(evidence)
        flagged = self.forced(evidence) | (score >= self.thresholds_of(evidence.m))
        reclassified = self.reclassify(evidence)
        fallback = np.full_like(reclassified, NO_PREDICTION) if self.reject else reclassified
        return RuleDecision(score, flagged, reclassified, np.where(flagged, fallback, evidence.m))

    def fixed(self, validation: Evidence, *, fpr: float) -> DecisionRule:
        """This rule with its threshold fixed on clean ``validation`` evidence so that at most
        ``fpr`` of it is flagged (``threshold_at_fpr`` on what the forced flags leave)."""
        return dataclasses.replace(self, threshold=_threshold_after_forced(
            self.scores(validation), self.forced(validation), fpr), target_fpr=fpr)

    def hard(self, m: torch.Tensor, parts: torch.Tensor, part_scores: torch.Tensor) -> dict[str, torch.Tensor]:
        """``decide`` on tensors, for the attacks' surrogate (``DefenseTarget.rule``): M's classes
        (n,), K's hard parts (n, 44) and their confidences -> ``score``, ``flagged``,
        ``reclassified`` and ``deployed``, on ``m``'s device."""
        found = Evidence(m.detach().cpu().numpy(), parts.detach().cpu().numpy(),
                         part_scores.detach().cpu().double().clamp(0, 1).numpy())
        decision = self.decide(found)
        return {name: torch.as_tensor(getattr(decision, name), device=m.device)
                for name in ("score", "flagged", "reclassified", "deployed")}

    def reclassifier_logits(self, presence: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor | None:
        """Differentiable logits of the re-classifier from K's soft presence and confidence
        (n, 44), for the attacks; None: the re-classifier is argmax J (the attacks' soft Jaccard)."""
        return None

    def unflagged_wrong_class(self, evidence: Evidence, labels: np.ndarray) -> np.ndarray:
        """(N,) bool: whether some class other than an image's label would not be flagged, were M
        to say it, with these parts (``evidence.m`` is ignored). An attacker who moves M alone to
        that class beats this rule even if K's parts never move: this rule's ceiling for any K
        (``unmask.defense.unflagged_wrong_class`` for the paper's rule)."""
        labels = np.asarray(labels, dtype=np.int64)
        open_ = np.zeros(len(evidence), dtype=bool)
        for c in range(len(self.class_set)):
            said = Evidence(np.full(len(evidence), c), evidence.parts, evidence.part_scores)
            open_ |= (labels != c) & ~self.decide(said).flagged
        return open_

    @property
    def label(self) -> str:
        """The rule's name, with ``+reject`` for the reject variant (run names, tables)."""
        return f"{self.name}+reject" if self.reject else self.name

    def record(self) -> dict[str, Any]:
        """What ``metrics.json`` records of the fixed rule."""
        return {"rule": self.name, "reject": self.reject, "threshold": float(self.threshold),
                "target_fpr": self.target_fpr}

    def _check_fixed(self) -> None:
        if math.isnan(self.threshold):
            raise ValueError(f"the {self.name} rule has no threshold yet: fix it on clean validation evidence with "
                             "fixed(validation, fpr=...)")


def _threshold_after_forced(scores: np.ndarray, forced: np.ndarray, fpr: float) -> float:
    """The smallest threshold at which the forced flags and the scores together flag at most
    ``fpr`` of the images. When the forced flags alone exceed it, the threshold flags nothing
    more (just above the largest score): the rule's clean rate is then its forced rate."""
    scores, forced = np.asarray(scores, np.float64), np.asarray(forced, bool)
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"target false-positive rate must lie in [0, 1], got {fpr}")
    if scores.size == 0:
        raise ValueError("cannot fix a threshold without clean validation images")
    rest = scores[~forced]
    if rest.size == 0:
        return float(np.nextafter(scores.max(), math.inf))
    # of the images the forced flags leave, this share may still be flagged
    allowed = (fpr * len(scores) - forced.sum()) / rest.size
    if allowed < 0:
        return float(np.nextafter(rest.max(), math.inf))
    return threshold_at_fpr(rest, min(allowed, 1.0))


@dataclass(frozen=True, kw_only=True)
class PaperRule(DecisionRule):
    """The paper's rule (Freitas et al. 2020): flagged when 1 - J(V[M's class], K's parts) is at
    least the threshold; re-classified as argmax_c J(V[c], K's parts)."""

    name: ClassVar[str] = "paper"


@dataclass(frozen=True, kw_only=True)
class AgreementRule(DecisionRule):
    """The paper's rule, and flagged also when M's class is not a best match of K's parts.

    KEMLP-like (Gürel et al., ICML 2021): M must agree with the part evidence. Under the paper's
    rule an attacker who makes M say a class whose parts merely pass the threshold is not
    flagged; here K's parts must match that class at least as well as any other, so evading
    needs M and K's parts to point to the same wrong class (the transplant attack's goal). A tie
    for the best match counts as agreement: M's class is one of the best."""

    name: ClassVar[str] = "agreement"

    def forced(self, evidence: Evidence) -> np.ndarray:
        similarities = self.similarities(evidence)
        own = similarities[np.arange(len(evidence)), evidence.m]
        return own < similarities.max(axis=1, initial=0.0)


@dataclass(frozen=True, kw_only=True)
class PerClassRule(DecisionRule):
    """The paper's score against one threshold per M class (``class_thresholds``, class-set order).

    Each class's threshold is fixed at the stated rate on the clean validation images M assigns
    to that class, so that the overall clean rate is at most the stated one (an average of rates
    that each are); a class with fewer than ``min_images`` such images takes the overall
    threshold. A class whose clean parts fit it tightly gets a tight threshold, which the
    paper's one threshold, set by the loosest classes, cannot give it."""

    name: ClassVar[str] = "per-class"
    class_thresholds: tuple[float, ...] = ()
    min_images: int = 10

    def thresholds_of(self, classes: np.ndarray) -> np.ndarray:
        self._check_fixed()
        return np.asarray(self.class_thresholds, dtype=np.float64)[np.asarray(classes, dtype=np.int64)]

    def fixed(self, validation: Evidence, *, fpr: float) -> PerClassRule:
        scores = self.scores(validation)
        overall = threshold_at_fpr(scores, fpr)
        per_class = tuple(threshold_at_fpr(scores[validation.m == c], fpr)
                          if (validation.m == c).sum() >= self.min_images else overall
                          for c in range(len(self.class_set)))
        return dataclasses.replace(self, threshold=overall, class_thresholds=per_class, target_fpr=fpr)

    def record(self) -> dict[str, Any]:
        return {**super().record(), "class_thresholds": dict(zip(self.class_set.classes, self.class_thresholds))}


class PartClassifier(torch.nn.Module):
    """Multinomial logistic regression on K's part evidence: (N, 88) presence and confidence per
    part -> (N, C) logits. Small on purpose: it sees 88 numbers, and a rule an attacker must
    beat is easier to reason about when it is linear."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2 * len(PARTS), classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


def train_part_classifier(evidence: Evidence, labels: np.ndarray, classes: int, *, steps: int = 200,
                          weight_decay: float = 1e-3, seed: int = 0) -> PartClassifier:
    """The part classifier fitted on K's evidence for clean training images and their labels
    (full-batch L-BFGS on cross-entropy plus L2: deterministic for a seed)."""
    generator = torch.Generator().manual_seed(seed)
    model = PartClassifier(classes)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.01 * torch.randn(parameter.shape, generator=generator))
    features = torch.as_tensor(evidence.features(), dtype=torch.float32)
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    optimiser = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(features), targets) + weight_decay * (
            model.linear.weight ** 2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return model.eval().requires_grad_(False)


@dataclass(frozen=True, kw_only=True, eq=False)
class PartClassifierRule(DecisionRule):
    """A learned classifier on K's soft part evidence re-classifies, and flags where it does not
    back M: its probability of M's class low (score 1 - p(M's class | parts)) or its argmax
    another class (the agreement test with the classifier as the judge of the parts).

    After ROCK (Li et al., TPAMI 2023) and Sitawarin et al. (ICLR 2023), which classify from
    parts, joined to M by KEMLP's agreement (Gürel et al., ICML 2021). ``classifier``: a
    ``PartClassifier`` trained on K's outputs for the clean training split
    (``train_part_classifier``), and with ``PART_CLASSIFIER_DATA`` "clean+attacked" also on K's
    outputs for those images under a K-only attack (``unmask.experiment``)."""

    name: ClassVar[str] = "part-classifier"
    classifier: PartClassifier | None = None

    def _probabilities(self, evidence: Evidence) -> np.ndarray:
        if self.classifier is None:
            raise ValueError("the part-classifier rule needs its classifier: train_part_classifier(...) on K's "
                             "evidence for clean training images")
        with torch.no_grad():
            logits = self.classifier(torch.as_tensor(evidence.features(), dtype=torch.float32))
        return logits.softmax(1).double().numpy()

    def scores(self, evidence: Evidence) -> np.ndarray:
        return 1.0 - self._probabilities(evidence)[np.arange(len(evidence)), evidence.m]

    def forced(self, evidence: Evidence) -> np.ndarray:
        return self.reclassify(evidence) != evidence.m

    def reclassify(self, evidence: Evidence) -> np.ndarray:
        return self._probabilities(evidence).argmax(axis=1)

    def reclassifier_logits(self, presence: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
        classifier = self.classifier.to(presence.device)
        return classifier(torch.cat([presence, confidence], dim=1).float())


DECISION_RULES: dict[str, type[DecisionRule]] = {
    rule.name: rule for rule in (PaperRule, AgreementRule, PerClassRule, PartClassifierRule)}
"""The rules by name (``--decision-rule``'s choices)."""


def decision_rule(name: str, class_set: ClassSet, *, reject: bool = False, **options: Any) -> DecisionRule:
    """The unfixed rule ``name`` (``DECISION_RULES``) on ``class_set``; ``options`` are its own
    keyword options (e.g. ``classifier=`` for the part-classifier rule)."""
    if name not in DECISION_RULES:
        raise ValueError(f"unknown decision rule {name!r}; expected one of: {', '.join(DECISION_RULES)}")
    return DECISION_RULES[name](class_set=class_set, reject=reject, **options)


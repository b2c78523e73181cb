"""The defenses the white-box evaluation attacks, and what each gives on clean images.

UnMask (M and K); with a robust K (``--k-adv-training``) UnMask-R (the robust K protecting M) and
UnMask-R + adv. M (protecting the adversarially trained M); and the same M alone ("undefended M")
and the adversarially trained M alone ("adversarial training"). Each UnMask-like defense is its
own pipeline: its thresholds are fixed on the clean validation images by its own M and K, and its
clean images are scored by them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unmask.defense import unflagged_wrong_class
from unmask.evaluation import Predictions, Scored, attack_outcomes, fix_thresholds
from unmask.experiment.evaluator import Evaluator
from unmask.experiment.plan import DecisionSpec
from unmask.experiment.stages import TrainedClassifier, TrainedPartExtractor
from unmask.metrics import rate
from unmask.parts import ClassSet
from unmask.provenance import digest
from unmask.rule_comparison import value_key as slug  # a defense's name in file names and in the comparison
from unmask.rules import DecisionRule, Evidence, RuleDecision, decision_rule, train_part_classifier

UNMASK = "UnMask"
UNMASK_R = "UnMask-R"
UNMASK_R_ADV = "UnMask-R + adv. M"
UNDEFENDED = "undefended M"
ADVERSARIAL_TRAINING = "adversarial training"


@dataclass(frozen=True, eq=False)
class Defense:
    """A defended pipeline the attacks aim at: M as it runs and, for an UnMask-like defense, its
    K (None: M alone) with the pipeline's predictions on the clean test images (``clean``) and
    on the clean validation images (``validation``, which fix its thresholds); ``k_metrics``
    names the ``metrics.json`` section of its K's test metrics."""

    name: str
    m: TrainedClassifier
    k: TrainedPartExtractor | None = None
    clean: Scored | None = None
    validation: Scored | None = None
    k_metrics: str | None = None
    decision: DecisionSpec = DecisionSpec()
    """The deployed decision rule (the paper's by default)."""
    class_set: ClassSet | None = None
    """The class set its rule decides over (needed by every rule but the paper's)."""
    training: Callable[[], tuple[Evidence, np.ndarray]] | None = None
    """Its K's evidence on M's training images (clean, and under attack with
    ``--part-classifier-data clean+attacked``) and their labels, computed when first asked for
    (only the part-classifier rule is trained on them)."""
    _rules: dict[float, DecisionRule] = field(default_factory=dict, repr=False)

    def threshold(self, fpr: float) -> float | None:
        """The detection threshold at false-positive rate ``fpr`` on its own clean validation
        images: the set-Jaccard one, or the deployed rule's overall one (None: M alone flags nothing)."""
        if self.validation is None:
            return None
        rule = self.rule(fpr)
        return fix_thresholds(self.validation, fpr).set_jaccard if rule is None else rule.threshold

    def rule(self, fpr: float) -> DecisionRule | None:
        """The deployed rule fixed at ``fpr`` on its own clean validation images (the part
        classifier first trained on its K's outputs for the training images); None for the
        paper's decision, which every path computes as it always did, and for M alone."""
        if self.validation is None or self.decision.is_paper:
            return None
        if fpr not in self._rules:
            unfixed = next(iter(self._rules.values()), None)  # the classifier is trained once, for every FPR
            if unfixed is None:
                options: dict[str, Any] = {}
                if self.decision.rule == "part-classifier":
                    if self.training is None:
                        raise ValueError(f"{self.name}: the part-classifier rule needs K's outputs on the training "
                                         "images")
                    evidence, labels = self.training()
                    options["classifier"] = train_part_classifier(evidence, labels, len(self.class_set))
                unfixed = decision_rule(self.decision.rule, self.class_set, reject=self.decision.reject, **options)
            self._rules[fpr] = unfixed.fixed(evidence_of(self.validation), fpr=fpr)
        return self._rules[fpr]

    def decided(self, scored: Scored, fpr: float) -> RuleDecision | None:
        """The deployed rule's decision on ``scored`` predictions of its pipeline at ``fpr``
        (None: the paper's decision)."""
        rule = self.rule(fpr)
        return None if rule is None else rule.decide(evidence_of(scored))

    @property
    def fingerprint(self) -> str:
        """What its figures depend on besides the images: its M's and K's fingerprints (weights,
        inference settings, K's detection rule) and, for an UnMask-like defense, the deployed
        decision where it is not the paper's (left out for the paper's, so the ladders published
        before the rules existed still match)."""
        decision = self.decision.key() if self.k is not None else {}
        return digest({"m": self.m.fingerprint, "k": None if self.k is None else self.k.fingerprint,
                       **({"decision": decision} if decision else {})})


def evidence_of(scored: Scored) -> Evidence:
    """The rules' evidence of a pipeline's predictions: M's classes, K's parts and confidences."""
    predictions = scored.predictions
    return Evidence(predictions.m, predictions.parts, predictions.part_scores)


def defenses_of(evaluator: Evaluator) -> list[Defense]:
    """UnMask; with the run's robust K, UnMask-R (it protects M) and UnMask-R + adv. M (it
    protects the adversarially trained M, when the run has that baseline and M is not it); the
    M UnMask protects alone; and the adversarial-training baseline alone (once, when UnMask
    protects that same M). UnMask-R's clean predictions are saved in ``adaptive/``."""
    defenses = [Defense(UNMASK, evaluator.m, evaluator.k, evaluator.clean(), evaluator.validation(), "k",
                        **_deployed(evaluator, UNMASK, evaluator.k))]
    baseline, robust = evaluator.adv_trained, evaluator.k_robust
    if robust is not None:
        defenses.append(_pipeline(evaluator, UNMASK_R, evaluator.m, robust))
        if baseline is not None and baseline is not evaluator.m:
            defenses.append(_pipeline(evaluator, UNMASK_R_ADV, baseline, robust))
    if baseline is None or baseline is not evaluator.m:
        defenses.append(Defense(UNDEFENDED, evaluator.m))
    if baseline is not None:
        defenses.append(Defense(ADVERSARIAL_TRAINING, baseline))
    return defenses


def _pipeline(evaluator: Evaluator, name: str, m: TrainedClassifier, k: TrainedPartExtractor) -> Defense:
    """An UnMask-like defense of ``m`` and ``k`` with its own clean test and validation predictions."""
    folder, name_in_files = evaluator.folder.path / "adaptive", slug(name)
    clean = evaluator.clean_predictions(evaluator.test, folder / f"{name_in_files}-clean.npz", baseline=False, m=m,
                                        k=k, what=f"{name}: clean test predictions")
    validation = evaluator.clean_predictions(evaluator.validation_images, folder / f"{name_in_files}-validation.npz",
                                             baseline=False, m=m, k=k, what=f"{name}: clean validation predictions")
    return Defense(name, m, k, clean, validation, "k_robust" if k is evaluator.k_robust else "k",
                   **_deployed(evaluator, name, k))


def _deployed(evaluator: Evaluator, name: str, k: TrainedPartExtractor) -> dict[str, Any]:
    """An UnMask-like defense's deployed rule: the run's decision, its class set and, for the
    part-classifier rule, its K's outputs on M's training images (saved in ``adaptive/``)."""
    decision = evaluator.spec.decision
    if decision.is_paper:
        return {}
    folder = evaluator.folder.path / "adaptive"

    def training() -> tuple[Evidence, np.ndarray]:
        scored, labels = evaluator.training(k, folder / f"{slug(name)}-train.npz",
                                            what=f"{name}: K on the training images")
        if decision.classifier_data == "clean":
            return evidence_of(scored), labels
        attacked, same = evaluator.attacked_training(k, folder / f"{slug(name)}-train-attacked.npz",
                                                     what=f"{name}: K on the training images under attack")
        return Evidence.concatenate(evidence_of(scored), evidence_of(attacked)), np.concatenate([labels, same])

    return {"decision": decision, "class_set": evaluator.class_set, "training": training}


@dataclass(frozen=True)
class CleanView:
    """An UnMask-like defense's pipeline on the clean versions of the adaptive sample's images:
    their detection scores (against its M's classes) and its K's parts (``evidence``: M's
    classes, K's parts and confidences, for a deployed rule other than the paper's)."""

    detection: np.ndarray
    parts: np.ndarray
    evidence: Evidence | None = None


def alone_predictions(defense: Defense, predictions: Predictions) -> np.ndarray | None:
    """The classes a defense that is M alone gives, out of the run's pipeline's predictions:
    M's for the undefended M, the baseline's (attacked through its own gradients) for it."""
    return {UNDEFENDED: predictions.m, ADVERSARIAL_TRAINING: predictions.adv_trained}.get(defense.name)


PART_BASED_DEFENSES: tuple[str, ...] = tuple(slug(name) for name in (UNMASK, UNMASK_R, UNMASK_R_ADV))
"""The UnMask-like defenses by file name (``--adaptive-defenses``)."""


def unflagged_wrong_classes(class_set: ClassSet, defenses: list[Defense], clean: Mapping[str, CleanView],
                            labels: np.ndarray, fprs: tuple[float, ...]) -> list[dict[str, Any]]:
    """Per UnMask-like defense and false-positive rate, on the adaptive sample's clean images
    (with ``labels``): the share on which another class passes detection with the clean parts of
    the defense's K (``unflagged_wrong_class``), with its Wilson interval. An attacker who makes
    M say that class is not flagged even by a K whose parts never move, so one minus it bounds
    the robust accuracy with detection and the system accuracy of any K at that threshold
    (against an M that can be pushed to every class, as undefended M can)."""
    entries = []
    for defense in (d for d in defenses if d.k is not None):
        for fpr in fprs:
            threshold, rule = defense.threshold(fpr), defense.rule(fpr)
            if rule is None:
                open_ = unflagged_wrong_class(clean[defense.name].parts, labels, class_set, threshold)
            else:  # the deployed rule's own ceiling: another class it would not flag with the clean parts
                open_ = rule.unflagged_wrong_class(clean[defense.name].evidence, labels)
            measured = rate(open_)
            entries.append({"defense": defense.name, "fpr_target": fpr, "detection_threshold": threshold,
                            "n_images": measured.n, "rate": measured.value, "interval": [measured.low, measured.high]})
    return entries


def clean_figures(evaluator: Evaluator, defenses: list[Defense], fprs: tuple[float, ...]) -> list[dict[str, Any]]:
    """Per defense and false-positive rate, on every evaluated clean test image (with Wilson 95%
    intervals): M's accuracy and, for an UnMask-like defense, its threshold (fixed on its own
    clean validation images), the share of clean test images it flags (its detection FPR on the
    test images), its re-classification's and its deployed decision's accuracy; ``k`` names
    the ``metrics.json`` section of its K's test metrics."""
    labels, clean = evaluator.labels, evaluator.clean().predictions
    entries = []
    for defense in defenses:
        for fpr in fprs:
            threshold = defense.threshold(fpr)
            if defense.clean is None:
                m = alone_predictions(defense, clean)
                if m is None:
                    continue
                outcome, flagged = attack_outcomes(labels, m), None
            else:
                scored, decided = defense.clean, defense.decided(defense.clean, fpr)
                if decided is None:
                    outcome = attack_outcomes(labels, scored.m, detection=scored.detection,
                                              reclassified=scored.unmask, threshold=threshold,
                                              clean_detection=scored.detection)
                    flagged = scored.detection >= threshold
                else:
                    flagged = decided.flagged
                    outcome = attack_outcomes(labels, scored.m, detection=decided.score,
                                              reclassified=decided.reclassified, flagged=flagged,
                                              clean_flagged=flagged, reject=defense.decision.reject)
            values, intervals = {}, {}
            for key, array in (("accuracy_m", outcome.m), ("accuracy_unmask", outcome.reclassification),
                               ("accuracy_system", outcome.system), ("flag_rate", flagged)):
                measured = None if array is None else rate(array)
                values[key] = None if measured is None else measured.value
                if measured is not None:
                    intervals[key] = [measured.low, measured.high]
            rule = defense.rule(fpr)
            entries.append({"defense": defense.name, "fpr_target": fpr, "detection_threshold": threshold,
                            "k": defense.k_metrics, "n_images": int(len(labels)), **values, "intervals": intervals,
                            **({} if rule is None else {"decision_rule": rule.record()})})
    return entries

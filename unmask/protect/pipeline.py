"""UnMask in front of any classifier: ``UnMask(classifier, part_extractor, class_set)``.

Freitas et al. 2020 (UnMask, IEEE Big Data; arXiv 2002.09576): a classifier M says "bird"; a
part extractor K lists the parts it sees; when they do not fit M's class (detection score
s = 1 - J(V[M's class], K's parts) at least a threshold fixed on clean images at a stated
false-positive rate) the image is flagged, and re-classified as argmax_c J(V[c], K's parts).
The rules are the experiment's (``unmask.defense``, through ``experiment.stages.hard_verdict``),
M runs as the experiment runs it (``ClassifierInference``) and K is a ``PartExtractor`` (or any
function of images that returns part sets), so the numbers are those of ``per_image.csv``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unmask.attacks.adaptive.target import Verdict
from unmask.attacks.norms import to_8bit
from unmask.constants import NO_PREDICTION
from unmask.defense import part_matrix
from unmask.experiment.stages import hard_verdict
from unmask.metrics import threshold_at_fpr
from unmask.models.classifier import ClassifierInference
from unmask.models.part_extractor import PartExtractor
from unmask.parts import PARTS, ClassSet
from unmask.protect.run import FinishedRun
from unmask.protect.stand_in import StandIn
from unmask.rules import DecisionRule, Evidence, decision_rule

DECISIONS: tuple[str, ...] = ("reclassify", "reject")
"""What UnMask does with a flagged image: give its re-classified class (the paper's defense), or
no class at all (``NO_PREDICTION``: the image is rejected, as a detector would)."""

MAX_DETECTION_SCORE = 1.0
"""The largest detection score, 1 - J = 1: no expected part of M's class found; a threshold above
it flags nothing."""

PartSets = np.ndarray | torch.Tensor | Sequence[Iterable[str]]
"""K's answer for N images: a bool (N, 44) part matrix (columns in ``unmask.parts.PARTS``'s
order), or one collection of part names per image."""

PartSource = PartExtractor | Callable[[torch.Tensor], PartSets]
"""K: a ``PartExtractor`` (its detection rule applies), or any function of images (N, 3, H, W)
in [0, 1] that returns their ``PartSets``."""


@dataclass(frozen=True)
class Explanation:
    """Why UnMask decided what it did about one image: M's class, the parts K found, those M's
    class is expected to show (V[M's class]), the expected ones missing and the unexpected ones
    found; the detection score (1 - J(expected, found)), whether it flagged the image, and the
    deployed decision (None: no class)."""

    m_class: str
    found: tuple[str, ...]
    expected: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    detection_score: float
    flagged: bool
    decision: str | None

    def __str__(self) -> str:
        verdict = f"flagged, decision {self.decision or 'no class'}" if self.flagged else f"not flagged: {self.decision}"
        return (f"M says {self.m_class}; K found {', '.join(self.found) or 'no parts'}; missing "
                f"{', '.join(self.missing) or 'none'}; unexpected {', '.join(self.unexpected) or 'none'}; detection "
                f"score {self.detection_score:.3f} ({verdict})")


@dataclass(frozen=True)
class UnMaskResult(Verdict):
    """UnMask's answer for N images (CPU tensors): the hard ``Verdict`` (M's class, detection
    score, flagged, re-classified class or ``NO_PREDICTION``, K's parts (N, 44)) and

    - ``decision`` (N,) int64: the deployed class, M's unless the image is flagged, then the
      re-classified one (``reclassify``) or ``NO_PREDICTION`` (``reject``);
    - ``class_set``: what the class indices mean; ``threshold``: the detection threshold used.
    """

    decision: torch.Tensor
    class_set: ClassSet
    threshold: float

    def __post_init__(self) -> None:
        super().__post_init__()
        decision = torch.as_tensor(self.decision).detach().to("cpu", torch.int64)
        if decision.shape != self.m_prediction.shape:
            raise ValueError(f"UnMaskResult.decision must have shape {tuple(self.m_prediction.shape)}, got "
                             f"{tuple(decision.shape)}")
        object.__setattr__(self, "decision", decision)

    def names(self, classes: torch.Tensor) -> list[str | None]:
        """Class names of class indices (e.g. ``result.decision``); None for ``NO_PREDICTION``."""
        return [None if int(c) == NO_PREDICTION else self.class_set.classes[int(c)] for c in classes]

    def explain(self, index: int) -> Explanation:
        """The parts behind image ``index``'s verdict."""
        m_class = self.class_set.classes[int(self.m_prediction[index])]
        found = {PARTS[j] for j in np.flatnonzero(self.parts[index].numpy())}
        expected = self.class_set.expected_parts(m_class)
        return Explanation(m_class, tuple(sorted(found)), tuple(sorted(expected)), tuple(sorted(expected - found)),
                           tuple(sorted(found - expected)), float(self.detection_score[index]),
                           bool(self.flagged[index]), self.names(self.decision[index:index + 1])[0])


class UnMask:
    """UnMask protecting ``classifier`` (M: [0, 1] images -> logits over ``class_set``'s classes
    in its order; or a ``ClassifierInference``) with ``part_extractor`` (K, a ``PartSource``).

    ``threshold``: the detection threshold (flagged: score >= it); None until ``fix_threshold``
    fixes it on clean images. ``decision``: what a flagged image gets (``DECISIONS``). ``rule``:
    the deployed decision rule (``unmask.rules``), a name of ``DECISION_RULES`` or a
    ``DecisionRule`` (e.g. a ``PartClassifierRule`` with its trained classifier); ``paper``, the
    default, is the paper's rule. ``fix_threshold`` fixes the rule's thresholds (all of them, for
    ``per-class``). Calls run batched on the models' devices without gradients and return an
    ``UnMaskResult``.
    """

    def __init__(self, classifier: nn.Module | ClassifierInference, part_extractor: PartSource,
                 class_set: ClassSet | str | Sequence[str], *, threshold: float | None = None,
                 decision: str = "reclassify", rule: str | DecisionRule = "paper") -> None:
        if decision not in DECISIONS:
            raise ValueError(f"unknown decision {decision!r}; expected one of: {', '.join(DECISIONS)}")
        if threshold is not None and not math.isfinite(threshold):
            raise ValueError(f"the detection threshold must be a finite number, got {threshold}")
        self.classifier = classifier if isinstance(classifier, ClassifierInference) else ClassifierInference(classifier)
        self.part_extractor = part_extractor
        self.class_set = class_set if isinstance(class_set, ClassSet) else (
            ClassSet.named(class_set) if isinstance(class_set, str) else ClassSet.of(class_set))
        self.threshold = threshold
        self.decision = decision
        self.rule = self._rule(rule, threshold)
        if self.rule is not None and threshold is None and not math.isnan(self.rule.threshold):
            self.threshold = self.rule.threshold  # a rule fixed already (FinishedRun.rule)
        self._outputs_checked = False

    def _rule(self, rule: str | DecisionRule, threshold: float | None) -> DecisionRule | None:
        """The deployed rule with this UnMask's reject variant and threshold (None: the paper's
        rule by name, which runs the paper's path unchanged)."""
        if isinstance(rule, str):
            if rule == "paper":
                return None
            rule = decision_rule(rule, self.class_set)
        if rule.class_set.classes != self.class_set.classes:
            raise ValueError(f"the decision rule is for the classes {', '.join(rule.class_set.classes)}, not "
                             f"{', '.join(self.class_set.classes)}")
        rule = dataclasses.replace(rule, reject=self.decision == "reject")
        return rule if threshold is None else dataclasses.replace(rule, threshold=threshold)

    @classmethod
    def from_run(cls, run: FinishedRun | str | Path, *, fpr: float | None = None, device: str | torch.device = "cpu",
                 decision: str | None = None) -> UnMask:
        """The UnMask of a finished ``python main.py`` run (its folder, or a ``FinishedRun``): its
        M (the adversarially trained one with ``--m-adv-trained``), K with its detection rule,
        class set, and the detection threshold it fixed at ``fpr`` (None: the run's
        ``--detection-fpr``), on ``device`` (a ``FinishedRun`` keeps its own). ``decision``:
        None, the run's own (``--flagged-decision``). A run made with another decision rule
        (``--decision-rule``) deploys that rule, fixed on the run's validation predictions."""
        run = run if isinstance(run, FinishedRun) else FinishedRun.open(run, device=device)
        spec = run.plan.evaluation.decision
        decision = spec.flagged if decision is None else decision
        if spec.rule == "paper":
            return cls(run.classifier, run.part_extractor, run.class_set, threshold=run.threshold(fpr),
                       decision=decision)
        return cls(run.classifier, run.part_extractor, run.class_set, decision=decision, rule=run.rule(fpr))

    # --- the pipeline -----------------------------------------------------------------------

    def parts(self, images: torch.Tensor) -> np.ndarray:
        """K's parts of ``images``: a bool (N, 44) matrix, columns in ``PARTS``'s order."""
        if isinstance(self.part_extractor, PartExtractor):
            return self.part_extractor.extract(images).parts
        with torch.no_grad():
            found = self.part_extractor(images)
        if isinstance(found, torch.Tensor):
            found = found.detach().cpu().numpy()
        if isinstance(found, np.ndarray):
            if found.shape != (len(images), len(PARTS)):
                raise ValueError(f"the part extractor returned a matrix of shape {found.shape}; expected "
                                 f"({len(images)}, {len(PARTS)}) (images, parts in unmask.parts.PARTS' order)")
            return found.astype(bool)
        found = list(found)
        if len(found) != len(images):
            raise ValueError(f"the part extractor returned {len(found)} part sets for {len(images)} images")
        return part_matrix(found)

    def verdict(self, images: torch.Tensor, threshold: float | None = None) -> Verdict:
        """M's classes, K's parts and UnMask's rules on ``images`` as given, against ``threshold``
        (default: this UnMask's). A ``ValueError`` refuses images with NaN or infinite pixels, and
        an M whose output count is not the class set's size."""
        threshold = self.required_threshold() if threshold is None else threshold
        self._check_images(images)
        self._check_outputs(images)
        if self.rule is not None:
            found = self._evidence(images)
            rule = self.rule if threshold == self.rule.threshold else dataclasses.replace(self.rule, threshold=threshold)
            return hard_verdict(found.m, found.parts, self.class_set, threshold, rule=rule,
                                part_scores=found.part_scores)
        return hard_verdict(self.classifier.predict(images).cpu().numpy(), self.parts(images), self.class_set,
                            threshold)

    def _evidence(self, images: torch.Tensor) -> Evidence:
        """M's classes and K's parts of ``images``, the rules' evidence (with K's confidences
        when K is a ``PartExtractor``; else its parts stand for them)."""
        m = self.classifier.predict(images).cpu().numpy()
        if isinstance(self.part_extractor, PartExtractor):
            extraction = self.part_extractor.extract(images)
            return Evidence(m, extraction.parts, extraction.part_scores)
        return Evidence(m, self.parts(images))

    @staticmethod
    def _check_images(images: torch.Tensor) -> None:
        """Images must be a batch of finite pixels: a NaN or infinite pixel would give M and K
        undefined answers (and UnMask a meaningless verdict)."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"UnMask expects images as a tensor of shape (N, 3, H, W) in [0, 1], got {shape}")
        broken = ~torch.isfinite(images).flatten(1).all(dim=1)
        if bool(broken.any()):
            where = torch.nonzero(broken).flatten()
            raise ValueError(f"{len(where)} of {len(images)} images hold NaN or infinite pixels (the first: image "
                             f"{int(where[0])}); expected finite pixel values in [0, 1]")

    def _check_outputs(self, images: torch.Tensor) -> None:
        """M must give one output per class of the class set (in its order): checked once, on the
        first image UnMask sees. An M with more outputs would otherwise name classes the part
        table does not have, or silently ignore some."""
        if self._outputs_checked or len(images) == 0:
            return
        model = self.classifier.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                outputs = model(images[:1].to(self.classifier.device))
        finally:
            model.train(was_training)
        count = outputs.shape[-1] if isinstance(outputs, torch.Tensor) and outputs.ndim == 2 else None
        if count != len(self.class_set):
            shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
            raise ValueError(f"the classifier gives {count if count is not None else f'outputs of shape {shape}'} "
                             f"outputs per image, but the class set {self.class_set.name} has "
                             f"{len(self.class_set)} classes ({', '.join(self.class_set.classes)}); expected one "
                             "logit per class, in the class set's order")
        self._outputs_checked = True

    def __call__(self, images: torch.Tensor) -> UnMaskResult:
        """UnMask's answer for ``images`` (N, 3, H, W) in [0, 1], as given (``judge`` rounds
        them to 8 bits first)."""
        verdict = self.verdict(images)
        reclassified = verdict.unmask_prediction if self.decision == "reclassify" else \
            torch.full_like(verdict.unmask_prediction, NO_PREDICTION)
        decision = torch.where(verdict.flagged, reclassified, verdict.m_prediction)
        return UnMaskResult(verdict.m_prediction, verdict.detection_score, verdict.flagged, verdict.unmask_prediction,
                            verdict.parts, decision, self.class_set, self.required_threshold(),
                            reject=self.decision == "reject")

    def judge(self, images: torch.Tensor) -> UnMaskResult:
        """The real pipeline on ``images`` rounded to 8 bits, as an attacked image is once saved:
        how the project judges every attack (``result.evades(labels)``: M wrong and not flagged)."""
        self._check_images(images)  # before rounding, which would clip an infinite pixel into range
        return self(to_8bit(images))

    def fix_threshold(self, clean_images: torch.Tensor, *, fpr: float = 0.1) -> float:
        """Fix the detection threshold (or the deployed rule's thresholds) on ``clean_images`` so
        that at most ``fpr`` of them are flagged (the smallest such threshold: ``unmask.metrics.threshold_at_fpr``), scored against
        M's own predictions, as the experiment does on its clean validation images; returns it.
        Warns (``UserWarning``, naming the scores' range) when the threshold can flag no image at
        all (it is above the largest score, 1: typically an M that does not know the class set)
        or flags every clean image."""
        if self.rule is not None:  # the deployed rule fixes its own thresholds (forced flags first)
            self._check_images(clean_images)
            self._check_outputs(clean_images)
            self.rule = self.rule.fixed(self._evidence(clean_images), fpr=fpr)
            self.threshold = self.rule.threshold
            return self.threshold
        scores = self.verdict(clean_images, threshold=math.inf).detection_score.numpy()
        self.threshold = threshold_at_fpr(scores, fpr)
        flagged = int((scores >= self.threshold).sum())
        seen = f"their detection scores range from {scores.min():.3f} to {scores.max():.3f}"
        if self.threshold > MAX_DETECTION_SCORE:
            warnings.warn(f"the detection threshold fixed at {fpr:g} FPR ({self.threshold:.3f}) can flag no image: "
                          f"it is above 1, the largest detection score, because {seen} on the {len(scores)} clean "
                          "images and more than that share score 1 (M's class and K's parts have no part in common; "
                          "is M trained on this class set?)", UserWarning, stacklevel=2)
        elif flagged == len(scores):
            warnings.warn(f"the detection threshold fixed at {fpr:g} FPR ({self.threshold:.3f}) flags every one of "
                          f"the {len(scores)} clean images: {seen}", UserWarning, stacklevel=2)
        return self.threshold

    def stand_in(self, **options: float) -> StandIn:
        """A differentiable ``nn.Module`` whose logits follow this UnMask's decision, for attack
        libraries (``StandIn``; ``options`` are its keyword options)."""
        return StandIn(self, **options)

    def required_threshold(self) -> float:
        """The detection threshold; a ``ValueError`` says how to fix one when there is none yet."""
        if self.threshold is None:
            raise ValueError("UnMask has no detection threshold yet: fix it on clean images with "
                             "fix_threshold(images, fpr=...), or pass threshold=")
        return self.threshold

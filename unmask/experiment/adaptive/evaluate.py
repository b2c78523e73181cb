"""The security evaluation the paper never had: attacks that know K, beside the paper's gray-box
attacks, each aimed at one of UnMask's outputs, the baselines attacked just as hard, all judged
on the real pipeline.

On a seeded, class-stratified sample of test images that M classifies correctly when clean, and
for each detection threshold (fixed on clean validation images at each false-positive rate of
``--adaptive-fprs``), every attack and budget runs in batches (sharded over ``torchrun``'s
processes, resumable, stamped with what made it), and every adversarial image — 8-bit, as it
would be saved — is judged by the hard pipeline: M's argmax, K's real detection rule, UnMask's
set-Jaccard detection score against the threshold, its re-classification and the decision it
deploys (M's class unless flagged, else the re-classified one).

Defenses (``Defense``): UnMask (M and K); with a robust K (``--k-adv-training``) UnMask-R (the
robust K protecting M) and UnMask-R + adv. M (protecting the adversarially trained M); and the
same M alone ("undefended M") and the adversarially trained M alone ("adversarial training"),
which the white-box evaluation attacks with the same engine, budgets and images (``m_apgd``:
APGD-CE and APGD-DLR on M). Each UnMask-like defense is its own pipeline: its thresholds are
fixed on the clean validation images by its own M and K, its clean images are scored by them,
and the real pipeline that judges every attack on it is its own.

Threat models (every row names its own):

- ``gray-box``: the paper's attacker knows M only: PGD on M (``pgd_linf`` / ``pgd_l2``) at the
  same budgets (the baseline attacked through its own gradients);
- ``transfer``: crafted against M and a surrogate K' (K's recipe, another seed, half of K's
  training split; for UnMask-R too: K' is not adversarially trained) with thresholds fixed the
  same way on K' and the defense's M; judged on the defense's real K;
- ``white-box``: crafted against M, K, the part table and the real thresholds.

UnMask's attacks run in the order given, each aimed at one output (``AdaptiveAttack.aims``):
an image whose aimed-at output an earlier attack of the same threat model already broke, at
this budget or a smaller one of the same norm, is not attacked again (AutoAttack's sequence; an
image within L-inf 8 of the clean one is also within 16), so the per-image worst case over the
attacks costs far less than every attack on every image, and the worst case at a budget is
taken over every attack at that budget or below (named ``attack:epsilon`` when below). Per row: each figure of
``evaluation.Outcomes`` (success, robust accuracy with detection, re-classification, deployed
decision, M) on the images it attacked, with a Wilson 95% interval, and K's part precision and
recall against its clean parts. The summary is, per defense, budget and false-positive rate,
the per-image worst case over every attack that ran (and over each threat model's), with
bootstrap 95% intervals, the attack that did the most against each figure, and the paired
differences between each UnMask-like defense's figures and each baseline's accuracy on the
same images; per defense, its clean figures at each threshold (``clean_figures``); and per
UnMask-like defense, the share of the sample no K could defend at its threshold
(``unflagged_wrong_classes``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from unmask.attacks import GRAY_BOX_ATTACKS, NORMS, PAPER_ATTACK, AttackKind, AttackOptions, AttackVector, Norm
from unmask.attacks.adaptive import ADAPTIVE_ATTACKS, DefenseTarget, Verdict, adaptive_attack
from unmask.constants import NO_PREDICTION
from unmask.data.sampling import stratified_sample
from unmask.defense import unflagged_wrong_class
from unmask.evaluation import Outcomes, Predictions, Scored, attack_outcomes, fix_thresholds, strongest, worst_case
from unmask.experiment.batches import Arrays
from unmask.experiment.evaluator import Evaluator
from unmask.experiment.plan import THREAT_MODELS, AdaptiveSpec
from unmask.experiment.stages import TrainedClassifier, TrainedPartExtractor, hard_judge
from unmask.metrics import bootstrap_rate, rate
from unmask.parts import ClassSet
from unmask.provenance import digest
from unmask.train.part_extractor import part_set_precision_recall

UNMASK = "UnMask"
UNMASK_R = "UnMask-R"
UNMASK_R_ADV = "UnMask-R + adv. M"
UNDEFENDED = "undefended M"
ADVERSARIAL_TRAINING = "adversarial training"

FIGURES: dict[str, str] = {
    "evaded": "success_rate", "handled": "robust_accuracy_with_detection", "reclassification": "accuracy_unmask",
    "system": "accuracy_system", "m": "accuracy_m",
}
"""Each figure of ``Outcomes`` and its key in ``metrics.json``."""


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

    def threshold(self, fpr: float) -> float | None:
        """The set-Jaccard detection threshold at false-positive rate ``fpr`` on its own clean
        validation images (None: M alone flags nothing)."""
        return None if self.validation is None else fix_thresholds(self.validation, fpr).set_jaccard


def defenses_of(evaluator: Evaluator) -> list[Defense]:
    """UnMask; with the run's robust K, UnMask-R (it protects M) and UnMask-R + adv. M (it
    protects the adversarially trained M, when the run has that baseline and M is not it); the
    M UnMask protects alone; and the adversarial-training baseline alone (once, when UnMask
    protects that same M). UnMask-R's clean predictions are saved in ``adaptive/``."""
    defenses = [Defense(UNMASK, evaluator.m, evaluator.k, evaluator.clean(), evaluator.validation(), "k")]
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
    folder, slug = evaluator.folder.path / "adaptive", _slug(name)
    clean = evaluator.clean_predictions(evaluator.test, folder / f"{slug}-clean.npz", baseline=False, m=m, k=k,
                                        what=f"{name}: clean test predictions")
    validation = evaluator.clean_predictions(evaluator.validation_images, folder / f"{slug}-validation.npz",
                                             baseline=False, m=m, k=k, what=f"{name}: clean validation predictions")
    return Defense(name, m, k, clean, validation, "k_robust" if k is evaluator.k_robust else "k")


@dataclass(frozen=True)
class CleanView:
    """An UnMask-like defense's pipeline on the clean versions of the adaptive sample's images:
    their detection scores (against its M's classes) and its K's parts."""

    detection: np.ndarray
    parts: np.ndarray


@dataclass(frozen=True)
class Judged:
    """The hard pipeline's verdict on the attacked versions of the covered images, and what the
    attack itself reports (``goal``: its own aim reached; ``distance``: for minimisation
    attacks). A defense that is M alone has only ``m``."""

    m: np.ndarray
    parts: np.ndarray | None = None
    detection: np.ndarray | None = None
    unmask: np.ndarray | None = None
    goal: np.ndarray | None = None
    distance: np.ndarray | None = None


@dataclass
class Row:
    """One defense x threat model x attack x budget x false-positive rate, judged on the images
    of the adaptive sample it covers (``positions``; the label-only attacks run on a sub-sample
    and stay out of the worst cases; a later attack skips the images an earlier one broke)."""

    defense: str
    threat_model: str
    attack: str
    norm: Norm
    epsilon: float
    fpr: float
    threshold: float | None
    judged: Judged
    positions: np.ndarray
    in_worst_case: bool = True

    def outcomes(self, labels: np.ndarray, clean_detection: np.ndarray | None) -> Outcomes:
        """Per covered image, how each figure fared (``labels`` and ``clean_detection``, the
        defense's own detection scores of the clean images: of the covered images; None for M alone)."""
        judged = self.judged
        if judged.detection is None:
            return attack_outcomes(labels, judged.m)
        return attack_outcomes(labels, judged.m, detection=judged.detection, reclassified=judged.unmask,
                               threshold=self.threshold, clean_detection=clean_detection)


def adaptive_evaluation(evaluator: Evaluator, spec: AdaptiveSpec, gray_box: dict[AttackVector, Scored], *,
                        gray_box_options: AttackOptions, defenses: list[Defense] | None = None,
                        surrogate: TrainedPartExtractor | None = None) -> dict[str, Any]:
    """Every row of the threat-model table and its summary: the ``adaptive``,
    ``adaptive_summary`` and ``adaptive_comparisons`` sections of ``metrics.json``.
    ``gray_box`` holds the run's gray-box vectors (reused where a budget matches; the others are
    attacked on the sample with ``gray_box_options``); ``surrogate`` is K' of the transfer
    threat model (needed with it); ``defenses``: default ``defenses_of(evaluator)``. Also the
    ``defenses`` section: each defense's clean figures (``clean_figures``)."""
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
    surrogate_validation: dict[str, Scored] = {}  # per UnMask-like defense: K' with its M fixes the attacker's thresholds
    if "transfer" in spec.threat_models:
        if surrogate is None:
            raise ValueError("the transfer threat model needs the surrogate K'")
        for defense in (d for d in defenses if d.k is not None):
            own = defense.m is evaluator.m
            surrogate_validation[defense.name] = evaluator.clean_predictions(
                evaluator.validation_images, evaluator.folder.path / "adaptive" / (
                    "surrogate-validation.npz" if own else f"{_slug(defense.name)}-surrogate-validation.npz"),
                baseline=False, m=None if own else defense.m, k=surrogate,
                what="K' on the validation images" + ("" if own else f" ({defense.name}'s M)"))

    alone = {}  # M-only defenses do not depend on the detection threshold: attacked once per budget
    for defense in (d for d in defenses if d.k is None):
        for norm, epsilon in budgets:
            vector = ADAPTIVE_ATTACKS.vector(f"m_apgd_{norm}", epsilon)
            alone[defense.name, norm, epsilon] = _attacked(evaluator, spec, sample, np.arange(len(sample)), vector,
                                                           defense, "white-box", None, None, None, None)
    rows: list[Row] = []
    for fpr in spec.fprs:
        broken: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}  # per defense, threat model and norm
        for norm, epsilon in budgets:
            rows += _gray_box_rows(evaluator, gray_box, gray_box_options, sample, defenses, NORMS[norm], epsilon, fpr)
            for defense in defenses:
                if defense.k is None:
                    judged = alone[defense.name, norm, epsilon]
                    rows.append(Row(defense.name, "white-box", f"m_apgd_{norm}", NORMS[norm], epsilon, fpr, None,
                                    judged, np.arange(len(sample))))
                    continue
                threshold = defense.threshold(fpr)
                for threat_model in spec.threat_models:
                    attacker, attacker_threshold = defense.k, threshold
                    if threat_model == "transfer":
                        attacker = surrogate
                        attacker_threshold = fix_thresholds(surrogate_validation[defense.name], fpr).set_jaccard
                    vectors = [v for v in spec.vectors if (v.norm.name, v.epsilon) == (norm, epsilon)]
                    carried = broken.setdefault((defense.name, threat_model, norm), {
                        figure: np.zeros(len(sample), dtype=bool) for figure in FIGURES})
                    rows += _sequence(evaluator, spec, sample, label_only, vectors, defense, threat_model, fpr,
                                      threshold, attacker, attacker_threshold, defense.clean.detection[sample], carried)
    views = {defense.name: CleanView(defense.clean.detection[sample], defense.clean.predictions.parts[sample])
             for defense in defenses if defense.clean is not None}
    return {**summarise(rows, labels[sample], views, seed=evaluator.spec.seed),
            "defenses": clean_figures(evaluator, defenses, spec.fprs),
            "unflagged_wrong_class": unflagged_wrong_classes(evaluator.class_set, defenses, views, labels[sample],
                                                             spec.fprs)}


def summarise(rows: list[Row], labels: np.ndarray, clean: Mapping[str, CleanView], *, seed: int) -> dict[str, Any]:
    """The ``metrics.json`` sections of the rows of a sample with these ``labels`` (``clean``:
    each UnMask-like defense's own view of the sample's clean images): one entry per row, the
    per-image worst cases and the paired differences to the baselines (bootstrap intervals
    drawn with ``seed``)."""

    def view(row: Row) -> CleanView | None:
        if row.judged.detection is None:
            return None  # M alone: nothing is flagged, clean or attacked
        if row.defense not in clean:
            raise ValueError(f"{row.defense}: no clean detection scores of its own pipeline were given")
        return clean[row.defense]

    entries = []
    for row in rows:
        own = view(row)
        entries.append(_entry(row, labels[row.positions], None if own is None else own.detection[row.positions],
                              None if own is None else own.parts[row.positions]))
    summary, comparisons = _worst_cases([row for row in rows if row.in_worst_case], labels, view, seed=seed)
    return {"adaptive": entries, "adaptive_summary": summary, "adaptive_comparisons": comparisons}


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
            threshold = defense.threshold(fpr)
            measured = rate(unflagged_wrong_class(clean[defense.name].parts, labels, class_set, threshold))
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
                m = _alone_predictions(defense, clean)
                if m is None:
                    continue
                outcome, flagged = attack_outcomes(labels, m), None
            else:
                scored = defense.clean
                outcome = attack_outcomes(labels, scored.m, detection=scored.detection, reclassified=scored.unmask,
                                          threshold=threshold, clean_detection=scored.detection)
                flagged = scored.detection >= threshold
            values, intervals = {}, {}
            for key, array in (("accuracy_m", outcome.m), ("accuracy_unmask", outcome.reclassification),
                               ("accuracy_system", outcome.system), ("flag_rate", flagged)):
                measured = None if array is None else rate(array)
                values[key] = None if measured is None else measured.value
                if measured is not None:
                    intervals[key] = [measured.low, measured.high]
            entries.append({"defense": defense.name, "fpr_target": fpr, "detection_threshold": threshold,
                            "k": defense.k_metrics, "n_images": int(len(labels)), **values, "intervals": intervals})
    return entries


# --- the rows -------------------------------------------------------------------------------------


def _gray_box_rows(evaluator: Evaluator, gray_box: dict[AttackVector, Scored], options: AttackOptions,
                   sample: np.ndarray, defenses: list[Defense], norm: Norm, epsilon: float, fpr: float) -> list[Row]:
    """The paper's attack at this budget (PGD on M; the baseline attacked through its own
    gradients), from the run's vectors when it ran it, else computed on the sample: one row per
    defense (UnMask and M alone see the same attacked images; the baseline its own; another
    UnMask-like defense, PGD on its own M attacked on the sample and judged by its own K at its
    own threshold)."""
    vector = GRAY_BOX_ATTACKS.vector(PAPER_ATTACK[norm], epsilon)
    folder = evaluator.folder.path / "adaptive"
    if vector in gray_box:
        scored = gray_box[vector].subset(sample)
    else:
        scored = evaluator.attacked(vector, options, sample=sample,
                                    path=folder / f"gray-box-{vector.name}-eps{epsilon:g}.npz",
                                    what=f"gray-box {vector.label} on the adaptive sample")
    everything, rows = np.arange(len(sample)), []
    for defense in defenses:
        if defense.k is None:
            m = _alone_predictions(defense, scored.predictions)
            if m is None:
                continue
            judged = Judged(m)
        else:
            own = scored
            if defense.m is not evaluator.m or defense.k is not evaluator.k:
                own = evaluator.attacked(vector, options, sample=sample, m=defense.m, k=defense.k,
                                         path=folder / f"gray-box-{_slug(defense.name)}-{vector.name}-eps{epsilon:g}.npz",
                                         what=f"{defense.name}: gray-box {vector.label} on the adaptive sample")
            judged = Judged(own.m, own.predictions.parts, own.detection, own.unmask)
        rows.append(Row(defense.name, "gray-box", vector.name, norm, epsilon, fpr, defense.threshold(fpr), judged,
                        everything))
    return rows


def _alone_predictions(defense: Defense, predictions: Predictions) -> np.ndarray | None:
    """The classes a defense that is M alone gives, out of the run's pipeline's predictions:
    M's for the undefended M, the baseline's (attacked through its own gradients) for it."""
    return {UNDEFENDED: predictions.m, ADVERSARIAL_TRAINING: predictions.adv_trained}.get(defense.name)


def _sequence(evaluator: Evaluator, spec: AdaptiveSpec, sample: np.ndarray, label_only: np.ndarray,
              vectors: list[AttackVector], defense: Defense, threat_model: str, fpr: float, threshold: float | None,
              attacker: TrainedPartExtractor, attacker_threshold: float, clean_detection: np.ndarray,
              broken: dict[str, np.ndarray]) -> list[Row]:
    """An UnMask-like defense's attacks at one budget, in order (``clean_detection``: its own
    scores of the sample's clean images): each skips the images whose output it aims at
    an earlier one, at this budget or a smaller one of the same norm, already broke (``broken``,
    per figure, updated in place; the label-only check runs on its own sub-sample)."""
    labels = evaluator.labels[sample]
    rows = []
    for vector in vectors:
        info = vector.attack
        if not info.attack_class.needs_part_model:
            continue  # attacks on M alone are for the defenses without K
        if info.kind is AttackKind.LABEL_ONLY:
            positions, in_worst_case = label_only, False
        else:
            aims = info.attack_class.aims
            positions = np.flatnonzero(~broken[aims]) if aims is not None else np.arange(len(sample))
            in_worst_case = True
        judged = _attacked(evaluator, spec, sample, positions, vector, defense, threat_model, attacker, fpr,
                           threshold, attacker_threshold)
        row = Row(defense.name, threat_model, vector.name, vector.norm, vector.epsilon, fpr, threshold, judged,
                  positions, in_worst_case)
        if in_worst_case:
            outcome = row.outcomes(labels[positions], clean_detection[positions])
            broken["evaded"][positions] |= outcome.evaded
            for figure in ("handled", "reclassification", "system", "m"):
                broken[figure][positions] |= ~getattr(outcome, figure)
        rows.append(row)
    return rows


def _attacked(evaluator: Evaluator, spec: AdaptiveSpec, sample: np.ndarray, positions: np.ndarray,
              vector: AttackVector, defense: Defense, threat_model: str, attacker: TrainedPartExtractor | None,
              fpr: float | None, threshold: float | None, attacker_threshold: float | None) -> Judged:
    """The hard verdicts on sample images ``positions`` attacked by ``vector`` against ``defense``,
    crafted with ``attacker`` (K, K', or None for M alone) at ``attacker_threshold`` and judged
    on the real pipeline at ``threshold``, fixed at ``fpr`` (saved and resumable like every result;
    M alone has no threshold: None, which survives the saved key's JSON where NaN would not)."""
    class_set, m = evaluator.class_set, defense.m.inference
    chosen = sample[positions]
    if defense.k is None:
        real_judge = _classifier_judge(m)
        target = DefenseTarget(m.model, None, _class_parts(class_set), 0.0, 1.0, real_judge)
    else:
        real_judge = hard_judge(m, defense.k.extractor, class_set, threshold)
        target = DefenseTarget(
            classifier=m.model, part_model=attacker.extractor.model, class_parts=_class_parts(class_set),
            k_score_threshold=attacker.extractor.score_threshold, detection_threshold=attacker_threshold,
            judge=real_judge if attacker is defense.k else
            hard_judge(m, attacker.extractor, class_set, attacker_threshold))
    key = evaluator.key(sample=digest(chosen.tolist()), defense={"name": defense.name, "m": defense.m.fingerprint,
                                                                 "k": defense.k.fingerprint if defense.k else None},
                        k=defense.k, threat_model=threat_model, attacker_k=attacker.fingerprint if attacker else None,
                        attack={"vector": vector.label, **asdict(spec.options), **_revision(vector)},
                        attacker_threshold=attacker_threshold, threshold=threshold)
    images, labels = evaluator.test.images[chosen], evaluator.test.labels[chosen]

    def attack_batch(number: int, indices: np.ndarray) -> tuple[Arrays, Arrays]:
        # each image's random starts derive from its position in the test sample, not from the batch
        result = adaptive_attack(target, images[indices], labels[indices], vector, spec.options,
                                 indices=torch.from_numpy(chosen[indices]))
        verdict = result.verdict if threat_model == "white-box" else real_judge(result.images)
        arrays = {"m": verdict.m_prediction.numpy(), "parts": verdict.parts.numpy(),
                  "detection": verdict.detection_score.numpy(), "unmask": verdict.unmask_prediction.numpy(),
                  "goal": result.success.numpy()}
        if result.distances is not None:
            arrays["distance"] = result.distances.numpy().astype(np.float64)
        return arrays, {}

    at = "" if fpr is None else f"-fpr{fpr:g}"
    name = f"{_slug(defense.name)}-{threat_model}-{vector.name}-eps{vector.epsilon:g}{at}.npz"
    if len(chosen) == 0:
        arrays: Arrays = {"m": np.zeros(0, np.int64), "parts": np.zeros((0, 44), bool), "detection": np.zeros(0),
                          "unmask": np.zeros(0, np.int64), "goal": np.zeros(0, bool)}
    else:
        arrays = evaluator.result(evaluator.folder.path / "adaptive" / name, key, len(chosen), attack_batch,
                                  batch_size=spec.batch_size, what=f"{defense.name}: {threat_model} {vector.label}"
                                  + ("" if fpr is None else f" at {fpr:.0%} FPR"))
    if defense.k is None:
        return Judged(arrays["m"], goal=arrays["goal"].astype(bool))
    return Judged(arrays["m"], arrays["parts"].astype(bool), arrays["detection"], arrays["unmask"],
                  arrays["goal"].astype(bool), arrays.get("distance"))


def _revision(vector: AttackVector) -> dict[str, int]:
    """The attack's revision for its saved key, left out at 0 (the keys saved before revisions)."""
    revision = vector.attack.attack_class.revision
    return {"revision": revision} if revision else {}


def _classifier_judge(m: Any) -> Any:
    """The real pipeline of a defense that is M alone: M's argmax; nothing is flagged."""

    def judge(images: torch.Tensor) -> Verdict:
        predicted = m.predict(images).cpu()
        nothing = torch.zeros(len(predicted))
        return Verdict(predicted, nothing, nothing.bool(), torch.full_like(predicted, NO_PREDICTION),
                       torch.zeros(len(predicted), 44, dtype=torch.bool))

    return judge


def _class_parts(class_set: Any) -> torch.Tensor:
    return torch.from_numpy(np.asarray(class_set.expected, dtype=np.float32))


def _slug(name: str) -> str:
    """A defense's name in file names: "UnMask-R + adv. M" -> "unmask-r-adv-m"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# --- figures of a row ----------------------------------------------------------------------------


def _figures(outcome: Outcomes, interval: Any) -> tuple[dict[str, float | None], dict[str, list[float]]]:
    values, intervals = {}, {}
    for figure, key in FIGURES.items():
        array = getattr(outcome, figure)
        if array is None:
            values[key] = None
            continue
        measured = interval(array)
        values[key] = measured.value
        intervals[key] = [measured.low, measured.high]
    return values, intervals


def _entry(row: Row, labels: np.ndarray, clean_detection: np.ndarray | None,
           clean_parts: np.ndarray | None) -> dict[str, Any]:
    values, intervals = _figures(row.outcomes(labels, clean_detection), rate)
    entry = {
        "defense": row.defense, "threat_model": row.threat_model, "attack": row.attack, "norm": row.norm.name,
        "epsilon": row.epsilon, "fpr_target": row.fpr,
        "detection_threshold": None if row.threshold is None else float(row.threshold),
        "n_images": int(len(labels)), "in_worst_case": row.in_worst_case, **values, "intervals": intervals,
    }
    if row.judged.parts is not None:
        parts = part_set_precision_recall(row.judged.parts, clean_parts)
        entry.update(part_precision=parts["part_precision"], part_recall=parts["part_recall"],
                     parts_changed=float((row.judged.parts != clean_parts).sum(axis=1).mean()) if len(labels)
                     else math.nan)
    if row.judged.goal is not None:
        entry["goal_rate"] = float(row.judged.goal.mean()) if len(labels) else math.nan
    return entry


def _on_the_sample(row: Row, labels: np.ndarray, clean_detection: np.ndarray | None) -> Outcomes:
    """The row's outcomes over the whole sample: images it did not attack count as unbroken by it."""
    covered = row.outcomes(labels[row.positions], None if clean_detection is None else clean_detection[row.positions])
    full = {}
    for figure in Outcomes.FIGURES:
        values = getattr(covered, figure)
        if values is None:
            full[figure] = None
            continue
        whole = np.full(len(labels), figure != "evaded")
        whole[row.positions] = values
        full[figure] = whole
    return Outcomes(**full)


def _worst_cases(rows: list[Row], labels: np.ndarray, view: Callable[[Row], CleanView | None], *, seed: int
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per false-positive rate, norm, budget and defense: the per-image worst case over every
    attack run there (every threat model: the headline) and over each threat model's attacks;
    and, over every attack, each UnMask-like defense's figures minus each baseline's accuracy on
    the same images. ``view(row)``: the row's defense's ``CleanView`` (None for M alone)."""
    summary, comparisons = [], []
    for key in sorted({(row.fpr, row.norm.name, row.epsilon) for row in rows}):
        # an adversarial image within a smaller budget of the same norm is one within this budget too
        group = [row for row in rows if (row.fpr, row.norm.name) == key[:2] and row.epsilon <= key[2]]
        headline: dict[str, Outcomes] = {}
        for defense in dict.fromkeys(row.defense for row in group):
            members = [row for row in group if row.defense == defense]
            scopes = [("all attacks", members)] + [(model, [row for row in members if row.threat_model == model])
                                                   for model in THREAT_MODELS]
            for scope, scoped in scopes:
                if not scoped:
                    continue
                named = {f"{row.threat_model} {row.attack}" + ("" if row.epsilon == key[2] else f":{row.epsilon:g}"):
                         _on_the_sample(row, labels, _detection(view(row))) for row in scoped}
                worst = worst_case(list(named.values()))
                if scope == "all attacks":
                    headline[defense] = worst
                values, intervals = _figures(worst, lambda array: bootstrap_rate(array, seed=seed))
                summary.append({
                    "fpr_target": key[0], "norm": key[1], "epsilon": key[2], "defense": defense, "over": scope,
                    "attacks": list(named), "n_images": int(len(labels)), **values, "intervals": intervals,
                    "strongest": {FIGURES[figure]: strongest(named, figure) for figure in FIGURES
                                  if getattr(worst, figure) is not None},
                })
        comparisons += _comparisons(key, headline, seed=seed)
    return summary, comparisons


def _detection(view: CleanView | None) -> np.ndarray | None:
    return None if view is None else view.detection


def _comparisons(key: tuple[float, str, float], headline: dict[str, Outcomes], *, seed: int) -> list[dict[str, Any]]:
    """Each UnMask-like defense's robust accuracy with detection and its deployed decision's
    accuracy minus each baseline's accuracy, per image on the same images (paired bootstrap);
    ``significant`` when the 95% interval excludes 0."""
    entries = []
    for defense, outcome in headline.items():
        if outcome.reclassification is None:
            continue  # a baseline, not UnMask
        for baseline, other in headline.items():
            if other.reclassification is not None:
                continue
            for figure in ("handled", "system"):
                difference = bootstrap_rate(getattr(outcome, figure).astype(float) - other.m.astype(float), seed=seed)
                entries.append({"fpr_target": key[0], "norm": key[1], "epsilon": key[2], "defense": defense,
                                "baseline": baseline, "figure": FIGURES[figure], "difference": difference.value,
                                "interval": [difference.low, difference.high],
                                "significant": bool(difference.low > 0 or difference.high < 0)})
    return entries

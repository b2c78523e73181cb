"""The sequence of attacks and its carried breaks: which images each attack is given, how it is
run against a defense, saved and judged.

Each attack aims at one of a defense's outputs (``AdaptiveAttack.aims``) and is given only the
images whose output no earlier attack broke, for the same defense, threat model and detection
threshold, at its budget or a smaller one of the same norm, at its rung of the budget ladder or
a smaller one (``standing``: an image within L-inf 8 of the clean one is within 16, and an
image broken with less work stays broken with more; AutoAttack's sequence). So the per-image
worst case over the attacks costs far less than every attack on every image. Every result is
saved per batch and stamped with what made it (the images attacked, the defense's M and K, the
attacker's K and thresholds, the attack's options at its rung and its revision), so a killed
run resumes at the batch and a result is never reused across rungs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from unmask.attacks import GRAY_BOX_ATTACKS, PAPER_ATTACK, AttackKind, AttackOptions, AttackVector, Norm
from unmask.attacks.adaptive import AdaptiveOptions, DefenseTarget, ReclassifyAttack, Verdict, adaptive_attack
from unmask.constants import NO_PREDICTION
from unmask.evaluation import Scored
from unmask.experiment.adaptive.defenses import Defense, alone_predictions, slug
from unmask.experiment.adaptive.rows import Judged, Row, broken
from unmask.experiment.batches import Arrays
from unmask.experiment.evaluator import Evaluator
from unmask.experiment.plan import AdaptiveSpec
from unmask.experiment.stages import TrainedPartExtractor, hard_judge
from unmask.provenance import digest


def standing(rows: Sequence[Row], labels: np.ndarray, clean_detection: np.ndarray | None, *, defense: str,
             threat_model: str, fpr: float, norm: Norm, epsilon: float, aims: str) -> np.ndarray:
    """The positions of the sample (with ``labels``; ``clean_detection``: the defense's own
    scores of the sample's clean images, None for M alone) whose output ``aims`` no row of
    ``rows`` broke for this defense, threat model and FPR at this budget or a smaller one of
    the same norm (the rows run so far: every smaller rung, and this rung's earlier attacks)."""
    down = np.zeros(len(labels), dtype=bool)
    for row in rows:
        if (row.in_worst_case and row.defense == defense and row.threat_model == threat_model and row.fpr == fpr
                and row.norm == norm and row.epsilon <= epsilon):
            covered = None if clean_detection is None else clean_detection[row.positions]
            down[row.positions] |= broken(row.outcomes(labels[row.positions], covered), aims)
    return np.flatnonzero(~down)


def attack_sequence(evaluator: Evaluator, spec: AdaptiveSpec, sample: np.ndarray, label_only: np.ndarray,
                    earlier: Sequence[Row], vectors: Sequence[AttackVector], defense: Defense, threat_model: str,
                    fpr: float, rung: int, threshold: float | None, attacker: TrainedPartExtractor | None,
                    attacker_threshold: float | None, clean_detection: np.ndarray | None) -> list[Row]:
    """A defense's attacks at one budget and rung of the ladder, in order (``clean_detection``:
    its own scores of the sample's clean images, None for M alone): each on the images whose
    output it aims at no row of ``earlier``, nor an earlier attack here, broke (``standing``), at
    its rung's options (``BudgetLadder.options``). The checks that aim at no output (K alone)
    and the label-only check (on its own sub-sample, outside the worst case) run at the first
    rung only."""
    labels = evaluator.labels[sample]
    rows: list[Row] = []
    for vector in vectors:
        info = vector.attack
        aims = info.attack_class.aims
        if info.kind is AttackKind.LABEL_ONLY or aims is None:
            if rung != spec.ladder.rungs[0]:
                continue  # checks, not figures: the ladder does not grow them
            positions = label_only if info.kind is AttackKind.LABEL_ONLY else np.arange(len(sample))
            options = spec.options
        else:
            positions = standing([*earlier, *rows], labels, clean_detection, defense=defense.name,
                                 threat_model=threat_model, fpr=fpr, norm=vector.norm, epsilon=vector.epsilon,
                                 aims=aims)
            options = spec.ladder.options(spec.options, rung, targeted=info.attack_class.targeted,
                                          chooses_losses=issubclass(info.attack_class, ReclassifyAttack),
                                          classes=len(evaluator.class_set.classes))
        judged = attacked(evaluator, spec, sample, positions, vector, defense, threat_model, attacker,
                          None if defense.k is None else fpr, threshold, attacker_threshold, options=options, rung=rung)
        rows.append(Row(defense.name, threat_model, vector.name, vector.norm, vector.epsilon, fpr, threshold,
                        judged, positions, info.kind is not AttackKind.LABEL_ONLY, rung,
                        **deployed_rule_of_rows(defense, fpr, sample)))
    return rows


def deployed_rule_of_rows(defense: Defense, fpr: float, sample: np.ndarray) -> dict[str, Any]:
    """A row's deployed rule, where it is not the paper's: the rule's flags of the sample's clean
    images at ``fpr`` and its reject variant (empty: the paper's decision, judged as always)."""
    if defense.clean is None or defense.rule(fpr) is None:
        return {}
    decided = defense.decided(defense.clean.subset(sample), fpr)
    return {"clean_flagged": decided.flagged, "reject": defense.decision.reject}


def attacked(evaluator: Evaluator, spec: AdaptiveSpec, sample: np.ndarray, positions: np.ndarray,
             vector: AttackVector, defense: Defense, threat_model: str, attacker: TrainedPartExtractor | None,
             fpr: float | None, threshold: float | None, attacker_threshold: float | None, *,
             options: AdaptiveOptions | None = None, rung: int = 1) -> Judged:
    """The hard verdicts on sample images ``positions`` attacked by ``vector`` with ``options``
    (default: ``spec.options``) at ``rung`` of the ladder against ``defense``, crafted with
    ``attacker`` (K, K', or None for M alone) at ``attacker_threshold`` and judged on the real
    pipeline at ``threshold``, fixed at ``fpr`` (saved and resumable like every result; M alone
    has no threshold: None, which survives the saved key's JSON where NaN would not)."""
    options = spec.options if options is None else options
    class_set, m = evaluator.class_set, defense.m.inference
    chosen = sample[positions]
    if defense.k is None:
        real_judge = classifier_judge(m)
        target = DefenseTarget(m.model, None, class_parts(class_set), 0.0, 1.0, real_judge)
    else:
        # the deployed rule (None: the paper's), which the judge applies and the attacker knows; under
        # the transfer threat model the attacker applies it to K' (its thresholds fixed with the real K)
        rule = None if fpr is None else defense.rule(fpr)
        deployed = {} if rule is None else {"rule": rule}  # the paper's decision: called as it always was
        real_judge = hard_judge(m, defense.k.extractor, class_set, threshold, **deployed)
        target = DefenseTarget(
            classifier=m.model, part_model=attacker.extractor.model, class_parts=class_parts(class_set),
            k_score_threshold=attacker.extractor.score_threshold, detection_threshold=attacker_threshold,
            judge=real_judge if attacker is defense.k else
            hard_judge(m, attacker.extractor, class_set, attacker_threshold, **deployed), rule=rule)
    key = evaluator.key(sample=digest(chosen.tolist()), defense={"name": defense.name, "m": defense.m.fingerprint,
                                                                 "k": defense.k.fingerprint if defense.k else None},
                        k=defense.k, threat_model=threat_model, attacker_k=attacker.fingerprint if attacker else None,
                        attack={"vector": vector.label, **options_key(options), **revision(vector),
                                **({"rung": rung} if rung != 1 else {})},
                        attacker_threshold=attacker_threshold, threshold=threshold,
                        **(defense.decision.key(aims=vector.attack.attack_class.aims) if defense.k is not None
                           else {}))
    images, labels = evaluator.test.images[chosen], evaluator.test.labels[chosen]

    def attack_batch(number: int, indices: np.ndarray) -> tuple[Arrays, Arrays]:
        # each image's random starts derive from its position in the test sample, not from the batch
        started = time.perf_counter()
        result = adaptive_attack(target, images[indices], labels[indices], vector, options,
                                 indices=torch.from_numpy(chosen[indices]))
        verdict = result.verdict if threat_model == "white-box" else real_judge(result.images)
        arrays = {"m": verdict.m_prediction.numpy(), "parts": verdict.parts.numpy(),
                  "detection": verdict.detection_score.numpy(), "unmask": verdict.unmask_prediction.numpy(),
                  "goal": result.success.numpy(),
                  "seconds": np.full(len(indices), (time.perf_counter() - started) / max(len(indices), 1))}
        if result.distances is not None:
            arrays["distance"] = result.distances.numpy().astype(np.float64)
        if target.rule is not None:
            arrays["flagged"] = verdict.flagged.numpy()
        return arrays, {}

    at = "" if fpr is None else f"-fpr{fpr:g}"
    name = f"{slug(defense.name)}-{threat_model}-{vector.name}-eps{vector.epsilon:g}{at}" \
           f"{'' if rung == 1 else f'-rung{rung}'}.npz"
    if len(chosen) == 0:
        arrays: Arrays = {"m": np.zeros(0, np.int64), "parts": np.zeros((0, 44), bool), "detection": np.zeros(0),
                          "unmask": np.zeros(0, np.int64), "goal": np.zeros(0, bool), "seconds": np.zeros(0)}
    else:
        arrays = evaluator.result(evaluator.folder.path / "adaptive" / name, key, len(chosen), attack_batch,
                                  batch_size=spec.batch_size, what=f"{defense.name}: {threat_model} {vector.label}"
                                  + ("" if fpr is None else f" at {fpr:.0%} FPR")
                                  + ("" if rung == 1 else f", ladder rung x{rung}"))
    if defense.k is None:
        return Judged(arrays["m"], goal=arrays["goal"].astype(bool), seconds=arrays.get("seconds"))
    flagged = arrays.get("flagged")
    if flagged is None and fpr is not None and defense.rule(fpr) is not None:  # no attacked image: none flagged
        flagged = np.zeros(len(chosen), dtype=bool)
    return Judged(arrays["m"], arrays["parts"].astype(bool), arrays["detection"], arrays["unmask"],
                  arrays["goal"].astype(bool), arrays.get("distance"), arrays.get("seconds"),
                  None if flagged is None else flagged.astype(bool))


def options_key(options: AdaptiveOptions) -> dict[str, Any]:
    """The attack's options in its saved key; ``already_made`` only when a smaller rung made
    runs (the keys saved before the ladder are unchanged)."""
    key = asdict(options)
    if options.already_made is None:
        del key["already_made"]
    return key


def revision(vector: AttackVector) -> dict[str, int]:
    """The attack's revision for its saved key, left out at 0 (the keys saved before revisions)."""
    number = vector.attack.attack_class.revision
    return {"revision": number} if number else {}


def gray_box_rows(evaluator: Evaluator, gray_box: dict[AttackVector, Scored], options: AttackOptions,
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
            m = alone_predictions(defense, scored.predictions)
            if m is None:
                continue
            judged = Judged(m)
        else:
            own = scored
            if defense.m is not evaluator.m or defense.k is not evaluator.k:
                own = evaluator.attacked(vector, options, sample=sample, m=defense.m, k=defense.k,
                                         path=folder / f"gray-box-{slug(defense.name)}-{vector.name}-eps{epsilon:g}.npz",
                                         what=f"{defense.name}: gray-box {vector.label} on the adaptive sample")
            decided = defense.decided(own, fpr)
            judged = Judged(own.m, own.predictions.parts, own.detection, own.unmask) if decided is None else \
                Judged(own.m, own.predictions.parts, decided.score, decided.reclassified, flagged=decided.flagged)
        rows.append(Row(defense.name, "gray-box", vector.name, norm, epsilon, fpr, defense.threshold(fpr), judged,
                        everything, **deployed_rule_of_rows(defense, fpr, sample)))
    return rows


def classifier_judge(m: Any) -> Any:
    """The real pipeline of a defense that is M alone: M's argmax; nothing is flagged."""

    def judge(images: torch.Tensor) -> Verdict:
        predicted = m.predict(images).cpu()
        nothing = torch.zeros(len(predicted))
        return Verdict(predicted, nothing, nothing.bool(), torch.full_like(predicted, NO_PREDICTION),
                       torch.zeros(len(predicted), 44, dtype=torch.bool))

    return judge


def class_parts(class_set: Any) -> torch.Tensor:
    return torch.from_numpy(np.asarray(class_set.expected, dtype=np.float32))


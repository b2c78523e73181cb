"""An attack run against the tests' modified pipelines exactly as the evaluation runs it: the same
registry entry, options, engine and hard judge (only M, or K's box classifier, is the test's),
and how each image fared."""

from __future__ import annotations

import numpy as np
import torch

from unmask.attacks.adaptive.active.plant import (
    CRITERIA,
    JudgeFor,
    Setup,
    anchor_groups,
    binarized_classifier,
    planted_part_model,
)
from unmask.attacks.adaptive.options import AdaptiveOptions
from unmask.attacks.adaptive.registry import adaptive_attack
from unmask.attacks.adaptive.target import DefenseTarget, Verdict
from unmask.attacks.base import AttackVector
from unmask.constants import GREY_LEVELS

OUTCOMES: tuple[str, ...] = ("tested", "passed", "goal", "evaded", "m_wrong", "flagged", "system_wrong",
                             "reclassified_wrong")
"""Per image: ``tested`` (set up, and its clean image does not already count as passed),
``passed`` (the returned image meets the test's criterion), ``goal`` (the attack's own success),
and the hard pipeline's verdict of the returned image: ``evaded`` (M wrong, not flagged),
``m_wrong``, ``flagged``, ``system_wrong`` (the deployed decision), ``reclassified_wrong``."""


def active_tests_of(vector: AttackVector) -> tuple[str, ...]:
    """The tests an adaptive attack is put through: the evasion and inverted tests for an attack
    on UnMask aimed at evading detection or at the deployed decision, the re-classification test
    for one aimed at the re-classification. Others (on M alone, on K alone) have none."""
    attack = vector.attack.attack_class
    if not attack.needs_part_model or attack.aims not in ("evaded", "system", "reclassification"):
        raise ValueError(f"{vector.label}: the attack unit tests take attacks on UnMask's outputs (joint, "
                         f"orthogonal, transplant, reclassify, hsj), not {vector.name}")
    if vector.norm.name != "linf":
        raise ValueError(f"{vector.label}: the attack unit tests are L-inf only")
    return ("reclassification",) if attack.aims == "reclassification" else ("evasion", "inverted")


def criterion_of(test: str, vector: AttackVector) -> str:
    """What counts as passing ``test`` for ``vector``: the attack's own aim in the evasion test
    (evading detection, or the deployed decision wrong), M wrong in the inverted test (whose
    planted point is flagged), the re-classification wrong in its test."""
    if test == "evasion":
        return "system" if vector.attack.attack_class.aims == "system" else "evaded"
    return test


def attack_outcomes(target: DefenseTarget, judge_for: JudgeFor, setup: Setup, images: torch.Tensor,
                    labels: torch.Tensor, indices: torch.Tensor, vector: AttackVector,
                    options: AdaptiveOptions) -> dict[str, np.ndarray]:
    """Run ``vector`` with ``options`` (the evaluation's) on the images of ``setup`` that are
    tested against their modified pipeline (images of the evasion and inverted tests in batches
    that share a binarized M; the re-classification test's one at a time, each with its own K)
    and record ``OUTCOMES`` per image (False where not tested)."""
    criterion = criterion_of(setup.test, vector)
    n = len(images)
    outcomes = {name: np.zeros(n, bool) for name in OUTCOMES}
    outcomes["distance"] = np.zeros(n, np.float64)
    tested = setup.ok & ~setup.clean.get(criterion, np.zeros(n, bool))
    outcomes["tested"] = tested
    rows = np.flatnonzero(tested)
    if setup.test == "reclassification":
        groups = [np.array([row]) for row in rows]
    else:
        groups = anchor_groups(images, rows, vector.epsilon)
    for group in groups:
        if setup.test == "reclassification":
            part_model = planted_part_model(target, setup, int(group[0]))
            modified = DefenseTarget(target.classifier, part_model, target.class_parts, target.k_score_threshold,
                                     target.detection_threshold, judge_for(target.classifier, part_model))
        else:
            classifier = binarized_classifier(target, setup, images, labels, group)
            modified = DefenseTarget(classifier, target.part_model, target.class_parts, target.k_score_threshold,
                                     target.detection_threshold, judge_for(classifier, target.part_model))
        chosen = torch.from_numpy(group)
        result = adaptive_attack(modified, images[chosen], labels[chosen], vector, options,
                                 indices=indices[chosen].cpu())
        y = labels[chosen].cpu()
        _record(outcomes, group, result.verdict, y, criterion)
        outcomes["goal"][group] = result.success.numpy()
        delta = (result.images.cpu() - images[chosen].cpu()).flatten(1).abs().amax(1)
        outcomes["distance"][group] = (delta * GREY_LEVELS).double().numpy()
    return outcomes


def _record(outcomes: dict[str, np.ndarray], rows: np.ndarray, verdict: Verdict, labels: torch.Tensor,
            criterion: str) -> None:
    outcomes["passed"][rows] = CRITERIA[criterion](verdict, labels).numpy()
    outcomes["evaded"][rows] = CRITERIA["evaded"](verdict, labels).numpy()
    outcomes["m_wrong"][rows] = (verdict.m_prediction != labels).numpy()
    outcomes["flagged"][rows] = verdict.flagged.numpy()
    outcomes["system_wrong"][rows] = CRITERIA["system"](verdict, labels).numpy()
    outcomes["reclassified_wrong"][rows] = CRITERIA["reclassification"](verdict, labels).numpy()

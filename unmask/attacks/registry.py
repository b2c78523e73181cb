"""The registry of gray-box attacks on M: each name's foolbox attack and its hyper-parameters.

Names and norms live in ``vectors.ATTACK_NORMS``; ``BUILDERS`` maps every name to how its attack
is built (a test checks that the two agree). ``AttackOptions`` holds the hyper-parameters every
attack shares, built once from the configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import foolbox as fb

from unmask.attacks.momentum import L2MomentumIterativeAttack, LinfMomentumIterativeAttack
from unmask.attacks.vectors import AttackVector

LINF_STEP = 2.0 / 255
"""The corrected L-inf step of PGD, MIM and BIM, in [0, 1] pixels."""
L2_RELATIVE_STEP = 2.5
"""The corrected L2 step of PGD and MIM is ``L2_RELATIVE_STEP * epsilon / steps``."""
ORIGINAL_STEP = 2.0
"""The original UnMask's step of PGD and MIM, in [0, 1] pixels (not divided by 255)."""


@dataclass(frozen=True)
class AttackOptions:
    """Hyper-parameters shared by the registry's attacks; sizes on the 0-255 scale.

    ``steps`` is the iteration count of every iterative attack (for ``cw_l2``: per binary-search
    step); ``step_size`` overrides the step of PGD, MIM and BIM (None: the corrected default, or
    the original's with ``original_step``); ``decay`` is MIM's momentum decay; ``random_start``
    None keeps each attack's own default; ``batch_size`` images go through the model at once
    (None: all).
    """

    steps: int = 20
    step_size: float | None = None
    original_step: bool = False
    decay: float = 1.0
    random_start: bool | None = None
    cw_binary_search_steps: int = 5
    cw_learning_rate: float = 0.01
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"attack steps must be at least 1, got {self.steps}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"attack batch_size must be at least 1 (None: all images at once), got {self.batch_size}")
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"attack step_size must be positive (0-255 scale), got {self.step_size}")
        if not self.decay >= 0:
            raise ValueError(f"momentum decay must be >= 0, got {self.decay}")


def _linf_step(epsilon: float, options: AttackOptions) -> float:
    if options.step_size is not None:
        return options.step_size / 255
    return ORIGINAL_STEP if options.original_step else LINF_STEP


def _l2_step(epsilon: float, options: AttackOptions) -> float:
    if options.step_size is not None:
        return options.step_size / 255
    return ORIGINAL_STEP if options.original_step else L2_RELATIVE_STEP * epsilon / options.steps


def _start(options: AttackOptions, default: bool) -> bool:
    return default if options.random_start is None else options.random_start


AttackBuilder = Callable[[float, AttackOptions], fb.attacks.Attack]

BUILDERS: dict[str, AttackBuilder] = {
    "pgd_linf": lambda epsilon, options: fb.attacks.LinfPGD(
        abs_stepsize=_linf_step(epsilon, options), steps=options.steps, random_start=_start(options, True)),
    "pgd_l2": lambda epsilon, options: fb.attacks.L2PGD(
        abs_stepsize=_l2_step(epsilon, options), steps=options.steps, random_start=_start(options, True)),
    "mim_linf": lambda epsilon, options: LinfMomentumIterativeAttack(
        decay=options.decay, abs_stepsize=_linf_step(epsilon, options), steps=options.steps,
        random_start=_start(options, False)),
    "mim_l2": lambda epsilon, options: L2MomentumIterativeAttack(
        decay=options.decay, abs_stepsize=_l2_step(epsilon, options), steps=options.steps,
        random_start=_start(options, False)),
    "fgsm": lambda epsilon, options: fb.attacks.LinfFastGradientAttack(random_start=_start(options, False)),
    "bim_linf": lambda epsilon, options: fb.attacks.LinfBasicIterativeAttack(
        abs_stepsize=_linf_step(epsilon, options), steps=options.steps, random_start=_start(options, False)),
    "cw_l2": lambda epsilon, options: fb.attacks.L2CarliniWagnerAttack(
        binary_search_steps=options.cw_binary_search_steps, steps=options.steps,
        stepsize=options.cw_learning_rate),
    "deepfool_linf": lambda epsilon, options: fb.attacks.LinfDeepFoolAttack(steps=options.steps),
}
"""How to build each attack at ``epsilon`` (in [0, 1] pixels) with the given options."""

MINIMISATION_ATTACKS = frozenset({"cw_l2", "deepfool_linf"})
"""Attacks that search for the smallest adversarial; they return the clean image where they find none."""



def build_attack(vector: AttackVector, options: AttackOptions | None = None) -> fb.attacks.Attack:
    """The foolbox attack registered as ``vector.name`` for ``vector.epsilon`` (0-255 scale)."""
    return BUILDERS[vector.name](vector.epsilon / 255, options or AttackOptions())

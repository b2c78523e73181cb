"""The gray-box attacks on M: one description per attack (its norm, kind, paper and how foolbox
builds it), the registry built from them, and their shared hyper-parameters.

Adding an attack is one ``GrayBoxAttack(...)`` line in ``GRAY_BOX_ATTACKS``: the command line's
``--attacks`` names, its help text and the ``name:epsilon`` parser are read off the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import foolbox as fb

from unmask.attacks.base import AttackInfo, AttackKind, AttackRegistry, AttackVector
from unmask.attacks.momentum import L2MomentumIterativeAttack, LinfMomentumIterativeAttack
from unmask.attacks.norms import L2, LINF, Norm
from unmask.constants import to_unit_scale

LINF_STEP = to_unit_scale(2.0)
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

    def step(self, norm: Norm, epsilon: float) -> float:
        """The step of PGD, MIM and BIM in [0, 1] pixels at ``epsilon`` (also in [0, 1] pixels)."""
        if self.step_size is not None:
            return to_unit_scale(self.step_size)
        if self.original_step:
            return ORIGINAL_STEP
        return LINF_STEP if norm is LINF else L2_RELATIVE_STEP * epsilon / self.steps

    def random_start_or(self, default: bool) -> bool:
        return default if self.random_start is None else self.random_start


FoolboxBuilder = Callable[[float, AttackOptions], fb.attacks.Attack]
"""``build(epsilon in [0, 1] pixels, options)`` -> the foolbox attack."""


@dataclass(frozen=True)
class GrayBoxAttack(AttackInfo):
    """An attack on M alone (the paper's gray-box attacker), untargeted on the cross-entropy of
    the true label; ``build`` makes its foolbox attack."""

    build: FoolboxBuilder = field(default=lambda epsilon, options: None, compare=False)


def _pgd(norm: Norm, foolbox_class: type, *, random_start: bool) -> FoolboxBuilder:
    return lambda epsilon, options: foolbox_class(abs_stepsize=options.step(norm, epsilon), steps=options.steps,
                                                  random_start=options.random_start_or(random_start))


def _mim(norm: Norm, attack_class: type) -> FoolboxBuilder:
    return lambda epsilon, options: attack_class(decay=options.decay, abs_stepsize=options.step(norm, epsilon),
                                                 steps=options.steps, random_start=options.random_start_or(False))


PAPER_SPECS: tuple[str, ...] = ("pgd_linf:8", "pgd_linf:16", "pgd_l2:300", "pgd_l2:600",
                                "mim_linf:8", "mim_linf:16", "mim_l2:300", "mim_l2:600")
"""The paper's eight attack vectors: PGD and MIM, L-inf at 8 and 16, L2 at 300 and 600."""

GRAY_BOX_ATTACKS = AttackRegistry("attack", (
    GrayBoxAttack("pgd_linf", LINF, summary="PGD (Madry et al. 2018), random start, step 2/255",
                  build=_pgd(LINF, fb.attacks.LinfPGD, random_start=True)),
    GrayBoxAttack("pgd_l2", L2, summary="PGD, random start, step 2.5 eps / steps",
                  build=_pgd(L2, fb.attacks.L2PGD, random_start=True)),
    GrayBoxAttack("mim_linf", LINF, summary="MIM (Dong et al. 2018), decay 1.0, step 2/255",
                  build=_mim(LINF, LinfMomentumIterativeAttack)),
    GrayBoxAttack("mim_l2", L2, summary="MIM, decay 1.0, step 2.5 eps / steps",
                  build=_mim(L2, L2MomentumIterativeAttack)),
    GrayBoxAttack("fgsm", LINF, summary="FGSM (Goodfellow et al. 2015), one step of eps",
                  build=lambda epsilon, options: fb.attacks.LinfFastGradientAttack(
                      random_start=options.random_start_or(False))),
    GrayBoxAttack("bim_linf", LINF, summary="BIM (Kurakin et al. 2017): PGD without random start, step 2/255",
                  build=_pgd(LINF, fb.attacks.LinfBasicIterativeAttack, random_start=False)),
    GrayBoxAttack("cw_l2", L2, AttackKind.MINIMISATION,
                  summary="Carlini & Wagner 2017, 5 binary-search steps, Adam lr 0.01",
                  build=lambda epsilon, options: fb.attacks.L2CarliniWagnerAttack(
                      binary_search_steps=options.cw_binary_search_steps, steps=options.steps,
                      stepsize=options.cw_learning_rate)),
    GrayBoxAttack("deepfool_linf", LINF, AttackKind.MINIMISATION,
                  summary="DeepFool (Moosavi-Dezfooli et al. 2016), overshoot 0.02, 10 candidates",
                  build=lambda epsilon, options: fb.attacks.LinfDeepFoolAttack(steps=options.steps)),
), named_lists={"paper": PAPER_SPECS})
"""Every gray-box attack; ``paper`` names the paper's eight vectors."""

PAPER_VECTORS: tuple[AttackVector, ...] = GRAY_BOX_ATTACKS.parse(("paper",))

PAPER_ATTACK: dict[Norm, str] = {LINF: "pgd_linf", L2: "pgd_l2"}
"""The paper's attack of each norm: the gray-box row beside each adaptive budget."""


def build_attack(vector: AttackVector, options: AttackOptions | None = None) -> fb.attacks.Attack:
    """The foolbox attack of ``vector`` (a gray-box attack) at its budget."""
    attack = vector.attack
    if not isinstance(attack, GrayBoxAttack):
        raise ValueError(f"{vector.label} is not a gray-box attack on M; expected one of: "
                         f"{', '.join(GRAY_BOX_ATTACKS)}")
    return attack.build(vector.unit_epsilon, options or AttackOptions())

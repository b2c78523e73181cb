"""White-box adaptive attacks on UnMask: attacks that know M *and* K (and the part table and the
detection threshold), and count success only on the real, hard pipeline.

``adaptive_attack(target, images, labels, "joint_linf:16")`` returns an ``AdaptiveResult``:
8-bit adversarial images inside the epsilon ball (0-255 scale), the target class per image, and
the injected judge's verdict. ``target`` is a ``DefenseTarget``: M, the attacker's K (the real
one, or a surrogate K' for the transfer threat model), the class -> parts matrix, K's score
threshold, the detection threshold and the judge (images -> ``Verdict``).

| name | norm | attack |
|---|---|---|
| ``joint_linf``, ``joint_l2`` | L-inf, L2 | joint targeted PGD on M's C&W margin + lambda x K's hinges (Carlini & Wagner 2017) |
| ``orthogonal_linf``, ``orthogonal_l2`` | L-inf, L2 | orthogonal / selective PGD (Bryniarski et al. 2022) |
| ``reclassify_linf``, ``reclassify_l2`` | L-inf, L2 | APGD on K's soft Jaccards as logits (targeted, DLR, CE) against UnMask's re-classification |
| ``transplant_linf``, ``transplant_l2`` | L-inf, L2 | ungated joint PGD: M says t and K's parts are t's, against UnMask's deployed decision |
| ``m_apgd_linf``, ``m_apgd_l2`` | L-inf, L2 | APGD-CE and APGD-DLR on M alone: the same engine against an undefended or adversarially trained M |
| ``k_vanish_linf`` | L-inf | K loses every part (TOG vanishing, DAG-style; sanity check of the surrogate) |
| ``k_fabricate_linf`` | L-inf | K sees a chosen class's parts, enough to pass its detection (TOG fabrication; sanity check) |
| ``hsj_l2``, ``hsj_linf`` | L2, L-inf | HopSkipJump on the hard pipeline (label-only check against gradient masking) |

``ADAPTIVE_ATTACKS`` is the registry (``ADAPTIVE_ATTACKS.describe()`` lists them with their
kinds). K's differentiable view and the hinge losses live in ``part_view``; the shared PGD
machinery (8-bit iterates, per-image random starts, judging) in ``engine``; the norms' balls
and steps in ``unmask.attacks.norms``.
"""

from unmask.attacks.adaptive.classifier_only import ClassifierAttack
from unmask.attacks.adaptive.detector import FabricateAttack, VanishAttack
from unmask.attacks.adaptive.engine import AdaptiveAttack, AdaptiveAttackInfo, AdaptiveResult, GradientAttack
from unmask.attacks.adaptive.joint import JointAttack
from unmask.attacks.adaptive.label_only import EvadesUnMask, HopSkipJump, PipelineDecision
from unmask.attacks.adaptive.options import FULL_BUDGET, REDUCED_BUDGET, AdaptiveOptions
from unmask.attacks.adaptive.orthogonal import OrthogonalAttack
from unmask.attacks.adaptive.part_view import PartOutputs, PartView, soft_jaccard
from unmask.attacks.adaptive.reclassify import ReclassifyAttack
from unmask.attacks.adaptive.registry import ADAPTIVE_ATTACKS, adaptive_attack, build_adaptive_attack
from unmask.attacks.adaptive.target import NO_PREDICTION, DefenseTarget, Judge, Verdict
from unmask.attacks.adaptive.transplant import TransplantAttack

__all__ = [
    "ADAPTIVE_ATTACKS", "FULL_BUDGET", "NO_PREDICTION", "REDUCED_BUDGET", "AdaptiveAttack", "AdaptiveAttackInfo",
    "AdaptiveOptions", "AdaptiveResult", "ClassifierAttack", "DefenseTarget", "EvadesUnMask", "FabricateAttack", "GradientAttack",
    "HopSkipJump", "JointAttack", "Judge", "OrthogonalAttack", "PartOutputs", "PartView", "PipelineDecision",
    "ReclassifyAttack", "TransplantAttack", "Verdict", "VanishAttack", "adaptive_attack", "build_adaptive_attack", "soft_jaccard",
]

"""Attacks on M: a registry of untargeted attacks keyed by name, run through one call.

``attack(model, images, labels, AttackVector("pgd_linf", 8), AttackOptions(steps=20))`` returns adversarial versions of [0, 1] images:
epsilon is on the paper's 0-255 scale, the result lies in [0, 1] and inside the epsilon ball of
the attack's norm. Every attack maximises the cross-entropy of the true label (the original's
gray-box setting: the attacker knows M only) and is built on foolbox 3.3.4.

| name | norm | attack | defaults |
|---|---|---|---|
| ``pgd_linf`` | L-inf | PGD (Madry et al. 2018) | random start, step 2/255 |
| ``pgd_l2`` | L2 | PGD | random start, step 2.5 * eps / steps |
| ``mim_linf`` | L-inf | MIM (Dong et al. 2018) | no random start, decay 1.0, step 2/255 |
| ``mim_l2`` | L2 | MIM | no random start, decay 1.0, step 2.5 * eps / steps |
| ``fgsm`` | L-inf | FGSM (Goodfellow et al. 2015) | one step of eps |
| ``bim_linf`` | L-inf | BIM (Kurakin et al. 2017): PGD without random start | step 2/255 |
| ``cw_l2`` | L2 | Carlini & Wagner 2017, L2 | 5 binary-search steps, Adam lr 0.01 |
| ``deepfool_linf`` | L-inf | DeepFool (Moosavi-Dezfooli et al. 2016) | overshoot 0.02, 10 candidates |

``AttackOptions.steps`` (20, as the original) is the iteration count of every iterative attack
(for ``cw_l2``: per binary-search step). The original UnMask used a step of 2.0 in [0, 1] pixels
for PGD and MIM (every step overshoots and is projected back); ``original_step=True`` reproduces
it. The two minimisation attacks (``cw_l2``, ``deepfool_linf``) return the clean image where they
find no adversarial within epsilon.

This package only re-exports: ``registry`` (options and builders), ``runner`` (``attack``),
``vectors`` (names, norms, budgets), ``momentum`` (MIM).
"""

from unmask.attacks.momentum import L2MomentumIterativeAttack, LinfMomentumIterativeAttack
from unmask.attacks.registry import AttackOptions, build_attack
from unmask.attacks.runner import attack
from unmask.attacks.vectors import (
    ATTACK_NAMES,
    ATTACK_NORMS,
    NAMED_VECTOR_LISTS,
    PAPER_VECTORS,
    AttackVector,
    parse_attack_vectors,
)

__all__ = [
    "ATTACK_NAMES", "ATTACK_NORMS", "NAMED_VECTOR_LISTS", "PAPER_VECTORS", "AttackOptions", "AttackVector",
    "L2MomentumIterativeAttack", "LinfMomentumIterativeAttack", "attack", "build_attack", "parse_attack_vectors",
]

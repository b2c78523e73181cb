"""Attacks on M (gray-box) and on UnMask as a whole (``unmask.attacks.adaptive``).

``attack(model, images, labels, GRAY_BOX_ATTACKS.vector("pgd_linf", 8), AttackOptions(steps=20))``
returns adversarial versions of [0, 1] images: epsilon is on the paper's 0-255 scale, the result
lies in [0, 1] and inside the epsilon ball of the attack's norm. Every gray-box attack maximises
the cross-entropy of the true label (the original's setting: the attacker knows M only) and is
built on foolbox 3.3.4.

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

Modules: ``base`` (what an attack says about itself, registries, the attack vector), ``norms``
(L-inf and L2 as types), ``registry`` (the gray-box attacks and their options), ``runner``
(``attack``), ``momentum`` (MIM), ``adaptive`` (the attacks that know K).
"""

from unmask.attacks.base import AttackInfo, AttackKind, AttackRegistry, AttackVector, frozen_eval
from unmask.attacks.momentum import L2MomentumIterativeAttack, LinfMomentumIterativeAttack
from unmask.attacks.norms import L2, LINF, NORMS, Norm
from unmask.attacks.registry import (
    GRAY_BOX_ATTACKS,
    PAPER_ATTACK,
    PAPER_VECTORS,
    AttackOptions,
    GrayBoxAttack,
    build_attack,
)
from unmask.attacks.runner import attack

__all__ = [
    "GRAY_BOX_ATTACKS", "L2", "LINF", "NORMS", "PAPER_ATTACK", "PAPER_VECTORS", "AttackInfo", "AttackKind",
    "AttackOptions", "AttackRegistry", "AttackVector", "GrayBoxAttack", "L2MomentumIterativeAttack",
    "LinfMomentumIterativeAttack", "Norm", "attack", "build_attack", "frozen_eval",
]

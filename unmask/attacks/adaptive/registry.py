"""The adaptive attacks by name, built from what each attack class says about itself, and
``adaptive_attack``, the one entry point.

Adding an attack is one class (a ``GradientAttack`` subclass with ``family``, ``norms`` and, if
so, ``targeted``) and one line here: its names, the command line's choices and help, and the
``name:epsilon`` parser follow from the registry.
"""

from __future__ import annotations

import torch

from unmask.attacks.adaptive.classifier_only import ClassifierAttack
from unmask.attacks.adaptive.detector import FabricateAttack, VanishAttack
from unmask.attacks.adaptive.engine import AdaptiveAttack, AdaptiveAttackInfo, AdaptiveResult
from unmask.attacks.adaptive.joint import JointAttack
from unmask.attacks.adaptive.label_only import HopSkipJump
from unmask.attacks.adaptive.options import AdaptiveOptions
from unmask.attacks.adaptive.orthogonal import OrthogonalAttack
from unmask.attacks.adaptive.reclassify import ReclassifyAttack
from unmask.attacks.adaptive.target import DefenseTarget
from unmask.attacks.adaptive.transplant import TransplantAttack
from unmask.attacks.base import AttackRegistry, AttackVector

FULL_ADAPTIVE: tuple[str, ...] = (
    *(f"{name}_{norm}:{epsilon}" for norm, budgets in (("linf", (8, 16, 32, 64)), ("l2", (300, 600, 1200, 2400)))
      for epsilon in budgets for name in ("joint", "orthogonal", "reclassify", "transplant")),
    "k_vanish_linf:64", "k_fabricate_linf:64", "hsj_linf:8", "hsj_linf:16", "hsj_l2:300", "hsj_l2:600",
)
"""``full``: every attack on UnMask's outputs (joint and orthogonal at evading detection,
reclassify at the re-classification, transplant at the deployed decision) at the paper's budgets
(L-inf 8 and 16, L2 300 and 600) and further out (L-inf 32 and 64, L2 1200 and 2400: where they
should reach 100%), K-only sanity attacks at 64 and the label-only check."""

ADAPTIVE_ATTACKS = AttackRegistry("adaptive attack", (
    *JointAttack.describe(),
    *OrthogonalAttack.describe(),
    *ReclassifyAttack.describe(),
    *TransplantAttack.describe(),
    *ClassifierAttack.describe(),
    *VanishAttack.describe(),
    *FabricateAttack.describe(),
    *HopSkipJump.describe(),
), named_lists={"full": FULL_ADAPTIVE, "none": ()})
"""Every adaptive attack; ``full`` names the full evaluation's list, ``none`` no attack."""


def build_adaptive_attack(vector: AttackVector, target: DefenseTarget,
                          options: AdaptiveOptions | None = None) -> AdaptiveAttack:
    """The attack of ``vector`` (an adaptive attack at its budget) against ``target``."""
    info = vector.attack
    if not isinstance(info, AdaptiveAttackInfo):
        raise ValueError(f"{vector.label} is not an adaptive attack; expected one of: {', '.join(ADAPTIVE_ATTACKS)}")
    return info.attack_class(target, epsilon=vector.epsilon, norm=vector.norm, options=options or AdaptiveOptions())


def adaptive_attack(
    target: DefenseTarget,
    images: torch.Tensor,
    labels: torch.Tensor,
    vector: AttackVector | str,
    options: AdaptiveOptions | None = None,
    *,
    indices: torch.Tensor | None = None,
) -> AdaptiveResult:
    """Run an adaptive attack on ``images``.

    Args:
        target: what the attacker knows (M, its K, the part table, thresholds) and the judge.
        images: (N, 3, H, W) float 8-bit images in [0, 1] (as the data's PNG files), any device.
        labels: (N,) true class indices (class-set order).
        vector: the attack and its budget on the 0-255 scale in the attack's norm: an
            ``AttackVector`` of ``ADAPTIVE_ATTACKS`` or its spec, e.g. ``"joint_linf:8"``.
        options: ``AdaptiveOptions`` (None: defaults).
        indices: (N,) each image's index in the whole evaluation; random starts derive from
            (``options.seed``, index), so a shard reproduces the unsharded run. Default:
            ``arange(N)``.

    Returns:
        ``AdaptiveResult``: 8-bit images inside the ball, the target per image (targeted
        attacks), success and the judge's verdict of the returned images.
    """
    if isinstance(vector, str):
        (vector,) = ADAPTIVE_ATTACKS.parse((vector,))
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"adaptive_attack: expected float images (N, 3, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}")
    if labels.shape != (len(images),) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"adaptive_attack: expected integer labels ({len(images)},), got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    if len(images) and (images.min() < 0 or images.max() > 1):
        raise ValueError("adaptive_attack: images must lie in [0, 1]")
    if indices is None:
        indices = torch.arange(len(images))
    elif indices.shape != (len(images),):
        raise ValueError(f"adaptive_attack: expected indices of shape ({len(images)},), got {tuple(indices.shape)}")
    attack = build_adaptive_attack(vector, target, options)
    return attack(images, labels, indices.cpu().to(torch.int64))

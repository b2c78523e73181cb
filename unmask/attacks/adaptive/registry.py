"""The adaptive attacks by name, built from what each attack class says about itself, and
``adaptive_attack``, the one entry point.

Adding an attack is one class (a ``GradientAttack`` subclass with ``family``, ``norms`` and, if
so, ``targeted``) and one line here: its names, the command line's choices and help, and the
``name:epsilon`` parser follow from the registry.
"""

from __future__ import annotations

import torch

from unmask.attacks.adaptive.detector import FabricateAttack, VanishAttack
from unmask.attacks.adaptive.engine import AdaptiveAttack, AdaptiveAttackInfo, AdaptiveResult
from unmask.attacks.adaptive.joint import JointAttack
from unmask.attacks.adaptive.label_only import HopSkipJump
from unmask.attacks.adaptive.options import AdaptiveOptions
from unmask.attacks.adaptive.orthogonal import OrthogonalAttack
from unmask.attacks.adaptive.reclassify import ReclassifyAttack
from unmask.attacks.adaptive.target import DefenseTarget
from unmask.attacks.base import AttackRegistry, AttackVector

FULL_ADAPTIVE: tuple[str, ...] = (
    "joint_linf:8", "joint_linf:16", "joint_linf:32", "joint_linf:64",
    "joint_l2:300", "joint_l2:600", "joint_l2:1200", "joint_l2:2400",
    "orthogonal_linf:8", "orthogonal_linf:16", "orthogonal_l2:300", "orthogonal_l2:600",
    "reclassify_linf:8", "reclassify_linf:16", "reclassify_l2:300", "reclassify_l2:600",
    "k_vanish_linf:64", "k_fabricate_linf:64", "hsj_linf:8", "hsj_linf:16", "hsj_l2:300", "hsj_l2:600",
)
"""``full``: every adaptive attack at the paper's budgets (L-inf 8 and 16, L2 300 and 600), the
joint attack further out (L-inf 32 and 64, L2 1200 and 2400: where it should reach 100%), and
K-only sanity attacks at 64."""

ADAPTIVE_ATTACKS = AttackRegistry("adaptive attack", (
    *JointAttack.describe(),
    *OrthogonalAttack.describe(),
    *ReclassifyAttack.describe(),
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

"""The adaptive attacks by name, and ``adaptive_attack``, the one entry point."""

from __future__ import annotations

import torch

from unmask.attacks.adaptive.detector import FabricateAttack, VanishAttack
from unmask.attacks.adaptive.engine import AdaptiveAttack, AdaptiveResult
from unmask.attacks.adaptive.joint import JointAttack
from unmask.attacks.adaptive.label_only import HopSkipJump
from unmask.attacks.adaptive.options import AdaptiveOptions
from unmask.attacks.adaptive.orthogonal import OrthogonalAttack
from unmask.attacks.adaptive.reclassify import ReclassifyAttack
from unmask.attacks.adaptive.target import DefenseTarget
from unmask.parts import UnknownNameError

_FAMILIES: dict[str, type[AdaptiveAttack] | type[HopSkipJump]] = {
    "joint": JointAttack,
    "orthogonal": OrthogonalAttack,
    "reclassify": ReclassifyAttack,
    "k_vanish": VanishAttack,
    "k_fabricate": FabricateAttack,
    "hsj": HopSkipJump,
}

ADAPTIVE_ATTACK_NORMS: dict[str, str] = {
    "joint_linf": "linf",
    "joint_l2": "l2",
    "orthogonal_linf": "linf",
    "orthogonal_l2": "l2",
    "reclassify_linf": "linf",
    "reclassify_l2": "l2",
    "k_vanish_linf": "linf",
    "k_fabricate_linf": "linf",
    "hsj_l2": "l2",
    "hsj_linf": "linf",
}
"""Every adaptive attack's name and norm; the family is the name without its norm suffix."""

ADAPTIVE_ATTACK_NAMES: tuple[str, ...] = tuple(ADAPTIVE_ATTACK_NORMS)

MINIMIZATION_ATTACKS = frozenset({"hsj_l2", "hsj_linf"})
"""Attacks that minimise the distance: ``AdaptiveResult.distances`` answers every epsilon."""

LABEL_ONLY_ATTACKS = frozenset({"hsj_l2", "hsj_linf"})
"""Decision-based attacks: they query the hard pipeline's verdicts only, never a gradient (the
check against gradient masking), at about a minute per image on a CPU."""


def _family(name: str) -> str:
    return name.rsplit("_", 1)[0]


def build_adaptive_attack(name: str, target: DefenseTarget, epsilon: float,
                          options: AdaptiveOptions | None = None) -> AdaptiveAttack | HopSkipJump:
    """The attack registered as ``name`` against ``target`` at ``epsilon`` (0-255 scale)."""
    if name not in ADAPTIVE_ATTACK_NORMS:
        raise UnknownNameError(f"unknown adaptive attack {name!r}; expected one of: {', '.join(ADAPTIVE_ATTACK_NAMES)}")
    return _FAMILIES[_family(name)](target, epsilon=epsilon, norm=ADAPTIVE_ATTACK_NORMS[name],
                                    options=options or AdaptiveOptions())


def adaptive_attack(
    target: DefenseTarget,
    images: torch.Tensor,
    labels: torch.Tensor,
    name: str,
    epsilon: float,
    options: AdaptiveOptions | None = None,
    *,
    indices: torch.Tensor | None = None,
    index_offset: int = 0,
) -> AdaptiveResult:
    """Run the adaptive attack ``name`` on ``images``.

    Args:
        target: what the attacker knows (M, its K, the part table, thresholds) and the judge.
        images: (N, 3, H, W) float 8-bit images in [0, 1] (as the data's PNG files), any device.
        labels: (N,) true class indices (class-set order).
        name: one of ``ADAPTIVE_ATTACK_NAMES``.
        epsilon: budget on the 0-255 scale in the attack's norm (``ADAPTIVE_ATTACK_NORMS``).
        options: ``AdaptiveOptions`` (None: defaults).
        indices: (N,) each image's index in the whole evaluation; random starts derive from
            (``options.seed``, index), so a shard reproduces the unsharded run. Default:
            ``index_offset + arange(N)``.

    Returns:
        ``AdaptiveResult``: 8-bit images inside the ball, the target per image (targeted
        attacks), success and the judge's verdict of the returned images.
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"adaptive_attack: expected float images (N, 3, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}")
    if labels.shape != (len(images),) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"adaptive_attack: expected integer labels ({len(images)},), got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    if len(images) and (images.min() < 0 or images.max() > 1):
        raise ValueError("adaptive_attack: images must lie in [0, 1]")
    if indices is None:
        indices = torch.arange(index_offset, index_offset + len(images))
    elif indices.shape != (len(images),):
        raise ValueError(f"adaptive_attack: expected indices of shape ({len(images)},), got {tuple(indices.shape)}")
    attack = build_adaptive_attack(name, target, epsilon, options)
    return attack(images, labels, indices.cpu().to(torch.int64))

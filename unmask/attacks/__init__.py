"""Attacks on M: a registry of untargeted attacks keyed by name, run through one call.

``attack(model, images, labels, "pgd_linf", 8)`` returns adversarial versions of [0, 1] images:
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

``steps`` (20, as the original) is the iteration count of every iterative attack (for ``cw_l2``:
per binary-search step). The original UnMask used a step of 2.0 in [0, 1] pixels for PGD and MIM
(every step overshoots and is projected back); ``original_step=True`` reproduces it. The two
minimisation attacks (``cw_l2``, ``deepfool_linf``) return the clean image where they find no
adversarial within epsilon.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import foolbox as fb
import torch
from torch import nn

from unmask.attacks.momentum import L2MomentumIterativeAttack, LinfMomentumIterativeAttack
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
    "L2MomentumIterativeAttack", "LinfMomentumIterativeAttack", "attack", "attack_vector", "build_attack",
    "parse_attack_vectors",
]

LINF_STEP = 2.0 / 255
"""The corrected L-inf step of PGD, MIM and BIM, in [0, 1] pixels."""
L2_RELATIVE_STEP = 2.5
"""The corrected L2 step of PGD and MIM is ``L2_RELATIVE_STEP * epsilon / steps``."""
ORIGINAL_STEP = 2.0
"""The original UnMask's step of PGD and MIM, in [0, 1] pixels (not divided by 255)."""


@dataclass(frozen=True)
class AttackOptions:
    """Hyper-parameters shared by the registry's attacks; sizes on the 0-255 scale.

    ``step_size`` overrides the step of PGD, MIM and BIM (None: the corrected default, or the
    original's with ``original_step``); ``random_start`` None keeps each attack's own default.
    """

    steps: int = 20
    step_size: float | None = None
    original_step: bool = False
    decay: float = 1.0
    random_start: bool | None = None
    cw_binary_search_steps: int = 5
    cw_learning_rate: float = 0.01

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"attack steps must be at least 1, got {self.steps}")
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

_BUILDERS: dict[str, AttackBuilder] = {
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

_MINIMISATION_ATTACKS = frozenset({"cw_l2", "deepfool_linf"})

if set(_BUILDERS) != set(ATTACK_NAMES):  # one name list: vectors.ATTACK_NORMS
    raise ImportError(f"attack registry out of sync with ATTACK_NORMS: {sorted(set(_BUILDERS) ^ set(ATTACK_NAMES))}")


def build_attack(name: str, epsilon: float, options: AttackOptions | None = None) -> fb.attacks.Attack:
    """The foolbox attack registered as ``name`` for ``epsilon`` on the 0-255 scale."""
    vector = AttackVector(name, epsilon)  # validates both
    return _BUILDERS[vector.name](vector.epsilon / 255, options or AttackOptions())


def attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    name: str,
    epsilon: float,
    *,
    steps: int = 20,
    step_size: float | None = None,
    original_step: bool = False,
    decay: float = 1.0,
    random_start: bool | None = None,
    batch_size: int | None = None,
    cw_binary_search_steps: int = 5,
    cw_learning_rate: float = 0.01,
) -> torch.Tensor:
    """Adversarial versions of ``images`` against ``model`` (untargeted, cross-entropy of ``labels``).

    Args:
        model: maps [0, 1] images to logits. Attacked in eval mode with its parameters frozen, on
            its own device; its mode and ``requires_grad`` flags are restored afterwards.
        images: (N, C, H, W) floats in [0, 1], on any device.
        labels: (N,) true class indices (any integer dtype; foolbox gets int64).
        name: an attack of the registry (``ATTACK_NAMES``; table in the module docstring).
        epsilon: perturbation budget on the 0-255 scale, in the attack's norm (``ATTACK_NORMS``).
        steps, step_size, original_step, decay, random_start, cw_*: see ``AttackOptions``.
        batch_size: images per forward/backward pass (None: all at once).

    Returns:
        float32 tensor shaped like ``images``, on their device, in [0, 1] and within epsilon of
        ``images`` in the attack's norm. Random starts draw from torch's global RNG, so a run is
        reproducible given ``torch.manual_seed``.
    """
    options = AttackOptions(steps=steps, step_size=step_size, original_step=original_step, decay=decay,
                            random_start=random_start, cw_binary_search_steps=cw_binary_search_steps,
                            cw_learning_rate=cw_learning_rate)
    foolbox_attack = build_attack(name, epsilon, options)
    _check_inputs(images, labels)
    if len(images) == 0:
        return images.float().clone()
    batch_size = batch_size or len(images)
    device = _device_of(model)
    with _attack_mode(model):
        foolbox_model = fb.PyTorchModel(model, bounds=(0, 1), device=device)
        adversarials = []
        for start in range(0, len(images), batch_size):
            clean = images[start:start + batch_size].to(device, torch.float32)
            targets = labels[start:start + batch_size].to(device, torch.int64)
            _, bounded, success = foolbox_attack(foolbox_model, clean, targets, epsilons=epsilon / 255)
            if name in _MINIMISATION_ATTACKS:
                # foolbox returns zeros (a black image) where it found no adversarial at all
                bounded = torch.where(success.view(-1, 1, 1, 1), bounded, clean)
            adversarials.append(bounded.clamp_(0, 1).detach().to(images.device))
    return torch.cat(adversarials)


def attack_vector(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, vector: AttackVector,
                  **options: object) -> torch.Tensor:
    """``attack`` with the name and epsilon of ``vector``; ``options`` as ``attack``'s keywords."""
    return attack(model, images, labels, vector.name, vector.epsilon, **options)


def _check_inputs(images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"attack: expected float images shaped (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    if labels.shape != (len(images),) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"attack: expected integer labels shaped ({len(images)},), got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    if len(images) and (images.min() < 0 or images.max() > 1):
        raise ValueError(f"attack: images must lie in [0, 1] (normalisation belongs inside the model), got values in "
                         f"[{images.min().item():.3g}, {images.max().item():.3g}]")


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@contextmanager
def _attack_mode(model: nn.Module) -> Iterator[None]:
    # eval: BatchNorm and dropout must not change while the attacker queries; frozen parameters:
    # backward then computes input gradients only (faster, and leaves no .grad behind)
    was_training = model.training
    parameters = list(model.parameters())
    trainable = [parameter.requires_grad for parameter in parameters]
    model.eval()
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in zip(parameters, trainable, strict=True):
            parameter.requires_grad_(flag)
        model.train(was_training)

"""Running a registered attack on M: batching, devices, eval mode and frozen parameters."""

from __future__ import annotations

import foolbox as fb
import torch
from torch import nn

from unmask.attacks.base import AttackVector, frozen_eval
from unmask.attacks.registry import AttackOptions, build_attack


def attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    vector: AttackVector,
    options: AttackOptions | None = None,
) -> torch.Tensor:
    """Adversarial versions of ``images`` against ``model`` (untargeted, cross-entropy of ``labels``).

    Args:
        model: maps [0, 1] images to logits. Attacked in eval mode with its parameters frozen, on
            its own device; its mode and ``requires_grad`` flags are restored afterwards.
        images: (N, C, H, W) floats in [0, 1], on any device.
        labels: (N,) true class indices (any integer dtype; foolbox gets int64).
        vector: the attack (a name of the registry; table in ``unmask.attacks``) and its budget on
            the 0-255 scale, in the attack's norm.
        options: the hyper-parameters (``AttackOptions``; None: the defaults).

    Returns:
        float32 tensor shaped like ``images``, on their device, in [0, 1] and within epsilon of
        ``images`` in the attack's norm. Random starts draw from torch's global RNG, so a run is
        reproducible given ``torch.manual_seed``.
    """
    options = options or AttackOptions()
    foolbox_attack = build_attack(vector, options)
    _check_inputs(images, labels)
    if len(images) == 0:
        return images.float().clone()
    batch_size = options.batch_size or len(images)
    device = _device_of(model)
    with frozen_eval(model):
        foolbox_model = fb.PyTorchModel(model, bounds=(0, 1), device=device)
        adversarials = []
        for start in range(0, len(images), batch_size):
            clean = images[start:start + batch_size].to(device, torch.float32)
            targets = labels[start:start + batch_size].to(device, torch.int64)
            _, bounded, success = foolbox_attack(foolbox_model, clean, targets, epsilons=vector.unit_epsilon)
            if vector.attack.kind.minimises:
                # foolbox returns zeros (a black image) where it found no adversarial at all
                bounded = torch.where(success.view(-1, 1, 1, 1), bounded, clean)
            adversarials.append(bounded.clamp_(0, 1).detach().to(images.device))
    return torch.cat(adversarials)


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

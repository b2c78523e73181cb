"""What the white-box adaptive attacker knows: ``DefenseTarget``, and the hard judge's ``Verdict``.

The attacks optimise a differentiable surrogate of K (``part_view``) but decide which iterate to
keep on the real, non-differentiable pipeline: a *judge* the caller injects (BPDA, Athalye et al.
2018: forward through the real function, backward through an approximation). The judge belongs
to the layers above the attacks (it is built from ``unmask.defense`` and the hard K), so this
package never imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import MaskRCNN

from unmask.constants import NO_PREDICTION
from unmask.parts import PARTS

__all__ = ["NO_PREDICTION", "DefenseTarget", "DeployedRule", "Judge", "Verdict"]


def _as_tensor(value: object, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    return torch.as_tensor(value).detach().to("cpu", dtype)


@dataclass(frozen=True)
class Verdict:
    """The hard pipeline's answer for N images (tensors or arrays; stored as CPU tensors).

    - ``m_prediction`` (N,) int64: M's class (class-set order).
    - ``detection_score`` (N,) float: 1 - set Jaccard of V[M's class] with K's hard parts (the
      deployed rule's score, ``unmask.rules``).
    - ``flagged`` (N,) bool: ``detection_score >= detection_threshold`` (the deployed rule's flag).
    - ``unmask_prediction`` (N,) int64: UnMask's re-classification, ``NO_PREDICTION`` (-1) if none.
    - ``parts`` (N, 44) bool: K's hard part sets.
    - ``reject`` (keyword): the deployed rule gives a flagged image no class (``deployed``).
    """

    m_prediction: torch.Tensor
    detection_score: torch.Tensor
    flagged: torch.Tensor
    unmask_prediction: torch.Tensor
    parts: torch.Tensor
    reject: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        converted = {
            "m_prediction": _as_tensor(self.m_prediction, torch.int64),
            "detection_score": _as_tensor(self.detection_score, torch.float64),
            "flagged": _as_tensor(self.flagged, torch.bool),
            "unmask_prediction": _as_tensor(self.unmask_prediction, torch.int64),
            "parts": _as_tensor(self.parts, torch.bool),
        }
        object.__setattr__(self, "reject", bool(self.reject))
        n = len(converted["m_prediction"])
        for name, value in converted.items():
            expected = (n, len(PARTS)) if name == "parts" else (n,)
            if tuple(value.shape) != expected:
                raise ValueError(f"Verdict.{name} must have shape {expected}, got {tuple(value.shape)}")
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return len(self.m_prediction)

    def evades(self, labels: torch.Tensor) -> torch.Tensor:
        """(N,) bool: M is wrong (``m_prediction != labels``) and the image is not flagged."""
        return (self.m_prediction != labels.cpu()) & ~self.flagged

    @property
    def deployed(self) -> torch.Tensor:
        """(N,) int64: the class UnMask answers: M's unless the image is flagged, else the
        re-classified one (``NO_PREDICTION`` when that has none, or under ``reject``)."""
        fallback = torch.full_like(self.unmask_prediction, NO_PREDICTION) if self.reject else self.unmask_prediction
        return torch.where(self.flagged, fallback, self.m_prediction)


class DeployedRule(Protocol):
    """The decision rule the defense deploys, as the white-box attacker knows it
    (``unmask.rules.DecisionRule``, injected: this package never imports the rules)."""

    reject: bool

    def hard(self, m: torch.Tensor, parts: torch.Tensor, part_scores: torch.Tensor) -> dict[str, torch.Tensor]:
        """The hard decision for M's classes (n,), K's hard parts (n, 44) and their confidences:
        ``score``, ``flagged``, ``reclassified``, ``deployed``."""
        ...

    def reclassifier_logits(self, presence: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor | None:
        """Differentiable re-classifier logits (n, C), or None when it is argmax J."""
        ...


Judge = Callable[[torch.Tensor], Verdict]
"""Images (N, 3, H, W) in [0, 1] (8-bit quantised by the attacks) -> the hard pipeline's Verdict."""


@dataclass(frozen=True)
class DefenseTarget:
    """What the adaptive attacker knows about the defended pipeline.

    - ``classifier``: M, [0, 1] images -> logits over the class set.
    - ``part_model``: a torchvision ``MaskRCNN`` part extractor (label = part index + 1). It is
      the attacker's K: the real one (white-box) or a surrogate K' (transfer threat model).
      Nothing here assumes it is the K inside ``judge``. None: the defense is M alone (an
      undefended or adversarially trained M), which only the attacks on M alone can attack.
    - ``class_parts`` (C, 44) float 0/1: V[c] per class, class-set order (M's label indices).
    - ``k_score_threshold``: the score threshold of ``part_model``'s detection rule.
    - ``detection_threshold``: the detection-score threshold (flagged: score >= it).
    - ``judge``: the hard pipeline (see ``Judge``); decides success and which iterate is kept.
    - ``rule``: the deployed decision rule (``DeployedRule``), which the surrogate's verdicts,
      the joint attack's gate and the re-classification attack's logits follow; None: the
      paper's rule against ``detection_threshold``. The judge must apply the same rule.
    """

    classifier: nn.Module
    part_model: MaskRCNN | None
    class_parts: torch.Tensor
    k_score_threshold: float
    detection_threshold: float
    judge: Judge
    rule: DeployedRule | None = None

    def __post_init__(self) -> None:
        class_parts = _as_tensor(self.class_parts, torch.float32)
        if class_parts.ndim != 2 or class_parts.shape[1] != len(PARTS) or len(class_parts) < 2:
            raise ValueError(f"class_parts must be (classes >= 2, {len(PARTS)}), got {tuple(class_parts.shape)}")
        if not bool(((class_parts == 0) | (class_parts == 1)).all()):
            raise ValueError("class_parts must hold 0/1 entries")
        if not 0.0 <= self.k_score_threshold < 1.0:
            raise ValueError(f"k_score_threshold must lie in [0, 1), got {self.k_score_threshold}")
        if not callable(self.judge):
            raise TypeError(f"judge must be callable (images -> Verdict), got {type(self.judge).__name__}")
        object.__setattr__(self, "class_parts", class_parts)

"""UnMask as one differentiable classifier, for attack libraries (foolbox, torchattacks,
AutoAttack, ART): ``StandIn``, built by ``UnMask.stand_in()``.

UnMask's decision is not differentiable (K's thresholded detections, set Jaccard, a threshold),
so an attack library, which only knows "a model that maps images to logits", cannot attack it
as it is. The stand-in is such a model: its forward is UnMask's real decision and its gradients
are those of a smooth version of it (BPDA: Athalye, Carlini & Wagner 2018, "Obfuscated Gradients
Give a False Sense of Security"), through the same differentiable view of K that the project's
adaptive attacks use (``unmask.attacks.adaptive.part_view``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from unmask.attacks.adaptive.part_view import PartView, soft_jaccard
from unmask.constants import NO_PREDICTION
from unmask.models.part_extractor import PartExtractor

if TYPE_CHECKING:
    from unmask.protect.pipeline import UnMask

SoftParts = Callable[[torch.Tensor], torch.Tensor]
"""Images (N, 3, H, W) in [0, 1] -> K's soft part presences (N, 44) in [0, 1], differentiable."""

WEIGHT = 2.0
"""The default weight w of K's part evidence against M's (see ``StandIn``)."""
M_FLOOR = 0.05
"""The default floor epsilon of M's probabilities (see ``StandIn``)."""


class StandIn(nn.Module):
    """UnMask's decision as logits (N, C + 1): one per class of the class set, in its order, then
    a last one for "no class" (a rejected image, or no class sharing a part: ``NO_PREDICTION``;
    libraries count it as a misclassification, as the project's accuracies do).

    Backward: the soft logits, for each class c,

        z_c = log(p_M(c | x) + epsilon) + w * log(J~(V[c], P(x)) + delta),

    where p_M is M's softmax, P(x) (N, 44) are K's soft part presences through its
    differentiable view (``PartView.presence``: each part's best proposal probability, below
    K's score threshold where K would not report it) and J~ the soft Jaccard (sum min / sum max,
    the paper's confidence-weighted variant). exp(z_c) is a product of experts (Hinton 2002),
    (p_M(c) + epsilon) * (J~_c + delta) ** w: high only where M and K's parts agree on c. An
    untargeted attack on the true class y must therefore move M away from y *and* K's parts
    towards the class it moves M to, which is what evading UnMask takes (M wrong, and K's parts
    fitting M's new class: not flagged). The floor epsilon stops M's term from pushing once M
    has all but dropped y (p_M(y) << epsilon: a saturating loss, as Tramer et al. 2020 advise
    for adaptive attacks), so that the steps left go to K's evidence, which is what still
    flags the image; without it, sign-gradient attacks keep spending their steps on M's
    unbounded log-probability. The "no class" logit is log(1 + epsilon) + w * log(1 - threshold
    + delta) when flagged images are rejected (M's confident class c then beats it exactly when
    J~_c > 1 - threshold: the soft twin of "not flagged"), and log(epsilon) + w * log(delta),
    the least any class can have, when they are re-classified.

    The defaults (w = 2, epsilon = 0.05) were chosen on the default run's models: foolbox's
    LinfPGD with the project's gray-box PGD settings, on 40 test images M gets right, evaded
    UnMask on 14 at 8/255 (10 without the floor, 12-14 for w from 1 to 4 and epsilon from 0.01
    to 0.1) and on 14 at 16/255 (13 for w = 4 and 8), where the gray-box PGD on M alone evades
    it on 8 and 8; on the threat-model table's 100 images, 34 and 28 against 20 and 23
    (``tests/protect/test_default_run.py``).

    Forward (BPDA): z = z_soft + (z_hard - z_soft).detach(), where z_hard is z_soft with the
    logit of UnMask's real decision on the images as given (``UnMask.__call__``: M's argmax,
    K's detection rule, the threshold, re-classify or reject) raised, where needed, to ``margin``
    above every other one. So the argmax is the deployed decision exactly, a library's own
    "adversarial?" check (argmax != label) is the real pipeline's on the images it passes, and
    the gradients are the soft logits'. Attack libraries do not round to 8 bits: judge their
    images with ``UnMask.judge``.

    ``weight`` (w) sets how much K's evidence counts against M's; ``m_floor`` is epsilon;
    ``delta`` keeps log J~ finite. ``soft_parts``: K's differentiable presences (default: ``PartView`` of a ``PartExtractor``
    K; needed for any other K). M's and K's models are put in eval mode with frozen parameters
    (an attack needs input gradients only, and leaves no ``.grad`` on them).
    """

    def __init__(self, unmask: UnMask, *, weight: float = WEIGHT, m_floor: float = M_FLOOR, delta: float = 1e-3,
                 margin: float = 1.0, soft_parts: SoftParts | None = None) -> None:
        super().__init__()
        if not (weight >= 0 and m_floor > 0 and delta > 0 and margin > 0):
            raise ValueError(f"expected weight >= 0 and m_floor, delta and margin > 0, got {weight}, {m_floor}, "
                             f"{delta}, {margin}")
        self.unmask = unmask
        self.classifier = unmask.classifier.model
        self.weight, self.m_floor, self.delta, self.margin = weight, m_floor, delta, margin
        extractor = unmask.part_extractor
        if soft_parts is None:
            if not isinstance(extractor, PartExtractor):
                raise TypeError("the stand-in needs K's soft part presences: pass soft_parts= (images -> (N, 44) in "
                                "[0, 1], differentiable) for a part extractor that is not a PartExtractor")
            self.part_model = extractor.model
            view = PartView(extractor.model, score_threshold=min(extractor.score_threshold, math.nextafter(1.0, 0.0)))
            soft_parts = lambda images: view.presence(view(images))  # noqa: E731
        self.soft_parts = soft_parts
        self.register_buffer("class_parts", torch.from_numpy(np.array(unmask.class_set.expected, dtype=np.float32)),
                             persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> StandIn:
        """Always in eval mode: M's BatchNorm statistics and K's inference must not change."""
        return super().train(False)

    @property
    def no_class(self) -> int:
        """The index of the "no class" logit (the class set's size)."""
        return len(self.unmask.class_set)

    def soft_logits(self, images: torch.Tensor) -> torch.Tensor:
        """z_soft (N, C + 1), differentiable in ``images``."""
        device = self.class_parts.device
        m = torch.log(self.classifier(images.to(device)).float().softmax(-1) + self.m_floor)
        similarities = soft_jaccard(self.soft_parts(images.to(device)).float(), self.class_parts)
        logits = m + self.weight * torch.log(similarities + self.delta)
        if self.unmask.decision == "reject":
            no_class = math.log(1 + self.m_floor) + self.weight * math.log(max(1 - self.unmask.required_threshold(), 0.0)
                                                                           + self.delta)
        else:
            no_class = math.log(self.m_floor) + self.weight * math.log(self.delta)
        return torch.cat([logits, logits.new_full((len(images), 1), no_class)], dim=1)

    def decision(self, images: torch.Tensor) -> torch.Tensor:
        """UnMask's real decision on ``images`` as given, as indices of these logits (N,)."""
        decision = self.unmask(images.detach()).decision
        return torch.where(decision == NO_PREDICTION, self.no_class, decision)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        soft = self.soft_logits(images)
        with torch.no_grad():
            decided = self.decision(images).to(soft.device)
            rows = torch.arange(len(soft), device=soft.device)
            others = soft.scatter(1, decided.view(-1, 1), -math.inf).amax(dim=1)
            lift = (others + self.margin - soft[rows, decided]).clamp(min=0)
            offset = torch.zeros_like(soft)
            offset[rows, decided] = lift
        return soft + offset

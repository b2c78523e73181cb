"""K-only sanity attacks (DAG / TOG style): make K lose every part, or see a chosen class's parts.

If these fail at a large epsilon, the differentiable view of K (``part_view``) is wrong: they
check the surrogate, not UnMask.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from unmask.attacks.adaptive.engine import Batch, Evaluation, GradientAttack, Run
from unmask.attacks.adaptive.part_view import soft_jaccard
from unmask.attacks.adaptive.target import Verdict
from unmask.attacks.norms import LINF


class VanishAttack(GradientAttack):
    """K loses every part: PGD on K's "remove" hinges (TOG vanishing, DAG-style; a sanity check).

    The vanishing attack of Chow et al. 2020, "Adversarial Objectness Gradient Attacks in
    Real-time Object Detection Systems" (TOG), on K's box head like DAG (Xie et al. 2017,
    "Adversarial Examples for Semantic Segmentation and Object Detection"): PGD on K's "remove"
    hinge for every part and every proposal (of the current image, plus the clean image's with
    ``options.clean_proposals``). Success: the judge sees no part at all; the kept image has the
    fewest parts. Norm: L-inf (``k_vanish_linf``); ``options.restarts`` runs.
    """

    family = "k_vanish"
    norms = (LINF,)
    aims = None

    def evaluate(self, batch: Batch, run: Run, x: torch.Tensor, x_q: torch.Tensor, rows: torch.Tensor) -> Evaluation:
        outputs = self.outputs(batch, x_q, rows)
        loss = self.view.hinge_loss(outputs, remove=torch.ones(len(rows), self.class_parts.shape[1],
                                                               device=self.device))
        count = self.view.hard_presence(outputs).sum(1).double()
        return Evaluation(count == 0, torch.zeros_like(count), count + 1e-6 * loss.detach().double(), loss=loss)

    def judged(self, batch: Batch, run: Run, verdict: Verdict, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return verdict.parts.sum(1) == 0, torch.zeros(len(rows), dtype=torch.float64)

    def final_success(self, verdict: Verdict, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return verdict.parts.sum(1) == 0


class FabricateAttack(GradientAttack):
    """K sees every part of a chosen class: PGD on K's "add" hinges (TOG fabrication; a sanity check).

    TOG's fabrication (Chow et al. 2020), targeted like DAG's mislabelling: PGD on K's "add"
    hinge for every part of a target class, the class (other than the true one) whose parts
    overlap least with K's clean detections (set Jaccard; ties: the earlier class). Success: the
    judge sees every part of the target class; the kept image has the most of them. Norm: L-inf
    (``k_fabricate_linf``); ``options.restarts`` runs.
    """

    family = "k_fabricate"
    norms = (LINF,)
    aims = None
    targeted = True

    def runs(self, batch: Batch) -> Iterator[Run]:
        clean_parts = (batch.clean.presence >= self.view.effective_threshold).float()
        overlap = soft_jaccard(clean_parts, self.class_parts)
        targets = overlap.scatter(1, batch.labels.view(-1, 1), float("inf")).argmin(1).cpu()
        for restart in range(self.options.restarts):
            yield Run((restart,), self.options.random_start or restart > 0, targets)

    def evaluate(self, batch: Batch, run: Run, x: torch.Tensor, x_q: torch.Tensor, rows: torch.Tensor) -> Evaluation:
        expected = self.class_parts[run.targets[rows].to(self.device)]
        outputs = self.outputs(batch, x_q, rows)
        loss = self.view.hinge_loss(outputs, add=expected)
        missing = (expected.bool() & ~self.view.hard_presence(outputs)).sum(1).double()
        return Evaluation(missing == 0, torch.zeros_like(missing), missing + 1e-6 * loss.detach().double(), loss=loss)

    def judged(self, batch: Batch, run: Run, verdict: Verdict, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        expected = self.target.class_parts[run.targets[rows]].bool()
        return (expected & ~verdict.parts).sum(1) == 0, torch.zeros(len(rows), dtype=torch.float64)

    def final_success(self, verdict: Verdict, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        expected = self.target.class_parts[targets.clamp(min=0)].bool()
        return ((expected & ~verdict.parts).sum(1) == 0) & (targets >= 0)

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
    """K sees a chosen class's parts, enough for UnMask to accept that class (TOG fabrication; a sanity check).

    TOG's fabrication (Chow et al. 2020), targeted like DAG's mislabelling (Xie et al. 2017,
    which gives each proposal an adversarial label of its own): PGD on K's "add" hinges for the
    parts of a target class, each part matched to a proposal of its own
    (``PartView.distinct_add_margins``), and K's "remove" hinges for every other part. The target
    is the class (other than the true one) whose parts overlap least with K's clean detections
    (set Jaccard; ties: the earlier class). Success: the judge's parts pass UnMask's detection for
    the target class (1 - J(V[target], parts) below the detection threshold), so an M moved to
    that class would not be flagged; the kept image has the highest Jaccard. Norm: L-inf
    (``k_fabricate_linf``); ``options.restarts`` runs.

    Revision 1. Revision 0 asked for every part of the target class (7 to 13 on the default
    world) through each part's best proposal, with no loss on the other parts; at L-inf 64 that
    held on 16% (clean K) and 24% (robust K) of the images: several parts pulled the same
    proposal their own ways, and all of them at once is more than UnMask needs.
    """

    family = "k_fabricate"
    norms = (LINF,)
    aims = None
    targeted = True
    revision = 1

    def runs(self, batch: Batch) -> Iterator[Run]:
        clean_parts = (batch.clean.presence >= self.view.effective_threshold).float()
        overlap = soft_jaccard(clean_parts, self.class_parts)
        targets = overlap.scatter(1, batch.labels.view(-1, 1), float("inf")).argmin(1).cpu()
        for restart in range(self.options.restarts):
            yield Run((restart,), self.options.random_start or restart > 0, targets)

    def evaluate(self, batch: Batch, run: Run, x: torch.Tensor, x_q: torch.Tensor, rows: torch.Tensor) -> Evaluation:
        targets = run.targets[rows].to(self.device)
        expected = self.class_parts[targets]
        outputs = self.outputs(batch, x_q, rows)
        loss = self.view.hinge_loss(outputs, add=expected, remove=1 - expected, distinct=True)
        jaccard = self._jaccard(self.view.hard_presence(outputs), self.class_parts, targets)
        return Evaluation(self._accepted(jaccard), -jaccard, -jaccard + 1e-6 * loss.detach().double(), loss=loss)

    def judged(self, batch: Batch, run: Run, verdict: Verdict, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        jaccard = self._jaccard(verdict.parts, self.target.class_parts, run.targets[rows])
        return self._accepted(jaccard), -jaccard

    def final_success(self, verdict: Verdict, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        jaccard = self._jaccard(verdict.parts, self.target.class_parts, targets.clamp(min=0))
        return self._accepted(jaccard) & (targets >= 0)

    @staticmethod
    def _jaccard(parts: torch.Tensor, class_parts: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(n,) float64 set Jaccard of each image's parts (n, 44 bool) with its target class's."""
        overlap = soft_jaccard(parts.double(), class_parts.to(parts.device).double())
        return overlap.gather(1, targets.to(parts.device).view(-1, 1)).squeeze(1)

    def _accepted(self, jaccard: torch.Tensor) -> torch.Tensor:
        """UnMask's detection would pass the target class: its score 1 - J is below the threshold."""
        return 1 - jaccard < self.target.detection_threshold

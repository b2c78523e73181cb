"""The white-box attack on M alone: how an undefended or adversarially trained M is attacked
with the same engine, budgets and images as UnMask (so the comparison is like for like)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from unmask.attacks.adaptive.engine import (
    UNTARGETED_LOSSES,
    Batch,
    Evaluation,
    GradientAttack,
    Run,
    logit_margin,
    untargeted_loss,
)
from unmask.attacks.adaptive.target import Verdict
from unmask.attacks.norms import L2, LINF


class ClassifierAttack(GradientAttack):
    """APGD-CE and APGD-DLR on M alone (Croce & Hein 2020), the worst case of the two kept.

    The white-box attack on a defense that is M alone (the undefended M, the adversarial-training
    baseline): untargeted, one run per loss (cross-entropy of the label, then the DLR margin)
    and per restart, with the engine's step rule (APGD by default), 8-bit iterates and early
    stop. Success: the judge's M is wrong (no detector: nothing flags). Norm: L-inf or L2
    (``m_apgd_linf``, ``m_apgd_l2``); K plays no part.
    """

    family = "m_apgd"
    norms = (LINF, L2)
    needs_part_model = False

    def runs(self, batch: Batch) -> Iterator[Run]:
        for index, loss in enumerate(UNTARGETED_LOSSES):
            for restart in range(self.options.restarts):
                yield Run((index, restart), self.options.random_start or restart > 0, loss=loss, restart=restart)

    def evaluate(self, batch: Batch, run: Run, x: torch.Tensor, x_q: torch.Tensor, rows: torch.Tensor) -> Evaluation:
        logits = self.target.classifier(x_q)
        labels = batch.labels[rows]
        loss = untargeted_loss(run.loss, logits, labels)
        with torch.no_grad():
            margin = logit_margin(logits, labels).double()
        return Evaluation(margin < 0, torch.zeros_like(margin), margin, loss=loss)

    def judged(self, batch: Batch, run: Run, verdict: Verdict, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return verdict.m_prediction != batch.labels_cpu[rows], torch.zeros(len(rows), dtype=torch.float64)

    def final_success(self, verdict: Verdict, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return verdict.m_prediction != labels

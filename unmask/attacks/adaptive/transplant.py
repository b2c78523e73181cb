"""The attack on UnMask's deployed decision: M says t and K's parts point to t (a part-set transplant)."""

from __future__ import annotations

import torch

from unmask.attacks.adaptive.engine import Batch, Evaluation, GradientAttack, Run, cw_margin
from unmask.attacks.adaptive.target import Verdict
from unmask.attacks.norms import L2, LINF


class TransplantAttack(GradientAttack):
    """Ungated joint PGD towards t: M's C&W margin + lambda x K's hinges to V[t], always on.

    The deployed decision is M's class when the image is not flagged, else the re-classified
    class; both are t when M says t and K's parts are t's parts, whatever the threshold. So for
    each target t != y (``options.targets`` best-ranked, as the joint attack ranks them) and each
    restart, PGD minimises

        relu(max_{c != t} z_c - z_t + kappa) + lambda * (add V[t] + remove every part not in V[t])

    with K's hinges on for the whole run (the joint attack's gate switches them off once the
    image would not be flagged, which is enough to evade detection but leaves the
    re-classification right: Carlini & Wagner 2017's combined attack, aimed at the decision the
    system acts on). Success (surrogate and judge): the deployed decision is not y. Norm: L-inf
    or L2 (``transplant_linf``, ``transplant_l2``). Defaults: ``AdaptiveOptions``.
    """

    family = "transplant"
    norms = (LINF, L2)
    aims = "system"
    targeted = True

    def evaluate(self, batch: Batch, run: Run, x: torch.Tensor, x_q: torch.Tensor, rows: torch.Tensor) -> Evaluation:
        targets = run.targets[rows].to(self.device)
        logits, outputs = self.forward(batch, x_q, rows)
        expected = self.class_parts[targets]
        loss = cw_margin(logits, targets, self.options.kappa) + run.weight * self.view.hinge_loss(
            outputs, add=expected, remove=1 - expected)
        decisions = self.hard_decisions(logits, outputs)
        wrong = decisions["deployed"] != batch.labels[rows]
        failure_key = 2.0 * (~wrong).double() + 1e-3 * loss.detach().double()
        return Evaluation(wrong, torch.zeros_like(failure_key), failure_key, loss=loss)

    def judged(self, batch: Batch, run: Run, verdict: Verdict, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return verdict.deployed != batch.labels_cpu[rows], torch.zeros(len(rows), dtype=torch.float64)

    def final_success(self, verdict: Verdict, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return verdict.deployed != labels

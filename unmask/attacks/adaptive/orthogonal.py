"""Orthogonal (selective) PGD against M and K."""

from __future__ import annotations

import torch

from unmask.attacks.adaptive.engine import Batch, Evaluation, GradientAttack, Run, cw_margin, orthogonal
from unmask.attacks.norms import L2, LINF


class OrthogonalAttack(GradientAttack):
    """Orthogonal PGD on M's margin and K's hinges (Bryniarski et al. 2022).

    Bryniarski et al. 2022, "Evading Adversarial Example Detection Defenses with Orthogonal
    Projected Gradient Descent" (ICLR; repo v-wangg/OrthogonalPGD).

    Targeted like the joint attack (``options.targets`` best-ranked targets, ``options.restarts``
    each), with M's loss the C&W margin towards t (``kappa``) and the detector's loss K's hinges
    towards V[t] (add V[t], remove the rest; with M saying t the detection score is
    1 - J(V[t], K's parts)). Each step, per image: while M does not say t, step on M's gradient
    made orthogonal to the detector's; once it does, step on the detector's gradient made
    orthogonal to M's (sign steps for L-inf, L2-normalised for L2). Every iterate goes through the
    surrogate's exact verdict and the judge as in the joint attack; the kept image is the judged
    success (M wrong, not flagged) with the lowest detection score. ``lambdas`` do not apply.
    Norm: L-inf or L2 (``orthogonal_linf``, ``orthogonal_l2``). Defaults: ``AdaptiveOptions``.
    """

    family = "orthogonal"
    norms = (LINF, L2)
    targeted = True

    def lambdas(self) -> tuple[float, ...]:
        return (1.0,)

    def evaluate(self, batch: Batch, run: Run, x: torch.Tensor, x_q: torch.Tensor, rows: torch.Tensor) -> Evaluation:
        targets = run.targets[rows].to(self.device)
        logits, outputs = self.forward(batch, x_q, rows)
        expected = self.class_parts[targets]
        gradient = loss = None
        if torch.is_grad_enabled():
            m_loss = cw_margin(logits, targets, self.options.kappa)
            k_loss = self.view.hinge_loss(outputs, add=expected, remove=1 - expected)
            m_gradient = torch.autograd.grad(m_loss.sum(), x, retain_graph=True)[0]
            k_gradient = torch.autograd.grad(k_loss.sum(), x)[0]
            fooled = (logits.argmax(1) == targets).view(-1, 1, 1, 1)
            gradient = torch.where(fooled, orthogonal(k_gradient, m_gradient), orthogonal(m_gradient, k_gradient))
            loss = (m_loss + k_loss).detach()  # what the step rule tracks (APGD's checkpoints)
        return self.fooling(batch, logits.detach(), outputs, rows, loss=loss, gradient=gradient)

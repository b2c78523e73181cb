"""How a PGD run steps: a fixed schedule (``cosine``, ``constant``) or APGD's step-size control.

A ``StepRule`` holds the state of one run over its rows (the images it attacks) and turns each
iterate's loss and gradient into the next iterate; the engine calls ``step`` once per step for
each chunk of rows it forwards together, so every piece of state is per row.

APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", ICML; Algorithm 1): the step starts at 2 epsilon; each step
moves along the steepest direction and then mixes in momentum (alpha 0.75); at checkpoints
w_0 = 0, w_1 = 0.22 N, w_{j+1} = w_j + max(w_j - w_{j-1} - 0.03 N, 0.06 N) the step of a row
is halved, and the row restarts from its best point so far, when fewer than rho = 0.75 of the
steps since the last checkpoint lowered its loss, or when its step was not halved at the last
checkpoint and its best loss has not improved since. The loss here is the engine's (lower is
better: the attack minimises it), measured on the quantised iterate.
"""

from __future__ import annotations

import math

import torch

from unmask.attacks.adaptive.options import AdaptiveOptions
from unmask.attacks.norms import Norm
from unmask.constants import to_unit_scale

APGD_MOMENTUM = 0.75
APGD_RHO = 0.75
APGD_INITIAL_STEP = 2.0
"""In units of epsilon."""


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations after which APGD may halve a row's step (APGD's w_j, j >= 1)."""
    points, previous, current = [], 0.0, 0.22
    while current <= 1.0:
        points.append(math.ceil(current * steps))
        previous, current = current, current + max(current - previous - 0.03, 0.06)
    return sorted({point for point in points if 0 < point <= steps})


class StepRule:
    """One run's steps over ``rows`` images (positions 0..rows-1 in the run's order)."""

    def step(self, k: int, positions: torch.Tensor, x: torch.Tensor, x0: torch.Tensor, loss: torch.Tensor,
             gradient: torch.Tensor) -> torch.Tensor:
        """The iterate after step ``k`` (0-based) for the run's rows ``positions``, from their
        iterate ``x`` (around ``x0``), its ``loss`` (per row, detached) and ``gradient``."""
        raise NotImplementedError


class ScheduledSteps(StepRule):
    """Steps of a fixed size per iteration (``alphas[k]``), along the norm's steepest direction."""

    def __init__(self, alphas: list[float], norm: Norm, epsilon: float) -> None:
        self.alphas, self.norm, self.epsilon = alphas, norm, epsilon

    def step(self, k: int, positions: torch.Tensor, x: torch.Tensor, x0: torch.Tensor, loss: torch.Tensor,
             gradient: torch.Tensor) -> torch.Tensor:
        return self.norm.project(x - self.alphas[k] * self.norm.direction(gradient), x0, self.epsilon)


class APGDSteps(StepRule):
    """APGD's step-size control with momentum (see the module's docstring), per row."""

    def __init__(self, rows: int, x: torch.Tensor, norm: Norm, epsilon: float, steps: int, *,
                 initial_step: float = APGD_INITIAL_STEP, minimum_step: float = 0.0) -> None:
        self.norm, self.epsilon = norm, epsilon
        self.minimum_step = minimum_step
        device = x.device
        self.eta = torch.full((rows,), initial_step * epsilon, device=device)
        self.previous = x.detach().clone()  # x^(k-1), for the momentum
        self.best = x.detach().clone()
        self.best_loss = torch.full((rows,), math.inf, device=device)
        self.last_loss = torch.full((rows,), math.inf, device=device)
        self.improved = torch.zeros(rows, device=device)
        self.best_at_checkpoint = torch.full((rows,), math.inf, device=device)
        self.halved_at_checkpoint = torch.zeros(rows, dtype=torch.bool, device=device)
        self.checkpoints = apgd_checkpoints(steps)
        self.since = dict(zip(self.checkpoints, [self.checkpoints[0], *(b - a for a, b in zip(
            self.checkpoints, self.checkpoints[1:], strict=False))], strict=True))

    def step(self, k: int, positions: torch.Tensor, x: torch.Tensor, x0: torch.Tensor, loss: torch.Tensor,
             gradient: torch.Tensor) -> torch.Tensor:
        p = positions.to(self.eta.device)
        loss = loss.detach().to(self.eta)
        self.improved[p] += (loss < self.last_loss[p]).to(self.improved)
        self.last_loss[p] = loss
        better = loss < self.best_loss[p]
        self.best_loss[p] = torch.where(better, loss, self.best_loss[p])
        self.best[p] = torch.where(_rows(better, x), x.detach(), self.best[p])
        shape = (-1, *([1] * (x.ndim - 1)))
        z = self.norm.project(x - self.eta[p].view(shape) * self.norm.direction(gradient), x0, self.epsilon)
        if k == 0:
            following = z
        else:
            following = self.norm.project(x + APGD_MOMENTUM * (z - x) + (1 - APGD_MOMENTUM) * (x - self.previous[p]),
                                          x0, self.epsilon)
        self.previous[p] = x.detach()
        if k + 1 in self.since:
            stalled = self.improved[p] < APGD_RHO * self.since[k + 1]
            stuck = ~self.halved_at_checkpoint[p] & (self.best_at_checkpoint[p] <= self.best_loss[p])
            halve = stalled | stuck
            self.eta[p] = torch.where(halve, (self.eta[p] / 2).clamp(min=self.minimum_step), self.eta[p])
            following = torch.where(_rows(halve, x), self.best[p], following)
            self.previous[p] = torch.where(_rows(halve, x), self.best[p], self.previous[p])
            self.halved_at_checkpoint[p] = halve
            self.best_at_checkpoint[p] = self.best_loss[p]
            self.improved[p] = 0
        return following


def step_sizes(epsilon: float, norm: Norm, options: AdaptiveOptions) -> list[float]:
    """The PGD step of each iteration in [0, 1] pixels (``epsilon`` in [0, 1] pixels too).

    The base step is ``options.step_size`` (0-255 scale) or ``relative_step * epsilon / steps``;
    ``constant`` keeps it, ``cosine`` starts near twice it and decays to 0 along a half cosine
    (sampled at mid-steps: the same mean step). Each step is then what the norm's 8-bit
    iterates need (L-inf: whole grey levels, at least 1).
    """
    base = to_unit_scale(options.step_size) if options.step_size is not None else \
        options.relative_step * epsilon / options.steps
    if options.step_schedule == "cosine":
        steps = [base * (1 + math.cos(math.pi * (k + 0.5) / options.steps)) for k in range(options.steps)]
    else:
        steps = [base] * options.steps
    return [norm.round_step(step) for step in steps]


def step_rule(options: AdaptiveOptions, norm: Norm, epsilon: float, x: torch.Tensor) -> StepRule:
    """The step rule ``options.step_schedule`` names, for one run over the iterates ``x``."""
    if options.step_schedule == "apgd":
        # an L-inf step under half a grey level cannot move an 8-bit iterate (round_step(0): one level)
        return APGDSteps(len(x), x, norm, epsilon, options.steps, initial_step=options.apgd_initial_step,
                         minimum_step=norm.round_step(0.0) / 2)
    return ScheduledSteps(step_sizes(epsilon, norm, options), norm, epsilon)


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (like.ndim - 1)))

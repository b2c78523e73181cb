"""The momentum iterative method (MIM, MI-FGSM) of Dong et al. 2018, "Boosting Adversarial
Attacks with Momentum" (CVPR), https://arxiv.org/abs/1710.06081, as the paper defines it:

    g <- decay * g + grad / ||grad||_1        (per image)
    x <- x + step * sign(g)                   (L-inf)   or   x + step * g / ||g||_2   (L2)

then projection onto the epsilon ball and [0, 1]. foolbox 3.3.4's
``LinfMomentumIterativeFastGradientMethod`` accumulates ``sign(grad)`` instead (and its L2 version
the L2-normalised gradient), which weighs every step's gradient the same whatever its size: a
different attack. These classes reuse foolbox's gradient-descent loop, projection and random
start, and replace only the gradient normalisation and the update.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import eagerpy as ep
from foolbox.attacks.gradient_descent_base import (
    L2BaseGradientDescent,
    LinfBaseGradientDescent,
    Optimizer,
    normalize_lp_norms,
)
from foolbox.types import Bounds


class MomentumOptimizer(Optimizer):
    """Accumulates already-normalised gradients with ``decay`` and steps along ``direction(g)``."""

    def __init__(self, x: ep.Tensor, stepsize: float, *, decay: float, direction: Callable[[ep.Tensor], ep.Tensor]):
        self.stepsize = stepsize
        self.decay = decay
        self.direction = direction
        self.accumulated = ep.zeros_like(x)

    def __call__(self, gradient: ep.Tensor) -> ep.Tensor:
        self.accumulated = self.decay * self.accumulated + gradient
        return self.stepsize * self.direction(self.accumulated)


class _MomentumIterative:
    """What both norms share: L1-normalised gradients fed to a ``MomentumOptimizer``."""

    decay: float
    direction: Callable[[ep.Tensor], ep.Tensor]

    def normalize(self, gradients: ep.Tensor, *, x: ep.Tensor, bounds: Bounds) -> ep.Tensor:
        return normalize_lp_norms(gradients, p=1)

    def get_optimizer(self, x: ep.Tensor, stepsize: float) -> Optimizer:
        return MomentumOptimizer(x, stepsize, decay=self.decay, direction=self.direction)


class LinfMomentumIterativeAttack(_MomentumIterative, LinfBaseGradientDescent):
    """L-inf MIM (Dong et al. 2018): steps along ``sign(g)``.

    Args:
        decay: momentum decay mu (the paper and the original UnMask: 1.0).
        rel_stepsize: step relative to epsilon (Dong et al.: epsilon / steps).
        abs_stepsize: step in [0, 1] pixels; takes precedence over ``rel_stepsize``.
        steps: number of iterations.
        random_start: start at a uniform point of the epsilon ball instead of the image.
    """

    def __init__(self, *, decay: float = 1.0, rel_stepsize: float = 0.1, abs_stepsize: float | None = None,
                 steps: int = 10, random_start: bool = False):
        super().__init__(rel_stepsize=rel_stepsize, abs_stepsize=abs_stepsize, steps=steps, random_start=random_start)
        self.decay = decay
        self.direction = ep.sign


class L2MomentumIterativeAttack(_MomentumIterative, L2BaseGradientDescent):
    """L2 MIM (Dong et al. 2018): steps along ``g / ||g||_2``; arguments as the L-inf version."""

    def __init__(self, *, decay: float = 1.0, rel_stepsize: float = 0.1, abs_stepsize: float | None = None,
                 steps: int = 10, random_start: bool = False):
        super().__init__(rel_stepsize=rel_stepsize, abs_stepsize=abs_stepsize, steps=steps, random_start=random_start)
        self.decay = decay
        self.direction = partial(normalize_lp_norms, p=2)

"""The two threat-model norms as types: each owns its ball (projection, random points, 8-bit
rounding inside it), its steepest-ascent direction, its distance and its largest useful budget.

Attacks ask the norm instead of testing a string: ``vector.norm.project(x, x0, epsilon)``.
Budgets passed here are on the [0, 1] pixel scale unless a name says 0-255.
"""

from __future__ import annotations

import math

import torch

from unmask.constants import GREY_LEVELS


def flat_norm(delta: torch.Tensor) -> torch.Tensor:
    """Per image (first axis), the L2 norm of ``delta``, shaped to broadcast against it."""
    return delta.flatten(1).norm(dim=1).view(-1, *([1] * (delta.ndim - 1)))


def to_8bit(x: torch.Tensor) -> torch.Tensor:
    """``x`` in [0, 1] rounded to the nearest grey level (what saving it as an 8-bit PNG keeps)."""
    return torch.round(x.clamp(0, 1) * GREY_LEVELS) / GREY_LEVELS


class Norm:
    """An Lp norm of the threat model; ``name`` is how configurations and results spell it."""

    name: str = ""
    title: str = ""
    """How tables and messages print it."""
    symbol: str = ""
    """How figures print it."""

    def __repr__(self) -> str:
        return self.name

    def __reduce__(self) -> str:  # pickled (e.g. across torchrun's processes) as the module's singleton
        return {"linf": "LINF", "l2": "L2"}[self.name]

    def clip(self, delta: torch.Tensor, epsilon: float) -> torch.Tensor:
        """``delta`` moved into the epsilon ball around 0."""
        raise NotImplementedError

    def project(self, x: torch.Tensor, x0: torch.Tensor, epsilon: float) -> torch.Tensor:
        """``x`` projected onto the epsilon ball around ``x0``, then onto [0, 1]."""
        return (x0 + self.clip(x - x0, epsilon)).clamp(0.0, 1.0)

    def direction(self, gradient: torch.Tensor) -> torch.Tensor:
        """The steepest-ascent direction of unit norm for ``gradient``."""
        raise NotImplementedError

    def size(self, delta: torch.Tensor) -> torch.Tensor:
        """Per image (first axis), the norm of ``delta``."""
        raise NotImplementedError

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per image, the distance between ``a`` and ``b`` in this norm (same scale as the inputs)."""
        return self.size(a - b)

    def max_epsilon(self, image_size: int | None = None) -> float:
        """The largest budget (0-255 scale) that can matter for ``image_size`` x ``image_size`` RGB
        images: the largest distance two such images can have (any size: None)."""
        raise NotImplementedError

    def random_offset(self, shape: torch.Size, epsilon: float, generator: torch.Generator) -> torch.Tensor:
        """A point drawn uniformly from the epsilon ball around 0 (on the CPU, from ``generator``)."""
        raise NotImplementedError

    def round_step(self, step: float) -> float:
        """A step size as iterates that stay 8-bit need it (L-inf: whole grey levels)."""
        return step

    def quantize(self, x: torch.Tensor, x0: torch.Tensor, epsilon: float) -> torch.Tensor:
        """8-bit version of ``x`` (round(x * 255) / 255) that stays in [0, 1] and in the epsilon
        ball around ``x0`` (an 8-bit image, as the data's PNG files are). Where ``x0`` is not
        8-bit and no 8-bit point is found inside the ball, ``x0`` is returned."""
        x = x.detach()
        rounded = torch.round(x * float(GREY_LEVELS)) / float(GREY_LEVELS)
        out, inside = self._nearest_8bit_inside(x, x0, rounded, epsilon)
        return torch.where(inside.view(-1, 1, 1, 1), out, x0)

    def _nearest_8bit_inside(self, x: torch.Tensor, x0: torch.Tensor, rounded: torch.Tensor,
                             epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class LinfNorm(Norm):
    name = "linf"
    title = "L-inf"
    symbol = "L∞"

    def clip(self, delta: torch.Tensor, epsilon: float) -> torch.Tensor:
        return delta.clamp(-epsilon, epsilon)

    def direction(self, gradient: torch.Tensor) -> torch.Tensor:
        return gradient.sign()

    def size(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).abs().amax(1)

    def max_epsilon(self, image_size: int | None = None) -> float:
        return float(GREY_LEVELS)

    def random_offset(self, shape: torch.Size, epsilon: float, generator: torch.Generator) -> torch.Tensor:
        return torch.empty(shape).uniform_(-epsilon, epsilon, generator=generator)

    def round_step(self, step: float) -> float:
        return max(1, round(step * GREY_LEVELS)) / GREY_LEVELS

    def _nearest_8bit_inside(self, x: torch.Tensor, x0: torch.Tensor, rounded: torch.Tensor,
                             epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
        # rounded to the nearest grey level, then clamped to the grey levels inside the ball
        levels = float(GREY_LEVELS)
        low = torch.ceil(((x0 - epsilon) * levels).clamp(min=0.0) - 1e-4) / levels
        high = torch.floor(((x0 + epsilon) * levels).clamp(max=levels) + 1e-4) / levels
        out = torch.minimum(torch.maximum(rounded, low), high)
        return out, (out - x0).flatten(1).abs().amax(1) <= epsilon + 1e-6


class L2Norm(Norm):
    name = "l2"
    title = "L2"
    symbol = "L2"

    def clip(self, delta: torch.Tensor, epsilon: float) -> torch.Tensor:
        return delta * (epsilon / flat_norm(delta).clamp(min=1e-12)).clamp(max=1.0)

    def direction(self, gradient: torch.Tensor) -> torch.Tensor:
        return gradient / flat_norm(gradient).clamp(min=1e-12)

    def size(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).norm(dim=1)

    def max_epsilon(self, image_size: int | None = None) -> float:
        return math.inf if image_size is None else GREY_LEVELS * math.sqrt(3 * image_size * image_size)

    def random_offset(self, shape: torch.Size, epsilon: float, generator: torch.Generator) -> torch.Tensor:
        gaussian = torch.randn(shape, generator=generator)
        radius = epsilon * torch.rand((), generator=generator) ** (1.0 / gaussian.numel())
        return gaussian * (radius / gaussian.norm().clamp(min=1e-12))

    def _nearest_8bit_inside(self, x: torch.Tensor, x0: torch.Tensor, rounded: torch.Tensor,
                             epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
        # where rounding to the nearest grey level leaves the ball, each pixel is rounded towards
        # x0 instead: no pixel moves further from x0, so the norm does not grow
        levels = float(GREY_LEVELS)
        towards = x0 + torch.trunc((x - x0) * levels) / levels
        towards = torch.round(towards * levels) / levels  # exact grid values when x0 is 8-bit
        too_far = flat_norm(rounded - x0) > epsilon
        out = torch.where(too_far, towards, rounded)
        return out, flat_norm(out - x0).flatten() <= epsilon * (1 + 1e-6)


LINF = LinfNorm()
L2 = L2Norm()
NORMS: dict[str, Norm] = {norm.name: norm for norm in (LINF, L2)}
"""Every norm by name."""

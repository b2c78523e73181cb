"""The norms as types: projection onto the ball, 8-bit rounding inside it, random points of it,
steepest-ascent directions and the largest budget that can matter."""

from __future__ import annotations

import math

import pytest
import torch

from unmask.attacks.norms import L2, LINF, NORMS


def eight_bit(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, 8, 8), generator=generator).float() / 255


@pytest.mark.parametrize("norm,epsilon", [("linf", 8), ("linf", 3.5), ("l2", 20), ("l2", 150)])
def test_quantised_iterates_are_8_bit_in_the_ball_and_in_range(norm: str, epsilon: float) -> None:
    generator = torch.Generator().manual_seed(1)
    for seed in range(5):
        x0 = eight_bit(16, seed)
        noise = torch.randn(x0.shape, generator=generator) * (0.2 if norm == "l2" else 0.05)
        x = NORMS[norm].project(x0 + noise, x0, epsilon / 255)
        q = NORMS[norm].quantize(x, x0, epsilon / 255)
        assert torch.equal(torch.round(q * 255) / 255, q)
        assert q.min() >= 0 and q.max() <= 1
        size = NORMS[norm].size((q - x0) * 255)
        assert (size <= epsilon + 1e-4).all(), size.max()
        # quantisation moves each pixel by at most one grey level
        assert ((q - x).abs() <= 1 / 255 + 1e-6).all()


def test_l2_quantisation_falls_back_towards_the_clean_image() -> None:
    x0 = torch.full((1, 3, 4, 4), 100 / 255)
    x = x0 + 0.6 / 255  # every pixel rounds up: the norm would grow from 0.6 * sqrt(48) to sqrt(48)
    epsilon = 0.6 * math.sqrt(48) / 255
    q = L2.quantize(x, x0, epsilon)
    assert torch.equal(q, x0)


@pytest.mark.parametrize("norm", [LINF, L2])
def test_random_offsets_are_inside_the_ball_and_directions_have_unit_norm(norm) -> None:
    generator = torch.Generator().manual_seed(0)
    offsets = torch.stack([norm.random_offset(torch.Size((3, 8, 8)), 0.1, generator) for _ in range(20)])
    assert (norm.size(offsets) <= 0.1 * (1 + 1e-6)).all() and (norm.size(offsets) > 0.01).all()
    gradient = torch.randn(5, 3, 8, 8)
    torch.testing.assert_close(norm.size(norm.direction(gradient)), torch.ones(5))
    # the direction is the steepest ascent of a linear function among unit steps
    assert ((norm.direction(gradient) * gradient).flatten(1).sum(1) > 0).all()


def test_the_largest_budgets_and_steps_in_grey_levels() -> None:
    assert LINF.max_epsilon(128) == LINF.max_epsilon() == 255
    assert L2.max_epsilon(128) == pytest.approx(255 * math.sqrt(3 * 128 * 128)) and L2.max_epsilon() == math.inf
    assert LINF.round_step(2.4 / 255) == 2 / 255 and LINF.round_step(0.1 / 255) == 1 / 255
    assert L2.round_step(0.37) == 0.37
    assert NORMS == {"linf": LINF, "l2": L2} and repr(LINF) == "linf"

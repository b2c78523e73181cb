"""Epsilon balls, 8-bit quantisation, step sizes, per-image random starts and the options."""

from __future__ import annotations

import math

import pytest
import torch

from unmask.attacks.adaptive import AdaptiveOptions
from unmask.attacks.adaptive.engine import (
    cw_margin,
    hard_reclassify,
    image_seed,
    orthogonal,
    project,
    quantize,
    random_start,
    step_sizes,
)


def eight_bit(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, 8, 8), generator=generator).float() / 255


@pytest.mark.parametrize("norm,epsilon", [("linf", 8), ("linf", 3.5), ("l2", 20), ("l2", 150)])
def test_quantised_iterates_are_8_bit_in_the_ball_and_in_range(norm: str, epsilon: float) -> None:
    generator = torch.Generator().manual_seed(1)
    for seed in range(5):
        x0 = eight_bit(16, seed)
        noise = torch.randn(x0.shape, generator=generator) * (0.2 if norm == "l2" else 0.05)
        x = project(x0 + noise, x0, epsilon / 255, norm)
        q = quantize(x, x0, epsilon / 255, norm)
        assert torch.equal(torch.round(q * 255) / 255, q)
        assert q.min() >= 0 and q.max() <= 1
        delta = (q - x0).flatten(1) * 255
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert (size <= epsilon + 1e-4).all(), size.max()
        # quantisation moves each pixel by at most one grey level
        assert ((q - x).abs() <= 1 / 255 + 1e-6).all()


def test_l2_quantisation_falls_back_towards_the_clean_image() -> None:
    x0 = torch.full((1, 3, 4, 4), 100 / 255)
    x = x0 + 0.6 / 255  # every pixel rounds up: the norm would grow from 0.6 * sqrt(48) to sqrt(48)
    epsilon = 0.6 * math.sqrt(48) / 255
    q = quantize(x, x0, epsilon, "l2")
    assert torch.equal(q, x0)


def test_step_sizes() -> None:
    options = AdaptiveOptions(steps=10, relative_step=2.5, step_schedule="constant")
    assert step_sizes(8 / 255, "linf", options) == [2 / 255] * 10
    assert step_sizes(1 / 255, "linf", options) == [1 / 255] * 10  # at least one grey level
    cosine = step_sizes(300 / 255, "l2", AdaptiveOptions(steps=10, relative_step=2.5))
    assert cosine[0] == pytest.approx(2 * 2.5 * 300 / 255 / 10, rel=0.01)
    assert sum(cosine) / 10 == pytest.approx(2.5 * 300 / 255 / 10)
    assert step_sizes(8 / 255, "linf", AdaptiveOptions(steps=4, step_size=3)) == [6 / 255, 4 / 255, 2 / 255, 1 / 255]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_starts_do_not_depend_on_the_batch(norm: str) -> None:
    x0 = eight_bit(4, 0)
    together = random_start(x0, torch.tensor([10, 11, 12, 13]), 8 / 255, norm, seed=3, stream=(0, 1))
    alone = random_start(x0[2:3], torch.tensor([12]), 8 / 255, norm, seed=3, stream=(0, 1))
    torch.testing.assert_close(together[2:3], alone)
    other_run = random_start(x0[2:3], torch.tensor([12]), 8 / 255, norm, seed=3, stream=(1, 1))
    assert not torch.equal(other_run, alone)
    assert image_seed(0, 5, (1,)) != image_seed(0, 6, (1,))


def test_margin_projection_and_reclassification_rules() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    torch.testing.assert_close(cw_margin(logits, torch.tensor([1, 1]), 0.5), torch.tensor([2.5, 0.0]))
    a, b = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    perpendicular = orthogonal(a, b)
    assert (perpendicular * b).flatten(1).sum(1).abs().max() < 1e-4
    torch.testing.assert_close(orthogonal(a, torch.zeros_like(b)), a)
    similarities = torch.tensor([[0.2, 0.5, 0.5], [0.0, 0.0, 0.0], [0.3, 0.1, 0.0]])
    assert hard_reclassify(similarities).tolist() == [1, -1, 0]


@pytest.mark.parametrize("field,value,message", [
    ("steps", 0, "steps must be an integer >= 1, got 0"),
    ("restarts", 1.5, "restarts must be an integer >= 1, got 1.5"),
    ("targets", 0, "targets must be an integer >= 1, got 0"),
    ("target_ranking", "random", "target_ranking must be one of"),
    ("lambdas", (), "lambdas must be a non-empty sequence"),
    ("lambdas", (1.0, -1.0), "lambdas must be a non-empty sequence of finite numbers >= 0, got \\(1.0, -1.0\\)"),
    ("step_size", 0.0, "step_size must be positive"),
    ("step_schedule", "linear", "step_schedule must be one of"),
    ("kappa", -1.0, "kappa must be >= 0, got -1.0"),
    ("tau", 0.0, "tau must be positive"),
    ("judge_every", -1, "judge_every must be an integer >= 0"),
])
def test_options_are_validated(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdaptiveOptions(**{field: value})


def test_options_defaults_and_lambdas_as_tuple() -> None:
    options = AdaptiveOptions(lambdas=[1, 3])
    assert options.lambdas == (1.0, 3.0)
    assert AdaptiveOptions().targets is None or AdaptiveOptions().targets >= 1

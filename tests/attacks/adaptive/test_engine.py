"""The PGD engine's pieces: step sizes, per-image random starts, the losses and rules in torch, and the options."""

from __future__ import annotations

import pytest
import torch

from unmask.attacks.adaptive import AdaptiveOptions
from unmask.attacks.adaptive.engine import cw_margin, hard_reclassify, image_seed, orthogonal, random_start
from unmask.attacks.adaptive.steps import step_sizes
from unmask.attacks.norms import L2, LINF, NORMS


def eight_bit(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, 8, 8), generator=generator).float() / 255


def test_step_sizes() -> None:
    options = AdaptiveOptions(steps=10, relative_step=2.5, step_schedule="constant")
    assert step_sizes(8 / 255, LINF, options) == [2 / 255] * 10
    assert step_sizes(1 / 255, LINF, options) == [1 / 255] * 10  # at least one grey level
    cosine = step_sizes(300 / 255, L2, AdaptiveOptions(steps=10, relative_step=2.5, step_schedule="cosine"))
    assert cosine[0] == pytest.approx(2 * 2.5 * 300 / 255 / 10, rel=0.01)
    assert sum(cosine) / 10 == pytest.approx(2.5 * 300 / 255 / 10)
    assert step_sizes(8 / 255, LINF, AdaptiveOptions(steps=4, step_size=3, step_schedule="cosine")) == [6 / 255, 4 / 255, 2 / 255, 1 / 255]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_starts_do_not_depend_on_the_batch(norm: str) -> None:
    x0 = eight_bit(4, 0)
    together = random_start(x0, torch.tensor([10, 11, 12, 13]), 8 / 255, NORMS[norm], seed=3, stream=(0, 1))
    alone = random_start(x0[2:3], torch.tensor([12]), 8 / 255, NORMS[norm], seed=3, stream=(0, 1))
    torch.testing.assert_close(together[2:3], alone)
    assert (NORMS[norm].size(together - x0) <= 8 / 255 * (1 + 1e-5)).all()
    other_run = random_start(x0[2:3], torch.tensor([12]), 8 / 255, NORMS[norm], seed=3, stream=(1, 1))
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
    ("targets", -1, "targets must be an integer >= 0 \\(0: every class\\), got -1"),
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


def test_lambdas_become_a_tuple_of_floats() -> None:
    assert AdaptiveOptions(lambdas=[1, 3]).lambdas == (1.0, 3.0)

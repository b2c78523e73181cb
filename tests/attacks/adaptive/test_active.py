"""The attack unit tests' construction on tiny models: the planted point is what the test says it
is on the modified pipeline (binarized M says t there, flagged or not as the test needs), the
inner points stay y, an attack that returns the clean image fails, an attack that finds the
planted point passes, and a brute-force search of a tiny 2-pixel ball finds the planted point."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from unmask.attacks import AttackVector
from unmask.attacks.adaptive import ADAPTIVE_ATTACKS, AdaptiveOptions, DefenseTarget, GradientAttack, Verdict
from unmask.attacks.adaptive.active import (
    ActiveTestOptions,
    Setup,
    active_tests_of,
    attack_outcomes,
    criterion_of,
    evasion_setup,
    inverted_setup,
    reclassification_setup,
)
from unmask.attacks.adaptive.active.ball import ball_points, grey_levels, random_search_points
from unmask.attacks.adaptive.active.options import STATUSES
from unmask.attacks.adaptive.active.plant import (
    STATUS,
    binarize,
    binarized_classifier,
    flagged_targets,
    planted_part_model,
    planting_options,
    reclassifying_targets,
)
from unmask.attacks.adaptive.engine import Evaluation
from unmask.attacks.norms import LINF
from unmask.constants import GREY_LEVELS
from unmask.parts import PARTS

from .conftest import images, make_judge, make_target

EPSILON = 16
FEW = ActiveTestOptions(inner_points=24, k_inner_points=3, random_samples=4, plant_steps=3, plant_targets=2)
FAST = AdaptiveOptions(steps=3, restarts=1, targets=2, batch_size=4)


def judge_for_threshold(threshold: float):
    def judge_for(classifier, part_model):
        return make_judge(classifier, part_model, k_threshold=0.5, detection_threshold=threshold)

    return judge_for


def tiny_case(threshold: float, count: int = 2):
    """A tiny pipeline at detection ``threshold``, ``count`` images and the labels M gives them."""
    target = make_target(detection_threshold=threshold)
    clean = images(count, seed=3)
    with torch.no_grad():
        labels = target.classifier(clean).argmax(1)
    return target, judge_for_threshold(threshold), clean, labels


def test_the_planting_search_ignores_the_attacks_targets_and_losses_so_a_larger_budget_reuses_the_setup():
    options = ActiveTestOptions(plant_steps=7, plant_restarts=1)
    reduced = planting_options(AdaptiveOptions(steps=40, targets=2), options)
    assert reduced == planting_options(AdaptiveOptions(steps=80, restarts=2, targets=4,
                                                       reclassify_losses=("targeted", "dlr", "ce")), options)
    assert (reduced.steps, reduced.restarts, reduced.early_stop) == (7, 1, True)
    assert reduced != planting_options(AdaptiveOptions(steps=40, targets=2, step_schedule="cosine"), options)


def test_ball_points_are_8_bit_inside_the_ball_and_drawn_per_image():
    image = images(1, seed=1)[0]
    inner = ball_points(image, 50, EPSILON, kind="inner", gap=0.05, seed=0, index=7, stream=("t",))
    corner = ball_points(image, 5, EPSILON, kind="corner", seed=0, index=7, stream=("t",))
    for points in (inner, corner, random_search_points(image, 6, EPSILON, seed=0, index=7, stream=("t",))):
        assert torch.equal(torch.round(points * GREY_LEVELS) / GREY_LEVELS, points)
        assert ((points - image).abs().amax(dim=(1, 2, 3)) * GREY_LEVELS <= EPSILON + 1e-4).all()
    assert ((inner - image).abs().amax() * GREY_LEVELS).round() == 15  # floor(0.95 * 16), strictly inside
    away_from_the_edges = (image * GREY_LEVELS > EPSILON) & (image * GREY_LEVELS < GREY_LEVELS - EPSILON)
    assert torch.allclose((corner - image).abs()[:, away_from_the_edges] * GREY_LEVELS, torch.tensor(16.0), atol=1e-3)
    again = ball_points(image, 50, EPSILON, kind="inner", gap=0.05, seed=0, index=7, stream=("t",))
    other = ball_points(image, 50, EPSILON, kind="inner", gap=0.05, seed=0, index=8, stream=("t",))
    assert torch.equal(again, inner) and not torch.equal(other, inner)
    assert grey_levels(16) == 16 and grey_levels(4.5) == 4


def test_targets_are_the_classes_the_parts_are_flagged_for_nearest_first():
    class_parts = torch.zeros(3, len(PARTS))
    class_parts[0, :4] = 1  # y
    class_parts[1, 2:6] = 1  # shares two parts with the image's
    class_parts[2, 10:16] = 1  # shares none, has more
    parts = torch.zeros(1, len(PARTS), dtype=torch.bool)
    parts[0, :4] = True
    assert flagged_targets(parts, torch.tensor([0]), class_parts, 0.6, 0).tolist() == [[1, 2]]
    assert flagged_targets(parts, torch.tensor([0]), class_parts, 0.6, 1).tolist() == [[1]]
    assert flagged_targets(parts, torch.tensor([0]), class_parts, 0.7, 0).tolist() == [[2]]  # 1 - 1/3 < 0.7 passes
    # adding class 1's parts to {0..3} gives {0..5}: J = 4/6 for y and 1, the earlier class (y) wins;
    # adding class 2's gives J = 4/10 for y and 6/10 for 2
    assert reclassifying_targets(parts, torch.tensor([0]), class_parts, 0).tolist() == [[2]]


def test_binarized_m_says_the_target_at_the_planted_point_and_the_true_class_on_every_inner_point():
    target, judge_for, clean, labels = tiny_case(threshold=1.01)  # nothing is ever flagged
    setup = Setup.empty("evasion", clean, (32,))
    setup.status[:] = STATUS["ok"]
    setup.target[:] = ((labels + 1) % 3).numpy()
    for row in range(len(clean)):
        corner = ball_points(clean[row], 1, EPSILON, kind="corner", seed=0, index=row, stream=("test",))[0]
        setup.planted[row] = torch.round(corner * GREY_LEVELS).to(torch.uint8).numpy()
    binarize(setup, target, judge_for, clean, labels, torch.arange(len(clean)), epsilon=EPSILON, options=FEW)
    assert setup.ok.all(), [STATUSES[s] for s in setup.status]
    m = binarized_classifier(target, setup, clean, labels, np.arange(len(clean)))
    verdict = judge_for(m, target.part_model)(setup.planted_images())
    assert verdict.m_prediction.tolist() == setup.target.tolist() and not verdict.flagged.any()
    assert torch.equal(m(clean).argmax(1), labels)
    for row in range(len(clean)):
        inner = ball_points(clean[row], FEW.inner_points - 1, EPSILON, kind="inner", gap=FEW.gap, seed=FEW.seed,
                            index=row, stream=("evasion", "inner", EPSILON))
        assert (m(inner).argmax(1) == labels[row]).all()
        uniform = ball_points(clean[row], 200, EPSILON, kind="uniform", seed=5, index=row, stream=("test",))
        assert {int(c) for c in m(uniform).argmax(1)} <= {int(labels[row]), int(setup.target[row])}


def test_the_inverted_test_plants_a_flagged_point():
    target, judge_for, clean, labels = tiny_case(threshold=0.6)
    setup = inverted_setup(target, judge_for, clean, labels, torch.arange(len(clean)), epsilon=EPSILON, options=FEW)
    assert setup.ok.any(), [STATUSES[s] for s in setup.status]
    rows = np.flatnonzero(setup.ok)
    m = binarized_classifier(target, setup, clean, labels, rows)
    verdict = judge_for(m, target.part_model)(setup.planted_images(rows))
    assert (verdict.m_prediction != labels[rows]).all() and verdict.flagged.all()
    assert not setup.clean["inverted"].any()


class KeepsTheClean(GradientAttack):
    """Returns the clean image (a test double)."""

    family, norms, aims = "keeps_clean", (LINF,), "evaded"

    def evaluate(self, batch, run, x, x_q, rows):
        loss = (x_q * 0).flatten(1).sum(1)
        return Evaluation(torch.zeros(len(rows), dtype=torch.bool), loss.detach().double(), loss.detach().double(),
                          loss=loss)


class FindsThePlanted(KeepsTheClean):
    """Returns the planted point (a test double that knows it)."""

    family = "finds_planted"
    planted: torch.Tensor = torch.zeros(0)

    def __call__(self, images, labels, indices):
        result = super().__call__(images, labels, indices)
        result.images = self.planted[indices.long()].to(images)
        result.verdict = self.target.judge(result.images)
        return result


def test_an_attack_that_returns_the_clean_image_fails_and_one_that_finds_the_planted_point_passes():
    target, judge_for, clean, labels = tiny_case(threshold=0.6)
    setup = inverted_setup(target, judge_for, clean, labels, torch.arange(len(clean)), epsilon=EPSILON, options=FEW)
    assert setup.ok.any()
    (clean_info,) = KeepsTheClean.describe()
    (planted_info,) = FindsThePlanted.describe()
    FindsThePlanted.planted = setup.planted_images()
    keeps = attack_outcomes(target, judge_for, setup, clean, labels, torch.arange(len(clean)),
                            AttackVector(clean_info, EPSILON), FAST)
    finds = attack_outcomes(target, judge_for, setup, clean, labels, torch.arange(len(clean)),
                            AttackVector(planted_info, EPSILON), FAST)
    assert keeps["tested"].tolist() == setup.ok.tolist() == finds["tested"].tolist()
    assert not keeps["passed"].any() and (keeps["distance"] == 0).all()
    assert finds["passed"].tolist() == setup.ok.tolist()


def test_the_re_classification_test_plants_parts_that_change_the_re_classification_and_nothing_inside():
    target, judge_for, clean, labels = tiny_case(threshold=0.6, count=3)
    labels = target.judge(clean).unmask_prediction  # images whose clean re-classification is right
    options = ActiveTestOptions(k_inner_points=16, random_samples=4, plant_targets=2)
    setup = reclassification_setup(target, judge_for, clean, labels, torch.arange(len(clean)), epsilon=EPSILON,
                                   options=options)
    assert setup.ok.any(), [STATUSES[s] for s in setup.status]
    for row in np.flatnonzero(setup.ok):
        judge = judge_for(target.classifier, planted_part_model(target, setup, int(row)))
        assert judge(setup.planted_images([row])).unmask_prediction[0] != labels[row]
        assert judge(clean[row:row + 1]).unmask_prediction[0] == labels[row]
        fitted = ball_points(clean[row], options.k_inner_points - 1, EPSILON, kind="inner", gap=options.gap,
                             seed=options.seed, index=int(row), stream=("reclassification", "inner", EPSILON))
        assert (judge(fitted).unmask_prediction == labels[row]).all()
        # beyond the points it was fitted on, the modified K keeps most of the shrunk ball (the setup reports the rest)
        fresh = ball_points(clean[row], 20, EPSILON, kind="inner", gap=options.gap, seed=9, index=int(row),
                            stream=("test",))
        assert (judge(fresh).unmask_prediction != labels[row]).double().mean() <= 0.2
        assert 0 <= setup.inner_changed[row] <= 0.5
        assert setup.parts[row].any() and setup.parts[row].tolist() == (setup.bias[row] != 0).tolist()


def test_brute_force_over_a_tiny_two_pixel_ball_finds_the_planted_point():
    """A 2-pixel image, M's features its two pixels, a stand-in K whose parts pass detection for t
    only where the first pixel is raised by epsilon: every 8-bit point of the ball is judged on
    the binarized pipeline, and the evading ones include the planted point and exclude the clean
    image and every inner point."""
    epsilon, y, t = 3, 0, 1

    class TwoPixels(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Linear(2, 3)

        def forward(self, images):
            return self.head(images.flatten(1))

    clean = torch.tensor([[[[100.0, 40.0]]]]) / GREY_LEVELS
    class_parts = torch.zeros(3, len(PARTS))
    class_parts[0, 0], class_parts[1, 1], class_parts[2, 2] = 1, 1, 1

    def judge_for(classifier, part_model):
        def judge(batch):
            with torch.no_grad():
                predicted = classifier(batch).argmax(1)
            raised = torch.round(batch[:, 0, 0, 0] * GREY_LEVELS) >= 100 + epsilon
            parts = torch.zeros(len(batch), len(PARTS), dtype=torch.bool)
            parts[:, 0], parts[:, 1] = ~raised, raised  # y's part, or t's where the first pixel is raised
            score = 1 - (parts.float() * class_parts[predicted]).sum(1)
            return Verdict(predicted, score, score >= 0.5, torch.where(raised, t, y), parts)

        return judge

    torch.manual_seed(0)
    target = DefenseTarget(TwoPixels(), None, class_parts, 0.5, 0.5, judge_for(TwoPixels(), None))
    setup = Setup.empty("evasion", clean, (2,))
    setup.status[:], setup.target[:] = STATUS["ok"], t
    planted = clean.clone()
    planted[0, 0, 0, 0] += epsilon / GREY_LEVELS  # the corner (+3, -3): K's parts pass there
    planted[0, 0, 0, 1] -= epsilon / GREY_LEVELS
    setup.planted[0] = torch.round(planted[0] * GREY_LEVELS).to(torch.uint8).numpy()
    binarize(setup, target, judge_for, clean, torch.tensor([y]), torch.tensor([0]), epsilon=epsilon,
             options=ActiveTestOptions(inner_points=40, random_samples=4))
    assert setup.ok.all(), [STATUSES[s] for s in setup.status]
    judge = judge_for(binarized_classifier(target, setup, clean, torch.tensor([y]), np.array([0])), None)
    offsets = torch.tensor(list(itertools.product(range(-epsilon, epsilon + 1), repeat=2)), dtype=torch.float32)
    ball = clean + offsets.view(-1, 1, 1, 2) / GREY_LEVELS
    evading = judge(ball).evades(torch.full((len(ball),), y))
    found = {tuple(offset.int().tolist()) for offset in offsets[evading]}
    assert (epsilon, -epsilon) in found and (0, 0) not in found
    assert all(first == epsilon for first, _ in found)  # only where K's parts can pass
    assert (epsilon, epsilon) not in found  # another corner where K passes, but held at y by the readout
    assert not setup.clean["evaded"][0]


def test_the_tests_of_each_attack_and_what_counts_as_passing():
    joint, transplant, reclassify = (ADAPTIVE_ATTACKS.vector(name, 8) for name in
                                     ("joint_linf", "transplant_linf", "reclassify_linf"))
    assert active_tests_of(joint) == active_tests_of(transplant) == ("evasion", "inverted")
    assert active_tests_of(reclassify) == ("reclassification",)
    assert [criterion_of("evasion", v) for v in (joint, transplant)] == ["evaded", "system"]
    assert criterion_of("inverted", transplant) == "inverted"
    for name in ("k_vanish_linf:8", "m_apgd_linf:8", "joint_l2:300"):
        with pytest.raises(ValueError, match="attack unit tests"):
            active_tests_of(ADAPTIVE_ATTACKS.parse([name])[0])


@pytest.mark.slow
def test_the_whole_evasion_test_on_tiny_models_plants_then_runs_the_joint_attack():
    """The planting search included: with a threshold at which one of t's parts is enough to pass
    detection, it finds a point, and the joint attack runs against the binarized M as it would
    in the evaluation."""
    target, judge_for, clean, labels = tiny_case(threshold=0.95)
    options = ActiveTestOptions(inner_points=24, random_samples=4, plant_steps=40, plant_targets=2)
    setup = evasion_setup(target, judge_for, clean, labels, torch.arange(len(clean)), epsilon=64, options=options,
                          attack_options=FAST)
    assert setup.ok.any(), [STATUSES[s] for s in setup.status]
    rows = np.flatnonzero(setup.ok)
    verdict = judge_for(binarized_classifier(target, setup, clean, labels, rows), target.part_model)(
        setup.planted_images(rows))
    assert torch.equal(verdict.evades(labels[rows]), torch.ones(len(rows), dtype=torch.bool))
    outcomes = attack_outcomes(target, judge_for, setup, clean, labels, torch.arange(len(clean)),
                               ADAPTIVE_ATTACKS.vector("joint_linf", 64), FAST)
    assert outcomes["tested"].tolist() == setup.ok.tolist()
    assert (outcomes["distance"][rows] <= 64).all()

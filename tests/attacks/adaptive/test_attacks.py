"""The registry's attacks on a tiny pipeline: 8-bit images inside the ball, the judge's verdict,
reproducible random starts, success where it is reachable, and the layering rule."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import unmask.attacks.adaptive as adaptive
from unmask.attacks.adaptive import (
    ADAPTIVE_ATTACK_NAMES,
    ADAPTIVE_ATTACK_NORMS,
    MINIMIZATION_ATTACKS,
    AdaptiveOptions,
    adaptive_attack,
    build_adaptive_attack,
)
from unmask.parts import CLASS_PARTS, PART_INDEX, UnknownNameError

from .conftest import images, make_target, tiny_k, tiny_m

EPSILON = {"linf": 32, "l2": 600}
FAST = AdaptiveOptions(steps=3, restarts=1, targets=2, batch_size=4, random_start=True,
                       hsj_steps=1, hsj_initial_evals=4, hsj_max_evals=8)


def size(adversarial: torch.Tensor, clean: torch.Tensor, norm: str) -> torch.Tensor:
    delta = (adversarial - clean).flatten(1) * 255
    return delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)


def test_registry_names_and_norms() -> None:
    assert {"joint_linf", "joint_l2", "orthogonal_linf", "orthogonal_l2", "reclassify_linf", "reclassify_l2",
            "k_vanish_linf", "k_fabricate_linf", "hsj_l2"} <= set(ADAPTIVE_ATTACK_NAMES)
    assert all(ADAPTIVE_ATTACK_NORMS[name] == name.rsplit("_", 1)[1] for name in ADAPTIVE_ATTACK_NAMES)
    with pytest.raises(UnknownNameError, match="unknown adaptive attack 'pgd_linf'"):
        build_adaptive_attack("pgd_linf", make_target(), 8)
    with pytest.raises(ValueError, match="epsilon must be positive"):
        build_adaptive_attack("joint_linf", make_target(), 0)


@pytest.mark.parametrize("name", ADAPTIVE_ATTACK_NAMES)
def test_every_attack_returns_8_bit_images_in_the_ball_with_the_judges_verdict(target, name: str) -> None:
    norm = ADAPTIVE_ATTACK_NORMS[name]
    clean = images(3, seed=5)
    with torch.no_grad():
        labels = target.classifier(clean).argmax(1)
    result = adaptive_attack(target, clean, labels, name, EPSILON[norm], FAST)
    adversarial = result.images
    assert adversarial.shape == clean.shape and adversarial.dtype == torch.float32
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert torch.equal(torch.round(adversarial * 255) / 255, adversarial)
    assert (size(adversarial, clean, norm) <= EPSILON[norm] + 1e-3).all()
    again = target.judge(adversarial)
    assert torch.equal(again.parts, result.verdict.parts)
    assert torch.equal(again.m_prediction, result.verdict.m_prediction)
    assert result.success.shape == (3,) and result.success.dtype == torch.bool
    assert result.targets.shape == (3,)
    if name.startswith(("joint", "orthogonal", "k_fabricate")):
        assert (result.targets >= 0).all() and (result.targets != labels).all()
    else:
        assert (result.targets == -1).all()
    if name.startswith(("joint", "orthogonal", "hsj")):
        assert torch.equal(result.success, again.evades(labels))
    if name in MINIMIZATION_ATTACKS:
        assert result.distances.shape == (3,)
    # the models come back as they were
    assert all(p.requires_grad for p in target.part_model.parameters())


def test_random_starts_are_reproducible_per_image_across_batches(target) -> None:
    clean = images(3, seed=6)
    labels = torch.tensor([0, 1, 2])
    options = AdaptiveOptions(steps=2, restarts=2, targets=1, random_start=True, early_stop=False)
    together = adaptive_attack(target, clean, labels, "reclassify_linf", 16, options, indices=torch.tensor([7, 8, 9]))
    alone = adaptive_attack(target, clean[1:2], labels[1:2], "reclassify_linf", 16, options, index_offset=8)
    assert (together.images[1] - alone.images[0]).abs().max() <= 1 / 255 + 1e-6
    assert (together.images[1] != alone.images[0]).float().mean() < 0.01
    shifted = adaptive_attack(target, clean[1:2], labels[1:2], "reclassify_linf", 16, options, index_offset=0)
    assert not torch.equal(shifted.images[0], alone.images[0])


def car_seeing_k() -> torch.nn.Module:
    """A K whose box classifier calls every proposal one of the car parts (which one depends on
    the proposal's features), whatever the image."""
    model = tiny_k(sharpen=1.0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        predictor = model.roi_heads.box_predictor.cls_score
        predictor.weight.zero_()
        predictor.bias.fill_(-30.0)
        for part in CLASS_PARTS["car"]:
            predictor.weight[PART_INDEX[part] + 1] = torch.randn(predictor.in_features, generator=generator)
            predictor.bias[PART_INDEX[part] + 1] = 0.0
    return model


def test_joint_attack_succeeds_where_only_m_must_move() -> None:
    """K (score threshold 0) sees car parts whatever the image: fooling M into "car" evades
    UnMask, fooling it into "train" does not (car and train share one part of 17): the joint
    attack must find "car"."""
    target = make_target(tiny_m(seed=1), car_seeing_k(), k_threshold=0.0, detection_threshold=0.8)
    clean = images(8, seed=7)
    judged = target.judge(clean)
    car = torch.zeros(44, dtype=torch.bool)
    car[[PART_INDEX[p] for p in CLASS_PARTS["car"]]] = True
    assert (judged.parts & ~car).sum() == 0 and (judged.parts.sum(1) >= 3).all()
    keep = judged.m_prediction != 0
    assert keep.sum() >= 2, "the tiny M should call some images person or train"
    clean, labels = clean[keep][:3], judged.m_prediction[keep][:3]
    result = adaptive_attack(target, clean, labels, "joint_linf", 64,
                             AdaptiveOptions(steps=10, targets=None, relative_step=4))
    assert result.success.all()
    assert (result.targets == 0).all() and (result.verdict.m_prediction == 0).all()


def test_hopskipjump_runs_from_another_class_and_reports_distances() -> None:
    """With K seeing car parts everywhere, images M calls "car" evade UnMask for any other label:
    they are the starting points, and HopSkipJump walks towards each clean image."""
    target = make_target(tiny_m(seed=3), car_seeing_k(), k_threshold=0.0, detection_threshold=0.8)
    pool = images(4, seed=8)[:2]
    predicted = target.judge(pool).m_prediction
    assert (predicted == 0).any() and (predicted != 0).any(), "the tiny M should call one image car, not all"
    options = AdaptiveOptions(hsj_steps=1, hsj_initial_evals=4, hsj_max_evals=8)
    result = adaptive_attack(target, pool, predicted, "hsj_l2", 3000, options)
    attacked = predicted != 0
    assert torch.isfinite(result.distances[attacked]).all()
    assert torch.isinf(result.distances[~attacked]).all()  # no image of another class is "car"-free
    start = torch.cdist(pool[attacked].flatten(1), pool[~attacked].flatten(1)).amin(1) * 255
    assert (result.distances[attacked] <= start + 1e-3).all()  # never further than its start
    assert torch.equal(result.success, (result.distances <= 3000) & result.verdict.evades(predicted))


def test_attacks_import_no_layer_above_them() -> None:
    forbidden = ("unmask.defense", "unmask.metrics", "unmask.evaluation", "unmask.experiment", "unmask.report",
                 "unmask.cli")
    package = Path(adaptive.__file__).parent
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith(forbidden), f"{source.name} imports {name}"


@pytest.mark.parametrize("name", ["joint_linf", "hsj_l2"])
def test_no_images_no_judge(name: str) -> None:
    def judge(batch):
        raise AssertionError("the judge must not be asked about no images")

    target = make_target()
    target = type(target)(target.classifier, target.part_model, target.class_parts, target.k_score_threshold,
                          target.detection_threshold, judge)
    result = adaptive_attack(target, torch.zeros(0, 3, 48, 48), torch.zeros(0, dtype=torch.int64), name, 8, FAST)
    assert result.images.shape == (0, 3, 48, 48) and len(result.verdict) == 0 and result.success.shape == (0,)

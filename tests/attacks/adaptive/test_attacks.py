"""The registry's attacks on a tiny pipeline: 8-bit images inside the ball, the judge's verdict,
reproducible random starts, success where it is reachable, and the layering rule."""

from __future__ import annotations

import pytest
import torch

from unmask.attacks import GRAY_BOX_ATTACKS, L2, LINF, AttackKind, AttackVector
from unmask.attacks.adaptive import (
    ADAPTIVE_ATTACKS,
    AdaptiveOptions,
    DefenseTarget,
    GradientAttack,
    Verdict,
    adaptive_attack,
    build_adaptive_attack,
)
from unmask.attacks.adaptive.part_view import soft_jaccard
from unmask.parts import CLASS_PARTS, PART_INDEX, UnknownNameError

from .conftest import images, make_target, tiny_k, tiny_m

EPSILON = {"linf": 32, "l2": 600}
FAST = AdaptiveOptions(steps=3, restarts=1, targets=2, batch_size=4, random_start=True,
                       hsj_steps=1, hsj_initial_evals=4, hsj_max_evals=8)


def test_the_registry_is_built_from_what_each_attack_says_about_itself() -> None:
    assert list(ADAPTIVE_ATTACKS) == ["joint_linf", "joint_l2", "orthogonal_linf", "orthogonal_l2", "reclassify_linf",
                                      "reclassify_l2", "transplant_linf", "transplant_l2", "m_apgd_linf", "m_apgd_l2",
                                      "k_vanish_linf", "k_fabricate_linf", "hsj_l2", "hsj_linf"]
    for name, info in ADAPTIVE_ATTACKS.items():
        assert name == f"{info.attack_class.family}_{info.norm.name}" and info.summary
        assert info.targeted == info.attack_class.targeted and info.kind == info.attack_class.kind
    assert {name for name, info in ADAPTIVE_ATTACKS.items() if info.targeted} == {
        "joint_linf", "joint_l2", "orthogonal_linf", "orthogonal_l2", "reclassify_linf", "reclassify_l2",
        "transplant_linf", "transplant_l2", "k_fabricate_linf"}
    assert {name for name, info in ADAPTIVE_ATTACKS.items() if info.kind is AttackKind.LABEL_ONLY} == {"hsj_l2",
                                                                                                    "hsj_linf"}
    with pytest.raises(UnknownNameError, match="unknown adaptive attack 'pgd_linf'"):
        ADAPTIVE_ATTACKS.vector("pgd_linf", 8)
    with pytest.raises(ValueError, match="not an adaptive attack"):
        build_adaptive_attack(GRAY_BOX_ATTACKS.vector("pgd_linf", 8), make_target())
    with pytest.raises(ValueError, match="epsilon must be a finite number > 0"):
        ADAPTIVE_ATTACKS.vector("joint_linf", 0)
    assert len(ADAPTIVE_ATTACKS.parse(["full"])) == 38 and ADAPTIVE_ATTACKS.parse(["none"]) == ()


def test_a_new_attack_is_one_class() -> None:
    """A subclass with a family, its norms and an evaluate() is a complete attack: the registry
    line ``*Attack.describe()`` is all it takes to name it."""

    class Nothing(GradientAttack):
        """Keeps the clean image (a test double)."""

        family, norms = "nothing", (LINF, L2)

        def evaluate(self, batch, run, x, x_q, rows):
            logits, outputs = self.forward(batch, x_q, rows)
            return self.fooling(batch, logits, outputs, rows, loss=(x_q * 0).flatten(1).sum(1))

    (linf, l2) = Nothing.describe()
    assert (linf.name, l2.name, linf.summary) == ("nothing_linf", "nothing_l2", "Keeps the clean image (a test double).")
    clean = images(2, seed=4)
    result = build_adaptive_attack(AttackVector(linf, 8), make_target(), FAST)(clean, torch.tensor([0, 1]),
                                                                                 torch.arange(2))
    assert result.images.shape == clean.shape


@pytest.mark.parametrize("name", list(ADAPTIVE_ATTACKS))
def test_every_attack_returns_8_bit_images_in_the_ball_with_the_judges_verdict(target, name: str) -> None:
    norm = ADAPTIVE_ATTACKS[name].norm
    clean = images(3, seed=5)
    with torch.no_grad():
        labels = target.classifier(clean).argmax(1)
    result = adaptive_attack(target, clean, labels, ADAPTIVE_ATTACKS.vector(name, EPSILON[norm.name]), FAST)
    adversarial = result.images
    assert adversarial.shape == clean.shape and adversarial.dtype == torch.float32
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert torch.equal(torch.round(adversarial * 255) / 255, adversarial)
    assert (norm.size((adversarial - clean) * 255) <= EPSILON[norm.name] + 1e-3).all()
    again = target.judge(adversarial)
    assert torch.equal(again.parts, result.verdict.parts)
    assert torch.equal(again.m_prediction, result.verdict.m_prediction)
    assert result.success.shape == (3,) and result.success.dtype == torch.bool
    assert result.targets.shape == (3,)
    if name.startswith("reclassify"):  # targeted runs first, then untargeted ones (target -1)
        assert (result.targets != labels).all()
    elif ADAPTIVE_ATTACKS[name].targeted:
        assert (result.targets >= 0).all() and (result.targets != labels).all()
    else:
        assert (result.targets == -1).all()
    aims = ADAPTIVE_ATTACKS[name].attack_class.aims
    if aims == "evaded" and ADAPTIVE_ATTACKS[name].attack_class.needs_part_model:
        assert torch.equal(result.success, again.evades(labels))
    elif aims == "system":
        assert torch.equal(result.success, again.deployed != labels)
    elif aims == "reclassification":
        assert torch.equal(result.success, again.unmask_prediction != labels)
    elif name == "k_vanish_linf":
        assert torch.equal(result.success, ~again.parts.any(1))
    elif name == "k_fabricate_linf":  # the target class would pass UnMask's detection
        overlap = soft_jaccard(again.parts.double(), target.class_parts.double())[torch.arange(3), result.targets]
        assert torch.equal(result.success, 1 - overlap < target.detection_threshold)
    if ADAPTIVE_ATTACKS[name].kind.minimises:
        assert result.distances.shape == (3,)
    # the models come back as they were
    assert all(p.requires_grad for p in target.part_model.parameters())


def test_the_attack_on_m_alone_needs_no_k_and_judges_m_alone() -> None:
    classifier = tiny_m(seed=2)

    def judge(batch):
        with torch.no_grad():
            predicted = classifier(batch).argmax(1)
        nothing = torch.zeros(len(batch))
        return Verdict(predicted, nothing, nothing.bool(), torch.full_like(predicted, -1),
                       torch.zeros(len(batch), 44, dtype=torch.bool))

    alone = DefenseTarget(classifier, None, make_target().class_parts, 0.0, 1.0, judge)
    clean = images(4, seed=9)
    labels = judge(clean).m_prediction
    result = adaptive_attack(alone, clean, labels, "m_apgd_linf:64", AdaptiveOptions(steps=10, restarts=1))
    assert result.success.all()  # an untrained CNN at 64/255: every image's label moves
    assert torch.equal(result.success, result.verdict.m_prediction != labels)
    with pytest.raises(ValueError, match="no part model"):
        adaptive_attack(alone, clean, labels, "joint_linf:8", FAST)


def test_the_attacks_aim_at_the_outputs_they_say() -> None:
    aims = {name: info.attack_class.aims for name, info in ADAPTIVE_ATTACKS.items()}
    assert aims["joint_linf"] == aims["orthogonal_l2"] == aims["m_apgd_linf"] == aims["hsj_l2"] == "evaded"
    assert aims["reclassify_linf"] == "reclassification" and aims["transplant_l2"] == "system"
    assert aims["k_vanish_linf"] is None and not ADAPTIVE_ATTACKS["m_apgd_l2"].attack_class.needs_part_model


def test_random_starts_are_reproducible_per_image_across_batches(target) -> None:
    clean = images(3, seed=6)
    labels = torch.tensor([0, 1, 2])
    options = AdaptiveOptions(steps=2, restarts=2, targets=1, random_start=True, early_stop=False)
    together = adaptive_attack(target, clean, labels, "reclassify_linf:16", options, indices=torch.tensor([7, 8, 9]))
    alone = adaptive_attack(target, clean[1:2], labels[1:2], "reclassify_linf:16", options, indices=torch.tensor([8]))
    # batched convolutions round differently; a sign step can turn that into a whole step at a few pixels
    assert (together.images[1] != alone.images[0]).float().mean() < 0.01
    shifted = adaptive_attack(target, clean[1:2], labels[1:2], "reclassify_linf:16", options, indices=torch.tensor([0]))
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
    result = adaptive_attack(target, clean, labels, "joint_linf:64", AdaptiveOptions(steps=10, targets=0, relative_step=4))
    assert result.success.all()
    assert (result.targets == 0).all() and (result.verdict.m_prediction == 0).all()


def test_joint_attack_adds_each_target_part_through_a_proposal_of_its_own(monkeypatch) -> None:
    """Revision 1: K's "add" hinges take each part of the target's through a proposal of its own
    (DAG's one label per proposal), not every part through its best proposal (the attack unit
    tests found revision 0 missing evasions known to exist)."""
    from unmask.attacks.adaptive.part_view import PartView

    calls = []
    original = PartView.hinge_loss

    def recorded(self, outputs, add=None, remove=None, *, distinct=False):
        if torch.is_grad_enabled():  # the attack's steps (the clean image's target ranking runs without gradients)
            calls.append(distinct)
        return original(self, outputs, add, remove, distinct=distinct)

    monkeypatch.setattr(PartView, "hinge_loss", recorded)
    target = make_target(tiny_m(seed=1), car_seeing_k(), k_threshold=0.0, detection_threshold=0.0)
    clean = images(2, seed=7)
    labels = target.judge(clean).m_prediction
    adaptive_attack(target, clean, labels, "joint_linf:8", AdaptiveOptions(steps=2, targets=1, early_stop=False))
    assert calls and all(calls)


def test_hopskipjump_runs_from_another_class_and_reports_distances() -> None:
    """With K seeing car parts everywhere, images M calls "car" evade UnMask for any other label:
    they are the starting points, and HopSkipJump walks towards each clean image."""
    target = make_target(tiny_m(seed=3), car_seeing_k(), k_threshold=0.0, detection_threshold=0.8)
    pool = images(4, seed=8)[:2]
    predicted = target.judge(pool).m_prediction
    assert (predicted == 0).any() and (predicted != 0).any(), "the tiny M should call one image car, not all"
    options = AdaptiveOptions(hsj_steps=1, hsj_initial_evals=4, hsj_max_evals=8)
    result = adaptive_attack(target, pool, predicted, "hsj_l2:3000", options)
    attacked = predicted != 0
    assert torch.isfinite(result.distances[attacked]).all()
    assert torch.isinf(result.distances[~attacked]).all()  # no image of another class is "car"-free
    start = torch.cdist(pool[attacked].flatten(1), pool[~attacked].flatten(1)).amin(1) * 255
    assert (result.distances[attacked] <= start + 1e-3).all()  # never further than its start
    assert torch.equal(result.success, (result.distances <= 3000) & result.verdict.evades(predicted))


@pytest.mark.parametrize("name", ["joint_linf:8", "hsj_l2:8"])
def test_no_images_no_judge(name: str) -> None:
    def judge(batch):
        raise AssertionError("the judge must not be asked about no images")

    target = make_target()
    target = type(target)(target.classifier, target.part_model, target.class_parts, target.k_score_threshold,
                          target.detection_threshold, judge)
    result = adaptive_attack(target, torch.zeros(0, 3, 48, 48), torch.zeros(0, dtype=torch.int64), name, FAST)
    assert result.images.shape == (0, 3, 48, 48) and len(result.verdict) == 0 and result.success.shape == (0,)

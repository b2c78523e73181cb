"""The white-box attacks know the deployed decision rule (``unmask.rules``): the judge applies it,
the surrogate and the joint attack's gate follow it, and the re-classification attack aims at the
part classifier's logits. A mutation of the rule changes the verdict."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unmask.attacks.adaptive import AdaptiveOptions, DefenseTarget, Verdict, adaptive_attack
from unmask.constants import NO_PREDICTION
from unmask.experiment.stages import hard_verdict
from unmask.models.part_extractor import PartExtractor
from unmask.parts import PARTS
from unmask.rules import AgreementRule, DecisionRule, PaperRule, PartClassifier, PartClassifierRule, PerClassRule

from .conftest import CLASS_SET, images, tiny_k, tiny_m
from .test_attacks import car_seeing_k

CAR, PERSON, TRAIN = 0, 1, 2
JOINT = AdaptiveOptions(steps=10, targets=0, relative_step=4)


def rule_target(classifier: torch.nn.Module, part_model: torch.nn.Module, rule: DecisionRule, *,
                k_threshold: float = 0.0) -> DefenseTarget:
    """A defense deploying ``rule``: the experiment's hard verdict under it as the judge, and the
    rule handed to the attacker."""
    extractor = PartExtractor(part_model, score_threshold=k_threshold)

    def judge(batch: torch.Tensor) -> Verdict:
        with torch.no_grad():
            predicted = classifier(batch).argmax(1).cpu().numpy()
        extraction = extractor.extract(batch)
        return hard_verdict(predicted, extraction.parts, CLASS_SET, rule.threshold, rule=rule,
                            part_scores=extraction.part_scores)

    return DefenseTarget(classifier=classifier, part_model=part_model,
                         class_parts=torch.from_numpy(CLASS_SET.expected.astype(np.float32)),
                         k_score_threshold=k_threshold, detection_threshold=rule.threshold, judge=judge, rule=rule)


@pytest.fixture(scope="module")
def car_world() -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor, torch.Tensor]:
    """K sees car parts whatever the image; three images M calls person or train."""
    classifier, part_model = tiny_m(seed=1), car_seeing_k()
    clean = images(8, seed=7)
    with torch.no_grad():
        predicted = classifier(clean).argmax(1)
    keep = predicted != CAR
    assert keep.sum() >= 2, "the tiny M should call some images person or train"
    return classifier, part_model, clean[keep][:3], predicted[keep][:3]


def test_the_reject_variant_gives_a_flagged_image_no_deployed_class():
    verdict = Verdict(torch.tensor([0, 1]), torch.tensor([0.9, 0.1]), torch.tensor([True, False]),
                      torch.tensor([2, 2]), torch.zeros(2, len(PARTS), dtype=torch.bool), reject=True)
    assert verdict.deployed.tolist() == [NO_PREDICTION, 1]
    assert Verdict(verdict.m_prediction, verdict.detection_score, verdict.flagged, verdict.unmask_prediction,
                   verdict.parts).deployed.tolist() == [2, 1]


def test_the_joint_attack_is_judged_under_the_per_class_thresholds(car_world):
    """The same attack on the same models: with car's own threshold loose, moving M to car
    evades; tightened to flag every image M calls car (the only class K's parts fit), nothing
    can evade, and the attack, gate and judge alike, says so."""
    classifier, part_model, clean, labels = car_world
    loose = PerClassRule(class_set=CLASS_SET, threshold=0.8, class_thresholds=(0.8, 0.8, 0.8))
    tight = PerClassRule(class_set=CLASS_SET, threshold=0.8, class_thresholds=(0.0, 0.8, 0.8))
    found = adaptive_attack(rule_target(classifier, part_model, loose), clean, labels, "joint_linf:64", JOINT)
    assert found.success.all() and (found.verdict.m_prediction == CAR).all()
    held = adaptive_attack(rule_target(classifier, part_model, tight), clean, labels, "joint_linf:64", JOINT)
    assert not held.success.any()
    assert held.verdict.flagged[held.verdict.m_prediction == CAR].all()
    # the loose rule's adversarial images, judged under the tight rule: the verdict flips
    again = rule_target(classifier, part_model, tight).judge(found.images)
    assert not again.evades(labels).any()


def test_the_transplant_attack_is_judged_on_the_agreement_rules_deployed_decision(car_world):
    """Under agreement, M's class must be the parts' best match, else the image is flagged and
    re-classified by the parts: with K seeing a car everywhere, every way through deploys car.
    Success is the judge's deployed decision under the rule (and under its reject variant the
    flagged ones deploy no class)."""
    classifier, part_model, clean, labels = car_world
    rule = AgreementRule(class_set=CLASS_SET, threshold=0.8)
    result = adaptive_attack(rule_target(classifier, part_model, rule), clean, labels, "transplant_linf:64", JOINT)
    again = rule_target(classifier, part_model, rule).judge(result.images)
    assert torch.equal(result.success, again.deployed != labels)
    assert result.success.all() and (again.deployed == CAR).all()
    assert (again.m_prediction[~again.flagged] == CAR).all()  # unflagged only where M and the parts agree
    rejecting = AgreementRule(class_set=CLASS_SET, threshold=0.8, reject=True)
    rejected = rule_target(classifier, part_model, rejecting).judge(result.images)
    assert torch.equal(rejected.flagged, again.flagged)
    assert (rejected.deployed[rejected.flagged] == NO_PREDICTION).all()


def parts_classifier(weights: dict[int, list[str]]) -> PartClassifier:
    """A part classifier whose class logit is 5 x the number of its listed parts present."""
    model = PartClassifier(len(CLASS_SET))
    with torch.no_grad():
        model.linear.weight.zero_()
        model.linear.bias.zero_()
        for c, names in weights.items():
            for name in names:
                model.linear.weight[c, PARTS.index(name)] = 5.0
    return model.eval().requires_grad_(False)


def test_the_reclassify_attack_aims_at_the_part_classifiers_logits():
    """With the part-classifier rule deployed, the re-classification the attack must move is the
    classifier's argmax, not the Jaccard one: the judge's re-classification follows the
    classifier, and the attack's success is judged on it."""
    classifier, part_model = tiny_m(), tiny_k()
    clean = images(3, seed=5)
    learned = parts_classifier({CAR: [], PERSON: [], TRAIN: list(PARTS)})
    rule = PartClassifierRule(class_set=CLASS_SET, classifier=learned, threshold=0.5)
    target = rule_target(classifier, part_model, rule, k_threshold=0.5)
    judged = target.judge(clean)
    found = judged.parts.any(1)
    assert found.any(), "the tiny K should find parts on some image"
    assert (judged.unmask_prediction[found] == TRAIN).all()  # the classifier's, whatever the Jaccards say
    labels = torch.full((3,), TRAIN)
    options = AdaptiveOptions(steps=3, restarts=1, targets=2, batch_size=4)
    result = adaptive_attack(target, clean, labels, "reclassify_linf:32", options)
    again = target.judge(result.images)
    assert torch.equal(result.success, again.unmask_prediction != labels)
    # a mutated rule (the classifier swapped for one that always says car) flips the verdict
    car = PartClassifierRule(class_set=CLASS_SET, classifier=parts_classifier({CAR: list(PARTS)}), threshold=0.5)
    car_verdict = rule_target(classifier, part_model, car, k_threshold=0.5).judge(result.images)
    assert (car_verdict.unmask_prediction[car_verdict.parts.any(1)] == CAR).all()


def test_the_paper_rule_deployed_is_the_default_pipeline(car_world):
    classifier, part_model, clean, labels = car_world
    rule = PaperRule(class_set=CLASS_SET, threshold=0.8)
    extraction = PartExtractor(part_model, score_threshold=0.0).extract(clean)
    predicted = classifier(clean).argmax(1).numpy()
    with_rule = hard_verdict(predicted, extraction.parts, CLASS_SET, 0.8, rule=rule, part_scores=extraction.part_scores)
    without = hard_verdict(predicted, extraction.parts, CLASS_SET, 0.8)
    for name in ("m_prediction", "detection_score", "flagged", "unmask_prediction", "parts"):
        assert torch.equal(getattr(with_rule, name), getattr(without, name))

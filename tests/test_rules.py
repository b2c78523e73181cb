"""The decision rules (``unmask.rules``) on hand-built part matrices: each rule's flag and
decision, threshold fixing at the stated FPR on clean scores, reject against re-classify."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unmask.constants import NO_PREDICTION
from unmask.defense import detection_scores, part_matrix, reclassify_batch
from unmask.metrics import threshold_at_fpr
from unmask.parts import ClassSet
from unmask.rules import (
    DECISION_RULES,
    AgreementRule,
    Evidence,
    PaperRule,
    PartClassifierRule,
    PerClassRule,
    decision_rule,
    train_part_classifier,
)

CLASS_SET = ClassSet.named("cs3-1")  # car, person, train
CAR, PERSON, TRAIN = 0, 1, 2
CAR_PARTS = sorted(CLASS_SET.expected_parts("car"))
PERSON_PARTS = sorted(CLASS_SET.expected_parts("person"))
TRAIN_PARTS = sorted(CLASS_SET.expected_parts("train"))


def evidence(m: list[int], part_sets: list[list[str]]) -> Evidence:
    return Evidence(np.array(m), part_matrix(part_sets))


def random_evidence(count: int, *, seed: int = 0) -> tuple[Evidence, np.ndarray]:
    """Images of each class showing most of its parts and a few others; M mostly right."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, count)
    parts = np.zeros((count, 44), dtype=bool)
    for row, label in enumerate(labels):
        expected = np.flatnonzero(CLASS_SET.expected[label])
        parts[row, expected] = rng.random(len(expected)) < 0.7
        parts[row, rng.integers(0, 44, 3)] = True
    m = np.where(rng.random(count) < 0.9, labels, rng.integers(0, 3, count))
    scores = parts * rng.uniform(0.5, 1.0, parts.shape)
    return Evidence(m, parts, scores), labels


def test_the_paper_rule_is_the_paper_pipeline():
    found, _ = random_evidence(200)
    threshold = 0.6
    decision = PaperRule(class_set=CLASS_SET, threshold=threshold).decide(found)
    scores = detection_scores(found.parts, found.m, CLASS_SET)
    reclassified = reclassify_batch(found.parts, CLASS_SET)
    np.testing.assert_array_equal(decision.score, scores)
    np.testing.assert_array_equal(decision.flagged, scores >= threshold)
    np.testing.assert_array_equal(decision.reclassified, reclassified)
    np.testing.assert_array_equal(decision.deployed, np.where(scores >= threshold, reclassified, found.m))


def test_agreement_flags_an_m_that_the_parts_do_not_best_match():
    # M says car; K sees most car parts and all of train's: car passes the paper's threshold,
    # but train matches better, so only the agreement rule flags it
    parts = CAR_PARTS[:8] + TRAIN_PARTS
    found = evidence([CAR, TRAIN], [parts, parts])
    jaccards = 1 - detection_scores(found.parts, np.array([CAR, TRAIN]), CLASS_SET)
    assert jaccards[1] > jaccards[0]
    threshold = 1 - jaccards[0] + 0.01  # the paper's rule lets M's car through
    paper = PaperRule(class_set=CLASS_SET, threshold=threshold).decide(found)
    agreement = AgreementRule(class_set=CLASS_SET, threshold=threshold).decide(found)
    assert not paper.flagged[0] and agreement.flagged[0]
    assert agreement.deployed[0] == TRAIN  # re-classified as the best match
    assert not agreement.flagged[1] and agreement.deployed[1] == TRAIN  # M and the parts agree


def test_agreement_counts_a_tie_for_the_best_match_as_agreement():
    found = evidence([CAR, TRAIN], [[], []])  # no parts: every class matches equally badly
    decision = AgreementRule(class_set=CLASS_SET, threshold=2.0).decide(found)
    assert not decision.flagged.any()


def test_per_class_thresholds_apply_per_m_class():
    rule = PerClassRule(class_set=CLASS_SET, threshold=0.5, class_thresholds=(0.2, 0.9, 0.5))
    found = evidence([CAR, PERSON], [CAR_PARTS[:7], PERSON_PARTS[:7]])
    scores = detection_scores(found.parts, found.m, CLASS_SET)
    assert 0.2 < scores[0] < 0.9 and 0.2 < scores[1] < 0.9
    decision = rule.decide(found)
    assert decision.flagged.tolist() == [True, False]


@pytest.mark.parametrize("fpr", [0.05, 0.1, 0.2])
@pytest.mark.parametrize("name", ["paper", "agreement", "per-class", "part-classifier"])
def test_threshold_fixing_hits_the_stated_fpr_on_clean_scores(name, fpr):
    train, train_labels = random_evidence(600, seed=1)
    validation, _ = random_evidence(500, seed=2)
    options = {"classifier": train_part_classifier(train, train_labels, 3)} if name == "part-classifier" else {}
    rule = decision_rule(name, CLASS_SET, **options).fixed(validation, fpr=fpr)
    flagged = rule.decide(validation).flagged.mean()
    forced = rule.forced(validation).mean()
    assert flagged <= max(fpr, forced) + 1e-12
    if forced < fpr - 0.05:
        # discrete scores leave some slack below the target; the rule uses most of it
        assert flagged >= fpr - 0.05
    assert rule.target_fpr == fpr


def test_the_paper_rule_fixes_the_evaluations_threshold():
    validation, _ = random_evidence(300, seed=3)
    rule = PaperRule(class_set=CLASS_SET).fixed(validation, fpr=0.1)
    assert rule.threshold == threshold_at_fpr(detection_scores(validation.parts, validation.m, CLASS_SET), 0.1)


def test_per_class_fixing_holds_each_class_and_the_overall_rate():
    validation, _ = random_evidence(600, seed=4)
    rule = PerClassRule(class_set=CLASS_SET).fixed(validation, fpr=0.1)
    flagged = rule.decide(validation).flagged
    for c in range(3):
        assert flagged[validation.m == c].mean() <= 0.1
    assert flagged.mean() <= 0.1
    assert len(set(rule.class_thresholds)) > 1


def test_forced_flags_over_the_rate_leave_the_threshold_flagging_nothing_more():
    # M disagrees with the parts on every image: the agreement rule flags all of them
    found = evidence([PERSON] * 10, [CAR_PARTS] * 10)
    rule = AgreementRule(class_set=CLASS_SET).fixed(found, fpr=0.1)
    assert rule.threshold > 1.0
    assert rule.decide(found).flagged.all()


def test_reject_gives_flagged_images_no_class_and_leaves_the_flag():
    found, _ = random_evidence(200, seed=5)
    for name in ("paper", "agreement", "per-class"):
        reclassify = decision_rule(name, CLASS_SET).fixed(found, fpr=0.2)
        reject = decision_rule(name, CLASS_SET, reject=True).fixed(found, fpr=0.2)
        kept, rejected = reclassify.decide(found), reject.decide(found)
        np.testing.assert_array_equal(kept.flagged, rejected.flagged)
        assert kept.flagged.any()
        assert (rejected.deployed[rejected.flagged] == NO_PREDICTION).all()
        np.testing.assert_array_equal(rejected.deployed[~rejected.flagged], found.m[~rejected.flagged])
        np.testing.assert_array_equal(kept.deployed[kept.flagged], kept.reclassified[kept.flagged])
        assert reject.label == f"{name}+reject"


def test_the_part_classifier_reclassifies_from_parts_and_must_agree_with_m():
    train, labels = random_evidence(600, seed=6)
    classifier = train_part_classifier(train, labels, 3)
    rule = PartClassifierRule(class_set=CLASS_SET, classifier=classifier, threshold=0.99)
    clean = Evidence(np.array([CAR, PERSON, TRAIN]), part_matrix([CAR_PARTS, PERSON_PARTS, TRAIN_PARTS]))
    assert rule.reclassify(clean).tolist() == [CAR, PERSON, TRAIN]
    assert not rule.decide(clean).flagged.any()
    lying = Evidence(np.array([PERSON]), part_matrix([CAR_PARTS]))  # M says person, the parts say car
    decision = rule.decide(lying)
    assert decision.flagged[0] and decision.deployed[0] == CAR
    held_out, held_labels = random_evidence(300, seed=7)
    assert (rule.reclassify(held_out) == held_labels).mean() > 0.9


def test_an_unfixed_rule_refuses_to_decide():
    with pytest.raises(ValueError, match="no threshold yet"):
        PaperRule(class_set=CLASS_SET).decide(evidence([CAR], [CAR_PARTS]))
    with pytest.raises(ValueError, match="unknown decision rule"):
        decision_rule("majority", CLASS_SET)
    assert math.isnan(PaperRule(class_set=CLASS_SET).threshold)
    assert tuple(DECISION_RULES) == ("paper", "agreement", "per-class", "part-classifier")


def test_each_rules_ceiling_is_the_share_another_class_passes_it_with_clean_parts():
    """For the paper's rule it is ``unflagged_wrong_class`` of ``unmask.defense``; agreement closes
    it wherever the true class is the parts' only best match."""
    from unmask.defense import unflagged_wrong_class

    found, labels = random_evidence(300, seed=8)
    paper = PaperRule(class_set=CLASS_SET).fixed(found, fpr=0.1)
    np.testing.assert_array_equal(paper.unflagged_wrong_class(found, labels),
                                  unflagged_wrong_class(found.parts, labels, CLASS_SET, paper.threshold))
    agreement = AgreementRule(class_set=CLASS_SET).fixed(found, fpr=0.1)
    similarities = agreement.similarities(found)
    own = similarities[np.arange(len(labels)), labels]
    others = similarities.copy()
    others[np.arange(len(labels)), labels] = -1
    only_best = own > others.max(axis=1)
    assert not agreement.unflagged_wrong_class(found, labels)[only_best].any()

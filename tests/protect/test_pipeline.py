"""UnMask as a library object: flags, thresholds, decisions and explanations, on an M and a K whose
answers the tests choose (so every expected number is worked out by hand)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import unmask
from unmask.constants import NO_PREDICTION
from unmask.defense import jaccard
from unmask.metrics import threshold_at_fpr
from unmask.protect import UnMask

from .conftest import CLASS_SET, Says, index_of, numbered, one_hot

CAR, PERSON, TRAIN = CLASS_SET.expected_parts("car"), CLASS_SET.expected_parts("person"), \
    CLASS_SET.expected_parts("train")
PART_SETS = [
    set(CAR),                                  # 0: M car, all of a car's parts: score 0
    set(sorted(CAR)[:8]),                      # 1: M car, 8 of its 11 parts: score 3/11
    set(PERSON),                               # 2: M car, a person's parts: score 1, re-classified person
    set(),                                     # 3: M train, no parts: score 1, no class shares a part
    set(sorted(TRAIN)[:5]) | {"hand"},         # 4: M train, 5 of its 7 parts and a hand: score 3/8
    set(TRAIN),                                # 5: M person, a train's parts: score 18/19, re-classified train
]
M_CLASSES = [0, 0, 0, 2, 2, 1]


def parts_of(images: torch.Tensor) -> list[set[str]]:
    return [PART_SETS[i] for i in index_of(images).tolist()]


def make(**options) -> UnMask:
    return UnMask(Says(one_hot(M_CLASSES)), parts_of, "cs3-1", **options)


def hand_scores() -> np.ndarray:
    return np.array([1 - jaccard(CLASS_SET.expected_parts(CLASS_SET.classes[m]), parts)
                     for m, parts in zip(M_CLASSES, PART_SETS, strict=True)])


def test_the_detection_score_and_the_flag_follow_the_paper():
    scores = hand_scores()
    threshold = float(np.sort(scores)[3])  # an image scoring exactly the threshold is flagged
    result = make(threshold=threshold)(numbered(6))
    assert result.m_prediction.tolist() == M_CLASSES
    np.testing.assert_allclose(result.detection_score.numpy(), scores)
    np.testing.assert_allclose(scores, [0, 3 / 11, 1, 1, 3 / 8, 18 / 19])
    assert result.flagged.tolist() == (scores >= threshold).tolist()
    assert result.flagged.sum() == 3 and result.threshold == threshold
    assert result.unmask_prediction.tolist() == [0, 0, 1, NO_PREDICTION, 2, 2]


def test_the_deployed_decision_is_m_unless_flagged_then_reclassified_or_rejected():
    images = numbered(6)
    reclassified = make(threshold=0.5)(images)
    flagged = reclassified.flagged.numpy()
    assert flagged.tolist() == [False, False, True, True, False, True]
    expected = np.where(flagged, reclassified.unmask_prediction, M_CLASSES)
    assert reclassified.decision.tolist() == expected.tolist() == [0, 0, 1, NO_PREDICTION, 2, 2]
    rejected = make(threshold=0.5, decision="reject")(images)
    assert rejected.decision.tolist() == [0, 0, NO_PREDICTION, NO_PREDICTION, 2, NO_PREDICTION]
    assert reclassified.names(reclassified.decision) == ["car", "car", "person", None, "train", "train"]
    with pytest.raises(ValueError, match="unknown decision 'drop'"):
        make(decision="drop")


def test_fix_threshold_flags_at_most_the_stated_share_of_clean_images():
    defense = make()
    with pytest.raises(ValueError, match="no detection threshold yet"):
        defense(numbered(6))
    images = numbered(6)
    threshold = defense.fix_threshold(images, fpr=1 / 3)
    assert threshold == threshold_at_fpr(hand_scores(), 1 / 3) == defense.threshold
    flagged = defense(images).flagged
    assert flagged.float().mean() <= 1 / 3 and flagged.sum() == 2
    lower = np.sort(hand_scores())[np.sort(hand_scores()) < threshold].max()
    assert np.mean(hand_scores() >= lower) > 1 / 3  # the smallest threshold that keeps the rate
    assert defense.fix_threshold(images, fpr=0.0) > hand_scores().max()


def test_explain_names_the_parts_found_expected_and_missing():
    result = make(threshold=0.5)(numbered(6))
    one = result.explain(1)
    assert one.m_class == "car" and one.expected == tuple(sorted(CAR)) and one.found == tuple(sorted(CAR)[:8])
    assert one.missing == tuple(sorted(CAR)[8:]) and one.unexpected == ()
    assert not one.flagged and one.decision == "car"
    four = result.explain(4)
    assert four.unexpected == ("hand",) and four.missing == ("head", "headlight")
    three = result.explain(3)
    assert three.found == () and three.flagged and three.decision is None and three.detection_score == 1.0
    assert "no parts" in str(three) and "no class" in str(three)


def test_k_may_return_a_part_matrix_and_bad_answers_are_named():
    matrix = make(threshold=0.5).parts(numbered(6))
    as_matrix = UnMask(Says(one_hot(M_CLASSES)), lambda images: torch.from_numpy(matrix[index_of(images)]),
                       CLASS_SET, threshold=0.5)(numbered(6))
    assert as_matrix.decision.tolist() == make(threshold=0.5)(numbered(6)).decision.tolist()
    wrong_shape = UnMask(Says(one_hot(M_CLASSES)), lambda images: np.zeros((len(images), 3), bool), CLASS_SET,
                         threshold=0.5)
    with pytest.raises(ValueError, match=r"shape \(6, 3\); expected \(6, 44\)"):
        wrong_shape(numbered(6))
    too_few = UnMask(Says(one_hot(M_CLASSES)), lambda images: [set()], CLASS_SET, threshold=0.5)
    with pytest.raises(ValueError, match="1 part sets for 6 images"):
        too_few(numbered(6))


def test_judge_rounds_the_images_to_8_bits_first():
    defense = make(threshold=0.5)
    images = numbered(6)
    nudged = numbered(5) + 0.6 / 255  # as given image i still carries i; rounded to 8 bits, i + 1
    assert defense(nudged).decision.tolist() == defense(images).decision[:5].tolist()
    assert defense.judge(nudged).decision.tolist() == defense(images).decision[1:].tolist()
    nudged = images + 0.4 / 255
    labels = torch.ones(6, dtype=torch.int64)  # all persons: M is wrong on 0-4, flags 2 and 3
    assert defense.judge(nudged).evades(labels).tolist() == [True, True, False, False, True, False]


def test_the_package_exports_the_library_lazily():
    assert unmask.UnMask is UnMask
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        unmask.Nope  # noqa: B018


# --- the deployed decision rule (unmask.rules) --------------------------------------------------


def test_the_agreement_rule_flags_what_the_papers_threshold_lets_through():
    """Image 1 (M car, 8 of a car's 11 parts) and image 4 (M train, 5 of its 7 parts and a hand)
    pass the paper's threshold 0.5 and their parts best match M's class: agreement leaves them.
    Images 2, 3 and 5 are flagged by both; none where only agreement differs here, so add one:
    M says car on a train's parts plus most of a car's (car passes 0.5, train matches better)."""
    paper, agreement = make(threshold=0.5), make(threshold=0.5, rule="agreement")
    images = numbered(6)
    assert torch.equal(paper(images).flagged, agreement(images).flagged)
    lying = sorted(CAR - {"headlight"})[:6] + sorted(TRAIN)  # J(car) = 7/17, J(train) = 7/13
    defense = UnMask(Says(one_hot([0])), lambda images: [set(lying)] * len(images), "cs3-1", threshold=0.6,
                     rule="agreement")
    result = defense(numbered(1))
    assert result.detection_score[0] < 0.6 and result.flagged[0]
    assert result.decision.tolist() == [2]  # re-classified as the better match, train
    assert not UnMask(Says(one_hot([0])), lambda images: [set(lying)] * len(images), "cs3-1",
                      threshold=0.6)(numbered(1)).flagged[0]


def test_a_rule_fixes_its_own_thresholds_and_rejects_when_asked():
    defense = make(rule="per-class")
    with pytest.raises(ValueError, match="no detection threshold yet"):
        defense(numbered(6))
    defense.rule = dataclasses.replace(defense.rule, min_images=1)
    defense.fix_threshold(numbered(6), fpr=0.5)
    assert len(defense.rule.class_thresholds) == 3 and defense.rule.target_fpr == 0.5
    flagged = defense(numbered(6)).flagged
    assert flagged.float().mean() <= 0.5
    rejecting = make(rule=defense.rule, decision="reject")
    result = rejecting(numbered(6))
    assert torch.equal(result.flagged, flagged)
    assert (result.decision[result.flagged] == NO_PREDICTION).all()
    assert torch.equal(result.deployed, result.decision)
    with pytest.raises(ValueError, match="unknown decision rule"):
        make(rule="majority")

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from unmask.defense import NO_PREDICTION
from unmask.metrics import accuracy, detection_pairs, rates_at_threshold, roc, threshold_at_fpr


def test_accuracy_counts_no_prediction_as_wrong():
    labels = np.array([0, 1, 2, 1])
    assert accuracy(np.array([0, 1, 2, 1]), labels) == 1.0
    assert accuracy(np.array([0, NO_PREDICTION, 2, 0]), labels) == 0.5
    assert math.isnan(accuracy(np.array([]), np.array([])))
    with pytest.raises(ValueError, match="shape"):
        accuracy(np.array([0, 1]), labels)


def test_roc_hand_example():
    # positives 0.9, 0.6, 0.4; negatives 0.7, 0.2
    # pairs (pos > neg): 0.9>0.7, 0.9>0.2, 0.6>0.2, 0.4>0.2 -> 4 of 6 -> AUC 2/3
    curve = roc(np.array([0.9, 0.6, 0.4]), np.array([0.7, 0.2]))
    assert curve.auc == pytest.approx(4 / 6)
    # thresholds descending: inf, 0.9, 0.7, 0.6, 0.4, 0.2
    assert curve.tpr.tolist() == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 1, 1])
    assert curve.fpr.tolist() == pytest.approx([0, 0, 0.5, 0.5, 0.5, 1])


def test_roc_ties_count_half():
    # one positive and one negative with the same score: AUC 0.5
    assert roc(np.array([0.5]), np.array([0.5])).auc == pytest.approx(0.5)
    assert roc(np.array([1.0, 0.5]), np.array([0.5, 0.0])).auc == pytest.approx((1 + 1 + 0.5 + 1) / 4)


def test_roc_without_both_classes_is_nan():
    assert math.isnan(roc(np.array([0.3]), np.array([])).auc)
    assert math.isnan(roc(np.array([]), np.array([0.3])).auc)


def test_detection_pairs_keep_only_fooled_images():
    labels = np.array([0, 1, 2, 3])
    adversarial_predictions = np.array([1, 1, 0, 3])  # images 0 and 2 fooled
    clean_scores = np.array([0.1, 0.2, 0.3, 0.4])
    adversarial_scores = np.array([0.9, 0.8, 0.7, 0.6])
    pairs = detection_pairs(labels, adversarial_predictions, clean_scores, adversarial_scores)
    assert pairs.kept.tolist() == [0, 2]
    assert pairs.positive.tolist() == [0.9, 0.7]
    assert pairs.negative.tolist() == [0.1, 0.3]
    assert len(pairs) == 2
    assert pairs.labels.tolist() == [1, 1, 0, 0]
    assert pairs.scores.tolist() == [0.9, 0.7, 0.1, 0.3]
    strict = detection_pairs(labels, adversarial_predictions, clean_scores, adversarial_scores,
                             clean_predictions=np.array([0, 1, 1, 3]))  # image 2 already wrong
    assert strict.kept.tolist() == [0]


def test_threshold_hand_example():
    negative = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    # flag score >= t: t = 0.9 flags 1 of 10 (10%), t = 0.8 flags 20%
    assert threshold_at_fpr(negative, 0.10) == 0.9
    assert threshold_at_fpr(negative, 0.25) == 0.8
    assert threshold_at_fpr(negative, 1.0) == 0.0
    # nothing may be flagged: the threshold sits just above the largest clean score
    zero = threshold_at_fpr(negative, 0.0)
    assert zero > 0.9 and rates_at_threshold(np.array([0.95]), negative, zero) == (1.0, 0.0)


def test_threshold_with_discrete_scores_stays_under_the_target():
    # set-Jaccard scores take few values: 30% of clean images score 0.5
    negative = np.array([0.0] * 7 + [0.5] * 3)
    threshold = threshold_at_fpr(negative, 0.10)
    assert threshold > 0.5
    assert rates_at_threshold(np.array([0.5, 0.8]), negative, threshold) == (0.5, 0.0)


@given(st.lists(st.floats(0, 1), min_size=1, max_size=50), st.floats(0, 1))
def test_threshold_meets_the_target_and_is_the_smallest_that_does(scores, target):
    negative = np.array(scores)
    threshold = threshold_at_fpr(negative, target)
    assert np.mean(negative >= threshold) <= target
    smaller = negative[negative < threshold]
    if smaller.size:  # the next smaller candidate would break the target
        assert np.mean(negative >= smaller.max()) > target


def test_rates_at_threshold():
    assert rates_at_threshold(np.array([0.2, 0.6, 0.9]), np.array([0.1, 0.6]), 0.6) == (2 / 3, 0.5)
    with pytest.raises(ValueError, match="negative"):
        threshold_at_fpr(np.array([]), 0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        threshold_at_fpr(np.array([0.1]), 1.5)


def test_wilson_interval_by_hand_and_at_the_edges():
    from unmask.metrics import wilson_interval

    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    low, high = wilson_interval(0, 100)  # never an empty interval at 0%
    assert low == 0.0 and high == pytest.approx(0.0370, abs=1e-4)
    assert wilson_interval(100, 100)[1] == 1.0 and wilson_interval(100, 100)[0] == pytest.approx(0.9630, abs=1e-4)


def test_bootstrap_keeps_the_pairing_of_a_difference():
    from unmask.metrics import bootstrap_rate, rate

    rng = np.random.default_rng(1)
    a = rng.random(200) < 0.6
    same = bootstrap_rate(a.astype(float) - a.astype(float))
    assert same.value == same.low == same.high == 0.0  # paired: the same images always differ by 0
    shifted = bootstrap_rate(np.where(rng.random(200) < 0.3, 1.0, 0.0))
    assert shifted.low < shifted.value < shifted.high and shifted.high - shifted.low == pytest.approx(0.13, abs=0.03)
    single = rate(a)
    assert single.low < single.value < single.high and single.n == 200
    assert bootstrap_rate(a.astype(float), seed=3) == bootstrap_rate(a.astype(float), seed=3)  # seeded

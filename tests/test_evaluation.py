import math

import numpy as np
import pytest

from unmask.defense import part_matrix
from unmask.evaluation import (
    Predictions,
    Scored,
    clean_metrics,
    detection_curves,
    fix_thresholds,
    summary_metrics,
    vector_metrics,
)
from unmask.parts import CLASS_PARTS, ClassSet

CLASS_SET = ClassSet.named("cs3-1")  # car, person, train
CAR, PERSON, TRAIN = 0, 1, 2
car_parts = set(CLASS_PARTS["car"])
person_parts = {"head", "arm", "hand", "torso"}
train_parts = {"coach_left", "coach_front", "headlight"}


def _predictions(m, part_sets, adv_trained=None, confidence=1.0):
    parts = part_matrix(part_sets)
    return Predictions(m=np.array(m), parts=parts, part_scores=parts * confidence,
                       adv_trained=None if adv_trained is None else np.array(adv_trained))


def _scored(*args, **kwargs):
    return Scored.of(_predictions(*args, **kwargs), CLASS_SET)


def _vector_metrics(labels, clean, attacked, thresholds):
    return vector_metrics(labels, clean, attacked, thresholds, detection_curves(labels, clean, attacked))


def test_clean_and_vector_metrics_by_hand():
    labels = np.array([CAR, PERSON, TRAIN, PERSON])
    parts = [car_parts, person_parts, train_parts, set()]  # K finds nothing in the last image
    clean = _scored([CAR, PERSON, TRAIN, PERSON], parts, adv_trained=[CAR, PERSON, CAR, PERSON])
    # the attack fools M on images 0, 1 and 3; K still sees the same parts
    attacked = _scored([TRAIN, CAR, TRAIN, CAR], parts, adv_trained=[CAR, CAR, TRAIN, PERSON])

    assert clean_metrics(labels, clean) == {
        "accuracy_m": 1.0, "accuracy_adv_trained": 0.75, "accuracy_unmask": 0.75,  # empty parts: no prediction
        "accuracy_unmask_soft": 0.75, "n_images": 4,
    }
    validation = _scored([CAR, PERSON], [car_parts, person_parts])  # clean scores 0 and 9/13
    thresholds = fix_thresholds(validation, 0.5)
    assert thresholds.set_jaccard == pytest.approx(1 - 4 / 13)

    entry = _vector_metrics(labels, clean, attacked, thresholds)
    assert (entry["accuracy_m"], entry["accuracy_adv_trained"], entry["accuracy_unmask"]) == (0.25, 0.75, 0.75)
    detection = entry["detection"]
    # fooled: 0 (car -> train), 1 (person -> car), 3 (person -> car); image 2 stays right
    assert detection["n_pairs"] == 3
    # positives score 1 - J(V[adv pred], parts): car parts vs train (J = 1/17 -> 16/17), person parts
    # vs car (J = 0 -> 1), nothing vs car (1); negatives (clean): 0, 9/13, 1. Pairs won:
    # 16/17 beats 0 and 9/13, loses to 1; each 1 beats 0 and 9/13 and ties 1 -> 7 of 9
    assert detection["auc"] == pytest.approx(7 / 9)
    # threshold 9/13: positives 16/17, 1 and 1 are flagged; clean test scores 0, 9/13, 4/7, 1 -> 2 of 4
    assert (detection["tpr"], detection["fpr"]) == (1.0, 0.5)


def test_soft_scores_separate_what_set_jaccard_ties():
    labels = np.array([CAR, CAR])
    parts = [car_parts, car_parts]
    clean = _scored([CAR, CAR], parts)
    attacked = Scored.of(Predictions(m=np.array([PERSON, PERSON]), parts=part_matrix(parts),
                                     part_scores=part_matrix(parts) * np.array([[0.9], [0.3]])), CLASS_SET)
    validation = _scored([CAR], [car_parts])
    entry = _vector_metrics(labels, clean, attacked, fix_thresholds(validation, 0.1))
    assert entry["detection"]["auc"] == 1.0
    assert entry["accuracy_unmask"] == 1.0 and entry["accuracy_unmask_soft"] == 1.0


def test_no_fooled_images_gives_an_undefined_auc_not_a_crash():
    labels = np.array([CAR])
    clean = _scored([CAR], [car_parts])
    entry = _vector_metrics(labels, clean, clean, fix_thresholds(clean, 0.1))
    assert entry["detection"]["n_pairs"] == 0
    assert math.isnan(entry["detection"]["auc"]) and math.isnan(entry["detection"]["tpr"])
    assert math.isnan(entry["accuracy_adv_trained"])  # no baseline in this run


def test_summary_is_the_mean_gain_in_percentage_points():
    entries = [
        {"accuracy_m": 0.0, "accuracy_unmask": 0.9, "accuracy_adv_trained": 0.5, "detection": {"auc": 0.9}},
        {"accuracy_m": 0.2, "accuracy_unmask": 0.7, "accuracy_adv_trained": 0.3, "detection": {"auc": math.nan}},
    ]
    summary = summary_metrics(entries)
    assert summary["mean_gain_over_adv_training"] == pytest.approx(40.0)
    assert summary["mean_accuracy_m"] == pytest.approx(0.1)
    assert summary["mean_auc"] == 0.9


def test_predictions_round_trip(tmp_path):
    original = _predictions([CAR, TRAIN], [car_parts, set()], adv_trained=[CAR, CAR], confidence=0.5)
    original.save(tmp_path / "p.npz")
    loaded = Predictions.load(tmp_path / "p.npz")
    for name in ("m", "parts", "part_scores", "adv_trained"):
        assert np.array_equal(getattr(loaded, name), getattr(original, name))
    without_baseline = _predictions([CAR], [car_parts])
    without_baseline.save(tmp_path / "q.npz")
    assert Predictions.load(tmp_path / "q.npz").adv_trained is None


# --- the threat-model figures on hand-made verdicts -------------------------------------------------

from unmask.evaluation import Outcomes, attack_outcomes, strongest, worst_case  # noqa: E402

LABELS = np.array([0, 0, 1, 1, 2])


def test_a_success_is_m_wrong_and_not_flagged_and_the_flag_is_score_at_or_above_threshold():
    # image:           0: fooled, unflagged   1: fooled, flagged (score == threshold)   2: right, unflagged
    #                  3: right, flagged      4: fooled, unflagged
    outcome = attack_outcomes(LABELS, m=np.array([1, 2, 1, 1, 0]), detection=np.array([0.2, 0.5, 0.1, 0.9, 0.49]),
                              reclassified=np.array([0, 0, 1, 0, 2]), threshold=0.5,
                              clean_detection=np.array([0.1, 0.1, 0.1, 0.1, 0.1]))
    assert outcome.evaded.tolist() == [True, False, False, False, True]  # a fooled but flagged image is no success
    assert outcome.m.tolist() == [False, False, True, True, False]
    assert outcome.reclassification.tolist() == [True, True, True, False, True]
    # the deployed decision follows the flag: M's class unless flagged, else the re-classified one
    assert outcome.system.tolist() == [False, True, True, False, False]


def test_robust_accuracy_with_detection_counts_a_flagged_clean_image_as_an_error():
    outcome = attack_outcomes(LABELS, m=np.array([0, 1, 1, 0, 2]), detection=np.array([0.0, 0.8, 0.0, 0.0, 0.9]),
                              reclassified=LABELS, threshold=0.5,
                              clean_detection=np.array([0.6, 0.1, 0.1, 0.1, 0.5]))
    # image 0 is right but its clean version is flagged; 1 is fooled but flagged: handled; 3 fooled, unflagged;
    # 4 is right, yet its clean version sits at the threshold: flagged, so an error
    assert outcome.handled.tolist() == [False, True, True, False, False]


def test_m_alone_flags_nothing():
    outcome = attack_outcomes(LABELS, m=np.array([0, 1, 1, 2, 2]))
    assert outcome.evaded.tolist() == [False, True, False, True, False]
    assert outcome.handled.tolist() == outcome.system.tolist() == outcome.m.tolist() == [True, False, True, False, True]
    assert outcome.reclassification is None


def test_the_worst_case_is_per_image_any_success_and_right_only_under_every_attack():
    first = Outcomes(evaded=np.array([True, False, False]), handled=np.array([False, True, True]),
                     reclassification=np.array([True, True, False]), system=np.array([False, True, True]),
                     m=np.array([False, True, True]))
    second = Outcomes(evaded=np.array([False, False, True]), handled=np.array([True, True, False]),
                      reclassification=np.array([True, False, True]), system=np.array([True, True, False]),
                      m=np.array([True, False, True]))
    worst = worst_case([first, second])
    assert worst.evaded.tolist() == [True, False, True]
    assert worst.handled.tolist() == [False, True, False]
    assert worst.reclassification.tolist() == [True, False, False]
    assert worst.system.tolist() == [False, True, False]
    # the worst case is never better than any one attack, and can be worse than both
    assert worst.reclassification.mean() < min(first.reclassification.mean(), second.reclassification.mean())
    assert strongest({"first": first, "second": second}, "evaded") == "first"  # a tie: the first named
    assert strongest({"first": first, "second": second}, "system") == "first"
    assert worst_case([first]).evaded.tolist() == first.evaded.tolist()

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from unmask.defense import (
    NO_PREDICTION,
    detection_score,
    detection_scores,
    jaccard,
    jaccard_matrix,
    part_matrix,
    part_sets,
    reclassify,
    reclassify_batch,
    soft_detection_score,
    soft_jaccard,
    soft_reclassify,
    unflagged_wrong_class,
)
from unmask.parts import CLASS_PARTS, CLASS_SETS, PARTS, ClassSet, UnknownNameError

part_set = st.frozensets(st.sampled_from(PARTS), max_size=12)
class_sets = st.sampled_from(sorted(CLASS_SETS)).map(ClassSet.named)
CS5_2, CS5_1, CS3_2 = ClassSet.named("cs5-2"), ClassSet.named("cs5-1"), ClassSet.named("cs3-2")
# multiples of 1/8 are exact in binary, so sums in any order agree to the last bit
exact_score = st.integers(min_value=0, max_value=8).map(lambda k: k / 8)
score_map = st.dictionaries(st.sampled_from(PARTS), exact_score.filter(lambda s: s > 0), max_size=12)


@given(part_set, part_set)
def test_jaccard_is_symmetric_and_bounded(a, b):
    assert jaccard(a, b) == jaccard(b, a)
    assert 0.0 <= jaccard(a, b) <= 1.0


@given(part_set)
def test_jaccard_identity(a):
    assert jaccard(a, a) == (1.0 if a else 0.0)


@given(part_set, part_set)
def test_jaccard_is_one_only_for_equal_nonempty_sets(a, b):
    assert (jaccard(a, b) == 1.0) == (a == b and bool(a))


def test_jaccard_hand_examples():
    assert jaccard(set(), set()) == 0.0
    assert jaccard({"wheel"}, set()) == 0.0
    assert jaccard({"saddle", "wheel"}, {"wheel", "headlight", "saddle"}) == pytest.approx(2 / 3)
    assert jaccard(CLASS_PARTS["bird"], {"beak", "wing", "eye"}) == pytest.approx(3 / 9)


def test_detection_score_is_one_minus_jaccard_with_the_prediction():
    parts = {"beak", "wing", "wheel"}
    assert detection_score(parts, "bird", CS5_2) == pytest.approx(1 - 2 / 10)
    assert detection_score(CLASS_PARTS["car"], "car", CS5_2) == 0.0
    assert detection_score(set(), "car", CS5_2) == 1.0
    with pytest.raises(UnknownNameError, match="dog, car, bottle, train, person"):
        detection_score(parts, "bird", CS5_1)


def test_reclassify_picks_the_best_matching_class():
    assert reclassify({"wheel", "window", "door"}, CS5_2) == "car"
    assert reclassify({"beak", "wing"}, CS3_2) == "bird"
    assert reclassify({"coach_left", "wheel"}, CS5_2) == "train"  # 1/7 beats car's 1/11


def test_reclassify_ties_go_to_the_earlier_class():
    # cow and sheep expect exactly the same parts: the earlier in the set wins, both orders
    assert CLASS_PARTS["cow"] == CLASS_PARTS["sheep"]
    assert reclassify({"horn", "muzzle"}, ClassSet.of(["cow", "sheep"])) == "cow"
    assert reclassify({"horn", "muzzle"}, ClassSet.of(["sheep", "cow"])) == "sheep"
    # car and bus likewise
    assert reclassify({"wheel"}, ClassSet.of(["bus", "car"])) == "bus"
    # a tie between classes with different part sets: horse (hoof) and cow (horn) both expect
    # 9 parts, so {ear, eye} scores 2/9 with each
    assert CLASS_PARTS["horse"] != CLASS_PARTS["cow"]
    shared = {"ear", "eye"}
    assert jaccard(shared, CLASS_PARTS["horse"]) == jaccard(shared, CLASS_PARTS["cow"])
    assert reclassify(shared, ClassSet.of(["horse", "cow", "bird"])) == "horse"
    assert reclassify(shared, ClassSet.of(["bird", "cow", "horse"])) == "cow"
    assert reclassify_batch(part_matrix([shared]), ClassSet.of(["bird", "cow", "horse"])).tolist() == [1]


def test_unflagged_wrong_class_hand_examples():
    # cow and sheep expect the same parts: a cow whose parts K sees perfectly is still a sheep to
    # detection, at any threshold above 0; a bird's parts leave no other class of these close
    same = ClassSet.of(["cow", "sheep", "bird"])
    parts = part_matrix([CLASS_PARTS["cow"], CLASS_PARTS["bird"]])
    assert unflagged_wrong_class(parts, np.array([0, 2]), same, 0.1).tolist() == [True, False]
    # its own class never counts: a bird labelled bird passes, but that is not a wrong class
    assert not unflagged_wrong_class(part_matrix([CLASS_PARTS["bird"]]), np.array([2]), same, 0.01)[0]
    # the flag is score >= threshold: a wrong class whose score equals the threshold is flagged
    matrix = part_matrix([{"coach_left", "wheel"}])
    car_score = 1.0 - jaccard_matrix(matrix, CS5_2)[0, CS5_2.classes.index("car")]
    train = np.array([CS5_2.classes.index("train")])
    others = [1.0 - jaccard_matrix(matrix, CS5_2)[0, i] for i in range(len(CS5_2.classes)) if i != train[0]]
    assert car_score == min(others)
    assert not unflagged_wrong_class(matrix, train, CS5_2, car_score)[0]
    assert unflagged_wrong_class(matrix, train, CS5_2, np.nextafter(car_score, 2.0))[0]


@given(st.lists(part_set, min_size=1, max_size=6), class_sets, st.floats(0, 1), st.data())
def test_unflagged_wrong_class_agrees_with_detection_of_every_other_class(sets, class_set, threshold, data):
    labels = np.array(data.draw(st.lists(st.integers(0, len(class_set.classes) - 1), min_size=len(sets),
                                         max_size=len(sets))))
    matrix = part_matrix(sets)
    got = unflagged_wrong_class(matrix, labels, class_set, threshold)
    for row, label in enumerate(labels):
        others = [c for c in range(len(class_set.classes)) if c != label]
        scores = detection_scores(np.repeat(matrix[row:row + 1], len(others), axis=0), np.array(others), class_set)
        assert got[row] == bool((scores < threshold).any())


def test_reclassify_without_shared_parts_is_no_prediction():
    assert reclassify(set(), CS5_2) is None
    assert reclassify({"screen", "pot"}, CS5_2) is None
    matrix = part_matrix([set(), {"screen"}, {"wheel"}])
    assert reclassify_batch(matrix, CS5_2).tolist() == [NO_PREDICTION, NO_PREDICTION, 1]


def test_soft_jaccard_equals_set_jaccard_on_full_confidence():
    scores = {"beak": 1.0, "wing": 1.0, "wheel": 1.0}
    assert soft_jaccard(scores, CLASS_PARTS["bird"]) == jaccard(scores, CLASS_PARTS["bird"])


def test_soft_jaccard_hand_example():
    # bird expects 9 parts; beak 0.5 and wheel 0.25 detected:
    # Σmin = 0.5 (beak), Σmax = 8 * 1 (other bird parts) + 1 (beak) + 0.25 (wheel) = 9.25
    assert soft_jaccard({"beak": 0.5, "wheel": 0.25}, CLASS_PARTS["bird"]) == pytest.approx(0.5 / 9.25)
    assert soft_detection_score({"beak": 0.5, "wheel": 0.25}, "bird", CS5_2) == pytest.approx(1 - 0.5 / 9.25)
    assert soft_jaccard({}, set()) == 0.0


def test_soft_scores_break_set_jaccard_ties():
    # the same part set, different confidences: set Jaccard is equal, soft Jaccard is not
    confident, unsure = {"beak": 0.9, "wing": 0.9}, {"beak": 0.2, "wing": 0.2}
    assert jaccard(confident, CLASS_PARTS["bird"]) == jaccard(unsure, CLASS_PARTS["bird"])
    assert soft_jaccard(confident, CLASS_PARTS["bird"]) > soft_jaccard(unsure, CLASS_PARTS["bird"])


@given(st.lists(part_set, min_size=1, max_size=20), class_sets)
def test_vectorised_set_rules_agree_with_per_image_rules(sets, class_set):
    matrix = part_matrix(sets)
    classes = class_set.classes
    similarities = jaccard_matrix(matrix, class_set)
    for row, parts in enumerate(sets):
        for column, name in enumerate(classes):
            assert similarities[row, column] == jaccard(parts, CLASS_PARTS[name])
    expected = [reclassify(parts, class_set) for parts in sets]
    got = [None if i == NO_PREDICTION else classes[i] for i in reclassify_batch(matrix, class_set)]
    assert got == expected
    predicted = np.arange(len(sets)) % len(classes)
    scores = detection_scores(matrix, predicted, class_set)
    assert scores.tolist() == [detection_score(s, classes[p], class_set) for s, p in zip(sets, predicted, strict=True)]


@given(st.lists(score_map, min_size=1, max_size=20), class_sets)
def test_vectorised_soft_rules_agree_with_per_image_rules(maps, class_set):
    matrix = np.zeros((len(maps), len(PARTS)))
    for row, scores in enumerate(maps):
        for part, score in scores.items():
            matrix[row, PARTS.index(part)] = score
    classes = class_set.classes
    similarities = jaccard_matrix(matrix, class_set)
    for row, scores in enumerate(maps):
        for column, name in enumerate(classes):
            assert similarities[row, column] == soft_jaccard(scores, CLASS_PARTS[name])
    expected = [soft_reclassify(scores, class_set) for scores in maps]
    got = [None if i == NO_PREDICTION else classes[i] for i in reclassify_batch(matrix, class_set)]
    assert got == expected
    predicted = np.zeros(len(maps), dtype=int)
    assert detection_scores(matrix, predicted, class_set).tolist() == [
        soft_detection_score(scores, classes[0], class_set) for scores in maps
    ]


@given(st.lists(part_set, max_size=10))
def test_part_matrix_round_trip(sets):
    assert part_sets(part_matrix(sets)) == [frozenset(s) for s in sets]


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(UnknownNameError, match="unknown part 'fin'"):
        part_matrix([{"fin"}])
    with pytest.raises(ValueError, match=r"shape \(images, 44\)"):
        jaccard_matrix(np.zeros((3, 10)), CS5_2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        jaccard_matrix(np.full((1, 44), 2.0), CS5_2)
    with pytest.raises(ValueError, match="class indices"):
        detection_scores(np.zeros((2, 44), bool), np.array([0, 5]), CS5_2)


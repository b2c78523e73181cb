"""Bad input to ``unmask.UnMask`` gets one clear error, and a threshold that cannot work a warning."""

from __future__ import annotations

import warnings

import pytest
import torch

from unmask.protect import UnMask

from .conftest import Says, numbered, one_hot


def car_parts(images: torch.Tensor) -> list[set[str]]:
    return [{"wheel", "door", "window"} for _ in range(len(images))]


def test_an_m_with_more_outputs_than_the_class_set_has_classes_is_refused():
    ten_outputs = Says([[0.0] * 9 + [5.0]] * 4)  # says class 9 of a 3-class set
    defense = UnMask(ten_outputs, car_parts, "cs3-1", threshold=0.5)
    with pytest.raises(ValueError, match=r"gives 10 outputs per image, but the class set cs3-1 has 3 classes "
                                         r"\(car, person, train\)"):
        defense(numbered(4))
    in_range = Says([[5.0] + [0.0] * 9] * 4)  # its argmax stays within the 3 classes: still refused
    with pytest.raises(ValueError, match="gives 10 outputs"):
        UnMask(in_range, car_parts, "cs3-1").fix_threshold(numbered(4))


def test_an_m_with_one_output_per_class_passes_the_check_once():
    calls = []
    model = Says(one_hot([0, 1, 2, 0]))
    model.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    defense = UnMask(model, car_parts, "cs3-1", threshold=0.5)
    defense(numbered(4))
    defense(numbered(4))
    assert calls[0] == 1 and calls.count(1) == 1  # one single-image check, then the batches only


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_images_with_a_non_finite_pixel_are_refused(bad):
    defense = UnMask(Says(one_hot([0, 1, 2, 0])), car_parts, "cs3-1", threshold=0.5)
    images = numbered(4)
    images[2, 1, 3, 3] = bad
    with pytest.raises(ValueError, match=r"1 of 4 images hold NaN or infinite pixels \(the first: image 2\)"):
        defense(images)
    with pytest.raises(ValueError, match="NaN or infinite"):
        defense.judge(images)
    with pytest.raises(ValueError, match="4 of 4 images hold NaN"):
        defense(torch.full((4, 3, 8, 8), float("nan")))


def test_images_of_the_wrong_shape_are_refused():
    defense = UnMask(Says(one_hot([0])), car_parts, "cs3-1", threshold=0.5)
    with pytest.raises(ValueError, match=r"shape \(N, 3, H, W\) in \[0, 1\], got \(3, 8, 8\)"):
        defense(numbered(1)[0])


def test_a_threshold_that_can_flag_nothing_is_warned_about_with_the_scores_range():
    says_person = UnMask(Says(one_hot([1, 1, 1, 1])), car_parts, "cs3-1")  # M says person, K sees a car
    with pytest.warns(UserWarning, match=r"can flag no image: .* range from 1\.000 to 1\.000 on the 4 clean images"):
        threshold = says_person.fix_threshold(numbered(4), fpr=0.1)
    assert threshold > 1.0


def test_a_threshold_that_flags_every_clean_image_is_warned_about():
    says_car = UnMask(Says(one_hot([0, 0, 0, 0])), car_parts, "cs3-1")
    with pytest.warns(UserWarning, match=r"flags every one of the 4 clean images: .* range from"):
        says_car.fix_threshold(numbered(4), fpr=1.0)


def test_a_working_threshold_gives_no_warning():
    mixed = UnMask(Says(one_hot([0, 0, 1, 0])), car_parts, "cs3-1")  # right (score < 1) on 3 of 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mixed.fix_threshold(numbered(4), fpr=0.25) == 1.0

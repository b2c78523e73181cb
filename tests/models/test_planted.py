"""The attack unit tests' modified models: the separating readout, M's penultimate features, the
binarized M (one readout per anchor) and K with planted parts in its box classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unmask.models.classifier import Classifier, CompactCNN
from unmask.models.part_extractor import build_part_extractor
from unmask.models.planted import (
    OUT_OF_REACH,
    BinarizedClassifier,
    PlantedPartsPredictor,
    anchors_apart,
    box_outputs,
    penultimate,
    separating_readout,
    with_box_predictor,
)


def test_the_readout_separates_and_places_its_boundary_between_the_two_sets():
    rng = np.random.default_rng(0)
    negative = rng.normal(size=(200, 5))
    positive = negative.mean(0, keepdims=True) + np.array([[6.0, 0, 0, 0, 0]])
    readout = separating_readout(negative, positive, closeness=0.9)
    assert readout is not None
    assert readout(negative).max() == pytest.approx(-0.9) and readout(positive).min() == pytest.approx(0.1)
    middle = separating_readout(negative, positive, closeness=0.5)
    assert middle(negative).max() == pytest.approx(-0.5) and middle(positive)[0] == pytest.approx(0.5)


def test_a_point_inside_the_negatives_hull_has_no_readout():
    corners = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert separating_readout(corners, np.zeros((1, 2)), closeness=0.5) is None
    with pytest.raises(ValueError, match="closeness"):
        separating_readout(corners, np.full((1, 2), 3.0), closeness=1.0)


def test_penultimate_features_are_the_heads_input_and_leave_m_unchanged():
    torch.manual_seed(0)
    m = Classifier(CompactCNN(3, width=4), name="compact", num_classes=3).eval()
    images = torch.rand(2, 3, 32, 32)
    before = m(images)
    features = penultimate(m)(images)
    assert features.shape == (2, 16)
    assert torch.allclose(m.network[-1](features), before, atol=1e-6)
    assert torch.equal(m(images), before) and isinstance(m.network[-1], torch.nn.Linear)


class Pixels(torch.nn.Module):
    """Features = the first two pixel values (a 2-d feature space the test can reason about)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)[:, :2]


def test_the_binarized_m_says_the_target_exactly_where_its_anchors_readout_is_positive():
    anchors = torch.stack([torch.full((1, 1, 2), 0.2), torch.full((1, 1, 2), 0.8)])
    weight = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    bias = torch.tensor([-0.25, 0.75])
    m = BinarizedClassifier(Pixels(), anchors, weight, bias, torch.tensor([0, 2]), torch.tensor([1, 0]), num_classes=3)
    images = torch.stack([torch.tensor([[[0.22, 0.0]]]), torch.tensor([[[0.3, 0.2]]]),
                          torch.tensor([[[0.8, 0.7]]]), torch.tensor([[[0.8, 0.9]]])])
    logits = m(images)
    # image 0 and 1 are nearest anchor 0 (readout x - 0.25), 2 and 3 anchor 1 (readout 0.75 - y)
    assert logits.argmax(1).tolist() == [0, 1, 0, 2]
    assert (logits[0, 2] == OUT_OF_REACH) and (logits[2, 1] == OUT_OF_REACH)
    assert logits[1, 1] == pytest.approx(0.025) and logits[1, 0] == pytest.approx(-0.025)
    with pytest.raises(ValueError, match="target equals"):
        BinarizedClassifier(Pixels(), anchors, weight, bias, torch.tensor([0, 2]), torch.tensor([0, 1]), num_classes=3)


def test_anchors_apart_means_disjoint_balls():
    anchors = torch.stack([torch.zeros(1, 1, 2), torch.full((1, 1, 2), 0.1)])
    assert anchors_apart(anchors, 0.04) and not anchors_apart(anchors, 0.05)
    assert anchors_apart(anchors[:1], 1.0)


def test_planted_parts_shift_their_logits_linearly_and_k_itself_is_untouched():
    torch.manual_seed(0)
    k = build_part_extractor("lean", image_size=32, fpn_channels=8).eval()
    original = k.roi_heads.box_predictor
    images = torch.rand(1, 3, 32, 32)
    before = box_outputs(k, images)[0]
    dimension = before.features.shape[1]
    weight, bias = torch.randn(2, dimension), torch.tensor([0.5, -1.0])
    modified = with_box_predictor(k, PlantedPartsPredictor(original, torch.tensor([3, 7]), weight, bias))
    after = box_outputs(modified, images)[0]
    shift = before.features @ weight.T + bias
    assert torch.allclose(after.logits[:, [3, 7]], before.logits[:, [3, 7]] + shift, atol=1e-4)
    untouched = [c for c in range(after.logits.shape[1]) if c not in (3, 7)]
    assert torch.equal(after.logits[:, untouched], before.logits[:, untouched])
    assert k.roi_heads.box_predictor is original and modified.roi_heads is not k.roi_heads
    assert modified.backbone is k.backbone and modified.roi_heads.box_head is k.roi_heads.box_head
    assert torch.equal(box_outputs(k, images)[0].logits, before.logits)

"""K's differentiable view agrees with K's hard detection rule, and lets gradients through."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unmask.attacks.adaptive.part_view import _NEG, NUM_LABELS, PartOutputs, PartView, soft_jaccard
from unmask.defense import jaccard_matrix
from unmask.models.part_extractor import PartExtractor
from unmask.parts import PART_INDEX, PARTS

from .conftest import images, tiny_k


@pytest.fixture(scope="module")
def k_model():
    return tiny_k()


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5])
def test_soft_presence_matches_the_hard_rule(k_model, threshold: float) -> None:
    batch = images(6, seed=1)
    hard = PartExtractor(k_model, score_threshold=threshold).extract(batch).parts
    view = PartView(k_model, score_threshold=threshold)
    with torch.no_grad():
        outputs = view(batch)
        soft = view.presence(outputs)
    assert hard.sum() >= 6, "the tiny K should detect some parts"
    assert not hard.all(), "and miss others"
    assert np.array_equal((soft >= view.effective_threshold).numpy(), hard)
    assert np.array_equal(view.hard_presence(outputs).numpy(), hard)
    # a detected part's soft presence is its best detection score (as PartExtractor reports)
    scores = PartExtractor(k_model, score_threshold=threshold).extract(batch).part_scores
    np.testing.assert_allclose(soft.numpy()[hard], scores[hard], rtol=1e-4, atol=1e-5)
    assert (soft >= 0).all() and (soft <= 1).all()


def test_extra_proposals_are_scored_too(k_model) -> None:
    batch = images(2, seed=2)
    view = PartView(k_model, score_threshold=0.5)
    with torch.no_grad():
        own = view(batch)
        joined = view(batch, [p[:5] for p in own.proposals])
    assert joined.logits.shape[1] == own.logits.shape[1] + 5
    torch.testing.assert_close(joined.logits[:, -5:], own.logits[:, :5], rtol=1e-4, atol=1e-4)


def test_gradients_reach_the_image(k_model) -> None:
    view = PartView(k_model, score_threshold=0.5)
    x = images(2, seed=3).requires_grad_(True)
    outputs = view(x)
    present = view.hard_presence(outputs).float()
    add = torch.zeros_like(present)
    add[:, PART_INDEX["wheel"]] = 1 - present[:, PART_INDEX["wheel"]]
    add[:, PART_INDEX["window"]] = 1
    loss = view.hinge_loss(outputs, add=add, remove=present) + soft_jaccard(view.indicator(view.presence(outputs)),
                                                                            torch.eye(44)[:3]).sum(1)
    (gradient,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(gradient).all()
    assert (gradient.flatten(1).abs().sum(1) > 0).all()


def test_hinges_stop_once_satisfied() -> None:
    """A K whose box classifier calls every proposal "wheel" with probability 0.9."""
    model = tiny_k(sharpen=1.0)
    with torch.no_grad():
        predictor = model.roi_heads.box_predictor.cls_score
        predictor.weight.zero_()
        predictor.bias.zero_()
        predictor.bias[PART_INDEX["wheel"] + 1] = float(np.log(0.9 * (NUM_LABELS - 1) / 0.1))
    view = PartView(model, score_threshold=0.5, margin=0.3, kappa=0.5)
    outputs = view(images(2, seed=4))
    wheel, eye = torch.zeros(2, 44), torch.zeros(2, 44)
    wheel[:, PART_INDEX["wheel"]] = 1
    eye[:, PART_INDEX["eye"]] = 1
    assert view.hard_presence(outputs)[:, PART_INDEX["wheel"]].all()
    assert (view.hinge_loss(outputs, add=wheel) == 0).all()  # 0.9 >= 0.5 e^0.3, margin >> 0.5
    assert (view.hinge_loss(outputs, remove=eye) == 0).all()  # eye is nowhere
    assert (view.hinge_loss(outputs, add=eye) > 0).all()
    assert (view.hinge_loss(outputs, remove=wheel) > 0).all()


def test_soft_jaccard_is_the_set_jaccard_on_0_1_presence() -> None:
    rng = np.random.default_rng(0)
    parts = rng.random((20, len(PARTS))) < 0.2
    parts[0] = False
    classes = np.stack([rng.random(len(PARTS)) < 0.25 for _ in range(5)]).astype(np.float32)
    ours = soft_jaccard(torch.from_numpy(parts).float(), torch.from_numpy(classes)).numpy()
    # the defense's matrix for a class set, checked against a class set's own table
    from unmask.parts import ClassSet

    table = ClassSet.named("cs5-2").expected.astype(np.float32)
    np.testing.assert_allclose(soft_jaccard(torch.from_numpy(parts).float(), torch.from_numpy(table)).numpy(),
                               jaccard_matrix(parts, ClassSet.named("cs5-2")), rtol=1e-6)
    assert ours.shape == (20, 5) and (ours[0] == 0).all()


def test_parts_to_add_get_proposals_of_their_own() -> None:
    """One proposal is every part's best; ``distinct`` matches each part to another proposal,
    highest margin first, since a proposal reports only one class."""
    view = PartView(tiny_k(), score_threshold=0.5)
    wheel, eye, beak = PART_INDEX["wheel"] + 1, PART_INDEX["eye"] + 1, PART_INDEX["beak"] + 1
    logits = torch.zeros(1, 4, NUM_LABELS)
    logits[0, 0, [wheel, eye, beak]] = torch.tensor([9.0, 8.8, 8.6])  # nearly all three: the best for each
    logits[0, 1, [0, eye]] = torch.tensor([5.0, 2.0])  # background, then eye
    logits[0, 2, beak] = 9.5  # invalid (a degenerate box): never matched
    logits[0, 3, [0, beak]] = torch.tensor([5.0, 1.0])
    outputs = PartOutputs(logits, torch.ones(1, 4, dtype=torch.bool), torch.tensor([[True, True, False, True]]),
                          [torch.zeros(4, 4)])
    add = torch.zeros(1, 44)
    add[0, [wheel - 1, eye - 1, beak - 1]] = 1
    per_proposal = view._add_margins_per_proposal(outputs)
    best = view.add_margins(outputs)
    distinct = view.distinct_add_margins(outputs, add)
    for part in (wheel, eye, beak):  # each part's best is proposal 0 (proposal 2 is invalid)
        assert best[0, part - 1] == per_proposal[0, 0, part - 1]
    assert distinct[0, wheel - 1] == per_proposal[0, 0, wheel - 1]  # the highest margin keeps proposal 0
    assert distinct[0, eye - 1] == per_proposal[0, 1, eye - 1]
    assert distinct[0, beak - 1] == per_proposal[0, 3, beak - 1]
    assert (distinct[0, add[0] == 0] == _NEG).all()
    # with more parts to add than valid proposals, the last ones get none
    add[0, [PART_INDEX["hand"], PART_INDEX["foot"]]] = 1
    assert (view.distinct_add_margins(outputs, add)[0] > _NEG).sum() == 3
    loss = view.hinge_loss(outputs, add=add[:, :], distinct=True)
    assert loss.shape == (1,) and loss > view.hinge_loss(outputs, add=add)


def _reference_logits(model, batch: torch.Tensor, extra: list[torch.Tensor]) -> torch.Tensor:
    """Box-head logits through torchvision's own modules (per-image transform, MultiScaleRoIAlign)."""
    image_list, _ = model.transform(list(batch))
    features = model.backbone(image_list.tensors)
    with torch.no_grad():
        proposals, _ = model.rpn(image_list, features)
    proposals = [torch.cat([p, e]) for p, e in zip(proposals, extra, strict=True)]
    heads = model.roi_heads
    pooled = heads.box_roi_pool({name: f.contiguous() for name, f in features.items()}, proposals,
                                image_list.image_sizes)
    logits, _ = heads.box_predictor(heads.box_head(pooled))
    return torch.nn.utils.rnn.pad_sequence(list(logits.split([len(p) for p in proposals])), batch_first=True)


def test_the_batched_fast_path_gives_torchvision_s_values_and_gradients() -> None:
    # at 128 px (a multiple of 32, K's own size) the view normalises the batch at once and pools
    # RoIs grouped by pyramid level; at 48 px it falls back to torchvision's transform (padding).
    # Large extra proposals reach the second level (torchvision maps boxes of side >= 112 there),
    # so the RoIs really are reordered and put back.
    torch.manual_seed(0)
    from unmask.models.part_extractor import build_part_extractor

    model = build_part_extractor("lean", image_size=128, fpn_channels=16).eval()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(30)
    view = PartView(model, score_threshold=0.5)
    assert view._identity_resize(128, 128) and not view._identity_resize(48, 48)
    generator = torch.Generator().manual_seed(4)
    batch = torch.round(torch.rand(3, 3, 128, 128, generator=generator) * 255) / 255
    large = [torch.tensor([[0.0, 0.0, 128.0, 128.0], [8.0, 4.0, 124.0, 120.0]])] * 3
    view(batch[:1])  # the first call sets up the pooler's scales through torchvision's path
    pool = model.roi_heads.box_roi_pool
    with torch.no_grad():
        proposals = view(batch, large).proposals
    assert len(set(pool.map_levels(proposals).tolist())) == 2, "the RoIs should come from two levels"
    x = batch.clone().requires_grad_(True)
    outputs = view(x, large)
    weights = torch.rand(outputs.logits.shape, generator=generator)
    (fast_gradient,) = torch.autograd.grad((outputs.logits * weights).sum(), x)
    y = batch.clone().requires_grad_(True)
    reference = _reference_logits(model, y, large)
    (reference_gradient,) = torch.autograd.grad((reference * weights).sum(), y)
    assert outputs.logits.shape == reference.shape and reference.shape[1] > 10
    torch.testing.assert_close(outputs.logits, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_gradient, reference_gradient, rtol=1e-4, atol=1e-6)
    assert fast_gradient.abs().sum() > 0
    with torch.no_grad():  # a list of images of one size (K's training batches) takes the same path
        torch.testing.assert_close(view(list(batch), large).logits, outputs.logits.detach(), rtol=0, atol=0)

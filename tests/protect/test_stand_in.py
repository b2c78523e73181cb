"""The stand-in: a differentiable nn.Module whose forward is UnMask's real decision and whose
gradients are its soft logits' (BPDA), attacked by foolbox; on tiny real models (M a compact
CNN, K a lean Mask R-CNN) at 48 px."""

from __future__ import annotations

import foolbox as fb
import pytest
import torch

from unmask.constants import NO_PREDICTION
from unmask.models.part_extractor import PartExtractor
from unmask.protect import StandIn, UnMask, to_8bit

from .conftest import CLASS_SET, Says, numbered, one_hot, sharpened_k

SIZE = 48


class DominantColour(torch.nn.Module):
    """A differentiable M that tells images apart: class c when colour channel c dominates."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 3)
        with torch.no_grad():
            self.linear.weight.copy_(40 * torch.eye(3))
            self.linear.bias.zero_()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images.mean(dim=(2, 3)))


def images(count: int, *, seed: int = 0) -> torch.Tensor:
    """8-bit smooth random images in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(count, 3, SIZE // 8, SIZE // 8, generator=generator)
    return to_8bit(torch.nn.functional.interpolate(base, size=(SIZE, SIZE), mode="bilinear", align_corners=False))


@pytest.fixture(scope="module")
def defense() -> UnMask:
    extractor = PartExtractor(sharpened_k(SIZE), score_threshold=0.5)
    # random K's parts fit no class well (scores 0.9-1): flag only those sharing no part with M's class
    return UnMask(DominantColour(), extractor, CLASS_SET, threshold=0.95)


def decided(stand_in: StandIn, x: torch.Tensor) -> torch.Tensor:
    """The stand-in's argmax as a decision (its "no class" logit as ``NO_PREDICTION``)."""
    top = stand_in(x).argmax(1)
    return torch.where(top == stand_in.no_class, NO_PREDICTION, top)


def test_gradients_reach_the_image_finite_and_are_the_soft_logits(defense):
    stand_in = defense.stand_in()
    x = images(6, seed=1).requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    (gradient,) = torch.autograd.grad(torch.nn.functional.cross_entropy(stand_in(x), labels), x)
    assert torch.isfinite(gradient).all() and (gradient.abs().flatten(1).sum(1) > 0).all()
    # BPDA: the forward's detached offset leaves the soft logits' gradient
    logits = stand_in(x)
    for row, column in ((0, 0), (3, 2), (5, stand_in.no_class)):
        (through_forward,) = torch.autograd.grad(logits[row, column], x, retain_graph=True)
        (through_soft,) = torch.autograd.grad(stand_in.soft_logits(x)[row, column], x)
        torch.testing.assert_close(through_forward, through_soft)
    assert not any(parameter.requires_grad for parameter in stand_in.parameters())


@pytest.mark.parametrize("decision", ["reclassify", "reject"])
def test_the_forward_decides_as_the_real_pipeline(defense, decision):
    defense = UnMask(defense.classifier, defense.part_extractor, CLASS_SET, threshold=defense.threshold,
                     decision=decision)
    stand_in = defense.stand_in()
    x = images(16, seed=2)
    real = defense(x)
    assert decided(stand_in, x).tolist() == real.decision.tolist()
    assert real.flagged.any() and not real.flagged.all()
    with torch.no_grad():
        soft = stand_in.soft_logits(x).argmax(1)
    assert (torch.where(soft == stand_in.no_class, NO_PREDICTION, soft) != real.decision).any(), \
        "some soft argmaxes differ from the decision, so the forward's lift is what makes them agree"
    # off the 8-bit grid too: libraries pass the images they made
    nudged = (x + 0.3 / 255 * torch.randn_like(x)).clamp(0, 1)
    assert decided(stand_in, nudged).tolist() == defense(nudged).decision.tolist()


def test_rejected_images_get_the_no_class_logit(defense):
    rejecting = UnMask(defense.classifier, defense.part_extractor, CLASS_SET, threshold=0.0, decision="reject")
    stand_in = rejecting.stand_in()
    assert stand_in(images(4)).argmax(1).tolist() == [stand_in.no_class] * 4 == [3] * 4


def test_foolbox_attacks_the_stand_in_and_its_success_is_the_real_pipelines(defense):
    stand_in = defense.stand_in()
    x = images(8, seed=3)
    labels = defense(x).decision.clamp(min=0)  # what UnMask says of the clean images: the attack must change it
    model = fb.PyTorchModel(stand_in, bounds=(0, 1))
    torch.manual_seed(0)
    _, adversarial, success = fb.attacks.LinfPGD(abs_stepsize=4 / 255, steps=4)(model, x, labels,
                                                                                 epsilons=16 / 255)
    assert (adversarial - x).abs().max() <= 16 / 255 + 1e-6
    assert success.tolist() == (defense(adversarial).decision != labels).tolist()
    assert success.any()
    judged = defense.judge(adversarial)  # the project's verdict: on 8-bit images
    assert judged.evades(labels).tolist() == ((judged.m_prediction != labels) & ~judged.flagged).tolist()


def test_a_k_of_another_kind_needs_its_soft_parts():
    defense = UnMask(Says(one_hot([0, 1, 2, 0])), lambda x: [{"wheel"}] * len(x), CLASS_SET, threshold=0.5)
    with pytest.raises(TypeError, match="soft_parts="):
        defense.stand_in()
    wheels = torch.zeros(44)
    wheels[CLASS_SET.expected[0].nonzero()[0]] = 1.0  # K's soft parts: a car's, whatever the image
    stand_in = defense.stand_in(soft_parts=lambda x: wheels.expand(len(x), -1) + 0 * x.mean())
    x = numbered(4)
    assert decided(stand_in, x).tolist() == defense(x).decision.tolist()
    with pytest.raises(ValueError, match="weight >= 0"):
        defense.stand_in(weight=-1.0)


def test_autoattack_runs_on_the_stand_in_and_its_verdicts_are_the_pipelines(defense):
    """AutoAttack (PyPI pyautoattack, an optional extra: skipped without it), as the README runs
    it, with one cheap attack: its own robust flags are UnMask's decisions on its images."""
    autoattack = pytest.importorskip("pyautoattack")
    stand_in = defense.stand_in()
    x = images(6, seed=4)
    labels = defense(x).decision.clamp(min=0)
    adversary = autoattack.AutoAttack(stand_in, norm="Linf", eps=16 / 255, version="custom", attacks=["apgd-ce"],
                                      seed=0)
    adversary.apgd.n_iter = 5
    adversarial, predicted = adversary.run_standard_evaluation(x, labels, batch_size=6)
    assert (adversarial - x).abs().max() <= 16 / 255 + 1e-6
    decision = defense(adversarial).decision
    assert predicted.tolist() == torch.where(decision == NO_PREDICTION, stand_in.no_class, decision).tolist()
    assert defense.judge(adversarial).decision.shape == (6,)

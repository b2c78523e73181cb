"""Tiny models and a hard judge for the adaptive-attack tests.

The judge is built here from ``unmask.defense`` and ``PartExtractor``, as the experiment builds
it; the attack package itself never imports the defense.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unmask.attacks.adaptive import DefenseTarget, Verdict
from unmask.defense import detection_scores, reclassify_batch
from unmask.models.classifier import Classifier, CompactCNN
from unmask.models.part_extractor import PartExtractor, build_part_extractor
from unmask.parts import ClassSet

SIZE = 48
CLASS_SET = ClassSet.named("cs3-1")  # car, person, train


def tiny_k(*, seed: int = 0, sharpen: float = 30.0) -> torch.nn.Module:
    """A randomly initialised lean K at 48 px whose box classifier is sharpened, so that it
    detects a varied handful of parts with confident scores."""
    torch.manual_seed(seed)
    model = build_part_extractor("lean", image_size=SIZE, fpn_channels=16)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(sharpen)
    return model.eval()


def tiny_m(*, seed: int = 0, classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    return Classifier(CompactCNN(classes, width=8), name="compact", num_classes=classes).eval()


def images(count: int, *, seed: int = 0) -> torch.Tensor:
    """8-bit random images (smooth blobs on noise) in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(count, 3, SIZE // 8, SIZE // 8, generator=generator)
    smooth = torch.nn.functional.interpolate(base, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    noisy = (smooth + 0.1 * torch.rand(count, 3, SIZE, SIZE, generator=generator)).clamp(0, 1)
    return torch.round(noisy * 255) / 255


def make_judge(classifier: torch.nn.Module, part_model: torch.nn.Module, *, k_threshold: float,
               detection_threshold: float, class_set: ClassSet = CLASS_SET):
    extractor = PartExtractor(part_model, score_threshold=k_threshold)

    def judge(batch: torch.Tensor) -> Verdict:
        with torch.no_grad():
            predicted = classifier(batch).argmax(1).cpu().numpy()
        parts = extractor.extract(batch).parts
        scores = detection_scores(parts, predicted, class_set)
        return Verdict(predicted, scores, scores >= detection_threshold, reclassify_batch(parts, class_set), parts)

    return judge


def make_target(classifier=None, part_model=None, *, k_threshold: float = 0.5, detection_threshold: float = 0.6,
                class_set: ClassSet = CLASS_SET) -> DefenseTarget:
    classifier = classifier if classifier is not None else tiny_m()
    part_model = part_model if part_model is not None else tiny_k()
    return DefenseTarget(
        classifier=classifier, part_model=part_model,
        class_parts=torch.from_numpy(class_set.expected.astype(np.float32)),
        k_score_threshold=k_threshold, detection_threshold=detection_threshold,
        judge=make_judge(classifier, part_model, k_threshold=k_threshold, detection_threshold=detection_threshold,
                         class_set=class_set),
    )


@pytest.fixture(scope="module")
def target() -> DefenseTarget:
    return make_target()

"""On the default run's trained M and K (slow; skipped when they are not on this machine).

The models are read from ``$UNMASK_BASELINE`` (default ``/tmp/baseline``): ``results/models/k-*/
weights.pt``, ``results/models/m-*/weights.pt`` (not ``m-adv-*``) and the synthetic cs5-2 test
images under ``data/synthetic``.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from unmask.attacks.adaptive import AdaptiveOptions, PartView, adaptive_attack
from unmask.models.part_extractor import PartExtractor, build_part_extractor
from unmask.parts import ClassSet

from .conftest import make_target

pytestmark = pytest.mark.slow

BASELINE = Path(os.environ.get("UNMASK_BASELINE", "/tmp/baseline"))
K_THRESHOLD = 0.5
DETECTION_THRESHOLD = 0.6  # the default run's set-Jaccard threshold at 10% FPR on clean validation images


def _one(pattern: str) -> str:
    matches = sorted(path for path in glob.glob(str(BASELINE / pattern)) if "m-adv-" not in path)
    if not matches:
        pytest.skip(f"no trained model {BASELINE / pattern}")
    return matches[0]


@pytest.fixture(scope="module")
def trained():
    from unmask.data.folders import ClassFolderDataset
    from unmask.parts import ClassSet
    from unmask.train.classifier import ClassifierSpec, ClassifierTraining, load_trained_classifier
    from unmask.train.part_extractor import load_part_extractor_weights

    k_path, m_path = _one("results/models/k-*/weights.pt"), _one("results/models/m-*/weights.pt")
    data = BASELINE / "data" / "synthetic"
    if not (data / "cs5-2" / "test").is_dir():
        pytest.skip(f"no synthetic test images under {data}")
    part_model = build_part_extractor("lean", image_size=128)
    load_part_extractor_weights(part_model, k_path)
    class_set = ClassSet.named("cs5-2")
    classifier = load_trained_classifier(m_path, ClassifierSpec("compact", class_set.classes, 128, ClassifierTraining()))
    images, labels = ClassFolderDataset(data, class_set, "test", image_size=128).tensors()
    return classifier, part_model.eval(), images, labels


def correct_sample(classifier, images, labels, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        predicted = classifier(images).argmax(1)
    rows = torch.cat([((labels == c) & (predicted == c)).nonzero().flatten()[:per_class] for c in range(5)])
    return images[rows], labels[rows]


@pytest.mark.parametrize("threshold", [0.5, 0.0])
def test_surrogate_agrees_with_k_on_clean_test_images(trained, threshold: float) -> None:
    _, part_model, images, _ = trained
    images = images[::2]
    hard = PartExtractor(part_model, score_threshold=threshold).extract(images).parts
    view = PartView(part_model, score_threshold=threshold)
    with torch.no_grad():
        soft = torch.cat([view.presence(view(images[i:i + 50])) for i in range(0, len(images), 50)])
    agreement = np.mean((soft >= view.effective_threshold).numpy() == hard)
    assert agreement >= 0.95, agreement
    assert hard.sum() > len(images)  # K does detect parts


def test_joint_attack_at_64_evades_unmask(trained) -> None:
    classifier, part_model, images, labels = trained
    images, labels = correct_sample(classifier, images, labels, per_class=2)
    target = make_target(classifier, part_model, k_threshold=K_THRESHOLD, detection_threshold=DETECTION_THRESHOLD,
                         class_set=ClassSet.named("cs5-2"))
    result = adaptive_attack(target, images, labels, "joint_linf", 64, AdaptiveOptions(steps=10, targets=2))
    assert result.success.float().mean() >= 0.9
    assert ((result.images - images).abs().amax() * 255 <= 64 + 1e-3)


def test_k_vanish_at_64_removes_every_part(trained) -> None:
    classifier, part_model, images, labels = trained
    images, labels = correct_sample(classifier, images, labels, per_class=1)
    target = make_target(classifier, part_model, k_threshold=K_THRESHOLD, detection_threshold=DETECTION_THRESHOLD,
                         class_set=ClassSet.named("cs5-2"))
    clean = target.judge(images).parts
    result = adaptive_attack(target, images, labels, "k_vanish_linf", 64, AdaptiveOptions(steps=10))
    recall = (result.verdict.parts & clean).sum() / clean.sum()
    assert recall <= 0.1, recall

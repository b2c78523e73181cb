"""K's training loop (loss goes down, exact resume) and its evaluation (COCOeval, part sets)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unmask.data.coco import PartSegmentationDataset, load_coco_parts, split_paths
from unmask.io import load_checkpoint
from unmask.models.part_extractor import PartDetections, PartExtraction, PartExtractor, build_part_extractor
from unmask.parts import PARTS
from unmask.runtime import Runtime
from unmask.train import loop
from unmask.train.loop import HISTORY_FILE, STATE_FILE, WEIGHTS_FILE
from unmask.train.part_extractor import (
    PartExtractorSpec,
    PartExtractorTraining,
    PartExtractorTrainingResult,
    evaluate_part_extractor,
    load_part_extractor_weights,
    part_extractor_cache_key,
    part_set_precision_recall,
    train_part_extractor,
    warmup_cosine,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

def training(epochs: int) -> PartExtractorTraining:
    return PartExtractorTraining(epochs=epochs, batch_size=4, lr=0.01, warmup_steps=3, seed=0)


def tiny_k() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_part_extractor("lean", image_size=64, fpn_channels=16)


@pytest.fixture(scope="module")
def three_epochs(shape_world: Path, tmp_path_factory: pytest.TempPathFactory,
                 ) -> tuple[PartExtractorTrainingResult, Path]:
    """A tiny K trained for three epochs on the shape world, and its checkpoint folder."""
    folder = tmp_path_factory.mktemp("three-epochs")
    train_set = PartSegmentationDataset(*split_paths(shape_world, "train"), hflip_prob=0.5)
    return train_part_extractor(tiny_k(), train_set, None, training(3), checkpoint_dir=folder, progress=False), folder


def test_a_few_epochs_reduce_the_loss(three_epochs: tuple[PartExtractorTrainingResult, Path]) -> None:
    result, tmp_path = three_epochs
    train_set_size = 24
    assert [record["epoch"] for record in result.history] == [1, 2, 3]
    assert result.steps == 3 * train_set_size // training(3).batch_size == len(result.step_losses)
    assert result.history[-1]["loss"] < 0.7 * result.history[0]["loss"]
    assert result.weights_path == tmp_path / WEIGHTS_FILE
    assert json.loads((tmp_path / HISTORY_FILE).read_text())["history"] == result.history
    # the saved weights load into a fresh model with load_checkpoint (weights_only) and give the same outputs
    trained = load_part_extractor_weights(tiny_k(), result.weights_path)
    for key, value in loop.load_weights(result.weights_path)[0].items():
        assert torch.equal(trained.state_dict()[key], value)


def test_resume_continues_exactly(shape_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train_set = PartSegmentationDataset(*split_paths(shape_world, "train"), hflip_prob=0.5)
    straight = train_part_extractor(tiny_k(), train_set, None, training(2), checkpoint_dir=tmp_path / "straight",
                                    progress=False)

    def write_then_crash(*args, **kwargs) -> None:
        raise KeyboardInterrupt  # the run dies right after its first epoch's checkpoint

    interrupted = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        patch.setattr(loop, "atomic_write_json", write_then_crash)
        with pytest.raises(KeyboardInterrupt):
            train_part_extractor(tiny_k(), train_set, None, training(2), checkpoint_dir=interrupted, progress=False)
    assert load_checkpoint(interrupted / STATE_FILE)["epoch"] == 1
    torch.manual_seed(123)  # the resumed run must not depend on the RNG it starts with
    model = tiny_k()
    resumed = train_part_extractor(model, train_set, None, training(2), checkpoint_dir=interrupted, progress=False)
    assert resumed.resumed_epochs == 1
    steps_per_epoch = len(train_set) // training(2).batch_size
    assert resumed.step_losses == straight.step_losses[steps_per_epoch:]  # the same next-step losses, exactly
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    final = loop.load_weights(straight.weights_path)[0]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, final[key], rtol=0, atol=0)
    again = train_part_extractor(tiny_k(), train_set, None, training(2), checkpoint_dir=interrupted, progress=False)
    assert again.steps == 0  # a finished run is not repeated
    assert (interrupted / WEIGHTS_FILE).is_file()


def test_schedule_warms_up_then_decays() -> None:
    factor = warmup_cosine(100, 10)
    assert factor(0) == pytest.approx(0.001)
    assert factor(5) == pytest.approx(0.5005)
    assert factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5)
    assert factor(100) == pytest.approx(0.0)


class GroundTruthExtractor:
    """Answers with the test file's own annotations (score 0.9) and one false wheel (score 0.3)
    per image: a stand-in for K with known metrics."""

    score_threshold = 0.5

    def __init__(self, annotation_file: Path, image_dir: Path) -> None:
        self.images = iter(load_coco_parts(annotation_file, image_dir))

    def extract(self, images, *, score_threshold=None, keep_detections=False, batch_size=None) -> PartExtraction:
        detections = []
        for image in images:
            entry = next(self.images)
            assert tuple(image.shape[1:]) == (entry.height, entry.width)
            false_wheel = np.zeros((1, entry.height, entry.width), dtype=bool)
            false_wheel[0, :3, :3] = True
            detections.append(PartDetections(
                boxes=np.concatenate([entry.boxes_xyxy(), [[0, 0, 3, 3]]]),
                parts=np.append(entry.part_indices(), PARTS.index("wheel")),
                scores=np.append(np.full(len(entry.annotations), 0.9), 0.3),
                masks=np.concatenate([entry.masks(), false_wheel]),
            ))  # fmt: skip
        empty = np.zeros((len(images), len(PARTS)))
        return PartExtraction(empty.astype(bool), empty, detections)


def test_cocoeval_scores_perfect_detections_as_perfect(shape_world: Path, tmp_path: Path) -> None:
    files = split_paths(shape_world, "test")
    metrics = evaluate_part_extractor(GroundTruthExtractor(*files), *files, batch_size=3,
                                      output_file=tmp_path / "metrics.json", progress=False)
    assert metrics["map_box"] == pytest.approx(1.0) and metrics["map_mask"] == pytest.approx(1.0)
    assert metrics["map_box_50"] == pytest.approx(1.0) and metrics["map_mask_50"] == pytest.approx(1.0)
    # the false wheels score below the threshold: they count for mAP (ranked last), not for the sets
    assert metrics["part_precision"] == 1.0 and metrics["part_recall"] == 1.0
    assert json.loads((tmp_path / "metrics.json").read_text())["images"] == 8
    lowered = evaluate_part_extractor(GroundTruthExtractor(*files), *files, score_threshold=0.2, progress=False)
    assert lowered["part_precision"] < 1.0 and lowered["part_recall"] == 1.0


def test_cocoeval_runs_on_a_trained_models_predictions(shape_world: Path,
                                                      three_epochs: tuple[PartExtractorTrainingResult, Path]) -> None:
    model = load_part_extractor_weights(tiny_k(), three_epochs[0].weights_path)
    with torch.no_grad():  # three epochs leave K shy; make it answer with a part for every proposal
        model.roi_heads.box_predictor.cls_score.bias[0] = -20.0
    metrics = evaluate_part_extractor(PartExtractor(model, score_threshold=0.5), *split_paths(shape_world, "test"),
                                      progress=False)
    assert metrics["images"] == 8 and metrics["detections"] > 0
    for name in ("map_box", "map_mask", "map_box_50", "map_mask_50", "part_precision", "part_recall"):
        assert 0.0 <= metrics[name] <= 1.0, name


def test_part_set_precision_and_recall() -> None:
    predicted = np.zeros((3, len(PARTS)), dtype=bool)
    actual = np.zeros_like(predicted)
    predicted[0, [0, 1]] = True  # one of two right
    actual[0, [0, 2, 3]] = True  # one of three found
    actual[1, 4] = True  # nothing predicted: precision 1, recall 0
    metrics = part_set_precision_recall(predicted, actual)  # image 2: nothing either way, both 1
    assert metrics["part_precision"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert metrics["part_recall"] == pytest.approx((1 / 3 + 0 + 1) / 3)
    assert metrics["part_precision_micro"] == pytest.approx(1 / 2)
    assert metrics["part_recall_micro"] == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="differ in shape"):
        part_set_precision_recall(predicted, actual[:2])


def test_cache_key_follows_what_determines_the_weights() -> None:
    spec = PartExtractorSpec("lean", 128, training(3))
    key = part_extractor_cache_key(spec, "data-a")
    assert key.startswith("k-") and key == part_extractor_cache_key(PartExtractorSpec("lean", 128, training(3)), "data-a")
    assert key != part_extractor_cache_key(PartExtractorSpec("lean", 96, training(3)), "data-a")
    assert key != part_extractor_cache_key(PartExtractorSpec("slim", 128, training(3)), "data-a")  # no K reused for another
    assert key != part_extractor_cache_key(PartExtractorSpec("lean", 128, training(4)), "data-a")
    assert key != part_extractor_cache_key(spec, "data-b")
    # the detection rule applies at inference only: another score threshold reuses the trained K
    from unmask.models.part_extractor import DetectionRule

    assert key == part_extractor_cache_key(PartExtractorSpec("lean", 128, training(3), DetectionRule(0.7)), "data-a")


def test_a_random_start_is_never_cached_as_a_pretrained_k(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without COCO weights (and random init allowed), K trains from random weights: its cache
    folder must be that of a K from scratch, not the pretrained K's, which would be reused once
    the weights are there."""
    from unmask.train import part_extractor as module

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no COCO weights here
    built = []
    monkeypatch.setattr(PartExtractorSpec, "build", lambda self, **kwargs: built.append(self) or tiny_k())
    trained = []
    monkeypatch.setattr(module, "train_part_extractor", lambda model, *args, checkpoint_dir, **kwargs:
                        trained.append(checkpoint_dir) or loop.save_weights(checkpoint_dir / WEIGHTS_FILE, model,
                                                                          kwargs["metadata"]))
    spec = PartExtractorSpec("resnet50-fpn", 64, training(1), pretrained=True)
    _, folder = module.train_or_load_part_extractor(
        spec, train_set=lambda: None, val_set=lambda: None, data_fingerprint="data",
        cache=loop.ModelCache(tmp_path, Runtime.start("cpu", verbosity=0), allow_random_init=True))
    from dataclasses import replace

    assert folder.name == part_extractor_cache_key(replace(spec, pretrained=False), "data")
    assert folder.name != part_extractor_cache_key(spec, "data")

"""UnMask from a finished run's folder: the run's M, K, threshold and images, rebuilt exactly (the
numbers of its ``per_image.csv``), and refused when they are not the run's."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unmask.evaluation import Predictions, Scored, fix_thresholds
from unmask.parts import PARTS
from unmask.protect import FinishedRun, RunFolderError, UnMask, UnMaskResult
from unmask.train.loop import load_weights, save_weights


def clean_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "per_image.csv", newline="", encoding="utf-8") as handle:
        return [row for row in csv.DictReader(handle) if row["attack"] == "clean"]


def as_rows(result: UnMaskResult) -> list[dict[str, str]]:
    """The result in ``per_image.csv``'s words."""
    return [{"m_prediction": m, "parts": ";".join(PARTS[j] for j in np.flatnonzero(parts)),
             "detection_score": f"{score:.4f}", "unmask_prediction": unmask or ""}
            for m, parts, score, unmask in zip(result.names(result.m_prediction), result.parts.numpy(),
                                               result.detection_score.tolist(), result.names(result.unmask_prediction),
                                               strict=True)]


def copied(run: Path, tmp_path: Path) -> Path:
    """A copy of the run's output folder (the run and its model cache), to change."""
    shutil.copytree(run.parent, tmp_path / "results")
    return tmp_path / "results" / run.name


def test_from_run_reproduces_the_runs_clean_test_rows_exactly(tiny_run):
    run = FinishedRun.open(tiny_run)
    defense = UnMask.from_run(run)
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert defense.threshold == metrics["thresholds"]["set_jaccard"] == run.threshold(0.1)
    test = run.images("test")
    rows = clean_rows(tiny_run)
    assert list(test.names) == [row["image"] for row in rows] and len(rows) == 6
    result = defense(test.images)
    assert as_rows(result) == [{key: row[key] for key in as_rows(result)[0]} for row in rows]
    assert len({row["parts"] for row in rows}) > 2, "K's parts differ between images: the comparison means something"
    saved = Scored.of(Predictions.load(tiny_run / "clean.npz"), run.class_set)
    assert result.flagged.tolist() == (saved.detection >= defense.threshold).tolist()
    assert result.unmask_prediction.tolist() == saved.unmask.tolist()


def test_the_run_records_its_models_weights_files(tiny_run):
    weights = json.loads((tiny_run / "metrics.json").read_text())["models"]["weights"]
    assert weights["m"].startswith("models/m-") and weights["m"].endswith("/weights.pt")
    assert weights["adv_trained"] is None
    assert Path(weights["k"]).is_absolute() and Path(weights["k"]).name == "k-weights.pt"  # --k-checkpoint's
    run = FinishedRun.open(tiny_run)
    assert run.trained_part_extractor.weights_file == Path(weights["k"])


def test_a_run_that_does_not_record_its_weights_files_is_read_by_its_digests(tiny_run, tmp_path):
    folder = copied(tiny_run, tmp_path)
    metrics = json.loads((folder / "metrics.json").read_text())
    del metrics["models"]["weights"]  # as runs made before the record did
    (folder / "metrics.json").write_text(json.dumps(metrics))
    run = FinishedRun.open(folder)  # M from the run's model cache, K from its --k-checkpoint
    test = run.images("test")
    assert as_rows(UnMask.from_run(run)(test.images)) == as_rows(UnMask.from_run(tiny_run)(test.images))
    assert run.classifier.weights == FinishedRun.open(tiny_run).classifier.weights


def test_models_other_than_the_runs_are_refused(tiny_run, tmp_path):
    folder = copied(tiny_run, tmp_path)
    (m_file,) = (folder.parent / "models").glob("m-*/weights.pt")
    weights, metadata = load_weights(m_file)
    model = FinishedRun.open(tiny_run).classifier.model
    model.load_state_dict({key: value + 0.01 if value.is_floating_point() else value for key, value in weights.items()})
    save_weights(m_file, model, metadata)  # the same architecture and classes, other weights
    with pytest.raises(RunFolderError, match=r"no weights file with the M run .* digest .* tried: .*m-"):
        FinishedRun.open(folder).classifier  # noqa: B018


def test_images_other_than_the_runs_are_refused(tiny_run, tmp_path):
    run = FinishedRun.open(tiny_run)
    data = Path(json.loads((tiny_run / "config.json").read_text())["data_dir"])
    shutil.copytree(data / run.class_set.name, tmp_path / "data" / run.class_set.name)
    assert FinishedRun.open(tiny_run, data_dir=tmp_path / "data").images("test").names == run.images("test").names
    (first,) = sorted((tmp_path / "data" / run.class_set.name / "test" / "car").iterdir())[:1]
    pixels = np.array(Image.open(first))
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(first)
    with pytest.raises(RunFolderError, match="test images under .* are not those run .* evaluated"):
        FinishedRun.open(tiny_run, data_dir=tmp_path / "data").images("test")
    with pytest.raises(RunFolderError, match="pass data_dir="):
        FinishedRun.open(tiny_run, data_dir=tmp_path / "nowhere").images("val")


def test_thresholds_at_another_rate_are_fixed_on_the_runs_validation_images(tiny_run):
    run = FinishedRun.open(tiny_run)
    saved = Scored.of(Predictions.load(tiny_run / "validation.npz"), run.class_set)
    assert run.threshold(0.5) == fix_thresholds(saved, 0.5).set_jaccard
    defense = UnMask.from_run(run, fpr=0.5)
    assert defense.threshold == run.threshold(0.5)
    validation = run.images("val")
    assert defense.fix_threshold(validation.images, fpr=0.5) == run.threshold(0.5)
    assert defense.fix_threshold(validation.images, fpr=0.1) == run.threshold(0.1)


def test_a_folder_that_is_not_a_finished_run_is_named(tmp_path):
    with pytest.raises(RunFolderError, match=r"config.json does not exist; expected the run's configuration"):
        FinishedRun.open(tmp_path)


def test_the_run_draws_its_training_curves(tiny_run):
    for extension in ("png", "pdf"):
        assert (tiny_run / f"training.{extension}").stat().st_size > 1000


def test_the_runs_decision_rule_is_fixed_as_the_run_fixed_its_threshold(tiny_run):
    """A run made with the paper's rule deploys it: ``FinishedRun.rule`` fixes it on the run's
    validation predictions at the run's threshold; a rule asked for by name fixes its own."""
    run = FinishedRun.open(tiny_run)
    rule = run.rule()
    assert rule.name == "paper" and not rule.reject and rule.threshold == run.threshold()
    assert run.rule(0.2).threshold == run.threshold(0.2)
    defense = UnMask.from_run(run)
    assert defense.rule is None and defense.threshold == run.threshold()

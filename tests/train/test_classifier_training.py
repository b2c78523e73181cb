import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from unmask import cli
from unmask.attacks import GRAY_BOX_ATTACKS, AttackOptions, attack
from unmask.io import CheckpointError, load_checkpoint
from unmask.models.classifier import Classifier, CompactCNN, predict
from unmask.parts import CLASS_SETS
from unmask.train import classifier as training
from unmask.train.classifier import (
    AdversarialTraining,
    ClassifierSpec,
    ClassifierTraining,
    augment_batch,
    classifier_cache_key,
    train_classifier,
)
from unmask.train.loop import load_weights

SIZE = 32
REPOSITORY = Path(__file__).resolve().parents[2]


def stripes(count: int, *, seed: int, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes: faint horizontal, vertical or diagonal stripes of random period, phase and colour, on noise
    (faint: a standard CNN learns them non-robustly, so adversarial training has something to show)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 3
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                          indexing="ij")
    images = torch.empty(count, 3, size, size)
    for index, label in enumerate(labels.tolist()):
        period, phase = 4 + 4 * torch.rand(2, generator=generator)
        coordinate = (y, x, (x + y) / 2)[label]
        wave = (torch.sin(2 * torch.pi * (coordinate + phase) / period) > 0).float()
        colour = torch.rand(3, 1, 1, generator=generator)
        noise = 0.2 * torch.rand(3, size, size, generator=generator)
        images[index] = (0.2 + 0.3 * wave * colour + noise).clamp(0, 1)
    return images, labels


def datasets(train: int = 120, val: int = 30) -> tuple[TensorDataset, TensorDataset]:
    return TensorDataset(*stripes(train, seed=0)), TensorDataset(*stripes(val, seed=1))


def fresh_model() -> torch.nn.Module:
    """The compact CNN, twice as wide as the demo's: at 32 px the demo's has too little to learn with."""
    torch.manual_seed(0)
    return Classifier(CompactCNN(3, width=32), name="compact", num_classes=3)


def mean_loss(model: torch.nn.Module, dataset: TensorDataset) -> float:
    images, labels = dataset.tensors
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model.eval()(images), labels).item()


def test_training_reduces_the_loss():
    train, val = datasets()
    model = fresh_model()
    before = mean_loss(model, train)
    result = train_classifier(model, train, val, ClassifierTraining(epochs=4, batch_size=16, lr=0.05), progress=False)
    assert mean_loss(result.model, train) < 0.8 * before
    assert [record["epoch"] for record in result.history] == [1, 2, 3, 4]
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]


def test_interrupted_training_resumes_exactly(tmp_path, monkeypatch):
    train, val = datasets(train=64, val=16)
    recipe = ClassifierTraining(epochs=3, lr=0.05, batch_size=16, lr_schedule="cosine", augment=True,
                                adversarial=AdversarialTraining(epsilon=4, steps=1, step_size=4))
    options = {"progress": False}
    straight = train_classifier(fresh_model(), train, val, recipe, checkpoint_dir=tmp_path / "straight", **options)

    validate, calls = training._validate, []

    def validate_then_stop(*args, **kwargs):  # an interruption in the second epoch, after its training
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return validate(*args, **kwargs)
    monkeypatch.setattr(training, "_validate", validate_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(fresh_model(), train, val, recipe, checkpoint_dir=tmp_path / "resumed", **options)
    monkeypatch.setattr(training, "_validate", validate)
    assert load_checkpoint(tmp_path / "resumed" / "state.pt")["epoch"] == 1

    resumed = train_classifier(fresh_model(), train, val, recipe, checkpoint_dir=tmp_path / "resumed", **options)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    without_time = [[{k: v for k, v in record.items() if k != "seconds"} for record in result.history]
                    for result in (straight, resumed)]
    assert without_time[0] == without_time[1]
    final = [load_checkpoint(tmp_path / name / "state.pt") for name in ("straight", "resumed")]
    assert all(torch.equal(value, final[1]["model"][key]) for key, value in final[0]["model"].items())
    assert final[0]["scheduler"] == final[1]["scheduler"]


def test_a_finished_run_returns_its_best_epoch_without_training(tmp_path, monkeypatch):
    train, val = datasets()
    recipe = ClassifierTraining(epochs=3, lr=0.05)
    first = train_classifier(fresh_model(), train, val, recipe, checkpoint_dir=tmp_path, progress=False)
    scores = [record["score"] for record in first.history]
    assert first.best_epoch == scores.index(max(scores)) + 1
    best, metadata = load_weights(tmp_path / "weights.pt")
    assert metadata == {}  # train_classifier alone records nothing; train_or_load_classifier records the spec
    assert all(torch.equal(value, best[key]) for key, value in first.model.state_dict().items())

    monkeypatch.setattr(training, "_train_epoch", lambda *args, **kwargs: pytest.fail("trained again"))
    again = train_classifier(fresh_model(), train, val, recipe, checkpoint_dir=tmp_path, progress=False)
    assert again.best_epoch == first.best_epoch and again.history == first.history
    assert all(torch.equal(value, best[key]) for key, value in again.model.state_dict().items())
    with pytest.raises(CheckpointError, match=r"state.pt was written by a training run with other settings \(lr"):
        train_classifier(fresh_model(), train, val, ClassifierTraining(epochs=3, lr=0.1), checkpoint_dir=tmp_path,
                         progress=False)


def test_adversarial_training_makes_the_model_more_robust_to_pgd():
    train, val = TensorDataset(*stripes(240, seed=0)), TensorDataset(*stripes(30, seed=1))
    images, labels = stripes(90, seed=2)
    robust_accuracy = []
    for adversarial in (None, AdversarialTraining(epsilon=8, steps=3, step_size=4)):
        model = train_classifier(fresh_model(), train, val, ClassifierTraining(epochs=4, lr=0.05, adversarial=adversarial),
                                 progress=False).model
        assert (predict(model, images) == labels).float().mean() > 0.8
        torch.manual_seed(0)
        adversarials = attack(model, images, labels, GRAY_BOX_ATTACKS.vector("pgd_linf", 8), AttackOptions(steps=10))
        robust_accuracy.append((predict(model, adversarials) == labels).float().mean().item())
    standard, adversarially_trained = robust_accuracy
    assert adversarially_trained > standard + 0.25, robust_accuracy


def test_augmentation_keeps_shape_and_range_and_follows_the_seed():
    images = stripes(6, seed=0)[0]
    torch.manual_seed(3)
    first = augment_batch(images)
    torch.manual_seed(3)
    assert torch.equal(first, augment_batch(images))
    assert first.shape == images.shape and 0 <= first.min() and first.max() <= 1
    assert not torch.equal(first, images)


def spec(**changes):
    training = ClassifierTraining(**{"epochs": 10, "lr": 0.01, "lr_schedule": "cosine", **changes})
    return ClassifierSpec("compact", ("car", "person", "train"), 64, training)


def test_cache_keys_name_what_determines_the_model():
    standard, adversarial = spec(), spec(adversarial=AdversarialTraining())
    assert classifier_cache_key(standard, "abc").startswith("m-")
    assert classifier_cache_key(adversarial, "abc").startswith("m-adv-")
    assert classifier_cache_key(standard, "abc") == classifier_cache_key(spec(), "abc")
    assert classifier_cache_key(standard, "abc") != classifier_cache_key(spec(lr=0.02), "abc")
    assert classifier_cache_key(standard, "abc") != classifier_cache_key(standard, "abd")  # other data
    assert classifier_cache_key(adversarial, "abc") != classifier_cache_key(
        spec(adversarial=AdversarialTraining(epsilon=8.0)), "abc")


def write_folders(root: Path, class_set: str = "cs3-1", per_split: dict[str, int] | None = None) -> None:
    for split, count in (per_split or {"train": 60, "val": 15, "test": 15}).items():
        images, labels = stripes(count, seed=len(split))
        for index, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
            folder = root / class_set / split / CLASS_SETS[class_set][label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy()).save(folder / f"{index}.png")


TRAIN_M = ["train-m", "--dataset", "unmask", "--class-set", "cs3-1", "--image-size", "32", "--epochs", "2", "--adv-epochs", "1",
           "--attack-steps", "2", "--lr", "0.05", "--verbosity", "0"]


def test_train_m_trains_caches_and_reports_both_models(tmp_path, capsys):
    write_folders(tmp_path / "data")
    arguments = [*TRAIN_M, "--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "results")]
    assert cli.main(arguments) == 0
    output = capsys.readouterr().out
    assert "M (compact" in output and "adversarially trained M (compact" in output
    assert output.count("pgd_linf:16") == 2
    folders = [path.name for path in (tmp_path / "results" / "models").iterdir()]
    assert all((tmp_path / "results" / "models" / name / "weights.pt").is_file() for name in folders)
    assert sorted(name.rpartition("-")[0] for name in folders) == ["m", "m-adv"]
    assert cli.main(arguments) == 0  # from the cache
    assert capsys.readouterr().out.splitlines()[-2:] == output.splitlines()[-2:]


def test_train_m_without_data_points_to_prepare(tmp_path, capsys):
    assert cli.main([*TRAIN_M, "--data-dir", str(tmp_path / "nothing"), "--output-dir", str(tmp_path / "results")]) == 1
    assert "prepare --dataset synthetic" in capsys.readouterr().err


@pytest.mark.slow
def test_train_m_runs_under_torchrun(tmp_path):
    write_folders(tmp_path / "data")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "main.py", *TRAIN_M,
               "--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "results"), "--device", "cpu"]
    run = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("test accuracy") == 2  # printed by rank 0 only
    assert len(list((tmp_path / "results" / "models").iterdir())) == 2


def test_weights_for_another_class_set_of_the_same_size_are_refused(tmp_path):
    from unmask.io import CheckpointError
    from unmask.models.classifier import build_classifier
    from unmask.train.classifier import load_trained_classifier
    from unmask.train.loop import save_weights

    cs3_1 = ClassifierSpec("compact", CLASS_SETS["cs3-1"], 32, ClassifierTraining())
    cs3_2 = ClassifierSpec("compact", CLASS_SETS["cs3-2"], 32, ClassifierTraining())
    save_weights(tmp_path / "weights.pt", build_classifier("compact", 3), cs3_1.metadata)
    assert load_trained_classifier(tmp_path / "weights.pt", cs3_1) is not None
    with pytest.raises(CheckpointError, match=r"weights.pt holds weights for another model: classes \['car', 'person', "
                                              r"'train'\] \(this run: \['person', 'dog', 'bird'\]\)"):
        load_trained_classifier(tmp_path / "weights.pt", cs3_2)
    with pytest.raises(CheckpointError, match="image_size 32"):
        load_trained_classifier(tmp_path / "weights.pt", dataclasses.replace(cs3_1, image_size=64))
    # a plain state dict (a user's own file) cannot be checked: it loads, and the console says so
    torch.save(build_classifier("compact", 3).state_dict(), tmp_path / "plain.pt")
    messages = []
    load_trained_classifier(tmp_path / "plain.pt", cs3_2, log=messages.append)
    assert "does not record its model's architecture, classes, image_size" in messages[0]


def test_mixed_precision_on_a_gpu_is_part_of_what_makes_m():
    plain = ClassifierSpec("compact", CLASS_SETS["cs3-1"], 32, ClassifierTraining())
    amp = ClassifierSpec("compact", CLASS_SETS["cs3-1"], 32, ClassifierTraining(amp=True))
    assert classifier_cache_key(plain, "abc") != classifier_cache_key(amp, "abc")

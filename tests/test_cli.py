import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from unmask.cli import build_parser, main, parse
from unmask.config import PROFILES, Config, ConfigError, resolve_config
from unmask.experiment import build_plan

ROOT = Path(__file__).resolve().parents[1]


def test_every_config_field_is_a_documented_option():
    help_text = build_parser().format_help()
    for field in dataclasses.fields(Config):
        assert "--" + field.name.replace("_", "-") in help_text
        assert field.metadata.get("help"), f"{field.name} has no help text"


def test_profiles_only_name_existing_fields():
    names = {field.name for field in dataclasses.fields(Config)}
    for profile in PROFILES.values():
        assert set(profile) <= names


def test_resolution_order_defaults_settings_profile_command_line():
    assert resolve_config().model == Config().model
    assert resolve_config(profile="paper").model == "resnet50"
    paper = resolve_config(profile="paper", overrides={"model": "densenet121"})
    assert paper.model == "densenet121" and paper.image_size == 150
    settings = {"model": "resnet18", "class_set": "cs3-1"}
    assert (resolve_config(settings).model, resolve_config(settings).class_set) == ("resnet18", "cs3-1")
    assert resolve_config(settings, "paper").model == "resnet50"  # the profile comes after config.py
    assert resolve_config(settings, overrides={"model": "vgg16"}).model == "vgg16"


def test_the_repository_config_file_feeds_main():
    import config as repository_config

    assert set(repository_config.PROFILES) >= set(PROFILES)
    for name in repository_config.SETTINGS:
        assert name in {field.name for field in dataclasses.fields(Config)}


def test_command_line_overrides_are_parsed_and_typed():
    args = build_parser().parse_args(
        ["train-m", "--class-set", "CS3b", "--epochs", "3", "--no-adv-training", "--attacks", "pgd_linf:8, mim_l2:300",
         "--out", "elsewhere", "--images-per-class", "12"]
    )
    assert args.command == "train-m"
    assert (args.class_set, args.epochs, args.adv_training) == ("CS3b", 3, False)
    assert args.attacks == ("pgd_linf:8", "mim_l2:300")
    assert (args.data_dir, args.synthetic_images_per_class) == ("elsewhere", 12)
    plan = build_plan(resolve_config(overrides={"class_set": args.class_set}))
    assert plan.class_set.name == "cs3-2"  # the paper's alias resolves to the code name
    assert plan.class_set.classes == ("person", "dog", "bird")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"class_set": "nope"}, "cs3-1, cs3-2, cs5-1, cs5-2"),
        ({"model": "resnet9"}, "compact, resnet18, resnet50, densenet121, vgg16, resnet101"),
        ({"k_model": "yolo"}, "lean, resnet50-fpn"),
        ({"dataset": "imagenet"}, "synthetic, unmask"),
        ({"attacks": ("pgd_linf:8", "boom:3")}, "paper, pgd_linf, pgd_l2, mim_linf, mim_l2, fgsm"),
        ({"attacks": ("pgd_linf",)}, "name:epsilon"),
        ({"optimizer": "lion"}, "sgd, adam"),
        ({"pascal_merge": "fuzzy"}, "explicit, original"),
        ({"image_size": 8}, "too small"),
        ({"epochs": 0}, "--epochs: expected a number >= 1, got 0"),
        ({"detection_fpr": 1.5}, "--detection-fpr: expected a number <= 1, got 1.5"),
        ({"grid_models": ("compact", "alexnet")}, "alexnet"),
        ({"no_such_option": 1}, "unknown option"),
        # non-finite numbers (argparse's float() takes "inf" and "nan") and meaningless budgets
        ({"lr": float("inf")}, "--lr: expected a finite number, got inf"),
        ({"mim_decay": float("nan")}, "--mim-decay: expected a finite number, got nan"),
        ({"mim_decay": -1.0}, "--mim-decay: expected a number >= 0, got -1"),
        ({"k_lr": float("nan")}, "--k-lr: expected a finite number, got nan"),
        ({"detection_fpr": float("nan")}, "--detection-fpr: expected a finite number"),
        ({"adv_epsilon": 300.0}, "--adv-epsilon: expected a number <= 255, got 300 \\(255 is the whole 0-255"),
        ({"attacks": ("pgd_linf:inf",)}, "--attacks: attack pgd_linf: epsilon must be a finite number > 0"),
        ({"attacks": ("mim_l2:nan",)}, "--attacks: attack mim_l2: epsilon must be a finite number > 0"),
        ({"attacks": ("pgd_linf:1e9",)}, "--attacks: attack pgd_linf: epsilon 1e\\+09 exceeds 255, the whole 0-255"),
    ],
)
def test_invalid_values_fail_at_once_listing_the_valid_ones(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_plan(resolve_config(overrides=overrides))


def test_unknown_profile():
    with pytest.raises(ConfigError, match="demo, paper"):
        resolve_config(profile="huge")


def test_main_exits_2_with_the_valid_names(capsys):
    assert main(["--class-set", "nope"]) == 2
    assert "expected one of: cs3-1, cs3-2, cs5-1, cs5-2" in capsys.readouterr().err


def test_the_plan_carries_each_option_once_to_its_component():
    _, plan, args = parse(["train-m", "--class-set", "CS3a", "--attacks", "pgd_linf:8,mim_l2:300", "--attack-steps", "7",
                        "--k-score-threshold", "0.25", "--adv-epochs", "3", "--epochs", "4", "--m-adv-trained"])
    assert args.command == "train-m"
    assert plan.class_set.classes == ("car", "person", "train") and plan.m.classes == plan.class_set.classes
    assert [v.label for v in plan.vectors] == ["pgd_linf:8", "mim_l2:300"] and plan.attack.steps == 7
    assert plan.k.rule.score_threshold == 0.25
    # with --m-adv-trained UnMask protects the adversarially trained M, which is also the baseline
    assert plan.m is plan.adv_trained and plan.m.training.epochs == 3 and plan.m.training.adversarial is not None


def test_help_runs_as_a_script():
    result = subprocess.run([sys.executable, "main.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0
    assert "--class-set" in result.stdout and "--k-score-threshold" in result.stdout


# --- expected errors end in one line, never a traceback -------------------------------------------


def _tiny_dataset(root: Path, *, size: int = 8) -> Path:
    """M's layout for cs5-2 with one tiny image per class and split, and K's with one image per
    split: complete, so that only what a test breaks is wrong with it."""
    import numpy as np
    from PIL import Image

    from unmask.data.coco import mask_to_annotation, split_paths, write_coco

    for split in ("train", "val", "test"):
        for number, name in enumerate(("dog", "car", "bird", "train", "person")):
            folder = root / "cs5-2" / split / name
            folder.mkdir(parents=True)
            Image.new("RGB", (size, size), (40 * number, 90, 160)).save(folder / "0.png")
        annotation_file, image_dir = split_paths(root, split)
        image_dir.mkdir(parents=True)
        Image.new("RGB", (size, size), (200, 90, 20)).save(image_dir / "0.png")
        mask = np.zeros((size, size), dtype=bool)
        mask[2:6, 2:6] = True
        write_coco(annotation_file, images=[{"id": 1, "file_name": "0.png", "height": size, "width": size}],
                   annotations=[mask_to_annotation(mask, annotation_id=1, image_id=1, category_id=0)])
    return root


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_missing_pretrained_weights_offline_end_in_one_error_line(tmp_path, monkeypatch, capsys):
    import torch

    from unmask.models import classifier

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(classifier, "_try_download", lambda url, file: None)  # offline
    data = _tiny_dataset(tmp_path / "data")
    argv = ["--profile", "paper", "--dataset", "unmask", "--data-dir", str(data), "--output-dir",
            str(tmp_path / "results"), "--verbosity", "0"]
    assert main(argv) == 1
    line = _error_line(capsys)
    assert line.startswith("error: the ImageNet weights of resnet50 are not on this machine and cannot be downloaded")
    assert "--allow-random-init" in line
    with pytest.raises(classifier.PretrainedWeightsError):  # --verbosity 2 keeps the traceback
        main([*argv[:-1], "2"])


def test_several_bad_images_are_listed_in_one_error_line(tmp_path, capsys):
    data = _tiny_dataset(tmp_path / "data")
    (data / "cs5-2" / "train" / "dog" / "0.png").write_bytes(b"not an image")
    (data / "cs5-2" / "train" / "bird" / "1.jpg").write_bytes(b"")
    assert main(["train-m", "--dataset", "unmask", "--data-dir", str(data), "--output-dir", str(tmp_path / "r"),
                 "--verbosity", "0"]) == 1
    line = _error_line(capsys)
    # every split the run reads is checked before any training, so one error names them all
    assert line.startswith(f"error: 2 of 16 image files of {data / 'cs5-2'} (train, val, test) cannot be used: ")
    assert "dog/0.png" in line and "bird/1.jpg" in line


def test_a_full_disk_ends_in_one_error_line(tmp_path, monkeypatch, capsys):
    import torch

    def full_disk(obj, file):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 3980")

    monkeypatch.setattr(torch, "save", full_disk)
    data = _tiny_dataset(tmp_path / "data", size=32)
    assert main(["train-m", "--dataset", "unmask", "--data-dir", str(data), "--output-dir", str(tmp_path / "r"),
                 "--image-size", "32", "--epochs", "1", "--no-adv-training", "--verbosity", "0"]) == 1
    line = _error_line(capsys)
    assert line.startswith(f"error: no space left on device while writing {tmp_path / 'r' / 'models'}")


def test_a_user_checkpoint_that_is_not_weights_ends_in_one_error_line_before_any_work(tmp_path, capsys):
    import random

    import torch

    notes, evil = tmp_path / "notes.pt", tmp_path / "evil.pt"
    notes.write_text("not a checkpoint")
    torch.save({"callback": random.Random}, evil)
    for option, path in (("--m-checkpoint", notes), ("--k-checkpoint", evil)):
        # no data folder: the file is checked first
        assert main(["train-m", "--dataset", "unmask", "--data-dir", str(tmp_path / "none"), option, str(path),
                     "--verbosity", "0"]) == 1
        line = _error_line(capsys)
        assert line.startswith(f"error: {path} (given with {option}) is not a weights file of the expected kind: ")
        assert "weights_only" not in line and "delete" not in line


def test_non_finite_numbers_are_refused_before_any_work(capsys):
    assert main(["--lr", "inf"]) == 2
    assert "--lr: expected a finite number, got inf" in capsys.readouterr().err
    assert main(["--attacks", "pgd_linf:inf"]) == 2
    assert "--attacks: attack pgd_linf: epsilon must be a finite number > 0" in capsys.readouterr().err

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from config import PROFILES, Config
from unmask.cli import ConfigError, build_parser, main, resolve_config

ROOT = Path(__file__).resolve().parents[1]


def test_every_config_field_is_a_documented_option():
    help_text = build_parser(Config, PROFILES).format_help()
    for field in dataclasses.fields(Config):
        assert "--" + field.name.replace("_", "-") in help_text
        assert field.metadata.get("help"), f"{field.name} has no help text"


def test_profiles_only_name_existing_fields():
    names = {field.name for field in dataclasses.fields(Config)}
    for profile in PROFILES.values():
        assert set(profile) <= names


def test_resolution_order_defaults_profile_command_line():
    assert resolve_config(Config, PROFILES).model == Config().model
    assert resolve_config(Config, PROFILES, profile="paper").model == "resnet50"
    paper = resolve_config(Config, PROFILES, {"model": "densenet121"}, profile="paper")
    assert paper.model == "densenet121" and paper.image_size == 150


def test_command_line_overrides_are_parsed_and_typed():
    args = build_parser(Config, PROFILES).parse_args(
        ["train-m", "--class-set", "CS3b", "--epochs", "3", "--no-adv-training", "--attacks", "pgd_linf:8, mim_l2:300",
         "--out", "elsewhere", "--images-per-class", "12"]
    )
    assert args.command == "train-m"
    assert (args.class_set, args.epochs, args.adv_training) == ("CS3b", 3, False)
    assert args.attacks == ("pgd_linf:8", "mim_l2:300")
    assert (args.data_dir, args.synthetic_images_per_class) == ("elsewhere", 12)
    config = resolve_config(Config, PROFILES, {"class_set": args.class_set})
    assert config.class_set == "cs3-2"  # the paper's alias resolves to the code name


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
        ({"epochs": 0}, "positive"),
        ({"detection_fpr": 1.5}, r"\[0, 1\]"),
        ({"grid_models": ("compact", "alexnet")}, "alexnet"),
        ({"no_such_option": 1}, "unknown option"),
    ],
)
def test_invalid_values_fail_at_once_listing_the_valid_ones(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(Config, PROFILES, overrides)


def test_unknown_profile():
    with pytest.raises(ConfigError, match="demo, paper"):
        resolve_config(Config, PROFILES, profile="huge")


def test_main_exits_2_with_the_valid_names(capsys):
    assert main(["--class-set", "nope"], config_class=Config, profiles=PROFILES) == 2
    assert "expected one of: cs3-1, cs3-2, cs5-1, cs5-2" in capsys.readouterr().err


def test_help_runs_as_a_script():
    result = subprocess.run([sys.executable, "main.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0
    assert "--class-set" in result.stdout and "--k-score-threshold" in result.stdout

"""Command line: ``python main.py [command] [--option value ...]``.

Every field of ``config.Config`` is an option; values resolve as defaults -> ``--profile`` ->
command line, and are validated before any work starts, so a typo fails at once with the list
of valid names instead of deep inside a run.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from unmask.io import CheckpointError
from unmask.parts import MERGE_MODES, UnknownNameError, class_set_name


class ConfigError(ValueError):
    """An invalid configuration value; the message names the option and what was expected."""


# --- building the parser from the dataclass --------------------------------------------------


def _field_types(config_class: type) -> dict[str, Any]:
    return typing.get_type_hints(config_class)


def _comma_separated(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def build_parser(config_class: type, profiles: Mapping[str, Mapping[str, Any]]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python main.py",
        usage="python main.py [{run,prepare,train-m,train-k,examples,figures}] [--option VALUE ...]",
        description="UnMask: adversarial detection and defense through building-block alignment. "
        "Every option overrides the field of the same name in config.py.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    commands = "; ".join(f"{name}: {help_text}" for name, (help_text, _) in COMMANDS.items())
    parser.add_argument("command", nargs="?", default="run", choices=tuple(COMMANDS), help=commands)
    parser.add_argument("--profile", choices=tuple(profiles), default="demo",
                        help="Named set of overrides from config.PROFILES, applied before the command line.")
    parser.add_argument("--grid", action="store_true",
                        help="run: the original's experiment grid (grid class sets x grid models x "
                        "{adversarial training, none}), skipping finished configurations.")

    types = _field_types(config_class)
    defaults = config_class()
    group = parser.add_argument_group("general")
    for config_field in dataclasses.fields(config_class):
        metadata = config_field.metadata
        if "group" in metadata:
            group = parser.add_argument_group(metadata["group"])
        flags = ["--" + config_field.name.replace("_", "-"), *metadata.get("aliases", ())]
        kind = types[config_field.name]
        default = getattr(defaults, config_field.name)
        common: dict[str, Any] = {"dest": config_field.name, "default": argparse.SUPPRESS,
                                  "help": f"{metadata.get('help', '')} (default: {_show(default)})"}
        if kind is bool:
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, **common)
        elif typing.get_origin(kind) is tuple:
            group.add_argument(*flags, type=_comma_separated, metavar="A,B,...", **common)
        else:
            group.add_argument(*flags, type=kind, metavar=kind.__name__.upper(), **common)
    # defaults are shown in each help text; the formatter would print "==SUPPRESS==" otherwise
    parser.formatter_class = argparse.HelpFormatter
    return parser


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "(none)"
    return repr(value) if isinstance(value, str) else str(value)


# --- resolving and validating ---------------------------------------------------------------


def resolve_config(
    config_class: type,
    profiles: Mapping[str, Mapping[str, Any]],
    overrides: Mapping[str, Any] | None = None,
    profile: str = "demo",
) -> Any:
    """Defaults -> profile -> overrides, validated and normalised (class-set aliases resolved)."""
    if profile not in profiles:
        raise ConfigError(f"unknown profile {profile!r}; expected one of: {', '.join(profiles)}")
    names = {f.name for f in dataclasses.fields(config_class)}
    values: dict[str, Any] = {}
    for source, mapping in ((f"profile {profile!r}", profiles[profile]), ("overrides", overrides or {})):
        for key, value in mapping.items():
            if key not in names:
                raise ConfigError(f"{source}: unknown option {key!r}; expected one of: {', '.join(sorted(names))}")
            values[key] = value
    config = config_class(**values)
    validate(config)
    return config


def validate(config: Any) -> None:
    """Check every name against its registry and every number against its range; normalise the
    class set to its code name. Raises ``ConfigError`` listing what was expected."""
    from unmask.attacks import parse_attack_vectors
    from unmask.data import DATASETS
    from unmask.models.classifier import CLASSIFIER_NAMES
    from unmask.models.part_extractor import PART_EXTRACTOR_NAMES
    from unmask.runtime import resolve_device
    from unmask.train.classifier import LR_SCHEDULES, OPTIMIZERS

    def choose(option: str, value: str, valid: Sequence[str]) -> None:
        if value not in valid:
            raise ConfigError(f"--{option}: unknown value {value!r}; expected one of: {', '.join(valid)}")

    try:
        config.class_set = class_set_name(config.class_set)
        for name in config.grid_class_sets:
            class_set_name(name)
        parse_attack_vectors(config.attacks)
    except (UnknownNameError, ValueError) as error:
        raise ConfigError(str(error)) from None
    choose("dataset", config.dataset, DATASETS)
    choose("model", config.model, CLASSIFIER_NAMES)
    for name in config.grid_models:
        choose("grid-models", name, CLASSIFIER_NAMES)
    choose("k-model", config.k_model, PART_EXTRACTOR_NAMES)
    choose("optimizer", config.optimizer, OPTIMIZERS)
    choose("lr-schedule", config.lr_schedule, LR_SCHEDULES)
    choose("pascal-merge", config.pascal_merge, MERGE_MODES)
    try:
        resolve_device(config.device)
    except ValueError as error:
        raise ConfigError(f"--device: {error}") from None

    minimum = 32
    if config.image_size < minimum:
        raise ConfigError(f"--image-size: {config.image_size} is too small; parts stop being recognisable "
                          f"below {minimum} pixels (the original uses 150)")
    positive = ("batch_size", "epochs", "k_epochs", "k_batch_size", "attack_steps", "attack_batch_size",
                "adv_steps", "synthetic_images_per_class", "synthetic_k_images", "k_max_detections")
    for name in positive:
        if getattr(config, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')}: expected a positive number, got {getattr(config, name)}")
    non_negative = ("lr", "k_lr", "weight_decay", "k_weight_decay", "momentum", "k_momentum", "adv_epochs",
                    "k_warmup_steps", "eval_max_images", "workers", "adv_epsilon", "adv_step_size", "synthetic_workers")
    for name in non_negative:
        value = getattr(config, name)
        if not (value >= 0 and math.isfinite(value)):
            raise ConfigError(f"--{name.replace('_', '-')}: expected a finite number >= 0, got {value}")
    unit_interval = ("detection_fpr", "k_score_threshold", "k_nms_threshold", "synthetic_distractor_prob")
    for name in unit_interval:
        value = getattr(config, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"--{name.replace('_', '-')}: expected a value in [0, 1], got {value}")
    if config.dataset == "synthetic":
        from unmask.data.synthetic import SyntheticDataError
        from unmask.experiment import synthetic_spec

        try:
            synthetic_spec(config)  # the generator's own limits on sizes and counts
        except SyntheticDataError as error:
            raise ConfigError(str(error)) from None


def format_config(config: Any) -> str:
    """The resolved configuration, one ``name = value`` line per field, grouped as in config.py."""
    lines = []
    for config_field in dataclasses.fields(config):
        if "group" in config_field.metadata:
            lines.append(f"[{config_field.metadata['group']}]")
        lines.append(f"  {config_field.name} = {_show(getattr(config, config_field.name))}")
    return "\n".join(lines)


# --- commands --------------------------------------------------------------------------------


def _run(config: Any, args: argparse.Namespace) -> int:
    from unmask.experiment import run_experiment, run_grid

    if args.grid:
        run_grid(config)
    else:
        run_experiment(config)
    return 0


def _prepare(config: Any, args: argparse.Namespace) -> int:
    if getattr(args, "prepare_source", config.dataset) == "pascal-part":
        return _prepare_pascal_part(config, args)
    if config.dataset == "synthetic":
        return _prepare_synthetic(config, args)
    print(f"prepare: the {config.dataset!r} dataset is not generated; download it as the README says.")
    return 1


def _prepare_synthetic(config: Any, args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from unmask.data.synthetic import generate_synthetic, manifest_matches
    from unmask.experiment import synthetic_spec

    spec = synthetic_spec(config)
    root = Path(config.data_dir)
    if manifest_matches(root, spec):
        if config.verbosity > 0:
            print(f"prepare: the synthetic world in {root} matches the configuration (manifest.json); reusing it")
        return 0
    start = time.perf_counter()
    generate_synthetic(root, spec, progress=config.verbosity > 0, workers=config.synthetic_workers or None)
    elapsed = time.perf_counter() - start
    if config.verbosity > 0:
        classes = len(spec.m_classes)
        images = classes * spec.images_per_class + spec.k_images
        print(f"prepare: drew {images} images ({classes} classes x {spec.images_per_class} for M, {spec.k_images} "
              f"for K) into {root} in {elapsed:.1f} s ({images / elapsed:.0f} images/s)")
    return 0


def _prepare_pascal_part(config: Any, args: argparse.Namespace) -> int:
    from unmask.data.pascal_part import convert_pascal_part

    if not config.pascal_root:
        raise ConfigError("prepare --dataset pascal-part needs --pascal-root DIR: the folder holding "
                          "Annotations_Part/ and VOC2010's JPEGImages/")
    if not hasattr(args, "data_dir"):
        # the default data folder holds the synthetic world; K's converted data must not land there by accident
        raise ConfigError("prepare --dataset pascal-part needs --out DIR: K's data is written to DIR/VOC2010/")
    convert_pascal_part(config.pascal_root, config.data_dir, merge_mode=config.pascal_merge, seed=config.seed,
                        progress=config.verbosity > 0)
    return 0


def _train_m(config: Any, args: argparse.Namespace) -> int:
    import torch

    from unmask.attacks import attack
    from unmask.experiment import classifier_data, prepare_data, trained_classifiers
    from unmask.models.classifier import predict
    from unmask.runtime import init_distributed, resolve_device

    device = resolve_device(config.device)
    distributed = init_distributed(device)
    prepare_data(config, distributed)
    data = classifier_data(config)
    protected, baseline = trained_classifiers(config, data, device=device)
    if not distributed.is_main:
        return 0
    test_images, test_labels = data["test"].tensors()
    for title, trained in (("M", protected), ("adversarially trained M", baseline)):
        if trained is None:
            continue
        torch.manual_seed(config.seed)  # the random starts: the same figures on every run
        figures = [f"clean {(predict(trained.model, test_images) == test_labels).float().mean().item():.3f}"]
        for epsilon in (8, 16):
            adversarials = attack(trained.model, test_images, test_labels, "pgd_linf", epsilon,
                                  steps=config.attack_steps, original_step=config.attack_original_step,
                                  batch_size=config.attack_batch_size)
            accuracy = (predict(trained.model, adversarials) == test_labels).float().mean().item()
            figures.append(f"pgd_linf:{epsilon} {accuracy:.3f}")
        print(f"{title} ({trained.description}, {trained.seconds:.1f} s of training): test accuracy "
              f"{', '.join(figures)} ({len(test_labels)} images)")
    return 0


def _train_k(config: Any, args: argparse.Namespace) -> int:
    import json

    from unmask.experiment import part_extractor_metrics, prepare_data, trained_part_extractor
    from unmask.runtime import init_distributed, resolve_device

    device = resolve_device(config.device)
    distributed = init_distributed(device)
    prepare_data(config, distributed)
    extractor, directory = trained_part_extractor(config, device=device)
    if not distributed.is_main:
        return 0
    metrics = part_extractor_metrics(config, extractor, directory)
    if config.verbosity > 0:
        print(json.dumps(metrics, indent=2))
        print(f"train-k: K's weights and test metrics are in {directory}")
    return 0


EXAMPLES_FIGURE = "images/synthetic_examples.png"


def _examples(config: Any, args: argparse.Namespace) -> int:
    from unmask.data.synthetic import render_examples
    from unmask.experiment import synthetic_spec

    path = render_examples(EXAMPLES_FIGURE, spec=synthetic_spec(config))
    if config.verbosity > 0:
        print(f"examples: one synthetic object per class with its part masks saved to {path}")
    return 0


README_FIGURES = ("accuracy", "roc", "example")


def _figures(config: Any, args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from unmask.experiment import run_experiment

    directory = run_experiment(config)  # re-reports a finished run without recomputing it
    for stem in README_FIGURES:
        target = Path("images") / f"results_{stem}.png"
        shutil.copyfile(directory / f"{stem}.png", target)
        if config.verbosity > 0:
            print(f"figures: {directory / f'{stem}.png'} -> {target}")
    return 0


COMMANDS: dict[str, tuple[str, Callable[[Any, argparse.Namespace], int]]] = {
    "run": ("prepare data if missing, train or load M, adversarially trained M and K, attack, evaluate and "
            "report (the default)", _run),
    "prepare": ("generate the synthetic part world (--dataset synthetic) or convert raw PASCAL-Part "
                "(--dataset pascal-part --pascal-root DIR --out DIR)", _prepare),
    "train-m": ("train M and, with --adv-training, the adversarial-training baseline", _train_m),
    "train-k": ("train K and evaluate it on the test split (COCO mAP, part precision and recall)", _train_k),
    "examples": ("render example images with their part masks to images/synthetic_examples.png", _examples),
    "figures": ("run (or re-report) the configured experiment and copy its figures to images/results_*.png, "
                "the ones the README shows", _figures),
}


def main(argv: Sequence[str] | None = None, *, config_class: type | None = None,
         profiles: Mapping[str, Mapping[str, Any]] | None = None) -> int:
    if config_class is None or profiles is None:
        import config as user_config  # the repository's config.py

        config_class, profiles = user_config.Config, user_config.PROFILES
    parser = build_parser(config_class, profiles)
    args = parser.parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class) if hasattr(args, f.name)}
    if args.command == "prepare" and "dataset" in overrides and overrides["dataset"] == "pascal-part":
        # pascal-part is a source for `prepare`, not a dataset an experiment runs on
        args.prepare_source = overrides.pop("dataset")
    try:
        config = resolve_config(config_class, profiles, overrides, args.profile)
    except ConfigError as error:
        print(f"python main.py: error: {error}\n(python main.py --help lists every option)", file=sys.stderr)
        return 2
    if config.verbosity > 0:
        print(f"configuration (profile {args.profile!r}):\n{format_config(config)}\n", file=sys.stderr)
    try:
        return COMMANDS[args.command][1](config, args)
    except (ValueError, CheckpointError, OSError) as error:
        # bad input (names, files, layouts, checkpoints): one clear line; --verbosity 2 shows the traceback
        if config.verbosity >= 2:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1

"""End-to-end evaluation throughput: test images per second through attack + K + UnMask, and the
share of time per stage, for the configured experiment, measured in one run on this machine.

    python bench/bench_experiment.py [--images 300] [any python main.py option, e.g. --class-set cs3-2]

Models come from the experiment's cache (trained first if missing, which is not timed here).
Stages: the attacks on M, the attacks on the adversarially trained M (the baseline's figures),
K on the attacked images, and UnMask's rules (detection scores and re-classification).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from config import PROFILES, Config  # noqa: E402
from unmask.attacks import attack_vector, parse_attack_vectors  # noqa: E402
from unmask.cli import resolve_config  # noqa: E402
from unmask.defense import detection_scores, reclassify_batch  # noqa: E402
from unmask.experiment import classifier_data, prepare_data, trained_classifiers, trained_part_extractor  # noqa: E402
from unmask.models.classifier import predict  # noqa: E402
from unmask.runtime import init_distributed, resolve_device  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="test images to push through (at most the split)")
    args, rest = parser.parse_known_args()
    overrides = {}
    for flag, value in zip(rest[::2], rest[1::2], strict=True):
        name = flag.removeprefix("--").replace("-", "_")
        kind = type(getattr(Config(), name))
        overrides[name] = tuple(value.split(",")) if kind is tuple else kind(value)
    config = resolve_config(Config, PROFILES, {"verbosity": 0, **overrides})
    device = resolve_device(config.device)
    prepare_data(config, init_distributed(device))
    data = classifier_data(config)
    protected, baseline = trained_classifiers(config, data, device=device)
    extractor, _ = trained_part_extractor(config, device=device)
    images, labels = data["test"].tensors()
    images, labels = images[:args.images], labels[:args.images]
    vectors = parse_attack_vectors(config.attacks)
    options = {"steps": config.attack_steps, "original_step": config.attack_original_step, "decay": config.mim_decay,
               "batch_size": config.attack_batch_size}

    seconds = {"attack M": 0.0, "attack baseline": 0.0, "K": 0.0, "UnMask rules": 0.0}
    for vector in vectors:
        torch.manual_seed(0)
        started = time.perf_counter()
        adversarial = attack_vector(protected.model, images, labels, vector, **options)
        predicted = predict(protected.model, adversarial).numpy()
        seconds["attack M"] += time.perf_counter() - started
        if baseline is not None:
            started = time.perf_counter()
            predict(baseline.model, attack_vector(baseline.model, images, labels, vector, **options))
            seconds["attack baseline"] += time.perf_counter() - started
        started = time.perf_counter()
        extraction = extractor.extract(adversarial)
        seconds["K"] += time.perf_counter() - started
        started = time.perf_counter()
        for matrix in (extraction.presence, extraction.scores):
            detection_scores(matrix, predicted, config.class_set)
            reclassify_batch(matrix, config.class_set)
        seconds["UnMask rules"] += time.perf_counter() - started

    total = sum(seconds.values())
    processed = len(images) * len(vectors)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"device {device}; M {config.model} at {config.image_size} px, K {config.k_model}, "
          f"{len(vectors)} vectors x {len(images)} test images, {config.attack_steps} attack steps")
    print(f"end to end: {processed / total:.1f} attacked images/s ({total:.1f} s for {processed} images)")
    print(f"without the baseline: {processed / (total - seconds['attack baseline']):.1f} attacked images/s")
    for stage, value in seconds.items():
        print(f"  {stage:16s} {value:7.2f} s  {100 * value / total:5.1f} %  ({processed / value:8.1f} images/s)"
              if value else f"  {stage:16s} (not run)")


if __name__ == "__main__":
    main()

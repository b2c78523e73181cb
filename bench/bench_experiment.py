"""End-to-end evaluation throughput: test images per second through attack + K + UnMask, and the
share of time per stage, for the configured experiment, measured in one run on this machine.

    python bench/bench_experiment.py [--images 300] [any python main.py option, e.g. --class-set cs3-2]

Options are read by the command line's own parser (``unmask.cli.parse``), so they mean what they
mean for ``python main.py``. Models come from the experiment's cache (trained first if missing,
which is not timed here). Stages: the attacks on M, the attacks on the adversarially trained M
(the baseline's figures), K on the attacked images, and UnMask's rules (detection scores and
re-classification).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from unmask.attacks import attack
from unmask.cli import parse
from unmask.defense import detection_scores, reclassify_batch
from unmask.experiment.stages import load_classifier_data, prepare_data, trained_classifiers, trained_part_extractor
from unmask.models.classifier import predict
from unmask.runtime import Runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="test images to push through (at most the split)")
    args, rest = parser.parse_known_args()
    plan, _ = parse(["run", "--verbosity", "0", *rest])
    runtime = Runtime.start(plan.device, workers=plan.workers, verbosity=plan.verbosity)
    prepare_data(plan.data, runtime)
    data = load_classifier_data(plan.data)
    m, adv_trained = trained_classifiers(plan, data, runtime)
    k = trained_part_extractor(plan, runtime)
    images, labels = data["test"].tensors()
    images, labels = images[:args.images], labels[:args.images]

    seconds = {"attack M": 0.0, "attack baseline": 0.0, "K": 0.0, "UnMask rules": 0.0}
    for vector in plan.vectors:
        torch.manual_seed(0)
        started = time.perf_counter()
        adversarial = attack(m.model, images, labels, vector, plan.attack)
        predicted = predict(m.model, adversarial).numpy()
        seconds["attack M"] += time.perf_counter() - started
        if adv_trained is not None:
            started = time.perf_counter()
            predict(adv_trained.model, attack(adv_trained.model, images, labels, vector, plan.attack))
            seconds["attack baseline"] += time.perf_counter() - started
        started = time.perf_counter()
        extraction = k.extractor.extract(adversarial)
        seconds["K"] += time.perf_counter() - started
        started = time.perf_counter()
        for matrix in (extraction.parts, extraction.part_scores):
            detection_scores(matrix, predicted, plan.class_set)
            reclassify_batch(matrix, plan.class_set)
        seconds["UnMask rules"] += time.perf_counter() - started

    total = sum(seconds.values())
    processed = len(images) * len(plan.vectors)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"device {runtime.device}; M {plan.m.architecture} at {plan.data.image_size} px, K {plan.k.architecture}, "
          f"{len(plan.vectors)} vectors x {len(images)} test images, {plan.attack.steps} attack steps")
    print(f"end to end: {processed / total:.1f} attacked images/s ({total:.1f} s for {processed} images)")
    print(f"without the baseline: {processed / (total - seconds['attack baseline']):.1f} attacked images/s")
    for stage, value in seconds.items():
        print(f"  {stage:16s} {value:7.2f} s  {100 * value / total:5.1f} %  ({processed / value:8.1f} images/s)"
              if value else f"  {stage:16s} (not run)")


if __name__ == "__main__":
    main()

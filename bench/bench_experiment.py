"""End-to-end evaluation throughput: test images per second through attack + K + UnMask, and the
share of time per stage, for the configured experiment, measured in one run on this machine.

    python bench/bench_experiment.py [--images 300] [any python main.py option, e.g. --class-set cs3-2]
    python bench/bench_experiment.py --images 4 --profile paper --allow-random-init \
        --synthetic-images-per-class 10 --synthetic-k-images 16 --epochs 1 --k-epochs 1 \
        --data-dir data/paper-small     # the paper's sizes: ResNet50 at 150 px, resnet50-fpn K

Options are read by the command line's own parser (``unmask.cli.parse``), so they mean what they
mean for ``python main.py``, ``--inference-precision``, ``--channels-last`` and ``--compile``
included (applied here as the evaluation applies them). Models come from the experiment's cache
(trained first if missing, which is not timed here). Stages: the attacks on M, M's predictions on
the attacked images, the attacks on the adversarially trained M and its predictions (the
baseline's figures), K on the attacked images, and UnMask's rules (detection scores and
re-classification).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from unmask.attacks import attack
from unmask.benchmark import BenchmarkRecord, add_json_option
from unmask.cli import parse
from unmask.defense import detection_scores, reclassify_batch
from unmask.experiment.stages import load_classifier_data, prepare_data, trained_classifiers, trained_part_extractor
from unmask.train.loop import ModelCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="test images to push through (at most the split)")
    add_json_option(parser)
    args, rest = parser.parse_known_args()
    record = BenchmarkRecord("bench_experiment", {**vars(args), "main.py options": rest})
    _, plan, _ = parse(["run", "--verbosity", "0", *rest])
    runtime = plan.runtime.start()
    cache = ModelCache(plan.models_dir, runtime, plan.allow_random_init)
    prepare_data(plan.data, runtime, k_splits=plan.k_splits)
    data = load_classifier_data(plan.data)
    inference = plan.inference
    m, adv_trained = trained_classifiers(plan.m, plan.adv_trained, data, cache, m_checkpoint=plan.m_checkpoint,
                                         inference=inference)
    k = trained_part_extractor(plan.k, plan.data, cache, checkpoint=plan.k_checkpoint,
                               precision=inference.effective_precision(runtime.device))
    images, labels = data["test"].tensors(pin_memory=runtime.device.type == "cuda")
    images, labels = images[:args.images], labels[:args.images]

    def timed(stage: str, function, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - a local helper
        if runtime.device.type == "cuda":
            torch.cuda.synchronize(runtime.device)
        started = time.perf_counter()
        result = function(*args, **kwargs)
        if runtime.device.type == "cuda":
            torch.cuda.synchronize(runtime.device)
        seconds[stage] += time.perf_counter() - started
        return result

    seconds = {"attack M": 0.0, "predict M": 0.0, "attack baseline": 0.0, "predict baseline": 0.0, "K": 0.0,
               "UnMask rules": 0.0}
    for vector in plan.vectors:
        torch.manual_seed(0)
        adversarial = timed("attack M", attack, m.model, images, labels, vector, plan.attack)
        predicted = timed("predict M", m.inference.predict, adversarial).numpy()
        if adv_trained is not None:
            attacked = timed("attack baseline", attack, adv_trained.model, images, labels, vector, plan.attack)
            timed("predict baseline", adv_trained.inference.predict, attacked)
        extraction = timed("K", k.extractor.extract, adversarial)
        started = time.perf_counter()
        for matrix in (extraction.parts, extraction.part_scores):
            detection_scores(matrix, predicted, plan.class_set)
            reclassify_batch(matrix, plan.class_set)
        seconds["UnMask rules"] += time.perf_counter() - started

    total = sum(seconds.values())
    processed = len(images) * len(plan.vectors)
    baseline = seconds["attack baseline"] + seconds["predict baseline"]
    device = runtime.device
    where = (torch.cuda.get_device_name(device) if device.type == "cuda" else
             f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
             f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"device {device} ({where}); M {plan.m.architecture} at {plan.data.image_size} px "
          f"({'channels-last' if inference.channels_last else 'default memory format'}"
          f"{', compiled' if inference.compile else ''}), K {plan.k.architecture}, inference in "
          f"{inference.effective_precision(device)}; {len(plan.vectors)} vectors x {len(images)} test images, "
          f"{plan.attack.steps} attack steps")
    print(f"end to end: {processed / total:.2f} attacked images/s ({total:.1f} s for {processed} images)")
    print(f"without the baseline: {processed / (total - baseline):.2f} attacked images/s")
    for stage, value in seconds.items():
        print(f"  {stage:16s} {value:8.2f} s  {100 * value / total:5.1f} %  ({processed / value:9.2f} images/s)"
              if value else f"  {stage:16s} (not run)")
    setting = (f"M {plan.m.architecture} at {plan.data.image_size} px, K {plan.k.architecture}, inference in "
               f"{inference.effective_precision(device)}; {len(plan.vectors)} vectors x {len(images)} test images, "
               f"{plan.attack.steps} attack steps")
    record.table("end-to-end", [{"": "with the baseline", "attacked images/s": processed / total, "seconds": total},
                                {"": "without the baseline", "attacked images/s": processed / (total - baseline),
                                 "seconds": total - baseline}],
                 description=f"Attack, K and UnMask's rules end to end ({setting}).")
    record.table("stages", [{"stage": stage, "seconds": value, "share": value / total if total else None,
                             "images/s": processed / value if value else None} for stage, value in seconds.items()],
                 description="Seconds per stage, their share of the whole, and images per second through each.")
    record.write(args.json, device=device)


if __name__ == "__main__":
    main()

"""Attack throughput: adversarial images per second for each of the paper's eight vectors, on the
CPU demo's M (``compact`` at 128 px) and on the paper's ResNet50 at 150 px (20 steps, as the
paper), in one run; ResNet50 both in the default memory format and channels-last (the paper
profile's ``--channels-last``), with their ratio.

    python bench/bench_attacks.py [--device auto] [--steps 20] [--demo-images 300] [--resnet50-images 4]
        [--no-channels-last] [--batch-size 64]

Weights are random (throughput does not depend on them: every paper vector runs a fixed number of
steps). Attacks run in float32 (mixed precision is for inference only). Each vector runs once as
warm-up on a few images, then is timed ``--repeats`` times on all images; the best time counts
(other processes on a shared machine only ever slow a run down).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from unmask.attacks import PAPER_VECTORS, AttackOptions, attack
from unmask.benchmark import BenchmarkRecord, add_json_option
from unmask.models.classifier import PAPER_IMAGE_SIZE, build_classifier, use_channels_last
from unmask.runtime import resolve_device


def throughput(name: str, image_size: int, images: int, *, steps: int, batch_size: int, repeats: int,
               device: torch.device, channels_last: bool = False) -> list[tuple[str, float]]:
    torch.manual_seed(0)
    model = build_classifier(name, 5).to(device).eval()
    if channels_last:
        use_channels_last(model)
    inputs = torch.rand(images, 3, image_size, image_size, device=device)
    labels = torch.randint(0, 5, (images,), device=device)
    rates = []
    for vector in PAPER_VECTORS:
        attack(model, inputs[:2], labels[:2], vector, AttackOptions(steps=2))  # warm-up
        seconds = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            attack(model, inputs, labels, vector, AttackOptions(steps=steps, batch_size=batch_size))
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - started)
        rates.append((vector.label, images / min(seconds)))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--demo-images", type=int, default=300, help="the synthetic test split of cs5-2 has 300")
    parser.add_argument("--demo-size", type=int, default=128)
    parser.add_argument("--resnet50-images", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64, help="images per attack batch (config.attack_batch_size)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="also time ResNet50 channels-last")
    add_json_option(parser)
    args = parser.parse_args()
    record = BenchmarkRecord("bench_attacks", args)
    device = resolve_device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {os.cpu_count()} cores"
    print(f"attack throughput, {args.steps} steps, device {device} ({where}), load average "
          f"{os.getloadavg()[0]:.1f} at start")
    models = [("compact", args.demo_size, args.demo_images, False),
              ("resnet50", PAPER_IMAGE_SIZE, args.resnet50_images, False)]
    if args.channels_last:
        models.append(("resnet50", PAPER_IMAGE_SIZE, args.resnet50_images, True))
    results = {f"{name} {size}px{' channels-last' if last else ''} ({images} images)": throughput(
        name, size, images, steps=args.steps, batch_size=args.batch_size, repeats=args.repeats, device=device,
        channels_last=last) for name, size, images, last in models}
    labels = [label for label, _ in next(iter(results.values()))]
    width = max(map(len, results))
    print(f"{'images/s':<{width}}  " + "  ".join(f"{label:>11}" for label in labels) + "  " + f"{'all eight':>10}")
    for model, rates in results.items():
        total = len(rates) / sum(1 / rate for _, rate in rates)  # images/s over the eight vectors in sequence
        print(f"{model:<{width}}  " + "  ".join(f"{rate:>11.{1 if rate >= 10 else 2}f}" for _, rate in rates)
              + f"  {total:>10.2f}")
        print(f"{'':<{width}}  the eight vectors on 300 images take {8 * 300 / total:.0f} s")
    totals = [len(rates) / sum(1 / rate for _, rate in rates) for rates in results.values()]
    if args.channels_last:
        print(f"ratio ResNet50 channels-last / default memory format, all eight: {totals[2] / totals[1]:.2f}x")
        record.value("resnet50_channels_last_ratio", totals[2] / totals[1])
    print(f"(load average {os.getloadavg()[0]:.1f} at the end; other processes on this machine slow every figure)")
    record.table("vectors", [{"model": model, "vector": label, "images/s": rate}
                             for model, rates in results.items() for label, rate in rates],
                 description=f"Attacked images per second per vector ({args.steps} steps, batches of "
                             f"{args.batch_size}, random weights; the best of {args.repeats} timings).")
    record.table("models", [{"model": model, "images/s over the eight vectors": total,
                             "seconds for the eight vectors on 300 images": 8 * 300 / total}
                            for model, total in zip(results, totals, strict=True)],
                 description="The eight vectors in sequence: images per second, and what 300 test images take.")
    record.write(args.json, device=device)


if __name__ == "__main__":
    main()

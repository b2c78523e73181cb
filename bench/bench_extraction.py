"""K's extraction throughput: batched on the device vs one image at a time and vs the original's
design (K rebuilt for every batch, then one image at a time), measured in one run on this machine.

    python bench/bench_extraction.py [--weights results/models/k-<key>/weights.pt]
        [--data-dir data/synthetic] [--images 128] [--batch-size 16] [--image-size 128]
    python bench/bench_extraction.py --k-model resnet50-fpn [--images 8] [--batch-size 4]
        [--precision auto] [--device cuda]

``slim`` (the default) or ``lean``: a synthetic-world K on the test split of ``--data-dir``
(default data/synthetic) when it exists, else on uniform noise, at ``--image-size``.

``resnet50-fpn``: the paper's K with random weights on PASCAL-sized synthetic images (drawn in
memory: about 500x375, the shorter side varying, a quarter portrait, as VOC's), which
torchvision's transform resizes to an 800-pixel shorter side. The original's design is measured
as the original ran it: K rebuilt (and its weights loaded from a file) for every batch, then one
image at a time, each image upscaled to a 1024-pixel longer side and padded to 1024x1024
(matterport's "square" mode, IMAGE_MIN_DIM 800, IMAGE_MAX_DIM 1024), in float32.

Without ``--weights`` K's classifier is set to answer with a part for every proposal, so every
image carries the full ``max_detections`` (the slowest case); a trained K finds fewer.
``--precision`` (auto, float32, bfloat16, float16) is the batched run's; when it is not float32
on the device, batched float32 is measured too, for the ratio. Every timing is the best of
``--repeats`` after a warm-up on one image (other processes only ever slow a run down).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from unmask.benchmark import BenchmarkRecord, add_json_option
from unmask.data.coco import PartSegmentationDataset, split_paths
from unmask.data.synthetic import SyntheticSpec, image_rng, k_canvas_size, render_object
from unmask.models.classifier import InferenceOptions
from unmask.models.part_extractor import PART_EXTRACTOR_NAMES, PartExtractor, build_part_extractor
from unmask.parts import CLASSES
from unmask.runtime import resolve_device
from unmask.train.part_extractor import load_part_extractor_weights

ORIGINAL_MIN_DIM, ORIGINAL_MAX_DIM = 800, 1024
"""matterport Mask R-CNN's IMAGE_MIN_DIM and IMAGE_MAX_DIM (resize mode "square")."""


def build(args: argparse.Namespace, weights: Path | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_part_extractor(args.k_model, image_size=args.image_size, fpn_channels=args.fpn_channels)
    if weights is not None or args.weights:
        return load_part_extractor_weights(model, weights or args.weights, log=lambda message: None)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[0] = -20.0  # never the background: every proposal a part
    return model


def pascal_sized_images(count: int) -> list[torch.Tensor]:
    """Synthetic K images at PASCAL VOC's sizes (the paper profile's synthetic world)."""
    spec = SyntheticSpec(image_size=150, k_image_size=(500, 375))
    images = []
    for index in range(count):
        object_class = CLASSES[index % len(CLASSES)]
        canvas = k_canvas_size(spec, "test", object_class, index)
        rendered = render_object(object_class, image_rng(0, "k", "test", object_class, index), spec, canvas=canvas)
        images.append(torch.from_numpy(rendered.image).permute(2, 0, 1).float().div(255))
    return images


def load_images(args: argparse.Namespace) -> tuple[torch.Tensor | list[torch.Tensor], str]:
    synthetic = args.k_model != "resnet50-fpn"
    data_dir = args.data_dir or ("data/synthetic" if synthetic else "")
    annotation_file, image_dir = split_paths(data_dir, "test") if data_dir else (Path(), Path())
    if data_dir and annotation_file.is_file():
        dataset = PartSegmentationDataset(annotation_file, image_dir)
        count = min(args.images, len(dataset))
        images = [dataset.image(i) for i in range(count)]
        if synthetic:  # the demo's K sees M's square images
            stacked = torch.stack([F.interpolate(image[None], size=args.image_size, mode="bilinear")[0]
                                   for image in images])
            return stacked.clamp(0, 1), f"{count} test images of {annotation_file} at {args.image_size} px"
        return images, f"{count} test images of {annotation_file}"
    if synthetic:
        return torch.rand(args.images, 3, args.image_size, args.image_size), \
            f"{args.images} noise images at {args.image_size} px"
    images = pascal_sized_images(args.images)
    sides = sorted({tuple(image.shape[1:]) for image in images})
    return images, (f"{len(images)} PASCAL-sized synthetic images (height x width "
                    f"{', '.join(f'{h}x{w}' for h, w in sides)})")


def to_original_canvas(image: torch.Tensor) -> torch.Tensor:
    """``image`` as the original fed it to K: scaled so that its shorter side is 800 pixels unless
    its longer side would then pass 1024 (then that one is 1024), zero-padded to 1024x1024."""
    height, width = image.shape[1:]
    scale = max(1.0, ORIGINAL_MIN_DIM / min(height, width))
    if round(max(height, width) * scale) > ORIGINAL_MAX_DIM:
        scale = ORIGINAL_MAX_DIM / max(height, width)
    size = (round(height * scale), round(width * scale))
    resized = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1)
    top, left = (ORIGINAL_MAX_DIM - size[0]) // 2, (ORIGINAL_MAX_DIM - size[1]) // 2
    return F.pad(resized, (left, ORIGINAL_MAX_DIM - size[1] - left, top, ORIGINAL_MAX_DIM - size[0] - top))


def rate(run: Callable[[Sequence[torch.Tensor]], object], images: Sequence[torch.Tensor], repeats: int,
         device: torch.device) -> float:
    run(images[:1])  # warm-up: the backends prepare their kernels (the CPU's for each new shape)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        run(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return len(images) / best


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, bfloat16 {'supported' if torch.cuda.is_bf16_supported() else 'not supported'}"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k-model", default=PART_EXTRACTOR_NAMES[0], choices=PART_EXTRACTOR_NAMES)
    parser.add_argument("--weights", type=Path, help="trained K (weights.pt of train-k)")
    parser.add_argument("--data-dir", default="", help="K's test split from here (synthetic Ks' default: "
                                                      "data/synthetic)")
    parser.add_argument("--images", type=int, help="default: 128 (slim, lean), 8 (resnet50-fpn)")
    parser.add_argument("--batch-size", type=int, help="images per pass; default: 16 (slim, lean), 4 (resnet50-fpn)")
    parser.add_argument("--image-size", type=int, default=128, help="the synthetic-world K's input side")
    parser.add_argument("--fpn-channels", type=int, default=None, help="FPN width (default: the architecture's)")
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--precision", default="auto", help="of the batched run: auto, float32, bfloat16, float16")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    add_json_option(parser)
    args = parser.parse_args()
    record = BenchmarkRecord("bench_extraction", args)
    big = args.k_model == "resnet50-fpn"
    args.images = args.images or (8 if big else 128)
    args.batch_size = args.batch_size or (4 if big else 16)
    device = resolve_device(args.device)
    precision = InferenceOptions(args.precision).effective_precision(device)

    images, source = load_images(args)
    model = build(args)
    with tempfile.TemporaryDirectory() as folder:
        weights_file = Path(folder) / "k.pt"
        torch.save(model.state_dict(), weights_file)  # what the original's rebuilt K loads every batch
        extractor = PartExtractor(model, score_threshold=args.score_threshold, device=device)
        found = extractor.extract(images[:args.batch_size]).parts.sum(axis=1).mean()
        print(f"K {args.k_model} ({'trained: ' + str(args.weights) if args.weights else 'random weights, always detecting'})"
              f" on {source}; device {device} ({describe(device)}); {found:.1f} parts per image at threshold "
              f"{args.score_threshold}; load average {os.getloadavg()[0]:.1f} at start")

        rates: dict[str, float] = {}
        for name in dict.fromkeys([precision, "float32"]):
            extractor.precision = name
            rates[f"batched ({args.batch_size} per pass, {name})"] = rate(
                lambda batch: extractor.extract(batch, batch_size=args.batch_size), images, args.repeats, device)
        extractor.precision = "float32"
        rates["one image at a time (float32)"] = rate(lambda batch: extractor.extract(batch, batch_size=1), images,
                                                      args.repeats, device)

        def original(batch: Sequence[torch.Tensor]) -> None:  # K rebuilt for every batch, then one image at a time
            for start in range(0, len(batch), args.batch_size):
                rebuilt = build(args, weights_file)
                if big:  # the original's 1024x1024 canvases go through unresized
                    rebuilt.transform.min_size, rebuilt.transform.max_size = (ORIGINAL_MAX_DIM,), ORIGINAL_MAX_DIM
                    chunk = [to_original_canvas(image) for image in batch[start:start + args.batch_size]]
                else:
                    chunk = batch[start:start + args.batch_size]
                PartExtractor(rebuilt, score_threshold=args.score_threshold, device=device).extract(chunk, batch_size=1)

        label = ("as the original (K rebuilt per batch, one at a time, 1024x1024 canvases, float32)" if big else
                 "as the original (K rebuilt per batch, one at a time, float32)")
        rates[label] = rate(original, images, 1, device)
    width = max(map(len, rates))
    for name, value in rates.items():
        print(f"{name:<{width}}  {value:8.2f} images/s")
    batched = rates[f"batched ({args.batch_size} per pass, float32)"]
    print(f"ratios, all float32: batched / one at a time {batched / rates['one image at a time (float32)']:.2f}x; "
          f"batched / as the original {batched / rates[label]:.2f}x"
          + (f"; batched {precision} / batched float32 {rates[next(iter(rates))] / batched:.2f}x, "
             f"/ as the original {rates[next(iter(rates))] / rates[label]:.2f}x" if precision != "float32" else ""))
    print(f"(load average {os.getloadavg()[0]:.1f} at the end; other processes on this machine slow every figure)")
    record.table("extraction", [{"how": name, "images/s": value, "x as the original": value / rates[label]}
                                for name, value in rates.items()],
                 description=f"K ({args.k_model}, {'trained' if args.weights else 'random weights'}) on {source}: "
                             f"images per second by how the images are extracted.")
    record.write(args.json, device=device)


if __name__ == "__main__":
    main()

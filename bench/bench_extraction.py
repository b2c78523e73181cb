"""K's extraction throughput: batched on the device vs one image at a time (as the original ran
detection, rebuilding K for every batch), measured in one run on this machine.

    python bench/bench_extraction.py [--weights results/models/k-<key>/weights.pt]
        [--data-dir data/synthetic] [--images 128] [--batch-size 16] [--image-size 128]

Without ``--weights`` K's classifier is set to answer with a part for every proposal, so every
image carries the full ``max_detections`` (the slowest case); a trained K finds fewer. Images
come from the test split of ``--data-dir`` when it exists, else from uniform noise.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from unmask.data.coco import PartSegmentationDataset, split_paths
from unmask.models.part_extractor import PartExtractor, build_part_extractor
from unmask.train.part_extractor import load_part_extractor_weights


def build(args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_part_extractor("lean", image_size=args.image_size, fpn_channels=args.fpn_channels)
    if args.weights:
        return load_part_extractor_weights(model, args.weights)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[0] = -20.0  # never the background: every proposal a part
    return model


def load_images(args: argparse.Namespace) -> tuple[torch.Tensor, str]:
    annotation_file, image_dir = split_paths(args.data_dir, "test")
    if annotation_file.is_file():
        dataset = PartSegmentationDataset(annotation_file, image_dir)
        count = min(args.images, len(dataset))
        images = torch.stack([dataset.image(i) for i in range(count)])
        return torch.nn.functional.interpolate(images, size=args.image_size, mode="bilinear").clamp(0, 1), \
            f"{count} test images of {annotation_file}"
    return torch.rand(args.images, 3, args.image_size, args.image_size), f"{args.images} noise images"


def rate(run, images: int, repeats: int) -> float:
    run()  # warm-up: the CPU backend prepares its kernels for each new shape
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    return images * repeats / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, help="trained K (weights.pt of train-k)")
    parser.add_argument("--data-dir", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--fpn-channels", type=int, default=64)
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    images, source = load_images(args)
    extractor = PartExtractor(build(args), score_threshold=args.score_threshold, device=args.device)
    found = extractor.extract(images).parts.sum(axis=1).mean()
    print(f"K lean ({'trained: ' + str(args.weights) if args.weights else 'untrained, always detecting'}) on "
          f"{source}, {args.image_size} px, device {args.device}, {torch.get_num_threads()} threads; "
          f"{found:.1f} parts per image at threshold {args.score_threshold}")

    batched = rate(lambda: extractor.extract(images, batch_size=args.batch_size), len(images), args.repeats)
    single = rate(lambda: extractor.extract(images, batch_size=1), len(images), args.repeats)

    def original() -> None:  # K rebuilt for every batch, then one image at a time
        for start in range(0, len(images), args.batch_size):
            rebuilt = PartExtractor(build(args), score_threshold=args.score_threshold, device=args.device)
            rebuilt.extract(images[start:start + args.batch_size], batch_size=1)

    as_original = rate(original, len(images), 1)
    print(f"batched ({args.batch_size} per pass):        {batched:7.1f} images/s")
    print(f"one image at a time:            {single:7.1f} images/s")
    print(f"one at a time, K rebuilt/batch: {as_original:7.1f} images/s")
    print(f"ratio batched / one at a time: {batched / single:.2f}x; batched / as the original: "
          f"{batched / as_original:.2f}x")


if __name__ == "__main__":
    main()

"""Speed of the synthetic part world on this machine.

Prints, for image sizes 96 and 128: images per second of one process drawing M images (draw +
PNG) and K images (draw + PNG + RLE annotations), and K images at the paper profile's PASCAL-like
size (``--k-image-size``, default 500x375); then the wall time of generating the default
dataset (``python main.py prepare --dataset synthetic`` with the default config) with the default
number of worker processes, at both sizes. The load average is printed too: on a shared machine
other work slows every figure down.

    python bench/bench_synthetic.py [--images 320] [--skip-default]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from unmask.benchmark import BenchmarkRecord, add_json_option
from unmask.data.coco import mask_to_annotation
from unmask.data.synthetic import (
    SyntheticSpec,
    default_workers,
    encode_png,
    generate_synthetic,
    image_rng,
    k_canvas_size,
    parse_image_size,
    render_object,
)
from unmask.parts import CLASSES, PART_INDEX


def images_per_second(image_size: int, images: int, *, annotate: bool,
                      k_image_size: tuple[int, int] | None = None) -> float:
    spec = SyntheticSpec(image_size=image_size, k_image_size=k_image_size)
    start = time.perf_counter()
    for index in range(images):
        object_class = CLASSES[index % len(CLASSES)]
        canvas = k_canvas_size(spec, "train", object_class, index) if annotate else None
        rendered = render_object(object_class, image_rng(0, "k", "train", object_class, index), spec, canvas=canvas)
        encode_png(rendered.image)
        if annotate:
            for number, (mask, part) in enumerate(zip(rendered.masks, rendered.parts, strict=True)):
                mask_to_annotation(mask, annotation_id=number + 1, image_id=index + 1, category_id=PART_INDEX[part])
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=320, help="images per single-process measurement")
    parser.add_argument("--skip-default", action="store_true", help="skip generating the default dataset")
    parser.add_argument("--k-image-size", default="500x375", help="K's PASCAL-like size (the paper profile's)")
    add_json_option(parser)
    args = parser.parse_args()
    record = BenchmarkRecord("bench_synthetic", args)
    print(f"CPU cores: {os.cpu_count()}, load average at start: {os.getloadavg()[0]:.2f}")
    drawing = []
    for size in (96, 128):
        m_rate = images_per_second(size, args.images, annotate=False)
        k_rate = images_per_second(size, args.images, annotate=True)
        print(f"image size {size}: one process draws {m_rate:.0f} M images/s, {k_rate:.0f} K images/s")
        drawing += [{"images": f"M's, {size} px", "images/s": m_rate}, {"images": f"K's, {size} px", "images/s": k_rate}]
    pascal = parse_image_size(args.k_image_size)
    k_rate = images_per_second(150, max(16, args.images // 8), annotate=True, k_image_size=pascal)
    print(f"K images about {args.k_image_size}: one process draws {k_rate:.1f} images/s")
    drawing.append({"images": f"K's, about {args.k_image_size} px", "images/s": k_rate})
    record.table("drawing", drawing, description="Images one process draws per second (draw, PNG, and for K's "
                                                 "images the RLE annotations).")
    generated = []
    for size in () if args.skip_default else (96, 128):
        spec = SyntheticSpec(image_size=size)
        images = len(spec.m_classes) * spec.images_per_class + spec.k_images
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            generate_synthetic(Path(folder) / "synthetic", spec, progress=False)
            elapsed = time.perf_counter() - start
        print(f"default dataset at image size {size} ({images} images, {default_workers()} workers): "
              f"{elapsed:.1f} s wall, {images / elapsed:.0f} images/s; load average now {os.getloadavg()[0]:.2f}")
        generated.append({"image size": size, "images": images, "workers": default_workers(), "seconds": elapsed,
                          "images/s": images / elapsed})
    if generated:
        record.table("default-world", generated, description="The default synthetic world, generated whole with "
                                                              "the default number of worker processes.")
    record.write(args.json)


if __name__ == "__main__":
    main()

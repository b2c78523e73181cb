"""A tiny part world for K's training tests: coloured shapes, one colour and shape per part."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unmask.data.coco import mask_to_annotation, split_paths, write_coco
from unmask.parts import PART_INDEX

SHAPE_PARTS = {"wheel": (230, 40, 40), "window": (40, 90, 230), "head": (40, 200, 60), "tail": (230, 200, 30)}
"""Each part is drawn in its own colour; wheels and heads are discs, windows and tails boxes."""


def draw_shape_world(root: Path, split: str, *, images: int, size: int, seed: int) -> None:
    """Write ``images`` images of 1-3 non-overlapping parts to K's layout under ``root``."""
    rng = np.random.default_rng(seed)
    annotation_file, image_dir = split_paths(root, split)
    image_dir.mkdir(parents=True, exist_ok=True)
    rows, columns = np.mgrid[:size, :size]
    entries, annotations = [], []
    for image_id in range(images):
        pixels = np.full((size, size, 3), 128, dtype=np.uint8) + rng.integers(-12, 12, (size, size, 3)).astype(np.uint8)
        cells = rng.permutation(4)[: rng.integers(1, 4)]  # a 2x2 grid keeps parts apart
        for cell, part in zip(cells, rng.choice(list(SHAPE_PARTS), size=len(cells)), strict=True):
            half = size // 2
            extent = int(rng.integers(size // 5, half - 2))
            top = (cell // 2) * half + int(rng.integers(0, half - extent))
            left = (cell % 2) * half + int(rng.integers(0, half - extent))
            if part in ("wheel", "head"):
                radius = extent / 2
                mask = (rows - top - radius) ** 2 + (columns - left - radius) ** 2 <= radius**2
            else:
                mask = (rows >= top) & (rows < top + extent) & (columns >= left) & (columns < left + extent // 2 + 2)
            pixels[mask] = SHAPE_PARTS[part]
            annotations.append(mask_to_annotation(mask, annotation_id=len(annotations), image_id=image_id,
                                                  category_id=PART_INDEX[part]))
        name = f"{image_id:04d}.png"
        Image.fromarray(pixels).save(image_dir / name)
        entries.append({"id": image_id, "file_name": name, "height": size, "width": size})
    write_coco(annotation_file, images=entries, annotations=annotations)


@pytest.fixture(scope="session")
def shape_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a 64-pixel shape world: 24 training, 4 validation and 8 test images."""
    root = tmp_path_factory.mktemp("shape-world")
    draw_shape_world(root, "train", images=24, size=64, seed=0)
    draw_shape_world(root, "val", images=4, size=64, seed=2)
    draw_shape_world(root, "test", images=8, size=64, seed=1)
    return root

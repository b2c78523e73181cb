"""COCO instance-segmentation files of part annotations, as the UnMask dataset stores them.

Conventions of the real dataset (reference section 7), which the synthetic world follows too:
the 44 part categories have ids starting at **0** (``id == PARTS.index(name)``), masks are
polygons or RLE, images live in ``<root>/VOC2010/Images/<split>/`` and the annotation files are
``<root>/VOC2010/<split>.json``. Readers map categories by *name*, so a file whose ids start at 1
reads the same.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pycocotools import mask as mask_utils

from unmask.io import atomic_write_json
from unmask.parts import PART_INDEX, PARTS

SPLITS: tuple[str, ...] = ("train", "val", "test")
K_DATA_FOLDER = "VOC2010"


def split_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of a split of K's data under a dataset root."""
    base = Path(root) / K_DATA_FOLDER
    return base / f"{split}.json", base / "Images" / split


def part_categories() -> list[dict[str, Any]]:
    """The 44 part categories with ids starting at 0, as in the UnMask dataset."""
    return [{"id": index, "name": part, "supercategory": "part"} for index, part in enumerate(PARTS)]


def mask_to_annotation(
    mask: np.ndarray,
    *,
    annotation_id: int,
    image_id: int,
    category_id: int,
    encoding: Literal["rle", "polygon"] = "rle",
    **extra: Any,
) -> dict[str, Any]:
    """A COCO annotation for one binary mask (H, W): segmentation, tight ``bbox`` [x, y, w, h]
    around the mask's pixels, ``area`` in pixels. ``extra`` keys are stored alongside."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or not mask.any():
        raise ValueError(f"annotation {annotation_id} (image {image_id}): expected a non-empty 2-D mask, "
                         f"got shape {mask.shape} with {int(mask.sum())} pixels")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if encoding == "rle":
        segmentation: Any = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
    elif encoding == "polygon":
        segmentation = mask_to_polygons(mask)
    else:
        raise ValueError(f"unknown mask encoding {encoding!r}; expected one of: rle, polygon")
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    x0, y0 = int(columns[0]), int(rows[0])
    bbox = [x0, y0, int(columns[-1]) - x0 + 1, int(rows[-1]) - y0 + 1]
    return {"id": annotation_id, "image_id": image_id, "category_id": category_id,
            "segmentation": segmentation, "area": int(mask.sum()), "bbox": bbox, "iscrowd": 0, **extra}


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a binary mask as COCO polygons (x, y pairs), via scikit-image."""
    from skimage import measure

    padded = np.pad(mask.astype(np.uint8), 1)  # contours of regions touching the border close
    polygons = []
    for contour in measure.find_contours(padded, 0.5):
        contour = contour - 1  # undo the padding
        if len(contour) >= 3:
            polygons.append(np.fliplr(contour).ravel().round(2).tolist())
    return polygons


def annotation_to_mask(annotation: dict[str, Any], height: int, width: int) -> np.ndarray:
    """Decode an annotation's segmentation (polygons, RLE or uncompressed RLE) to a bool mask."""
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = {"size": segmentation["size"], "counts": segmentation["counts"]}
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle).astype(bool)


def write_coco(path: str | Path, *, images: Sequence[dict[str, Any]], annotations: Sequence[dict[str, Any]],
               info: dict[str, Any] | None = None) -> None:
    """Write a COCO file with the 44 part categories, atomically."""
    atomic_write_json(path, {"info": info or {}, "images": list(images), "annotations": list(annotations),
                             "categories": part_categories()})


@dataclass
class CocoImage:
    """One image of a COCO part file: its file, size, and annotations with part indices."""

    id: int
    path: Path
    height: int
    width: int
    annotations: list[dict[str, Any]] = field(default_factory=list)

    def part_indices(self) -> np.ndarray:
        """Part index (column of ``PARTS``) of each annotation, in order."""
        return np.array([a["part_index"] for a in self.annotations], dtype=np.int64)

    def masks(self) -> np.ndarray:
        """Bool masks (annotations, H, W)."""
        masks = [annotation_to_mask(a, self.height, self.width) for a in self.annotations]
        return np.stack(masks) if masks else np.zeros((0, self.height, self.width), dtype=bool)

    def boxes_xyxy(self) -> np.ndarray:
        """Boxes (annotations, 4) as x0, y0, x1, y1 (COCO's [x, y, w, h] converted)."""
        boxes = np.array([a["bbox"] for a in self.annotations], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        return boxes

    def part_set(self) -> frozenset[str]:
        return frozenset(PARTS[i] for i in self.part_indices())


def load_coco_parts(annotation_file: str | Path, image_dir: str | Path) -> list[CocoImage]:
    """Read a COCO part file; categories are matched to ``PARTS`` by name (so ids may start at 0
    or 1). Raises ``ValueError`` naming the file for unknown categories or dangling references."""
    annotation_file, image_dir = Path(annotation_file), Path(image_dir)
    if not annotation_file.is_file():
        raise FileNotFoundError(f"COCO part annotations {annotation_file} do not exist; expected the layout "
                                f"<root>/{K_DATA_FOLDER}/<split>.json (python main.py prepare builds it)")
    try:
        data = json.loads(annotation_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{annotation_file} is not valid JSON: {error}") from None
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{annotation_file}: missing key {key!r}; expected a COCO instance-segmentation file")
    part_of_category: dict[int, int] = {}
    for category in data["categories"]:
        if category["name"] not in PART_INDEX:
            raise ValueError(f"{annotation_file}: unknown part category {category['name']!r} (id {category['id']});"
                             f" expected one of: {', '.join(PARTS)}")
        part_of_category[category["id"]] = PART_INDEX[category["name"]]
    images = {
        entry["id"]: CocoImage(entry["id"], image_dir / entry["file_name"], entry["height"], entry["width"])
        for entry in data["images"]
    }
    for annotation in data["annotations"]:
        if annotation["image_id"] not in images:
            raise ValueError(f"{annotation_file}: annotation {annotation['id']} refers to missing image "
                             f"{annotation['image_id']}")
        if annotation["category_id"] not in part_of_category:
            raise ValueError(f"{annotation_file}: annotation {annotation['id']} has unknown category id "
                             f"{annotation['category_id']}")
        images[annotation["image_id"]].annotations.append(
            {**annotation, "part_index": part_of_category[annotation["category_id"]]}
        )
    return list(images.values())

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
import torch
from pycocotools import mask as mask_utils

from unmask.data.images import read_image
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
    return mask_utils.decode(_to_rle(annotation["segmentation"], height, width)).astype(bool)


def _to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """Compressed RLE of any COCO segmentation (polygons, RLE, uncompressed RLE)."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)
    counts = segmentation["counts"]
    return {"size": segmentation["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def write_coco(path: str | Path, *, images: Sequence[dict[str, Any]], annotations: Sequence[dict[str, Any]],
               info: dict[str, Any] | None = None) -> None:
    """Write a COCO file with the 44 part categories, atomically, as compact JSON (polygon
    annotations of all PASCAL-Part would take gigabytes indented)."""
    atomic_write_json(path, {"info": info or {}, "images": list(images), "annotations": list(annotations),
                             "categories": part_categories()}, indent=None)


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


# --- a torch dataset of Mask R-CNN targets --------------------------------------------------


def _mirrored(part: str) -> str:
    side = part.rsplit("_", 1)[-1]
    twin = {"left": "right", "right": "left"}.get(side)
    return part[: -len(side)] + twin if twin and part[: -len(side)] + twin in PART_INDEX else part


MIRRORED_LABELS = torch.tensor([0] + [PART_INDEX[_mirrored(part)] + 1 for part in PARTS])
"""Mask R-CNN label (part index + 1, 0 the background) of each label's mirror image:
vehicle_left <-> vehicle_right, coach_left <-> coach_right, every other part itself."""


@dataclass
class _Sample:
    """One decoded image with its instances; masks stay run-length encoded until used."""

    image: torch.Tensor  # uint8 (3, H, W)
    boxes: torch.Tensor  # float32 (N, 4), x0, y0, x1, y1
    labels: torch.Tensor  # int64 (N,), part index + 1
    rles: list[dict[str, Any]]


class PartSegmentationDataset(torch.utils.data.Dataset):
    """A COCO part file as Mask R-CNN training samples.

    Item ``i`` is ``(image, target)``: the image as float (3, H, W) in [0, 1] and the target dict
    torchvision's Mask R-CNN expects: ``boxes`` (N, 4) float x0, y0, x1, y1; ``labels`` (N,)
    int64 with ``label = part index + 1`` (0 is the background); ``masks`` (N, H, W) uint8;
    plus ``image_id``. Annotations whose box is thinner than a pixel are left out (Mask R-CNN
    cannot learn from them).

    ``hflip_prob`` flips image, masks and boxes together (the original's only augmentation),
    drawing from torch's global RNG, so a restored RNG state replays the same flips.
    ``mirror_sides`` also swaps the ``*_left`` and ``*_right`` parts of flipped images (in a
    photo a mirrored left side of a car looks like a right side; the original did not swap).
    ``cache`` keeps every decoded image and its run-length-encoded masks in memory after first
    use: decoding JPEGs and polygons again every epoch dominates a small CPU run.
    """

    def __init__(self, annotation_file: str | Path, image_dir: str | Path, *, hflip_prob: float = 0.0,
                 mirror_sides: bool = False, cache: bool = True) -> None:
        if not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must lie in [0, 1], got {hflip_prob}")
        self.mirror_sides = mirror_sides
        self.annotation_file = Path(annotation_file)
        self.images = load_coco_parts(annotation_file, image_dir)
        self.hflip_prob = hflip_prob
        self.cache = cache
        self._samples: dict[int, _Sample] = {}

    def __len__(self) -> int:
        return len(self.images)

    def part_sets(self) -> list[frozenset[str]]:
        """The set of annotated parts of every image, in order."""
        return [entry.part_set() for entry in self.images]

    def _sample(self, index: int) -> _Sample:
        if index in self._samples:
            return self._samples[index]
        entry = self.images[index]
        image = read_image(entry.path)
        if tuple(image.shape[1:]) != (entry.height, entry.width):
            raise ValueError(f"{self.annotation_file}: image {entry.path} is {image.shape[2]}x{image.shape[1]} "
                             f"pixels but the file says {entry.width}x{entry.height}")
        kept = [a for a in entry.annotations if a["bbox"][2] >= 1 and a["bbox"][3] >= 1]
        boxes = torch.tensor([a["bbox"] for a in kept], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = torch.tensor([a["part_index"] + 1 for a in kept], dtype=torch.int64)
        rles = [_to_rle(a["segmentation"], entry.height, entry.width) for a in kept]
        sample = _Sample(image, boxes, labels, rles)
        if self.cache:
            self._samples[index] = sample
        return sample

    def image(self, index: int) -> torch.Tensor:
        """Image ``index`` as float (3, H, W) in [0, 1], without its target or augmentation."""
        return self._sample(index).image.float().div_(255)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sample = self._sample(index)
        entry = self.images[index]
        if sample.rles:
            masks = torch.from_numpy(mask_utils.decode(sample.rles)).permute(2, 0, 1)
        else:
            masks = torch.zeros((0, entry.height, entry.width), dtype=torch.uint8)
        image, boxes, labels = sample.image, sample.boxes.clone(), sample.labels.clone()
        if self.hflip_prob > 0 and torch.rand(()).item() < self.hflip_prob:
            image, masks = image.flip(-1), masks.flip(-1)
            boxes[:, [0, 2]] = entry.width - boxes[:, [2, 0]]
            if self.mirror_sides:
                labels = MIRRORED_LABELS[labels]
        target = {"boxes": boxes, "labels": labels, "masks": masks.contiguous(),
                  "image_id": torch.tensor(entry.id, dtype=torch.int64)}
        return image.float().div_(255), target


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[list, list]:
    """Lists of images and targets (detection models take images of different sizes)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)

"""COCO instance-segmentation files of part annotations, as the UnMask dataset stores them.

Conventions of the real dataset (reference section 7), which the synthetic world follows too:
the 44 part categories have ids starting at **0** (``id == PARTS.index(name)``), masks are
polygons or RLE, images live in ``<root>/VOC2010/Images/<split>/`` and the annotation files are
``<root>/VOC2010/<split>.json``. Readers map categories by *name*, so a file whose ids start at 1
reads the same.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pycocotools import mask as mask_utils

from unmask.constants import GREY_LEVELS
from unmask.data.images import LISTED_FAILURES, check_images, read_image
from unmask.io import UnmaskError, atomic_write_json
from unmask.parts import PART_INDEX, PARTS

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


class CocoFormatError(UnmaskError, ValueError):
    """A COCO part file that is valid JSON but not of the expected shape; the message names the
    file and the entries (``annotations[17] (id 18) has no "category_id"``)."""


COCO_SHAPE = ('a COCO instance-segmentation file: {"images": [{"id", "file_name", "height", "width"}], '
              '"annotations": [{"image_id", "category_id", "bbox": [x, y, w, h], "area", "segmentation"}], '
              '"categories": [{"id", "name"}]}')


def load_coco_parts(annotation_file: str | Path, image_dir: str | Path) -> list[CocoImage]:
    """Read a COCO part file; categories are matched to ``PARTS`` by name (so ids may start at 0
    or 1). The whole file is checked first (``check_coco_shape``): a ``CocoFormatError`` names the
    file and every bad entry (missing or mistyped fields, unknown categories, dangling
    references), instead of a ``KeyError`` deep inside training."""
    annotation_file, image_dir = Path(annotation_file), Path(image_dir)
    if not annotation_file.is_file():
        raise FileNotFoundError(f"COCO part annotations {annotation_file} do not exist; expected the layout "
                                f"<root>/{K_DATA_FOLDER}/<split>.json (python main.py prepare builds it)")
    try:
        data = json.loads(annotation_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CocoFormatError(f"{annotation_file} is not valid JSON: {error}") from None
    check_coco_shape(data, annotation_file)
    part_of_category = {category["id"]: PART_INDEX[category["name"]] for category in data["categories"]}
    images = {
        entry["id"]: CocoImage(entry["id"], image_dir / entry["file_name"], int(entry["height"]), int(entry["width"]))
        for entry in data["images"]
    }
    for annotation in data["annotations"]:
        images[annotation["image_id"]].annotations.append(
            {**annotation, "part_index": part_of_category[annotation["category_id"]]}
        )
    return list(images.values())


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_side(value: Any) -> bool:
    return _is_number(value) and value >= 1 and float(value).is_integer()


def check_coco_shape(data: Any, annotation_file: str | Path) -> None:
    """Raise one ``CocoFormatError`` listing what makes ``data`` (a parsed COCO part file) unusable:
    every entry missing a field or holding one of the wrong type, unknown part names, duplicate
    ids, annotations of missing images or categories. Counts them all, names the first few."""
    problems: list[str] = []
    if not isinstance(data, dict):
        problems.append(f"the file holds a JSON {type(data).__name__}, not an object")
    else:
        for key in ("images", "annotations", "categories"):
            if key not in data:
                problems.append(f'missing key "{key}"')
            elif not isinstance(data[key], list):
                problems.append(f'"{key}" is {json.dumps(data[key])[:40]}, not a list')
    if not problems:
        categories = _check_categories(data["categories"], problems)
        images = _check_images(data["images"], problems)
        _check_annotations(data["annotations"], images, categories, problems)
    if problems:
        listed = "; ".join(problems[:LISTED_FAILURES])
        more = len(problems) - LISTED_FAILURES
        count = f"{len(problems)} problems: " if len(problems) > 1 else ""
        raise CocoFormatError(f"{annotation_file}: {count}{listed}{f'; and {more} more' if more > 0 else ''}. "
                              f"Expected {COCO_SHAPE}")


def _entry(kind: str, index: int, entry: Any) -> str:
    """How a message names an entry: ``annotations[17] (id 18)``."""
    if isinstance(entry, dict) and "id" in entry:
        return f"{kind}[{index}] (id {json.dumps(entry['id'])})"
    return f"{kind}[{index}]"


def _missing_or_bad(kind: str, index: int, entry: Any, checks: dict[str, Any], problems: list[str]) -> bool:
    """Append a problem for each field of ``checks`` (name -> (test, what it must be)) that is
    missing or fails its test; True when the entry is usable."""
    if not isinstance(entry, dict):
        problems.append(f"{kind}[{index}] is {json.dumps(entry)[:40]}, not an object")
        return False
    usable = True
    for name, (test, expected) in checks.items():
        if name not in entry:
            problems.append(f'{_entry(kind, index, entry)} has no "{name}"')
            usable = False
        elif not test(entry[name]):
            problems.append(f'{_entry(kind, index, entry)} has "{name}": {json.dumps(entry[name])[:40]}; '
                            f"expected {expected}")
            usable = False
    return usable


def _check_categories(categories: list[Any], problems: list[str]) -> set[int]:
    known: set[int] = set()
    checks = {"id": (_is_id, "an integer"), "name": (lambda value: isinstance(value, str), "a part name")}
    for index, category in enumerate(categories):
        if not _missing_or_bad("categories", index, category, checks, problems):
            continue
        if category["name"] not in PART_INDEX:
            problems.append(f"{_entry('categories', index, category)} has unknown part name "
                            f"{category['name']!r}; expected one of: {', '.join(PARTS)}")
        elif category["id"] in known:
            problems.append(f"{_entry('categories', index, category)}: id {category['id']} appears twice")
        else:
            known.add(category["id"])
    return known


def _check_images(images: list[Any], problems: list[str]) -> dict[int, tuple[int, int]]:
    """The (height, width) of each usable image entry, by id."""
    sizes: dict[int, tuple[int, int]] = {}
    checks = {"id": (_is_id, "an integer"),
              "file_name": (lambda value: isinstance(value, str) and bool(value), "a file name"),
              "height": (_is_side, "a whole number of pixels >= 1"),
              "width": (_is_side, "a whole number of pixels >= 1")}
    for index, image in enumerate(images):
        if not _missing_or_bad("images", index, image, checks, problems):
            continue
        if image["id"] in sizes:
            problems.append(f"{_entry('images', index, image)}: id {image['id']} appears twice")
        else:
            sizes[image["id"]] = (int(image["height"]), int(image["width"]))
    return sizes


def _is_box(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(map(_is_number, value)) and min(value[2:]) >= 0


def _is_coordinate(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _segmentation_problem(segmentation: Any, size: tuple[int, int] | None) -> str | None:
    """What is wrong with a COCO segmentation: polygons (lists of x, y numbers), RLE (a dict of
    ``size`` [height, width] and ``counts``, a string or a list of run lengths)."""
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if not (isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0
                    and all(map(_is_coordinate, polygon))):
                return "polygons as lists of at least 3 x, y number pairs"
        return None
    if isinstance(segmentation, dict):
        rle_size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (isinstance(rle_size, list) and len(rle_size) == 2 and all(map(_is_id, rle_size))):
            return 'run-length encoding with "size": [height, width]'
        if not (isinstance(counts, str) or (isinstance(counts, list) and all(map(_is_id, counts)))):
            return 'run-length encoding with "counts" a string or a list of integers'
        if size is not None and tuple(rle_size) != size:
            return f"a mask of its image's size {list(size)} (it is {rle_size})"
        return None
    return "polygons (a list) or run-length encoding (an object)"


def _check_annotations(annotations: list[Any], images: dict[int, tuple[int, int]], categories: set[int],
                       problems: list[str]) -> None:
    checks = {"image_id": (_is_id, "an integer"), "category_id": (_is_id, "an integer"),
              "bbox": (_is_box, "[x, y, width, height] with finite numbers, width and height >= 0"),
              "area": (lambda value: _is_number(value) and value >= 0, "a number >= 0"),
              "segmentation": (lambda value: True, "")}
    for index, annotation in enumerate(annotations):
        if not _missing_or_bad("annotations", index, annotation, checks, problems):
            continue
        name = _entry("annotations", index, annotation)
        if annotation["image_id"] not in images:
            problems.append(f"{name} refers to missing image {annotation['image_id']}")
        if annotation["category_id"] not in categories:
            problems.append(f"{name} has unknown category id {annotation['category_id']}")
        expected = _segmentation_problem(annotation["segmentation"], images.get(annotation["image_id"]))
        if expected is not None:
            problems.append(f'{name} has "segmentation": {json.dumps(annotation["segmentation"])[:40]}; '
                            f"expected {expected}")


def check_part_images(images: Sequence[CocoImage], *, where: str = "") -> int:
    """Every image file of a COCO part file exists, opens and has the size the file gives it,
    from the headers alone (fast); one ``BadImagesError`` lists every bad file. Returns the
    number checked."""
    return check_images([entry.path for entry in images], where=where,
                        sizes=[(entry.width, entry.height) for entry in images])


def check_part_split(root: str | Path, split: str) -> int:
    """Check one split of K's data under a dataset root before any work: its annotation file's
    shape (``CocoFormatError``) and every image file (``BadImagesError``: missing, unreadable or
    of another size than the file says, all at once). Returns the number of images checked."""
    annotation_file, image_dir = split_paths(root, split)
    return check_part_images(load_coco_parts(annotation_file, image_dir), where=str(annotation_file))


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
    ``check_files`` checks every image file's header at once (``check_part_images``).
    """

    def __init__(self, annotation_file: str | Path, image_dir: str | Path, *, hflip_prob: float = 0.0,
                 mirror_sides: bool = False, cache: bool = True, check_files: bool = True) -> None:
        if not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must lie in [0, 1], got {hflip_prob}")
        self.mirror_sides = mirror_sides
        self.annotation_file = Path(annotation_file)
        self.images = load_coco_parts(annotation_file, image_dir)
        if check_files:  # a missing or bad image is found now, all of them at once, not mid-training
            check_part_images(self.images, where=str(self.annotation_file))
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
        return self._sample(index).image.float().div_(GREY_LEVELS)

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
        return image.float().div_(GREY_LEVELS), target


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[list, list]:
    """Lists of images and targets (detection models take images of different sizes)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)

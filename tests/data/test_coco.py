"""COCO part files: mask encodings, category ids, reading errors, and the Mask R-CNN dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unmask.data.coco import (
    MIRRORED_LABELS,
    CocoFormatError,
    PartSegmentationDataset,
    annotation_to_mask,
    check_part_split,
    collate_detection,
    load_coco_parts,
    mask_to_annotation,
    part_categories,
    split_paths,
    write_coco,
)
from unmask.data.images import BadImagesError
from unmask.parts import PART_INDEX, PARTS

# pycocotools 2.0 calls numpy's __array__ the NumPy 1 way
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _disc(size: int, centre: tuple[int, int], radius: int) -> np.ndarray:
    rows, columns = np.mgrid[:size, :size]
    return (rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 <= radius**2


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_rle_round_trip_is_exact() -> None:
    mask = _disc(40, (12, 20), 7) | _disc(40, (30, 30), 5)  # two regions
    annotation = mask_to_annotation(mask, annotation_id=3, image_id=1, category_id=0, encoding="rle")
    assert np.array_equal(annotation_to_mask(annotation, 40, 40), mask)
    assert annotation["area"] == mask.sum()
    assert annotation["bbox"] == [13, 5, 23, 31]  # tight x, y, w, h around both discs


def test_polygon_round_trip_keeps_the_shape() -> None:
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:20, 8:30] = True
    mask |= _disc(40, (30, 12), 6)
    annotation = mask_to_annotation(mask, annotation_id=0, image_id=0, category_id=5, encoding="polygon")
    assert isinstance(annotation["segmentation"], list) and len(annotation["segmentation"]) == 2
    assert _iou(annotation_to_mask(annotation, 40, 40), mask) > 0.9  # polygons trace pixel centres


def test_uncompressed_rle_is_read() -> None:
    mask = _disc(20, (10, 10), 4)
    counts, previous, run = [], False, 0
    for value in mask.ravel(order="F"):  # COCO runs go down the columns, starting with zeros
        if value != previous:
            counts.append(run)
            previous, run = value, 0
        run += 1
    counts.append(run)
    annotation = {"segmentation": {"size": [20, 20], "counts": counts}}
    assert np.array_equal(annotation_to_mask(annotation, 20, 20), mask)


def test_mask_errors_name_the_annotation() -> None:
    with pytest.raises(ValueError, match="annotation 7 .*non-empty"):
        mask_to_annotation(np.zeros((5, 5)), annotation_id=7, image_id=0, category_id=0)
    with pytest.raises(ValueError, match="unknown mask encoding"):
        mask_to_annotation(np.ones((5, 5)), annotation_id=0, image_id=0, category_id=0, encoding="png")


def test_categories_start_at_zero_in_part_order() -> None:
    categories = part_categories()
    assert [c["id"] for c in categories] == list(range(len(PARTS)))
    assert [c["name"] for c in categories] == list(PARTS)


def _write_images(image_dir: Path, count: int, size: int) -> list[dict]:
    image_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for image_id in range(count):
        name = f"{image_id}.png"
        Image.fromarray(np.full((size, size + 4, 3), 40 * image_id % 256, dtype=np.uint8)).save(image_dir / name)
        entries.append({"id": image_id, "file_name": name, "height": size, "width": size + 4})
    return entries


@pytest.fixture()
def part_file(tmp_path: Path) -> tuple[Path, Path]:
    """Two 24x28 images: image 0 with a wheel box and a vehicle_left disc, image 1 with nothing."""
    annotation_file, image_dir = split_paths(tmp_path, "train")
    entries = _write_images(image_dir, 2, 24)
    wheel = np.zeros((24, 28), dtype=bool)
    wheel[2:10, 3:9] = True
    annotations = [
        mask_to_annotation(wheel, annotation_id=0, image_id=0, category_id=PART_INDEX["wheel"]),
        mask_to_annotation(_disc(28, (14, 18), 5)[:24], annotation_id=1, image_id=0,
                           category_id=PART_INDEX["vehicle_left"], encoding="polygon"),
    ]
    write_coco(annotation_file, images=entries, annotations=annotations)
    return annotation_file, image_dir


def test_written_file_reads_back_with_ids_from_zero(part_file: tuple[Path, Path]) -> None:
    annotation_file, image_dir = part_file
    data = json.loads(annotation_file.read_text())
    assert min(c["id"] for c in data["categories"]) == 0
    images = load_coco_parts(annotation_file, image_dir)
    assert [image.id for image in images] == [0, 1]
    assert images[0].part_set() == {"wheel", "vehicle_left"}
    assert images[1].part_set() == frozenset()
    assert images[0].path == image_dir / "0.png"
    np.testing.assert_array_equal(images[0].boxes_xyxy()[0], [3, 2, 9, 10])
    assert images[0].masks().shape == (2, 24, 28) and images[1].masks().shape == (0, 24, 28)


def test_ids_starting_at_one_map_by_name(part_file: tuple[Path, Path], tmp_path: Path) -> None:
    annotation_file, image_dir = part_file
    data = json.loads(annotation_file.read_text())
    for category in data["categories"]:
        category["id"] += 1
    for annotation in data["annotations"]:
        annotation["category_id"] += 1
    shifted = tmp_path / "shifted.json"
    shifted.write_text(json.dumps(data))
    original, moved = load_coco_parts(annotation_file, image_dir), load_coco_parts(shifted, image_dir)
    assert [i.part_indices().tolist() for i in moved] == [i.part_indices().tolist() for i in original]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("annotations"), 'missing key "annotations"'),
        (lambda d: d["categories"][0].update(name="fin"), r"categories\[0\] \(id 0\) has unknown part name 'fin'"),
        (lambda d: d["annotations"][0].update(image_id=99), r"annotations\[0\] \(id 0\) refers to missing image 99"),
        (lambda d: d["annotations"][1].update(category_id=77), r"annotations\[1\] \(id 1\) has unknown category id 77"),
        # valid JSON of the wrong shape: named by entry, never a KeyError or TypeError
        (lambda d: d["annotations"][1].pop("category_id"), r'annotations\[1\] \(id 1\) has no "category_id"'),
        (lambda d: d.update(images=5), '"images" is 5, not a list'),
        (lambda d: d["images"][0].pop("file_name"), r'images\[0\] \(id 0\) has no "file_name"'),
        (lambda d: d["images"][1].update(height="tall"), r'images\[1\] \(id 1\) has "height": "tall"; expected a whole'),
        (lambda d: d["images"][0].pop("width"), r'images\[0\] \(id 0\) has no "width"'),
        (lambda d: d["categories"][2].pop("name"), r'categories\[2\] \(id 2\) has no "name"'),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, "w", 4]), r'annotations\[0\] \(id 0\) has "bbox": \[1, 2, "w", 4\]'),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r'"bbox": \[1, 2, 3\]; expected \[x, y, width, height\]'),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 2, "x"]]), r'annotations\[0\] .*"segmentation".*polygons'),
        (lambda d: d["annotations"][0].update(segmentation=7), "polygons .* or run-length encoding"),
        (lambda d: d["annotations"][0].update(segmentation={"size": [9, 9], "counts": "abc"}),
         r"a mask of its image's size \[24, 28\] \(it is \[9, 9\]\)"),
        (lambda d: d["annotations"].append("oops"), r'annotations\[\d+\] is "oops", not an object'),
        (lambda d: d["images"].append(dict(d["images"][0])), r"id 0 appears twice"),
        (lambda d: d.clear() or d.update(images=[], annotations=[], categories=[{"id": True, "name": 3}]),
         r'categories\[0\] \(id true\) has "id": true; expected an integer'),
    ],
)
def test_bad_files_raise_naming_the_file(part_file: tuple[Path, Path], tmp_path: Path, change, message: str) -> None:
    annotation_file, image_dir = part_file
    data = json.loads(annotation_file.read_text())
    change(data)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    with pytest.raises(CocoFormatError, match=message) as raised:
        load_coco_parts(broken, image_dir)
    assert str(raised.value).startswith(f"{broken}: ")


def test_every_problem_of_a_file_is_counted_and_the_first_few_named(part_file: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    annotation_file, image_dir = part_file
    data = json.loads(annotation_file.read_text())
    data["annotations"] = [dict(data["annotations"][0], id=number) for number in range(8)]
    for annotation in data["annotations"]:
        del annotation["category_id"]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    with pytest.raises(CocoFormatError) as raised:
        load_coco_parts(broken, image_dir)
    count = len(data["annotations"])
    assert f"{count} problems: annotations[0] (id 0) has no \"category_id\"; annotations[1]" in str(raised.value)
    assert f"and {count - 5} more" in str(raised.value)


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        load_coco_parts(tmp_path / "nothing.json", tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        load_coco_parts(tmp_path / "bad.json", tmp_path)


# --- the Mask R-CNN dataset ---------------------------------------------------------------------


def test_dataset_items_are_mask_rcnn_targets(part_file: tuple[Path, Path]) -> None:
    dataset = PartSegmentationDataset(*part_file)
    assert len(dataset) == 2
    image, target = dataset[0]
    assert image.shape == (3, 24, 28) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert target["labels"].tolist() == [PART_INDEX["wheel"] + 1, PART_INDEX["vehicle_left"] + 1]
    assert target["labels"].dtype == torch.int64 and target["boxes"].dtype == torch.float32
    assert target["masks"].shape == (2, 24, 28) and target["masks"].dtype == torch.uint8
    assert target["boxes"][0].tolist() == [3, 2, 9, 10]
    assert target["masks"][0].sum() == 48 and target["masks"][0, 2:10, 3:9].all()
    _, empty = dataset[1]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 24, 28)
    images, targets = collate_detection([dataset[0], dataset[1]])
    assert len(images) == len(targets) == 2
    assert torch.equal(dataset.image(0), image)


def test_flip_moves_image_masks_and_boxes_together(part_file: tuple[Path, Path]) -> None:
    plain, target = PartSegmentationDataset(*part_file)[0]
    flipped, flipped_target = PartSegmentationDataset(*part_file, hflip_prob=1.0)[0]
    assert torch.equal(flipped, plain.flip(-1))
    assert torch.equal(flipped_target["masks"], target["masks"].flip(-1))
    width = plain.shape[-1]
    assert torch.equal(flipped_target["boxes"][:, [0, 2]], width - target["boxes"][:, [2, 0]])
    assert torch.equal(flipped_target["boxes"][:, [1, 3]], target["boxes"][:, [1, 3]])
    columns = torch.nonzero(flipped_target["masks"][0].any(0)).flatten()  # the exact (RLE) wheel
    assert flipped_target["boxes"][0, 0] == columns.min() and flipped_target["boxes"][0, 2] == columns.max() + 1
    assert torch.equal(flipped_target["labels"], target["labels"])


def test_mirror_sides_swaps_left_and_right_parts(part_file: tuple[Path, Path]) -> None:
    _, target = PartSegmentationDataset(*part_file, hflip_prob=1.0, mirror_sides=True)[0]
    assert [PARTS[label - 1] for label in target["labels"]] == ["wheel", "vehicle_right"]
    assert torch.equal(MIRRORED_LABELS[MIRRORED_LABELS], torch.arange(len(PARTS) + 1))


def test_degenerate_boxes_are_left_out_and_size_mismatch_named(part_file: tuple[Path, Path]) -> None:
    annotation_file, image_dir = part_file
    data = json.loads(annotation_file.read_text())
    data["annotations"][0]["bbox"][2] = 0
    annotation_file.write_text(json.dumps(data))
    _, target = PartSegmentationDataset(annotation_file, image_dir)[0]
    assert target["labels"].tolist() == [PART_INDEX["vehicle_left"] + 1]
    data["images"][1]["height"] = 30
    annotation_file.write_text(json.dumps(data))
    with pytest.raises(BadImagesError, match=r"1 of 2 image files .*1.png: is 28x24 pixels but the annotations say 28x30"):
        PartSegmentationDataset(annotation_file, image_dir)  # found from the headers, before any training
    with pytest.raises(ValueError, match=r"1.png is 28x24 pixels but the file says 28x30"):
        PartSegmentationDataset(annotation_file, image_dir, check_files=False)[1]


def test_every_missing_or_bad_image_of_a_split_is_reported_at_once(tmp_path: Path) -> None:
    annotation_file, image_dir = split_paths(tmp_path, "train")
    write_coco(annotation_file, images=_write_images(image_dir, 9, 16), annotations=[])
    assert check_part_split(tmp_path, "train") == 9
    for number in range(7):
        (image_dir / f"{number}.png").unlink()
    (image_dir / "8.png").write_bytes(b"not a png")
    with pytest.raises(BadImagesError) as raised:
        check_part_split(tmp_path, "train")
    message = str(raised.value)
    assert message.startswith(f"8 of 9 image files of {annotation_file} cannot be used: {image_dir / '0.png'}: does not exist;")
    assert "and 3 more" in message and "8.png" not in message  # counted, not listed
    assert {path.name for path, _ in raised.value.failures} == {*(f"{n}.png" for n in range(7)), "8.png"}

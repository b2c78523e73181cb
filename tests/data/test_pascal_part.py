"""PASCAL-Part conversion on tiny .mat files written in the real files' structure."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image
from pycocotools.coco import COCO

from unmask.cli import main as cli_main
from unmask.data.coco import annotation_to_mask, load_coco_parts, split_paths
from unmask.data.pascal_part import (
    REPORT_FILE,
    PascalPartConversionError,
    PascalPartFormatError,
    convert_pascal_part,
    locate_pascal_part,
    read_pascal_part_mat,
    split_image_ids,
)
from unmask.parts import PARTS, VOC_CLASSES

HEIGHT, WIDTH = 24, 32
PART_DTYPE = [("part_name", "O"), ("mask", "O")]
OBJECT_DTYPE = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]


def blob(top: int, left: int, height: int, width: int, *, size: tuple[int, int] = (HEIGHT, WIDTH)) -> np.ndarray:
    """An elliptical uint8 mask (PASCAL-Part stores 0/1 uint8), with a one-pixel hole in big ones."""
    rows, columns = np.mgrid[: size[0], : size[1]]
    centre_y, centre_x = top + (height - 1) / 2, left + (width - 1) / 2
    inside = ((rows - centre_y) / (height / 2)) ** 2 + ((columns - centre_x) / (width / 2)) ** 2 <= 1
    mask = inside.astype(np.uint8)
    if height >= 6 and width >= 6:
        mask[int(centre_y), int(centre_x)] = 0
    return mask


def struct_array(entries: list[tuple], dtype: list[tuple[str, str]]) -> np.ndarray:
    """A 1xN MATLAB struct array, as PASCAL-Part stores ``objects`` and ``parts``."""
    array = np.zeros((1, len(entries)), dtype=dtype)
    for index, entry in enumerate(entries):
        array[0, index] = entry
    return array


def write_annotation(root: Path, name: str, objects: list[tuple[str, list[tuple[str, np.ndarray]] | None]], *,
                     size: tuple[int, int] = (HEIGHT, WIDTH), image_size: tuple[int, int] | None = None,
                     empty_parts_as_double: bool = False, class_index: int | None = None) -> dict[str, np.ndarray]:
    """Write ``Annotations_Part/<name>.mat`` and ``JPEGImages/<name>.jpg``; objects are (class, parts).

    ``parts=None`` writes MATLAB's ``[]`` (a 0x0 double) instead of a 1x0 struct array. Returns the
    part masks by "<object index>/<raw name>" for comparisons.
    """
    records, masks = [], {}
    for object_index, (object_class, parts) in enumerate(objects, 1):
        object_mask = np.zeros(size, dtype=np.uint8)
        part_entries = []
        for raw_name, mask in parts or []:
            object_mask |= mask
            part_entries.append((raw_name, mask))
            masks[f"{object_index}/{raw_name}"] = mask
        if parts is None or (not parts and empty_parts_as_double):
            parts_value = np.zeros((0, 0))
        else:
            parts_value = struct_array(part_entries, PART_DTYPE)
        if not object_mask.any():
            object_mask[: size[0] // 2, : size[1] // 2] = 1
        index = class_index if class_index is not None else VOC_CLASSES.index(object_class) + 1
        records.append((object_class, np.array([[float(index)]]), object_mask, parts_value))
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0] = (name, struct_array(records, OBJECT_DTYPE))
    (root / "Annotations_Part").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / "Annotations_Part" / f"{name}.mat", {"anno": anno}, do_compression=True)
    image_height, image_width = image_size or size
    pixels = np.random.default_rng(len(name)).integers(0, 255, (image_height, image_width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "JPEGImages" / f"{name}.jpg")
    return masks


@pytest.fixture
def pascal_root(tmp_path: Path) -> Path:
    """A tiny PASCAL-Part: every case the converter must handle, plus plain images to split."""
    root = tmp_path / "pascal"
    write_annotation(root, "2008_000001", [  # a cat with left/right variants, and a boat without parts
        ("cat", [("head", blob(2, 2, 10, 12)), ("lear", blob(1, 3, 4, 4)), ("rear", blob(1, 9, 4, 4)),
                 ("leye", blob(5, 5, 2, 2)), ("lfpa", blob(18, 4, 4, 5))]),
        ("boat", []),
    ])
    write_annotation(root, "2008_000002", [  # a train with coach sides and head sides
        ("train", [("head", blob(4, 2, 12, 10)), ("hfrontside", blob(6, 3, 6, 6)),
                   ("cfrontside_1", blob(4, 14, 10, 8)), ("coach_1", blob(2, 12, 16, 18)),
                   ("headlight_1", blob(8, 4, 3, 3))]),
    ])
    write_annotation(root, "2008_000003", [  # a bicycle with handlebar and chainwheel
        ("bicycle", [("fwheel", blob(10, 1, 12, 12)), ("bwheel", blob(10, 19, 12, 12)),
                     ("saddle", blob(3, 20, 3, 6)), ("handlebar", blob(2, 4, 3, 6)),
                     ("chainwheel", blob(14, 13, 5, 5))]),
    ])
    write_annotation(root, "2008_000004", [("chair", [])])  # no usable parts at all
    write_annotation(root, "2008_000005", [("train", [("coach_1", blob(2, 2, 16, 20))])])  # only dropped parts
    write_annotation(root, "2008_000006", [("person", [("head", blob(2, 10, 8, 8))])])  # a single part
    write_annotation(root, "2008_000007", [("dog", [("torso", blob(6, 6, 10, 16))]), ("sofa", None)])
    write_annotation(root, "2008_000008", [("cow", [("muzzle", blob(4, 4, 4, 4)), ("lbtail", blob(6, 20, 3, 3))])])
    write_annotation(root, "2008_000009", [("bird", [("beak", blob(4, 4, 3, 3))])], image_size=(HEIGHT + 1, WIDTH))
    for number in range(10, 22):  # plain images so that every split gets some
        write_annotation(root, f"2008_{number:06d}", [("tvmonitor", [("screen", blob(3, 3, 12, 20))])])
    (root / "Annotations_Part" / "2008_000099.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated" + bytes(40))
    return root


def convert(pascal_root: Path, out: Path, **options) -> tuple:
    report = convert_pascal_part(pascal_root, out, progress=False, **options)
    return report, {split: json.loads(split_paths(out, split)[0].read_text()) for split in ("train", "val", "test")}


def annotations_of(coco_files: dict, image_file: str) -> list[dict]:
    for data in coco_files.values():
        for image in data["images"]:
            if image["pascal_part_file"] == image_file:
                return [a for a in data["annotations"] if a["image_id"] == image["id"]]
    raise AssertionError(f"{image_file} is not in the converted data")


def part_names(annotations: list[dict]) -> Counter:
    return Counter(PARTS[a["category_id"]] for a in annotations)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_read_handles_single_objects_single_parts_and_empty_parts(tmp_path):
    write_annotation(tmp_path, "one", [("person", [("head", blob(2, 2, 6, 6))])])
    write_annotation(tmp_path, "many", [("cat", [("lear", blob(1, 1, 3, 3)), ("rear", blob(1, 6, 3, 3))]),
                                        ("boat", []), ("sofa", None), ("chair", [])], empty_parts_as_double=True)
    one = read_pascal_part_mat(tmp_path / "Annotations_Part" / "one.mat")
    assert one.image_name == "one" and len(one.objects) == 1
    assert (one.objects[0].class_name, one.objects[0].class_index) == ("person", 15)
    assert [p.name for p in one.objects[0].parts] == ["head"]
    assert one.objects[0].parts[0].mask.dtype == bool and one.objects[0].parts[0].mask.shape == (HEIGHT, WIDTH)
    many = read_pascal_part_mat(tmp_path / "Annotations_Part" / "many.mat")
    assert [o.class_name for o in many.objects] == ["cat", "boat", "sofa", "chair"]
    assert [[p.name for p in o.parts] for o in many.objects] == [["lear", "rear"], [], [], []]
    np.testing.assert_array_equal(many.objects[0].parts[1].mask, blob(1, 6, 3, 3).astype(bool))


def test_conversion_merges_drops_and_reports(pascal_root, tmp_path):
    report, coco_files = convert(pascal_root, tmp_path / "out")

    cat = annotations_of(coco_files, "2008_000001.mat")
    assert part_names(cat) == {"head": 1, "ear": 2, "eye": 1, "paw": 1}  # lear and rear stay two instances
    assert {a["raw_part_name"] for a in cat if PARTS[a["category_id"]] == "ear"} == {"lear", "rear"}
    assert {a["object_class"] for a in cat} == {"cat"} and {a["object_index"] for a in cat} == {1}

    train = annotations_of(coco_files, "2008_000002.mat")
    assert part_names(train) == {"head": 1, "coach_front": 1, "headlight": 1}
    bicycle = annotations_of(coco_files, "2008_000003.mat")
    assert part_names(bicycle) == {"wheel": 2, "saddle": 1}
    assert report.dropped_part_names == {"chainwheel": 1, "coach_1": 2, "handlebar": 1, "hfrontside": 1}

    assert report.objects_without_parts == 3  # the boat, the chair and the sofa (whose parts are MATLAB's [])
    assert report.objects_without_usable_parts == 1  # the train with only coach_1; the cow keeps its muzzle
    assert report.images_without_parts == ["2008_000004", "2008_000005"]
    assert report.unknown_part_names == {"lbtail": ["2008_000008.mat"]}
    assert part_names(annotations_of(coco_files, "2008_000008.mat")) == {"muzzle": 1}

    assert set(report.problem_files) == {"2008_000009.mat", "2008_000099.mat"}
    assert "25x32" in report.problem_files["2008_000009.mat"] and "24x32" in report.problem_files["2008_000009.mat"]
    assert "cannot read" in report.problem_files["2008_000099.mat"]
    written = {image["pascal_part_file"] for data in coco_files.values() for image in data["images"]}
    assert written == {f"2008_{n:06d}.mat" for n in (1, 2, 3, 6, 7, 8, *range(10, 22))}
    assert report.images_written == 18 and report.annotation_files == 22

    all_annotations = [a for data in coco_files.values() for a in data["annotations"]]
    assert report.part_counts == dict(sorted(part_names(all_annotations).items(), key=lambda item: PARTS.index(item[0])))
    assert len({a["id"] for a in all_annotations}) == len(all_annotations)
    saved = json.loads((tmp_path / "out" / "VOC2010" / REPORT_FILE).read_text())
    assert saved["problem_files"] == report.problem_files and saved["images_written"] == 18
    summary = report.summary()
    assert "2008_000099.mat" in summary and "2008_000004" in summary and "lbtail" in summary


def test_original_merge_reproduces_handlebar_and_chainwheel_defects(pascal_root, tmp_path):
    report, coco_files = convert(pascal_root, tmp_path / "out", merge_mode="original")
    assert part_names(annotations_of(coco_files, "2008_000003.mat")) == {"wheel": 3, "saddle": 1, "hand": 1}
    assert part_names(annotations_of(coco_files, "2008_000002.mat")) == {"head": 1, "coach_front": 1, "headlight": 1}
    assert report.dropped_part_names == {"coach_1": 2, "hfrontside": 1}


@pytest.mark.parametrize("encoding", ["rle", "polygon"])
def test_masks_decode_to_the_mat_masks(pascal_root, tmp_path, encoding):
    _, coco_files = convert(pascal_root, tmp_path / "out", encoding=encoding)
    expected = {**read_masks(pascal_root, "2008_000001"), **read_masks(pascal_root, "2008_000003")}
    checked = 0
    for image_file in ("2008_000001.mat", "2008_000003.mat"):
        for annotation in annotations_of(coco_files, image_file):
            decoded = annotation_to_mask(annotation, HEIGHT, WIDTH)
            original = expected[(image_file, annotation["object_index"], annotation["raw_part_name"])]
            if encoding == "rle":
                np.testing.assert_array_equal(decoded, original)
            else:
                assert isinstance(annotation["segmentation"], list)
                # traced contours fill holes and shave edge pixels, which matters most for tiny parts
                assert iou(decoded, original) > (0.9 if original.sum() >= 50 else 0.7), annotation["raw_part_name"]
            rows, columns = np.nonzero(original)
            assert annotation["bbox"] == [columns.min(), rows.min(), np.ptp(columns) + 1, np.ptp(rows) + 1]
            checked += 1
    assert checked == 8


def read_masks(root: Path, name: str) -> dict:
    anno = read_pascal_part_mat(root / "Annotations_Part" / f"{name}.mat")
    return {(f"{name}.mat", index, part.name): part.mask
            for index, obj in enumerate(anno.objects, 1) for part in obj.parts}


def test_output_loads_with_k_reader_and_pycocotools(pascal_root, tmp_path):
    out = tmp_path / "out"
    report, coco_files = convert(pascal_root, out)
    for split in ("train", "val", "test"):
        annotation_file, image_dir = split_paths(out, split)
        images = load_coco_parts(annotation_file, image_dir)
        assert len(images) == report.images_per_split[split] > 0
        for image in images:
            assert image.path.is_file() and Image.open(image.path).size == (image.width, image.height)
            assert image.masks().shape == (len(image.annotations), image.height, image.width)
            assert image.masks().any(axis=(1, 2)).all()
        coco = COCO(str(annotation_file))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(PARTS)
        assert min(coco.getCatIds()) == 0
        for annotation in coco.loadAnns(coco.getAnnIds()):
            assert coco.annToMask(annotation).sum() == annotation["area"]
    source = (pascal_root / "JPEGImages" / "2008_000001.jpg").read_bytes()
    copies = list((out / "VOC2010" / "Images").glob("*/2008_000001.jpg"))
    assert len(copies) == 1 and copies[0].read_bytes() == source


def test_split_is_deterministic_and_follows_the_ratios(pascal_root, tmp_path):
    _, first = convert(pascal_root, tmp_path / "a", seed=3)
    _, again = convert(pascal_root, tmp_path / "b", seed=3)
    _, other = convert(pascal_root, tmp_path / "c", seed=4)
    assert first == again

    def files(coco_files):
        return {split: sorted(i["pascal_part_file"] for i in data["images"]) for split, data in coco_files.items()}

    assert files(first) != files(other)
    assert [len(first[split]["images"]) for split in ("train", "val", "test")] == [14, 2, 2]  # 18 usable images

    ids = [f"img{i:03d}" for i in range(100)]
    split = split_image_ids(reversed(ids), seed=1)
    assert split == split_image_ids(ids, seed=1)
    assert [len(split[s]) for s in ("train", "val", "test")] == [80, 10, 10]
    assert sorted(sum(split.values(), [])) == ids
    assert [len(part) for part in split_image_ids(ids[:3], seed=0).values()] == [1, 1, 1]
    with pytest.raises(ValueError, match="sum to 1"):
        split_image_ids(ids, ratios=(0.8, 0.1, 0.2))


def test_interrupted_run_leaves_nothing_and_foreign_output_is_kept(pascal_root, tmp_path, monkeypatch):
    import unmask.data.pascal_part as pascal_part

    out = tmp_path / "out"

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pascal_part, "write_coco", fail)
    with pytest.raises(KeyboardInterrupt):
        convert_pascal_part(pascal_root, out, progress=False)
    assert list(out.iterdir()) == []
    monkeypatch.undo()

    convert_pascal_part(pascal_root, out, progress=False)
    convert_pascal_part(pascal_root, out, progress=False, seed=1)  # its own output is replaced
    assert json.loads((out / "VOC2010" / REPORT_FILE).read_text())["seed"] == 1

    foreign = tmp_path / "foreign"
    (foreign / "VOC2010").mkdir(parents=True)
    (foreign / "VOC2010" / "train.json").write_text("{}")
    with pytest.raises(FileExistsError, match="not written by the PASCAL-Part converter"):
        convert_pascal_part(pascal_root, foreign, progress=False)
    assert (foreign / "VOC2010" / "train.json").read_text() == "{}"


def test_file_level_mismatches_are_reported_by_name(tmp_path):
    root = tmp_path / "pascal"
    write_annotation(root, "good", [("person", [("head", blob(2, 2, 6, 6))])])
    write_annotation(root, "wrong_class", [("person", [("head", blob(2, 2, 6, 6))])], class_index=12)
    write_annotation(root, "no_image", [("person", [("head", blob(2, 2, 6, 6))])])
    (root / "JPEGImages" / "no_image.jpg").unlink()
    write_annotation(root, "bad_image", [("person", [("head", blob(2, 2, 6, 6))])])
    (root / "JPEGImages" / "bad_image.jpg").write_bytes(b"not a jpeg")
    write_annotation(root, "renamed", [("person", [("head", blob(2, 2, 6, 6))])])
    (root / "Annotations_Part" / "renamed.mat").rename(root / "Annotations_Part" / "other.mat")
    (root / "JPEGImages" / "renamed.jpg").rename(root / "JPEGImages" / "other.jpg")
    scipy.io.savemat(root / "Annotations_Part" / "no_anno.mat", {"something": np.zeros(3)})

    report = convert_pascal_part(root, tmp_path / "out", progress=False, split_ratios=(1.0, 0.0, 0.0))
    problems = report.problem_files
    assert set(problems) == {"wrong_class.mat", "no_image.mat", "bad_image.mat", "other.mat", "no_anno.mat"}
    assert "'dog'" in problems["wrong_class.mat"] and "no_image.jpg" in problems["no_image.mat"]
    assert "cannot be read" in problems["bad_image.mat"] and "'renamed'" in problems["other.mat"]
    assert "'anno'" in problems["no_anno.mat"]
    assert report.images_per_split == {"train": 1, "val": 0, "test": 0}
    with pytest.raises(PascalPartFormatError, match="no_anno.mat"):
        read_pascal_part_mat(root / "Annotations_Part" / "no_anno.mat")


def test_nothing_usable_and_missing_folders_are_clear_errors(tmp_path):
    root = tmp_path / "pascal"
    write_annotation(root, "chair_only", [("chair", [])])
    with pytest.raises(PascalPartConversionError, match="no image .* has a usable part"):
        convert_pascal_part(root, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "VOC2010").exists()

    (root / "JPEGImages").rename(root / "elsewhere")
    with pytest.raises(FileNotFoundError) as error:
        locate_pascal_part(root)
    assert str(root / "JPEGImages") in str(error.value) and str(root / "VOC2010" / "JPEGImages") in str(error.value)
    (root / "VOC2010").mkdir()
    (root / "elsewhere").rename(root / "VOC2010" / "JPEGImages")
    assert locate_pascal_part(root) == (root / "Annotations_Part", root / "VOC2010" / "JPEGImages")
    with pytest.raises(FileNotFoundError, match="Annotations_Part"):
        locate_pascal_part(tmp_path)


def test_cli_prepare_pascal_part_end_to_end(pascal_root, tmp_path, capsys):
    out = tmp_path / "unmask"
    (out / "cs3-1" / "train" / "car").mkdir(parents=True)  # M's data beside K's stays untouched
    code = cli_main(["prepare", "--dataset", "pascal-part", "--pascal-root", str(pascal_root), "--out", str(out),
                     "--pascal-merge", "original", "--seed", "5", "--verbosity", "1"])
    assert code == 0
    output = capsys.readouterr().out
    assert "18 of 22 annotation files converted (original merge" in output and "2008_000099.mat" in output
    report = json.loads((out / "VOC2010" / REPORT_FILE).read_text())
    assert (report["merge_mode"], report["seed"]) == ("original", 5)
    assert (out / "cs3-1" / "train" / "car").is_dir()
    assert sum(len(load_coco_parts(*split_paths(out, s))) for s in ("train", "val", "test")) == 18

    assert cli_main(["prepare", "--dataset", "pascal-part", "--out", str(out)]) == 1
    assert "--pascal-root" in capsys.readouterr().err
    assert cli_main(["prepare", "--dataset", "pascal-part", "--pascal-root", str(pascal_root)]) == 1
    assert "--out" in capsys.readouterr().err
    assert cli_main(["prepare", "--dataset", "pascal-part", "--pascal-root", str(tmp_path / "missing"),
                     "--out", str(out)]) == 1
    assert "is not a folder" in capsys.readouterr().err


def test_images_are_copied_when_hard_links_fail(pascal_root, tmp_path, monkeypatch):
    import unmask.data.pascal_part as pascal_part

    def cross_device(source, destination):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(pascal_part.os, "link", cross_device)
    convert_pascal_part(pascal_root, tmp_path / "out", progress=False)
    copies = sorted((tmp_path / "out" / "VOC2010" / "Images").glob("*/*.jpg"))
    assert len(copies) == 18
    for copy in copies:
        source = pascal_root / "JPEGImages" / copy.name
        assert copy.stat().st_nlink == 1 and copy.read_bytes() == source.read_bytes()

"""The synthetic part world: layout, COCO annotations, part identities, determinism, manifest rules
and bad input."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.mask import decode

from unmask.constants import SPLITS
from unmask.data import synthetic
from unmask.data.coco import load_coco_parts, split_paths
from unmask.data.synthetic import (
    LAYOUTS,
    MANIFEST,
    PART_LOOKS,
    SyntheticDataError,
    SyntheticSpec,
    ensure_synthetic,
    generate_synthetic,
    image_rng,
    k_canvas_size,
    manifest_matches,
    parse_image_size,
    read_manifest,
    render_examples,
    render_object,
    split_counts,
)
from unmask.parts import CLASS_PARTS, CLASS_SETS, CLASSES, PARTS, UnknownNameError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools

TINY = SyntheticSpec(image_size=40, images_per_class=5, k_images=32, distractor_prob=0.5, seed=3)


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("world") / "synthetic", TINY, progress=False, workers=1)


# --- the world's design -----------------------------------------------------------------------------


def test_every_class_layout_holds_exactly_its_expected_parts() -> None:
    assert set(LAYOUTS) == set(CLASSES)
    for object_class, slots in LAYOUTS.items():
        assert {slot.part for slot in slots} == CLASS_PARTS[object_class], object_class


def test_every_part_has_its_own_look() -> None:
    assert set(PART_LOOKS) == set(PARTS)
    for (name_a, a), (name_b, b) in combinations(PART_LOOKS.items(), 2):
        colour_distance = np.linalg.norm(np.subtract(a.primary, b.primary))
        if (a.shape, a.texture) == (b.shape, b.texture):  # the colour alone tells them apart
            assert colour_distance >= 80, (name_a, name_b, colour_distance)
        else:  # two of shape, texture and colour differ
            differences = (a.shape != b.shape) + (a.texture != b.texture) + (colour_distance >= 60)
            assert differences >= 2, (name_a, name_b, colour_distance)


def test_images_show_most_but_rarely_all_of_their_class_parts() -> None:
    fractions, complete = [], 0
    for index in range(96):
        object_class = CLASSES[index % len(CLASSES)]
        rendered = render_object(object_class, image_rng(0, "m", "train", object_class, index), SyntheticSpec(image_size=48))
        shown = rendered.part_set(with_distractors=False)
        assert shown <= CLASS_PARTS[object_class]
        fractions.append(len(shown) / len(CLASS_PARTS[object_class]))
        complete += shown == CLASS_PARTS[object_class] and len(shown) > 2
    assert 0.5 <= np.mean(fractions) <= 0.9
    assert complete < 0.5 * 96


def test_render_object_masks_are_disjoint_visible_pixels() -> None:
    spec = SyntheticSpec(image_size=64, occluder_prob=1.0)
    rendered = render_object("person", image_rng(1, "m", "val", "person", 0), spec)
    assert rendered.image.shape == (64, 64, 3) and rendered.image.dtype == np.uint8
    assert rendered.masks.shape == (len(rendered.parts), 64, 64)
    assert rendered.masks.any(axis=(1, 2)).all()
    assert rendered.masks.sum(axis=0).max() == 1  # a pixel shows at most one part


def test_distractors_come_from_other_classes() -> None:
    found, spec = 0, SyntheticSpec(image_size=48, distractor_prob=1.0)
    for index in range(40):
        rendered = render_object("dog", image_rng(0, "m", "train", "dog", index), spec)
        for part, flag in zip(rendered.parts, rendered.distractor, strict=True):
            assert (part in CLASS_PARTS["dog"]) != flag
            found += flag
    assert found > 20  # occasionally hidden by an occluder, never missing as a rule


# --- layout and annotations on disk ---------------------------------------------------------------------


def test_layout_and_counts(tiny_world: Path) -> None:
    m_counts = split_counts(TINY.images_per_class, synthetic.M_SPLIT_FRACTIONS)
    assert m_counts == {"train": 3, "val": 1, "test": 1}
    for class_set, classes in CLASS_SETS.items():
        for split in SPLITS:
            folder = tiny_world / class_set / split
            assert sorted(p.name for p in folder.iterdir()) == sorted(classes)
            for object_class in classes:
                images = sorted((folder / object_class).glob("*.png"))
                assert len(images) == m_counts[split]
                with Image.open(images[0]) as image:
                    assert image.size == (40, 40) and image.mode == "RGB"
    # a class's images are the same in every class set that has it
    assert (tiny_world / "cs3-1/test/car/car_test_00000.png").read_bytes() == (
        tiny_world / "cs5-2/test/car/car_test_00000.png").read_bytes()
    manifest = read_manifest(tiny_world)
    assert manifest["spec"] == TINY.to_json() and manifest["generator_version"] == synthetic.GENERATOR_VERSION
    k_counts = split_counts(TINY.k_images, synthetic.K_SPLIT_FRACTIONS)
    for split in SPLITS:
        annotation_file, image_dir = split_paths(tiny_world, split)
        assert len(list(image_dir.glob("*.png"))) == k_counts[split] == manifest["k"]["splits"][split]["images"]
    assert not [p for p in tiny_world.parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_loaders_read_the_layout_unchanged(tiny_world: Path) -> None:
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(tiny_world / "cs5-2" / "train"))
    assert sorted(folder.classes) == sorted(CLASS_SETS["cs5-2"]) and len(folder) == 5 * 3
    images = load_coco_parts(*split_paths(tiny_world, "train"))
    assert len(images) == split_counts(TINY.k_images, synthetic.K_SPLIT_FRACTIONS)["train"]
    assert all(image.path.is_file() for image in images)


def test_coco_annotations_equal_the_drawn_masks(tiny_world: Path) -> None:
    classes_seen, distractors = set(), 0
    for split in SPLITS:
        annotation_file, image_dir = split_paths(tiny_world, split)
        coco = COCO(str(annotation_file))
        assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == list(enumerate(PARTS))
        for image_id in coco.getImgIds():
            entry = coco.loadImgs(image_id)[0]
            object_class = entry["object_class"]
            classes_seen.add(object_class)
            rendered = render_object(
                object_class, image_rng(TINY.seed, "k", split, object_class, image_id - 1), TINY)
            with Image.open(image_dir / entry["file_name"]) as image:
                assert np.array_equal(np.asarray(image), rendered.image)  # PNG is lossless
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
            assert [PARTS[a["category_id"]] for a in annotations] == rendered.parts
            for annotation, drawn, flag in zip(annotations, rendered.masks, rendered.distractor, strict=True):
                mask = decode(coco.annToRLE(annotation)).astype(bool)
                assert np.array_equal(mask, drawn)
                x, y, w, h = annotation["bbox"]
                rows, columns = np.nonzero(mask)
                assert (x, y, x + w - 1, y + h - 1) == (columns.min(), rows.min(), columns.max(), rows.max())
                assert annotation["area"] == mask.sum()
                assert annotation["distractor"] == flag
                assert (PARTS[annotation["category_id"]] in CLASS_PARTS[object_class]) != flag
                distractors += flag
    assert classes_seen == set(CLASSES)  # K's images show every class
    assert distractors > 0


# --- determinism and the manifest -----------------------------------------------------------------------------


def test_same_seed_same_bytes_whatever_the_worker_count(tiny_world: Path, tmp_path: Path) -> None:
    again = generate_synthetic(tmp_path / "again", TINY, progress=False, workers=2)
    assert _files(again) == _files(tiny_world)
    other = generate_synthetic(tmp_path / "other", dataclasses.replace(TINY, seed=4), progress=False,
                               workers=1)
    assert _files(other).keys() == _files(tiny_world).keys()
    assert _files(other) != _files(tiny_world)


def test_ensure_reuses_a_matching_world_and_regenerates_a_different_one(tmp_path: Path) -> None:
    spec = SyntheticSpec(image_size=32, images_per_class=3, k_images=3, class_sets=("cs3-1",))
    root = ensure_synthetic(tmp_path / "world", spec, progress=False, workers=1)
    marker = root / "cs3-1" / "marker.txt"
    marker.write_text("left by the test")
    ensure_synthetic(root, spec, progress=False, workers=1)
    assert marker.exists()  # reused, untouched
    bigger = SyntheticSpec(image_size=32, images_per_class=4, k_images=3, class_sets=("CS3a",))
    assert not manifest_matches(root, bigger)
    ensure_synthetic(root, bigger, progress=False, workers=1)
    assert not marker.exists() and manifest_matches(root, bigger)
    assert len(list((root / "cs3-1" / "train" / "car").glob("*.png"))) == split_counts(4, (0.6, 0.2, 0.2))["train"]
    assert sorted(p.name for p in root.iterdir()) == ["VOC2010", "cs3-1", MANIFEST]


def test_a_manifest_from_another_generator_version_is_not_reused(tmp_path: Path) -> None:
    spec = SyntheticSpec(image_size=32, images_per_class=3, k_images=3, class_sets=("cs3-1",))
    root = generate_synthetic(tmp_path / "world", spec, progress=False, workers=1)
    manifest = json.loads((root / MANIFEST).read_text())
    (root / MANIFEST).write_text(json.dumps({**manifest, "generator_version": 0}))
    assert not manifest_matches(root, spec)


def test_a_folder_that_is_not_a_generated_world_is_never_replaced(tmp_path: Path) -> None:
    foreign = tmp_path / "my_data"
    foreign.mkdir()
    (foreign / "precious.jpg").write_bytes(b"not ours")
    with pytest.raises(SyntheticDataError, match="no manifest.json"):
        ensure_synthetic(foreign, SyntheticSpec(image_size=32, images_per_class=3, k_images=3), progress=False)
    assert [p.name for p in foreign.iterdir()] == ["precious.jpg"]


# --- bad input ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image_size": 31}, "at least 32"),
        ({"images_per_class": 0}, "images_per_class = 0"),
        ({"k_images": 2}, "k_images = 2"),
        ({"distractor_prob": 1.5}, "distractor_prob"),
        ({"class_sets": ()}, "class_sets is empty"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_specs_are_refused_with_the_value(changes: dict, message: str) -> None:
    with pytest.raises(SyntheticDataError, match=message):
        SyntheticSpec(**changes)


def test_unknown_class_set_names_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError, match="cs5-2"):
        SyntheticSpec(class_sets=("cs9-9",))


def test_an_output_below_a_file_is_refused_before_writing(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SyntheticDataError, match="is a file"):
        generate_synthetic(blocker / "world", TINY, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_non_writable_output_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.name != "posix" or os.geteuid() == 0:  # permissions do not bind this user: simulate them
        monkeypatch.setattr(os, "access", lambda path, mode, **_: Path(path) != locked)
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            generate_synthetic(locked / "world", TINY, progress=False)
    finally:
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []


def test_a_failure_midway_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = synthetic._run_task
    calls = []

    def failing(task, spec):  # noqa: ANN001, ANN202 - the private task signature
        calls.append(task)
        if len(calls) == 10:
            raise RuntimeError("disk full")
        return real(task, spec)

    monkeypatch.setattr(synthetic, "_run_task", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_synthetic(tmp_path / "world", TINY, progress=False, workers=1)
    assert list(tmp_path.iterdir()) == []


# --- the command line and the figure ---------------------------------------------------------------------------


def test_prepare_command_writes_then_reuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from unmask.cli import main

    out = tmp_path / "data"
    argv = ["prepare", "--dataset", "synthetic", "--out", str(out), "--image-size", "32", "--images-per-class", "3",
            "--synthetic-k-images", "16", "--synthetic-workers", "1", "--verbosity", "1"]
    assert main(argv) == 0
    assert "drew 34 images" in capsys.readouterr().out
    assert manifest_matches(out, SyntheticSpec(image_size=32, images_per_class=3, k_images=16))
    assert main(argv) == 0
    assert "reusing" in capsys.readouterr().out


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--image-size", "16", "too small"),
    ("--images-per-class", "0", "expected a number >= 1, got 0"),
    ("--images-per-class", "2", "at least 3"),
    ("--class-set", "cs7", "cs5-2"),
])
def test_prepare_command_rejects_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str,
                                            value: str, message: str) -> None:
    from unmask.cli import main

    out = tmp_path / "data"
    assert main(["prepare", "--out", str(out), option, value, "--verbosity", "0"]) != 0
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_examples_figure(tmp_path: Path) -> None:
    path = render_examples(tmp_path / "figure" / "examples.png", spec=SyntheticSpec(image_size=32),
                           classes=("person", "car"))
    with Image.open(path) as image:
        assert image.size[0] > 400 and image.size[1] > 100


def test_two_runs_generating_the_same_world_at_once_draw_it_once(tmp_path: Path, monkeypatch) -> None:
    """The second waits for the first's lock, then finds its world and reuses it (flock locks are
    per open file, so two threads stand for two processes)."""
    import threading
    import time

    generated, calls = threading.Event(), []

    def slow_generate(root, spec, **kwargs):
        calls.append(root)
        time.sleep(0.3)  # the second run arrives meanwhile
        generated.set()
        return Path(root)

    monkeypatch.setattr(synthetic, "generate_synthetic", slow_generate)
    monkeypatch.setattr(synthetic, "manifest_matches", lambda root, spec: generated.is_set())
    spec = SyntheticSpec(image_size=32, images_per_class=3, k_images=3)
    runs = [threading.Thread(target=ensure_synthetic, args=(tmp_path / "world", spec)) for _ in range(2)]
    for run in runs:
        run.start()
        time.sleep(0.05)
    for run in runs:
        run.join(10)
    assert len(calls) == 1


# --- K's images at the paper's sizes --------------------------------------------------------------------------


def _world_digest(root: Path) -> str:
    """Digest of a world's file names, decoded PNG pixels and other files' bytes (not the PNG bytes,
    which depend on zlib's version)."""
    hasher = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            hasher.update(str(path.relative_to(root)).encode())
            if path.suffix == ".png":
                with Image.open(path) as image:
                    hasher.update(np.asarray(image).tobytes())
            else:
                hasher.update(path.read_bytes())
    return hasher.hexdigest()[:32]


def test_the_default_worlds_are_the_same_as_before_k_image_size(tiny_world: Path, tmp_path: Path) -> None:
    # digests of worlds drawn by the generator before K's images could differ from M's (same pixels,
    # annotations and manifests), at the default 128 px and at TINY's 40 px with distractors
    assert _world_digest(tiny_world) == "8b6b6ffa54f07c21c22dd90d7860ee04"
    default = SyntheticSpec(images_per_class=3, k_images=16, class_sets=("cs3-1",))
    assert "k_image_size" not in default.to_json()
    root = generate_synthetic(tmp_path / "default", default, progress=False, workers=1)
    assert _world_digest(root) == "72aa7187cabf97b888e908fef4f201e0"


PASCAL_LIKE = SyntheticSpec(image_size=40, images_per_class=3, k_images=24, seed=1, class_sets=("cs3-1",),
                            k_image_size=(100, 75))


def test_k_images_are_pascal_like_canvases_and_m_images_stay_square(tmp_path: Path) -> None:
    root = generate_synthetic(tmp_path / "world", PASCAL_LIKE, progress=False, workers=1)
    assert read_manifest(root)["spec"]["k_image_size"] == [100, 75]
    assert manifest_matches(root, PASCAL_LIKE) and not manifest_matches(root, dataclasses.replace(PASCAL_LIKE,
                                                                                                  k_image_size=None))
    with Image.open(next((root / "cs3-1" / "train" / "car").glob("*.png"))) as image:
        assert image.size == (40, 40)
    sizes = set()
    for split in SPLITS:
        annotation_file, image_dir = split_paths(root, split)
        coco = json.loads(annotation_file.read_text())
        for entry in coco["images"]:
            with Image.open(image_dir / entry["file_name"]) as image:
                assert image.size == (entry["width"], entry["height"])
            sizes.add((entry["width"], entry["height"]))
        for entry in load_coco_parts(annotation_file, image_dir):  # masks decode at the image's size
            for annotation in entry.annotations:
                assert decode(annotation["segmentation"]).shape == (entry.height, entry.width)
    assert {max(size) for size in sizes} == {100}
    assert all(66 <= min(size) <= 75 for size in sizes)  # the shorter side varies a little, as VOC's
    portrait = [size for size in sizes if size[1] > size[0]]
    assert 0 < len(portrait) < len(sizes) / 2  # a few are portrait
    assert len(sizes) > 5


def test_k_canvas_sizes_do_not_depend_on_the_drawing() -> None:
    assert k_canvas_size(SyntheticSpec(image_size=48), "train", "car", 3) == (48, 48)
    first = [k_canvas_size(PASCAL_LIKE, "val", CLASSES[i % 16], i) for i in range(32)]
    assert first == [k_canvas_size(PASCAL_LIKE, "val", CLASSES[i % 16], i) for i in range(32)]
    assert first != [k_canvas_size(dataclasses.replace(PASCAL_LIKE, seed=2), "val", CLASSES[i % 16], i)
                     for i in range(32)]


def test_objects_on_wide_canvases_use_the_free_room_and_keep_their_size() -> None:
    spec = SyntheticSpec(image_size=64, part_keep=(1.0, 1.0), occluder_prob=0.0)
    centres, heights = [], []
    for index in range(12):
        rendered = render_object("car", image_rng(0, "k", "train", "car", index), spec, canvas=(160, 64))
        assert rendered.image.shape == (64, 160, 3) and rendered.masks.shape[1:] == (64, 160)
        rows, columns = np.nonzero(rendered.masks.any(axis=0))
        centres.append(columns.mean())
        heights.append(rows.max() - rows.min())
    assert max(centres) - min(centres) > 40  # placed along the long side, not always in the middle
    assert 20 < np.mean(heights) < 64  # scaled to the short side, not squeezed or cut off


@pytest.mark.parametrize(("text", "expected"), [("500x375", (500, 375)), (" 375X500 ", (375, 500)), ("", None)])
def test_image_sizes_parse(text: str, expected: tuple[int, int] | None) -> None:
    assert parse_image_size(text) == expected


@pytest.mark.parametrize("text", ["500", "500x", "x375", "500x375x3", "big"])
def test_bad_image_sizes_are_refused(text: str) -> None:
    with pytest.raises(SyntheticDataError, match="WIDTHxHEIGHT"):
        parse_image_size(text)


def test_too_small_k_images_are_refused() -> None:
    with pytest.raises(SyntheticDataError, match="k_image_size = 500x30 is too small"):
        SyntheticSpec(k_image_size=(500, 30))

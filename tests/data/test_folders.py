from pathlib import Path

import pytest
import torch
from PIL import Image

from unmask.data.folders import ClassFolderDataset, DataLayoutError, check_class_folders
from unmask.data.images import BadImagesError
from unmask.parts import ClassSet

CLASS_SET = ClassSet.named("cs5-2")  # dog, car, bird, train, person: not alphabetical


def write_image(path: Path, image: torch.Tensor) -> None:
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def write_split(root: Path, split: str = "train", *, per_class: int = 2, size: tuple[int, int] = (40, 60)) -> None:
    """Images whose red channel encodes the class index, so a label can be read off the pixels."""
    for label, name in enumerate(CLASS_SET.classes):
        folder = root / CLASS_SET.name / split / name
        folder.mkdir(parents=True)
        for index in range(per_class):
            image = torch.zeros(3, *size, dtype=torch.uint8)
            image[0] = 40 * label
            image[1] = 100 + index
            write_image(folder / f"{index}.png", image)


def test_labels_follow_the_class_set_order_not_the_alphabet(tmp_path):
    write_split(tmp_path)
    dataset = ClassFolderDataset(tmp_path, CLASS_SET, "train", image_size=16)
    assert dataset.classes == CLASS_SET.classes
    for index in range(len(dataset)):
        image, label = dataset[index]
        assert round(image[0].mean().item() * 255 / 40) == label
        assert dataset.samples[index][0].parent.name == CLASS_SET.classes[label]


def test_images_are_resized_and_center_cropped_floats_in_unit_range(tmp_path):
    write_split(tmp_path, size=(40, 60))
    dataset = ClassFolderDataset(tmp_path, ClassSet.named("CS5b"), "train", image_size=24)  # the paper's name works too
    image, _ = dataset[3]
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    images, labels = dataset.tensors()
    assert images.shape == (10, 3, 24, 24) and labels.dtype == torch.int64
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_cached_images_equal_decoded_ones(tmp_path):
    write_split(tmp_path)
    cached = ClassFolderDataset(tmp_path, CLASS_SET, "train", image_size=20, cache=True)
    plain = ClassFolderDataset(tmp_path, CLASS_SET, "train", image_size=20)
    for index in range(len(plain)):
        assert torch.equal(cached[index][0], plain[index][0])


def test_jpeg_images_are_read(tmp_path):
    write_split(tmp_path)
    write_image(tmp_path / CLASS_SET.name / "train" / "dog" / "x.JPG", torch.full((3, 30, 30), 128, dtype=torch.uint8))
    assert len(ClassFolderDataset(tmp_path, CLASS_SET, "train", image_size=16)) == 11


def test_missing_split_names_the_layout_and_the_prepare_command(tmp_path):
    with pytest.raises(DataLayoutError, match=r"(?s)cs5-2/test.*<class set>/<split>/<class>.*prepare --dataset synthetic"):
        ClassFolderDataset(tmp_path, CLASS_SET, "test", image_size=16)


def test_missing_and_empty_class_folders_are_named(tmp_path):
    write_split(tmp_path)
    bird = tmp_path / CLASS_SET.name / "train" / "bird"
    for file in bird.iterdir():
        file.unlink()
    with pytest.raises(DataLayoutError, match="bird holds no images"):
        ClassFolderDataset(tmp_path, CLASS_SET, "train", image_size=16)
    bird.rmdir()
    with pytest.raises(DataLayoutError, match="class folder .*bird does not exist"):
        ClassFolderDataset(tmp_path, CLASS_SET, "train", image_size=16)


def test_undecodable_image_is_named(tmp_path):
    write_split(tmp_path)
    broken = tmp_path / CLASS_SET.name / "train" / "car" / "broken.png"
    broken.write_bytes(b"not an image")
    dataset = ClassFolderDataset(tmp_path, CLASS_SET, "train", image_size=16)
    index = [path for path, _ in dataset.samples].index(broken)
    with pytest.raises(ValueError, match="cannot decode image .*broken.png"):
        dataset[index]
    with pytest.raises(ValueError, match="broken.png"):
        ClassFolderDataset(tmp_path, CLASS_SET, "train", image_size=16, cache=True)


def test_fingerprint_changes_with_the_files(tmp_path):
    write_split(tmp_path)
    before = ClassFolderDataset(tmp_path, CLASS_SET, "train", image_size=16).fingerprint()
    assert ClassFolderDataset(tmp_path, CLASS_SET, "train", image_size=16).fingerprint() == before
    write_image(tmp_path / CLASS_SET.name / "train" / "car" / "new.png", torch.zeros(3, 8, 8, dtype=torch.uint8))
    assert ClassFolderDataset(tmp_path, CLASS_SET, "train", image_size=16).fingerprint() != before


def test_every_undecodable_image_of_a_split_is_named_in_one_error(tmp_path):
    write_split(tmp_path)
    split = tmp_path / CLASS_SET.name / "train"
    for name in ("car/bad1.png", "bird/bad2.jpg", "person/bad3.JPEG"):
        (split / name).write_bytes(b"not an image")
    with pytest.raises(BadImagesError) as raised:
        ClassFolderDataset(tmp_path, CLASS_SET, "train", image_size=16, cache=True)
    assert sorted(path.name for path, _ in raised.value.failures) == ["bad1.png", "bad2.jpg", "bad3.JPEG"]
    assert str(raised.value).startswith(f"3 of 13 image files of {split} cannot be used: ")


def test_check_class_folders_reads_headers_of_every_split_at_once(tmp_path):
    for split in ("train", "val"):
        write_split(tmp_path, split)
    assert check_class_folders(tmp_path, CLASS_SET, ("train", "val")) == 20
    (tmp_path / CLASS_SET.name / "train" / "dog" / "0.png").write_bytes(b"")
    (tmp_path / CLASS_SET.name / "val" / "car" / "1.png").write_text("text")
    with pytest.raises(BadImagesError, match=r"^2 of 20 image files of .*cs5-2 \(train, val\) cannot be used: "
                                             r".*train/dog/0.png: .*; .*val/car/1.png: "):
        check_class_folders(tmp_path, CLASS_SET, ("train", "val"))
    with pytest.raises(DataLayoutError, match="cs5-2/test does not exist"):
        check_class_folders(tmp_path, CLASS_SET)


def write_jpegs(root: Path, *, per_class: int = 4) -> None:
    """Noisy JPEGs of varied sizes, so that decoding and resizing have something to get wrong."""
    generator = torch.Generator().manual_seed(0)
    for name in CLASS_SET.classes:
        folder = root / CLASS_SET.name / "train" / name
        folder.mkdir(parents=True)
        for index in range(per_class):
            size = (30 + 7 * index, 50 - 3 * index)
            image = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{index}.jpg", quality=80)


def test_parallel_decoding_gives_the_same_tensors_as_serial(tmp_path):
    write_jpegs(tmp_path)
    serial = ClassFolderDataset(tmp_path, CLASS_SET, "train", image_size=24, cache=True)
    parallel = ClassFolderDataset(tmp_path, CLASS_SET, "train", image_size=24, cache=True, workers=2)
    assert len(parallel) == len(serial) == 20
    for index in range(len(serial)):
        assert torch.equal(parallel._cache[index], serial._cache[index])
        assert parallel._cache[index].dtype == torch.uint8 and not parallel._cache[index].is_shared()
    assert torch.equal(parallel.tensors()[0], serial.tensors()[0])
    assert parallel.fingerprint() == serial.fingerprint()


def test_parallel_decoding_names_every_bad_image_as_serial(tmp_path):
    write_jpegs(tmp_path, per_class=2)
    split = tmp_path / CLASS_SET.name / "train"
    for name in ("car/bad1.png", "person/bad2.jpg"):
        (split / name).write_bytes(b"not an image")
    errors = []
    for workers in (0, 2):
        with pytest.raises(BadImagesError) as raised:
            ClassFolderDataset(tmp_path, CLASS_SET, "train", image_size=16, cache=True, workers=workers)
        errors.append(str(raised.value))
    assert errors[0] == errors[1] and "bad1.png" in errors[0] and "bad2.jpg" in errors[0]

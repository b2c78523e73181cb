"""Convert raw PASCAL-Part annotations into K's training data, in the UnMask dataset's layout.

PASCAL-Part (Chen et al., "Detect What You Can", CVPR 2014) stores one MATLAB file per VOC2010
image, ``Annotations_Part/<image id>.mat``, holding a struct ``anno`` with ``imname`` and a 1xN
struct array ``objects``; each object has ``class``, ``class_ind`` (1..20, VOC order), ``mask``
(HxW) and a 1xP struct array ``parts`` of ``part_name`` and ``mask`` (reference section 7).

The converter merges the raw part names into the 44 parts (``unmask.parts.merge_pascal_part_name``),
drops what the merge drops, splits the images 80/10/10 and writes COCO instance-segmentation files
whose categories are the 44 parts with ids starting at 0, as K's reader (``unmask.data.coco``)
expects::

    <out>/VOC2010/{train,val,test}.json
    <out>/VOC2010/Images/{train,val,test}/<image id>.jpg
    <out>/VOC2010/conversion_report.json
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from tqdm import tqdm

from unmask.constants import SPLITS
from unmask.data.coco import K_DATA_FOLDER, mask_to_annotation, split_paths, write_coco
from unmask.io import atomic_directory, atomic_write_json, link_or_copy, stable_hash
from unmask.parts import (
    MERGE_MODES,
    PART_INDEX,
    PARTS,
    VOC_CLASSES,
    MergeMode,
    UnknownPartNameError,
    merge_pascal_part_name,
)

ANNOTATION_FOLDER = "Annotations_Part"
IMAGE_FOLDERS: tuple[str, ...] = ("JPEGImages", "VOC2010/JPEGImages", "VOCdevkit/VOC2010/JPEGImages")
"""Where VOC2010's images are looked for under the PASCAL-Part root, in this order."""
REPORT_FILE = "conversion_report.json"
"""The report written beside the converted data; its presence also marks a folder this converter
wrote, which a new conversion may replace."""
ENCODINGS: tuple[str, ...] = ("rle", "polygon")

MaskEncoding = Literal["rle", "polygon"]


class PascalPartFormatError(ValueError):
    """A file that does not hold what PASCAL-Part files hold; the message names the file and field."""


class PascalPartConversionError(ValueError):
    """A conversion that cannot produce a dataset (for example: no image has a usable part)."""


# --- reading one .mat file -------------------------------------------------------------------


@dataclass(frozen=True)
class PascalPart:
    """One annotated part: its raw PASCAL-Part name and its bool mask (H, W)."""

    name: str
    mask: np.ndarray


@dataclass(frozen=True)
class PascalObject:
    """One annotated object: its class name and VOC index (1..20) as stored, its mask and parts."""

    class_name: str
    class_index: int
    mask: np.ndarray
    parts: tuple[PascalPart, ...]


@dataclass(frozen=True)
class PascalPartAnnotation:
    """The contents of one ``Annotations_Part/<image id>.mat`` file."""

    image_name: str
    objects: tuple[PascalObject, ...]


def read_pascal_part_mat(path: str | os.PathLike[str]) -> PascalPartAnnotation:
    """Read one PASCAL-Part annotation file with ``scipy.io.loadmat``.

    ``loadmat`` nests MATLAB values in arrays whose shape depends on how many entries there are
    (a 1x1 struct array for a single object, 1x0 or a 0x0 double for an object without parts,
    object arrays around cells); every field is unwrapped here so that one object or part reads
    like many. Raises ``PascalPartFormatError`` naming the file and field for unreadable files
    (truncated, not a MATLAB file, MATLAB v7.3/HDF5) and for missing or malformed fields.
    """
    import scipy.io

    path = Path(path)
    try:
        contents = scipy.io.loadmat(path)
    except Exception as error:  # scipy raises several unrelated types for damaged files
        raise PascalPartFormatError(f"{path.name}: cannot read it as a MATLAB file ({type(error).__name__}: "
                                    f"{error}); expected a PASCAL-Part annotation saved by MATLAB (v5/v7)") from None
    if "anno" not in contents:
        variables = ", ".join(key for key in contents if not key.startswith("__")) or "none"
        raise PascalPartFormatError(f"{path.name}: no variable 'anno' (variables: {variables}); expected a "
                                    "PASCAL-Part annotation struct")
    anno = _single_record(contents["anno"], f"{path.name}: anno")
    objects = []
    for index, record in enumerate(_records(_field(anno, "objects", f"{path.name}: anno")), 1):
        where = f"{path.name}: anno.objects({index})"
        parts = []
        for part_index, part in enumerate(_records(_field(record, "parts", where)), 1):
            part_where = f"{where}.parts({part_index})"
            parts.append(PascalPart(_text(_field(part, "part_name", part_where), f"{part_where}.part_name"),
                                    _mask(_field(part, "mask", part_where), f"{part_where}.mask")))
        objects.append(PascalObject(
            class_name=_text(_field(record, "class", where), f"{where}.class"),
            class_index=_integer(_field(record, "class_ind", where), f"{where}.class_ind"),
            mask=_mask(_field(record, "mask", where), f"{where}.mask"),
            parts=tuple(parts),
        ))
    return PascalPartAnnotation(_text(_field(anno, "imname", f"{path.name}: anno"), f"{path.name}: anno.imname"),
                                tuple(objects))


def _unwrap(value: Any) -> Any:
    """Strip the 1x1 object arrays loadmat wraps around cell contents."""
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.reshape(-1)[0]
    return value


def _records(value: Any) -> list[np.void]:
    """The entries of a struct array in MATLAB's column-major order; an empty value has none."""
    value = _unwrap(value)
    array = np.asarray(value)
    if array.dtype.names is not None:
        return list(array.reshape(-1, order="F"))
    if array.size == 0:
        return []
    raise PascalPartFormatError(f"expected a struct array, got {array.dtype} of shape {array.shape}")


def _single_record(value: Any, where: str) -> np.void:
    records = _records(value)
    if len(records) != 1:
        raise PascalPartFormatError(f"{where}: expected one struct, got {len(records)}")
    return records[0]


def _field(record: np.void, name: str, where: str) -> Any:
    names = record.dtype.names or ()
    if name not in names:
        raise PascalPartFormatError(f"{where}: no field {name!r} (fields: {', '.join(names) or 'none'})")
    return record[name]


def _text(value: Any, where: str) -> str:
    value = _unwrap(value)
    if isinstance(value, str):
        return value
    array = np.asarray(value)
    if array.dtype.kind == "U" and array.size <= 1:
        return str(array.reshape(-1)[0]) if array.size else ""
    raise PascalPartFormatError(f"{where}: expected a string, got {array.dtype} of shape {array.shape}")


def _integer(value: Any, where: str) -> int:
    array = np.asarray(_unwrap(value))
    if array.size != 1 or array.dtype.kind not in "iuf" or float(array.reshape(-1)[0]) % 1:
        raise PascalPartFormatError(f"{where}: expected one integer, got {array.dtype} of shape {array.shape}")
    return int(array.reshape(-1)[0])


def _mask(value: Any, where: str) -> np.ndarray:
    array = np.asarray(_unwrap(value))
    if array.ndim != 2 or array.dtype.kind not in "biuf":
        raise PascalPartFormatError(f"{where}: expected an HxW mask, got {array.dtype} of shape {array.shape}")
    return array != 0


# --- the report ------------------------------------------------------------------------------


@dataclass
class ConversionReport:
    """What a conversion read, wrote, dropped and refused; written as JSON beside the data.

    ``problem_files`` maps each skipped annotation file (corrupt, unreadable, mask size different
    from the image size, missing or unreadable image) to the reason; ``images_without_parts``
    lists the image ids that had no usable part (not written); ``unknown_part_names`` maps each
    raw name neither merge table knows to the files it came from (the part was skipped).
    """

    pascal_root: str
    out_dir: str
    merge_mode: str
    encoding: str
    seed: int
    split_ratios: tuple[float, float, float]
    annotation_files: int = 0
    images_per_split: dict[str, int] = field(default_factory=dict)
    annotations_per_split: dict[str, int] = field(default_factory=dict)
    part_counts: dict[str, int] = field(default_factory=dict)
    objects_read: int = 0
    objects_without_parts: int = 0
    objects_without_usable_parts: int = 0
    images_without_parts: list[str] = field(default_factory=list)
    dropped_part_names: dict[str, int] = field(default_factory=dict)
    unknown_part_names: dict[str, list[str]] = field(default_factory=dict)
    empty_part_masks: list[str] = field(default_factory=list)
    problem_files: dict[str, str] = field(default_factory=dict)

    @property
    def images_written(self) -> int:
        return sum(self.images_per_split.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "images_written": self.images_written}

    def summary(self) -> str:
        """A readable account: what was written, and everything that was left out and why."""
        splits = ", ".join(f"{split} {self.images_per_split.get(split, 0)} images / "
                           f"{self.annotations_per_split.get(split, 0)} parts" for split in SPLITS)
        lines = [
            f"PASCAL-Part -> {self.out_dir}: {self.images_written} of {self.annotation_files} annotation files "
            f"converted ({self.merge_mode} merge, {self.encoding} masks, seed {self.seed})",
            f"  splits: {splits}",
            f"  objects: {self.objects_read} read, {self.objects_without_parts} without parts and "
            f"{self.objects_without_usable_parts} with only dropped or unknown parts left out",
            f"  images without usable parts (left out): {_listing(self.images_without_parts)}",
            f"  dropped raw part names: {_counts(self.dropped_part_names)}",
            "  unknown raw part names (skipped): "
            + (", ".join(f"{name} in {_listing(files)}" for name, files in self.unknown_part_names.items())
               or "none"),
            f"  empty part masks (skipped): {_listing(self.empty_part_masks)}",
            f"  files skipped as corrupt or mismatched: {len(self.problem_files) or 'none'}",
            *(f"    {name}: {reason}" for name, reason in self.problem_files.items()),
            f"  annotations per part: {_counts(self.part_counts)}",
        ]
        return "\n".join(lines)


def _listing(names: Sequence[str], limit: int = 10) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return f"{len(names)} ({shown}{', ...' if len(names) > limit else ''})"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items()) or "none"


# --- finding the input and splitting ---------------------------------------------------------


def locate_pascal_part(pascal_root: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(annotation folder, image folder) under a PASCAL-Part root.

    The annotations are ``<root>/Annotations_Part``; the images the first existing folder of
    ``IMAGE_FOLDERS``. Raises ``FileNotFoundError`` naming every folder that was looked for.
    """
    root = Path(pascal_root)
    if not root.is_dir():
        raise FileNotFoundError(f"PASCAL-Part root {root} is not a folder; expected one holding "
                                f"{ANNOTATION_FOLDER}/ and JPEGImages/")
    annotations = root / ANNOTATION_FOLDER
    if not annotations.is_dir():
        raise FileNotFoundError(f"no PASCAL-Part annotations: {annotations} is not a folder (expected "
                                f"{ANNOTATION_FOLDER}/<image id>.mat under the PASCAL-Part root)")
    for candidate in IMAGE_FOLDERS:
        if (root / candidate).is_dir():
            return annotations, root / candidate
    looked_for = ", ".join(str(root / candidate) for candidate in IMAGE_FOLDERS)
    raise FileNotFoundError(f"no VOC2010 images for PASCAL-Part: looked for {looked_for}; expected "
                            "<image id>.jpg files in one of them")


def split_image_ids(image_ids: Iterable[str], *, seed: int = 0,
                    ratios: Sequence[float] = (0.8, 0.1, 0.1)) -> dict[str, list[str]]:
    """Split image ids into train/val/test in the given proportions, deterministically.

    Ids are ordered by a hash of ``(seed, id)`` (``unmask.io.stable_hash``), so the split depends
    only on the seed and the set of ids, never on the input order, NumPy's RNG or the platform.
    Sizes are rounded by largest remainder; every split with a positive ratio gets at least one
    image when there are enough. Each split's ids are returned sorted.
    """
    ratios = _check_ratios(ratios)
    ids = sorted(set(image_ids))
    shuffled = sorted(ids, key=lambda image_id: stable_hash([seed, image_id], length=16))
    splits, start = {}, 0
    for split, size in zip(SPLITS, _split_sizes(len(ids), ratios), strict=True):
        splits[split] = sorted(shuffled[start:start + size])
        start += size
    return splits


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(ratio) for ratio in ratios)
    if len(values) != len(SPLITS) or any(not np.isfinite(v) or v < 0 for v in values) or abs(sum(values) - 1) > 1e-6:
        raise ValueError(f"split ratios {tuple(ratios)!r}: expected three non-negative numbers for "
                         f"{'/'.join(SPLITS)} that sum to 1, e.g. (0.8, 0.1, 0.1)")
    return values[0], values[1], values[2]


def _split_sizes(count: int, ratios: Sequence[float]) -> list[int]:
    exact = [count * ratio for ratio in ratios]
    sizes = [int(value) for value in exact]
    by_remainder = sorted(range(len(ratios)), key=lambda i: (sizes[i] - exact[i], i))
    for i in by_remainder[: count - sum(sizes)]:
        sizes[i] += 1
    wanted = [i for i, ratio in enumerate(ratios) if ratio > 0]
    if count >= len(wanted):
        for i in wanted:
            if sizes[i] == 0:
                sizes[max(range(len(sizes)), key=sizes.__getitem__)] -= 1
                sizes[i] = 1
    return sizes


# --- converting ------------------------------------------------------------------------------


@dataclass
class _ConvertedImage:
    """One usable annotation file: its image, its part annotations (ids still to be assigned) and
    what it left out, added to the report only once the whole file has been read."""

    name: str
    image_id: int
    image_path: Path
    height: int
    width: int
    annotations: list[dict[str, Any]] = field(default_factory=list)
    objects_read: int = 0
    objects_without_parts: int = 0
    objects_without_usable_parts: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    unknown: list[str] = field(default_factory=list)
    empty_masks: list[str] = field(default_factory=list)


def convert_pascal_part(
    pascal_root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    merge_mode: MergeMode = "explicit",
    seed: int = 0,
    split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
    encoding: MaskEncoding = "rle",
    progress: bool = True,
) -> ConversionReport:
    """Convert raw PASCAL-Part into K's COCO training data under ``<out_dir>/VOC2010``.

    Every part instance becomes one COCO annotation: raw parts that merge to the same part
    (``lear`` and ``rear`` -> two ``ear``; ``wheel_1`` .. ``wheel_4`` -> four ``wheel``) stay separate
    instances, which is what Mask R-CNN learns from and how the original trained K. Each
    annotation keeps the object's VOC class (``object_class``), the object's position in the file
    (``object_index``, from 1) and the raw name (``raw_part_name``); each image entry keeps its
    source file (``pascal_part_file``). Image ids are the 1-based position of the annotation file
    among all files sorted by name, so they do not depend on the split or on what was dropped.

    Left out, and counted in the returned ``ConversionReport``: objects without parts, parts the
    merge drops (``merge_pascal_part_name`` returns None) or does not know, empty part masks,
    images with no usable part left, and files that are corrupt or do not match their image
    (mask size != image size, ``imname`` != file name, missing or unreadable JPEG); a class name
    that disagrees with ``class_ind`` makes the file mismatched too. The images that remain are
    split by ``split_image_ids`` (seeded, 80/10/10 by default).

    ``encoding="rle"`` (default) stores masks losslessly as compressed RLE: PASCAL-Part masks have
    holes and one- or two-pixel fragments that polygons traced around them lose. K's reader and
    pycocotools read both; ``"polygon"`` writes polygons like the UnMask dataset's ``data.zip``, at
    a cost: traced contours keep a point per boundary pixel, so the files come out about fifteen
    times larger and the conversion about twice as slow (``unmask.data.coco.mask_to_polygons``).
    ``merge_mode="original"`` reproduces the original's substring merge (handlebar -> hand,
    chainwheel -> wheel).

    Images are hard-linked from the PASCAL-Part folder when it is on the same file system, copied
    otherwise. The output is built in a temporary folder and renamed into place, so an interrupted
    run leaves the previous output (or nothing) behind; a ``VOC2010`` folder this converter did
    not write (no ``conversion_report.json``) is never replaced: a ``FileExistsError`` says so.
    ``progress`` shows a progress bar and prints the report's summary.
    """
    if merge_mode not in MERGE_MODES:
        raise ValueError(f"unknown merge mode {merge_mode!r}; expected one of: {', '.join(MERGE_MODES)}")
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown mask encoding {encoding!r}; expected one of: {', '.join(ENCODINGS)}")
    ratios = _check_ratios(split_ratios)
    annotation_dir, image_dir = locate_pascal_part(pascal_root)
    mat_files = sorted(annotation_dir.glob("*.mat"))
    if not mat_files:
        raise FileNotFoundError(f"{annotation_dir} holds no .mat files; expected PASCAL-Part's <image id>.mat files")
    target = Path(out_dir) / K_DATA_FOLDER
    if target.exists() and not (target / REPORT_FILE).is_file():
        raise FileExistsError(f"{target} exists and was not written by the PASCAL-Part converter (it has no "
                              f"{REPORT_FILE}); move it away or choose another output folder")

    report = ConversionReport(str(pascal_root), str(out_dir), merge_mode, encoding, seed, ratios,
                              annotation_files=len(mat_files))
    dropped: Counter[str] = Counter()
    unknown: defaultdict[str, set[str]] = defaultdict(set)
    converted: list[_ConvertedImage] = []
    for image_id, mat_file in enumerate(tqdm(mat_files, desc="PASCAL-Part", unit="file", disable=not progress), 1):
        try:
            image = _convert_file(mat_file, image_dir, image_id, merge_mode=merge_mode, encoding=encoding)
        except PascalPartFormatError as error:
            report.problem_files[mat_file.name] = str(error).removeprefix(f"{mat_file.name}: ")
            continue
        report.objects_read += image.objects_read
        report.objects_without_parts += image.objects_without_parts
        report.objects_without_usable_parts += image.objects_without_usable_parts
        report.empty_part_masks.extend(image.empty_masks)
        dropped.update(image.dropped)
        for name in image.unknown:
            unknown[name].add(mat_file.name)
        if image.annotations:
            converted.append(image)
        else:
            report.images_without_parts.append(mat_file.stem)
    report.dropped_part_names = dict(sorted(dropped.items()))
    report.unknown_part_names = {name: sorted(files) for name, files in sorted(unknown.items())}
    if not converted:
        raise PascalPartConversionError(
            f"no image of {annotation_dir} has a usable part ({len(report.problem_files)} files skipped as corrupt "
            f"or mismatched, {len(report.images_without_parts)} without usable parts); nothing to write\n"
            + report.summary())

    by_name = {image.name: image for image in converted}
    part_counts: Counter[str] = Counter()
    with atomic_directory(target) as temporary:
        annotation_id = 0
        for split, names in split_image_ids(list(by_name), seed=seed, ratios=ratios).items():
            final_json, final_images = split_paths(out_dir, split)
            image_folder = temporary / final_images.relative_to(target)
            image_folder.mkdir(parents=True)
            entries, annotations = [], []
            for name in names:
                image = by_name[name]
                link_or_copy(image.image_path, image_folder / image.image_path.name)
                entries.append({"id": image.image_id, "file_name": image.image_path.name, "height": image.height,
                                "width": image.width, "pascal_part_file": f"{name}.mat"})
                for annotation in image.annotations:
                    annotation_id += 1
                    annotations.append({**annotation, "id": annotation_id, "image_id": image.image_id})
                    part_counts[PARTS[annotation["category_id"]]] += 1
            write_coco(temporary / final_json.relative_to(target), images=entries, annotations=annotations,
                       info={"description": f"PASCAL-Part converted by unmask ({split} split)",
                             "merge_mode": merge_mode, "encoding": encoding, "seed": seed})
            report.images_per_split[split] = len(entries)
            report.annotations_per_split[split] = len(annotations)
        report.part_counts = {part: part_counts[part] for part in PARTS if part_counts[part]}
        atomic_write_json(temporary / REPORT_FILE, report.to_dict())
    if progress:
        print(report.summary())
    return report


def _convert_file(mat_file: Path, image_dir: Path, image_id: int, *, merge_mode: MergeMode,
                  encoding: MaskEncoding) -> _ConvertedImage:
    """One annotation file's part annotations; raises ``PascalPartFormatError`` for a file that must
    be skipped whole."""
    anno = read_pascal_part_mat(mat_file)
    name = mat_file.stem
    if anno.image_name and Path(anno.image_name).stem != name:
        raise PascalPartFormatError(f"imname {anno.image_name!r} does not match the file name; expected {name!r}")
    image_path = image_dir / f"{name}.jpg"
    height, width = _image_size(image_path)
    image = _ConvertedImage(name, image_id, image_path, height, width)
    for object_index, obj in enumerate(anno.objects, 1):
        where = f"anno.objects({object_index})"
        _check_size(obj.mask, (height, width), f"{where}.mask", image_path)
        image.objects_read += 1
        if not obj.parts:
            image.objects_without_parts += 1
            continue
        object_class = _object_class(obj, where)
        kept = 0
        for part_index, part in enumerate(obj.parts, 1):
            _check_size(part.mask, (height, width), f"{where}.parts({part_index}).mask", image_path)
            try:
                merged = merge_pascal_part_name(part.name, object_class, mode=merge_mode)
            except UnknownPartNameError:
                image.unknown.append(part.name)
                continue
            if merged is None:
                image.dropped[part.name] += 1
                continue
            if not part.mask.any():
                image.empty_masks.append(f"{mat_file.name} {where}.parts({part_index}) {part.name!r}")
                continue
            image.annotations.append(mask_to_annotation(
                part.mask, annotation_id=0, image_id=image_id, category_id=PART_INDEX[merged], encoding=encoding,
                object_class=object_class, object_index=object_index, raw_part_name=part.name,
            ))
            kept += 1
        if not kept:
            image.objects_without_usable_parts += 1
    return image


def _image_size(image_path: Path) -> tuple[int, int]:
    """(height, width) from the image header; PIL does not decode the pixels for this."""
    if not image_path.is_file():
        raise PascalPartFormatError(f"its image {image_path} does not exist")
    try:
        with Image.open(image_path) as image:
            width, height = image.size
    except (OSError, Image.DecompressionBombError) as error:
        raise PascalPartFormatError(f"its image {image_path} cannot be read ({error})") from None
    return height, width


def _check_size(mask: np.ndarray, size: tuple[int, int], where: str, image_path: Path) -> None:
    if mask.shape != size:
        raise PascalPartFormatError(f"{where} is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image "
                                    f"{image_path.name} is {size[0]}x{size[1]}")


def _object_class(obj: PascalObject, where: str) -> str:
    """The object's VOC class from ``class_ind``, which must agree with its ``class`` name."""
    if not 1 <= obj.class_index <= len(VOC_CLASSES):
        raise PascalPartFormatError(f"{where}.class_ind is {obj.class_index}; expected 1..{len(VOC_CLASSES)} "
                                    "(VOC order)")
    voc_class = VOC_CLASSES[obj.class_index - 1]
    if obj.class_name != voc_class:
        raise PascalPartFormatError(f"{where}.class is {obj.class_name!r} but class_ind {obj.class_index} is "
                                    f"{voc_class!r}")
    return voc_class


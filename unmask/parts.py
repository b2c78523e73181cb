"""The knowledge base: the 44 building blocks, which classes expect which, the class sets, and
how PASCAL-Part's raw part names merge into the 44 parts.

This module is the single home of these facts; everything else imports them from here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

PARTS: tuple[str, ...] = (
    "arm", "beak", "body", "cap", "coach_back", "coach_front", "coach_left", "coach_right",
    "coach_top", "door", "ear", "engine", "eye", "eyebrow", "foot", "frontside", "hair", "hand",
    "head", "headlight", "hoof", "horn", "leg", "licenseplate", "mirror", "mouth", "muzzle",
    "neck", "nose", "paw", "plant", "pot", "saddle", "screen", "stern", "tail", "torso",
    "vehicle_back", "vehicle_left", "vehicle_right", "vehicle_top", "wheel", "window", "wing",
)  # fmt: skip
"""The 44 parts, in alphabetical order; a part's index here is its column in part matrices."""

PART_INDEX: dict[str, int] = {part: index for index, part in enumerate(PARTS)}

_VEHICLE_PARTS = frozenset({
    "door", "frontside", "headlight", "licenseplate", "mirror", "vehicle_back", "vehicle_left",
    "vehicle_right", "vehicle_top", "wheel", "window",
})  # fmt: skip

CLASS_PARTS: dict[str, frozenset[str]] = {
    "aeroplane": frozenset({"body", "engine", "stern", "tail", "wheel", "wing"}),
    "bicycle": frozenset({"saddle", "wheel"}),
    "bird": frozenset({"beak", "eye", "foot", "head", "leg", "neck", "tail", "torso", "wing"}),
    "bottle": frozenset({"body", "cap"}),
    "bus": _VEHICLE_PARTS,
    "car": _VEHICLE_PARTS,
    "cat": frozenset({"ear", "eye", "head", "leg", "neck", "nose", "paw", "tail", "torso"}),
    "cow": frozenset({"ear", "eye", "head", "horn", "leg", "muzzle", "neck", "tail", "torso"}),
    "dog": frozenset(
        {"ear", "eye", "head", "leg", "muzzle", "neck", "nose", "paw", "tail", "torso"}
    ),
    "horse": frozenset({"ear", "eye", "head", "hoof", "leg", "muzzle", "neck", "tail", "torso"}),
    "motorbike": frozenset({"headlight", "saddle", "wheel"}),
    "person": frozenset({
        "arm", "ear", "eye", "eyebrow", "foot", "hair", "hand", "head", "leg", "mouth", "neck",
        "nose", "torso",
    }),  # fmt: skip
    "pottedplant": frozenset({"plant", "pot"}),
    "sheep": frozenset({"ear", "eye", "head", "horn", "leg", "muzzle", "neck", "tail", "torso"}),
    "train": frozenset({
        "coach_back", "coach_front", "coach_left", "coach_right", "coach_top", "head",
        "headlight",
    }),  # fmt: skip
    "tvmonitor": frozenset({"screen"}),
}
"""Expected parts of the 16 PASCAL-Part classes that have parts (boat, chair, diningtable and
sofa have none and are not used)."""

CLASSES: tuple[str, ...] = tuple(CLASS_PARTS)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
"""The 20 PASCAL VOC classes in VOC order (PASCAL-Part's ``class_ind`` is 1 + the index here)."""

CLASS_SETS: dict[str, tuple[str, ...]] = {
    "cs3-1": ("car", "person", "train"),
    "cs3-2": ("person", "dog", "bird"),
    "cs5-1": ("dog", "car", "bottle", "train", "person"),
    "cs5-2": ("dog", "car", "bird", "train", "person"),
}
"""Class sets in the original's order; the order breaks re-classification ties and fixes M's
label indices."""

CLASS_SET_ALIASES: dict[str, str] = {"CS3a": "cs3-1", "CS3b": "cs3-2", "CS5a": "cs5-1", "CS5b": "cs5-2"}
"""The paper's names for the class sets."""

CLASS_SET_NAMES: tuple[str, ...] = (*CLASS_SETS, *CLASS_SET_ALIASES)
"""Every name a class set answers to (the paper's are also matched case-insensitively)."""


class UnknownNameError(ValueError):
    """A name that is not in a fixed vocabulary; the message lists the valid names."""


def _unknown(kind: str, name: object, valid: Iterable[str]) -> UnknownNameError:
    return UnknownNameError(f"unknown {kind} {name!r}; expected one of: {', '.join(valid)}")


def class_set_name(name: str) -> str:
    """The code name of a class set given its code name or paper name (``CS5b`` -> ``cs5-2``)."""
    if name in CLASS_SETS:
        return name
    for alias, code_name in CLASS_SET_ALIASES.items():
        if name.lower() == alias.lower():
            return code_name
    raise _unknown("class set", name, CLASS_SET_NAMES)


@dataclass(frozen=True)
class ClassSet:
    """A class set resolved once: its code name, its classes in order (M's label indices and the
    re-classification tie order), and their expected parts as a (classes, 44) 0/1 matrix.

    Build it with ``ClassSet.named("cs5-2")`` (paper names accepted) or from any ordered classes.
    """

    name: str
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        for name in self.classes:
            if name not in CLASS_PARTS:
                raise _unknown("class", name, CLASSES)
        if len(set(self.classes)) != len(self.classes) or not self.classes:
            raise ValueError(f"a class set needs distinct classes and at least one: got {self.classes!r}")

    @classmethod
    def named(cls, name: str) -> ClassSet:
        """The class set ``name`` (code name or the paper's alias)."""
        code = class_set_name(name)
        return cls(code, CLASS_SETS[code])

    @classmethod
    def of(cls, classes: Sequence[str]) -> ClassSet:
        """An ad-hoc class set of ``classes`` in this order."""
        classes = tuple(classes)
        return cls(",".join(classes), classes)

    def __len__(self) -> int:
        return len(self.classes)

    def index(self, class_name: str) -> int:
        """The label index of ``class_name``; raises ``UnknownNameError`` listing the classes."""
        if class_name not in self.classes:
            raise _unknown("class", class_name, self.classes)
        return self.classes.index(class_name)

    def expected_parts(self, class_name: str) -> frozenset[str]:
        """V[class_name], the expected parts of one of this set's classes."""
        return CLASS_PARTS[self.classes[self.index(class_name)]]

    @cached_property
    def expected(self) -> np.ndarray:
        """Read-only float matrix (classes, 44): row c is 1 on the expected parts of class c."""
        matrix = np.zeros((len(self.classes), len(PARTS)))
        for row, name in enumerate(self.classes):
            matrix[row, [PART_INDEX[part] for part in CLASS_PARTS[name]]] = 1.0
        matrix.flags.writeable = False
        return matrix


# --- PASCAL-Part raw part names -> the 44 parts -------------------------------------------------

_SIDE = ("l", "r")
_LIMB_PARTS = {
    # suffix after the l/r prefix -> merged part
    "bho": "hoof", "fho": "hoof",  # back / front hoof
    "bleg": "leg", "blleg": "leg", "buleg": "leg",  # back leg, lower / upper
    "fleg": "leg", "flleg": "leg", "fuleg": "leg",  # front leg, lower / upper
    "leg": "leg", "lleg": "leg", "uleg": "leg",  # person: leg, lower / upper
    "bpa": "paw", "fpa": "paw",
    "ear": "ear", "ebrow": "eyebrow", "eye": "eye", "foot": "foot", "hand": "hand",
    "horn": "horn", "larm": "arm", "uarm": "arm", "wing": "wing",
}  # fmt: skip

PASCAL_PART_TABLE: dict[str, str | None] = {
    **{side + suffix: part for side in _SIDE for suffix, part in _LIMB_PARTS.items()},
    # parts that keep their name
    **{name: name for name in (
        "beak", "body", "cap", "frontside", "hair", "head", "mouth", "muzzle", "neck", "nose",
        "plant", "pot", "saddle", "screen", "stern", "tail", "torso",
    )},  # fmt: skip
    # vehicle sides (car, bus); frontside keeps its name above
    "backside": "vehicle_back", "leftside": "vehicle_left", "rightside": "vehicle_right",
    "roofside": "vehicle_top",
    "leftmirror": "mirror", "rightmirror": "mirror",
    "fliplate": "licenseplate", "bliplate": "licenseplate",
    "fwheel": "wheel", "bwheel": "wheel",
    # dropped: the class table lists neither (the original turned them into hand and wheel)
    "handlebar": None, "chainwheel": None,
    # dropped: the sides of a train's head (the head itself stays head)
    "hbackside": None, "hfrontside": None, "hleftside": None, "hrightside": None, "hroofside": None,
}  # fmt: skip
"""Explicit merge table for PASCAL-Part's unnumbered raw part names (None: dropped)."""

PASCAL_PART_NUMBERED: dict[str, str | None] = {
    "cbackside": "coach_back", "cfrontside": "coach_front", "cleftside": "coach_left",
    "crightside": "coach_right", "croofside": "coach_top",
    "coach": None,  # a whole train coach, not a part of the table
    "door": "door", "engine": "engine", "headlight": "headlight", "wheel": "wheel",
    "window": "window",
}  # fmt: skip
"""Merge table for the numbered families ``<family>_<N>`` (None: dropped)."""

_NUMBERED = re.compile(r"^([a-z]+)_(\d+)$")

# The original's merge: the first substring found in the raw name, in this order, decides.
# Reconstructed so that it agrees with the explicit table except for its two documented defects
# (handlebar -> hand, chainwheel -> wheel); `tests/test_parts.py` pins that.
_ORIGINAL_SUBSTRING_ORDER: tuple[tuple[str, str | None], ...] = (
    ("hfrontside", None), ("hbackside", None), ("hleftside", None), ("hrightside", None),
    ("hroofside", None),
    ("cfrontside", "coach_front"), ("cbackside", "coach_back"), ("cleftside", "coach_left"),
    ("crightside", "coach_right"), ("croofside", "coach_top"), ("coach", None),
    ("frontside", "frontside"), ("backside", "vehicle_back"), ("leftside", "vehicle_left"),
    ("rightside", "vehicle_right"), ("roofside", "vehicle_top"),
    ("mirror", "mirror"), ("liplate", "licenseplate"), ("headlight", "headlight"),
    ("head", "head"), ("hand", "hand"), ("wheel", "wheel"), ("ebrow", "eyebrow"), ("eye", "eye"),
    ("ear", "ear"), ("arm", "arm"), ("leg", "leg"), ("horn", "horn"), ("ho", "hoof"),
    ("pa", "paw"), ("foot", "foot"), ("wing", "wing"), ("beak", "beak"), ("body", "body"),
    ("cap", "cap"), ("hair", "hair"), ("mouth", "mouth"), ("muzzle", "muzzle"), ("neck", "neck"),
    ("nose", "nose"), ("plant", "plant"), ("pot", "pot"), ("saddle", "saddle"),
    ("screen", "screen"), ("stern", "stern"), ("tail", "tail"), ("torso", "torso"),
    ("door", "door"), ("engine", "engine"), ("window", "window"),
)  # fmt: skip

MergeMode = Literal["explicit", "original"]
MERGE_MODES: tuple[str, ...] = ("explicit", "original")


class UnknownPartNameError(UnknownNameError):
    """A PASCAL-Part raw part name that neither merge table knows."""


def merge_pascal_part_name(
    raw_name: str, object_class: str, *, mode: MergeMode = "explicit"
) -> str | None:
    """Map a PASCAL-Part raw part name to one of the 44 parts, or None when the part is dropped.

    ``mode="explicit"`` (default) uses the explicit table; ``mode="original"`` reproduces the
    original code's ordered substring merge, including its defects (``handlebar`` becomes ``hand``,
    ``chainwheel`` becomes ``wheel``). ``object_class`` is the PASCAL VOC class of the object the
    part belongs to; it is validated, and a name is merged the same way for every class.
    """
    if object_class not in VOC_CLASSES:
        raise _unknown("PASCAL VOC object class", object_class, VOC_CLASSES)
    name = raw_name.strip().lower()
    if mode == "original":
        for substring, part in _ORIGINAL_SUBSTRING_ORDER:
            if substring in name:
                return part
    elif mode == "explicit":
        if name in PASCAL_PART_TABLE:
            return PASCAL_PART_TABLE[name]
        numbered = _NUMBERED.match(name)
        if numbered and numbered.group(1) in PASCAL_PART_NUMBERED:
            return PASCAL_PART_NUMBERED[numbered.group(1)]
    else:
        raise _unknown("merge mode", mode, MERGE_MODES)
    raise UnknownPartNameError(
        f"unknown PASCAL-Part part name {raw_name!r} (object class {object_class!r}); expected one"
        f" of: {', '.join(sorted(PASCAL_PART_TABLE))}, or <family>_<N> with family in"
        f" {', '.join(PASCAL_PART_NUMBERED)}"
    )

"""The synthetic part world: objects of the 16 PASCAL-Part classes built from the same 44 parts,
written in the real UnMask dataset's on-disk layout so every loader reads both unchanged.

An object of class c is drawn from its expected parts ``CLASS_PARTS[c]`` arranged in a class-typical
layout. Every part has one visual identity (shape, two colours, texture) shared by all classes
that have it, distinct from every other part's, and distinguishable without its left/right
orientation (horizontal flips never turn one part into another). Per image the generator
randomises the object's position, scale, stretch, rotation and flip; each part's offset, size
and angle; which parts are drawn (some left out, some hidden by an occluder or the image border);
a textured background with clutter; colour and lighting; pixel noise; and, optionally, one
distractor part of another class (annotated with ``"distractor": true``).

Layout under the dataset root (reference section 7):

- M: ``<root>/<class set>/{train,val,test}/<class>/<class>_<split>_<index>.png`` for every class
  set of the spec (a class's images are the same in every class set that has it);
- K: ``<root>/VOC2010/{train,val,test}.json``, COCO instance segmentation with the 44 part
  categories (ids from 0), one RLE annotation per visible part instance (its pixels after
  occlusion), images in ``<root>/VOC2010/Images/{train,val,test}/``; K's images show objects of
  all 16 classes in turn, square like M's or, with ``k_image_size``, PASCAL VOC-like canvases of
  about that many pixels (``k_canvas_size``). Keys beyond COCO's: ``object_class`` on every image entry,
  ``distractor`` (true for a part of another class) on every annotation. Image and annotation
  ids start at 1 (COCO's evaluation treats 0 as "no match"), category ids at 0;
- ``<root>/manifest.json``: generator version, spec and counts. A dataset is reused only when its
  manifest matches the request; otherwise it is regenerated, atomically.

All randomness derives from the spec's seed and each image's (kind, split, class, index), so the
bytes written do not depend on the number of worker processes.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from skimage.draw import polygon as fill_polygon

from unmask.constants import GREY_LEVELS, MIN_IMAGE_SIZE, SPLITS
from unmask.data.coco import mask_to_annotation, split_paths, write_coco
from unmask.io import atomic_directory, atomic_path, atomic_write_json, file_lock, link_or_copy, lock_path
from unmask.parts import CLASS_PARTS, CLASS_SETS, CLASSES, PART_INDEX, PARTS, class_set_name

GENERATOR_VERSION = 1
"""Bumped whenever the drawing changes, so datasets drawn by an older generator are regenerated."""

K_SHORT_SIDE_RANGE = (0.88, 1.0)
"""With ``k_image_size``: each K image's shorter side is the spec's times a factor drawn from this
range (500x375 gives 500x330 to 500x375, as most PASCAL VOC images)..."""
K_PORTRAIT_PROB = 0.25
"""... and this share of K's images is turned to portrait (375x500), about VOC's share."""

M_SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
K_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
MANIFEST = "manifest.json"
_PNG_COMPRESS_LEVEL = 1  # lossless either way; level 1 writes several times faster than the default 6
KINDS = ("m", "k")
"""Image kinds: M's class-folder images and K's annotated images (separate random streams)."""


class SyntheticDataError(ValueError):
    """A synthetic-world request that cannot be met; the message names the value and what was expected."""


# --- the request --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that decides the bytes of a synthetic dataset (recorded in its manifest).

    ``images_per_class`` M images per class, split 60/20/20 into train/val/test; ``k_images`` K
    images over all 16 classes, split 80/10/10. ``part_keep`` is the range of the per-image chance
    that each of the class's part types is drawn; ``occluder_prob`` the chance of a clutter shape
    in front of the object; ``max_clutter`` the most background clutter shapes; ``noise_std`` the
    largest pixel noise (images in [0, 1]); a part showing less than ``min_visible_fraction`` of
    itself is not annotated. ``k_image_size`` (width, height): K's images are PASCAL VOC-like
    canvases of about that size (``k_canvas_size``) instead of squares of ``image_size``; M's
    images stay square.
    """

    image_size: int = 128
    images_per_class: int = 300
    k_images: int = 1600
    distractor_prob: float = 0.0
    seed: int = 0
    class_sets: tuple[str, ...] = tuple(CLASS_SETS)
    part_keep: tuple[float, float] = (0.6, 1.0)
    occluder_prob: float = 0.25
    max_clutter: int = 6
    noise_std: float = 0.03
    min_visible_fraction: float = 0.2
    k_image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.image_size < MIN_IMAGE_SIZE:
            raise SyntheticDataError(f"image size {self.image_size} is too small: below {MIN_IMAGE_SIZE} pixels the "
                                     f"smallest parts are a few pixels wide; expected at least {MIN_IMAGE_SIZE}")
        if self.k_image_size is not None:
            size = tuple(self.k_image_size)
            if len(size) != 2 or not all(isinstance(side, int) for side in size):
                raise SyntheticDataError(f"k_image_size = {self.k_image_size}: expected (width, height) in pixels")
            # the shorter side shrinks by up to K_SHORT_SIDE_RANGE[0] and must stay drawable
            if min(size) * K_SHORT_SIDE_RANGE[0] < MIN_IMAGE_SIZE:
                raise SyntheticDataError(f"k_image_size = {size[0]}x{size[1]} is too small: expected both sides at "
                                         f"least {math.ceil(MIN_IMAGE_SIZE / K_SHORT_SIDE_RANGE[0])} pixels")
            object.__setattr__(self, "k_image_size", size)
        for name, count in (("images_per_class", self.images_per_class), ("k_images", self.k_images)):
            if count < len(SPLITS):
                raise SyntheticDataError(f"{name} = {count}: expected at least {len(SPLITS)}, one image for "
                                         f"each of the splits {', '.join(SPLITS)}")
        if self.seed < 0:
            raise SyntheticDataError(f"seed = {self.seed}: expected a number >= 0")
        low, high = self.part_keep
        if not 0.0 < low <= high <= 1.0:
            raise SyntheticDataError(f"part_keep = {self.part_keep}: expected 0 < low <= high <= 1")
        for name in ("distractor_prob", "occluder_prob", "min_visible_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SyntheticDataError(f"{name} = {getattr(self, name)}: expected a value in [0, 1]")
        if self.max_clutter < 0 or self.noise_std < 0:
            raise SyntheticDataError(f"max_clutter = {self.max_clutter}, noise_std = {self.noise_std}: "
                                     "expected numbers >= 0")
        if not self.class_sets:
            raise SyntheticDataError(f"class_sets is empty; expected some of: {', '.join(CLASS_SETS)}")
        # code names, in the fixed order, so equal requests give equal manifests
        names = {class_set_name(name) for name in self.class_sets}
        object.__setattr__(self, "class_sets", tuple(name for name in CLASS_SETS if name in names))
        object.__setattr__(self, "part_keep", (float(low), float(high)))

    def to_json(self) -> dict[str, Any]:
        fields = asdict(self)
        if fields["k_image_size"] is None:  # so the default world's manifest reads as before the option
            del fields["k_image_size"]
        return json.loads(json.dumps(fields))  # tuples become lists, as in a manifest read back

    @property
    def m_classes(self) -> tuple[str, ...]:
        """Classes of M's images: those of the spec's class sets, in the order of ``CLASSES``."""
        wanted = {c for name in self.class_sets for c in CLASS_SETS[name]}
        return tuple(c for c in CLASSES if c in wanted)


def parse_image_size(text: str) -> tuple[int, int] | None:
    """``"500x375"`` -> (500, 375) (width, height); ``""`` -> None."""
    text = text.strip().lower()
    if not text:
        return None
    width, separator, height = text.partition("x")
    if not (separator and width.strip().isdigit() and height.strip().isdigit()):
        raise SyntheticDataError(f"image size {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 500x375")
    return int(width), int(height)


def k_canvas_size(spec: SyntheticSpec, split: str, object_class: str, index: int) -> tuple[int, int]:
    """(width, height) of K's image ``index`` of ``split``: ``spec.image_size`` square, or with
    ``spec.k_image_size`` a VOC-like canvas: the longer side as given, the shorter one times a
    factor in ``K_SHORT_SIDE_RANGE``, turned to the other orientation with ``K_PORTRAIT_PROB``;
    drawn from a random stream of its own, so the drawing's stream is the same as for a square."""
    if spec.k_image_size is None:
        return spec.image_size, spec.image_size
    width, height = spec.k_image_size
    rng = np.random.default_rng([spec.seed, len(KINDS), SPLITS.index(split), CLASSES.index(object_class), index])
    long, short = max(width, height), round(min(width, height) * rng.uniform(*K_SHORT_SIDE_RANGE))
    landscape = (width >= height) != (rng.random() < K_PORTRAIT_PROB)
    return (long, short) if landscape else (short, long)


def split_counts(total: int, fractions: Sequence[float]) -> dict[str, int]:
    """Images per split (train gets the rest); every split gets at least one image."""
    val = max(1, round(fractions[1] * total))
    test = max(1, round(fractions[2] * total))
    return {"train": total - val - test, "val": val, "test": test}


# --- the 44 parts' visual identities -------------------------------------------------------------
# A part is drawn in its own box: u runs along the box's width and v along its height, both in
# [-1, 1] (v grows downwards). A shape says which (u, v) are inside; a texture gives each inside
# point a weight in [0, 1] that mixes the part's primary colour into its secondary colour.

Field = Callable[[np.ndarray, np.ndarray, float], np.ndarray]  # (u, v, width / height) -> values


def _bar(u: np.ndarray, v: np.ndarray, aspect: float) -> np.ndarray:
    # a capsule along the longer side of the box, with round ends
    if aspect < 1:
        u, v, aspect = v, u, 1 / aspect
    straight = 1 - 1 / aspect
    return ((np.maximum(np.abs(u) - straight, 0) * aspect) ** 2 + v**2) <= 1


SHAPES: dict[str, Field] = {
    "ellipse": lambda u, v, a: u**2 + v**2 <= 1,
    "rect": lambda u, v, a: np.ones(np.broadcast(u, v).shape, dtype=bool),
    "roundrect": lambda u, v, a: u**4 + v**4 <= 1,
    "diamond": lambda u, v, a: np.abs(u) + np.abs(v) <= 1,
    "hexagon": lambda u, v, a: (np.abs(u) + 0.5 * np.abs(v) <= 1) & (np.abs(v) <= 1),
    "octagon": lambda u, v, a: np.abs(u) + np.abs(v) <= 1.45,
    "triangle_up": lambda u, v, a: np.abs(u) <= (1 + v) / 2,
    "triangle_down": lambda u, v, a: np.abs(u) <= (1 - v) / 2,
    "triangle_right": lambda u, v, a: np.abs(v) <= (1 - u) / 2,
    "triangle_left": lambda u, v, a: np.abs(v) <= (1 + u) / 2,
    "trapezoid": lambda u, v, a: np.abs(u) <= 0.65 + 0.35 * v,  # wider at the bottom
    "pot": lambda u, v, a: np.abs(u) <= 0.8 - 0.2 * v,  # wider at the top
    "dome": lambda u, v, a: u**2 + ((v - 1) / 2) ** 2 <= 1,  # flat bottom, round top
    "bowl": lambda u, v, a: (u**2 + ((v + 1) / 2) ** 2 <= 1) & (v > -1),  # flat top, round bottom
    "parallelogram": lambda u, v, a: np.abs(u + 0.4 * v) <= 0.6,
    "teardrop": lambda u, v, a: np.abs(v) <= np.sqrt(np.clip(1 - u**2, 0, None)) * (0.3 + 0.35 * (1 - u)),
    "cross": lambda u, v, a: (np.abs(u) <= 0.38) | (np.abs(v) <= 0.38),
    "flower": lambda u, v, a: np.hypot(u, v) <= 0.62 + 0.38 * np.cos(5 * np.arctan2(v, u)),
    "bar": _bar,
}


def _stripes(phase: np.ndarray) -> np.ndarray:
    return (np.sin(np.pi * phase) > 0).astype(np.float32)


TEXTURES: dict[str, Field] = {
    "solid": lambda u, v, a: np.zeros(np.broadcast(u, v).shape, dtype=np.float32),
    "gradient": lambda u, v, a: (v + 1) / 2 * 0.8,
    "radial": lambda u, v, a: np.clip(np.hypot(u, v), 0, 1) * 0.8,
    "hstripes": lambda u, v, a: _stripes(2.5 * v),
    "vstripes": lambda u, v, a: _stripes(2.5 * u),
    "dstripes": lambda u, v, a: _stripes(1.8 * (u + v)),
    "fine_hstripes": lambda u, v, a: _stripes(4.5 * v),
    "chevrons": lambda u, v, a: _stripes(2.0 * (u + np.abs(v))),
    "zigzag": lambda u, v, a: _stripes(2.5 * v + 0.5 * np.abs(((2 * u) % 1) - 0.5)),
    "checker": lambda u, v, a: ((np.floor(2 * u) + np.floor(2 * v)) % 2).astype(np.float32),
    "dots": lambda u, v, a: ((((1.5 * u) % 1 - 0.5) ** 2 + ((1.5 * v) % 1 - 0.5) ** 2) < 0.07).astype(np.float32),
    "rings": lambda u, v, a: _stripes(3.0 * np.hypot(u, v)),
    "grid": lambda u, v, a: (((2 * u) % 1 < 0.25) | ((2 * v) % 1 < 0.25)).astype(np.float32),
    "border": lambda u, v, a: (np.maximum(np.abs(u), np.abs(v)) > 0.72).astype(np.float32),
    "pupil": lambda u, v, a: (np.hypot(u, v) < 0.5).astype(np.float32),
    "band": lambda u, v, a: (np.abs(v) < 0.3).astype(np.float32),
    "dashes": lambda u, v, a: ((np.abs(v) < 0.4) & (np.abs(u) < 0.8) & (np.sin(5 * np.pi * u) > 0)).astype(np.float32),
    "spokes": lambda u, v, a: (np.sin(5 * np.arctan2(v, u)) > 0.2).astype(np.float32) * (np.hypot(u, v) > 0.2),
    "wheel": lambda u, v, a: ((np.hypot(u, v) < 0.62) & (  # grey hub and spokes inside a black tyre
        (np.hypot(u, v) < 0.22) | (np.abs(np.sin(3 * np.arctan2(v, u))) < 0.3))).astype(np.float32),
}


@dataclass(frozen=True)
class PartLook:
    """A part's visual identity: shape, primary and secondary colour (RGB 0-255) and texture."""

    shape: str
    primary: tuple[int, int, int]
    secondary: tuple[int, int, int]
    texture: str


PART_LOOKS: dict[str, PartLook] = {
    "arm": PartLook("bar", (240, 140, 40), (150, 70, 10), "hstripes"),
    "beak": PartLook("triangle_right", (255, 175, 0), (190, 90, 0), "gradient"),
    "body": PartLook("bar", (0, 165, 165), (210, 250, 250), "border"),
    "cap": PartLook("dome", (225, 0, 95), (255, 255, 255), "dots"),
    "coach_back": PartLook("rect", (135, 20, 20), (240, 200, 80), "border"),
    "coach_front": PartLook("rect", (235, 95, 20), (70, 25, 0), "vstripes"),
    "coach_left": PartLook("rect", (25, 135, 60), (235, 235, 200), "hstripes"),
    "coach_right": PartLook("rect", (125, 40, 165), (235, 235, 200), "hstripes"),
    "coach_top": PartLook("rect", (0, 105, 115), (150, 220, 220), "dstripes"),
    "door": PartLook("rect", (150, 100, 50), (60, 40, 20), "border"),
    "ear": PartLook("diamond", (240, 125, 165), (140, 45, 85), "radial"),
    "engine": PartLook("octagon", (95, 100, 130), (230, 230, 240), "rings"),
    "eye": PartLook("ellipse", (248, 248, 248), (20, 20, 20), "pupil"),
    "eyebrow": PartLook("bar", (70, 40, 15), (120, 75, 40), "solid"),
    "foot": PartLook("trapezoid", (0, 150, 130), (0, 80, 70), "vstripes"),
    "frontside": PartLook("rect", (185, 195, 215), (30, 30, 45), "grid"),
    "hair": PartLook("dome", (125, 75, 20), (60, 30, 5), "zigzag"),
    "hand": PartLook("cross", (250, 195, 150), (200, 120, 90), "solid"),
    "head": PartLook("ellipse", (245, 205, 50), (255, 240, 160), "radial"),
    "headlight": PartLook("hexagon", (255, 255, 205), (245, 185, 0), "rings"),
    "hoof": PartLook("rect", (70, 70, 75), (205, 205, 205), "hstripes"),
    "horn": PartLook("triangle_up", (240, 230, 195), (150, 140, 110), "hstripes"),
    "leg": PartLook("bar", (40, 45, 145), (100, 110, 215), "dstripes"),
    "licenseplate": PartLook("rect", (250, 250, 250), (20, 45, 165), "dashes"),
    "mirror": PartLook("ellipse", (0, 205, 120), (0, 80, 45), "gradient"),
    "mouth": PartLook("ellipse", (215, 30, 50), (255, 235, 235), "band"),
    "muzzle": PartLook("ellipse", (215, 185, 140), (120, 80, 50), "gradient"),
    "neck": PartLook("bar", (125, 145, 25), (205, 220, 120), "hstripes"),
    "nose": PartLook("triangle_down", (120, 60, 205), (55, 20, 120), "gradient"),
    "paw": PartLook("roundrect", (175, 175, 175), (55, 55, 55), "dots"),
    "plant": PartLook("flower", (40, 175, 40), (10, 80, 10), "spokes"),
    "pot": PartLook("pot", (195, 85, 45), (115, 45, 20), "hstripes"),
    "saddle": PartLook("bowl", (50, 50, 50), (205, 155, 90), "checker"),
    "screen": PartLook("rect", (15, 25, 95), (60, 200, 255), "fine_hstripes"),
    "stern": PartLook("triangle_left", (100, 0, 60), (230, 120, 180), "vstripes"),
    "tail": PartLook("teardrop", (185, 70, 20), (40, 20, 10), "dstripes"),
    "torso": PartLook("roundrect", (30, 110, 205), (125, 180, 245), "checker"),
    "vehicle_back": PartLook("rect", (200, 30, 30), (70, 0, 0), "checker"),
    "vehicle_left": PartLook("rect", (145, 205, 35), (60, 100, 0), "vstripes"),
    "vehicle_right": PartLook("rect", (40, 145, 230), (0, 50, 125), "vstripes"),
    "vehicle_top": PartLook("trapezoid", (85, 85, 95), (175, 175, 185), "dstripes"),
    "wheel": PartLook("ellipse", (25, 25, 25), (165, 165, 165), "wheel"),
    "window": PartLook("roundrect", (170, 225, 255), (255, 255, 255), "dstripes"),
    "wing": PartLook("parallelogram", (230, 230, 250), (90, 110, 195), "chevrons"),
}
"""One look per part; ``tests/data/test_synthetic.py`` checks that no two parts look alike."""


# --- class-typical layouts ------------------------------------------------------------------------
# An object lives in a unit square (x right, y down). A slot places one part instance: centre,
# box width and height, and angle (degrees, turning the box's width axis towards +y). Slots are
# drawn in order, so later ones cover earlier ones. ``variant`` ("group=choice") slots are kept
# only when the image picks that choice for the group (a car shows its left or its right side).


@dataclass(frozen=True)
class Slot:
    part: str
    x: float
    y: float
    width: float
    height: float
    angle: float = 0.0
    variant: str = ""


def _pair(part: str, x: float, y: float, width: float, height: float, angle: float = 0.0) -> list[Slot]:
    """A part and its mirror image about the object's vertical centre line."""
    return [Slot(part, x, y, width, height, angle), Slot(part, 1 - x, y, width, height, -angle)]


def _person() -> list[Slot]:
    return [
        *_pair("leg", 0.42, 0.82, 0.11, 0.20), *_pair("foot", 0.40, 0.94, 0.15, 0.10),
        *_pair("arm", 0.27, 0.63, 0.11, 0.27, -10), *_pair("hand", 0.245, 0.80, 0.12, 0.12),
        Slot("torso", 0.5, 0.63, 0.36, 0.30), Slot("neck", 0.5, 0.47, 0.13, 0.08),
        Slot("head", 0.5, 0.27, 0.44, 0.38), *_pair("ear", 0.275, 0.28, 0.10, 0.15),
        Slot("hair", 0.5, 0.10, 0.40, 0.15), *_pair("eyebrow", 0.41, 0.185, 0.14, 0.08),
        *_pair("eye", 0.41, 0.26, 0.13, 0.11), Slot("nose", 0.5, 0.325, 0.10, 0.10),
        Slot("mouth", 0.5, 0.39, 0.18, 0.09),
    ]  # fmt: skip


@dataclass(frozen=True)
class _Quadruped:
    """Proportions of a four-legged animal in side view, facing right."""

    torso: tuple[float, float, float, float]  # x, y, width, height
    leg_length: float
    neck_length: float
    head: tuple[float, float]  # width, height
    ears: int = 1


def _quadruped(name: str, body: _Quadruped) -> list[Slot]:
    parts = CLASS_PARTS[name]
    tx, ty, tw, th = body.torso
    left, right, bottom, top = tx - tw / 2, tx + tw / 2, ty + th / 2, ty - th / 2
    leg_y = bottom + body.leg_length / 2 - 0.05
    leg_xs = (left + 0.07, left + 0.16, right - 0.16, right - 0.07)
    foot = "hoof" if "hoof" in parts else "paw" if "paw" in parts else ""
    neck_x, neck_y = right - 0.03, top - body.neck_length / 2 + 0.03
    head_w, head_h = body.head
    head_x, head_y = neck_x + 0.07, neck_y - body.neck_length / 2 - head_h / 2 + 0.06
    slots = [Slot("tail", left - 0.06, top + 0.02, 0.22, 0.09, 35)]
    slots += [Slot("leg", x, leg_y, 0.10, body.leg_length) for x in leg_xs]
    if foot:
        slots += [Slot(foot, x, leg_y + body.leg_length / 2 + 0.02, 0.14, 0.10) for x in leg_xs]
    slots += [Slot("torso", tx, ty, tw, th), Slot("neck", neck_x, neck_y, 0.13, body.neck_length, 25),
              Slot("head", head_x, head_y, head_w, head_h)]
    ear_xs = (head_x - 0.06, head_x + 0.04) if body.ears == 2 else (head_x - 0.04,)
    slots += [Slot("ear", x, head_y - head_h / 2, 0.11, 0.15, -10) for x in ear_xs]
    if "horn" in parts:
        slots.append(Slot("horn", head_x + 0.05, head_y - head_h / 2 - 0.02, 0.10, 0.15, 15))
    slots.append(Slot("eye", head_x + 0.02, head_y - 0.03, 0.11, 0.10))
    front = head_x + head_w / 2
    if "muzzle" in parts:
        slots.append(Slot("muzzle", front, head_y + 0.05, 0.17, 0.13))
        front += 0.07
    if "nose" in parts:
        slots.append(Slot("nose", front - 0.02, head_y + 0.01, 0.10, 0.10))
    return slots


_QUADRUPEDS = {
    "cat": _Quadruped((0.42, 0.56, 0.46, 0.22), 0.22, 0.14, (0.27, 0.25), ears=2),
    "cow": _Quadruped((0.40, 0.52, 0.58, 0.30), 0.22, 0.14, (0.27, 0.26)),
    "dog": _Quadruped((0.40, 0.53, 0.50, 0.24), 0.26, 0.17, (0.27, 0.25)),
    "horse": _Quadruped((0.40, 0.47, 0.52, 0.24), 0.32, 0.22, (0.25, 0.23)),
    "sheep": _Quadruped((0.40, 0.53, 0.54, 0.34), 0.20, 0.12, (0.26, 0.25)),
}


def _vehicle(length: float, height: float, windows: int, door_x: float) -> list[Slot]:
    """Car or bus in side view: one side panel, one end panel (front with headlight, or back)."""
    x0, y = 0.06, 0.56
    side_x = x0 + length / 2
    end_x = x0 + length + 0.07
    slots = [Slot("vehicle_top", side_x, y - height / 2 - 0.06, length * 0.75, 0.13),
             Slot("vehicle_left", side_x, y, length, height, variant="side=left"),
             Slot("vehicle_right", side_x, y, length, height, variant="side=right"),
             Slot("frontside", end_x, y, 0.14, height, variant="end=front"),
             Slot("vehicle_back", end_x, y, 0.14, height, variant="end=back"),
             Slot("headlight", end_x, y - height * 0.2, 0.11, 0.11, variant="end=front"),
             Slot("licenseplate", end_x, y + height * 0.25, 0.14, 0.09)]
    pane = (length - 0.04) / windows
    slots += [Slot("window", x0 + 0.02 + pane * (i + 0.5), y - height * 0.22, pane * 0.75, height * 0.3)
              for i in range(windows)]
    slots += [Slot("door", x0 + door_x * length, y + height * 0.15, 0.15, height * 0.4),
              Slot("mirror", x0 + length - 0.02, y - height * 0.45, 0.10, 0.10)]
    slots += [Slot("wheel", x0 + f * length, y + height / 2, 0.18, 0.18) for f in (0.2, 0.8)]
    return slots


LAYOUTS: dict[str, list[Slot]] = {
    "aeroplane": [
        Slot("tail", 0.16, 0.33, 0.22, 0.16, -60), Slot("stern", 0.10, 0.49, 0.13, 0.16),
        *[Slot("wheel", x, 0.63, 0.10, 0.10) for x in (0.36, 0.68)],
        Slot("body", 0.52, 0.50, 0.76, 0.17), Slot("wing", 0.50, 0.60, 0.32, 0.24),
        Slot("engine", 0.46, 0.71, 0.17, 0.11),
    ],
    "bicycle": [*[Slot("wheel", x, 0.64, 0.38, 0.38) for x in (0.24, 0.76)], Slot("saddle", 0.40, 0.32, 0.22, 0.11)],
    "bird": [
        Slot("tail", 0.13, 0.56, 0.24, 0.12, 20), Slot("leg", 0.43, 0.76, 0.08, 0.18),
        Slot("leg", 0.55, 0.76, 0.08, 0.18), Slot("foot", 0.42, 0.88, 0.14, 0.09),
        Slot("foot", 0.56, 0.88, 0.14, 0.09), Slot("torso", 0.46, 0.54, 0.46, 0.30),
        Slot("wing", 0.42, 0.48, 0.32, 0.18, -10), Slot("neck", 0.66, 0.38, 0.13, 0.15, 25),
        Slot("head", 0.74, 0.24, 0.27, 0.25), Slot("eye", 0.77, 0.21, 0.11, 0.10),
        Slot("beak", 0.92, 0.26, 0.17, 0.11),
    ],
    "bottle": [Slot("body", 0.5, 0.60, 0.34, 0.66), Slot("cap", 0.5, 0.20, 0.18, 0.15)],
    "bus": _vehicle(0.76, 0.44, 4, 0.85),
    "car": _vehicle(0.70, 0.28, 2, 0.45),
    **{name: _quadruped(name, body) for name, body in _QUADRUPEDS.items()},
    "motorbike": [
        *[Slot("wheel", x, 0.66, 0.32, 0.32) for x in (0.22, 0.78)],
        Slot("saddle", 0.44, 0.42, 0.26, 0.11), Slot("headlight", 0.80, 0.36, 0.12, 0.12),
    ],
    "person": _person(),
    "pottedplant": [Slot("pot", 0.5, 0.78, 0.40, 0.32), Slot("plant", 0.5, 0.40, 0.70, 0.52)],
    "train": [
        Slot("coach_top", 0.36, 0.36, 0.52, 0.09),
        Slot("coach_left", 0.36, 0.55, 0.52, 0.28, variant="side=left"),
        Slot("coach_right", 0.36, 0.55, 0.52, 0.28, variant="side=right"),
        Slot("coach_back", 0.05, 0.55, 0.09, 0.28), Slot("coach_front", 0.665, 0.55, 0.09, 0.28),
        Slot("head", 0.83, 0.53, 0.24, 0.32), Slot("headlight", 0.87, 0.46, 0.11, 0.11),
    ],
    "tvmonitor": [Slot("screen", 0.5, 0.5, 0.80, 0.60)],
}
"""Class-typical arrangement of each class's parts."""


# --- drawing one object ----------------------------------------------------------------------------


@dataclass
class RenderedObject:
    """An image (H, W, 3) uint8, and per annotated part instance its visible mask and flags."""

    object_class: str
    image: np.ndarray
    masks: np.ndarray  # (instances, H, W) bool
    parts: list[str] = field(default_factory=list)
    distractor: list[bool] = field(default_factory=list)

    def part_set(self, *, with_distractors: bool = True) -> frozenset[str]:
        """Names of the annotated parts (what a perfect K would find)."""
        return frozenset(p for p, d in zip(self.parts, self.distractor, strict=True) if with_distractors or not d)


def _rotation(degrees: float) -> np.ndarray:
    radians = math.radians(degrees)
    return np.array([[math.cos(radians), -math.sin(radians)], [math.sin(radians), math.cos(radians)]])


def _interpolation(grid: int, size: int) -> np.ndarray:
    """(size, grid) weights that interpolate ``grid`` lattice values linearly up to ``size``."""
    positions = np.linspace(0, grid - 1, size, dtype=np.float32)
    low = np.minimum(positions.astype(int), grid - 2)
    weight = positions - low
    interpolate = np.zeros((size, grid), dtype=np.float32)
    interpolate[np.arange(size), low] = 1 - weight
    interpolate[np.arange(size), low + 1] = weight
    return interpolate


def _bilinear_field(rng: np.random.Generator, grid: int, height: int, width: int, channels: int) -> np.ndarray:
    """Smooth random values: a grid x grid lattice interpolated up to height x width."""
    lattice = rng.random((grid, grid, channels)).astype(np.float32)
    rows = (_interpolation(grid, height) @ lattice.reshape(grid, grid * channels)).reshape(height, grid, channels)
    # (height, width, channels); two matrix products, far faster than einsum
    return _interpolation(grid, width) @ rows


def _muted(rng: np.random.Generator, saturation: float) -> np.ndarray:
    colour = rng.random(3).astype(np.float32)
    grey = colour.mean()
    return grey + saturation * (colour - grey)


def _random_polygon(rng: np.random.Generator, centre: np.ndarray, radius: float,
                    shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    corners = int(rng.integers(3, 9))
    angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
    radii = radius * rng.uniform(0.4, 1.0, corners)
    return fill_polygon(centre[1] + radii * np.sin(angles), centre[0] + radii * np.cos(angles), shape)


def _background(rng: np.random.Generator, height: int, width: int, max_clutter: int) -> np.ndarray:
    """A muted smooth colour field, a faint texture, and clutter shapes unlike any part; sizes
    scale with the shorter side."""
    side = min(height, width)
    colours = _bilinear_field(rng, int(rng.integers(2, 5)), height, width, 3)
    grey = colours.mean(axis=2, keepdims=True)
    image = grey * 0.5 + 0.25 + 0.45 * (colours - grey)
    texture = int(rng.integers(3))
    if texture == 1:  # faint stripes
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 20) * side / 128
        image += 0.05 * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)[..., None]
    elif texture == 2:  # blotches
        image += 0.12 * (_bilinear_field(rng, 12, height, width, 1) - 0.5)
    for _ in range(int(rng.integers(0, max_clutter + 1))):
        centre = rng.uniform(0, np.array([width, height]), 2)  # (x, y)
        rows, columns = _random_polygon(rng, centre, rng.uniform(0.04, 0.16) * side, (height, width))
        image[rows, columns] = _muted(rng, 0.35) * 0.7 + 0.15
    return image


def _draw_part(image: np.ndarray, labels: np.ndarray, label: int, slot: Slot, to_object: np.ndarray,
               offset: np.ndarray, colours: tuple[np.ndarray, np.ndarray]) -> int:
    """Draw one part instance; returns its full area in pixels, counting pixels beyond the border.

    ``to_object`` and ``offset`` map pixel centres (x, y) to object coordinates.
    """
    look = PART_LOOKS[slot.part]
    height, width = image.shape[:2]
    to_part = np.diag([2 / slot.width, 2 / slot.height]) @ _rotation(-slot.angle)
    to_local = to_part @ to_object  # pixel -> (u, v)
    local_offset = to_part @ (offset - np.array([slot.x, slot.y]))
    # the part box's corners in pixels bound the pixels to visit
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float).T
    pixels = np.linalg.solve(to_local, corners - local_offset[:, None])
    x0, y0 = np.floor(pixels.min(axis=1)).astype(int)
    x1, y1 = np.ceil(pixels.max(axis=1)).astype(int) + 1
    xs = np.arange(x0, x1, dtype=np.float32) + 0.5
    ys = np.arange(y0, y1, dtype=np.float32) + 0.5
    u = to_local[0, 0] * xs[None, :] + to_local[0, 1] * ys[:, None] + local_offset[0]
    v = to_local[1, 0] * xs[None, :] + to_local[1, 1] * ys[:, None] + local_offset[1]
    aspect = slot.width / slot.height
    inside = SHAPES[look.shape](u, v, aspect) & (np.abs(u) <= 1) & (np.abs(v) <= 1)
    area = int(inside.sum())
    # clip to the image
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if cx0 >= cx1 or cy0 >= cy1:
        return area
    crop = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
    inside, u, v = inside[crop], u[crop], v[crop]
    weight = TEXTURES[look.texture](u, v, aspect)[..., None]
    primary, secondary = colours
    shading = 1.0 - 0.08 * v[..., None]  # a little light from above
    colour = (primary * (1 - weight) + secondary * weight) * shading
    window = (slice(cy0, cy1), slice(cx0, cx1))
    image[window][inside] = colour[inside]
    labels[window][inside] = label
    return area


def _choose_slots(object_class: str, rng: np.random.Generator, part_keep: tuple[float, float]) -> list[Slot]:
    """The class's layout with one choice per variant group and some part types left out."""
    slots = LAYOUTS[object_class]
    groups: dict[str, list[str]] = {}
    for slot in slots:
        if slot.variant:
            group, choice = slot.variant.split("=")
            groups.setdefault(group, [])
            if choice not in groups[group]:
                groups[group].append(choice)
    chosen = {f"{group}={choices[int(rng.integers(len(choices)))]}" for group, choices in groups.items()}
    slots = [s for s in slots if not s.variant or s.variant in chosen]
    types = sorted({s.part for s in slots})
    keep_chance = rng.uniform(*part_keep)
    kept_types = {p for p in types if rng.random() < keep_chance} or {types[int(rng.integers(len(types)))]}
    kept: set[int] = set()
    for part in types:
        if part not in kept_types:
            continue
        instances = [i for i, s in enumerate(slots) if s.part == part]
        keep = rng.random(len(instances)) < (1 + keep_chance) / 2
        keep[int(rng.integers(len(instances)))] = True  # a kept type shows at least one instance
        kept.update(i for i, k in zip(instances, keep, strict=True) if k)
    return [s for i, s in enumerate(slots) if i in kept]  # in the layout's drawing order


def _jitter(slot: Slot, rng: np.random.Generator) -> Slot:
    scale = rng.uniform(0.88, 1.12)
    return Slot(slot.part, slot.x + rng.normal(0, 0.012), slot.y + rng.normal(0, 0.012),
                slot.width * scale * rng.uniform(0.93, 1.07), slot.height * scale * rng.uniform(0.93, 1.07),
                slot.angle + rng.normal(0, 3) * min(1.0, 0.2 / max(slot.width, slot.height)))  # long parts tilt less


def _part_colours(part: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    look = PART_LOOKS[part]
    jitter = 1 + rng.normal(0, 0.04, 3)
    return (np.clip(np.array(look.primary) / GREY_LEVELS * jitter, 0, 1).astype(np.float32),
            np.clip(np.array(look.secondary) / GREY_LEVELS * jitter, 0, 1).astype(np.float32))


def render_object(object_class: str, rng: np.random.Generator, spec: SyntheticSpec | None = None, *,
                  canvas: tuple[int, int] | None = None) -> RenderedObject:
    """Draw one object of ``object_class`` as ``spec`` says (default ``SyntheticSpec()``), with the
    randomisation of the module docstring, all of it from ``rng``, on a ``canvas`` (width, height)
    (default: ``spec.image_size`` square). The object's size follows the canvas's shorter side;
    on a longer side it is placed anywhere within most of the free room.

    Returns the image and, for every part instance that shows at least ``spec.min_visible_fraction``
    of its area, its visible pixels after occlusion by later-drawn parts, an occluder or the border.
    """
    if object_class not in LAYOUTS:
        raise SyntheticDataError(f"unknown class {object_class!r}; expected one of: {', '.join(LAYOUTS)}")
    spec = spec or SyntheticSpec()
    width, height = canvas or (spec.image_size, spec.image_size)
    size = min(width, height)  # what the object's size scales with
    corner = np.array([width, height])  # the canvas's far corner (x, y)
    image = _background(rng, height, width, spec.max_clutter)
    slots = [_jitter(s, rng) for s in _choose_slots(object_class, rng, spec.part_keep)]
    distractors = 0
    if rng.random() < spec.distractor_prob:
        foreign = [p for p in PARTS if p not in CLASS_PARTS[object_class]]
        part = foreign[int(rng.integers(len(foreign)))]
        extent = rng.uniform(0.12, 0.22, 2)
        slots.append(Slot(part, *rng.uniform(0.2, 0.8, 2), *extent, rng.uniform(-30, 30)))
        distractors = 1

    # object placement: pixel = centre + rotation @ diag(scale * flip * stretch) @ (object point - 0.5)
    scale = rng.uniform(0.82, 1.0) * size
    stretch = rng.uniform(0.9, 1.1, 2)
    flip = -1.0 if rng.random() < 0.5 else 1.0
    shift = rng.uniform(-0.07, 0.07, 2)  # a little around the centre, and along a longer side most of its free room
    centre = corner / 2 + shift * size + (shift / 0.07) * (corner - size) * 0.4
    to_pixels = _rotation(rng.uniform(-12, 12)) @ np.diag([scale * stretch[0] * flip, scale * stretch[1]])
    to_object = np.linalg.inv(to_pixels)
    offset = np.array([0.5, 0.5]) - to_object @ centre

    labels = np.zeros((height, width), dtype=np.int16)
    areas = [_draw_part(image, labels, index + 1, slot, to_object, offset, _part_colours(slot.part, rng))
             for index, slot in enumerate(slots)]
    if rng.random() < spec.occluder_prob:
        rows, columns = _random_polygon(rng, centre + rng.uniform(-0.3, 0.3, 2) * scale,
                                        rng.uniform(0.12, 0.22) * size, (height, width))
        image[rows, columns] = _muted(rng, 0.35) * 0.7 + 0.15
        labels[rows, columns] = 0

    # lighting: contrast, brightness, colour cast, a gradient across the image; then noise
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = y / height - 0.5, x / width - 0.5
    direction = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0, 0.35) * (x * math.cos(direction) + y * math.sin(direction))
    gain = (rng.uniform(0.85, 1.12) * rng.uniform(0.93, 1.07, 3)).astype(np.float32)
    image = ((image - 0.5) * rng.uniform(0.8, 1.1) + 0.5) * gain * light[..., None]
    image += rng.uniform(0, spec.noise_std) * rng.standard_normal(image.shape, dtype=np.float32)
    pixels = np.clip(np.rint(image * GREY_LEVELS), 0, GREY_LEVELS).astype(np.uint8)

    masks, parts, flags = [], [], []
    visible_counts = np.bincount(labels.ravel(), minlength=len(slots) + 1)
    for index, (slot, area) in enumerate(zip(slots, areas, strict=True)):
        count = visible_counts[index + 1]
        if count and count >= spec.min_visible_fraction * area:
            masks.append(labels == index + 1)
            parts.append(slot.part)
            flags.append(index >= len(slots) - distractors)
    stacked = np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)
    return RenderedObject(object_class, pixels, stacked, parts, flags)


def image_rng(seed: int, kind: str, split: str, object_class: str, index: int) -> np.random.Generator:
    """The random generator of one image (``kind`` "m" or "k"), independent of every other image's."""
    return np.random.default_rng([seed, KINDS.index(kind), SPLITS.index(split), CLASSES.index(object_class), index])


# --- writing a dataset ---------------------------------------------------------------------------------


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless PNG bytes of an (H, W, 3) uint8 image, as the generator writes them."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


@dataclass(frozen=True)
class _Task:
    kind: str
    split: str
    object_class: str
    index: int
    destinations: tuple[str, ...]  # M: one file per class set; K: the one image file


def _run_task(task: _Task, spec: SyntheticSpec) -> list[dict[str, Any]]:
    """Draw and write one image; for K, return its annotations (ids filled in by the caller)."""
    rng = image_rng(spec.seed, task.kind, task.split, task.object_class, task.index)
    canvas = k_canvas_size(spec, task.split, task.object_class, task.index) if task.kind == "k" else None
    rendered = render_object(task.object_class, rng, spec, canvas=canvas)
    first, *copies = task.destinations
    Path(first).write_bytes(encode_png(rendered.image))
    for copy in copies:  # the same image in another class set: a hard link saves disk and time
        link_or_copy(first, copy)
    if task.kind == "m":
        return []
    return [mask_to_annotation(mask, annotation_id=0, image_id=0, category_id=PART_INDEX[part], distractor=flag)
            for mask, part, flag in zip(rendered.masks, rendered.parts, rendered.distractor, strict=True)]


def _m_tasks(spec: SyntheticSpec, folder: Path) -> list[_Task]:
    tasks = []
    for split, count in split_counts(spec.images_per_class, M_SPLIT_FRACTIONS).items():
        for object_class in spec.m_classes:
            class_sets = [name for name in spec.class_sets if object_class in CLASS_SETS[name]]
            for name in class_sets:
                (folder / name / split / object_class).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                file_name = f"{object_class}_{split}_{index:05d}.png"
                destinations = tuple(str(folder / name / split / object_class / file_name) for name in class_sets)
                tasks.append(_Task("m", split, object_class, index, destinations))
    return tasks


def _k_tasks(spec: SyntheticSpec, folder: Path) -> list[_Task]:
    tasks = []
    for split, count in split_counts(spec.k_images, K_SPLIT_FRACTIONS).items():
        image_dir = split_paths(folder, split)[1]
        image_dir.mkdir(parents=True, exist_ok=True)
        for index in range(count):  # classes in turn, so every split is balanced
            object_class = CLASSES[index % len(CLASSES)]
            tasks.append(_Task("k", split, object_class, index, (str(image_dir / f"{index:06d}.png"),)))
    return tasks


def default_workers() -> int:
    """Worker processes when none are asked for: one per CPU core, at most 8."""
    return max(1, min(os.cpu_count() or 1, 8))


def generate_synthetic(root: str | os.PathLike[str], spec: SyntheticSpec, *, progress: bool = True,
                       workers: int | None = None) -> Path:
    """Write the synthetic dataset of ``spec`` to ``root``, replacing what is there, atomically.

    ``workers`` processes draw images (default: one per CPU core, at most 8); the output does not
    depend on it. A folder at ``root`` that has no manifest is not a generated dataset and is
    never replaced. Returns ``root``.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    _check_replaceable(root)
    workers = workers or default_workers()
    with atomic_directory(root) as folder:
        tasks = _m_tasks(spec, folder) + _k_tasks(spec, folder)
        annotations: dict[_Task, list[dict[str, Any]]] = {}
        draw = partial(_run_task, spec=spec)
        # the pool starts before tqdm's monitor thread, so no thread is ever forked
        with (multiprocessing.get_context().Pool(workers) if workers > 1 else nullcontext()) as pool, \
                tqdm(total=len(tasks), desc=f"synthetic world {root}", unit="img", disable=not progress) as bar:
            chunk = max(1, min(32, len(tasks) // (8 * workers)))
            results = pool.imap(draw, tasks, chunksize=chunk) if pool is not None else map(draw, tasks)
            for task, result in zip(tasks, results, strict=True):
                annotations[task] = result
                bar.update()
        k_counts = _write_coco_files(spec, folder, annotations)
        atomic_write_json(folder / MANIFEST, _manifest(spec, k_counts))
    return root


def _write_coco_files(spec: SyntheticSpec, folder: Path, annotations: dict[_Task, list[dict[str, Any]]]
                      ) -> dict[str, dict[str, int]]:
    counts = {}
    for split in SPLITS:
        images, split_annotations = [], []
        for task in (t for t in annotations if t.kind == "k" and t.split == split):
            image_id = task.index + 1  # COCO tools treat id 0 as "no match"
            width, height = k_canvas_size(spec, split, task.object_class, task.index)
            images.append({"id": image_id, "file_name": Path(task.destinations[0]).name, "height": height,
                           "width": width, "object_class": task.object_class})
            for annotation in annotations[task]:
                split_annotations.append({**annotation, "id": len(split_annotations) + 1, "image_id": image_id})
        write_coco(split_paths(folder, split)[0], images=images, annotations=split_annotations,
                   info={"description": f"unmask synthetic part world, {split} split", "seed": spec.seed,
                         "generator_version": GENERATOR_VERSION})
        counts[split] = {"images": len(images), "annotations": len(split_annotations)}
    return counts


def _manifest(spec: SyntheticSpec, k_counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    m_counts = split_counts(spec.images_per_class, M_SPLIT_FRACTIONS)
    return {
        "dataset": "unmask synthetic part world",
        "generator_version": GENERATOR_VERSION,
        "spec": spec.to_json(),
        "m": {"split_fractions": list(M_SPLIT_FRACTIONS), "images_per_class": m_counts,
              "class_sets": {name: list(CLASS_SETS[name]) for name in spec.class_sets}},
        "k": {"split_fractions": list(K_SPLIT_FRACTIONS), "classes": list(CLASSES), "splits": k_counts},
    }


def read_manifest(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of a generated dataset, or None when ``root`` has none (or an unreadable one)."""
    path = Path(root) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def manifest_matches(root: str | os.PathLike[str], spec: SyntheticSpec) -> bool:
    """Whether ``root`` holds a complete dataset drawn by this generator version for ``spec``."""
    manifest = read_manifest(root)
    return (manifest is not None and manifest.get("generator_version") == GENERATOR_VERSION
            and manifest.get("spec") == spec.to_json())


def _check_replaceable(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise SyntheticDataError(f"output {root} is a file; expected a folder for the synthetic dataset")
    if root.is_dir() and any(root.iterdir()) and read_manifest(root) is None:
        raise SyntheticDataError(f"output folder {root} is not empty and has no {MANIFEST}, so it is not a generated "
                                 "synthetic dataset; it is left untouched. Choose another --out or empty it.")
    for parent in root.parents:
        if parent.exists():
            if not parent.is_dir():
                raise SyntheticDataError(f"cannot create {root}: {parent} is a file, not a folder")
            break


def ensure_synthetic(root: str | os.PathLike[str], spec: SyntheticSpec, *, progress: bool = True,
                     workers: int | None = None) -> Path:
    """Reuse the dataset at ``root`` when its manifest matches ``spec``; otherwise (re)generate it.

    Generation holds a lock beside ``root``: a second run started meanwhile waits, then finds
    the first's dataset and reuses it instead of drawing it again."""
    root = Path(root)
    if manifest_matches(root, spec):
        return root
    with file_lock(lock_path(root), what="generating the synthetic world"):
        if manifest_matches(root, spec):  # another process generated it while this one waited
            return root
        return generate_synthetic(root, spec, progress=progress, workers=workers)


# --- a picture of the world ----------------------------------------------------------------------------


def render_examples(path: str | os.PathLike[str], spec: SyntheticSpec | None = None, *,
                    classes: Sequence[str] = CLASSES) -> Path:
    """Save a PNG grid of one example per class (``spec``'s drawing; default ``SyntheticSpec()``):
    the image, and beside it the image with every annotated part outlined and labelled
    (distractors marked with ``*``). Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.measure import find_contours

    spec = spec or SyntheticSpec()
    columns = 4  # examples per row
    rows = math.ceil(len(classes) / columns)
    figure, axes = plt.subplots(rows, 2 * columns, figsize=(4.2 * columns, 2.2 * rows), squeeze=False)
    palette = plt.get_cmap("tab20")
    for axis in axes.flat:
        axis.set_axis_off()
    for number, object_class in enumerate(classes):
        rendered = render_object(object_class, image_rng(spec.seed, "m", "test", object_class, 0), spec)
        plain, outlined = axes[number // columns, 2 * (number % columns)], axes[number // columns, 2 * (number % columns) + 1]
        plain.imshow(rendered.image, interpolation="nearest")
        plain.set_title(object_class, fontsize=9)
        outlined.imshow(rendered.image, interpolation="nearest")
        outlined.set_title(f"{len(set(rendered.parts))} of {len(CLASS_PARTS[object_class])} parts", fontsize=8)
        for mask, part, flag in zip(rendered.masks, rendered.parts, rendered.distractor, strict=True):
            colour = palette(PART_INDEX[part] % 20)
            for contour in find_contours(np.pad(mask, 1).astype(np.float32), 0.5):
                outlined.plot(contour[:, 1] - 1, contour[:, 0] - 1, color=colour, linewidth=0.8)
            rows_, columns_ = np.nonzero(mask)
            nearest = np.argmin((rows_ - rows_.mean()) ** 2 + (columns_ - columns_.mean()) ** 2)
            outlined.text(columns_[nearest], rows_[nearest], part + ("*" if flag else ""), fontsize=4.5,
                          ha="center", va="center", color="black",
                          bbox={"boxstyle": "round,pad=0.1", "facecolor": colour, "alpha": 0.75, "linewidth": 0})
    figure.suptitle("Synthetic part world: one object per class; right: annotated parts (K's masks)", fontsize=11)
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=130, format="png")
    plt.close(figure)
    return path


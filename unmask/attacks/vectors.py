"""Attack names, their norms, and attack vectors (name + epsilon on the 0-255 scale)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from unmask.parts import UnknownNameError

ATTACK_NORMS: dict[str, str] = {
    "pgd_linf": "linf",
    "pgd_l2": "l2",
    "mim_linf": "linf",
    "mim_l2": "l2",
    "fgsm": "linf",
    "bim_linf": "linf",
    "cw_l2": "l2",
    "deepfool_linf": "linf",
}
ATTACK_NAMES: tuple[str, ...] = tuple(ATTACK_NORMS)
MAX_PIXEL = 255
NORM_NAMES = {"linf": "L-inf", "l2": "L2"}


def max_epsilon(norm: str, image_size: int) -> float:
    """The largest budget that can matter on the 0-255 scale: the largest distance between two
    ``image_size`` x ``image_size`` RGB images, 255 in L-inf and 255 * sqrt(3 * H * W) in L2."""
    if norm == "linf":
        return float(MAX_PIXEL)
    if norm == "l2":
        return MAX_PIXEL * math.sqrt(3 * image_size * image_size)
    raise ValueError(f"unknown norm {norm!r}; expected one of: linf, l2")


@dataclass(frozen=True)
class AttackVector:
    """One attack at one budget; ``epsilon`` is on the paper's 0-255 scale."""

    name: str
    epsilon: float

    def __post_init__(self) -> None:
        if self.name not in ATTACK_NORMS:
            raise UnknownNameError(f"unknown attack {self.name!r}; expected one of: {', '.join(ATTACK_NAMES)}")
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"attack {self.name}: epsilon must be a finite number > 0 on the 0-255 scale, "
                             f"got {self.epsilon}")
        if self.norm == "linf" and self.epsilon > MAX_PIXEL:
            raise ValueError(f"attack {self.name}: epsilon {self.epsilon:g} exceeds {MAX_PIXEL}, the whole 0-255 "
                             f"pixel range; an L-inf budget above it cannot change anything more (e.g. "
                             f"{self.name}:8 or {self.name}:16)")

    @property
    def norm(self) -> str:
        return ATTACK_NORMS[self.name]

    def check_image_size(self, image_size: int) -> None:
        """Raise ``ValueError`` when the budget exceeds what images of ``image_size`` x
        ``image_size`` RGB pixels allow (``max_epsilon``): beyond it the attack is unbounded,
        and the figure reported beside it would mean nothing."""
        limit = max_epsilon(self.norm, image_size)
        if self.epsilon > limit:
            formula = f"255*sqrt(3*{image_size}*{image_size})" if self.norm == "l2" else "255"
            raise ValueError(f"attack {self.name}: epsilon {self.epsilon:g} exceeds {limit:,.0f}, the largest "
                             f"{NORM_NAMES[self.norm]} distance between two {image_size}x{image_size} RGB images on "
                             f"the 0-255 scale ({formula}); no budget above it can matter")

    @property
    def label(self) -> str:
        return f"{self.name}:{self.epsilon:g}"


PAPER_VECTORS: tuple[AttackVector, ...] = tuple(
    AttackVector(name, epsilon)
    for name, epsilons in (("pgd_linf", (8, 16)), ("pgd_l2", (300, 600)), ("mim_linf", (8, 16)), ("mim_l2", (300, 600)))
    for epsilon in epsilons
)
"""The paper's eight attack vectors: PGD and MIM, L-inf at 8 and 16, L2 at 300 and 600."""

NAMED_VECTOR_LISTS: dict[str, tuple[AttackVector, ...]] = {"paper": PAPER_VECTORS}


def parse_attack_vectors(specs: Iterable[str], *, image_size: int | None = None) -> tuple[AttackVector, ...]:
    """Parse ``name:epsilon`` strings (or a named list such as ``paper``) into attack vectors;
    ``ValueError`` for a malformed, non-finite or out-of-range epsilon (with ``image_size``, also
    an L2 budget beyond what images of that size allow: ``AttackVector.check_image_size``)."""
    vectors: list[AttackVector] = []
    for spec in specs:
        spec = spec.strip()
        if spec in NAMED_VECTOR_LISTS:
            vectors.extend(NAMED_VECTOR_LISTS[spec])
            continue
        name, _, epsilon = spec.partition(":")
        if name not in ATTACK_NORMS:
            valid = [*NAMED_VECTOR_LISTS, *ATTACK_NAMES]
            raise UnknownNameError(f"unknown attack {name!r} in {spec!r}; expected one of: {', '.join(valid)}")
        try:
            value = float(epsilon)
        except ValueError:
            raise ValueError(f"attack vector {spec!r}: expected name:epsilon with epsilon on the 0-255 scale, "
                             f"e.g. {name}:8") from None
        vectors.append(AttackVector(name, value))
    if image_size is not None:
        for vector in vectors:
            vector.check_image_size(image_size)
    if not vectors:
        raise ValueError("no attack vectors given; expected e.g. 'paper' or 'pgd_linf:8,pgd_l2:300'")
    return tuple(vectors)

"""Attack names, their norms, and attack vectors (name + epsilon on the 0-255 scale)."""

from __future__ import annotations

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


@dataclass(frozen=True)
class AttackVector:
    """One attack at one budget; ``epsilon`` is on the paper's 0-255 scale."""

    name: str
    epsilon: float

    def __post_init__(self) -> None:
        if self.name not in ATTACK_NORMS:
            raise UnknownNameError(f"unknown attack {self.name!r}; expected one of: {', '.join(ATTACK_NAMES)}")
        if not self.epsilon > 0:
            raise ValueError(f"attack {self.name}: epsilon must be positive, got {self.epsilon}")

    @property
    def norm(self) -> str:
        return ATTACK_NORMS[self.name]

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


def parse_attack_vectors(specs: Iterable[str]) -> tuple[AttackVector, ...]:
    """Parse ``name:epsilon`` strings (or a named list such as ``paper``) into attack vectors."""
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
    if not vectors:
        raise ValueError("no attack vectors given; expected e.g. 'paper' or 'pgd_linf:8,pgd_l2:300'")
    return tuple(vectors)

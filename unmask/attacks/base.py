"""What every attack says about itself, the registries built from it, and the attack vector.

An attack is described by an ``AttackInfo``: its name, its norm (a ``Norm``: it projects and
steps), its kind (fixed-epsilon, minimisation or label-only, as foolbox 3's ``base.py`` splits
them) and whether it is targeted. A registry (``AttackRegistry``) is built from those
descriptions; the command line's names, its help text and the parser of ``name:epsilon`` specs
are read off it, so adding an attack is one description (or one class) and one registry line.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import nn

from unmask.attacks.norms import Norm
from unmask.constants import GREY_LEVELS, to_unit_scale
from unmask.parts import UnknownNameError


class AttackKind(enum.Enum):
    """How an attack uses its budget (foolbox 3: ``FixedEpsilonAttack`` / ``MinimizationAttack``)."""

    FIXED_EPSILON = "fixed-epsilon"
    """Looks for an adversarial inside the epsilon ball it is given."""
    MINIMISATION = "minimisation"
    """Looks for the smallest adversarial it can find; one run answers every epsilon."""
    LABEL_ONLY = "label-only"
    """A minimisation attack that reads only the pipeline's decisions, never a gradient: the check
    against gradient masking."""

    @property
    def minimises(self) -> bool:
        return self is not AttackKind.FIXED_EPSILON


@dataclass(frozen=True)
class AttackInfo:
    """One attack as the registries list it: ``name`` (``<family>_<norm>`` for most), ``norm``,
    ``kind``, ``targeted`` and a one-line ``summary`` (paper and loss) for tables and help."""

    name: str
    norm: Norm
    kind: AttackKind = AttackKind.FIXED_EPSILON
    targeted: bool = False
    summary: str = ""


@dataclass(frozen=True)
class AttackVector:
    """One attack at one budget; ``epsilon`` is on the paper's 0-255 scale, in the attack's norm."""

    attack: AttackInfo
    epsilon: float

    def __post_init__(self) -> None:
        if not (isinstance(self.epsilon, int | float) and math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"attack {self.name}: epsilon must be a finite number > 0 on the 0-255 scale, "
                             f"got {self.epsilon}")
        if self.epsilon > self.norm.max_epsilon():
            raise ValueError(f"attack {self.name}: epsilon {self.epsilon:g} exceeds {GREY_LEVELS}, the whole 0-255 "
                             f"pixel range; a {self.norm.title} budget above it cannot change anything more (e.g. "
                             f"{self.name}:8 or {self.name}:16)")

    @property
    def name(self) -> str:
        return self.attack.name

    @property
    def norm(self) -> Norm:
        return self.attack.norm

    @property
    def unit_epsilon(self) -> float:
        """The budget as a distance between images in [0, 1]."""
        return to_unit_scale(self.epsilon)

    @property
    def label(self) -> str:
        return f"{self.name}:{self.epsilon:g}"

    def check_image_size(self, image_size: int) -> None:
        """Raise ``ValueError`` when the budget exceeds what images of ``image_size`` x
        ``image_size`` RGB pixels allow (``Norm.max_epsilon``): beyond it the attack is unbounded,
        and the figure reported beside it would mean nothing."""
        limit = self.norm.max_epsilon(image_size)
        if self.epsilon > limit:
            raise ValueError(f"attack {self.name}: epsilon {self.epsilon:g} exceeds {limit:,.0f}, the largest "
                             f"{self.norm.title} distance between two {image_size}x{image_size} RGB images on the "
                             f"0-255 scale; no budget above it can matter")


@dataclass(frozen=True)
class AttackRegistry(Mapping[str, AttackInfo]):
    """Attacks by name, with named lists of ``name:epsilon`` specs (``paper``, ``full``)."""

    what: str
    """What its names are called in messages (``attack``, ``adaptive attack``)."""
    attacks: tuple[AttackInfo, ...]
    named_lists: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [attack.name for attack in self.attacks]
        if len(set(names)) != len(names) or set(names) & set(self.named_lists):
            raise ValueError(f"{self.what} registry: names must be unique, got {names} and {list(self.named_lists)}")

    def __getitem__(self, name: str) -> AttackInfo:
        for attack in self.attacks:
            if attack.name == name:
                return attack
        raise UnknownNameError(f"unknown {self.what} {name!r}; expected one of: {', '.join(self.choices)}")

    def __iter__(self) -> Iterator[str]:
        return (attack.name for attack in self.attacks)

    def __len__(self) -> int:
        return len(self.attacks)

    @property
    def choices(self) -> tuple[str, ...]:
        """What a spec may name: the named lists, then every attack."""
        return (*self.named_lists, *self)

    def vector(self, name: str, epsilon: float) -> AttackVector:
        return AttackVector(self[name], epsilon)

    def parse(self, specs: Iterable[str], *, image_size: int | None = None) -> tuple[AttackVector, ...]:
        """``name:epsilon`` specs (or named lists) as vectors, in order, without repeats; ``ValueError``
        for a malformed, non-finite or out-of-range epsilon (with ``image_size``, also a budget
        beyond what images of that size allow)."""
        vectors: list[AttackVector] = []
        for spec in specs:
            spec = spec.strip()
            if spec in self.named_lists:
                vectors.extend(self.parse(self.named_lists[spec]))
                continue
            name, _, epsilon = spec.partition(":")
            info = self[name]
            try:
                value = float(epsilon)
            except ValueError:
                raise ValueError(f"{spec!r}: expected name:epsilon with epsilon on the 0-255 scale, e.g. "
                                 f"{name}:8") from None
            vectors.append(AttackVector(info, value))
        if image_size is not None:
            for vector in vectors:
                vector.check_image_size(image_size)
        return tuple(dict.fromkeys(vectors))

    def describe(self) -> str:
        """One line per attack: name, norm, kind and summary (for help texts and docs)."""
        return "\n".join(f"{attack.name} ({attack.norm.title}, {attack.kind.value}"
                         f"{', targeted' if attack.targeted else ''}): {attack.summary}" for attack in self.attacks)


@contextmanager
def frozen_eval(*models: nn.Module) -> Iterator[None]:
    """Models in eval mode with frozen parameters inside the block; restored afterwards.

    Eval: BatchNorm and dropout must not change while the attacker queries; frozen parameters:
    backward then computes input gradients only (faster, and leaves no ``.grad`` behind)."""
    states = [(model, model.training, [p.requires_grad for p in model.parameters()]) for model in models]
    for model in models:
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
    try:
        yield
    finally:
        for model, training, flags in states:
            for parameter, flag in zip(model.parameters(), flags, strict=True):
                parameter.requires_grad_(flag)
            model.train(training)

"""A run's folder and the files the evaluation writes into it as it goes.

Layout of ``<output dir>/<run name>/``: ``config.json`` (the result-determining configuration),
``clean.npz`` and ``validation.npz`` (clean predictions of the test and validation images),
``vectors/<attack>-eps<epsilon>.npz`` (one per attack vector, written as it finishes, with the
example images of the figure beside it), ``adaptive/`` (the threat-model evaluation's results),
then the reports (``experiment.outputs``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unmask.attacks import AttackVector
from unmask.evaluation import Scored
from unmask.io import atomic_path


@dataclass(frozen=True)
class RunFolder:
    """The files of one run."""

    path: Path

    @property
    def clean(self) -> Path:
        return self.path / "clean.npz"

    @property
    def validation(self) -> Path:
        return self.path / "validation.npz"

    def vector(self, vector: AttackVector) -> Path:
        return self.path / "vectors" / f"{vector.name}-eps{vector.epsilon:g}.npz"

    def example(self, vector: AttackVector) -> Path:
        return self.path / "vectors" / f"{vector.name}-eps{vector.epsilon:g}-example.pt"


def save_example(path: Path, index: int, clean: torch.Tensor, adversarial: torch.Tensor) -> None:
    """The example figure's image pair (the clean test image ``index`` and its attacked version)."""
    with atomic_path(path) as temporary:
        torch.save({"index": index, "clean": clean.clone(), "adversarial": adversarial.clone()}, temporary)


def example_candidates(labels: np.ndarray, clean: Scored, attacked: Scored) -> np.ndarray:
    """Positions in one batch of the example figure's candidates, best first (-1: none): the
    first image M gets right clean and wrong attacked and UnMask re-classifies correctly, the
    first such image whatever UnMask says, and the batch's first image."""
    fooled = (clean.m == labels) & (attacked.m != labels)
    firsts = [np.flatnonzero(tier)[:1] for tier in (fooled & (attacked.unmask == labels), fooled)]
    return np.array([int(first[0]) if first.size else -1 for first in firsts] + [0], dtype=np.int64)


def choose_example(batch_candidates: list[np.ndarray]) -> tuple[int, int]:
    """(batch, candidate) of the example among every batch's ``example_candidates``, in batch
    order: the earliest image of the best tier any batch found, else the first image."""
    for tier in range(2):
        for batch, candidates in enumerate(batch_candidates):
            if candidates[tier] >= 0:
                return batch, tier
    return 0, 2

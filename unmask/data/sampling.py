"""Choosing which images an evaluation looks at: seeded and class-stratified, so that a sample
of N test images never means "the first N files", which are sorted by class."""

from __future__ import annotations

import numpy as np


def stratified_sample(labels: np.ndarray, count: int, *, seed: int) -> np.ndarray:
    """Sorted indices of ``count`` images (all of them when ``count`` is 0 or at least their
    number), spread over the classes as evenly as their sizes allow: classes take turns, each
    giving its next image in a seeded random order, until ``count`` are taken."""
    labels = np.asarray(labels)
    if count <= 0 or count >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(np.flatnonzero(labels == label))) for label in np.unique(labels)]
    chosen: list[int] = []
    while len(chosen) < count:
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(int(queue.pop(0)))
    return np.sort(np.array(chosen, dtype=np.int64))

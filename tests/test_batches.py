"""Per-image results in fixed batches: resumable per batch, and independent of who computed them."""

from __future__ import annotations

import numpy as np
import pytest

from unmask.experiment.batches import batch_folder, forget_batches, in_batches
from unmask.runtime import Runtime


def computation(calls, *, fail_at=None):
    def compute(number, indices):
        if number == fail_at:
            raise KeyboardInterrupt  # killed during this batch
        calls.append(number)
        return {"square": indices ** 2, "batch": np.full(len(indices), number)}, {"first": indices[:1]}
    return compute


def test_batches_cover_every_image_in_order_and_resume_per_batch(tmp_path):
    result, runtime, calls = tmp_path / "result.npz", Runtime("cpu", verbosity=0), []
    with pytest.raises(KeyboardInterrupt):
        in_batches(result, {"v": 1}, count=10, batch_size=3, compute=computation(calls, fail_at=2), runtime=runtime,
                   what="x")
    assert calls == [0, 1] and sorted(p.name for p in batch_folder(result).glob("*.npz")) == ["0.npz", "1.npz"]
    per_image, extras = in_batches(result, {"v": 1}, count=10, batch_size=3, compute=computation(calls),
                                   runtime=runtime, what="x")
    assert calls == [0, 1, 2, 3]  # only the batches the killed run had not finished
    assert per_image["square"].tolist() == [i * i for i in range(10)]
    assert per_image["batch"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert [e["first"].tolist() for e in extras] == [[0], [3], [6], [9]]
    # batches made for something else (another fingerprint) are recomputed, not reused
    in_batches(result, {"v": 2}, count=10, batch_size=3, compute=computation(calls), runtime=runtime, what="x")
    assert calls == [0, 1, 2, 3, 0, 1, 2, 3]
    forget_batches(result)
    assert not batch_folder(result).exists()

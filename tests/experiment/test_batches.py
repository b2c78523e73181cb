"""Per-image results in fixed batches: resumable per batch, and independent of who computed them."""

from __future__ import annotations

import numpy as np
import pytest

from unmask.experiment.batches import batch_folder, forget_batches, in_batches, resumable_result
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


def test_a_whole_result_is_written_once_and_reused_only_for_its_fingerprint(tmp_path):
    result, runtime, calls, finished = tmp_path / "result.npz", Runtime("cpu", verbosity=0), [], []
    arrays = resumable_result(result, {"v": 1}, count=5, batch_size=2, compute=computation(calls), runtime=runtime,
                              what="x", finish=lambda extras: finished.append(len(extras)))
    assert calls == [0, 1, 2] and finished == [3] and result.is_file() and not batch_folder(result).exists()
    again = resumable_result(result, {"v": 1}, count=5, batch_size=2, compute=computation(calls), runtime=runtime,
                             what="x")
    assert calls == [0, 1, 2] and again["square"].tolist() == arrays["square"].tolist() == [0, 1, 4, 9, 16]
    resumable_result(result, {"v": 2}, count=5, batch_size=2, compute=computation(calls), runtime=runtime, what="x")
    assert calls == [0, 1, 2, 0, 1, 2]  # made for another fingerprint: recomputed

"""The one reuse rule: a saved result is reused only when the fingerprint it was stamped with
matches, and the console says what changed when it does not."""

from __future__ import annotations

import os

import pytest
import torch

from unmask.provenance import (
    cached,
    changes,
    files_digest,
    producing,
    read_stamp,
    reusable,
    stamp_path,
    tensors_digest,
)


def save_text(value, path):
    path.write_text(value)


def load_text(path):
    return path.read_text()


def test_a_result_is_reused_only_for_its_fingerprint(tmp_path):
    result, messages, calls = tmp_path / "result.txt", [], []

    def compute(text):
        def run():
            calls.append(text)
            return text
        return run

    fingerprint = {"attack": {"steps": 2}, "data": "0123456789abcdef"}
    assert cached(result, fingerprint, compute("a"), save=save_text, load=load_text, what="x", log=messages.append) == "a"
    assert cached(result, fingerprint, compute("b"), save=save_text, load=load_text, what="x", log=messages.append) == "a"
    assert calls == ["a"] and messages == []
    changed = {"attack": {"steps": 5}, "data": "fedcba9876543210"}
    assert cached(result, changed, compute("c"), save=save_text, load=load_text, what="x", log=messages.append) == "c"
    assert messages == ["x: recomputing the saved result result.txt (attack.steps: 2 -> 5; data changed)"]
    assert read_stamp(result) == changed


def test_a_result_without_its_stamp_is_recomputed_and_said_so(tmp_path):
    result, messages = tmp_path / "result.txt", []
    result.write_text("from an older version, or interrupted before its stamp")
    assert not reusable(result, {"a": 1}, what="x", log=messages.append)
    assert "no record of what made it" in messages[0]


def test_a_crash_while_producing_leaves_no_stamp_on_the_new_result(tmp_path):
    result = tmp_path / "result.txt"
    with producing(result, {"version": 1}) as path:
        path.write_text("one")
    assert reusable(result, {"version": 1}, what="x")
    with pytest.raises(KeyboardInterrupt), producing(result, {"version": 2}) as path:
        path.write_text("half of two")
        raise KeyboardInterrupt
    assert not stamp_path(result).exists()  # neither the old stamp (wrong now) nor a new one
    assert not reusable(result, {"version": 1}, what="x") and not reusable(result, {"version": 2}, what="x")


def test_digests_follow_contents():
    weights = {"a": torch.ones(3), "b": torch.zeros(2, 2, dtype=torch.int64)}
    assert tensors_digest(weights) == tensors_digest({k: v.clone() for k, v in weights.items()})
    assert tensors_digest(weights) != tensors_digest({**weights, "a": torch.tensor([1.0, 1.0, 1.5])})
    assert tensors_digest(weights) != tensors_digest({**weights, "a": torch.ones(3, dtype=torch.float64)})


def test_files_digest_notices_a_file_rewritten_in_place(tmp_path):
    image = tmp_path / "dog.png"
    image.write_bytes(b"dog")
    before = files_digest([image], tmp_path)
    image.write_bytes(b"car")  # same size, new contents
    os.utime(image, ns=(1, 1))
    assert files_digest([image], tmp_path) != before


def test_changes_name_what_differs():
    assert changes({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": 4}) == ["d is new", "b.c: 2 -> 3"]
    assert changes({"m": "0123456789abcdef", "old": {"x": 1, "y": 2}, "b": {"c": 2, "e": 1}},
                   {"m": {"weights": "0123456789abcdef"}, "b": {"c": 2}}) == [
        "m is recorded in another form (an earlier version of unmask made it)", "old is gone", "b.e is gone"]

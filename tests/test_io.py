import errno
import json
import math
import os
import random
import resource
import signal
import stat
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from unmask import io
from unmask.io import (
    CheckpointError,
    DiskFullError,
    UnmaskError,
    atomic_directory,
    atomic_path,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    file_lock,
    load_checkpoint,
    read_weights,
    stable_hash,
)


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"a": 1})
    assert target.read_text().strip().startswith("{")
    with pytest.raises(TypeError):
        atomic_write_json(target, {"a": object()})  # not serialisable: the old file survives
    assert '"a": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_directory_replaces_only_on_success(tmp_path):
    target = tmp_path / "dataset"
    with atomic_directory(target) as folder:
        (folder / "done.txt").write_text("1")
    assert (target / "done.txt").exists()
    with pytest.raises(RuntimeError), atomic_directory(target) as folder:
        (folder / "half.txt").write_text("1")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["done.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]


def test_load_checkpoint_refuses_pickled_objects_and_names_the_file(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"callback": random.Random}, path)  # a class object needs a full unpickle
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_checkpoint(truncated)


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
    assert len(stable_hash({"a": 1}, length=12)) == 12


def test_atomic_results_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {})
        with atomic_directory(tmp_path / "folder"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755


# --- atomic writes, interrupted for real ----------------------------------------------------------


@contextmanager
def file_size_limit(limit: int):
    """Writes past ``limit`` bytes of any file fail (EFBIG) while inside: a write cut off midway,
    whatever the writer, as a full disk would."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the process is killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


PAYLOAD = "x" * 200_000


@pytest.mark.parametrize("write", [
    lambda path: atomic_write_text(path, PAYLOAD),
    lambda path: atomic_write_json(path, {"payload": PAYLOAD}),
    lambda path: atomic_torch_save({"payload": torch.zeros(50_000)}, path),
], ids=["text", "json", "torch"])
def test_a_write_cut_off_midway_leaves_the_previous_file_and_nothing_beside_it(tmp_path, write):
    target = tmp_path / "result"
    target.write_text("previous")
    with pytest.raises((OSError, RuntimeError)), file_size_limit(50_000):
        write(target)  # writing straight to ``target`` would leave it truncated here
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["result"]
    write(target)  # and nothing is in the way of the next try
    assert target.stat().st_size > 50_000 and [p.name for p in tmp_path.iterdir()] == ["result"]


def test_an_interrupt_mid_write_leaves_the_previous_file_intact(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as temporary:
        temporary.write_text('{"a": 2, "half')
        raise KeyboardInterrupt
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


# --- a full disk ----------------------------------------------------------------------------------


def _assert_disk_full(error: pytest.ExceptionInfo, path: Path) -> None:
    assert isinstance(error.value, OSError) and isinstance(error.value, UnmaskError)
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(path)
    assert str(error.value).startswith(f"no space left on device while writing {path}")
    assert "[Errno" not in str(error.value)


def test_a_full_disk_under_torch_save_names_the_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "state.pt"
    atomic_torch_save({"epoch": 1}, target)

    def full_disk(obj, file):
        Path(file).write_bytes(b"PK partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1024 vs 896")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DiskFullError) as raised:
        atomic_torch_save({"epoch": 2}, target)
    _assert_disk_full(raised, target)
    assert "unexpected pos" in str(raised.value)  # torch's own words, after ours
    monkeypatch.undo()
    assert load_checkpoint(target) == {"epoch": 1} and [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_a_full_disk_under_plain_writes_names_the_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(DiskFullError) as raised:
        atomic_write_json(target, {"a": 1})
    _assert_disk_full(raised, target)
    with pytest.raises(DiskFullError) as raised:
        atomic_write_text(target, "text")
    _assert_disk_full(raised, target)
    monkeypatch.undo()
    with pytest.raises(DiskFullError) as raised, atomic_directory(tmp_path / "dataset") as folder:
        (folder / "image.png").write_bytes(b"1")
        raise OSError(errno.ENOSPC, "No space left on device")
    _assert_disk_full(raised, tmp_path / "dataset")
    assert list(tmp_path.iterdir()) == []


def test_other_write_errors_pass_unchanged(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", lambda obj, file: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="^a bug$"):
        atomic_torch_save({}, tmp_path / "x.pt")
    with pytest.raises(PermissionError), atomic_path(tmp_path / "y") as temporary:
        raise PermissionError(errno.EACCES, "denied", str(temporary))


# --- strict JSON ----------------------------------------------------------------------------------


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_json_files_are_strict_nan_and_infinity_become_null(tmp_path):
    data = {"accuracy": float("nan"), "nested": [1.5, float("inf"), (float("-inf"), {"x": np.float32("nan")})],
            "numpy": {"f": np.float64(0.25), "g": np.float32(0.5), "i": np.int64(3), "a": np.array([1.0, np.nan]),
                      "nan64": np.float64("nan")}, "text": "NaN"}
    for indent in (2, None):
        atomic_write_json(tmp_path / "metrics.json", data, indent=indent)
        assert _strict((tmp_path / "metrics.json").read_text()) == {
            "accuracy": None, "nested": [1.5, None, [None, {"x": None}]],
            "numpy": {"f": 0.25, "g": 0.5, "i": 3, "a": [1.0, None], "nan64": None}, "text": "NaN"}
    assert io.strict_json_value(math.nan) is None


# --- checkpoints: what a message says -------------------------------------------------------------


def test_a_user_file_that_is_not_weights_is_named_as_such_and_unpickling_never_suggested(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"callback": random.Random}, evil)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    for path in (evil, text):
        with pytest.raises(CheckpointError) as raised:
            load_checkpoint(path, user_option="--m-checkpoint", expected="a state dict of M")
        message = str(raised.value)
        assert message.startswith(f"{path} (given with --m-checkpoint) is not a weights file of the expected kind: ")
        assert message.endswith("--m-checkpoint expects a state dict of M")
        assert "delete" not in message and "weights_only" not in message and "add_safe_globals" not in message
        with pytest.raises(CheckpointError) as raised:
            load_checkpoint(path)  # our own cache file: delete it to recompute
        assert "delete it to recompute" in str(raised.value) and "weights_only" not in str(raised.value)
        with pytest.raises(CheckpointError) as raised:
            read_weights(path, user_option="--weights-path")
        assert "(given with --weights-path)" in str(raised.value) and "weights_only" not in str(raised.value)
    with pytest.raises(CheckpointError, match=r"random\.Random"):
        load_checkpoint(evil)
    torch.save({"epoch": 3}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match=r"state.pt \(given with --k-checkpoint\) is not a weights file.*"
                                              r"not a state dict"):
        read_weights(tmp_path / "state.pt", user_option="--k-checkpoint")
    with pytest.raises(CheckpointError, match=r"missing.pt \(given with --k-checkpoint\) does not exist"):
        load_checkpoint(tmp_path / "missing.pt", user_option="--k-checkpoint")


# --- the lock on shared caches --------------------------------------------------------------------


def test_the_file_lock_makes_a_second_holder_wait_and_says_why(tmp_path, capsys):
    lock = io.lock_path(tmp_path / "cache")
    assert lock == tmp_path / ".cache.lock"
    order = []
    with file_lock(lock):
        def second():
            with file_lock(lock, what="the same cache"):
                order.append("second")

        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.2)
        order.append("first done")
    thread.join(5)
    assert order == ["first done", "second"]
    assert f"waiting for another process that holds {lock} (the same cache)" in capsys.readouterr().err


def test_no_lock_file_outlives_the_work_and_waiters_lock_the_path_anew(tmp_path):
    lock = tmp_path / ".cache.lock"
    inside, holders = threading.Lock(), []

    def work(number):
        with file_lock(lock):
            assert inside.acquire(blocking=False), "two holders at once"
            holders.append(number)
            time.sleep(0.02)
            inside.release()

    threads = [threading.Thread(target=work, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(holders) == [0, 1, 2, 3]
    assert list(tmp_path.iterdir()) == []

import os
import random
import stat

import numpy as np
import pytest
import torch
from torch import nn

from unmask.io import CheckpointError, atomic_directory, atomic_write_json, load_checkpoint, stable_hash
from unmask.runtime import init_distributed, resolve_device, rng_state, set_rng_state
from unmask.train.loop import load_model_weights


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


def test_rng_state_round_trip_through_a_safe_checkpoint(tmp_path):
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    path = tmp_path / "rng.pt"
    torch.save(rng_state(), path)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_checkpoint(path))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_weights_for_another_architecture_are_explained(tmp_path):
    with pytest.raises(CheckpointError, match=r"m\.pt does not fit.*shape mismatch bias: file \(5,\), model \(2,\)"):
        load_model_weights(nn.Linear(3, 2), nn.Linear(3, 5).state_dict(), source=tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="missing keys"):
        load_model_weights(nn.Sequential(nn.Linear(3, 2)), nn.Linear(3, 2).state_dict(), source="m.pt")


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda"}
    with pytest.raises(ValueError, match="expected one of"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_plain_process_is_rank_zero_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    context = init_distributed(torch.device("cpu"))
    assert (context.rank, context.world_size, context.is_main, context.enabled) == (0, 1, True, False)


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

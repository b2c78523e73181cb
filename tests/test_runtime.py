"""Devices, seeding and RNG state, and the torchrun process group."""

import random

import numpy as np
import pytest
import torch

from unmask.io import load_checkpoint
from unmask.runtime import init_distributed, resolve_device, rng_state, set_rng_state


def test_rng_state_round_trip_through_a_safe_checkpoint(tmp_path):
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    path = tmp_path / "rng.pt"
    torch.save(rng_state(), path)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_checkpoint(path))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


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

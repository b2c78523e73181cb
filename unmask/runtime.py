"""Where and how code runs: seeding, device choice, RNG state for exact resume, and the
``torchrun`` process group (every entry point runs unchanged on one process or several)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:<index>", "mps")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks this process's GPU when there is one (``LOCAL_RANK`` under torchrun), else
    the CPU; an explicit device that is not available raises with the alternatives."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r}; expected one of: {', '.join(DEVICE_CHOICES)}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available; use 'cpu' or 'auto'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} was asked for but MPS is not available; use 'cpu' or 'auto'")
    return device


def rng_state() -> dict[str, Any]:
    """Every RNG's state, in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    random.setstate(_as_tuples(state["python"]))
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    # a save/load round trip may turn tuples into lists; random.setstate insists on tuples
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(item) for item in value)
    return value


@dataclass(frozen=True)
class Distributed:
    """This process's place in a ``torchrun`` job (rank 0 of 1 when run plainly)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and shows progress bars."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1), else no-op."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


@dataclass(frozen=True)
class Runtime:
    """Where one run executes: its device, its place in a ``torchrun`` job, DataLoader workers
    and how much it tells (``progress``: this process shows messages and progress bars)."""

    device: torch.device
    distributed: Distributed = Distributed()
    workers: int = 0
    verbosity: int = 1

    @property
    def progress(self) -> bool:
        return self.verbosity > 0 and self.distributed.is_main

    def log(self, message: str) -> None:
        """A stage message on the console (main process, verbosity > 0), above any progress bar."""
        if self.progress:
            from tqdm.auto import tqdm

            tqdm.write(message)

    @classmethod
    def start(cls, device: str, *, workers: int = 0, verbosity: int = 1) -> Runtime:
        """Resolve ``device`` and join the process group when launched by ``torchrun``."""
        resolved = resolve_device(device)
        return cls(resolved, init_distributed(resolved), workers, verbosity)

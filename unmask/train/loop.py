"""One training loop for M and K: epochs, the per-epoch state for exact resume, the kept weights.

A checkpoint folder holds

- ``state.pt``: the training state after the last finished epoch (model, optimiser, scheduler and
  gradient-scaler state, every RNG's state, the history, the kept epoch and the settings the
  training was started with), written atomically by the main process and read with
  ``weights_only=True``;
- ``weights.pt``: the kept epoch's weights, a state dict: the best-scoring epoch when the loop
  scores epochs (M), else the last (K);
- ``history.json``: one record per finished epoch.

A rerun with the same settings resumes after the last finished epoch exactly as if never
stopped (RNGs restored; an epoch may reseed its own at its start); one with other settings is
refused; a finished one returns at once. The loop runs unchanged under ``torchrun``: every
process trains, the main one writes.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from unmask.io import CheckpointError, atomic_torch_save, atomic_write_json, file_lock, load_checkpoint, lock_path
from unmask.runtime import Distributed, rng_state, set_rng_state

STATE_FILE = "state.pt"
WEIGHTS_FILE = "weights.pt"
HISTORY_FILE = "history.json"
STATE_FORMAT = 2


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@dataclass
class FitResult:
    """What ``fit`` did: one record per epoch (``history``), the 1-based ``kept_epoch`` whose
    weights the model now holds, the epochs found finished on disk, the weights file (None
    without a checkpoint folder) and this call's seconds."""

    history: list[dict[str, float]]
    kept_epoch: int
    resumed_epochs: int
    weights_path: Path | None
    seconds: float

    @property
    def kept(self) -> dict[str, float]:
        return self.history[self.kept_epoch - 1]


def fit(
    model: nn.Module,
    *,
    epochs: int,
    run_epoch: Callable[[int], dict[str, float]],
    optimizer: torch.optim.Optimizer,
    settings: Mapping[str, Any],
    distributed: Distributed,
    scheduler: Any | None = None,
    scaler: torch.amp.GradScaler | None = None,
    checkpoint_dir: str | Path | None = None,
    score: str | None = None,
    describe: Callable[[dict[str, float]], str] | None = None,
) -> FitResult:
    """Run ``run_epoch(epoch)`` for epochs 1..``epochs`` (it trains and evaluates one epoch and
    returns its record), checkpointing after each, and leave ``model`` with the kept weights.

    ``score``: the record key whose highest value picks the kept epoch (ties keep the earlier);
    None keeps the last. ``settings``: what the training was started with (a resume with others
    raises ``CheckpointError``). ``describe``: one line per finished epoch, printed when given.

    A checkpoint folder is locked for the whole training (``lock_path``): a second process
    training into it meanwhile waits, then finds the training finished and returns at once.
    """
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    # Not under torchrun: every rank trains into the same folder, so the ranks of one job would
    # lock each other out (rank 0 holding the lock at the per-epoch barrier, rank 1 waiting for
    # it: a deadlock), and a lock on rank 0 alone would let the other ranks resume from a state
    # rank 0 has not read yet.
    locked = folder is not None and not distributed.enabled
    with file_lock(lock_path(folder), what="training into this checkpoint folder") if locked else nullcontext():
        return _fit(model, epochs=epochs, run_epoch=run_epoch, optimizer=optimizer, settings=settings,
                    distributed=distributed, scheduler=scheduler, scaler=scaler, folder=folder, score=score,
                    describe=describe)


def _fit(model: nn.Module, *, epochs: int, run_epoch: Callable[[int], dict[str, float]],
         optimizer: torch.optim.Optimizer, settings: Mapping[str, Any], distributed: Distributed,
         scheduler: Any | None, scaler: torch.amp.GradScaler | None, folder: Path | None, score: str | None,
         describe: Callable[[dict[str, float]], str] | None) -> FitResult:
    started = time.perf_counter()
    settings = dict(settings)
    finished, history, kept_epoch = 0, [], 0
    if folder is not None and (folder / STATE_FILE).is_file():
        finished, history, kept_epoch = _resume(folder / STATE_FILE, model=model, optimizer=optimizer,
                                                scheduler=scheduler, scaler=scaler, settings=settings)
    kept_weights = _state_copy(model) if folder is None else None
    for epoch in range(finished + 1, epochs + 1):
        epoch_started = time.perf_counter()
        record = {"epoch": epoch, **run_epoch(epoch)}
        record["seconds"] = time.perf_counter() - epoch_started
        history.append(record)
        if kept_epoch == 0 or score is None or record[score] > history[kept_epoch - 1][score]:
            kept_epoch = epoch
            if folder is None:
                kept_weights = _state_copy(model)
            elif distributed.is_main:
                atomic_torch_save(unwrap(model).state_dict(), folder / WEIGHTS_FILE)
        if folder is not None and distributed.is_main:
            atomic_torch_save({
                "format": STATE_FORMAT, "epoch": epoch, "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rng_state(), "history": history, "kept_epoch": kept_epoch, "settings": settings,
            }, folder / STATE_FILE)
            atomic_write_json(folder / HISTORY_FILE, {"kept_epoch": kept_epoch, "history": history})
        if describe is not None:
            tqdm.write(describe(record))
        distributed.barrier()

    model = unwrap(model)
    weights_path = folder / WEIGHTS_FILE if folder is not None else None
    if weights_path is not None:
        load_model_weights(model, load_checkpoint(weights_path, map_location=_device_of(model)), source=weights_path)
    elif kept_weights is not None:
        model.load_state_dict(kept_weights)
    return FitResult(history, kept_epoch, finished, weights_path, time.perf_counter() - started)


def _resume(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any | None,
            scaler: torch.amp.GradScaler | None, settings: dict[str, Any]) -> tuple[int, list[dict[str, float]], int]:
    state = load_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a training state of this project (format {STATE_FORMAT}); "
                              "delete its folder to train again")
    differences = [f"{key}: file {state['settings'].get(key)!r}, now {value!r}" for key, value in settings.items()
                   if state["settings"].get(key) != value]
    if differences:
        raise CheckpointError(f"{path} was written by a training run with other settings ({'; '.join(differences)}); "
                              "use another checkpoint folder or delete this one to start over")
    load_model_weights(model, state["model"], source=path)
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return int(state["epoch"]), list(state["history"]), int(state["kept_epoch"])


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return copy.deepcopy(unwrap(model).state_dict())


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def load_model_weights(model: nn.Module, weights: dict[str, torch.Tensor], *, source: str | Path) -> None:
    """``load_state_dict`` that explains a mismatch (another architecture or class count) in one
    line naming the file, instead of torch's wall of missing and unexpected keys."""
    target = unwrap(model).state_dict()
    missing = sorted(set(target) - set(weights))
    unexpected = sorted(set(weights) - set(target))
    shapes = [
        f"{key}: file {tuple(weights[key].shape)}, model {tuple(target[key].shape)}"
        for key in sorted(set(target) & set(weights))
        if weights[key].shape != target[key].shape
    ]
    if missing or unexpected or shapes:
        details = "; ".join(
            part for part in (
                f"{len(missing)} missing keys (e.g. {missing[0]})" if missing else "",
                f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})" if unexpected else "",
                f"shape mismatch {shapes[0]}" if shapes else "",
            ) if part
        )
        raise CheckpointError(
            f"checkpoint {source} does not fit this model ({type(unwrap(model)).__name__}): {details}. "
            "It was probably trained for another architecture or number of classes."
        )
    unwrap(model).load_state_dict(weights)

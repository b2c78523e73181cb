"""One training loop for M and K: epochs, the per-epoch state for exact resume, the kept weights.

A checkpoint folder holds

- ``state.pt``: the training state after the last finished epoch (model, optimiser, scheduler and
  gradient-scaler state, every RNG's state, the history, the kept epoch and the settings the
  training was started with), written atomically by the main process and read with
  ``weights_only=True``;
- ``weights.pt``: the kept epoch's weights (the best-scoring epoch when the loop scores epochs,
  as for M, else the last, as for K) with what they are weights of (``metadata``: the
  architecture, the classes in label order, the image size), checked when they are loaded;
- ``history.json``: one record per finished epoch.

A rerun with the same settings resumes after the last finished epoch exactly as if never
stopped (RNGs restored; an epoch may reseed its own at its start); one with other settings is
refused; a finished one returns at once. The loop runs unchanged under ``torchrun``: every
process trains, the main one writes.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from unmask.io import (
    CheckpointError,
    as_state_dict,
    atomic_torch_save,
    atomic_write_json,
    file_lock,
    load_checkpoint,
    lock_path,
    read_weights,
)
from unmask.runtime import Distributed, Runtime, rng_state, set_rng_state

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
    metadata: Mapping[str, Any] | None = None,
) -> FitResult:
    """Run ``run_epoch(epoch)`` for epochs 1..``epochs`` (it trains and evaluates one epoch and
    returns its record), checkpointing after each, and leave ``model`` with the kept weights.

    ``score``: the record key whose highest value picks the kept epoch (ties keep the earlier);
    None keeps the last. ``settings``: what the training was started with (a resume with others
    raises ``CheckpointError``). ``describe``: one line per finished epoch, printed when given.
    ``metadata``: stored with the kept weights (``save_weights``).

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
                    describe=describe, metadata=metadata)


def _fit(model: nn.Module, *, epochs: int, run_epoch: Callable[[int], dict[str, float]],
         optimizer: torch.optim.Optimizer, settings: Mapping[str, Any], distributed: Distributed,
         scheduler: Any | None, scaler: torch.amp.GradScaler | None, folder: Path | None, score: str | None,
         describe: Callable[[dict[str, float]], str] | None, metadata: Mapping[str, Any] | None) -> FitResult:
    started = time.perf_counter()
    settings = dict(settings)
    finished, history, kept_epoch = 0, [], 0
    if folder is not None and (folder / STATE_FILE).is_file():
        finished, history, kept_epoch = _resume(folder / STATE_FILE, epochs=epochs, model=model, optimizer=optimizer,
                                                scheduler=scheduler, scaler=scaler, settings=settings)
    kept_weights = _state_copy(model) if folder is None else None
    for epoch in range(finished + 1, epochs + 1):
        epoch_started = time.perf_counter()
        record = {"epoch": epoch, **run_epoch(epoch)}
        record["seconds"] = time.perf_counter() - epoch_started
        history.append(record)
        # a torchrun rank that does not validate has no score: it keeps the last epoch, and loads
        # at the end the weights the main process (which validates) kept
        if kept_epoch == 0 or score is None or score not in record or record[score] > history[kept_epoch - 1][score]:
            kept_epoch = epoch
            if folder is None:
                kept_weights = _state_copy(model)
            elif distributed.is_main:
                save_weights(folder / WEIGHTS_FILE, model, metadata)
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
        load_model_weights(model, load_weights(weights_path, map_location=_device_of(model))[0], source=weights_path)
    elif kept_weights is not None:
        model.load_state_dict(kept_weights)
    return FitResult(history, kept_epoch, finished, weights_path, time.perf_counter() - started)


def _resume(path: Path, *, epochs: int, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any | None,
            scaler: torch.amp.GradScaler | None, settings: dict[str, Any]) -> tuple[int, list[dict[str, float]], int]:
    state = load_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a training state of this project (format {STATE_FORMAT}); "
                              "delete its folder to train again")
    # a finished training is reused by a run with any number of processes; only continuing one needs the same
    ignored = {"world_size"} if int(state["epoch"]) >= epochs else set()
    differences = [f"{key}: file {state['settings'].get(key)!r}, now {value!r}" for key, value in settings.items()
                   if state["settings"].get(key) != value and key not in ignored]
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


IDENTITY_FILE = "identity.json"


@dataclass(frozen=True)
class ModelCache:
    """Where trained models live (``directory``: one folder per model, named by a hash of what
    determines it) and how training runs there: the ``runtime`` (device, workers, progress,
    log) and whether a model may start from random weights when its pretrained ones are missing."""

    directory: Path
    runtime: Runtime
    allow_random_init: bool = True

    def folder(self, name: str) -> Path:
        return Path(self.directory) / name


def describe_cache(folder: Path, identity: Mapping[str, Any], *, epochs: int, what: str,
                   log: Callable[[str], None]) -> int:
    """Say whether ``folder`` (a model cache folder named by a hash of ``identity``: options, data
    fingerprint, starting weights) holds a finished training, a resumable one, or none, and
    return its finished epochs; record ``identity`` there in readable form so that two folders
    can be compared by eye."""
    done = len(read_history(folder) or [])
    if done >= epochs:
        log(f"{what}: reusing models/{folder.name} (trained with the same options and data)")
    elif done:
        log(f"{what}: resuming the interrupted training in models/{folder.name} after epoch {done} of {epochs}")
    else:
        log(f"{what}: training (no cached model has these options and data; it goes to models/{folder.name})")
    if not (folder / IDENTITY_FILE).is_file():
        atomic_write_json(folder / IDENTITY_FILE, dict(identity))
    return done


def _history_file(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / HISTORY_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_history(folder: Path) -> list[dict[str, float]] | None:
    """The per-epoch records of the training in ``folder`` (``history.json``; the finished epochs
    only), or None when it holds none."""
    written = _history_file(folder)
    return None if written is None else list(written["history"])


def read_kept_epoch(folder: Path) -> int | None:
    """The 1-based epoch whose weights the training in ``folder`` kept (``history.json``), or None
    when it holds none."""
    written = _history_file(folder)
    return None if written is None else int(written["kept_epoch"])


def save_weights(path: str | Path, model: nn.Module, metadata: Mapping[str, Any] | None = None) -> None:
    """The model's state dict with ``metadata`` (plain values: names, numbers, lists), atomically."""
    atomic_torch_save({"state_dict": unwrap(model).state_dict(), "metadata": dict(metadata or {})}, path)


def load_weights(path: str | Path, *, map_location: Any = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict, metadata) of a weights file: one written by ``save_weights``, or a plain state
    dict (torch or safetensors) whose metadata is None."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_weights(path), None
    loaded = load_checkpoint(path, map_location=map_location)
    metadata = loaded.get("metadata") if isinstance(loaded, dict) else None
    return as_state_dict(loaded, path), metadata if isinstance(metadata, dict) else None


def check_metadata(path: str | Path, metadata: Mapping[str, Any] | None, expected: Mapping[str, Any]) -> list[str]:
    """Raise ``CheckpointError`` naming the file when ``metadata`` contradicts ``expected`` (another
    architecture, other classes or another order of them, another image size); returns the keys
    that could not be checked because the file does not record them."""
    if metadata is None:
        return list(expected)
    wrong = [f"{key} {metadata[key]!r} (this run: {value!r})" for key, value in expected.items()
             if key in metadata and _plain(metadata[key]) != _plain(value)]
    if wrong:
        raise CheckpointError(f"{path} holds weights for another model: {'; '.join(wrong)}")
    return [key for key in expected if key not in metadata]


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


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

"""What every training loop shares: the per-epoch training state for exact resume.

A state file holds the model, optimiser, scheduler and gradient-scaler state, the number of
finished epochs, every RNG's state and the loop's own bookkeeping (``extra``: history, best
epoch, ...). It is written atomically by the main process and read with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from unmask.io import CheckpointError, atomic_torch_save, load_checkpoint
from unmask.runtime import rng_state, set_rng_state

STATE_FORMAT = 1


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_training_state(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    scheduler: Any | None = None,
    scaler: torch.amp.GradScaler | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Save everything needed to continue after ``epoch`` finished epochs exactly as if never stopped."""
    atomic_torch_save(
        {
            "format": STATE_FORMAT,
            "epoch": epoch,
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_state(),
            "extra": extra or {},
        },
        path,
    )


def load_training_state(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None = None,
    scaler: torch.amp.GradScaler | None = None,
    restore_rng: bool = True,
) -> tuple[int, dict[str, Any]]:
    """Restore a state saved by ``save_training_state``; returns (finished epochs, extra)."""
    state = load_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a training state of this project (format {STATE_FORMAT})")
    load_model_weights(model, state["model"], source=path)
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    if restore_rng:
        set_rng_state(state["rng"])
    return int(state["epoch"]), state["extra"]


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

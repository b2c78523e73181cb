"""Per-image results computed in fixed batches: the unit of sharding over ``torchrun``'s processes
and of resuming.

The images of an evaluation are cut into batches of a fixed size, the same whatever the number
of processes; each batch is computed whole by one process, and the computation seeds itself
from the batch's number (not from the process or from what ran before), so a result never
depends on which process computed it, or on how many there were. Processes take the batches not
yet done in turns (round k: process r takes the (k·W + r)-th); after each round the main process
gathers the round's batches and writes each to ``<result>.batches/<number>.npz``, stamped with
the result's fingerprint (``unmask.provenance``), so a killed run resumes per batch. The caller
then has every image's arrays on every process, and the main process writes the whole result.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch.distributed as dist
from tqdm.auto import tqdm

from unmask.io import atomic_path
from unmask.provenance import Fingerprint, producing, reusable
from unmask.runtime import Runtime

Arrays = dict[str, np.ndarray]
"""Named arrays: per image (first axis the images) or, for a batch's extras, anything."""

BatchComputation = Callable[[int, np.ndarray], tuple[Arrays, Arrays]]
"""``compute(batch number, image indices) -> (per-image arrays, the batch's extras)``."""


def batch_folder(result: Path) -> Path:
    return result.with_name(result.name + ".batches")


def in_batches(result: Path, fingerprint: Fingerprint, *, count: int, batch_size: int, compute: BatchComputation,
               runtime: Runtime, what: str) -> tuple[Arrays, list[Arrays]]:
    """Every image's arrays of ``compute`` over images ``0..count-1`` (concatenated in image order)
    and each batch's extras (in batch order), on every process; batches already done (stamped
    with ``fingerprint``) are read back, not recomputed."""
    batches = [np.arange(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]
    folder = batch_folder(result)
    stamps = [{**fingerprint, "batch": {"number": number, "size": batch_size}} for number in range(len(batches))]
    done = [number for number in range(len(batches))
            if runtime.distributed.is_main and reusable(folder / f"{number}.npz", stamps[number], what=what)]
    done = _broadcast(done, runtime)
    to_do = [number for number in range(len(batches)) if number not in done]
    world, rank = runtime.distributed.world_size, runtime.distributed.rank
    rounds = range(0, len(to_do), world)
    for start in tqdm(rounds, desc=what, disable=not runtime.progress or len(rounds) < 2, leave=False,
                      dynamic_ncols=True):
        mine = to_do[start + rank] if start + rank < len(to_do) else None
        computed = (mine, *compute(mine, batches[mine])) if mine is not None else None
        for gathered in _gather(computed, runtime):
            if gathered is not None:
                number, per_image, extras = gathered
                with producing(folder / f"{number}.npz", stamps[number]) as path:
                    _save(path, per_image, extras)
    results = [_load(folder / f"{number}.npz") for number in range(len(batches))] if runtime.distributed.is_main \
        else None
    per_batch = _broadcast(results, runtime)
    per_image = {key: np.concatenate([batch[0][key] for batch in per_batch]) for key in per_batch[0][0]} \
        if per_batch else {}
    return per_image, [extras for _, extras in per_batch]


def resumable_result(result: Path, fingerprint: Fingerprint, *, count: int, batch_size: int,
                     compute: BatchComputation, runtime: Runtime, what: str,
                     finish: Callable[[list[Arrays]], None] | None = None) -> Arrays:
    """The per-image arrays of ``compute`` over ``count`` images: read from ``result`` when it was
    made from ``fingerprint``, else computed ``in_batches`` (sharded, resumable); the main process
    then writes ``result`` (after ``finish(extras of every batch)`` wrote what goes with it) and
    drops the batch files."""
    if reusable(result, fingerprint, what=what, log=runtime.log):
        with np.load(result, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    arrays, extras = in_batches(result, fingerprint, count=count, batch_size=batch_size, compute=compute,
                                runtime=runtime, what=what)
    if runtime.distributed.is_main:
        with producing(result, fingerprint) as path, atomic_path(path) as temporary:
            if finish is not None:
                finish(extras)
            with open(temporary, "wb") as handle:
                np.savez_compressed(handle, **arrays)
        forget_batches(result)
    return arrays


def forget_batches(result: Path) -> None:
    """Remove a result's batch files once the whole result is written."""
    shutil.rmtree(batch_folder(result), ignore_errors=True)


def _save(path: Path, per_image: Arrays, extras: Arrays) -> None:
    arrays = {**{f"image.{key}": value for key, value in per_image.items()},
              **{f"batch.{key}": value for key, value in extras.items()}}
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def _load(path: Path) -> tuple[Arrays, Arrays]:
    with np.load(path, allow_pickle=False) as data:
        per_image = {name.removeprefix("image."): data[name] for name in data.files if name.startswith("image.")}
        extras = {name.removeprefix("batch."): data[name] for name in data.files if name.startswith("batch.")}
    return per_image, extras


def _gather(item: object, runtime: Runtime) -> list[object]:
    """Every process's ``item`` on the main process (in rank order); [] on the others."""
    if not runtime.distributed.enabled:
        return [item]
    gathered: list[object] | None = [None] * runtime.distributed.world_size if runtime.distributed.is_main else None
    dist.gather_object(item, gathered, dst=0)
    return gathered or []


def _broadcast(item: object, runtime: Runtime) -> object:
    """The main process's ``item`` on every process."""
    if not runtime.distributed.enabled:
        return item
    holder = [item if runtime.distributed.is_main else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]

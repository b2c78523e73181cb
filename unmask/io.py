"""Files: atomic writes (a crash never leaves a half-written result), safe checkpoint loading
(``weights_only=True``, never a full unpickle) and stable hashes of configurations."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what was expected."""


def _default_mode(directory: bool) -> int:
    # mkstemp/mkdtemp create owner-only entries; results should get the usual permissions
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, _default_mode(directory=False))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike[str], data: Any, *, indent: int | None = 2) -> None:
    """``indent=None`` writes compact JSON (annotation files with ~100k polygons)."""
    separators = (",", ":") if indent is None else None
    atomic_write_text(path, json.dumps(data, indent=indent, separators=separators, allow_nan=True) + "\n")


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; on success it replaces ``path``.

    Used for generated datasets: an interrupted run leaves nothing at ``path`` that looks done.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(path.parent, os.W_OK):
        raise PermissionError(f"cannot write to {path.parent}: the folder is not writable")
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield temporary
        os.chmod(temporary, _default_mode(directory=True))
        if path.exists():
            shutil.rmtree(path)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    import torch

    with atomic_path(path) as temporary:
        torch.save(obj, temporary)


def load_checkpoint(path: str | os.PathLike[str], *, map_location: Any = "cpu") -> Any:
    """Load a torch checkpoint with ``weights_only=True`` (tensors, containers and numbers only).

    Raises ``CheckpointError`` naming the file when it is missing, truncated or holds objects a
    safe load refuses.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(
            f"cannot load checkpoint {path}: {error}. Expected a file written by this project"
            " (torch.save of tensors, numbers and containers only); delete it to recompute."
        ) from error


def read_weights(path: str | os.PathLike[str], *, map_location: Any = "cpu") -> dict[str, Any]:
    """A state dict (parameter name -> tensor) from a torch file or a ``.safetensors`` file.

    Torch files are read with ``weights_only=True``; a ``{"state_dict": ...}`` wrapper (as some
    training scripts and this project's ``weights.pt`` save) is unwrapped. Raises
    ``CheckpointError`` naming the file otherwise.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"cannot load checkpoint {path}: {error}") from error
    return as_state_dict(load_checkpoint(path, map_location=map_location), path)


def as_state_dict(loaded: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    """The state dict in what ``load_checkpoint`` read from ``path`` (unwrapping ``state_dict``)."""
    import torch

    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise CheckpointError(f"{path} is not a state dict (a mapping of parameter names to tensors)")
    return loaded


def link_or_copy(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> None:
    """Hard-link ``source`` to ``destination`` (no copy on the same file system), else copy it."""
    try:
        os.link(source, destination)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(source, destination)


def stable_hash(data: Any, *, length: int = 8) -> str:
    """Short hex digest of a JSON-serialisable value, independent of dict key order."""
    encoded = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()[:length]


"""Files: atomic writes (a crash never leaves a half-written result; a full disk says so),
strict JSON, safe checkpoint loading (``weights_only=True``, never a full unpickle), locks on
shared caches, stable hashes of configurations, and the base class of expected errors."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class UnmaskError(Exception):
    """An expected failure caused by the input or the machine, not by a bug: bad options, data,
    images, annotation files or checkpoints, missing weights, a full disk. Its message says what
    is wrong, naming the file or option, and what was expected; the command line prints it as one
    ``error: ...`` line without a traceback (``--verbosity 2`` shows it)."""


class CheckpointError(UnmaskError, RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what was expected."""


class DiskFullError(UnmaskError, OSError):
    """The disk filled up while a file was written; ``errno`` is ENOSPC and ``filename`` the file
    that was being written (its previous version, if any, is intact)."""

    def __init__(self, path: str | os.PathLike[str], detail: str = "") -> None:
        message = f"no space left on device while writing {path}"
        if detail:
            message += f" ({detail})"
        message += "; free some space and run again: finished work is kept and the run resumes"
        super().__init__(errno.ENOSPC, message, str(path))

    def __str__(self) -> str:  # OSError's "[Errno 28] ..." prefix says nothing to a user
        return self.strerror


_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_TORCH_SHORT_WRITE = ("unexpected pos", "file write failed")
"""What torch's zip writer says when a write comes up short (a full disk), instead of ENOSPC."""


@contextmanager
def _reporting_full_disk(path: Path) -> Iterator[None]:
    """Turn a full disk inside the block into ``DiskFullError`` naming ``path`` (torch's writer
    reports it as ``RuntimeError: [enforce fail at inline_container.cc:...] . unexpected pos``,
    plain writes as ``[Errno 28]`` without the file)."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as error:
        if error.errno in _DISK_FULL_ERRNOS:
            raise DiskFullError(path) from error
        raise
    except RuntimeError as error:
        if any(text in str(error) for text in _TORCH_SHORT_WRITE):
            raise DiskFullError(path, f"torch: {str(error).strip().splitlines()[0]}") from error
        raise


def _default_mode(directory: bool) -> int:
    # mkstemp/mkdtemp create owner-only entries; results should get the usual permissions
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    temporary: str | None = None
    with _reporting_full_disk(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(handle)
            yield Path(temporary)
            os.chmod(temporary, _default_mode(directory=False))
            os.replace(temporary, path)
        finally:
            if temporary is not None and os.path.exists(temporary):
                os.remove(temporary)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike[str], data: Any, *, indent: int | None = 2) -> None:
    """``data`` as strict JSON (RFC 8259): NaN and infinities become ``null`` (a missing figure,
    such as the baseline's accuracy when it is off), so every JSON parser reads the file;
    NumPy numbers become plain ones. ``indent=None`` writes compact JSON (annotation files with
    ~100k polygons)."""
    separators = (",", ":") if indent is None else None
    try:  # the fast path: most data is plain already, and annotation files are large
        text = json.dumps(data, indent=indent, separators=separators, allow_nan=False)
    except (ValueError, TypeError):
        text = json.dumps(strict_json_value(data), indent=indent, separators=separators, allow_nan=False)
    atomic_write_text(path, text + "\n")


def strict_json_value(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None and NumPy scalars and arrays made
    plain, recursively through dicts, lists and tuples; anything else is left for ``json`` to
    accept or refuse."""
    if isinstance(value, float) or type(value).__module__ == "numpy":
        if hasattr(value, "tolist"):  # NumPy scalars and arrays
            value = value.tolist()
            if isinstance(value, list):
                return strict_json_value(value)
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value
    if isinstance(value, dict):
        return {key: strict_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json_value(item) for item in value]
    return value


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; on success it replaces ``path``.

    Used for generated datasets: an interrupted run leaves nothing at ``path`` that looks done.
    """
    path = Path(path)
    temporary: Path | None = None
    with _reporting_full_disk(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK):
            raise PermissionError(f"cannot write to {path.parent}: the folder is not writable")
        try:
            temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
            yield temporary
            os.chmod(temporary, _default_mode(directory=True))
            if path.exists():
                shutil.rmtree(path)
            os.replace(temporary, path)
        finally:
            if temporary is not None and temporary.exists():
                shutil.rmtree(temporary, ignore_errors=True)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    import torch

    with atomic_path(path) as temporary:
        torch.save(obj, temporary)


PROJECT_FILE = "a file written by this project (torch.save of tensors, numbers and containers only)"
STATE_DICT = "a state dict (parameter names -> tensors) saved with torch.save, or a .safetensors file"
RECOMPUTE = "delete it to recompute"


def load_checkpoint(path: str | os.PathLike[str], *, map_location: Any = "cpu", user_option: str | None = None,
                    expected: str = PROJECT_FILE, remedy: str = RECOMPUTE) -> Any:
    """Load a torch checkpoint with ``weights_only=True`` (tensors, containers and numbers only).

    Raises ``CheckpointError`` naming the file when it is missing, truncated or holds objects a
    safe load refuses. The message never suggests unpickling (torch's ``weights_only=False``
    advice is dropped: a file that needs it can run arbitrary code). ``user_option``: the option
    a user named the file with (``--m-checkpoint``); the message then says the file is not
    ``expected`` (what kind of file the option takes) instead of ``remedy``, the advice for a file
    of our own cache.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        given = f" (given with {user_option})" if user_option else ""
        raise CheckpointError(f"checkpoint {path}{given} does not exist")
    try:
        with warnings.catch_warnings():  # torch's "file an issue" notes on unusual pickles
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise checkpoint_error(path, _load_failure(error), user_option=user_option, expected=expected,
                               remedy=remedy) from None


def checkpoint_error(path: str | os.PathLike[str], problem: str, *, user_option: str | None = None,
                     expected: str = PROJECT_FILE, remedy: str = RECOMPUTE) -> CheckpointError:
    """The error for an unusable checkpoint ``path`` (``problem``: what is wrong with it), worded
    for a user's file (``user_option`` names the option that gave it) or one of our own cache."""
    if user_option:
        return CheckpointError(f"{path} (given with {user_option}) is not a weights file of the expected kind: "
                               f"{problem}. {user_option} expects {expected}")
    return CheckpointError(f"cannot load checkpoint {path}: {problem}. Expected {expected}; {remedy}")


# torch names the refused global in two wordings: "Unsupported global: GLOBAL a.b.C ..." and, for
# the modules it blocks outright (os, posix, sys, nt), "unsupported GLOBAL posix.system whose module ..."
_UNSAFE_GLOBAL = re.compile(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)")


def _load_failure(error: BaseException) -> str:
    """What torch's load error says about the file, without its advice to unpickle it."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    unsafe = _UNSAFE_GLOBAL.search(text)
    if unsafe:
        return (f"it holds Python objects ({unsafe.group(1)}) that only a full unpickle could create, which can "
                "run arbitrary code; this project never does that")
    # torch.save(model) before torch 1.6 (the legacy format) stored each module class, with its source code, as a
    # persistent id, which torch's safe load refuses whatever globals it allows
    if "Only persistent_load of storage" in text:
        return ("it holds whole pickled modules in torch's legacy format (torch.save before torch 1.6), which a safe "
                "load cannot read")
    if "weights_only" in text or "WeightsUnpickler" in text:
        return "it holds content that is not tensors, numbers or containers, so a safe load refuses it"
    first = text.strip().splitlines()[0].split(". ")[0].rstrip(".") if text.strip() else ""
    if isinstance(error, RuntimeError) and first:  # torch's own reader: "failed reading zip archive: ..."
        return first
    return f"it is not a torch file ({type(error).__name__}{': ' + first if first else ''})"


def read_weights(path: str | os.PathLike[str], *, map_location: Any = "cpu", user_option: str | None = None,
                 expected: str = STATE_DICT, remedy: str = RECOMPUTE) -> dict[str, Any]:
    """A state dict (parameter name -> tensor) from a torch file or a ``.safetensors`` file.

    Torch files are read with ``weights_only=True``; a ``{"state_dict": ...}`` wrapper (as some
    training scripts and this project's ``weights.pt`` save) is unwrapped. Raises ``CheckpointError`` naming the file otherwise;
    ``user_option``, ``expected`` and ``remedy`` word it as in ``load_checkpoint``.
    """
    path = Path(path)
    wording = {"user_option": user_option, "expected": expected, "remedy": remedy}
    if path.suffix == ".safetensors":
        if not path.is_file():
            given = f" (given with {user_option})" if user_option else ""
            raise CheckpointError(f"checkpoint {path}{given} does not exist")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError) as error:
            raise checkpoint_error(path, str(error), **wording) from None
    return as_state_dict(load_checkpoint(path, map_location=map_location, **wording), path, **wording)


def as_state_dict(loaded: Any, path: str | os.PathLike[str], *, user_option: str | None = None,
                  expected: str = STATE_DICT, remedy: str = RECOMPUTE) -> dict[str, Any]:
    """The state dict in what ``load_checkpoint`` read from ``path`` (unwrapping ``state_dict``)."""
    import torch

    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise checkpoint_error(path, "it is not a state dict (a mapping of parameter names to tensors)",
                               user_option=user_option, expected=expected, remedy=remedy)
    return loaded


def lock_path(folder: str | os.PathLike[str]) -> Path:
    """The lock file of a shared cache folder: beside it (the folder itself may not exist yet, or
    be replaced in one rename), hidden."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


@contextmanager
def file_lock(path: str | os.PathLike[str], *, what: str = "") -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` for the block; another process holding it
    makes this wait, saying so on stderr. Two identical runs started at once then do the work
    once: the second finds the first's result when it gets the lock.

    ``fcntl.flock``: the lock goes when its holder ends, even killed, so a crash never leaves a
    stale lock. The holder deletes the file before letting go, so no lock file outlives the
    work; a waiter that then holds the deleted file's lock sees that the path no longer names it
    and locks the path anew. Locks are per open file, so two threads of one process exclude each
    other too. Where ``fcntl`` is missing (Windows) this does not lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    said = False
    while True:
        handle = open(path, "a+b")  # held open until the block ends: closing it releases the lock
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not said:
                print(f"waiting for another process that holds {path}{f' ({what})' if what else ''}; its result "
                      "will be reused", file=sys.stderr, flush=True)
                said = True
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break  # the lock of the file the path names: ours
        except FileNotFoundError:
            pass
        handle.close()  # the holder deleted the file meanwhile: lock the path anew
    try:
        yield
    finally:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        handle.close()  # closing releases the lock, after the file is gone


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


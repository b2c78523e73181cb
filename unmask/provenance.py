"""What made a saved result, and the one rule for reusing it.

Every saved intermediate result carries a *fingerprint*: a JSON-ready mapping from each input
that determines it — the contents of the data it read, the weights of the models it ran, the
full options of the computation, the seed — to a value or a digest. A result is reused only
when its stored fingerprint equals the one the current run computes for it; otherwise it is
recomputed and the console says which inputs changed. The fingerprint lives in a stamp file
beside the result (``<result>.stamp.json``), written after the result and removed before it is
rewritten, so an interrupted write never leaves a stamped half-result.

Digests are cheap: data files by name, size and modification time (no file is read), tensors by
their bytes, small files (annotations) by their bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

from unmask.io import atomic_write_json, stable_hash

T = TypeVar("T")
Fingerprint = Mapping[str, Any]
STAMP_SUFFIX = ".stamp.json"


def digest(value: Any) -> str:
    """A 16-hex-digit digest of a JSON-ready value (dict key order does not matter)."""
    return stable_hash(value, length=16)


def files_digest(paths: Iterable[str | os.PathLike[str]], root: str | os.PathLike[str]) -> str:
    """Digest of the files' names (relative to ``root``), sizes and modification times: it
    changes when any file is added, removed, replaced or rewritten, and reads no file."""
    root = Path(root)
    entries = []
    for path in sorted(Path(p) for p in paths):
        status = path.stat()
        entries.append((path.relative_to(root).as_posix(), status.st_size, status.st_mtime_ns))
    return digest(entries)


def file_digest(path: str | os.PathLike[str] | None) -> str | None:
    """Digest of one file's name, size and modification time (None for no file or a missing one)."""
    if path is None or not Path(path).is_file():
        return None
    status = Path(path).stat()
    return digest([Path(path).name, status.st_size, status.st_mtime_ns])


def bytes_digest(path: str | os.PathLike[str]) -> str:
    """Digest of a file's contents (for small files whose every byte matters: annotations)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """Digest of named tensors (a state dict): names, dtypes, shapes and values."""
    hasher = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous().view(-1)
        hasher.update(f"{name}:{tensor.dtype}:{tuple(tensors[name].shape)}".encode())
        hasher.update(tensor.view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()[:16]


def stamp_path(result: str | os.PathLike[str]) -> Path:
    result = Path(result)
    return result.with_name(result.name + STAMP_SUFFIX)


def read_stamp(result: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The fingerprint a result was made from, or None when it has no (readable) stamp."""
    try:
        return json.loads(stamp_path(result).read_text(encoding="utf-8"))["fingerprint"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 16 and all(c in "0123456789abcdef" for c in value)


def changes(old: Fingerprint, new: Fingerprint) -> list[str]:
    """What differs between two fingerprints, one readable line per input (``attack.steps: 2 ->
    5``; a digest that differs reads ``data changed``)."""
    old, new = _plain(old), _plain(new)
    # a whole input new, gone, or recorded in another form (a digest then, a mapping now): one line each
    whole = {key: f"{key} is new" for key in set(new) - set(old)}
    whole.update({key: f"{key} is gone" for key in set(old) - set(new)})
    whole.update({key: f"{key} is recorded in another form (an earlier version of unmask made it)"
                  for key in set(old) & set(new) if isinstance(old[key], Mapping) != isinstance(new[key], Mapping)})
    before = _flatten({key: value for key, value in old.items() if key not in whole})
    after = _flatten({key: value for key, value in new.items() if key not in whole})
    lines = [whole[key] for key in sorted(whole)]
    for key in sorted(set(before) | set(after)):
        if key not in before:
            lines.append(f"{key} is new")
        elif key not in after:
            lines.append(f"{key} is gone")
        elif before[key] != after[key]:
            digests = _is_digest(before[key]) and _is_digest(after[key])
            lines.append(f"{key} changed" if digests else f"{key}: {before[key]!r} -> {after[key]!r}")
    return lines


def _plain(fingerprint: Fingerprint) -> Any:
    """The fingerprint as it reads back from JSON (tuples become lists, paths strings)."""
    return json.loads(json.dumps(fingerprint, default=str))


def reusable(result: str | os.PathLike[str], fingerprint: Fingerprint, *, what: str,
             log: Callable[[str], None] | None = None) -> bool:
    """Whether ``result`` exists and was made from ``fingerprint``. When a result is there but
    was made from something else (or has no stamp), ``log`` says why it will be recomputed."""
    result = Path(result)
    if not result.exists():
        return False
    stored = read_stamp(result)
    current = _plain(fingerprint)
    if stored == current:
        return True
    if log is not None:
        reason = "it has no record of what made it" if stored is None else "; ".join(changes(stored, current))
        log(f"{what}: recomputing the saved result {result.name} ({reason})")
    return False


@contextmanager
def producing(result: str | os.PathLike[str], fingerprint: Fingerprint) -> Iterator[Path]:
    """Write ``result`` inside the block (atomically, as every writer here does); it is stamped
    with ``fingerprint`` only when the block finishes. The old stamp goes first, so a crash
    mid-way never leaves an old stamp on a new result."""
    result = Path(result)
    stamp_path(result).unlink(missing_ok=True)
    yield result
    atomic_write_json(stamp_path(result), {"fingerprint": _plain(fingerprint)})


def cached(result: str | os.PathLike[str], fingerprint: Fingerprint, compute: Callable[[], T], *,
           save: Callable[[T, Path], None], load: Callable[[Path], T], what: str,
           log: Callable[[str], None] | None = None) -> T:
    """``load(result)`` when it was made from ``fingerprint``; else ``compute()``, saved and stamped."""
    if reusable(result, fingerprint, what=what, log=log):
        return load(Path(result))
    value = compute()
    with producing(result, fingerprint) as path:
        save(value, path)
    return value

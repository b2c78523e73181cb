"""What a run, or a benchmark, was made with: the code's commit, the date, the command line, the
library versions and the machine.

``run_environment(device)`` is recorded as ``metrics.json``'s ``provenance`` (and in every
benchmark's JSON output), so that each published figure names the code and the machine that
made it; ``describe_environment`` is the one-line form the documentation's captions use. This
is the provenance of a *run*; ``unmask.provenance`` fingerprints the inputs of each saved
result (data, weights, options) to decide whether it may be reused.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

ENVIRONMENT_FORMAT = 1
"""The layout of the mapping ``run_environment`` returns."""

LIBRARIES: tuple[str, ...] = ("torch", "torchvision", "foolbox", "numpy")
"""The installed distributions whose versions change figures (Python's is recorded beside them)."""

CPU_FEATURES: tuple[str, ...] = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
"""CPU flags that change speed and, through the kernels torch picks, float rounding (bfloat16 needs
AVX512-BF16 or AMX to be fast)."""

REQUIRED: tuple[str, ...] = ("code", "date", "command", "libraries", "machine")
"""The keys every recorded environment has (what ``python main.py publish`` checks)."""

REPOSITORY = Path(__file__).resolve().parents[1]
"""Where the package's source lives: its git commit is the code's."""


def _git(*arguments: str, repository: Path) -> str | None:
    """The output of a git command in ``repository`` (None: no git, or not a repository)."""
    try:
        result = subprocess.run(["git", "-C", str(repository), *arguments], capture_output=True, text=True,
                                timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def code_version(repository: Path = REPOSITORY) -> dict[str, Any]:
    """The commit of ``repository`` and whether tracked files differ from it (``dirty``); both None
    outside a git checkout (an installed copy). Untracked files (data, results) do not count."""
    from unmask import __version__

    commit = _git("rev-parse", "HEAD", repository=repository)
    status = _git("status", "--porcelain", "--untracked-files=no", repository=repository) if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status), "version": __version__}


def _cpu_info() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _cpu_model(info: Mapping[str, str]) -> str:
    if info.get("model name"):
        return info["model name"]
    if sys.platform == "darwin":
        name = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                              check=False).stdout.strip()
        if name:
            return name
    return platform.processor() or platform.machine() or "unknown"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS says, else every CPU)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine(device: torch.device | str) -> dict[str, Any]:
    """The machine a run computes on: the device, the CPU's model, torch's instruction-set level
    (``torch.backends.cpu.get_cpu_capability()``: the kernels it picks), the CPU flags of
    ``CPU_FEATURES`` it has, how many CPUs there are and this process may use, torch's threads,
    the GPU's name and memory on a CUDA device, and the number of processes (``torchrun``)."""
    device = torch.device(device)
    info = _cpu_info()
    flags = set(info.get("flags", "").split())
    record: dict[str, Any] = {
        "device": str(device),
        "cpu": _cpu_model(info),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_features": [flag for flag in CPU_FEATURES if flag in flags] if flags else None,
        "cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "threads": torch.get_num_threads(),
        "processes": int(os.environ.get("WORLD_SIZE", 1)),
        "platform": platform.platform(),
        "gpu": None,
    }
    if device.type == "cuda" and torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(device)
        record["gpu"] = {"name": properties.name, "memory_gib": round(properties.total_memory / 2**30, 1),
                         "count": torch.cuda.device_count(), "cuda": torch.version.cuda}
    return record


def load_average() -> list[float] | None:
    """The machine's load averages over 1, 5 and 15 minutes (None where the OS has none): other
    work on a shared machine slows every timing, and a run's seconds mean little without it."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def library_versions() -> dict[str, str | None]:
    """Python's version and each of ``LIBRARIES``' (None: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed: ``python main.py --option value`` (``argv``: sys.argv)."""
    argv = list(sys.argv if argv is None else argv)
    return shlex.join(["python", *argv])


def run_environment(device: torch.device | str, *, argv: Sequence[str] | None = None,
                    repository: Path = REPOSITORY) -> dict[str, Any]:
    """Everything of ``ENVIRONMENT_FORMAT`` about the code, command and machine of a run on
    ``device``, now (``date``: UTC, ISO 8601, to the second)."""
    return {
        "format": ENVIRONMENT_FORMAT,
        "code": code_version(repository),
        "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "command": command_line(argv),
        "libraries": library_versions(),
        "machine": machine(device),
    }


def missing_keys(environment: Any) -> list[str]:
    """The ``REQUIRED`` keys ``environment`` lacks (every one when it is not a mapping)."""
    if not isinstance(environment, Mapping):
        return list(REQUIRED)
    return [key for key in REQUIRED if environment.get(key) in (None, "", {})]


def describe_machine(environment: Mapping[str, Any]) -> str:
    """The machine in a few words: ``Intel Xeon (AVX512), 2 CPUs, 2 torch threads`` or the GPU."""
    record = environment.get("machine") or {}
    gpu = record.get("gpu")
    cpus = record.get("usable_cpus") or record.get("cpus")
    cpu = f"{record.get('cpu', 'unknown CPU')} ({record.get('cpu_capability', '?')}), {cpus} CPUs, " \
          f"{record.get('threads', '?')} torch threads"
    processes = record.get("processes") or 1
    cpu += f", {processes} processes" if processes > 1 else ""
    load = (environment.get("load_average") or {}).get("end")
    if load:  # over the last 15 minutes, when the figures were written
        cpu += f", load average {load[-1]:.1f} (15 min, at the end)"
    return f"{gpu['name']} GPU ({gpu.get('count', 1)} on the machine); {cpu}" if gpu else f"CPU only: {cpu}"


def describe_code(environment: Mapping[str, Any]) -> str:
    """``commit 1a2b3c4`` (``with uncommitted changes`` when the tree was dirty), or the version."""
    code = environment.get("code") or {}
    if not code.get("commit"):
        return f"unmask {code.get('version', '?')} (no git commit recorded)"
    return f"commit {code['commit'][:7]}" + (" with uncommitted changes" if code.get("dirty") else "")


def describe_environment(environment: Mapping[str, Any]) -> str:
    """One line naming the code, the date, the machine and torch: what a caption says of a run."""
    date = str(environment.get("date", "?"))[:10]
    torch_version = (environment.get("libraries") or {}).get("torch", "?")
    return f"{describe_code(environment)}, {date}; {describe_machine(environment)}; torch {torch_version}"

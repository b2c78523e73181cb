"""The README's "Use it from Python" examples run as written, on a tiny run: the paths they name
(the default run's folder, the imported M) are replaced by the test's, and nothing else is."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tv

from unmask.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"
DEFAULT_RUN = "results/cs5-2-compact-7885dc82"
IMPORTED_M = "results/imported/m-original.pt"
AUTOATTACK_STANDARD = 'version="standard")'
AUTOATTACK_CHEAP = 'version="custom", attacks=["apgd-ce"]); adversary.apgd.n_iter = 2'
"""The AutoAttack example's standard version takes hours on a CPU; the test runs one short attack."""


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    return text[start:text.index("\n## ", start + 1)]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def replaced(code: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        code = code.replace(old, new)
    return code


def original_m(path: Path, classes: int) -> Path:
    """A stand-in for the original's released M: a torchvision model saved whole."""
    torch.manual_seed(0)
    network = tv.resnet18(weights=None)
    network.fc = nn.Linear(network.fc.in_features, classes)
    torch.save(network.eval(), path)
    return path


def test_the_use_it_from_python_examples_run(tiny_run, tmp_path, monkeypatch, capsys):
    text = section("Use it from Python")
    python, bash = blocks(text, "python"), blocks(text, "bash")
    assert len(python) == 4 and len(bash) == 1
    monkeypatch.chdir(tmp_path)  # whatever an example writes stays in the test's folder
    imported = tmp_path / "m-original.pt"

    # the import-m command, for the tiny run's class set and a small torchvision model
    command = shlex.split(bash[0].replace("\\\n", " "))
    assert command[:3] == ["python", "main.py", "import-m"]
    swaps = {"unmask_model.pth": str(original_m(tmp_path / "original.pth", 3)), "resnet50": "resnet18",
             "cs5-2": "cs3-1", IMPORTED_M: str(imported)}
    assert set(swaps) <= set(command)
    assert main([swaps.get(word, word) for word in command[2:]] + ["--verbosity", "0"]) == 0
    assert imported.is_file()

    replacements = {DEFAULT_RUN: str(tiny_run), IMPORTED_M: str(imported), AUTOATTACK_STANDARD: AUTOATTACK_CHEAP}
    namespace: dict[str, object] = {}
    for number, code in enumerate(python):
        if "pyautoattack" in code and importlib.util.find_spec("pyautoattack") is None:
            continue  # the optional extra is not installed
        exec(compile(replaced(code, replacements), f"README example {number + 1}", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "evades UnMask (M wrong, not flagged):" in printed and "UnMask's decision right:" in printed
    assert "M says " in printed and "K found" in printed
    for line in ("import torchvision", "from unmask import FinishedRun, UnMask"):
        assert line in python[0]


def test_every_example_path_the_test_replaces_is_in_the_readme():
    text = section("Use it from Python")
    python = blocks(text, "python")
    assert all(DEFAULT_RUN in code for code in python if "pyautoattack" not in code)
    assert IMPORTED_M in python[3] and AUTOATTACK_STANDARD in python[2]
    assert "--model resnet50 --class-set cs5-2" in blocks(text, "bash")[0]

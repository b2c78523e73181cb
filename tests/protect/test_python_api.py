"""The Python examples of docs/python-api.md run as written after a run, as a new user would run
them: from a folder whose ``results/`` holds a finished (tiny) run and its models, with the code
blocks executed verbatim. Only what needs an optional extra or the authors' released file is
swapped: the AutoAttack example runs a short custom version, and the original's released M is a
torchvision model saved whole, imported by the documented command for the tiny run's class set."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision import models as tv

from unmask.cli import main

PAGE = Path(__file__).resolve().parents[2] / "docs" / "python-api.md"
IMPORTED_M = "results/imported/m-original.pt"
AUTOATTACK_STANDARD = 'version="standard")'
AUTOATTACK_CHEAP = 'version="custom", attacks=["apgd-ce"]); adversary.apgd.n_iter = 2'
"""The AutoAttack example's standard version takes hours on a CPU; the test runs one short attack."""


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)


def original_m(path: Path, classes: int) -> Path:
    """A stand-in for the original's released M: a torchvision model saved whole."""
    torch.manual_seed(0)
    network = tv.resnet18(weights=None)
    network.fc = nn.Linear(network.fc.in_features, classes)
    torch.save(network.eval(), path)
    return path


@pytest.fixture
def after_python_main_py(tiny_run, tmp_path, monkeypatch):
    """``tmp_path`` as a checkout after ``python main.py``: ``results/<run>/`` and ``results/models/``
    (the tiny run's, copied), the current folder."""
    results = tmp_path / "results"
    shutil.copytree(tiny_run, results / tiny_run.name)
    shutil.copytree(tiny_run.parent / "models", results / "models")
    monkeypatch.chdir(tmp_path)
    return results / tiny_run.name


def test_the_python_api_examples_run_as_written(after_python_main_py, tmp_path, capsys):
    python, bash = blocks("python"), blocks("bash")
    assert len(python) == 4 and len(bash) == 1

    # the import-m command, for the tiny run's class set: the released file and its architecture swapped
    command = shlex.split(bash[0].replace("\\\n", " "))
    assert command[:3] == ["python", "main.py", "import-m"]
    swaps = {"unmask_model.pth": str(original_m(tmp_path / "original.pth", 3)), "resnet50": "resnet18",
             "cs5-2": "cs3-1"}
    assert set(swaps) <= set(command)
    assert main([swaps.get(word, word) for word in command[2:]] + ["--verbosity", "0"]) == 0
    assert (tmp_path / IMPORTED_M).is_file()

    namespace: dict[str, object] = {}
    for number, code in enumerate(python):
        if "pyautoattack" in code:
            if importlib.util.find_spec("pyautoattack") is None:
                continue  # the optional extra is not installed
            code = code.replace(AUTOATTACK_STANDARD, AUTOATTACK_CHEAP)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the untrained M's threshold may flag nothing: it says so
            exec(compile(code, f"docs/python-api.md example {number + 1}", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "evades UnMask (M wrong, not flagged):" in printed and "UnMask's decision right:" in printed
    assert "M says " in printed and "K found" in printed
    assert namespace["run"].folder.resolve() == after_python_main_py.resolve()  # FinishedRun.latest() found it


def test_the_examples_open_the_run_without_naming_a_hashed_folder():
    python = blocks("python")
    opening = [code for code in python if "FinishedRun" in code]
    assert len(opening) == 3 and all("FinishedRun.latest()" in code for code in opening)
    assert not re.search(r"results/[a-z0-9-]+-[0-9a-f]{8}", PAGE.read_text(encoding="utf-8"))
    assert IMPORTED_M in python[3] and AUTOATTACK_STANDARD in python[2]
    assert "--model resnet50 --class-set cs5-2" in blocks("bash")[0]
    for line in ("import torchvision", "from unmask import FinishedRun, UnMask"):
        assert line in python[0]

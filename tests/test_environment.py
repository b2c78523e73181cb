"""A run's provenance: the code's commit, the date, the command, the libraries and the machine."""

from __future__ import annotations

import datetime
import subprocess

import pytest
import torch

from unmask.environment import (
    REQUIRED,
    code_version,
    command_line,
    describe_environment,
    describe_machine,
    load_average,
    missing_keys,
    run_environment,
)


def _repository(path, *, commit: bool = True):
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    (path / "tracked.txt").write_text("one\n")
    if commit:
        subprocess.run(["git", "-C", str(path), "add", "tracked.txt"], check=True)
        subprocess.run(["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x"],
                       check=True)
    return path


def test_the_commit_and_a_dirty_tree_are_recorded(tmp_path):
    repository = _repository(tmp_path)
    head = subprocess.run(["git", "-C", str(repository), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert code_version(repository)["commit"] == head and code_version(repository)["dirty"] is False
    (repository / "untracked.txt").write_text("results are not code\n")
    assert code_version(repository)["dirty"] is False
    (repository / "tracked.txt").write_text("two\n")
    assert code_version(repository)["dirty"] is True


def test_outside_a_checkout_no_commit_is_claimed(tmp_path):
    version = code_version(tmp_path)
    assert version["commit"] is None and version["dirty"] is None and version["version"]


def test_the_environment_names_the_machine_libraries_and_command():
    environment = run_environment("cpu", argv=["main.py", "--run-name", "two words"])
    assert missing_keys(environment) == []
    assert environment["command"] == "python main.py --run-name 'two words'"
    assert torch.__version__.startswith(environment["libraries"]["torch"].split("+")[0])
    assert environment["libraries"]["foolbox"].startswith("3.3")
    machine = environment["machine"]
    assert machine["device"] == "cpu" and machine["threads"] == torch.get_num_threads() and machine["gpu"] is None
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and machine["cpu"]
    date = datetime.datetime.fromisoformat(environment["date"])
    assert abs((datetime.datetime.now(datetime.timezone.utc) - date).total_seconds()) < 60


@pytest.mark.parametrize("broken", [None, [], {}, {"code": {"commit": "x"}}])
def test_an_environment_without_the_required_keys_is_named(broken):
    assert missing_keys(broken) and set(missing_keys(broken)) <= set(REQUIRED)


def test_the_one_line_description_names_commit_date_machine_and_torch():
    environment = {"code": {"commit": "0123456789abcdef", "dirty": True, "version": "0.1.0"},
                   "date": "2025-01-02T03:04:05+00:00", "command": "python main.py",
                   "libraries": {"torch": "2.14.1"},
                   "machine": {"device": "cpu", "cpu": "Some CPU", "cpu_capability": "AVX2", "cpus": 8,
                               "usable_cpus": 2, "threads": 2, "processes": 1, "gpu": None}}
    line = describe_environment(environment)
    assert line == ("commit 0123456 with uncommitted changes, 2025-01-02; CPU only: Some CPU (AVX2), 2 CPUs, "
                    "2 torch threads; torch 2.14.1")
    gpu = {**environment, "machine": {**environment["machine"], "device": "cuda:0",
                                      "gpu": {"name": "NVIDIA H100", "count": 1}}}
    assert "NVIDIA H100 GPU" in describe_environment(gpu)
    assert command_line(["main.py"]) == "python main.py"


def test_a_run_s_load_average_is_named_with_its_machine():
    environment = {"code": {"commit": "0123456789abcdef"}, "date": "2025-01-02T03:04:05+00:00",
                   "machine": {"cpu": "Some CPU", "cpu_capability": "AVX2", "usable_cpus": 2, "threads": 2},
                   "load_average": {"start": [0.1, 0.2, 0.3], "end": [6.0, 5.5, 4.25]}}
    assert describe_machine(environment).endswith("load average 4.2 (15 min, at the end)")
    assert "load" not in describe_machine({**environment, "load_average": None})
    assert load_average() is None or len(load_average()) == 3

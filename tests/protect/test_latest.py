"""``FinishedRun.latest()``: the run that finished last, opened without naming its hashed folder."""

from __future__ import annotations

import os

import pytest

from unmask.protect import FinishedRun, RunFolderError


def _finished(folder, mtime):
    folder.mkdir(parents=True)
    for name in ("config.json", "metrics.json"):
        (folder / name).write_text("{}")
    os.utime(folder / "metrics.json", ns=(mtime, mtime))
    return folder


def test_the_newest_metrics_json_names_the_latest_run(tmp_path, monkeypatch):
    opened = []
    monkeypatch.setattr(FinishedRun, "open", classmethod(lambda cls, folder, **options: opened.append(folder)))
    _finished(tmp_path / "cs5-2-compact-aaaa", 2_000_000_000)
    _finished(tmp_path / "cs5-2-compact-bbbb", 3_000_000_000)
    _finished(tmp_path / "published" / "default", 4_000_000_000)  # a publication is not a run of this folder
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / "metrics.json").write_text("{}")  # no config.json: not a run
    FinishedRun.latest(tmp_path)
    assert opened == [tmp_path / "cs5-2-compact-bbbb"]


def test_no_finished_run_says_how_to_make_one(tmp_path):
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.json").write_text("{}")
    with pytest.raises(RunFolderError, match=r"no finished run in .*: run python main.py first"):
        FinishedRun.latest(tmp_path)

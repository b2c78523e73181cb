"""``python main.py publish``: a finished run's small files (or a benchmark record) into
``results/published/NAME/``, refused without provenance; and the benchmarks' JSON records."""

from __future__ import annotations

import argparse
import json

import pytest

from unmask.benchmark import BenchmarkRecord, add_json_option
from unmask.cli import main
from unmask.environment import run_environment
from unmask.publish import PUBLISHED_DIR, PublishError, publish, read_publications


def _run_folder(path, *, provenance=True):
    path.mkdir(parents=True)
    metrics = {"format": 6, "clean": {"accuracy_m": 0.9}}
    if provenance:
        metrics["provenance"] = {"run": path.name, **run_environment("cpu")}
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "tables.md").write_text("| a |\n|---|\n| 1 |\n")
    (path / "accuracy.png").write_bytes(b"\x89PNG")  # figures, predictions and weights stay behind
    (path / "clean.npz").write_bytes(b"predictions")
    return path


def test_a_run_is_published_as_its_metrics_and_tables_only(tmp_path):
    run = _run_folder(tmp_path / "results" / "cs5-2-compact-0123abcd")
    publication = publish(run, "default", published=tmp_path / "published")
    assert sorted(path.name for path in publication.folder.iterdir()) == ["metrics.json", "tables.md"]
    assert (publication.folder / "metrics.json").read_bytes() == (run / "metrics.json").read_bytes()
    assert publication.kind == "run" and publication.provenance["run"] == run.name
    assert list(read_publications(tmp_path / "published")) == ["default"]


def test_a_run_without_provenance_is_refused_with_a_reason(tmp_path):
    old = _run_folder(tmp_path / "old", provenance=False)
    with pytest.raises(PublishError, match=r"old/metrics.json records no provenance \(it lacks code, date, command, "
                                           r"libraries, machine\)"):
        publish(old, "default", published=tmp_path / "published")
    assert not (tmp_path / "published" / "default").exists()


@pytest.mark.parametrize("problem, message", [
    ("no metrics", "metrics.json does not exist"),
    ("no tables", "tables.md does not exist"),
    ("not json", "is not valid JSON"),
])
def test_an_unfinished_or_broken_run_is_refused(tmp_path, problem, message):
    run = _run_folder(tmp_path / "run")
    if problem == "no metrics":
        (run / "metrics.json").unlink()
    elif problem == "no tables":
        (run / "tables.md").unlink()
    else:
        (run / "metrics.json").write_text("{")
    with pytest.raises(PublishError, match=message):
        publish(run, "default", published=tmp_path / "published")


@pytest.mark.parametrize("name", ["", "Default", "../up", "a b", "-x"])
def test_a_name_that_cannot_name_a_folder_and_a_marker_is_refused(tmp_path, name):
    with pytest.raises(PublishError, match="cannot name a publication"):
        publish(_run_folder(tmp_path / "run"), name, published=tmp_path / "published")


def test_a_benchmark_record_is_written_by_its_helper_and_published(tmp_path):
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=4)
    add_json_option(parser)
    args = parser.parse_args(["--json", str(tmp_path / "bench.json")])
    record = BenchmarkRecord("bench_test", args)
    record.table("speed", [{"model": "compact", "images/s": 117.25}, {"model": "resnet50", "images/s": float("nan")}],
                 description="images per second")
    record.value("ratio", 1.5)
    with pytest.raises(ValueError, match="every row needs the columns"):
        record.table("bad", [{"a": 1}, {"b": 2}], description="")
    assert record.write(args.json) == tmp_path / "bench.json"
    written = json.loads((tmp_path / "bench.json").read_text())
    assert written["kind"] == "benchmark" and written["options"] == {"images": 4}
    assert written["tables"]["speed"]["rows"][1]["images/s"] is None  # strict JSON: not measured
    assert written["values"] == {"ratio": 1.5} and written["provenance"]["machine"]["device"] == "cpu"
    publication = publish(tmp_path / "bench.json", "bench-test", published=tmp_path / "published")
    assert publication.kind == "benchmark" and [p.name for p in publication.folder.iterdir()] == ["benchmark.json"]
    assert record.write(None) is None


def test_a_json_file_that_is_not_a_benchmark_record_is_refused(tmp_path):
    (tmp_path / "other.json").write_text(json.dumps({"kind": "something"}))
    with pytest.raises(PublishError, match="is not a benchmark record"):
        publish(tmp_path / "other.json", "x", published=tmp_path / "published")


def test_the_publish_command_writes_under_results_published(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = _run_folder(tmp_path / "results" / "cs5-2-compact-0123abcd")
    assert main(["publish", str(run), "--name", "default"]) == 0
    assert (tmp_path / PUBLISHED_DIR / "default" / "tables.md").is_file()
    assert "python main.py docs" in capsys.readouterr().out
    assert main(["publish", str(_run_folder(tmp_path / "old", provenance=False)), "--name", "old"]) == 1
    assert "records no provenance" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --name is required
        main(["publish", str(run)])

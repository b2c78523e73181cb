"""``python main.py active-tests`` on a tiny run: the summary and its table, results kept apart
from the run's own (nothing of the evaluation is rewritten or reused), and a rerun that
recomputes nothing."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import unmask.experiment.active_tests as active
from unmask import cli
from unmask.attacks.adaptive.active.table import active_setups_table, active_tests_table
from unmask.config import resolve_config
from unmask.experiment import build_plan, run_experiment
from unmask.provenance import read_stamp
from unmask.train.loop import save_weights
from unmask.train.part_extractor import PartExtractorSpec, PartExtractorTraining

TINY = {
    "image_size": 48, "synthetic_images_per_class": 10, "synthetic_k_images": 24, "synthetic_workers": 1,
    "epochs": 2, "adv_training": False, "attacks": ("pgd_linf:16",), "attack_steps": 2, "class_set": "cs3-1",
    "verbosity": 0, "adaptive_attacks": ("none",), "k_score_threshold": 0.5, "k_model": "lean", "adaptive_max_images": 3,
    "adaptive_steps": 2, "adaptive_batch_size": 2,
    "active_attacks": ("joint_linf:16", "reclassify_linf:16"), "active_inner_points": 12, "active_k_inner_points": 3,
    "active_random_samples": 2, "active_plant_steps": 2, "active_plant_targets": 1,
}


@pytest.fixture(scope="module")
def tested_run(tmp_path_factory):
    """A finished tiny run (K: a randomly initialised lean K whose box classifier is sharpened, so
    that it reports a handful of parts), the files it wrote, then its attack unit tests."""
    root = tmp_path_factory.mktemp("active")
    spec = PartExtractorSpec("lean", TINY["image_size"], PartExtractorTraining())
    torch.manual_seed(0)
    k = spec.build()
    with torch.no_grad():
        k.roi_heads.box_predictor.cls_score.weight.mul_(30.0)
    save_weights(root / "k.pt", k, spec.metadata)
    plan = build_plan(resolve_config(overrides={**TINY, "data_dir": str(root / "data"),
                                                "output_dir": str(root / "results"), "k_checkpoint": str(root / "k.pt")}))
    folder = run_experiment(plan)
    before = {path: path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}
    summary_file = active.run_active_tests(plan)
    return plan, folder, before, summary_file


def test_the_summary_names_every_test_of_every_attack_and_its_table(tested_run):
    plan, folder, _, summary_file = tested_run
    summary = json.loads(summary_file.read_text())
    assert summary_file == folder / "active" / "active_tests.json"
    n = summary["n_images"]  # the white-box sample: of the 3 asked for, those the tiny M gets right
    assert 1 <= n <= 3 and summary["threat_model"] == "white-box"
    assert [(row["test"], row["attack"], row["epsilon"]) for row in summary["rows"]] == [
        ("evasion", "joint_linf", 16), ("inverted", "joint_linf", 16), ("reclassification", "reclassify_linf", 16)]
    for row in summary["rows"]:
        assert row["fpr_target"] == 0.1 and row["criterion"] in ("evaded", "inverted", "reclassification")
        assert row["set_up"] + row["no_planted_solution"] + row["setup_failed"] <= row["n_images"] == n
        assert row["n_tested"] <= row["set_up"] and row["passed"]["n"] == row["random"]["n"] == row["n_tested"]
        if row["n_tested"]:
            assert row["passed"]["low"] <= row["passed"]["value"] <= row["passed"]["high"]
            assert row["weak"] == (row["passed"]["value"] < 0.9)
    assert {entry["test"] for entry in summary["setups"]} == {"evasion", "inverted", "reclassification"}
    for entry in summary["setups"]:
        assert sum(entry["statuses"].values()) == n
    assert set(summary["provenance"]) >= {"code", "date", "command", "machine"}
    table = (folder / "active" / "active_tests.md").read_text()
    assert table == active.format_active_tests(summary)
    assert "`joint_linf`" in table and "`reclassify_linf`" in table and "| inverted |" in table


def test_the_tests_write_only_their_own_results_and_keys_that_no_evaluation_result_has(tested_run):
    _, folder, before, _ = tested_run
    after = {path: path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}
    assert {path: after[path] for path in before} == before  # nothing of the run was rewritten
    new = set(after) - set(before)
    assert new and all(path.relative_to(folder).parts[0] == "active" for path in new)
    stamps = [path for path in new if path.suffix == ".npz"]
    assert len(stamps) == 6  # 3 setups, 3 attack rows
    for path in stamps:
        fingerprint = read_stamp(path)
        assert fingerprint["active_test"] in ("evasion", "inverted", "reclassification")
    for path in before:
        if path.suffix == ".npz":
            assert "active_test" not in (read_stamp(path) or {})


def test_a_rerun_recomputes_nothing(tested_run, monkeypatch):
    plan, folder, _, summary_file = tested_run
    first = json.loads(summary_file.read_text())

    def forbidden(*args, **kwargs):
        raise AssertionError("recomputed a saved result")

    for name in ("evasion_setup", "inverted_setup", "reclassification_setup", "attack_outcomes"):
        monkeypatch.setattr(active, name, forbidden)
    again = json.loads(active.run_active_tests(plan).read_text())
    assert again["rows"] == first["rows"] and again["setups"] == first["setups"]


def test_another_attack_budget_reruns_the_attacks_on_the_same_setups(tested_run, monkeypatch):
    plan, folder, _, _ = tested_run

    def forbidden(*args, **kwargs):
        raise AssertionError("recomputed a setup")

    for name in ("evasion_setup", "inverted_setup", "reclassification_setup"):
        monkeypatch.setattr(active, name, forbidden)
    ran = []
    real = active.attack_outcomes
    monkeypatch.setattr(active, "attack_outcomes", lambda *args, **kwargs: ran.append(args[-1]) or real(*args, **kwargs))
    more = dataclasses.replace(plan, adaptive=dataclasses.replace(
        plan.adaptive, options=dataclasses.replace(plan.adaptive.options, steps=3)))
    summary = json.loads(active.run_active_tests(more).read_text())
    assert ran and all(options.steps == 3 for options in ran)
    assert summary["attack_options"]["steps"] == 3


def test_the_command_line_runs_the_tests_of_the_configured_run(tested_run, monkeypatch):
    plan, _, _, summary_file = tested_run
    ran = []
    monkeypatch.setattr(active, "run_active_tests", lambda given: ran.append(given) or summary_file)
    assert cli.main(["active-tests", *[item for key, value in TINY.items() for item in _flag(key, value)],
                     "--data-dir", str(plan.data.root), "--output-dir", str(plan.output_dir),
                     "--k-checkpoint", str(plan.k_checkpoint)]) == 0
    assert ran and ran[0].run_name == plan.run_name and ran[0].active == plan.active


def _flag(key: str, value: object) -> list[str]:
    name = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return [name if value else "--no-" + key.replace("_", "-")]
    if isinstance(value, tuple):
        return [name, ",".join(value)]
    return [name, str(value)]


def test_the_table_names_weak_attacks_and_leaves_untested_rows_blank():
    def row(test, attack, value, n, weak):
        return {"test": test, "attack": attack, "epsilon": 8, "fpr_target": 0.1,
                "criterion": {"evasion": "evaded", "inverted": "inverted"}[test], "set_up": n, "no_planted_solution": 2,
                "setup_failed": 1, "clean_already": 0, "n_tested": n, "evaded": 1 if test == "inverted" else 0,
                "passed": {"value": value, "low": value / 2, "high": min(1.0, value + 0.1), "n": n},
                "random": {"value": 0.0, "low": 0.0, "high": 0.3, "n": n}, "weak": weak}

    summary = {"n_images": 10, "pass_rate": 0.9, "setups": [], "rows": [
        row("evasion", "joint_linf", 0.5, 6, True), row("inverted", "joint_linf", 1.0, 6, False),
        row("evasion", "transplant_linf", 0.0, 0, False)]}
    table = active_tests_table(summary)
    lines = table.splitlines()
    assert "| evasion | `joint_linf` | 8 | 10% | M wrong, not flagged | 6 | 2 | 1 | 0 | 50% [25, 60] of 6 | " \
           "0% [0, 30] of 6 | weak |" in lines
    assert lines[[i for i, line in enumerate(lines) if "transplant_linf" in line][0]].endswith("| – | – | – |")
    assert "Weak: `joint_linf` (evasion, ε = 8)." in table
    assert "on 1 of its 6 images M is wrong and the image *not* flagged" in table


def test_the_setups_table_counts_each_status_and_the_inner_validation():
    statuses = {"ok": 5, "no_target": 1, "no_planted_point": 2, "not_separable": 0, "not_verified": 1,
                "clean_wrong": 1}
    summary = {"setups": [{"test": "evasion", "epsilon": 16, "fpr_target": 0.1, "n_images": 10, "statuses": statuses,
                           "median_planted_distance": 16.0, "inner_changed": 0.0125},
                          {"test": "inverted", "epsilon": 16, "fpr_target": 0.1, "n_images": 10,
                           "statuses": {**statuses, "ok": 0}, "median_planted_distance": None, "inner_changed": None}]}
    lines = active_setups_table(summary).splitlines()
    assert lines[2] == "| evasion | 16 | 10% | 10 | 5 | 1 | 2 | 0 | 1 | 1 | 16 | 1.2% |"
    assert lines[3].endswith("| – | – |")

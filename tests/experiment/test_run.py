"""The experiment end to end on a tiny synthetic world: outputs, resume, caching, determinism."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import unmask.experiment.stages as stages
from unmask import cli
from unmask.config import resolve_config
from unmask.experiment import build_plan, grid_report, run_experiment, run_grid

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "image_size": 48, "synthetic_images_per_class": 10, "synthetic_k_images": 48, "synthetic_workers": 1,
    "epochs": 2, "adv_epochs": 1, "adv_steps": 2, "k_epochs": 1, "k_batch_size": 4, "k_warmup_steps": 2,
    "attacks": ("pgd_linf:16", "mim_l2:300"), "attack_steps": 3, "class_set": "cs3-1", "verbosity": 0,
    "adaptive_attacks": ("joint_linf:16", "reclassify_linf:16", "transplant_linf:16"), "adaptive_steps": 2,
    "adaptive_batch_size": 2,
}


def tiny_config(tmp_path, **overrides):
    options = {**TINY, "data_dir": str(tmp_path / "data"), "output_dir": str(tmp_path / "results"), **overrides}
    return resolve_config(overrides=options)


def tiny_plan(tmp_path, **overrides):
    return build_plan(tiny_config(tmp_path, **overrides))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    plan = tiny_plan(root)
    return plan, run_experiment(plan)


def _numbers(metrics):
    """The run's figures: all of metrics.json but when, where and how fast it ran."""
    return {key: value for key, value in metrics.items() if key not in ("timing", "provenance")}


def test_outputs_of_a_run(finished_run):
    plan, directory = finished_run
    assert directory.name == plan.run_name and directory.name.startswith("cs3-1-compact-")
    metrics = json.loads((directory / "metrics.json").read_text())
    assert set(metrics["clean"]) >= {"accuracy_m", "accuracy_adv_trained", "accuracy_unmask", "n_images"}
    assert set(metrics["k"]) >= {"map_mask", "map_box", "part_precision", "part_recall"}
    assert [(a["name"], a["norm"], a["epsilon"]) for a in metrics["attacks"]] == [("pgd_linf", "linf", 16),
                                                                                ("mim_l2", "l2", 300)]
    for entry in metrics["attacks"]:
        assert set(entry) >= {"accuracy_m", "accuracy_adv_trained", "accuracy_unmask", "detection"}
        assert set(entry["detection"]) >= {"auc", "auc_soft", "n_pairs", "threshold", "tpr", "fpr"}
        for key in ("accuracy_m", "accuracy_adv_trained", "accuracy_unmask"):
            assert 0.0 <= entry[key] <= 1.0
    assert set(metrics["summary"]) >= {"mean_accuracy_unmask", "mean_accuracy_adv_trained",
                                       "mean_gain_over_adv_training"}
    assert set(metrics["timing"]) >= {"data", "train_m", "train_k", "clean", "attacks", "adaptive", "report", "total"}
    provenance = metrics["provenance"]
    assert provenance["run"] == directory.name and provenance["machine"]["device"] == "cpu"
    assert set(provenance) >= {"code", "date", "command", "libraries", "machine", "load_average"}
    # the threat-model table: gray-box beside white-box at the same budget, thresholds at 10% FPR; UnMask under
    # an attack aimed at each of its outputs, the baselines (M alone) under the same engine
    adaptive = metrics["adaptive"]
    assert [(e["defense"], e["threat_model"], e["attack"], e["epsilon"], e["fpr_target"]) for e in adaptive] == [
        ("UnMask", "gray-box", "pgd_linf", 16, 0.1), ("undefended M", "gray-box", "pgd_linf", 16, 0.1),
        ("adversarial training", "gray-box", "pgd_linf", 16, 0.1), ("UnMask", "white-box", "joint_linf", 16, 0.1),
        ("UnMask", "white-box", "reclassify_linf", 16, 0.1), ("UnMask", "white-box", "transplant_linf", 16, 0.1),
        ("undefended M", "white-box", "m_apgd_linf", 16, 0.1), ("adversarial training", "white-box", "m_apgd_linf",
                                                                16, 0.1)]
    sample_size = sum(row["m_prediction"] == row["label"] for row in _rows(directory))
    for entry in adaptive:
        assert set(entry) >= {"defense", "threat_model", "attack", "norm", "epsilon", "fpr_target", "n_images",
                              "success_rate", "robust_accuracy_with_detection", "accuracy_system", "accuracy_m",
                              "intervals"}
        assert entry["n_images"] <= sample_size and (entry["attack"] != "joint_linf" or entry["n_images"] == sample_size)
        for key, (low, high) in entry["intervals"].items():
            if entry["n_images"] == 0:  # every image was already broken for what it aims at: no rate at all
                assert low is None and high is None and entry[key] is None
            else:
                assert low <= entry[key] <= high
    assert {(row["defense"], row["over"]) for row in metrics["adaptive_summary"]} == {
        (defense, over) for defense in ("UnMask", "undefended M", "adversarial training")
        for over in ("all attacks", "gray-box", "white-box")}
    assert {(c["baseline"], c["figure"]) for c in metrics["adaptive_comparisons"]} == {
        (baseline, figure) for baseline in ("undefended M", "adversarial training")
        for figure in ("robust_accuracy_with_detection", "accuracy_system")}
    assert "### Threat models" in (directory / "tables.md").read_text()
    assert (directory / "threat_models.png").stat().st_size > 1000
    n_images = metrics["clean"]["n_images"]
    assert n_images == 3 * 2  # 10 per class: 6 train, 2 val, 2 test
    with open(directory / "per_image.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == n_images * (1 + len(metrics["attacks"]))
    assert {row["attack"] for row in rows} == {"clean", "pgd_linf", "mim_l2"}
    assert all(row["label"] in ("car", "person", "train") for row in rows)
    tables = (directory / "tables.md").read_text()
    assert "| pgd_linf | 16 |" in tables and "| mim_l2 | 300 |" in tables
    for stem in ("roc", "accuracy", "example"):
        for extension in ("png", "pdf"):
            assert (directory / f"{stem}.{extension}").stat().st_size > 1000


def test_rerun_recomputes_nothing_and_gives_the_same_numbers(finished_run, monkeypatch):
    plan, directory = finished_run
    before = json.loads((directory / "metrics.json").read_text())

    monkeypatch.setattr(stages, "attack", _forbidden("a finished run attacked again"))
    monkeypatch.setattr("unmask.train.part_extractor.train_part_extractor",
                        _forbidden("a cached model was trained again"))
    monkeypatch.setattr("unmask.train.classifier._train_epoch", _forbidden("a cached model was trained again"))
    run_experiment(plan)
    after = json.loads((directory / "metrics.json").read_text())
    assert _numbers(after) == _numbers(before)


def test_an_interrupted_run_resumes_with_identical_results(finished_run, tmp_path):
    plan, directory = finished_run
    before = json.loads((directory / "metrics.json").read_text())
    copy = tmp_path / "results"
    shutil.copytree(plan.output_dir, copy)  # the module's run stays as it is for the other tests
    resumed = _shared(plan, output_dir=str(copy), verbosity=0)
    done = sorted((copy / directory.name / "vectors").glob("*.npz"))
    done[-1].unlink()  # as if killed during the last vector
    (copy / directory.name / "metrics.json").unlink()
    run_experiment(resumed)
    assert done[-1].is_file()
    assert _numbers(json.loads((copy / directory.name / "metrics.json").read_text())) == _numbers(before)


def test_two_fresh_runs_with_one_seed_agree(finished_run, tmp_path):
    plan, directory = finished_run
    again = run_experiment(tiny_plan(tmp_path))  # its own synthetic world, models and results, from nothing
    assert (tmp_path / "data" / "manifest.json").is_file()
    first = json.loads((directory / "metrics.json").read_text())
    second = json.loads((again / "metrics.json").read_text())
    figures = [{key: value for key, value in _numbers(m).items() if key not in ("config", "models")}
               for m in (first, second)]
    assert json.dumps(figures[0], sort_keys=True) == json.dumps(figures[1], sort_keys=True)


def test_missing_real_dataset_names_the_layout(tmp_path):
    plan = tiny_plan(tmp_path, dataset="unmask", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="prepare --dataset synthetic"):
        run_experiment(plan)


def test_grid_jobs_and_the_combine_command_give_the_whole_grid_table(finished_run, tmp_path):
    plan, _ = finished_run
    grid = {"data_dir": str(plan.data.root), "grid_class_sets": ("cs3-1",), "grid_models": ("compact",)}
    whole = run_grid(tiny_plan(tmp_path / "whole", **grid))
    rows = json.loads((whole / "grid.json").read_text())
    assert [(r["class_set"], r["model"], r["m_adv_trained"]) for r in rows] == [("cs3-1", "compact", False),
                                                                                ("cs3-1", "compact", True)]
    assert all(not math.isnan(r["mean_accuracy_unmask"]) for r in rows)
    assert "| cs3-1 | compact | yes |" in (whole / "grid.md").read_text()
    # the same grid as two independent jobs (from nothing: their own models), then combined
    jobs = tmp_path / "jobs"
    assert run_grid(tiny_plan(jobs, grid_shard="1/2", **grid)) is None
    partial = grid_report(tiny_plan(jobs, **grid))
    assert [r["m_adv_trained"] for r in json.loads((partial / "grid.json").read_text())] == [True]
    assert run_grid(tiny_plan(jobs, grid_shard="0/2", **grid)) is None
    combined = grid_report(tiny_plan(jobs, **grid))
    assert json.loads((combined / "grid.json").read_text()) == rows
    assert (combined / "grid.md").read_text() == (whole / "grid.md").read_text()


def test_grid_shards_split_the_configurations_and_read_slurm():
    from unmask.experiment.plan import GridShard

    assert [n for n in range(7) if GridShard.parse("1/3", {}).takes(n)] == [1, 4]
    assert GridShard.parse("4", {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1"}) == GridShard(2, 4)
    assert GridShard.parse("", {}).whole
    for bad in ("3/3", "x/2", "4"):
        with pytest.raises(ValueError, match="expected"):
            GridShard.parse(bad, {})


def _argv(plan):
    argv = []
    for key, value in TINY.items():
        if key == "verbosity":
            continue
        flag = "--" + key.replace("_", "-")
        argv += [flag, ",".join(value) if isinstance(value, tuple) else str(value)]
    return argv + ["--data-dir", str(plan.data.root), "--output-dir", str(plan.output_dir), "--verbosity", "1"]


def test_train_k_and_train_m_commands_reuse_the_run_models(finished_run, capsys, monkeypatch):
    plan, _ = finished_run

    def no_training(*args, **kwargs):
        raise AssertionError("a cached model was trained again")

    monkeypatch.setattr("unmask.train.part_extractor.train_part_extractor", no_training)
    monkeypatch.setattr("unmask.train.classifier._train_epoch", no_training)
    assert cli.main(["train-k", *_argv(plan)]) == 0
    output = capsys.readouterr().out
    assert '"map_mask_50"' in output and "K's weights are in" in output and "evaluations/k-" in output
    assert cli.main(["train-m", *_argv(plan)]) == 0
    output = capsys.readouterr().out
    assert "M (compact" in output and "adversarially trained M (compact" in output


def test_train_k_fine_tunes_the_robust_k_when_asked_and_prints_its_epochs(finished_run, capsys, tmp_path):
    plan, _ = finished_run
    shutil.copytree(plan.models_dir, tmp_path / "models")  # the shared run's cache stays as it was
    robust = ["--k-adv-training", "--k-adv-epochs", "1", "--k-adv-val-images", "2", "--k-adv-val-steps", "1",
              "--output-dir", str(tmp_path)]
    assert cli.main(["train-k", *_argv(plan), *robust]) == 0
    output = capsys.readouterr().out
    assert "train-k: K's weights are in" in output and "train-k: the robust K's weights are in" in output
    assert '"kept_epoch": 1' in output and '"val_reclassify_accuracy"' in output
    assert any((tmp_path / "models").glob("k-adv-*/weights.pt")) and not any(plan.models_dir.glob("k-adv-*"))


@pytest.mark.slow
def test_two_processes_evaluate_to_the_same_numbers_as_one(finished_run):
    """The evaluation under torchrun (gloo, 2 processes, sharded batches) against the module's
    1-process run, with the same models (the cache): metrics.json must not depend on the
    number of processes."""
    plan, directory = finished_run
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "main.py", *_argv(plan),
               "--device", "cpu", "--run-name", "two-processes", "--attack-batch-size", "2"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("### Accuracy") == 1  # the main process reports
    one = run_experiment(_shared(plan, run_name="one-process", attack_batch_size=2, verbosity=0))
    figures = [{key: value for key, value in _numbers(json.loads((folder / "metrics.json").read_text())).items()
                if key not in ("config", "models")} for folder in (one, plan.output_dir / "two-processes")]
    assert json.dumps(figures[0], sort_keys=True) == json.dumps(figures[1], sort_keys=True)
    assert _rows(one) == _rows(plan.output_dir / "two-processes")



@pytest.mark.slow
def test_unmask_r_is_evaluated_beside_unmask_with_its_own_k_thresholds_and_results(finished_run, monkeypatch):
    """The robust K trained from the run's K (one epoch), UnMask-R and UnMask-R + adv. M under
    every adaptive attack, each with its own thresholds, clean figures and saved results; a
    second run recomputes nothing (about 3 minutes on 2 cores)."""
    from unmask.evaluation import Predictions, Scored, fix_thresholds

    plan, _ = finished_run
    robust = _shared(plan, run_name="robust", k_adv_training=True, k_adv_epochs=1, verbosity=0,
                     adaptive_attacks=("joint_linf:16", "k_vanish_linf:64"))
    directory = run_experiment(robust)
    metrics = json.loads((directory / "metrics.json").read_text())
    assert "train_k_robust" in metrics["timing"] and set(metrics["k_robust"]) >= {"map_mask_50", "part_recall"}
    assert metrics["models"]["weights"]["k_robust"].startswith("models/k-adv-")
    names = ("UnMask", "UnMask-R", "UnMask-R + adv. M", "undefended M", "adversarial training")
    assert [e["defense"] for e in metrics["defenses"]] == list(names)
    files = {"UnMask": "validation.npz", "UnMask-R": "adaptive/unmask-r-validation.npz",
             "UnMask-R + adv. M": "adaptive/unmask-r-adv-m-validation.npz"}
    for entry in metrics["defenses"][:3]:
        validation = directory / files[entry["defense"]]
        own = fix_thresholds(Scored.of(Predictions.load(validation), robust.class_set), 0.1).set_jaccard
        assert entry["detection_threshold"] == own and entry["k"] == ("k" if entry["defense"] == "UnMask" else "k_robust")
        assert {e["detection_threshold"] for e in metrics["adaptive"] if e["defense"] == entry["defense"]} == {own}
        assert {(e["threat_model"], e["attack"]) for e in metrics["adaptive"] if e["defense"] == entry["defense"]} == {
            ("gray-box", "pgd_linf"), ("white-box", "joint_linf"), ("white-box", "k_vanish_linf")}
    assert {(c["defense"], c["baseline"]) for c in metrics["adaptive_comparisons"]} == {
        (defense, baseline) for defense in names[:3] for baseline in names[3:]}
    assert "### UnMask-R" in (directory / "tables.md").read_text()
    assert (directory / "robust.png").stat().st_size > 1000

    nothing_again = _forbidden("a finished run computed again")
    monkeypatch.setattr(stages, "attack", nothing_again)
    monkeypatch.setattr("unmask.experiment.adaptive.sequence.adaptive_attack", nothing_again)
    monkeypatch.setattr("unmask.train.robust_part_extractor.train_part_extractor", nothing_again)
    run_experiment(robust)
    assert _numbers(json.loads((directory / "metrics.json").read_text())) == _numbers(metrics)


def _rows(directory, attack="clean"):
    with open(directory / "per_image.csv", newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["attack"] == attack]


def _forbidden(what: str):
    """A stand-in that fails the test if the run calls it: ``what`` happened again."""

    def fail(*args, **kwargs):
        raise AssertionError(what)

    return fail


def _shared(plan, **overrides):
    """A run on the finished run's data and models cache, printing what it does."""
    return build_plan(resolve_config(overrides={**TINY, "data_dir": str(plan.data.root),
                                                "output_dir": str(plan.output_dir), "verbosity": 1, **overrides}))


def test_saved_attacks_are_recomputed_when_the_attack_changes(finished_run, capsys):
    plan, directory = finished_run
    run_experiment(_shared(plan, run_name="steps", attack_steps=1))
    capsys.readouterr()
    again = run_experiment(_shared(plan, run_name="steps"))  # TINY's 3 steps, in the same folder
    output = capsys.readouterr().out
    assert output.count("recomputing the saved result") == 2 and "attack.steps: 1 -> 3" in output
    fresh = json.loads((directory / "metrics.json").read_text())
    assert json.loads((again / "metrics.json").read_text())["attacks"] == fresh["attacks"]


def test_changed_test_images_are_never_reported_from_stale_predictions(finished_run, tmp_path, capsys):
    plan, _ = finished_run
    data = tmp_path / "data"
    shutil.copytree(plan.data.root, data)  # the same contents: the cached models are reused
    changing = _shared(plan, data_dir=str(data), run_name="changing")
    run_experiment(changing)
    test = data / "cs3-1" / "test"
    train_image = sorted((test / "train").iterdir())[0]
    for car in (test / "car").iterdir():  # the car images become train images, in place
        shutil.copyfile(train_image, car)
    capsys.readouterr()
    changed = run_experiment(changing)
    output = capsys.readouterr().out
    assert "clean test predictions: recomputing the saved result clean.npz (data changed)" in output
    assert "training (no cached model" not in output  # only the test split changed: M, the baseline and K are reused
    fresh = run_experiment(_shared(plan, data_dir=str(data), run_name="fresh"))
    assert _rows(changed) == _rows(fresh)
    for attack in ("pgd_linf", "mim_l2"):
        assert _rows(changed, attack) == _rows(fresh, attack)
    next((test / "person").iterdir()).unlink()  # one image fewer: recomputed, not a shape error
    assert len(_rows(run_experiment(changing))) == len(_rows(fresh)) - 1


def test_a_changed_m_checkpoint_is_noticed_and_k_metrics_stay_out_of_user_folders(finished_run, tmp_path, capsys):
    plan, _ = finished_run
    models = plan.output_dir / "models"
    standard = next(p for p in models.glob("m-*") if not p.name.startswith("m-adv")) / "weights.pt"
    adversarial = next(models.glob("m-adv-*")) / "weights.pt"
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copyfile(standard, mine / "m.pt")
    shutil.copyfile(next(models.glob("k-*/weights.pt")), mine / "k.pt")
    checkpoints = {"m_checkpoint": str(mine / "m.pt"), "k_checkpoint": str(mine / "k.pt"), "run_name": "mine"}
    run_experiment(_shared(plan, **checkpoints))
    shutil.copyfile(adversarial, mine / "m.pt")  # another M of the same architecture and classes, same file name
    capsys.readouterr()
    run_experiment(_shared(plan, **checkpoints))
    output = capsys.readouterr().out
    assert "clean test predictions: recomputing the saved result clean.npz (m.weights changed)" in output
    assert sorted(path.name for path in mine.iterdir()) == ["k.pt", "m.pt"]  # nothing written beside them


def test_a_sample_of_test_images_covers_every_class(finished_run):
    plan, _ = finished_run
    directory = run_experiment(_shared(plan, run_name="sample", eval_max_images=3, verbosity=0))
    assert sorted(row["label"] for row in _rows(directory)) == ["car", "person", "train"]


def test_transfer_attacks_are_crafted_on_a_surrogate_k_and_judged_at_each_fpr(finished_run, capsys):
    plan, _ = finished_run
    capsys.readouterr()
    directory = run_experiment(_shared(plan, run_name="transfer", adaptive_threat_models=("white-box", "transfer"),
                                       adaptive_fprs=(0.05, 0.1)))
    assert "K (slim): training (no cached model" in capsys.readouterr().out  # K' is trained once, beside K
    metrics = json.loads((directory / "metrics.json").read_text())
    assert sorted({(e["fpr_target"], e["threat_model"]) for e in metrics["adaptive"] if e["defense"] == "UnMask"}) == [
        (fpr, model) for fpr in (0.05, 0.1) for model in ("gray-box", "transfer", "white-box")]
    seeds = sorted(json.loads(path.read_text())["spec"]["training"]["seed"]
                   for path in (plan.output_dir / "models").glob("k-*/identity.json"))
    assert seeds == [0, 1]  # K and K': another seed (and half of K's training split)
    thresholds = {e["fpr_target"]: e["detection_threshold"] for e in metrics["adaptive"] if e["defense"] == "UnMask"}
    assert thresholds[0.05] >= thresholds[0.1]  # a lower false-positive rate never needs a lower threshold


def test_figures_copies_the_readme_figures_of_the_run(finished_run, tmp_path, monkeypatch):
    plan, _ = finished_run
    for name, extra in (("with", []), ("without", ["--adaptive-attacks", "none", "--run-name", "no-adaptive"])):
        (tmp_path / name / "images").mkdir(parents=True)
        monkeypatch.chdir(tmp_path / name)
        assert cli.main(["figures", *_argv(plan), *extra]) == 0
    expected = {"results_accuracy.png", "results_roc.png", "results_example.png"}
    assert {path.name for path in (tmp_path / "with" / "images").iterdir()} == expected | {"results_threat_models.png"}
    assert {path.name for path in (tmp_path / "without" / "images").iterdir()} == expected  # no adaptive evaluation


def test_saved_predictions_are_recomputed_when_m_runs_another_way(finished_run, capsys):
    plan, _ = finished_run
    run_experiment(_shared(plan, run_name="inference", adaptive_attacks=("none",)))
    capsys.readouterr()
    run_experiment(_shared(plan, run_name="inference", adaptive_attacks=("none",), channels_last=True))
    output = capsys.readouterr().out
    assert "m.channels_last: False -> True" in output
    assert "recomputing the saved result clean.npz" in output


def test_the_label_only_check_runs_on_a_sub_sample_and_stays_out_of_the_worst_case(finished_run):
    plan, _ = finished_run
    directory = run_experiment(_shared(plan, run_name="label-only", verbosity=0,
                                       adaptive_attacks=("joint_linf:16", "hsj_linf:16"), adaptive_label_only_images=1))
    metrics = json.loads((directory / "metrics.json").read_text())
    sizes = {entry["attack"]: entry["n_images"] for entry in metrics["adaptive"] if entry["defense"] == "UnMask"}
    assert sizes["hsj_linf"] == 1 < sizes["joint_linf"] == sizes["pgd_linf"]
    assert all("white-box hsj_linf" not in row["attacks"] for row in metrics["adaptive_summary"])
    assert any("white-box joint_linf" in row["attacks"] for row in metrics["adaptive_summary"])
    assert "| UnMask | white-box | hsj_linf | 16 | 10.0 | 1 |" in (directory / "tables.md").read_text()


def test_the_judge_is_the_real_pipeline():
    import numpy as np
    import torch

    from unmask.defense import detection_scores, reclassify_batch
    from unmask.experiment.stages import hard_judge
    from unmask.models.classifier import ClassifierInference
    from unmask.models.part_extractor import PartExtraction
    from unmask.parts import CLASS_PARTS, PARTS, ClassSet

    class_set = ClassSet.named("cs3-1")  # car, person, train
    parts = np.zeros((3, len(PARTS)), dtype=bool)
    for row, name in enumerate(("car", "person", "train")):
        parts[row, [PARTS.index(p) for p in CLASS_PARTS[name]]] = True

    class Extractor:
        def extract(self, images):
            return PartExtraction(parts, parts.astype(np.float32))

    class Says(torch.nn.Module):  # M says car, car, train
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))

        def forward(self, images):
            return torch.eye(3)[[0, 0, 2]] + 0 * self.anchor

    verdict = hard_judge(ClassifierInference(Says()), Extractor(), class_set, 0.5)(torch.zeros(3, 3, 8, 8))
    assert verdict.m_prediction.tolist() == [0, 0, 2]
    scores = detection_scores(parts, np.array([0, 0, 2]), class_set)
    assert verdict.detection_score.tolist() == scores.tolist() and verdict.flagged.tolist() == [False, True, False]
    assert verdict.unmask_prediction.tolist() == reclassify_batch(parts, class_set).tolist() == [0, 1, 2]


def test_a_decision_rule_runs_end_to_end_and_keys_its_saved_results(finished_run, capsys):
    """The part-classifier rule with rejection on the finished run's models: the classifier is
    trained on K's outputs for the training images (saved beside the attacks), the clean figures
    name the rule, and the attacks judged under another rule in the same folder are recomputed,
    not read back."""
    plan, _ = finished_run
    rule_run = {"run_name": "rule", "adaptive_attacks": ("reclassify_linf:16", "transplant_linf:16"),
                "adaptive_max_images": 4, "flagged_decision": "reject"}
    ruled = run_experiment(_shared(plan, decision_rule="part-classifier", **rule_run))
    metrics = json.loads((ruled / "metrics.json").read_text())
    clean = next(entry for entry in metrics["defenses"] if entry["defense"] == "UnMask")
    assert clean["decision_rule"]["rule"] == "part-classifier" and clean["decision_rule"]["reject"]
    assert 0 <= clean["flag_rate"] <= 1 and (ruled / "adaptive" / "unmask-train.npz").is_file()
    rows = [entry for entry in metrics["adaptive"] if entry["defense"] == "UnMask" and entry["n_images"]]
    assert rows and all(0 <= entry[figure] <= 1 for entry in rows
                        for figure in ("robust_accuracy_with_detection", "accuracy_system", "success_rate"))
    capsys.readouterr()
    run_experiment(_shared(plan, decision_rule="per-class", **rule_run))
    assert "recomputing the saved result" in capsys.readouterr().out


def test_the_part_classifier_can_also_learn_from_ks_outputs_under_attack(finished_run):
    """--part-classifier-data clean+attacked on the finished run's models: K's outputs for the
    training images under the K-only attack are saved beside the clean ones and keyed apart from
    them, and the rule is trained (the tiny K finds no part, clean or attacked: what the attack
    does to a K is tested in tests/train/test_robust_part_extractor.py)."""
    import numpy as np

    from unmask.experiment.evaluator import ATTACKED_EVIDENCE

    plan, _ = finished_run
    rule_run = {"run_name": "rule-attacked", "adaptive_attacks": ("reclassify_linf:16",), "adaptive_max_images": 4,
                "decision_rule": "part-classifier", "part_classifier_data": "clean+attacked"}
    ruled = run_experiment(_shared(plan, **rule_run))
    folder = ruled / "adaptive"
    clean, attacked = (np.load(folder / name) for name in ("unmask-train.npz", "unmask-train-attacked.npz"))
    assert len(attacked["parts"]) == len(clean["parts"]) > 0
    stamp = json.loads((folder / "unmask-train-attacked.npz.stamp.json").read_text())
    assert stamp["fingerprint"]["attacked_evidence"]["steps"] == ATTACKED_EVIDENCE.steps
    metrics = json.loads((ruled / "metrics.json").read_text())
    entry = next(entry for entry in metrics["defenses"] if entry["defense"] == "UnMask")
    assert entry["decision_rule"]["rule"] == "part-classifier" and 0 <= entry["flag_rate"] <= 1


def test_the_part_classifier_is_trained_on_both_evidences_when_asked(tmp_path):
    """The deployed rule's training data: the clean evidence alone, or the clean then the
    attacked evidence with the labels repeated."""
    from types import SimpleNamespace

    import numpy as np

    from unmask.evaluation import Predictions, Scored
    from unmask.experiment.adaptive.defenses import _deployed
    from unmask.experiment.plan import DecisionSpec
    from unmask.parts import PARTS, ClassSet

    class_set = ClassSet.named("cs3-1")

    def scored(parts_on: bool) -> Scored:
        parts = np.zeros((3, len(PARTS)), dtype=bool)
        parts[:, 0] = parts_on
        return Scored.of(Predictions(m=np.array([0, 1, 2]), adv_trained=None, parts=parts,
                                     part_scores=parts.astype(np.float32)), class_set)

    labels = np.array([0, 1, 2])
    evaluator = SimpleNamespace(
        class_set=class_set, folder=SimpleNamespace(path=tmp_path),
        training=lambda k, path, what: (scored(False), labels),
        attacked_training=lambda k, path, what: (scored(True), labels))
    for data, rows in (("clean", 3), ("clean+attacked", 6)):
        evaluator.spec = SimpleNamespace(decision=DecisionSpec("part-classifier", classifier_data=data))
        evidence, repeated = _deployed(evaluator, "UnMask", None)["training"]()
        assert len(evidence) == rows and repeated.tolist() == labels.tolist() * (rows // 3)
        assert evidence.parts[:3, 0].sum() == 0 and evidence.parts[3:, 0].all()


def test_white_box_attacks_aim_only_at_the_named_defenses(finished_run):
    """--adaptive-defenses: a defense left out gets its clean figures and its ceiling but no row
    of the threat-model table (a gray-box-only worst case would read as its white-box figure);
    the baselines are still attacked, and the report renders."""
    plan, _ = finished_run
    directory = run_experiment(_shared(plan, run_name="some-defenses", adaptive_defenses=("unmask-r",),
                                       adaptive_attacks=("joint_linf:16",), adaptive_max_images=4))
    metrics = json.loads((directory / "metrics.json").read_text())
    kinds = {(entry["defense"], entry["threat_model"]) for entry in metrics["adaptive"]}
    assert not any(defense == "UnMask" for defense, _ in kinds)
    assert not any(entry["defense"] == "UnMask"
                   for entry in metrics["adaptive_summary"] + metrics["adaptive_ladder"]["figures"])
    assert any(defense != "UnMask" and threat == "white-box" for defense, threat in kinds)
    assert [entry["defense"] for entry in metrics["defenses"]][0] == "UnMask"
    assert metrics["unflagged_wrong_class"] and (directory / "tables.md").is_file()
    assert metrics["config"]["adaptive_defenses"] == ["unmask-r"]


def test_the_reject_variant_reuses_the_attacks_that_do_not_aim_at_the_deployed_decision(finished_run, monkeypatch):
    """Under one rule, the joint and re-classification attacks run the same whatever a flagged
    image gets (the figures apply the variant when read): the reject variant reads them back and
    attacks only with the one aimed at the deployed decision, whose success depends on it."""
    from unmask.experiment.adaptive import sequence

    plan, _ = finished_run
    rule_run = {"run_name": "variants", "decision_rule": "agreement", "adaptive_max_images": 4,
                "adaptive_attacks": ("joint_linf:16", "reclassify_linf:16", "transplant_linf:16")}
    reclassifying = json.loads((run_experiment(_shared(plan, **rule_run)) / "metrics.json").read_text())
    called = []
    original = sequence.adaptive_attack

    def recording(target, images, labels, vector, options, **kwargs):
        called.append(vector.name)
        return original(target, images, labels, vector, options, **kwargs)

    monkeypatch.setattr(sequence, "adaptive_attack", recording)
    rejecting = json.loads((run_experiment(_shared(plan, flagged_decision="reject", **rule_run))
                            / "metrics.json").read_text())
    assert set(called) <= {"transplant_linf"}
    figures = {(e["attack"], e["defense"]): e for e in reclassifying["adaptive"] if e["threat_model"] == "white-box"}
    for entry in rejecting["adaptive"]:
        if entry["threat_model"] == "white-box" and entry["attack"] == "joint_linf":
            same = figures[(entry["attack"], entry["defense"])]
            assert entry["robust_accuracy_with_detection"] == same["robust_accuracy_with_detection"]

"""The threat-model evaluation's bookkeeping on hand-made verdicts (no model runs): what each row
reports, the per-image worst case per defense, the attack named for each figure, the paired
differences, and the tables and figure drawn from them."""

from __future__ import annotations

import numpy as np
import pytest

from unmask.attacks import LINF
from unmask.experiment.adaptive import Judged, Row, summarise
from unmask.report import format_threat_models, threat_model_series

LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1])
CLEAN_DETECTION = np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.7])  # image 7 is flagged when clean
THRESHOLD = 0.5
PARTS = np.zeros((8, 44), dtype=bool)
EVERY = np.arange(8)


def unmask_row(attack, m, detection, unmask, *, positions=EVERY, threat_model="white-box", epsilon=8.0):
    return Row("UnMask", threat_model, attack, LINF, epsilon, 0.1, THRESHOLD,
               Judged(np.array(m), PARTS[positions], np.array(detection, dtype=float), np.array(unmask)), positions)


def alone_row(defense, m, *, threat_model="white-box", epsilon=8.0):
    return Row(defense, threat_model, "m_apgd_linf", LINF, epsilon, 0.1, THRESHOLD, Judged(np.array(m)), EVERY)


def rows():
    # joint: evades on 0 and 1 (M wrong, unflagged); 2 fooled but flagged, re-classified right
    joint = unmask_row("joint_linf", [1, 0, 0, 0, 1, 2, 0, 1], [0.1, 0.2, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1],
                       [1, 0, 2, 0, 1, 2, 0, 1])
    # reclassify on the images joint left unbroken for the re-classification (all but 0, 1): breaks 2, 3 (flagged)
    # and 4 (not flagged: M's right class is deployed)
    reclassify = unmask_row("reclassify_linf", [2, 0, 1, 2, 0, 1], [0.9, 0.9, 0.1, 0.1, 0.1, 0.1],
                            [1, 1, 0, 2, 0, 1], positions=np.array([2, 3, 4, 5, 6, 7]))
    undefended = alone_row("undefended M", [1, 2, 0, 1, 2, 0, 1, 2])  # every image fooled
    baseline = alone_row("adversarial training", [0, 1, 2, 1, 1, 2, 0, 0])  # 3 and 7 fooled
    return [joint, reclassify, undefended, baseline]


@pytest.fixture
def metrics():
    return summarise(rows(), LABELS, CLEAN_DETECTION, PARTS, seed=0)


def summary_of(metrics, defense, over="all attacks"):
    return next(row for row in metrics["adaptive_summary"] if row["defense"] == defense and row["over"] == over)


def test_each_row_reports_its_figures_on_the_images_it_attacked(metrics):
    joint, reclassify, undefended, _ = metrics["adaptive"]
    assert joint["n_images"] == 8 and reclassify["n_images"] == 6
    assert joint["success_rate"] == 2 / 8  # 0 and 1; 2 is fooled but flagged: no success
    assert joint["accuracy_m"] == 5 / 8
    # handled: not 0, 1 (fooled, unflagged) and not 7 (flagged when clean)
    assert joint["robust_accuracy_with_detection"] == 5 / 8
    assert joint["accuracy_system"] == 6 / 8  # 2's flag deploys its right re-classification
    assert reclassify["accuracy_unmask"] == 3 / 6
    assert undefended["success_rate"] == 1.0 and undefended["accuracy_unmask"] is None
    low, high = joint["intervals"]["success_rate"]
    assert low < 0.25 < high  # a Wilson interval around the rate


def test_the_worst_case_takes_per_image_the_worst_of_every_attack(metrics):
    unmask = summary_of(metrics, "UnMask")
    assert unmask["success_rate"] == 2 / 8
    assert unmask["accuracy_unmask"] == 3 / 8  # 0, 1 (joint), 2, 3, 4 (reclassify) wrong
    # system: joint breaks 0, 1; reclassify 2 and 3 (flagged, re-classified wrong), not 4 (not flagged, M right)
    assert unmask["accuracy_system"] == 4 / 8
    assert unmask["robust_accuracy_with_detection"] == 5 / 8  # flagged attacked images are handled; 7 is not
    assert unmask["strongest"]["accuracy_unmask"] == "white-box reclassify_linf"  # three images against two
    assert unmask["strongest"]["success_rate"] == "white-box joint_linf"
    assert summary_of(metrics, "adversarial training")["accuracy_m"] == 6 / 8
    low, high = unmask["intervals"]["accuracy_system"]
    assert low <= 4 / 8 <= high


def test_unmask_minus_each_baseline_is_paired_on_the_same_images(metrics):
    comparison = next(c for c in metrics["adaptive_comparisons"] if c["baseline"] == "undefended M"
                      and c["figure"] == "accuracy_system")
    assert comparison["difference"] == pytest.approx(4 / 8 - 0)
    assert comparison["significant"] and comparison["interval"][0] > 0
    against = next(c for c in metrics["adaptive_comparisons"] if c["baseline"] == "adversarial training"
                   and c["figure"] == "robust_accuracy_with_detection")
    assert against["difference"] == pytest.approx(5 / 8 - 6 / 8)  # handled: 2 to 6; the baseline: all but 3, 7


def test_the_tables_and_the_figure_show_each_defense_under_its_own_worst_case(metrics):
    tables = format_threat_models({**metrics, "config": {"class_set": "cs3-1", "model": "compact"}})
    headline = next(line for line in tables.splitlines() if line.startswith("| 10.0 | linf | 8 |"))
    cells = [cell.strip() for cell in headline.strip("|").split("|")]
    assert cells[3].startswith("0.0 [") and cells[4].startswith("75.0 [")  # undefended M, adversarial training
    assert [cell.split(" [")[0] for cell in cells[5:]] == ["62.5", "25.0", "37.5", "50.0"]
    assert "| 10.0 | 8 | UnMask | white-box joint_linf | " in tables
    series = {line.label: line for line in threat_model_series(metrics, "linf", 0.1)}
    assert series["UnMask: system (deployed decision)"].y == [50.0]
    assert series["adversarial training: accuracy"].y == [75.0]
    assert all(line.low[0] <= line.y[0] <= line.high[0] for line in series.values())


def test_the_worst_case_at_a_budget_counts_what_a_smaller_budget_of_the_same_norm_broke():
    # at 8 joint evades on 0 and 1; at 16 (on the other images) it evades on 2 only; an image within 8 is within 16
    small = unmask_row("joint_linf", [1, 0, 2, 0, 1, 2, 0, 1], [0.1] * 8, [1, 0, 2, 0, 1, 2, 0, 1])
    large = unmask_row("joint_linf", [1, 0, 1, 2, 0, 1], [0.1] * 6, [2, 0, 1, 2, 0, 1],
                       positions=np.array([2, 3, 4, 5, 6, 7]), epsilon=16.0)
    summary = summarise([small, large], LABELS, CLEAN_DETECTION, PARTS, seed=0)["adaptive_summary"]
    at = {row["epsilon"]: row for row in summary if row["defense"] == "UnMask" and row["over"] == "all attacks"}
    assert at[8.0]["success_rate"] == 2 / 8 and at[16.0]["success_rate"] == 3 / 8
    assert at[16.0]["attacks"] == ["white-box joint_linf:8", "white-box joint_linf"]
    assert at[16.0]["strongest"]["success_rate"] == "white-box joint_linf:8"  # two images against one

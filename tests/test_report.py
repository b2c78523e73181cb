import math

import numpy as np

from unmask.parts import PARTS
from unmask.report import (
    ExamplePanel,
    RocSeries,
    format_grid_table,
    format_tables,
    plot_accuracy,
    plot_examples,
    plot_roc,
    plot_training,
)


def _metrics():
    detection = {"auc": 0.95, "auc_soft": 0.97, "n_pairs": 40, "threshold": 0.8, "tpr": 0.9, "fpr": 0.05,
                 "tpr_soft": 0.92, "fpr_soft": 0.08}
    return {
        "config": {"class_set": "cs5-2", "model": "compact", "dataset": "synthetic"},
        "clean": {"accuracy_m": 0.97, "accuracy_adv_trained": 0.9, "accuracy_unmask": 0.88, "n_images": 50},
        "attacks": [
            {"name": "pgd_linf", "norm": "linf", "epsilon": 8, "accuracy_m": 0.02, "accuracy_adv_trained": 0.5,
             "accuracy_unmask": 0.86, "detection": detection},
            {"name": "mim_l2", "norm": "l2", "epsilon": 300, "accuracy_m": 0.1, "accuracy_adv_trained": 0.6,
             "accuracy_unmask": 0.87, "detection": {**detection, "auc": math.nan}},
        ],
        "summary": {"mean_accuracy_m": 0.06, "mean_accuracy_unmask": 0.865, "mean_accuracy_adv_trained": 0.55,
                    "mean_gain_over_adv_training": 31.5},
        "thresholds": {"target_fpr": 0.1, "set_jaccard": 0.5, "soft_jaccard": 0.4},
    }


def test_tables_hold_every_attack_and_the_summary():
    tables = format_tables(_metrics())
    assert "| pgd_linf | 8 | 2.0 | 50.0 | 86.0 |" in tables
    assert "| mim_l2 | 300 | 10.0 | 60.0 | 87.0 |" in tables
    assert "| none (clean) | 0 | 97.0 | 90.0 | 88.0 |" in tables
    assert "+31.5 percentage points" in tables
    assert "| pgd_linf | 8 | 40 | 0.950 | 0.970 | 90.0 | 5.0 | 92.0 | 8.0 |" in tables
    assert "| mim_l2 | 300 | 40 | n/a |" in tables  # an undefined AUC is shown, not hidden
    assert "at a 10.0% false-positive rate" in tables
    assert "Threat models" not in tables  # no adaptive section, no table for it


def test_the_tables_add_the_threat_models_when_the_run_has_them():
    from unmask.attacks import LINF
    from unmask.experiment.adaptive import CleanView, Judged, Row, summarise

    labels = np.array([0, 1, 2, 0])
    row = Row("UnMask", "white-box", "joint_linf", LINF, 8.0, 0.1, 0.5,
              Judged(np.array([1, 1, 2, 0]), np.zeros((4, 44), bool), np.array([0.1, 0.9, 0.1, 0.1]),
                     np.array([0, 1, 2, 0])), np.arange(4))
    metrics = {**_metrics(), **summarise([row], labels, {"UnMask": CleanView(np.zeros(4), np.zeros((4, 44), bool))}, seed=0)}
    tables = format_tables(metrics)
    assert "### Threat models" in tables and "| UnMask | white-box | joint_linf | 8 | 10.0 | 4 | 25.0 |" in tables


def test_grid_table_row():
    row = {"class_set": "cs3-1", "model": "compact", "m_adv_trained": False, "clean_accuracy_m": 0.9,
           "mean_accuracy_m": 0.1, "mean_accuracy_adv_trained": 0.4, "mean_accuracy_unmask": 0.8,
           "mean_gain_over_adv_training": 40.0, "mean_auc": 0.9, "run": "cs3-1-compact-abc"}
    assert "| cs3-1 | compact | no | 90.0 | 10.0 | 40.0 | 80.0 | 40.0 | 0.900 | cs3-1-compact-abc |" in (
        format_grid_table([row])
    )


def test_figures_are_written_as_png_and_pdf(tmp_path):
    curve = RocSeries("pgd_linf:8", np.array([0, 0.5, 1]), np.array([0, 0.9, 1]), 0.7)
    empty = RocSeries("mim_l2:300", np.array([]), np.array([]), math.nan)
    written = plot_roc([curve, empty], [curve], tmp_path / "roc")
    written += plot_accuracy(_metrics(), tmp_path / "accuracy")
    mask = np.zeros((2, 32, 32), bool)
    mask[0, 4:12, 4:12] = mask[1, 20:28, 10:30] = True
    panel = ExamplePanel("clean", np.full((32, 32, 3), 0.5), mask, np.array([PARTS.index("beak"), 3]), "M: bird")
    written += plot_examples([panel, panel], tmp_path / "example")
    assert sorted(p.name for p in written) == sorted(
        f"{stem}.{ext}" for stem in ("roc", "accuracy", "example") for ext in ("png", "pdf")
    )
    for path in written:
        assert path.stat().st_size > 1000
        assert path.read_bytes()[:4] in (b"\x89PNG", b"%PDF")


def test_training_curves_plot_each_models_loss_and_validation_metrics(tmp_path):
    m = [{"epoch": 1, "train_loss": 1.2, "train_accuracy": 0.5, "val_accuracy": 0.6, "score": 0.6, "seconds": 3.0},
         {"epoch": 2, "train_loss": 0.7, "train_accuracy": 0.8, "val_accuracy": 0.75, "score": 0.75, "seconds": 3.0}]
    adversarial = [{"epoch": 1, "train_loss": 1.5, "val_accuracy": 0.4, "val_adversarial_accuracy": 0.2},
                   {"epoch": 2, "train_loss": 1.1, "val_accuracy": 0.5, "val_adversarial_accuracy": 0.3},
                   {"epoch": 3, "train_loss": 0.9, "val_accuracy": 0.625, "val_adversarial_accuracy": 0.375}]
    k = [{"epoch": 1, "loss_classifier": 0.8, "loss": 2.1, "lr": 0.04, "val_part_precision": 0.9,
          "val_part_recall": 0.5, "seconds": 100.0}]
    drawn = plot_training({"M": m, "adversarial M": adversarial, "K": k, "imported M": None}, tmp_path / "training")
    assert drawn == {
        "M: training loss": {"train loss": ([1, 2], [1.2, 0.7])},
        "M: validation": {"accuracy": ([1, 2], [60.0, 75.0])},
        "adversarial M: training loss": {"train loss": ([1, 2, 3], [1.5, 1.1, 0.9])},
        "adversarial M: validation": {"accuracy": ([1, 2, 3], [40.0, 50.0, 62.5]),
                                      "adversarial accuracy": ([1, 2, 3], [20.0, 30.0, 37.5])},
        "K: training loss": {"loss": ([1], [2.1])},
        "K: validation": {"part precision": ([1], [90.0]), "part recall": ([1], [50.0])},
    }
    for extension in ("png", "pdf"):
        assert (tmp_path / f"training.{extension}").stat().st_size > 1000


def test_the_section_formatters_give_k_the_stage_times_and_the_chosen_budgets():
    from unmask.report import k_table, threat_models_table, timing_table

    metrics = {**_metrics(), "k": {"map_mask_50": 0.8, "map_mask": 0.4, "map_box_50": 0.9, "map_box": 0.5,
                                   "part_precision": 0.97, "part_recall": 0.95},
               "k_robust": None, "timing": {"data": 12.4, "train_k": 286.0, "total": 298.4}}
    assert "| K | 0.800 | 0.400 | 0.900 | 0.500 | 0.970 | 0.950 |" in k_table(metrics)
    assert "robust K" not in k_table(metrics)
    assert "### K, the part extractor" in format_tables(metrics)
    timing = timing_table(metrics)
    assert "| K: train, or load from the cache | 286 |" in timing and "| **total** | 298 (5 min) |" in timing
    laddered = timing_table({"timing": {"adaptive": 100.0, "ladder_x1": 40.0, "ladder_x2": 60.0, "total": 100.0}})
    assert laddered.splitlines()[2:] == ["| threat models: the adaptive (white-box) attacks and the baselines' APGD | 100 |",
                                         "| of which the attacks of ladder rung ×1 | 40 |",
                                         "| of which the attacks of ladder rung ×2 | 60 |", "| **total** | 100 (2 min) |"]
    summary = [{"fpr_target": 0.1, "norm": "linf", "epsilon": epsilon, "defense": defense, "over": "all attacks",
                "accuracy_m": 0.5, "robust_accuracy_with_detection": 0.25, "success_rate": 0.5,
                "accuracy_unmask": 0.5 if defense == "UnMask" else None, "accuracy_system": 0.5, "intervals": {}}
               for epsilon in (8.0, 16.0, 32.0) for defense in ("UnMask", "undefended M")]
    table = threat_models_table({"adaptive_summary": summary}, epsilons=(8, 16), note=False)
    assert [line.split(" | ")[2] for line in table.splitlines()[2:]] == ["8", "16"]
    assert table.startswith("| FPR | norm |")

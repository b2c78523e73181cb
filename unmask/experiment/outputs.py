"""What a run leaves behind: ``metrics.json``, ``per_image.csv``, ``tables.md`` and the figures,
all written atomically from scored predictions (the folder's layout: ``experiment.folder``).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unmask.attacks import AttackVector
from unmask.constants import NO_PREDICTION
from unmask.evaluation import (
    DetectionCurves,
    Scored,
    Thresholds,
    clean_metrics,
    detection_curves,
    summary_metrics,
    vector_metrics,
)
from unmask.experiment.evaluator import Evaluator
from unmask.experiment.folder import RunFolder
from unmask.experiment.stages import TrainedPartExtractor
from unmask.io import atomic_path, atomic_write_text, load_checkpoint
from unmask.models.part_extractor import PartExtractor
from unmask.parts import PARTS, ClassSet
from unmask.report import (
    ExamplePanel,
    RocSeries,
    format_tables,
    plot_accuracy,
    plot_examples,
    plot_ladder,
    plot_robust,
    plot_roc,
    plot_threat_models,
    plot_training,
)
from unmask.train.loop import read_kept_epoch

RESULT_FORMAT = 7
"""2: the adaptive evaluation's sections (``adaptive``, ``adaptive_summary``), strict JSON (null
for undefined numbers); 3: every adaptive row and worst case names its defense and carries 95%
intervals, the deployed decision's accuracy (``accuracy_system``), the attack that did the most
per figure (``strongest``) and the paired differences to the baselines (``adaptive_comparisons``);
4: UnMask-R's defenses among them, each with its own thresholds, the robust K's test metrics
(``k_robust``, null without one), each defense's clean figures at each threshold (``defenses``),
and M alone's rows with no threshold (null); 5: per UnMask-like defense and threshold, the share of
the adaptive sample that no K could defend (``unflagged_wrong_class``); 6: the run's ``provenance`` (its
code's commit, date, command line, library versions and machine: ``unmask.environment``); 7: the
budget ladder (``adaptive_ladder``: its rungs, each headline figure's curve over them and whether
it converged; at one rung, the offsets a published ladder measured on the same models), each
adaptive row's ``rung``, each rung's attack seconds in ``timing`` (``ladder_x<rung>``), and M
alone's attacks given only the images a smaller budget left standing, as UnMask's are. Every section is rebuilt from the saved results on
each run, so an older folder is re-reported in the current format by running it again."""
K_METRICS = ("map_mask", "map_box", "map_mask_50", "map_box_50", "part_precision", "part_recall")


def write_report(evaluator: Evaluator, results: Mapping[str, Any], attacked: dict[AttackVector, Scored],
                 thresholds: Thresholds, k_metrics: dict[str, Any], adaptive: dict[str, Any], *,
                 k_robust_metrics: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """The run's ``per_image.csv``, ``tables.md`` and figures; returns (every figure of
    ``metrics.json`` less its timing, the tables). ``k_robust_metrics``: the robust K's test
    metrics (None: the run has no robust K)."""
    labels, clean, class_set, folder = evaluator.labels, evaluator.clean(), evaluator.class_set, evaluator.folder
    curves = {vector: detection_curves(labels, clean, scored) for vector, scored in attacked.items()}
    models = {"m": evaluator.m.description,
              "adv_trained": evaluator.adv_trained.description if evaluator.adv_trained is not None else None,
              "weights": evaluator.weights_files()}
    metrics = {**build_metrics(results, class_set, labels, clean, attacked, curves, thresholds, k_metrics, models),
               "k_robust": None if k_robust_metrics is None else {
                   **{key: k_robust_metrics.get(key) for key in K_METRICS},
                   "training": robust_training_record(evaluator.k_robust)},
               **adaptive}
    write_per_image(folder.path / "per_image.csv", list(evaluator.test.names), labels, class_set, clean, attacked)
    tables = format_tables(metrics)
    atomic_write_text(folder.path / "tables.md", tables)
    write_figures(folder, metrics, labels, class_set, clean, attacked, curves, evaluator.k.extractor,
                  evaluator.training_histories())
    return metrics, tables


# --- metrics.json -------------------------------------------------------------------------------


ROBUST_TRAINING_FIGURES = ("loss", "val_part_recall", "val_vanish_part_recall", "val_clean_reclassify_accuracy",
                           "val_reclassify_accuracy", "seconds")
"""The robust K's per-epoch figures ``metrics.json`` keeps (``robust_training_record``)."""


def robust_training_record(k_robust: TrainedPartExtractor | None) -> dict[str, Any] | None:
    """The robust K's fine-tune, per epoch (``ROBUST_TRAINING_FIGURES`` its history has) and the
    epoch whose weights it kept; None when the run did not train it (``--k-checkpoint``)."""
    if k_robust is None or not k_robust.history:
        return None
    return {"kept_epoch": read_kept_epoch(k_robust.directory),
            "epochs": [{"epoch": record["epoch"], **{key: record[key] for key in ROBUST_TRAINING_FIGURES
                                                     if key in record}} for record in k_robust.history]}


def build_metrics(results: Mapping[str, Any], class_set: ClassSet, labels: np.ndarray, clean: Scored,
                  attacked: dict[AttackVector, Scored], curves: dict[AttackVector, DetectionCurves],
                  thresholds: Thresholds, k_metrics: dict[str, Any], models: dict[str, Any]) -> dict[str, Any]:
    """Every figure of the run (``metrics.json`` less its timing); ``results`` is the
    configuration that determined them."""
    entries = [{"name": vector.name, "norm": vector.norm.name, "epsilon": vector.epsilon,
                **vector_metrics(labels, clean, scored, thresholds, curves[vector])}
               for vector, scored in attacked.items()]
    return {
        "format": RESULT_FORMAT,
        "config": dict(results),
        "classes": list(class_set.classes),
        "models": models,
        "clean": clean_metrics(labels, clean),
        "k": {key: k_metrics.get(key) for key in K_METRICS},
        "thresholds": {"target_fpr": thresholds.target_fpr, "set_jaccard": thresholds.set_jaccard,
                       "soft_jaccard": thresholds.soft_jaccard},
        "attacks": entries,
        "summary": summary_metrics(entries),
    }


# --- per_image.csv ------------------------------------------------------------------------------


def write_per_image(path: Path, image_names: list[str], labels: np.ndarray, class_set: ClassSet, clean: Scored,
                    attacked: dict[AttackVector, Scored]) -> None:
    """One row per test image and attack (``clean`` rows included): what M, the baseline and K said."""

    def name(index: int) -> str:
        return "" if index == NO_PREDICTION else class_set.classes[index]

    header = ["image", "label", "attack", "epsilon", "m_prediction", "adv_trained_prediction", "parts",
              "detection_score", "detection_score_soft", "unmask_prediction", "unmask_prediction_soft"]
    with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for attack_label, epsilon, scored in (("clean", 0.0, clean),
                                              *((v.name, v.epsilon, s) for v, s in attacked.items())):
            predictions = scored.predictions
            for row in range(len(labels)):
                writer.writerow([
                    image_names[row], class_set.classes[labels[row]], attack_label, f"{epsilon:g}",
                    name(predictions.m[row]),
                    "" if predictions.adv_trained is None else name(predictions.adv_trained[row]),
                    ";".join(PARTS[j] for j in np.flatnonzero(predictions.parts[row])),
                    f"{scored.detection[row]:.4f}", f"{scored.detection_soft[row]:.4f}", name(scored.unmask[row]),
                    name(scored.unmask_soft[row]),
                ])


# --- figures ------------------------------------------------------------------------------------


def write_figures(folder: RunFolder, metrics: dict[str, Any], labels: np.ndarray, class_set: ClassSet,
                  clean: Scored, attacked: dict[AttackVector, Scored], curves: dict[AttackVector, DetectionCurves],
                  extractor: PartExtractor, histories: Mapping[str, list[dict[str, float]] | None]) -> None:
    """The ROC curves, the accuracy bars, the training curves, the threat-model figure (with a
    robust K, also UnMask-R's comparison), and the example panel (K's parts on the strongest PGD
    vector's example, clean and attacked)."""
    plot_roc([RocSeries(v.label, c.set_jaccard.fpr, c.set_jaccard.tpr, c.set_jaccard.auc) for v, c in curves.items()],
             [RocSeries(v.label, c.soft_jaccard.fpr, c.soft_jaccard.tpr, c.soft_jaccard.auc)
              for v, c in curves.items()],
             folder.path / "roc")
    plot_accuracy(metrics, folder.path / "accuracy")
    plot_training(histories, folder.path / "training")
    if metrics.get("adaptive"):
        plot_threat_models(metrics, folder.path / "threat_models")
        if len(metrics.get("adaptive_ladder", {}).get("rungs", [])) > 1:
            plot_ladder(metrics, folder.path / "ladder")
        if metrics.get("k_robust") is not None:
            plot_robust(metrics, folder.path / "robust")
    if attacked:
        vector = max(attacked, key=lambda v: (v.name == "pgd_linf", v.epsilon))  # the strongest PGD if run
        example = load_checkpoint(folder.example(vector))
        _example_figure(folder.path / "example", example, vector, labels, class_set, clean, attacked[vector],
                        extractor)


def _example_figure(path_stem: Path, example: dict[str, Any], vector: AttackVector, labels: np.ndarray,
                    class_set: ClassSet, clean: Scored, attacked: Scored, extractor: PartExtractor) -> None:
    index = int(example["index"])
    images = torch.stack([example["clean"], example["adversarial"]])
    extraction = extractor.extract(images, keep_detections=True)
    panels = []
    for row, (title, scored) in enumerate((("clean", clean), (vector.label, attacked))):
        detections = extraction.detections[row]
        unmask = scored.unmask[index]
        verdict = "no parts of any class" if unmask == NO_PREDICTION else class_set.classes[unmask]
        caption = (f"label {class_set.classes[labels[index]]} · M says {class_set.classes[scored.m[index]]}\n"
                   f"detection score {scored.detection[index]:.2f} · UnMask says {verdict}")
        panels.append(ExamplePanel(title, images[row].permute(1, 2, 0).numpy(), detections.masks,
                                   detections.parts, caption))
    plot_examples(panels, path_stem)

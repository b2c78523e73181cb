"""What a run leaves behind: its folder and name, ``metrics.json``, ``per_image.csv``,
``tables.md`` and the figures, all written atomically from scored predictions.

Layout of ``<output dir>/<run name>/``: ``config.json`` (the result-determining configuration),
``clean.npz`` and ``validation.npz`` (clean predictions of the test and validation images),
``vectors/<attack>-eps<epsilon>.npz`` (one per attack vector, written as it finishes, with the
example images of the figure beside it), then the reports.
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unmask.attacks import AttackVector
from unmask.config import Config
from unmask.defense import NO_PREDICTION
from unmask.evaluation import DetectionCurves, Scored, Thresholds, clean_metrics, summary_metrics, vector_metrics
from unmask.experiment.plan import Plan
from unmask.io import atomic_path, load_checkpoint, stable_hash
from unmask.models.part_extractor import PartExtractor
from unmask.parts import PARTS, ClassSet
from unmask.report import ExamplePanel, RocSeries, plot_accuracy, plot_examples, plot_roc, plot_threat_models

NOT_RESULTS = frozenset({"verbosity", "workers", "device", "output_dir", "run_name", "grid_class_sets", "grid_models",
                         "grid_shard", "synthetic_workers"})
"""Configuration fields that do not change a run's numbers (left out of its name's hash)."""

RESULT_FORMAT = 2
"""2: the adaptive evaluation's sections (``adaptive``, ``adaptive_summary``), strict JSON (null
for undefined numbers)."""
K_METRICS = ("map_mask", "map_box", "map_mask_50", "map_box_50", "part_precision", "part_recall")


def result_config(config: Config) -> dict[str, Any]:
    """The fields that determine a run's numbers, as JSON-ready values."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in NOT_RESULTS}


def run_name(plan: Plan) -> str:
    """``<class set>-<model>[-advM]-<hash of the result-determining configuration>``, or ``--run-name``."""
    config = plan.config
    if config.run_name:
        return config.run_name
    adversarial = "-advM" if config.m_adv_trained else ""
    return f"{plan.class_set.name}-{plan.m.architecture}{adversarial}-{stable_hash(result_config(config))}"


@dataclass(frozen=True)
class RunFolder:
    """The files of one run."""

    path: Path

    @property
    def clean(self) -> Path:
        return self.path / "clean.npz"

    @property
    def validation(self) -> Path:
        return self.path / "validation.npz"

    def vector(self, vector: AttackVector) -> Path:
        return self.path / "vectors" / f"{vector.name}-eps{vector.epsilon:g}.npz"

    def example(self, vector: AttackVector) -> Path:
        return self.path / "vectors" / f"{vector.name}-eps{vector.epsilon:g}-example.pt"


def save_example(path: Path, index: int, clean: torch.Tensor, adversarial: torch.Tensor) -> None:
    """The example figure's image pair (the clean test image ``index`` and its attacked version)."""
    with atomic_path(path) as temporary:
        torch.save({"index": index, "clean": clean.clone(), "adversarial": adversarial.clone()}, temporary)


def example_candidates(labels: np.ndarray, clean: Scored, attacked: Scored) -> np.ndarray:
    """Positions in one batch of the example figure's candidates, best first (-1: none): the
    first image M gets right clean and wrong attacked and UnMask re-classifies correctly, the
    first such image whatever UnMask says, and the batch's first image."""
    fooled = (clean.m == labels) & (attacked.m != labels)
    firsts = [np.flatnonzero(tier)[:1] for tier in (fooled & (attacked.unmask == labels), fooled)]
    return np.array([int(first[0]) if first.size else -1 for first in firsts] + [0], dtype=np.int64)


def choose_example(batch_candidates: list[np.ndarray]) -> tuple[int, int]:
    """(batch, candidate) of the example among every batch's ``example_candidates``, in batch
    order: the earliest image of the best tier any batch found, else the first image."""
    for tier in range(2):
        for batch, candidates in enumerate(batch_candidates):
            if candidates[tier] >= 0:
                return batch, tier
    return 0, 2


# --- metrics.json -------------------------------------------------------------------------------


def build_metrics(plan: Plan, labels: np.ndarray, clean: Scored, attacked: dict[AttackVector, Scored],
                  curves: dict[AttackVector, DetectionCurves], thresholds: Thresholds, k_metrics: dict[str, Any],
                  models: dict[str, str | None]) -> dict[str, Any]:
    """Every figure of the run (``metrics.json`` less its timing)."""
    entries = [{"name": vector.name, "norm": vector.norm, "epsilon": vector.epsilon,
                **vector_metrics(labels, clean, scored, thresholds, curves[vector])}
               for vector, scored in attacked.items()]
    return {
        "format": RESULT_FORMAT,
        "config": result_config(plan.config),
        "classes": list(plan.class_set.classes),
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
                  extractor: PartExtractor) -> None:
    """The ROC curves, the accuracy bars and the example panel (K's parts on the strongest PGD
    vector's example, clean and attacked)."""
    plot_roc([RocSeries(v.label, c.set_jaccard.fpr, c.set_jaccard.tpr, c.set_jaccard.auc) for v, c in curves.items()],
             [RocSeries(v.label, c.soft_jaccard.fpr, c.soft_jaccard.tpr, c.soft_jaccard.auc)
              for v, c in curves.items()],
             folder.path / "roc")
    plot_accuracy(metrics, folder.path / "accuracy")
    if metrics.get("adaptive"):
        plot_threat_models(metrics, folder.path / "threat_models")
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

"""The experiment: data -> M, adversarially trained M, K -> attacks -> UnMask -> metrics -> report.

``run_experiment(config)`` is what ``python main.py`` runs. Every stage is cached so that an
interrupted or finished run recomputes nothing: trained models under
``<output dir>/models/<kind>-<hash of what determines them>/``, and the run's own results under
``<output dir>/<run name>/`` (clean predictions, then one file per attack vector as it finishes),
all written atomically. The stage functions (``prepare_data``, ``trained_classifiers``,
``trained_part_extractor``) also serve the ``train-m`` and ``train-k`` commands.

``config`` is the repository's ``config.Config`` (any object with its fields); this module maps
it onto the keyword arguments of the package's functions, and nothing below it sees it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from unmask.attacks import AttackVector, attack_vector, parse_attack_vectors
from unmask.data.coco import PartSegmentationDataset, split_paths
from unmask.data.folders import ClassFolderDataset
from unmask.data.synthetic import SyntheticSpec, ensure_synthetic
from unmask.defense import NO_PREDICTION, reclassify_batch
from unmask.evaluation import (
    Predictions,
    Thresholds,
    clean_metrics,
    detection_score_pair,
    fix_thresholds,
    summary_metrics,
    vector_metrics,
)
from unmask.io import atomic_path, atomic_write_json, atomic_write_text, load_checkpoint, stable_hash
from unmask.metrics import roc
from unmask.models.classifier import predict
from unmask.models.part_extractor import (
    PartExtractor,
    build_part_extractor,
    part_extractor_cache_key,
)
from unmask.parts import PARTS, class_set_classes
from unmask.report import (
    ExamplePanel,
    RocSeries,
    format_grid_table,
    format_tables,
    plot_accuracy,
    plot_examples,
    plot_roc,
)
from unmask.runtime import Distributed, init_distributed, resolve_device, seed_everything
from unmask.train.classifier import (
    ClassifierSpec,
    classifier_specs,
    load_trained_classifier,
    train_or_load_classifier,
)
from unmask.train.part_extractor import (
    WEIGHTS_FILE,
    evaluate_part_extractor,
    load_part_extractor_weights,
    train_part_extractor,
)

NOT_RESULTS = frozenset({"verbosity", "workers", "device", "output_dir", "run_name", "grid_class_sets", "grid_models",
                         "synthetic_workers"})
"""Configuration fields that do not change a run's numbers (left out of its name's hash)."""

RESULT_FORMAT = 1


# --- small helpers ---------------------------------------------------------------------------


class StageTimer:
    """Wall-clock seconds per named stage, for ``metrics.json`` and the benchmark."""

    def __init__(self, verbose: bool) -> None:
        self.seconds: dict[str, float] = {}
        self.verbose = verbose

    @contextmanager
    def stage(self, name: str, message: str) -> Iterator[None]:
        if self.verbose:
            tqdm.write(f"[{name}] {message}")
        started = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


def _seed_for(*parts: object) -> int:
    return int(stable_hash(list(parts), length=12), 16)


def result_config(config: Any) -> dict[str, Any]:
    """The fields that determine a run's numbers, as JSON-ready values."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in NOT_RESULTS}


def run_name(config: Any) -> str:
    """``<class set>-<model>[-advM]-<hash of the result-determining configuration>``, or ``--run-name``."""
    if config.run_name:
        return config.run_name
    adversarial = "-advM" if config.m_adv_trained else ""
    return f"{config.class_set}-{config.model}{adversarial}-{stable_hash(result_config(config))}"


# --- stage: data ------------------------------------------------------------------------------


def synthetic_spec(config: Any) -> SyntheticSpec:
    """The synthetic world the configuration asks for (every class set, so --class-set never regenerates)."""
    return SyntheticSpec(image_size=config.image_size, images_per_class=config.synthetic_images_per_class,
                         k_images=config.synthetic_k_images, distractor_prob=config.synthetic_distractor_prob,
                         seed=config.seed)


def prepare_data(config: Any, distributed: Distributed) -> None:
    """Generate the synthetic world when it is missing or differs from the configuration (on the
    main process; the others wait). Real datasets are checked by their loaders."""
    if config.dataset == "synthetic" and distributed.is_main:
        ensure_synthetic(config.data_dir, synthetic_spec(config), progress=config.verbosity > 0,
                         workers=config.synthetic_workers or None)
    distributed.barrier()


def classifier_data(config: Any) -> dict[str, ClassFolderDataset]:
    """M's train, val and test splits of the configured class set, decoded once into memory."""
    return {split: ClassFolderDataset(config.data_dir, config.class_set, split, image_size=config.image_size,
                                      cache=True) for split in ("train", "val", "test")}


# --- stage: M and the adversarially trained M -------------------------------------------------

CLASSIFIER_OPTIONS = ("model", "image_size", "pretrained", "weights_path", "epochs", "batch_size", "optimizer", "lr",
                      "momentum", "weight_decay", "nesterov", "lr_schedule", "augment", "seed", "adv_training",
                      "adv_epsilon", "adv_steps", "adv_step_size", "adv_random_start", "adv_epochs")


def classifier_specs_for(config: Any, data: dict[str, ClassFolderDataset]) -> tuple[ClassifierSpec, ClassifierSpec | None]:
    """The specs of the standard and the adversarially trained M (None without the baseline, and
    always built when M itself is to be the adversarially trained one)."""
    options = {name: getattr(config, name) for name in CLASSIFIER_OPTIONS}
    options["adv_training"] = config.adv_training or config.m_adv_trained
    return classifier_specs(**options, classes=data["train"].classes,
                            data_fingerprint=stable_hash([data["train"].fingerprint(), data["val"].fingerprint()]))


@dataclass
class TrainedClassifier:
    model: nn.Module
    description: str
    seconds: float


def trained_classifiers(config: Any, data: dict[str, ClassFolderDataset], *, device: torch.device,
                        ) -> tuple[TrainedClassifier, TrainedClassifier | None]:
    """(the M UnMask protects, the adversarial-training baseline or None), trained or loaded from
    the cache. With ``m_adv_trained`` the protected M is the adversarially trained one."""
    standard, adversarial = classifier_specs_for(config, data)
    trained: dict[str, TrainedClassifier] = {}
    for role, spec in (("standard", standard), ("adversarial", adversarial)):
        if spec is None or (role == "standard" and config.m_adv_trained):
            continue
        if role == "standard" and config.m_checkpoint:
            model = load_trained_classifier(config.m_checkpoint, spec.model, len(spec.classes), device=device)
            trained[role] = TrainedClassifier(model, f"{spec.model} from {config.m_checkpoint}", 0.0)
            continue
        result = train_or_load_classifier(
            spec, train_set=data["train"], val_set=data["val"], models_dir=Path(config.output_dir) / "models",
            device=device, allow_random_init=config.allow_random_init, workers=config.workers, amp=config.amp,
            progress=config.verbosity > 0,
        )
        seconds = sum(record["seconds"] for record in result.history)
        trained[role] = TrainedClassifier(
            result.model, f"{spec.model} (models/{result.checkpoint_dir.name}), best epoch {result.best_epoch} of "
                          f"{spec.epochs}",
            seconds)
    protected = trained["adversarial"] if config.m_adv_trained else trained["standard"]
    baseline = trained.get("adversarial") if config.adv_training else None
    return protected, baseline


# --- stage: K ---------------------------------------------------------------------------------


def part_extractor_directory(config: Any) -> Path:
    """``<output dir>/models/k-<key>/``: the key hashes everything that determines the trained K
    (architecture, schedule, seed and the training annotations themselves)."""
    annotation_file = split_paths(config.data_dir, "train")[0]
    if not annotation_file.is_file():
        raise FileNotFoundError(f"K's training annotations {annotation_file} do not exist; expected "
                                f"<data dir>/VOC2010/train.json (python main.py prepare builds the synthetic ones)")
    key = part_extractor_cache_key(
        model=config.k_model, image_size=config.image_size, pretrained=config.k_pretrained,
        epochs=config.k_epochs, batch_size=config.k_batch_size, lr=config.k_lr, momentum=config.k_momentum,
        weight_decay=config.k_weight_decay, warmup_steps=config.k_warmup_steps, seed=config.seed,
        nms_threshold=config.k_nms_threshold, max_detections=config.k_max_detections, dataset=config.dataset,
        train_annotations=stable_hash(annotation_file.read_bytes().decode("utf-8"), length=16),
    )
    return Path(config.output_dir) / "models" / f"k-{key}"


def trained_part_extractor(config: Any, *, device: torch.device) -> tuple[PartExtractor, Path]:
    """K trained as the configuration says (resuming or reusing its cache folder), or loaded from
    ``--k-checkpoint``; returns the extractor and its folder."""
    seed_everything(config.seed)
    model = build_part_extractor(
        config.k_model, image_size=config.image_size, pretrained=config.k_pretrained and not config.k_checkpoint,
        weights_path=config.k_weights_path or None, allow_random_init=config.allow_random_init,
        nms_threshold=config.k_nms_threshold, max_detections=config.k_max_detections,
    )
    if config.k_checkpoint:
        directory = Path(config.k_checkpoint).parent
        load_part_extractor_weights(model, config.k_checkpoint)
    else:
        directory = part_extractor_directory(config)
        if not (directory / WEIGHTS_FILE).is_file():
            # a mirrored photo of a car's left side shows a right side; the synthetic sides differ in colour
            train_set = PartSegmentationDataset(*split_paths(config.data_dir, "train"), hflip_prob=0.5,
                                                mirror_sides=config.dataset != "synthetic")
            val_set = PartSegmentationDataset(*split_paths(config.data_dir, "val"))
            train_part_extractor(
                model, train_set, val_set, epochs=config.k_epochs, batch_size=config.k_batch_size, lr=config.k_lr,
                momentum=config.k_momentum, weight_decay=config.k_weight_decay, warmup_steps=config.k_warmup_steps,
                device=device, checkpoint_dir=directory, workers=config.workers, seed=config.seed, amp=config.amp,
                score_threshold=config.k_score_threshold, progress=config.verbosity > 0,
            )
        load_part_extractor_weights(model, directory / WEIGHTS_FILE)
    extractor = PartExtractor(model, score_threshold=config.k_score_threshold, device=device)
    return extractor, directory


def part_extractor_metrics(config: Any, extractor: PartExtractor, directory: Path) -> dict[str, Any]:
    """K's COCO mAP and part-set precision/recall on the test split, computed once per K and
    score threshold and cached beside its weights."""
    path = directory / f"metrics-test-thr{config.k_score_threshold:g}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return evaluate_part_extractor(extractor, *split_paths(config.data_dir, "test"), output_file=path,
                                   progress=config.verbosity > 0)


# --- stage: predictions -----------------------------------------------------------------------


def _extract(extractor: PartExtractor, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    extraction = extractor.extract(images)
    return extraction.presence, extraction.scores


def clean_predictions(images: torch.Tensor, protected: nn.Module, baseline: nn.Module | None,
                      extractor: PartExtractor) -> Predictions:
    parts, scores = _extract(extractor, images)
    return Predictions(m=predict(protected, images).cpu().numpy(), parts=parts, part_scores=scores,
                       adv_trained=None if baseline is None else predict(baseline, images).cpu().numpy())


def attacked_predictions(vector: AttackVector, images: torch.Tensor, labels: torch.Tensor, protected: nn.Module,
                         baseline: nn.Module | None, extractor: PartExtractor, *, seed: int,
                         attack_options: dict[str, Any]) -> tuple[Predictions, torch.Tensor]:
    """M's and K's view of the images attacked through M's gradients, and the baseline's
    accuracy-relevant prediction on images attacked through its own gradients (gray-box: K is
    never attacked). Also returns the adversarial images (against M)."""
    torch.manual_seed(_seed_for(seed, vector.label, "m"))
    adversarial = attack_vector(protected, images, labels, vector, **attack_options)
    parts, scores = _extract(extractor, adversarial)
    baseline_predictions = None
    if baseline is not None:
        torch.manual_seed(_seed_for(seed, vector.label, "adv-trained"))
        against_baseline = attack_vector(baseline, images, labels, vector, **attack_options)
        baseline_predictions = predict(baseline, against_baseline).cpu().numpy()
    predictions = Predictions(m=predict(protected, adversarial).cpu().numpy(), parts=parts, part_scores=scores,
                              adv_trained=baseline_predictions)
    return predictions, adversarial


# --- the run ------------------------------------------------------------------------------------


def _vector_file(directory: Path, vector: AttackVector) -> Path:
    return directory / "vectors" / f"{vector.name}-eps{vector.epsilon:g}.npz"


def _example_file(directory: Path, vector: AttackVector) -> Path:
    return directory / "vectors" / f"{vector.name}-eps{vector.epsilon:g}-example.pt"


def _choose_example(labels: np.ndarray, clean: Predictions, attacked: Predictions, class_set: str) -> int:
    """An image M gets right clean and wrong attacked, that UnMask re-classifies correctly; the
    first fooled one otherwise, else the first image."""
    unmask = reclassify_batch(attacked.parts, class_set)
    fooled = (clean.m == labels) & (attacked.m != labels)
    for candidates in (fooled & (unmask == labels), fooled):
        if candidates.any():
            return int(np.flatnonzero(candidates)[0])
    return 0


def run_experiment(config: Any) -> Path:
    """Run (or resume, or re-report) the experiment the configuration describes; returns its folder."""
    timer = StageTimer(config.verbosity > 0)
    device = resolve_device(config.device)
    distributed = init_distributed(device)
    verbose = config.verbosity > 0 and distributed.is_main
    classes = class_set_classes(config.class_set)
    vectors = parse_attack_vectors(config.attacks)

    with timer.stage("data", f"data: {config.dataset} in {config.data_dir}"):
        prepare_data(config, distributed)
        data = classifier_data(config)
    with timer.stage("train_m", "M and the adversarially trained M: train or load from the cache"):
        protected, baseline = trained_classifiers(config, data, device=device)
    with timer.stage("train_k", "K: train or load from the cache"):
        extractor, k_directory = trained_part_extractor(config, device=device)
    if not distributed.is_main:
        return Path(config.output_dir)  # training was shared; the evaluation runs on the main process
    with timer.stage("eval_k", "K: COCO mAP and part precision/recall on the test split"):
        k_metrics = part_extractor_metrics(config, extractor, k_directory)

    directory = Path(config.output_dir) / run_name(config)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_json(directory / "config.json", {"format": RESULT_FORMAT, **result_config(config)})
    test_images, test_labels = data["test"].tensors()
    labels = test_labels.numpy()
    if config.eval_max_images:
        test_images, test_labels, labels = (test_images[:config.eval_max_images],
                                            test_labels[:config.eval_max_images], labels[:config.eval_max_images])
    baseline_model = baseline.model if baseline is not None else None

    with timer.stage("clean", f"clean predictions of M, the baseline and K ({len(labels)} test images)"):
        clean_file, validation_file = directory / "clean.npz", directory / "validation.npz"
        if not clean_file.is_file():
            clean_predictions(test_images, protected.model, baseline_model, extractor).save(clean_file)
        if not validation_file.is_file():
            validation_images, _ = data["val"].tensors()
            clean_predictions(validation_images, protected.model, None, extractor).save(validation_file)
        clean, validation = Predictions.load(clean_file), Predictions.load(validation_file)
        thresholds = fix_thresholds(validation, config.class_set, config.detection_fpr)

    attack_options = {"steps": config.attack_steps, "original_step": config.attack_original_step,
                      "decay": config.mim_decay, "batch_size": config.attack_batch_size}
    attacked: dict[AttackVector, Predictions] = {}
    with timer.stage("attacks", f"{len(vectors)} attack vectors: attack M (and the baseline), run K on the results"):
        for vector in tqdm(vectors, desc="attack vectors", disable=not verbose, dynamic_ncols=True):
            path = _vector_file(directory, vector)
            if not path.is_file():
                predictions, adversarial = attacked_predictions(
                    vector, test_images, test_labels, protected.model, baseline_model, extractor, seed=config.seed,
                    attack_options=attack_options)
                index = _choose_example(labels, clean, predictions, config.class_set)
                with atomic_path(_example_file(directory, vector)) as temporary:
                    torch.save({"index": index, "clean": test_images[index].clone(),
                                "adversarial": adversarial[index].clone()}, temporary)
                predictions.save(path)  # last: its presence marks the vector as done
            attacked[vector] = Predictions.load(path)

    with timer.stage("report", f"metrics, tables and figures in {directory}"):
        metrics = _metrics(config, classes, labels, clean, attacked, thresholds, k_metrics, protected, baseline)
        _write_per_image(directory / "per_image.csv", data["test"], labels, classes, clean, attacked, config.class_set)
        tables = format_tables(metrics)
        atomic_write_text(directory / "tables.md", tables)
        _figures(directory, metrics, labels, clean, attacked, extractor, config.class_set, classes)
    metrics["timing"] = {**timer.seconds, "total": sum(timer.seconds.values())}
    atomic_write_json(directory / "metrics.json", metrics)
    if config.verbosity > 0:
        print("\n" + tables)
        print(f"results: {directory}/ (metrics.json, per_image.csv, tables.md, figures)")
    return directory


def _metrics(config: Any, classes: tuple[str, ...], labels: np.ndarray, clean: Predictions,
             attacked: dict[AttackVector, Predictions], thresholds: Thresholds, k_metrics: dict[str, Any],
             protected: TrainedClassifier, baseline: TrainedClassifier | None) -> dict[str, Any]:
    entries = [vector_metrics(vector, labels, clean, predictions, config.class_set, thresholds)
               for vector, predictions in attacked.items()]
    return {
        "format": RESULT_FORMAT,
        "config": result_config(config),
        "classes": list(classes),
        "models": {"m": protected.description, "adv_trained": baseline.description if baseline else None},
        "clean": clean_metrics(labels, clean, config.class_set),
        "k": {key: k_metrics.get(key) for key in ("map_mask", "map_box", "map_mask_50", "map_box_50",
                                                   "part_precision", "part_recall")},
        "thresholds": {"target_fpr": thresholds.target_fpr, "set_jaccard": thresholds.set_jaccard,
                       "soft_jaccard": thresholds.soft_jaccard},
        "attacks": entries,
        "summary": summary_metrics(entries),
    }


def _write_per_image(path: Path, test_set: ClassFolderDataset, labels: np.ndarray, classes: tuple[str, ...],
                     clean: Predictions, attacked: dict[AttackVector, Predictions], class_set: str) -> None:
    """One row per test image and attack (``clean`` rows included): what M, the baseline and K said."""

    def name(index: int) -> str:
        return "" if index == NO_PREDICTION else classes[index]

    header = ["image", "label", "attack", "epsilon", "m_prediction", "adv_trained_prediction", "parts",
              "detection_score", "detection_score_soft", "unmask_prediction", "unmask_prediction_soft"]
    with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for attack_label, epsilon, predictions in (("clean", 0.0, clean),
                                                   *((v.name, v.epsilon, p) for v, p in attacked.items())):
            set_scores, soft_scores = detection_score_pair(predictions, class_set)
            unmask = reclassify_batch(predictions.parts, class_set)
            unmask_soft = reclassify_batch(predictions.part_scores, class_set)
            for row in range(len(labels)):
                writer.writerow([
                    test_set.samples[row][0].name, classes[labels[row]], attack_label, f"{epsilon:g}",
                    name(predictions.m[row]),
                    "" if predictions.adv_trained is None else name(predictions.adv_trained[row]),
                    ";".join(PARTS[j] for j in np.flatnonzero(predictions.parts[row])),
                    f"{set_scores[row]:.4f}", f"{soft_scores[row]:.4f}", name(unmask[row]), name(unmask_soft[row]),
                ])


def _figures(directory: Path, metrics: dict[str, Any], labels: np.ndarray, clean: Predictions,
             attacked: dict[AttackVector, Predictions], extractor: PartExtractor, class_set: str,
             classes: tuple[str, ...]) -> None:
    set_curves, soft_curves = [], []
    clean_set, clean_soft = detection_score_pair(clean, class_set)
    for vector, predictions in attacked.items():
        attacked_set, attacked_soft = detection_score_pair(predictions, class_set)
        fooled = predictions.m != labels
        for curves, positive, negative in ((set_curves, attacked_set, clean_set),
                                           (soft_curves, attacked_soft, clean_soft)):
            curve = roc(positive[fooled], negative[fooled])
            curves.append(RocSeries(vector.label, curve.fpr, curve.tpr, curve.auc))
    plot_roc(set_curves, soft_curves, directory / "roc")
    plot_accuracy(metrics, directory / "accuracy")
    if attacked:
        vector = max(attacked, key=lambda v: (v.name == "pgd_linf", v.epsilon))  # the strongest PGD if run
        example = load_checkpoint(_example_file(directory, vector))
        _example_figure(directory, example, vector, labels, clean, attacked[vector], extractor, class_set, classes)


def _example_figure(directory: Path, example: dict[str, Any], vector: AttackVector, labels: np.ndarray,
                    clean: Predictions, attacked: Predictions, extractor: PartExtractor, class_set: str,
                    classes: tuple[str, ...]) -> None:
    index = int(example["index"])
    images = torch.stack([example["clean"], example["adversarial"]])
    extraction = extractor.extract(images, keep_detections=True)
    panels = []
    for row, (title, predictions, score) in enumerate((
        ("clean", clean, detection_score_pair(clean, class_set)[0][index]),
        (f"{vector.label}", attacked, detection_score_pair(attacked, class_set)[0][index]),
    )):
        detections = extraction.detections[row]
        unmask = reclassify_batch(predictions.parts[index:index + 1], class_set)[0]
        verdict = "no parts of any class" if unmask == NO_PREDICTION else classes[unmask]
        caption = (f"label {classes[labels[index]]} · M says {classes[predictions.m[index]]}\n"
                   f"detection score {score:.2f} · UnMask says {verdict}")
        panels.append(ExamplePanel(title, images[row].permute(1, 2, 0).numpy(), detections.masks,
                                   detections.parts, caption))
    plot_examples(panels, directory / "example")


# --- the grid --------------------------------------------------------------------------------


def run_grid(config: Any) -> Path:
    """The original's grid: grid class sets x grid models x {standard M, adversarially trained M},
    one after another; finished runs are re-reported from their saved results, not recomputed."""
    rows = []
    combinations = [(class_set, model, adversarial) for class_set in config.grid_class_sets
                    for model in config.grid_models for adversarial in (False, True)]
    for number, (class_set, model, adversarial) in enumerate(combinations, start=1):
        single = dataclasses.replace(config, class_set=class_set, model=model, m_adv_trained=adversarial, run_name="")
        if config.verbosity > 0:
            tqdm.write(f"=== grid {number}/{len(combinations)}: {class_set}, {model}, "
                       f"M {'adversarially trained' if adversarial else 'standard'} ===")
        directory = run_experiment(single)
        metrics = json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
        rows.append({"class_set": class_set, "model": model, "m_adv_trained": adversarial,
                     "clean_accuracy_m": metrics["clean"]["accuracy_m"], **metrics["summary"], "run": directory.name})
    grid_directory = Path(config.output_dir) / "grid"
    atomic_write_json(grid_directory / "grid.json", rows)
    table = format_grid_table(rows)
    atomic_write_text(grid_directory / "grid.md", table)
    if config.verbosity > 0:
        print("\n" + table)
    return grid_directory


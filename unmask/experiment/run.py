"""The experiment as a short orchestrator: ``run_experiment(plan)`` is what ``python main.py`` runs,
``run_grid(config)`` the original's grid of runs.

Every stage is cached, so an interrupted or finished run recomputes nothing: trained models in
``<output dir>/models/``, the run's own predictions in its folder (``outputs.RunFolder``), every
file written atomically. A saved result is reused only when the fingerprint it was stamped with
(data contents, model weights, options, seed; ``unmask.provenance``) matches; otherwise it is
recomputed and the console says what changed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from unmask.attacks import AttackVector
from unmask.config import Config
from unmask.data.sampling import stratified_sample
from unmask.evaluation import DetectionCurves, Predictions, Scored, detection_curves, fix_thresholds
from unmask.experiment.outputs import (
    RESULT_FORMAT,
    RunFolder,
    build_metrics,
    choose_example,
    result_config,
    run_name,
    save_example,
    write_figures,
    write_per_image,
)
from unmask.experiment.plan import Plan, build_plan
from unmask.experiment.stages import (
    attacked_predictions,
    clean_predictions,
    load_classifier_data,
    part_extractor_metrics,
    prepare_data,
    trained_classifiers,
    trained_part_extractor,
)
from unmask.io import atomic_write_json, atomic_write_text
from unmask.provenance import cached, digest
from unmask.report import format_grid_table, format_tables
from unmask.runtime import Runtime


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


def run_experiment(plan: Plan) -> Path:
    """Run (or resume, or re-report) the experiment ``plan`` describes; returns its folder."""
    runtime = Runtime.start(plan.device, workers=plan.workers, verbosity=plan.verbosity)
    timer = StageTimer(plan.verbosity > 0)

    with timer.stage("data", f"data: {plan.data.dataset} in {plan.data.root}"):
        prepare_data(plan.data, runtime)
        data = load_classifier_data(plan.data)
    with timer.stage("train_m", "M and the adversarially trained M: train or load from the cache"):
        m, adv_trained = trained_classifiers(plan, data, runtime)
    with timer.stage("train_k", "K: train or load from the cache"):
        k = trained_part_extractor(plan, runtime)
    if not runtime.distributed.is_main:
        return plan.output_dir  # training was shared; the evaluation runs on the main process
    with timer.stage("eval_k", "K: COCO mAP and part precision/recall on the test split"):
        k_metrics, _ = part_extractor_metrics(plan, k, runtime)

    folder = RunFolder(plan.output_dir / run_name(plan))
    folder.path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder.path / "config.json", {"format": RESULT_FORMAT, **result_config(plan.config)})
    all_images, all_labels = data["test"].tensors()
    chosen = stratified_sample(all_labels.numpy(), plan.evaluation.max_images, seed=plan.evaluation.seed)
    test_images, test_labels = all_images[chosen], all_labels[chosen]
    labels = test_labels.numpy()
    adv_trained_model = adv_trained.model if adv_trained is not None else None
    class_set = plan.class_set
    # what every saved prediction depends on besides its own options: the images and the models
    inputs = {"data": data["test"].fingerprint(), "images": digest(chosen.tolist()), "m": m.fingerprint,
              "adv_trained": adv_trained.fingerprint if adv_trained is not None else None, "k": k.fingerprint}

    with timer.stage("clean", f"clean predictions of M, the baseline and K ({len(labels)} test images)"):
        clean = Scored.of(cached(
            folder.clean, inputs, lambda: clean_predictions(test_images, m.model, adv_trained_model, k.extractor),
            save=Predictions.save, load=Predictions.load, what="clean test predictions", log=runtime.log), class_set)
        validation = cached(
            folder.validation, {"data": data["val"].fingerprint(), "m": m.fingerprint, "k": k.fingerprint},
            lambda: clean_predictions(data["val"].tensors()[0], m.model, None, k.extractor),
            save=Predictions.save, load=Predictions.load, what="clean validation predictions", log=runtime.log)
        thresholds = fix_thresholds(Scored.of(validation, class_set), plan.evaluation.detection_fpr)

    attacked: dict[AttackVector, Scored] = {}
    with timer.stage("attacks", f"{len(plan.vectors)} attack vectors: attack M (and the baseline), run K on the "
                                "results"):
        for vector in tqdm(plan.vectors, desc="attack vectors", disable=not runtime.progress, dynamic_ncols=True):
            fingerprint = {**inputs, "attack": {"vector": vector.label, **asdict(plan.attack)},
                           "seed": plan.evaluation.seed}

            def attack_vector(vector: AttackVector = vector) -> Predictions:
                predictions, adversarial = attacked_predictions(
                    vector, test_images, test_labels, m.model, adv_trained_model, k.extractor, options=plan.attack,
                    seed=plan.evaluation.seed)
                index = choose_example(labels, clean, Scored.of(predictions, class_set))
                save_example(folder.example(vector), index, test_images[index], adversarial[index])
                return predictions

            attacked[vector] = Scored.of(cached(folder.vector(vector), fingerprint, attack_vector,
                                                save=Predictions.save, load=Predictions.load,
                                                what=f"attack {vector.label}", log=runtime.log), class_set)

    with timer.stage("report", f"metrics, tables and figures in {folder.path}"):
        curves: dict[AttackVector, DetectionCurves] = {
            vector: detection_curves(labels, clean, scored) for vector, scored in attacked.items()}
        metrics = build_metrics(plan, labels, clean, attacked, curves, thresholds, k_metrics,
                                {"m": m.description, "adv_trained": adv_trained.description if adv_trained else None})
        image_names = [data["test"].samples[index][0].name for index in chosen]
        write_per_image(folder.path / "per_image.csv", image_names, labels, class_set, clean, attacked)
        tables = format_tables(metrics)
        atomic_write_text(folder.path / "tables.md", tables)
        write_figures(folder, metrics, labels, class_set, clean, attacked, curves, k.extractor)
    metrics["timing"] = {**timer.seconds, "total": sum(timer.seconds.values())}
    atomic_write_json(folder.path / "metrics.json", metrics)
    if plan.verbosity > 0:
        print("\n" + tables)
        print(f"results: {folder.path}/ (metrics.json, per_image.csv, tables.md, figures)")
    return folder.path


def run_grid(config: Config) -> Path:
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
        directory = run_experiment(build_plan(single))
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

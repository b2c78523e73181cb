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
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from unmask.attacks import AttackVector
from unmask.config import Config
from unmask.data.sampling import stratified_sample
from unmask.evaluation import DetectionCurves, Predictions, Scored, detection_curves, fix_thresholds
from unmask.experiment.adaptive import AdaptiveContext, adaptive_evaluation
from unmask.experiment.batches import resumable_result
from unmask.experiment.outputs import (
    RESULT_FORMAT,
    RunFolder,
    build_metrics,
    choose_example,
    example_candidates,
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
    k_splits_needed,
    load_classifier_data,
    part_extractor_metrics,
    prepare_data,
    trained_classifiers,
    trained_part_extractor,
)
from unmask.io import atomic_write_json, atomic_write_text
from unmask.provenance import digest
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
        prepare_data(plan.data, runtime, k_splits=k_splits_needed(plan))
        data = load_classifier_data(plan.data)
    with timer.stage("train_m", "M and the adversarially trained M: train or load from the cache"):
        m, adv_trained = trained_classifiers(plan, data, runtime)
        for trained in (m, adv_trained):
            if trained is not None:
                plan.inference.prepare(trained.model)
    precision = plan.inference.effective_precision(runtime.device)  # M's and the baseline's predictions
    # channels-last and compilation change M's (and so the attacks') float rounding: part of what made a result
    m_inference = {**asdict(plan.inference), "precision": precision}
    with timer.stage("train_k", "K: train or load from the cache"):
        k = trained_part_extractor(plan, runtime)
    with timer.stage("eval_k", "K: COCO mAP and part precision/recall on the test split"):
        k_metrics = part_extractor_metrics(plan, k, runtime)[0] if runtime.distributed.is_main else {}

    folder = RunFolder(plan.output_dir / run_name(plan))
    if runtime.distributed.is_main:
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
              "adv_trained": adv_trained.fingerprint if adv_trained is not None else None, "k": k.fingerprint,
              "m_inference": m_inference, "batch_size": plan.evaluation.batch_size}

    def predictions_in_batches(result: Path, fingerprint: dict[str, Any], images: torch.Tensor, compute: Any, *,
                               what: str, finish: Any = None) -> Predictions:
        return Predictions.from_arrays(resumable_result(
            result, fingerprint, count=len(images), batch_size=plan.evaluation.batch_size, compute=compute,
            runtime=runtime, what=what, finish=finish))

    def clean_batch(images: torch.Tensor, baseline: torch.nn.Module | None) -> Any:
        return lambda number, indices: (
            clean_predictions(images[indices], m.model, baseline, k.extractor, precision=precision).arrays(), {})

    with timer.stage("clean", f"clean predictions of M, the baseline and K ({len(labels)} test images)"):
        clean = Scored.of(predictions_in_batches(folder.clean, inputs, test_images,
                                                 clean_batch(test_images, adv_trained_model),
                                                 what="clean test predictions"), class_set)
        validation_images = data["val"].tensors()[0]
        validation = Scored.of(predictions_in_batches(
            folder.validation, {"data": data["val"].fingerprint(), "m": m.fingerprint, "k": k.fingerprint,
                                "m_inference": m_inference, "batch_size": plan.evaluation.batch_size},
            validation_images, clean_batch(validation_images, None), what="clean validation predictions"), class_set)
        thresholds = fix_thresholds(validation, plan.evaluation.detection_fpr)

    attacked: dict[AttackVector, Scored] = {}
    with timer.stage("attacks", f"{len(plan.vectors)} attack vectors: attack M (and the baseline), run K on the "
                                "results"):
        for vector in tqdm(plan.vectors, desc="attack vectors", disable=not runtime.progress, dynamic_ncols=True):
            fingerprint = {**inputs, "attack": {"vector": vector.label, **asdict(plan.attack)},
                           "seed": plan.evaluation.seed}

            def attack_batch(number: int, indices: np.ndarray, vector: AttackVector = vector) -> Any:
                predictions, adversarial = attacked_predictions(
                    vector, test_images[indices], test_labels[indices], m.model, adv_trained_model, k.extractor,
                    options=plan.attack, seed=plan.evaluation.seed, batch=number, precision=precision)
                positions = example_candidates(labels[indices], clean.subset(indices),
                                               Scored.of(predictions, class_set))
                return predictions.arrays(), {"candidates": np.where(positions >= 0, indices[positions.clip(0)], -1),
                                              "adversarial": adversarial[positions.clip(0)].numpy()}

            def save_the_example(extras: list[Any], vector: AttackVector = vector) -> None:
                batch, position = choose_example([batch["candidates"] for batch in extras])
                index = int(extras[batch]["candidates"][position])
                save_example(folder.example(vector), index, test_images[index],
                             torch.from_numpy(extras[batch]["adversarial"][position]))

            attacked[vector] = Scored.of(predictions_in_batches(
                folder.vector(vector), fingerprint, test_images, attack_batch, what=f"attack {vector.label}",
                finish=save_the_example), class_set)

    adaptive: dict[str, Any] = {}
    if plan.adaptive.enabled:
        vectors = ", ".join(vector.label for vector in plan.adaptive.vectors)
        with timer.stage("adaptive", f"threat models {', '.join(plan.adaptive.threat_models)} beside gray-box: "
                                     f"{vectors} on at most {plan.adaptive.max_images} test images"):
            adaptive = adaptive_evaluation(AdaptiveContext(
                plan=plan, runtime=runtime, folder=folder.path, images=test_images, labels=test_labels, clean=clean,
                validation=validation, validation_images=validation_images, m=m, adv_trained=adv_trained, k=k,
                gray_box=attacked, inputs=inputs, validation_data=data["val"].fingerprint(),
                precision=precision))

    if not runtime.distributed.is_main:
        return folder.path  # the main process reports
    with timer.stage("report", f"metrics, tables and figures in {folder.path}"):
        curves: dict[AttackVector, DetectionCurves] = {
            vector: detection_curves(labels, clean, scored) for vector, scored in attacked.items()}
        metrics = build_metrics(plan, labels, clean, attacked, curves, thresholds, k_metrics,
                                {"m": m.description, "adv_trained": adv_trained.description if adv_trained else None})
        metrics.update(adaptive)
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


def grid_plans(config: Config) -> list[Plan]:
    """The original's grid, in a fixed order: grid class sets x grid models x {standard M,
    adversarially trained M}."""
    return [build_plan(dataclasses.replace(config, class_set=class_set, model=model, m_adv_trained=adversarial,
                                           run_name=""))
            for class_set in config.grid_class_sets for model in config.grid_models for adversarial in (False, True)]


def run_grid(plan: Plan) -> Path | None:
    """Run the grid's configurations one after another (finished ones are re-reported from their
    saved results, not recomputed), or only this job's share of them (``--grid-shard``: each job
    writes its own results folders; ``grid_report`` combines them). Returns the grid's folder
    when this job ran the whole grid and wrote its table."""
    plans = grid_plans(plan.config)
    shard = plan.grid_shard
    mine = [number for number in range(len(plans)) if shard.takes(number)]
    for position, number in enumerate(mine, start=1):
        single = plans[number]
        if plan.verbosity > 0:
            share = "" if shard.whole else f" (job {shard.index} of {shard.count}: {position}/{len(mine)})"
            tqdm.write(f"=== grid {number + 1}/{len(plans)}{share}: {single.class_set.name}, {single.m.architecture}, "
                       f"M {'adversarially trained' if single.config.m_adv_trained else 'standard'} ===")
        run_experiment(single)
    return grid_report(plan.config) if shard.whole else None


def grid_report(config: Config) -> Path:
    """Combine the grid's finished configurations (their ``metrics.json``) into ``grid/grid.json``
    and ``grid/grid.md`` without recomputing anything; configurations not finished yet are named."""
    rows, pending = [], []
    for plan in grid_plans(config):
        metrics_file = plan.output_dir / run_name(plan) / "metrics.json"
        if not metrics_file.is_file():
            pending.append(f"{plan.class_set.name}/{plan.m.architecture}{'/advM' if plan.config.m_adv_trained else ''}")
            continue
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        rows.append({"class_set": plan.class_set.name, "model": plan.m.architecture,
                     "m_adv_trained": plan.config.m_adv_trained, "clean_accuracy_m": metrics["clean"]["accuracy_m"],
                     **metrics["summary"], "run": metrics_file.parent.name})
    grid_directory = Path(config.output_dir) / "grid"
    atomic_write_json(grid_directory / "grid.json", rows)
    table = format_grid_table(rows)
    atomic_write_text(grid_directory / "grid.md", table)
    if config.verbosity > 0:
        print("\n" + table)
        if pending:
            print(f"not finished yet ({len(pending)}): {', '.join(pending)}")
    return grid_directory

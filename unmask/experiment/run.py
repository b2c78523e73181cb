"""The experiment as a short orchestrator: ``run_experiment(plan)`` is what ``python main.py``
runs, ``run_grid(plan)`` the original's grid of runs.

Every stage is cached, so an interrupted or finished run recomputes nothing: trained models in
``<output dir>/models/`` (``ModelCache``), the run's own predictions in its folder (the
``Evaluator``'s results), every file written atomically. A saved result is reused only when
the fingerprint it was stamped with (data contents, model weights, options, seed;
``unmask.provenance``) matches; otherwise it is recomputed and the console says what changed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from unmask.environment import load_average, run_environment
from unmask.experiment.adaptive import adaptive_evaluation
from unmask.experiment.evaluator import Evaluator
from unmask.experiment.folder import RunFolder
from unmask.experiment.outputs import RESULT_FORMAT, write_report
from unmask.experiment.plan import Plan
from unmask.experiment.stages import (
    load_classifier_data,
    part_extractor_metrics,
    prepare_data,
    trained_classifiers,
    trained_part_extractor,
    trained_robust_part_extractor,
    trained_surrogate_part_extractor,
)
from unmask.io import atomic_write_json, atomic_write_text
from unmask.report import format_grid_table
from unmask.train.loop import ModelCache


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
    runtime = plan.runtime.start()
    main = runtime.distributed.is_main
    load_at_start = load_average()
    timer = StageTimer(plan.verbosity > 0)
    cache = ModelCache(plan.models_dir, runtime, plan.allow_random_init)
    k_precision = plan.inference.effective_precision(runtime.device)
    with timer.stage("data", f"data: {plan.data.dataset} in {plan.data.root}"):
        prepare_data(plan.data, runtime, k_splits=plan.k_splits)
        data = load_classifier_data(plan.data)
    with timer.stage("train_m", "M and the adversarially trained M: train or load from the cache"):
        m, adv_trained = trained_classifiers(plan.m, plan.adv_trained, data, cache, m_checkpoint=plan.m_checkpoint,
                                             inference=plan.inference)
    with timer.stage("train_k", "K: train or load from the cache"):
        k = trained_part_extractor(plan.k, plan.data, cache, checkpoint=plan.k_checkpoint, precision=k_precision)
    k_robust, k_robust_metrics = None, None
    if plan.k_robust is not None:
        with timer.stage("train_k_robust", "UnMask-R's robust K: fine-tune K adversarially or load from the cache"):
            k_robust = trained_robust_part_extractor(plan.k, plan.k_robust, plan.data, cache,
                                                     checkpoint=plan.k_checkpoint, precision=k_precision)
    with timer.stage("eval_k", "K: COCO mAP and part precision/recall on the test split"):
        k_metrics = part_extractor_metrics(k, plan.data, cache)[0] if main else {}
        if k_robust is not None:  # the price of robustness: the robust K's clean figures beside K's
            k_robust_metrics = part_extractor_metrics(k_robust, plan.data, cache)[0] if main else {}

    folder = RunFolder(plan.output_dir / plan.run_name)
    if main:
        folder.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder.path / "config.json", {"format": RESULT_FORMAT, **plan.results})
    evaluation = Evaluator.start(folder, runtime, plan.evaluation, plan.class_set, data, m, adv_trained, k,
                                 k_robust=k_robust)
    with timer.stage("clean", f"clean predictions of M, the baseline and K ({len(evaluation.test)} test images)"):
        evaluation.clean()
        thresholds = evaluation.thresholds(plan.evaluation.detection_fpr)
    with timer.stage("attacks", f"{len(plan.vectors)} attack vectors: attack M (and the baseline), run K on the "
                                "results"):
        attacked = evaluation.gray_box(plan.vectors, plan.attack)
    adaptive: dict[str, Any] = {}
    if plan.adaptive.enabled:
        spec = plan.adaptive
        with timer.stage("adaptive", f"threat models {', '.join(spec.threat_models)} beside gray-box: "
                                     f"{', '.join(v.label for v in spec.vectors)} on at most {spec.max_images} test "
                                     "images"):
            surrogate = trained_surrogate_part_extractor(plan.k, plan.data, cache, precision=k_precision) \
                if "transfer" in spec.threat_models else None
            adaptive = adaptive_evaluation(evaluation, spec, attacked, gray_box_options=plan.attack,
                                           surrogate=surrogate)
    if not main:
        return folder.path  # the main process reports
    with timer.stage("report", f"metrics, tables and figures in {folder.path}"):
        metrics, tables = write_report(evaluation, plan.results, attacked, thresholds, k_metrics, adaptive,
                                       k_robust_metrics=k_robust_metrics)
    # the stages' seconds beside what the report put there (each ladder rung's attack seconds)
    metrics["timing"] = {**metrics.get("timing", {}), **timer.seconds, "total": sum(timer.seconds.values())}
    # what made these figures: the code, command and machine (each stage's seconds are ``timing``)
    metrics["provenance"] = {"run": folder.path.name, **run_environment(runtime.device),
                             "load_average": {"start": load_at_start, "end": load_average()}}
    atomic_write_json(folder.path / "metrics.json", metrics)
    if plan.verbosity > 0:
        print("\n" + tables)
        print(f"results: {folder.path}/ (metrics.json, per_image.csv, tables.md, figures)")
    return folder.path


def run_grid(plan: Plan) -> Path | None:
    """Run the grid's configurations (``plan.grid``) one after another (finished ones are
    re-reported from their saved results, not recomputed), or only this job's share of them
    (``--grid-shard``: each job writes its own results folders; ``grid_report`` combines them).
    Returns the grid's folder when this job ran the whole grid and wrote its table."""
    shard = plan.grid_shard
    mine = [number for number in range(len(plan.grid)) if shard.takes(number)]
    for position, number in enumerate(mine, start=1):
        single = plan.grid[number]
        if plan.verbosity > 0:
            share = "" if shard.whole else f" (job {shard.index} of {shard.count}: {position}/{len(mine)})"
            tqdm.write(f"=== grid {number + 1}/{len(plan.grid)}{share}: {single.class_set.name}, "
                       f"{single.m.architecture}, M {'adversarially trained' if single.m.adversarial else 'standard'}"
                       " ===")
        run_experiment(single)
    return grid_report(plan) if shard.whole else None


def grid_report(plan: Plan) -> Path:
    """Combine the grid's finished configurations (their ``metrics.json``) into ``grid/grid.json``
    and ``grid/grid.md`` without recomputing anything; configurations not finished yet are named."""
    rows, pending = [], []
    for single in plan.grid:
        metrics_file = single.output_dir / single.run_name / "metrics.json"
        if not metrics_file.is_file():
            pending.append(single.title)
            continue
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        rows.append({"class_set": single.class_set.name, "model": single.m.architecture,
                     "m_adv_trained": single.m.adversarial, "clean_accuracy_m": metrics["clean"]["accuracy_m"],
                     **metrics["summary"], "run": metrics_file.parent.name})
    grid_directory = plan.output_dir / "grid"
    atomic_write_json(grid_directory / "grid.json", rows)
    table = format_grid_table(rows)
    atomic_write_text(grid_directory / "grid.md", table)
    if plan.verbosity > 0:
        print("\n" + table)
        if pending:
            print(f"not finished yet ({len(pending)}): {', '.join(pending)}")
    return grid_directory

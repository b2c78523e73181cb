"""The attack unit tests on a run's models (``python main.py active-tests``): does each white-box
attack find an adversarial example where one is known to exist?

Zimmermann, Brendel, Tramèr and Carlini (NeurIPS 2022) modify a defense slightly so that an
adversarial example provably exists for every test image, then require the attack to find it
(``unmask.attacks.adaptive.active``). Here, on the adaptive evaluation's white-box sample (the
same seeded, class-stratified test images M gets right), at each budget of ``--active-attacks``
and each detection threshold of ``--adaptive-fprs`` (fixed on the clean validation images as the
evaluation fixes it):

- the **evasion test** (attacks aimed at evading detection or at the deployed decision): M
  binarized around a planted point where K's real parts pass detection for a target class;
  passed when the attack breaks the output it aims at;
- the **inverted test** (the same attacks): the planted point is flagged, and passed means M
  wrong *and* flagged;
- the **re-classification test** (``reclassify``): K's box classifier with planted parts at a
  corner of the ball; passed when the re-classification is wrong;

each attack run exactly as in the evaluation (the registry's attack, ``--adaptive-*`` options,
the engine and the hard pipeline at 8 bits), beside a random search of the ball. Everything is
saved under ``<run>/active/`` with keys of its own (the test, its options and its setup's key),
so no result of the evaluation is ever reused for a test or the other way round; the summary is
``active/active_tests.json`` and ``active.table.format_active_tests`` its table
(``active/active_tests.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unmask.attacks import AttackVector
from unmask.attacks.adaptive import DefenseTarget, Judge
from unmask.attacks.adaptive.active import (
    OUTCOMES,
    STATUSES,
    TESTS,
    Setup,
    active_tests_of,
    attack_outcomes,
    criterion_of,
    evasion_setup,
    inverted_setup,
    reclassification_setup,
)
from unmask.attacks.adaptive.active.plant import planting_options
from unmask.attacks.adaptive.active.table import PASS_RATE, format_active_tests
from unmask.data.sampling import stratified_sample
from unmask.evaluation import fix_thresholds
from unmask.experiment.evaluator import Evaluator
from unmask.experiment.folder import RunFolder
from unmask.experiment.plan import ActiveTestSpec, AdaptiveSpec, Plan
from unmask.experiment.stages import (
    hard_judge,
    load_classifier_data,
    prepare_data,
    trained_classifiers,
    trained_part_extractor,
)
from unmask.io import atomic_write_json, atomic_write_text
from unmask.metrics import rate
from unmask.models.classifier import ClassifierInference
from unmask.models.part_extractor import PartExtractor
from unmask.provenance import digest
from unmask.train.loop import ModelCache

ACTIVE_FORMAT = 2
"""The layout of ``active_tests.json``, and the version of what the tests count (part of every
attack row's saved key): 2, the inverted test counts M wrong, flagged or not."""
NO_PLANTED_SOLUTION = ("no_target", "no_planted_point")
"""The statuses of images for which no planted solution was found (reported, not counted)."""


def run_active_tests(plan: Plan) -> Path:
    """The attack unit tests on the models of the run ``plan`` describes (trained or loaded from
    the cache as ``python main.py`` would, with the same options); returns the summary's path."""
    runtime = plan.runtime.start()
    cache = ModelCache(plan.models_dir, runtime, plan.allow_random_init)
    prepare_data(plan.data, runtime, k_splits=plan.k_splits)
    data = load_classifier_data(plan.data)
    m, adv_trained = trained_classifiers(plan.m, plan.adv_trained, data, cache, m_checkpoint=plan.m_checkpoint,
                                         inference=plan.inference)
    k = trained_part_extractor(plan.k, plan.data, cache, checkpoint=plan.k_checkpoint,
                               precision=plan.inference.effective_precision(runtime.device))
    folder = RunFolder(plan.output_dir / plan.run_name)
    evaluator = Evaluator.start(folder, runtime, plan.evaluation, plan.class_set, data, m, adv_trained, k)
    summary = active_tests(evaluator, plan.active, plan.adaptive)
    if not runtime.distributed.is_main:
        return folder.path / "active"
    from unmask.environment import run_environment

    summary["provenance"] = run_environment(runtime.device)
    summary["run"] = plan.run_name
    atomic_write_json(folder.path / "active" / "active_tests.json", summary)
    table = format_active_tests(summary)
    atomic_write_text(folder.path / "active" / "active_tests.md", table)
    if plan.verbosity > 0:
        print("\n" + table)
        print(f"results: {folder.path / 'active'}/ (active_tests.json, active_tests.md)")
    return folder.path / "active" / "active_tests.json"


def white_box_sample(evaluator: Evaluator, adaptive: AdaptiveSpec) -> np.ndarray:
    """Positions in the evaluated test images of the adaptive evaluation's white-box sample: a
    seeded, class-stratified sample of ``adaptive.max_images`` of the images M gets right
    (``experiment.adaptive.adaptive_evaluation`` draws the same)."""
    labels, clean = evaluator.labels, evaluator.clean()
    correct = np.flatnonzero(clean.m == labels)
    return correct[stratified_sample(labels[correct], adaptive.max_images, seed=evaluator.spec.seed)]


def active_tests(evaluator: Evaluator, spec: ActiveTestSpec, adaptive: AdaptiveSpec) -> dict[str, Any]:
    """Every test of every attack of ``spec`` at each of ``adaptive.fprs``, on the white-box sample
    (a seeded, class-stratified ``spec.max_images`` of it; 0: all of it), with the attacks'
    ``adaptive.options``: the ``active_tests.json`` summary (without its provenance)."""
    sample = white_box_sample(evaluator, adaptive)
    if spec.max_images:
        sample = sample[stratified_sample(evaluator.labels[sample], spec.max_images, seed=evaluator.spec.seed)]
    budgets = sorted({vector.epsilon for vector in spec.vectors})
    setups, rows = [], []
    for fpr in adaptive.fprs:
        threshold = fix_thresholds(evaluator.validation(), fpr).set_jaccard
        for epsilon in budgets:
            vectors = [vector for vector in spec.vectors if vector.epsilon == epsilon]
            needed = {test for vector in vectors for test in active_tests_of(vector)}
            made: dict[str, tuple[Setup, dict[str, Any]]] = {}
            for test in (test for test in TESTS if test in needed or (test == "evasion" and "inverted" in needed)):
                made[test] = _setup(evaluator, spec, adaptive, sample, test, epsilon, fpr, threshold, made)
                setups.append(_setup_entry(made[test][0], fpr, threshold, epsilon))
            for vector in vectors:
                for test in active_tests_of(vector):
                    setup, key = made[test]
                    outcomes = _outcomes(evaluator, adaptive, sample, setup, key, vector, fpr, threshold)
                    rows.append(_row(setup, outcomes, vector, fpr, threshold))
    return {"format": ACTIVE_FORMAT, "threat_model": "white-box", "n_images": int(len(sample)),
            "sample": digest(sample.tolist()), "options": asdict(spec.options),
            "attack_options": asdict(adaptive.options), "pass_rate": PASS_RATE, "setups": setups, "rows": rows}


# --- the pipelines the tests modify -------------------------------------------------------------------


def _real_target(evaluator: Evaluator, threshold: float) -> tuple[DefenseTarget, Callable[..., Judge]]:
    """The white-box attacker's view of the run's UnMask at ``threshold``, and how to judge a
    pipeline whose M or K a test modified the way the real one is judged (M's inference options,
    K's detection rule, device and precision)."""
    m, extractor, class_set = evaluator.m.inference, evaluator.k.extractor, evaluator.class_set
    class_parts = torch.from_numpy(np.asarray(class_set.expected, dtype=np.float32))
    target = DefenseTarget(m.model, extractor.model, class_parts, extractor.score_threshold, threshold,
                           hard_judge(m, extractor, class_set, threshold))

    def judge_for(classifier: torch.nn.Module, part_model: torch.nn.Module) -> Judge:
        modified_k = extractor if part_model is extractor.model else PartExtractor(
            part_model, score_threshold=extractor.score_threshold, batch_size=extractor.batch_size,
            device=extractor.device, precision=extractor.precision)
        modified_m = m if classifier is m.model else ClassifierInference(classifier, m.options)
        return hard_judge(modified_m, modified_k, class_set, threshold)

    return target, judge_for


def _setup(evaluator: Evaluator, spec: ActiveTestSpec, adaptive: AdaptiveSpec, sample: np.ndarray, test: str,
           epsilon: float, fpr: float, threshold: float,
           made: dict[str, tuple[Setup, dict[str, Any]]]) -> tuple[Setup, dict[str, Any]]:
    """``test``'s modified pipelines for the sample at this budget and threshold (saved, resumable)
    and the key they were saved with."""
    target, judge_for = _real_target(evaluator, threshold)
    images, labels = evaluator.test.images[sample], evaluator.test.labels[sample]
    device = next(target.classifier.parameters()).device
    computation: dict[str, Any] = {"active_test": test, "epsilon": epsilon, "options": asdict(spec.options)}
    if test == "evasion":  # the planting search runs on the attacks' engine, with its own steps and runs
        computation["plant_engine"] = asdict(planting_options(adaptive.options, spec.options))
    if test == "inverted":
        computation["evasion_setup"] = digest(made["evasion"][1])
    key = evaluator.key(sample=digest(sample.tolist()), threshold=threshold, fpr=fpr, **computation)

    def compute(number: int, indices: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        batch, y = images[indices].to(device), labels[indices].to(device)
        positions = torch.from_numpy(sample[indices])  # random points derive from each image's test position
        common = {"epsilon": epsilon, "options": spec.options}
        if test == "evasion":
            setup = evasion_setup(target, judge_for, batch, y, positions, attack_options=adaptive.options, **common)
        elif test == "inverted":
            setup = inverted_setup(target, judge_for, batch, y, positions, targets=made["evasion"][0].target[indices],
                                   **common)
        else:
            setup = reclassification_setup(target, judge_for, batch, y, positions, **common)
        return setup.arrays(), {}

    arrays = evaluator.result(_path(evaluator.folder, f"{test}-setup", epsilon, fpr), key, len(sample), compute,
                              batch_size=adaptive.batch_size,
                              what=f"active tests: {test} setup at eps {epsilon:g}, {fpr:.0%} FPR")
    return Setup.from_arrays(test, arrays), key


def _outcomes(evaluator: Evaluator, adaptive: AdaptiveSpec, sample: np.ndarray, setup: Setup, setup_key: dict[str, Any],
              vector: AttackVector, fpr: float, threshold: float) -> dict[str, np.ndarray]:
    """``vector`` against ``setup``'s modified pipelines (saved, resumable; keyed by the setup's key)."""
    target, judge_for = _real_target(evaluator, threshold)
    images, labels = evaluator.test.images[sample], evaluator.test.labels[sample]
    device = next(target.classifier.parameters()).device
    revision = vector.attack.attack_class.revision
    key = evaluator.key(sample=digest(sample.tolist()), active_test=setup.test, setup=digest(setup_key),
                        criterion={"name": criterion_of(setup.test, vector), "version": ACTIVE_FORMAT},
                        attack={"vector": vector.label, **asdict(adaptive.options),
                                **({"revision": revision} if revision else {})})

    def compute(number: int, indices: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        part = Setup.from_arrays(setup.test, {name: value[indices] for name, value in setup.arrays().items()})
        found = attack_outcomes(target, judge_for, part, images[indices].to(device), labels[indices].to(device),
                                torch.from_numpy(sample[indices]), vector, adaptive.options)
        return found, {}

    return evaluator.result(_path(evaluator.folder, f"{setup.test}-{vector.name}", vector.epsilon, fpr), key,
                            len(sample), compute, batch_size=adaptive.batch_size,
                            what=f"active tests: {vector.label} in the {setup.test} test at {fpr:.0%} FPR")


def _path(folder: RunFolder, name: str, epsilon: float, fpr: float) -> Path:
    return folder.path / "active" / f"{name}-eps{epsilon:g}-fpr{fpr:g}.npz"


# --- the summary --------------------------------------------------------------------------------------


def _interval(hits: np.ndarray) -> dict[str, float | int]:
    """A share with its Wilson 95% interval (``metrics.rate``, as every single-attack rate)."""
    return rate(hits).as_dict()


def _setup_entry(setup: Setup, fpr: float, threshold: float, epsilon: float) -> dict[str, Any]:
    statuses = {name: int((setup.status == code).sum()) for code, name in enumerate(STATUSES)}
    return {"test": setup.test, "norm": "linf", "epsilon": epsilon, "fpr_target": fpr,
            "detection_threshold": float(threshold), "n_images": int(len(setup.status)), "statuses": statuses,
            "median_planted_distance": float(np.median(setup.distance[setup.ok])) if setup.ok.any() else None,
            "inner_changed": float(setup.inner_changed[setup.ok].mean()) if setup.ok.any() else None,
            "random": {criterion: _interval(found[setup.ok]) for criterion, found in setup.random.items()}}


def _row(setup: Setup, outcomes: dict[str, np.ndarray], vector: AttackVector, fpr: float,
         threshold: float) -> dict[str, Any]:
    criterion = criterion_of(setup.test, vector)
    tested = outcomes["tested"].astype(bool)
    statuses = {name: int((setup.status == code).sum()) for code, name in enumerate(STATUSES)}
    passed = _interval(outcomes["passed"][tested])
    return {
        "test": setup.test, "attack": vector.name, "norm": vector.norm.name, "epsilon": vector.epsilon,
        "fpr_target": fpr, "detection_threshold": float(threshold), "criterion": criterion,
        "n_images": int(len(setup.status)), "set_up": statuses["ok"],
        "no_planted_solution": sum(statuses[name] for name in NO_PLANTED_SOLUTION),
        "setup_failed": statuses["not_separable"] + statuses["not_verified"],
        "clean_already": int((setup.ok & ~tested).sum()) + statuses["clean_wrong"], "n_tested": int(tested.sum()),
        "passed": passed, "random": _interval(setup.random[criterion][tested]),
        **{name: int(outcomes[name][tested].sum()) for name in OUTCOMES if name not in ("tested", "passed")},
        "weak": bool(tested.any() and passed["value"] < PASS_RATE),
    }

"""On the default run (slow): ``UnMask.from_run`` reproduces its ``per_image.csv``, and foolbox's
PGD on the stand-in finds at least as many successes as the paper's gray-box PGD on M alone.

The run is read, never written, from ``$UNMASK_RESULTS/<default run name>`` (default
``results/``, which ``python main.py`` fills); without it the tests are skipped: the default run
takes about 13 minutes on a 2-core CPU."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import foolbox as fb
import numpy as np
import pytest
import torch

from unmask.attacks import GRAY_BOX_ATTACKS, AttackOptions, attack
from unmask.attacks.registry import build_attack
from unmask.config import resolve_config
from unmask.data.sampling import stratified_sample
from unmask.experiment.plan import build_plan
from unmask.parts import PARTS
from unmask.protect import FinishedRun, UnMask

pytestmark = pytest.mark.slow

ATTACK_BATCH = 20


@pytest.fixture(scope="module")
def default_run() -> FinishedRun:
    plan = build_plan(resolve_config({}, "demo", {"device": "cpu", "verbosity": 0}), with_grid=False)
    folder = Path(os.environ.get("UNMASK_RESULTS", "results")) / plan.run_name
    if not (folder / "metrics.json").is_file():
        pytest.skip(f"no finished default run in {folder}: python main.py makes it (UNMASK_RESULTS names another "
                    "results folder)")
    return FinishedRun.open(folder)


@pytest.fixture(scope="module")
def defense(default_run) -> UnMask:
    return UnMask.from_run(default_run)


def test_from_run_reproduces_the_default_runs_clean_rows_exactly(default_run, defense):
    test = default_run.images("test")
    with open(default_run.folder / "per_image.csv", newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["attack"] == "clean"]
    assert [row["image"] for row in rows] == list(test.names) and len(rows) == 300
    result = defense(test.images)
    assert result.names(result.m_prediction) == [row["m_prediction"] for row in rows]
    assert [";".join(PARTS[j] for j in np.flatnonzero(parts)) for parts in result.parts.numpy()] == \
        [row["parts"] for row in rows]
    assert [f"{score:.4f}" for score in result.detection_score.tolist()] == [row["detection_score"] for row in rows]
    assert [name or "" for name in result.names(result.unmask_prediction)] == [row["unmask_prediction"] for row in rows]
    assert defense.threshold == 0.6 and result.flagged.tolist() == (result.detection_score >= 0.6).tolist()
    assert 0 < result.flagged.sum() < 300


def attacked_sample(default_run: FinishedRun, defense: UnMask) -> tuple[torch.Tensor, torch.Tensor]:
    """The threat-model table's images: a seeded, class-stratified sample of 100 test images that
    M gets right (``experiment.adaptive``)."""
    test, spec = default_run.images("test"), default_run.plan
    labels = test.labels.numpy()
    correct = np.flatnonzero(defense(test.images).m_prediction.numpy() == labels)
    sample = correct[stratified_sample(labels[correct], spec.adaptive.max_images, seed=spec.evaluation.seed)]
    return test.images[sample], test.labels[sample]


@pytest.mark.parametrize("epsilon", [8, 16])
def test_foolbox_pgd_on_the_stand_in_succeeds_at_least_as_often_as_gray_box_pgd(default_run, defense, epsilon,
                                                                                capsys):
    images, labels = attacked_sample(default_run, defense)
    vector, options = GRAY_BOX_ATTACKS.vector("pgd_linf", epsilon), AttackOptions()
    torch.manual_seed(0)
    gray_box = defense.judge(attack(defense.classifier.model, images, labels, vector, options)).evades(labels)
    pgd = build_attack(vector, options)  # the same foolbox LinfPGD: 20 steps of 2/255, random start
    model = fb.PyTorchModel(defense.stand_in(), bounds=(0, 1))
    adversarial = []
    for start in range(0, len(images), ATTACK_BATCH):
        torch.manual_seed(start)
        batch = slice(start, start + ATTACK_BATCH)
        adversarial.append(pgd(model, images[batch], labels[batch], epsilons=vector.unit_epsilon)[1])
    stand_in = defense.judge(torch.cat(adversarial)).evades(labels)
    with capsys.disabled():
        print(f"\nL-inf eps {epsilon}, {len(labels)} images: successes (M wrong, not flagged) of foolbox LinfPGD on "
              f"the stand-in {int(stand_in.sum())}, of gray-box PGD on M {int(gray_box.sum())}")
    assert stand_in.sum() >= gray_box.sum()

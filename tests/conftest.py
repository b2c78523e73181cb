"""Fixtures shared across the test folders.

``default_run_models``: the default configuration's trained M and K, for the slow tests that
check attacks against real models. They are read (never written) from the default run's cache,
``$UNMASK_RESULTS/models`` (default ``results/models``, which ``python main.py`` fills), when it
holds them for the data at hand; otherwise they are trained in a temporary folder (a few
minutes on a laptop CPU). Nothing is written into the working tree either way: the synthetic
world is read from ``data/synthetic`` only when it is the default one, else drawn in the
temporary folder too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch


@dataclass
class DefaultRunModels:
    classifier: torch.nn.Module
    part_model: torch.nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    plan: object


@pytest.fixture(scope="session")
def default_run_models(tmp_path_factory: pytest.TempPathFactory) -> DefaultRunModels:
    from unmask.config import resolve_config
    from unmask.data.synthetic import manifest_matches
    from unmask.experiment.plan import build_plan
    from unmask.experiment.stages import (
        load_classifier_data,
        part_data_fingerprint,
        prepare_data,
        trained_classifiers,
        trained_part_extractor,
    )
    from unmask.provenance import digest
    from unmask.runtime import Runtime
    from unmask.train.classifier import classifier_cache_key
    from unmask.train.loop import WEIGHTS_FILE, ModelCache
    from unmask.train.part_extractor import part_extractor_cache_key

    scratch = tmp_path_factory.mktemp("default-run")
    overrides = {"output_dir": str(scratch / "results"), "device": "cpu", "verbosity": 0}
    plan = build_plan(resolve_config({}, "demo", overrides))
    if not manifest_matches(plan.data.root, plan.data.synthetic):
        plan = build_plan(resolve_config({}, "demo", {**overrides, "data_dir": str(scratch / "data")}))
    runtime = Runtime.start("cpu", verbosity=0)
    if plan.data.root.is_relative_to(scratch):
        prepare_data(plan.data, runtime, k_splits=("train", "val", "test"))
    data = load_classifier_data(plan.data)
    cache = ModelCache(scratch / "results" / "models", runtime)
    saved = Path(os.environ.get("UNMASK_RESULTS", "results")) / "models"
    m_weights = saved / classifier_cache_key(plan.m, digest([data["train"].fingerprint(), data["val"].fingerprint()]))
    k_weights = saved / part_extractor_cache_key(plan.k, digest({"dataset": plan.data.dataset, "train":
                                                               part_data_fingerprint(plan.data.root, "train")}))
    m, _ = trained_classifiers(plan.m, None, data, cache, m_checkpoint=m_weights / WEIGHTS_FILE
                               if (m_weights / WEIGHTS_FILE).is_file() else None)
    k = trained_part_extractor(plan.k, plan.data, cache, checkpoint=k_weights / WEIGHTS_FILE
                               if (k_weights / WEIGHTS_FILE).is_file() else None)
    images, labels = data["test"].tensors()
    return DefaultRunModels(m.model.eval(), k.extractor.model.eval(), images, labels, plan)

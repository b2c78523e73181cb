"""The adaptive evaluation's options, from the configuration into the plan."""

from __future__ import annotations

import pytest

from unmask.cli import parse
from unmask.config import ConfigError, resolve_config
from unmask.experiment import build_plan
from unmask.experiment.plan import FULL_ADAPTIVE


def test_the_default_run_has_the_reduced_white_box_evaluation():
    adaptive = build_plan(resolve_config()).adaptive
    assert [vector.label for vector in adaptive.vectors] == ["joint_linf:8", "joint_linf:16", "joint_linf:32",
                                                            "joint_linf:64"]
    assert adaptive.threat_models == ("white-box",) and adaptive.fprs == (0.1,)
    assert adaptive.max_images >= 100
    assert (adaptive.options.steps, adaptive.options.restarts, adaptive.options.targets) == (20, 2, 2)


def test_the_full_profile_runs_every_attack_both_threat_models_and_both_fprs():
    adaptive = build_plan(resolve_config(profile="adaptive-full")).adaptive
    assert [vector.label for vector in adaptive.vectors] == list(FULL_ADAPTIVE)
    assert {vector.name.rsplit("_", 1)[0] for vector in adaptive.vectors} == {
        "joint", "orthogonal", "reclassify", "k_vanish", "k_fabricate", "hsj"}
    assert adaptive.threat_models == ("white-box", "transfer") and adaptive.fprs == (0.05, 0.1)
    options = adaptive.options
    assert options.steps >= 100 and options.restarts >= 2 and options.targets is None  # every target class
    assert options.relative_step == 20.0


def test_none_turns_it_off_and_budgets_are_checked():
    plan, _ = parse(["run", "--adaptive-attacks", "none"])
    assert not plan.adaptive.enabled
    with pytest.raises(ConfigError, match="--adaptive-attacks: .*joint_linf:0"):
        build_plan(resolve_config(overrides={"adaptive_attacks": ("joint_linf:0",)}))
    with pytest.raises(ConfigError, match="--adaptive-relative-step"):
        resolve_config(overrides={"adaptive_relative_step": 0.0})

"""From the configuration to the plan: every option reaches the component it is declared for,
choices and ranges are checked where declared, and the run's name depends on exactly the
options that change its numbers."""

from __future__ import annotations

import dataclasses

import pytest

from unmask.attacks.adaptive import ADAPTIVE_ATTACKS
from unmask.cli import parse
from unmask.config import Config, ConfigError, resolve_config
from unmask.constants import FULL_ADAPTIVE_BUDGET
from unmask.experiment import build_plan
from unmask.models.classifier import InferenceOptions

# a valid value, other than the default, for every option declared to feed a component
CHANGED = {
    "inference_precision": "bfloat16", "channels_last": True, "compile": True, "batch_size": 7, "epochs": 3,
    "optimizer": "adam", "lr": 0.3, "momentum": 0.5, "weight_decay": 0.01, "nesterov": True, "augment": True,
    "lr_schedule": "constant", "adv_epsilon": 6.0, "adv_steps": 3, "adv_step_size": 1.5, "adv_random_start": False,
    "k_batch_size": 3, "k_lr": 0.01, "k_momentum": 0.8, "k_weight_decay": 0.001, "k_warmup_steps": 5,
    "k_score_threshold": 0.25, "k_nms_threshold": 0.4, "k_max_detections": 50, "attack_steps": 9,
    "attack_original_step": True, "mim_decay": 0.5, "attack_batch_size": 16, "adaptive_steps": 11,
    "adaptive_restarts": 3, "adaptive_targets": 0, "adaptive_relative_step": 4.0, "adaptive_batch_size": 8,
    "adaptive_step_schedule": "cosine", "adaptive_reclassify_losses": ("dlr", "ce"),
    "k_adv_epsilon": 4.0, "k_adv_recipe": "pgd", "k_adv_steps": 3, "k_adv_step_size": 1.5,
    "k_adv_losses": ("training", "vanish"), "k_adv_target": "nearest", "k_adv_clean_weight": 0.5, "k_adv_trades": 2.0,
    "k_adv_epochs": 3, "k_adv_lr": 0.01, "k_adv_keep": "reclassify", "k_adv_val_images": 16, "k_adv_val_steps": 2,
    "active_inner_points": 64, "active_k_inner_points": 8, "active_closeness": 0.5, "active_random_samples": 10,
    "active_plant_steps": 50, "active_plant_targets": 0, "decision_rule": "part-classifier",
    "flagged_decision": "reject", "part_classifier_data": "clean+attacked",
}
SWITCHED_ON = {"k_adv_training": True}
"""The options without a component field that make a component exist (the robust K's recipe)."""
COMPONENTS = {
    "inference": lambda plan: plan.inference, "m_training": lambda plan: plan.m.training,
    "adversarial": lambda plan: plan.adv_trained.training.adversarial, "k_training": lambda plan: plan.k.training,
    "k_rule": lambda plan: plan.k.rule, "attack": lambda plan: plan.attack, "adaptive": lambda plan: plan.adaptive.options,
    "k_adversarial": lambda plan: plan.k_robust, "active": lambda plan: plan.active.options,
    "decision": lambda plan: plan.evaluation.decision,
}


def test_every_option_declared_for_a_component_reaches_it():
    declared = {f.name: f.metadata["to"] for f in dataclasses.fields(Config) if "to" in f.metadata}
    assert set(declared) == set(CHANGED), "give each new option a changed value here"
    plan = build_plan(resolve_config(overrides={**CHANGED, **SWITCHED_ON}))
    for name, target in declared.items():
        component, field = target.split(".")
        assert getattr(COMPONENTS[component](plan), field) == CHANGED[name], name
    # the defaults reach them just the same
    default = build_plan(resolve_config(overrides=SWITCHED_ON))
    for name, target in declared.items():
        component, field = target.split(".")
        assert getattr(COMPONENTS[component](default), field) == getattr(Config(), name), name


def test_k_trains_for_its_architecture_s_epochs_unless_told():
    assert [build_plan(resolve_config(overrides={"k_model": name})).k.training.epochs
            for name in ("slim", "lean", "resnet50-fpn")] == [10, 5, 40]
    assert build_plan(resolve_config(overrides={"k_model": "lean", "k_epochs": 2})).k.training.epochs == 2


def test_the_robust_k_is_planned_only_when_asked_for_and_trains_from_a_checkpoint_on_ks_splits():
    assert build_plan(resolve_config()).k_robust is None
    plan = build_plan(resolve_config(overrides={"k_adv_training": True, "k_checkpoint": "k.pt"}))
    assert plan.k_robust is not None and plan.k_splits == ("train", "val", "test")
    assert build_plan(resolve_config(overrides={"k_checkpoint": "k.pt"})).k_splits == ("test",)
    with pytest.raises(ConfigError, match="free replays .* need losses"):
        build_plan(resolve_config(overrides={"k_adv_training": True, "k_adv_recipe": "free"}))
    with pytest.raises(ConfigError, match="--k-adv-losses: unknown inner loss 'nope'"):
        build_plan(resolve_config(overrides={"k_adv_training": True, "k_adv_losses": ("vanish", "nope")}))
    # which epoch to keep: named in the run only when it is not the default, so earlier runs keep their names
    kept = build_plan(resolve_config(overrides={"k_adv_training": True, "k_adv_keep": "reclassify",
                                                "k_adv_val_images": 64}))
    assert (kept.k_robust.keep, kept.k_robust.val_images) == ("reclassify", 64)
    plain = build_plan(resolve_config(overrides={"k_adv_training": True}))
    assert "k_adv_keep" not in plain.results and kept.results["k_adv_keep"] == "reclassify"
    assert kept.run_name != plain.run_name
    with pytest.raises(ConfigError, match="--k-adv-keep: unknown kept epoch 'best'"):
        build_plan(resolve_config(overrides={"k_adv_training": True, "k_adv_keep": "best"}))


def test_the_full_profile_is_the_full_budget_on_every_attack_both_threat_models_and_fprs():
    adaptive = build_plan(resolve_config(profile="adaptive-full")).adaptive
    assert adaptive.vectors == ADAPTIVE_ATTACKS.parse(["full"])
    # every attack on UnMask; the baselines' (M alone) attack runs at every budget without being listed
    assert {vector.attack.attack_class for vector in adaptive.vectors} == {
        info.attack_class for info in ADAPTIVE_ATTACKS.values() if info.attack_class.needs_part_model}
    options = adaptive.options
    assert (options.steps, options.restarts, options.targets, options.relative_step, options.reclassify_losses) == (
        FULL_ADAPTIVE_BUDGET.steps, FULL_ADAPTIVE_BUDGET.restarts, FULL_ADAPTIVE_BUDGET.targets,
        FULL_ADAPTIVE_BUDGET.relative_step, ("targeted", "dlr", "ce"))
    assert adaptive.threat_models == ("white-box", "transfer") and adaptive.fprs == (0.05, 0.1)


def test_the_robust_profile_adds_the_robust_k_and_reuses_the_default_models():
    default, robust = build_plan(resolve_config()), build_plan(resolve_config(profile="robust"))
    assert robust.k_robust == build_plan(resolve_config(overrides={"k_adv_training": True})).k_robust is not None
    assert (robust.m, robust.adv_trained, robust.k) == (default.m, default.adv_trained, default.k)  # cached models
    adaptive = robust.adaptive
    assert [vector.label for vector in adaptive.vectors] == [
        *(f"{name}_linf:{epsilon}" for epsilon in (4, 8, 16) for name in ("joint", "reclassify", "transplant")),
        "k_vanish_linf:64", "k_fabricate_linf:64"]
    assert adaptive.threat_models == ("white-box",) and adaptive.fprs == (0.05, 0.1)
    assert adaptive.options == default.adaptive.options and adaptive.max_images == default.adaptive.max_images
    assert robust.run_name != default.run_name


def test_none_turns_the_adaptive_evaluation_off_and_budgets_are_checked():
    _, plan, _ = parse(["run", "--adaptive-attacks", "none"])
    assert not plan.adaptive.enabled
    with pytest.raises(ConfigError, match="--adaptive-attacks: .*joint_linf.*epsilon must be a finite number > 0"):
        build_plan(resolve_config(overrides={"adaptive_attacks": ("joint_linf:0",)}))
    with pytest.raises(ConfigError, match="--adaptive-relative-step: expected a number > 0, got 0"):
        resolve_config(overrides={"adaptive_relative_step": 0.0})


@pytest.mark.parametrize(("overrides", "message"), [
    ({"model": "nope"}, "--model: unknown model 'nope'; expected one of: compact, resnet18, resnet50"),
    ({"class_set": "nope"}, "--class-set: unknown class set 'nope'; expected one of: cs3-1, .*CS5b"),
    ({"grid_models": ("compact", "nope")}, "--grid-models: unknown model 'nope'"),
    ({"attacks": ("pgd_linf:8", "joint_linf:8")}, "--attacks: unknown attack 'joint_linf' in 'joint_linf:8'; "
                                                  "expected one of: paper, pgd_linf"),
    ({"adaptive_attacks": ("pgd_linf:8",)}, "--adaptive-attacks: unknown adaptive attack 'pgd_linf'.*full, none, "
                                            "joint_linf"),
    ({"adaptive_threat_models": ("gray-box",)}, "--adaptive-threat-models: unknown threat model 'gray-box'; "
                                                "expected one of: transfer, white-box"),
    ({"inference_precision": "half"}, "--inference-precision: .*auto, float32, bfloat16, float16"),
    ({"synthetic_k_image_size": "500"}, "--synthetic-k-image-size: .*WIDTHxHEIGHT"),
    ({"synthetic_k_image_size": "500x20"}, "too small"),
    ({"k_model": "lean", "k_pretrained": True}, "--k-pretrained: the lean part extractor has no pretrained weights"),
])
def test_bad_values_name_the_option_and_what_was_expected(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_plan(resolve_config(overrides=overrides))


def test_the_paper_names_of_class_sets_in_any_case():
    assert build_plan(resolve_config(overrides={"class_set": "cs5b"})).class_set.name == "cs5-2"


def test_the_paper_profile_draws_pascal_sized_k_images_and_runs_m_channels_last():
    plan = build_plan(resolve_config(profile="paper", overrides={"allow_random_init": True}))
    assert plan.data.synthetic.k_image_size == (500, 375) and plan.data.synthetic.image_size == 150
    assert plan.k.architecture == "resnet50-fpn" and plan.inference.channels_last
    assert plan.inference.effective_precision("cpu") == "float32"


def test_command_line_options_reach_the_plan():
    _, plan, _ = parse(["run", "--synthetic-k-image-size", "320x240", "--inference-precision", "bfloat16",
                        "--channels-last", "--compile"])
    assert plan.data.synthetic.k_image_size == (320, 240)
    assert plan.inference == InferenceOptions(precision="bfloat16", channels_last=True, compile=True)


def test_the_run_name_changes_with_every_result_option_and_with_no_other():
    base = build_plan(resolve_config()).run_name
    for config_field in dataclasses.fields(Config):
        if config_field.name in ("run_name", "grid_shard"):
            continue
        value = CHANGED.get(config_field.name, getattr(Config(), config_field.name))
        if config_field.name not in CHANGED:
            value = {bool: lambda v: not v, int: lambda v: v + 1, float: lambda v: v / 2, str: lambda v: v,
                     tuple: lambda v: v}[type(value)](value)
            if value == getattr(Config(), config_field.name):
                continue  # no valid other value to try without knowing the option
        try:
            plan = build_plan(resolve_config(overrides={config_field.name: value}))
        except ConfigError:
            continue
        changes = plan.run_name != base
        assert changes == config_field.metadata.get("results", True), config_field.name
    assert build_plan(resolve_config(overrides={"run_name": "mine"})).run_name == "mine"


def test_the_decision_rule_names_a_run_only_when_it_is_not_the_papers():
    """Runs made before the rules existed keep their names (and cached results): the default rule
    is left out of the name and records; every other rule and the reject variant change both."""
    base = build_plan(resolve_config())
    assert "decision_rule" not in base.results and "flagged_decision" not in base.results
    assert base.evaluation.decision.is_paper and base.evaluation.decision.key() == {}
    names = {base.run_name}
    for overrides in ({"decision_rule": "agreement"}, {"decision_rule": "per-class"},
                      {"decision_rule": "part-classifier"}, {"flagged_decision": "reject"},
                      {"decision_rule": "agreement", "flagged_decision": "reject"}):
        plan = build_plan(resolve_config(overrides=overrides))
        assert plan.results.get("decision_rule", "paper") == overrides.get("decision_rule", "paper")
        assert plan.evaluation.decision.key() == {"decision_rule": overrides.get("decision_rule", "paper"),
                                                  "flagged": overrides.get("flagged_decision", "reclassify")}
        names.add(plan.run_name)
    assert len(names) == 6
    with pytest.raises(ConfigError, match="decision rule"):
        build_plan(resolve_config(overrides={"decision_rule": "majority"}))
    attacked = build_plan(resolve_config(overrides={"decision_rule": "part-classifier",
                                                    "part_classifier_data": "clean+attacked"}))
    assert attacked.evaluation.decision.key()["classifier_data"] == "clean+attacked"
    assert attacked.run_name not in names and "part_classifier_data" not in base.results
    with pytest.raises(ConfigError, match="--part-classifier-data: .*the rule is 'agreement'"):
        build_plan(resolve_config(overrides={"decision_rule": "agreement", "part_classifier_data": "clean+attacked"}))


def test_the_attacked_defenses_are_named_only_when_chosen():
    base = build_plan(resolve_config())
    chosen = build_plan(resolve_config(overrides={"adaptive_defenses": ("unmask-r-adv-m",)}))
    assert base.adaptive.attacks("unmask") and "adaptive_defenses" not in base.results
    assert chosen.adaptive.attacks("unmask-r-adv-m") and not chosen.adaptive.attacks("unmask")
    assert chosen.run_name != base.run_name
    with pytest.raises(ConfigError, match="defense"):
        build_plan(resolve_config(overrides={"adaptive_defenses": ("unmask-x",)}))

def test_other_class_goals_never_aim_at_the_images_own_class():
    import numpy as np
    import torch

    from unmask.experiment.evaluator import other_class_goals
    from unmask.parts import ClassSet

    class_set = ClassSet.named("cs5-2")
    expected = torch.tensor(np.asarray(class_set.expected), dtype=torch.float32)
    labels = torch.arange(5).repeat(40)
    goals = other_class_goals(labels, expected, torch.Generator().manual_seed(0))
    drawn = (goals.add[:, None, :] == expected[None]).all(-1).float().argmax(-1)
    assert (drawn != labels).all() and len(set(drawn.tolist())) == 5
    assert torch.equal(goals.remove, 1 - goals.add) and set(goals.kinds) == {"transplant"}


def test_the_grid_is_every_class_set_and_model_with_and_without_adversarial_training():
    plan = build_plan(resolve_config(overrides={"grid_class_sets": ("cs3-1", "cs5-2"), "grid_models": ("compact",)}))
    assert [single.title for single in plan.grid] == ["cs3-1/compact", "cs3-1/compact/advM", "cs5-2/compact",
                                                      "cs5-2/compact/advM"]
    assert len({single.run_name for single in plan.grid}) == 4 and not plan.grid[0].grid

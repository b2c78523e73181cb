"""The budget ladder on hand-made verdicts and stand-in attacks (no model runs but one tiny
engine check): each rung's budget, the carried worst case across rungs, the stopping rule,
that a rung attacks only the standing images and skips the runs the rung below made, that a
ladder resumed midway gives what one run gives, the published offsets of a one-rung run, and
the tables and figure."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from unmask.attacks import LINF, AttackOptions
from unmask.attacks.adaptive import ADAPTIVE_ATTACKS, AdaptiveOptions, ReclassifyAttack, Verdict
from unmask.attacks.adaptive.options import rung_options
from unmask.experiment.adaptive import CleanView, Judged, Row, adaptive_evaluation, sequence, summarise
from unmask.experiment.adaptive.ladder import converged_from, curves, every_figure_converged
from unmask.experiment.adaptive.worst_cases import clean_views
from unmask.experiment.plan import AdaptiveSpec, BudgetLadder
from unmask.parts import ClassSet

CLASS_SET = ClassSet.named("cs3-1")
LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1])
PARTS = np.zeros((8, 44), dtype=bool)
CLEAN = {"UnMask": CleanView(np.full(8, 0.1), PARTS)}


# --- each rung's budget ----------------------------------------------------------------------------


def test_each_doubling_grows_what_it_names_and_restarts_where_it_cannot():
    base = AdaptiveOptions(steps=40, restarts=1, targets=2, reclassify_losses=("targeted",))
    joint = rung_options(base, ("targets", "losses", "restarts", "steps"), targeted=True, chooses_losses=False,
                         classes=5)
    # 2 of 4 other classes -> every other class (0); losses cannot grow joint: its restarts double; then again
    assert (joint.targets, joint.restarts, joint.steps, joint.reclassify_losses) == (0, 4, 80, ("targeted",))
    reclassify = rung_options(base, ("targets", "losses"), targeted=True, chooses_losses=True, classes=5)
    assert (reclassify.targets, reclassify.restarts, reclassify.reclassify_losses) == (0, 1, ("targeted", "dlr", "ce"))
    # M alone has no targets, and on 3 classes 2 targets are already every other class: restarts double
    alone = rung_options(base, ("targets",), targeted=False, chooses_losses=False, classes=5)
    assert (alone.targets, alone.restarts) == (2, 2)
    assert rung_options(base, ("targets",), targeted=True, chooses_losses=False, classes=3).restarts == 2
    with pytest.raises(ValueError, match="unknown ladder growth 'more'"):
        rung_options(base, ("more",), targeted=True, chooses_losses=False, classes=5)


def test_a_rung_names_the_runs_the_rung_below_made():
    ladder = BudgetLadder((1, 2, 4, 8), ("targets", "restarts", "steps"))
    base = AdaptiveOptions(steps=40, restarts=1, targets=1)
    assert ladder.doublings(8) == ("targets", "restarts", "steps")
    first = ladder.options(base, 1, targeted=True, chooses_losses=False, classes=5)
    assert first == base  # the first rung is the run's own budget: its saved results' keys are unchanged
    fourth = ladder.options(base, 4, targeted=True, chooses_losses=False, classes=5)
    assert (fourth.targets, fourth.restarts) == (2, 2)
    assert (fourth.already_made.targets, fourth.already_made.restarts, fourth.already_made.steps) == (2, 1, 40)
    assert ladder.options(base, 8, targeted=True, chooses_losses=False, classes=5).already_made.restarts == 2


@pytest.mark.parametrize("rungs", [(2, 4), (1, 3), (1, 4, 2), (1, 1)])
def test_a_ladder_is_increasing_powers_of_two_from_one(rungs):
    with pytest.raises(ValueError, match="increasing powers of 2 from 1"):
        BudgetLadder(rungs)


def test_a_bad_ladder_on_the_command_line_names_the_option():
    from unmask.config import ConfigError, resolve_config
    from unmask.experiment import build_plan

    with pytest.raises(ConfigError, match="--adaptive-ladder: expected increasing powers of 2"):
        build_plan(resolve_config(overrides={"adaptive_ladder": (1, 3), "device": "cpu"}))
    plan = build_plan(resolve_config(profile="converged", overrides={"device": "cpu"}))
    assert plan.adaptive.ladder.rungs == (1, 2, 4, 8, 16, 32) and plan.adaptive.fprs == (0.1,)
    assert plan.adaptive.ladder.growth == ("steps", "steps", "losses", "targets")
    assert {(v.name, v.epsilon) for v in plan.adaptive.vectors} == {
        (f"{name}_linf", epsilon) for name in ("joint", "reclassify", "transplant") for epsilon in (8.0, 16.0)}


def test_an_attack_skips_the_runs_a_smaller_rung_made():
    """The engine, on a tiny M and K: the re-classification attack at the second rung of
    ("targets", "losses") makes only its new runs (the other two targets' and no targeted run
    already made), at the third only the DLR and CE runs."""
    from unmask.attacks.adaptive import DefenseTarget, GradientAttack
    from unmask.models.classifier import Classifier, CompactCNN
    from unmask.models.part_extractor import build_part_extractor

    torch.manual_seed(0)
    classifier = Classifier(CompactCNN(5, width=8), name="compact", num_classes=5).eval()
    part_model = build_part_extractor("lean", image_size=48, fpn_channels=16).eval()
    parts = torch.from_numpy(np.asarray(ClassSet.named("cs5-2").expected, dtype=np.float32))
    nothing = Verdict(torch.zeros(2, dtype=torch.long), torch.zeros(2), torch.zeros(2, dtype=torch.bool),
                      torch.zeros(2, dtype=torch.long), torch.zeros(2, 44, dtype=torch.bool))
    target = DefenseTarget(classifier, part_model, parts, 0.5, 0.5, lambda images: nothing)
    ladder = BudgetLadder((1, 2, 4), ("targets", "losses"))
    made = []
    original = GradientAttack.pgd
    GradientAttack.pgd = lambda self, batch, run: made.append((run.loss, run.rank, run.restart))
    try:
        for rung in ladder.rungs:
            options = ladder.options(AdaptiveOptions(steps=2, targets=2), rung, targeted=True, chooses_losses=True,
                                     classes=5)
            ReclassifyAttack(target, epsilon=8, norm=LINF, options=options)(
                torch.rand(2, 3, 48, 48), torch.tensor([0, 1]), torch.arange(2))
            made.append(rung)
    finally:
        GradientAttack.pgd = original
    assert made == [("targeted", 0, 0), ("targeted", 1, 0), 1, ("targeted", 2, 0), ("targeted", 3, 0), 2,
                    ("dlr", -1, 0), ("ce", -1, 0), 4]


# --- the carried worst case and the stopping rule, on hand-made rows ------------------------------


def unmask_row(m, *, positions=None, rung=1, epsilon=8.0, attack="joint_linf"):
    positions = np.arange(8) if positions is None else np.asarray(positions)
    m = np.asarray(m)
    return Row("UnMask", "white-box", attack, LINF, epsilon, 0.1, 0.5,
               Judged(m, PARTS[positions], np.full(len(positions), 0.1), LABELS[positions]), positions, rung=rung)


def fooled(positions, broken):
    """M's classes on ``positions``: wrong (not flagged: evaded) on those in ``broken``."""
    return np.array([(LABELS[p] + 1) % 3 if p in broken else LABELS[p] for p in positions])


def test_an_image_broken_at_a_smaller_rung_counts_as_broken_above_it():
    rows = [unmask_row(fooled(range(8), {0, 1})),  # rung 1 evades on 0 and 1
            unmask_row(fooled(range(2, 8), {2}), positions=range(2, 8), rung=2)]  # rung 2, on the rest: 2
    entries = curves(rows, LABELS, clean_views(CLEAN), [1, 2], tolerance=2, seed=0)
    success = next(e for e in entries if e["figure"] == "success_rate")
    assert [point["count"] for point in success["curve"]] == [2, 3]
    assert success["value"] == 3 / 8 and success["converged"] and success["converged_at"] == 1
    # the headline summary is the worst case over every rung: the converged value
    summary = summarise(rows, LABELS, CLEAN, seed=0)
    headline = next(row for row in summary["adaptive_summary"] if row["over"] == "all attacks")
    assert headline["success_rate"] == 3 / 8 and "white-box joint_linf@x2" in headline["attacks"]
    assert [entry["rung"] for entry in summary["adaptive"]] == [1, 2]


def test_a_figure_that_moved_by_three_images_has_not_converged_by_two_it_has():
    assert converged_from([10, 13], 2) is None
    assert converged_from([10, 12], 2) == 0
    assert converged_from([3, 10, 11, 11], 2) == 1  # converged from the second rung on
    assert converged_from([10, 10, 14], 2) is None  # the last doubling decides
    # a figure that creeps by two images a doubling converged only where the rest stayed within two
    assert converged_from([10, 8, 6, 5], 2) == 2
    assert converged_from([10], 2) is None  # one rung: nothing measured
    view = clean_views(CLEAN)
    first = unmask_row(fooled(range(8), set()))
    for moved, converged in ((3, False), (2, True)):
        later = unmask_row(fooled(range(8), set(range(moved))), rung=2)
        assert every_figure_converged([first, later], LABELS, view, [1, 2], tolerance=2) is converged
        entry = next(e for e in curves([first, later], LABELS, view, [1, 2], tolerance=2, seed=0)
                     if e["figure"] == "accuracy_system")
        assert entry["converged"] is converged and entry["curve"][1]["count"] == 8 - moved


# --- the ladder through the evaluation, on stand-in models and attacks ----------------------------


NEEDED = np.array([1, 1, 2, 4, 8, 100])
"""Test image i is broken by an attack whose restarts reach NEEDED[i] (the stand-in attack's budget)."""


class _Evaluator:
    """What ``adaptive_evaluation`` reads of an ``Evaluator``: six test images, M right on every
    clean image, K finding every expected part; results saved in ``store`` (by path and key), so
    a second evaluation on the same store resumes like a run on the same folder."""

    def __init__(self, path, store):
        from unmask.evaluation import Predictions, Scored
        from unmask.experiment.plan import DecisionSpec

        self.class_set = CLASS_SET
        labels = torch.tensor([0, 1, 2, 0, 1, 2])
        images = torch.zeros(6, 3, 4, 4)
        self.test = SimpleNamespace(images=images, labels=labels, fingerprint={"data": "test"})
        self.validation_images = SimpleNamespace(images=images, labels=labels, fingerprint={"data": "val"})
        self.m = SimpleNamespace(inference=SimpleNamespace(model="M"), fingerprint={"weights": "M"})
        self.k = SimpleNamespace(extractor=SimpleNamespace(model="K", score_threshold=0.5), fingerprint={"w": "K"})
        self.adv_trained, self.k_robust = None, None
        self.folder = SimpleNamespace(path=path)
        self.spec = SimpleNamespace(seed=0, batch_size=4, decision=DecisionSpec())
        self.runtime = SimpleNamespace(progress=False)
        self.store, self.computed = store, []
        expected = np.asarray(CLASS_SET.expected, dtype=bool)
        self._scored = lambda m: Scored.of(Predictions(m=m, parts=expected[labels.numpy()],
                                                       part_scores=expected[labels.numpy()].astype(float)),
                                           CLASS_SET)

    @property
    def labels(self):
        return self.test.labels.numpy()

    def clean(self):
        return self._scored(self.labels)

    def validation(self):
        return self._scored(self.labels)

    def attacked(self, vector, options, *, sample=None, path=None, what=None, m=None, k=None):
        return self._scored(self.labels[sample])  # the gray-box PGD fools nothing

    def key(self, images=None, **computation):
        return computation

    def result(self, path, key, count, compute, *, what, batch_size=None):
        stamp = (path.name, json.dumps(key, sort_keys=True, default=str))
        if stamp not in self.store:
            self.computed.append(path.name)
            self.store[stamp] = compute(0, np.arange(count))[0]
        return self.store[stamp]


@pytest.fixture
def stand_in_attack(monkeypatch):
    """The attacks replaced by one that breaks test image i (every output) once its restarts reach
    NEEDED[i]; each call recorded as (attack, restarts, test images given)."""
    calls = []

    def attack(target, images, labels, vector, options, *, indices):
        calls.append((vector.name, options.restarts, indices.tolist()))
        broken = torch.from_numpy(options.restarts >= NEEDED[indices.numpy()])
        m = torch.where(broken, (labels + 1) % 3, labels)
        n = len(labels)
        verdict = Verdict(m, torch.zeros(n), torch.zeros(n, dtype=torch.bool), m, torch.zeros(n, 44, dtype=torch.bool))
        return SimpleNamespace(verdict=verdict, images=images, distances=None, success=broken)

    monkeypatch.setattr(sequence, "adaptive_attack", attack)
    monkeypatch.setattr(sequence, "hard_judge", lambda *args: lambda images: None)
    return calls


def evaluate(tmp_path, store, rungs, *, tolerance=0, published=None):
    spec = AdaptiveSpec(vectors=ADAPTIVE_ATTACKS.parse(["joint_linf:8", "joint_linf:16"]), threat_models=("white-box",),
                        fprs=(0.1,), max_images=0, options=AdaptiveOptions(), batch_size=4,
                        ladder=BudgetLadder(rungs, ("restarts",), tolerance, published))
    evaluator = _Evaluator(tmp_path, store)
    return adaptive_evaluation(evaluator, spec, {}, gray_box_options=AttackOptions()), evaluator


def test_a_rung_attacks_only_the_images_every_smaller_rung_and_budget_left_standing(tmp_path, stand_in_attack):
    metrics, _ = evaluate(tmp_path, {}, (1, 2, 4))
    joint = [(restarts, images) for name, restarts, images in stand_in_attack if name == "joint_linf"]
    # rung x1 at 8 breaks 0, 1 and at 16 attacks the rest; x2 (2 restarts) breaks 2 at 8, and at 16 is given
    # what x2 at 8 and x1 at 16 left; x4 likewise
    assert joint == [(1, [0, 1, 2, 3, 4, 5]), (1, [2, 3, 4, 5]), (2, [2, 3, 4, 5]), (2, [3, 4, 5]),
                     (4, [3, 4, 5]), (4, [4, 5])]
    alone = [(restarts, images) for name, restarts, images in stand_in_attack if name == "m_apgd_linf"]
    assert alone == joint  # M alone meets the same ladder, with the same carried breaks
    ladder = metrics["adaptive_ladder"]
    assert [rung["rung"] for rung in ladder["rungs"]] == [1, 2, 4] and ladder["stopped"] == "top rung"
    assert [rung["attacked"] for rung in ladder["rungs"]] == [20, 14, 10]  # joint and m_apgd at 8 and 16
    assert ladder["rungs"][2]["budget"]["joint_linf"]["restarts"] == 4
    system = next(e for e in ladder["figures"] if (e["defense"], e["figure"], e["epsilon"])
                  == ("UnMask", "accuracy_system", 8.0))
    assert [point["count"] for point in system["curve"]] == [4, 3, 2] and system["converged"] is False
    summary = next(r for r in metrics["adaptive_summary"] if (r["defense"], r["epsilon"], r["over"])
                   == ("UnMask", 8.0, "all attacks"))
    assert summary["accuracy_system"] == system["value"] == 2 / 6
    assert {entry["rung"] for entry in metrics["adaptive"] if entry["threat_model"] == "white-box"} == {1, 2, 4}


def test_the_ladder_stops_once_every_figure_has_converged(tmp_path, stand_in_attack):
    metrics, _ = evaluate(tmp_path, {}, (1, 2, 4, 8), tolerance=1)  # x2 moves each figure by one image
    ladder = metrics["adaptive_ladder"]
    assert [rung["rung"] for rung in ladder["rungs"]] == [1, 2] and ladder["stopped"] == "converged early"
    assert {restarts for _, restarts, _ in stand_in_attack} == {1, 2}
    assert all(entry["converged"] and entry["converged_at"] == 1 for entry in ladder["figures"])


def _without_seconds(metrics):
    """The figures, without each rung's seconds (how fast, not what, it computed)."""
    assert set(metrics["timing"]) == {f"ladder_x{entry['rung']}" for entry in metrics["adaptive_ladder"]["rungs"]}
    return {key: value for key, value in metrics.items() if key != "timing"}


def test_a_ladder_resumed_midway_gives_what_one_run_gives(tmp_path, stand_in_attack):
    whole, _ = evaluate(tmp_path / "whole", {}, (1, 2, 4))
    store = {}
    evaluate(tmp_path / "parts", store, (1, 2))  # the first part: rungs x1 and x2
    interrupted = _Evaluator(tmp_path / "parts", store)
    stop_after = len(store) + 1

    def killed(path, key, count, compute, **kwargs):  # the second part is killed after one more result
        if len(store) >= stop_after:
            raise KeyboardInterrupt
        return _Evaluator.result(interrupted, path, key, count, compute, **kwargs)

    interrupted.result = killed
    spec = AdaptiveSpec(vectors=ADAPTIVE_ATTACKS.parse(["joint_linf:8", "joint_linf:16"]),
                        threat_models=("white-box",), fprs=(0.1,), max_images=0, options=AdaptiveOptions(),
                        batch_size=4, ladder=BudgetLadder((1, 2, 4), ("restarts",), 0))
    with pytest.raises(KeyboardInterrupt):
        adaptive_evaluation(interrupted, spec, {}, gray_box_options=AttackOptions())
    resumed, evaluator = evaluate(tmp_path / "parts", store, (1, 2, 4))
    # only what the first parts had not saved: x4's results but the one saved before the kill
    assert evaluator.computed and all(name.endswith("-rung4.npz") for name in evaluator.computed)
    assert len(evaluator.computed) == 3
    assert _without_seconds(resumed) == _without_seconds(whole)


def test_every_rung_s_results_are_saved_under_keys_of_their_own(tmp_path, stand_in_attack):
    store = {}
    evaluate(tmp_path, store, (1, 2))
    keys = {name: json.loads(key) for name, key in store}
    first, second = keys["unmask-white-box-joint_linf-eps8-fpr0.1.npz"], keys["unmask-white-box-joint_linf-eps8-fpr0.1-rung2.npz"]
    assert "rung" not in first["attack"] and "already_made" not in first["attack"]
    assert second["attack"]["rung"] == 2 and second["attack"]["restarts"] == 2
    assert second["attack"]["already_made"]["restarts"] == 1 and second["sample"] != first["sample"]
    # M alone has no threshold: its results do not depend on the FPR, and their names do not carry one
    assert {"undefended-m-white-box-m_apgd_linf-eps8.npz", "undefended-m-white-box-m_apgd_linf-eps8-rung2.npz"} \
        <= set(keys)


# --- a run at one rung: the offsets a published ladder measured on the same models ----------------


def test_a_one_rung_run_shows_the_offsets_a_published_ladder_measured_on_the_same_models(tmp_path,
                                                                                       stand_in_attack):
    from unmask.report import budget_note, format_tables

    alone, _ = evaluate(tmp_path / "reduced", {}, (1,))
    note = budget_note(alone)
    assert "Offset not measured for these models" in note and "python main.py --profile converged" in note
    published, _ = evaluate(tmp_path / "ladder", {}, (1, 2, 4))
    (tmp_path / "published" / "converged").mkdir(parents=True)
    (tmp_path / "published" / "converged" / "metrics.json").write_text(json.dumps(published))
    again, _ = evaluate(tmp_path / "reduced", {}, (1,), published=tmp_path / "published")
    found = again["adaptive_ladder"]["offsets"]
    assert found["published"] == "converged" and found["defenses"] == ["UnMask", "undefended M"]
    system = next(e for e in found["figures"] if (e["defense"], e["figure"], e["epsilon"])
                  == ("UnMask", "accuracy_system", 8.0))
    assert system["this_run"] == system["first_rung"] == 4 / 6 and system["ladder"] == 2 / 6
    assert system["moved"] == pytest.approx(-2 / 6) and system["converged"] is False
    note = budget_note(again)
    assert "published run `converged`" in note
    assert "| 10.0 | 8 | UnMask | system | 66.7 | 66.7 | ×4: 33.3 [" in note and "| -33.3 | not converged" in note
    # the same models, but a published ladder measured with revision 0 of the joint attack (now 1): no offset
    budget = published["adaptive_ladder"]["rungs"][0]["budget"]
    assert budget["joint_linf"]["revision"] == ADAPTIVE_ATTACKS.parse(["joint_linf:8"])[0].attack.attack_class.revision
    budget["joint_linf"].pop("revision")
    (tmp_path / "published" / "converged" / "metrics.json").write_text(json.dumps(published))
    assert evaluate(tmp_path / "reduced", {}, (1,), published=tmp_path / "published")[0][
        "adaptive_ladder"]["offsets"]["published"] is None
    # another model: no offset
    published["adaptive_ladder"]["fingerprints"]["defenses"] = {"UnMask": "other", "undefended M": "other"}
    (tmp_path / "published" / "converged" / "metrics.json").write_text(json.dumps(published))
    reduced = evaluate(tmp_path / "reduced", {}, (1,), published=tmp_path / "published")[0]
    assert reduced["adaptive_ladder"]["offsets"]["published"] is None
    # the ladder's own tables
    tables = format_tables({**_gray_box_sections(), **published, "config": {}})
    assert "### Budget ladder (%)" in tables and "not converged at the top rung (×4)" in tables
    assert "| 10.0 | 8 | UnMask | system | 66.7 | 50.0 | 33.3 | 33.3 [" in tables


def _gray_box_sections():
    return {"clean": {"accuracy_m": 1.0, "accuracy_adv_trained": None, "accuracy_unmask": 1.0, "n_images": 6},
            "attacks": [], "summary": {"mean_accuracy_adv_trained": None, "mean_accuracy_unmask": None},
            "thresholds": {"target_fpr": 0.1}}


def test_the_ladder_figure_has_one_line_per_defense_and_epsilon(tmp_path, stand_in_attack):
    from unmask.report import ladder_series, plot_ladder

    metrics, _ = evaluate(tmp_path, {}, (1, 2, 4))
    series = {line.label: line for line in ladder_series(metrics, "accuracy_system", 8.0)}
    assert list(series) == ["undefended M", "UnMask"]
    assert series["UnMask"].x == [1, 2, 4] and series["UnMask"].y == pytest.approx([400 / 6, 50.0, 200 / 6])
    assert all(path.stat().st_size > 1000 for path in plot_ladder(metrics, tmp_path / "ladder"))


def test_a_defense_under_another_rule_has_another_fingerprint():
    """A one-rung run takes a published ladder's offsets only from the same deployed decision:
    the paper's rule keeps the fingerprint the published ladders were made with, another rule
    (or its reject variant) gets its own, and M alone is the same under every rule."""
    from types import SimpleNamespace

    from unmask.experiment.adaptive.defenses import Defense
    from unmask.experiment.plan import DecisionSpec
    from unmask.provenance import digest

    m, k = SimpleNamespace(fingerprint="m"), SimpleNamespace(fingerprint="k")
    paper = Defense("UnMask", m, k).fingerprint
    assert paper == digest({"m": "m", "k": "k"})
    ruled = {Defense("UnMask", m, k, decision=DecisionSpec(rule, flagged)).fingerprint
             for rule, flagged in (("agreement", "reclassify"), ("agreement", "reject"), ("per-class", "reclassify"))}
    assert len(ruled) == 3 and paper not in ruled
    assert Defense("adversarial training", m, decision=DecisionSpec("agreement")).fingerprint == \
        Defense("adversarial training", m).fingerprint

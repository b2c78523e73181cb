"""The threat-model evaluation's bookkeeping on hand-made verdicts (no model runs): what each row
reports, the per-image worst case per defense, the attack named for each figure, the paired
differences, and the tables and figure drawn from them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from unmask.attacks import LINF
from unmask.attacks.adaptive import ADAPTIVE_ATTACKS
from unmask.experiment.adaptive import CleanView, Judged, Row, sequence, summarise
from unmask.report import format_threat_models, threat_model_series

LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1])
CLEAN_DETECTION = np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.7])  # image 7 is flagged when clean
THRESHOLD = 0.5
PARTS = np.zeros((8, 44), dtype=bool)
EVERY = np.arange(8)
CLEAN = {"UnMask": CleanView(CLEAN_DETECTION, PARTS)}


def unmask_row(attack, m, detection, unmask, *, positions=EVERY, threat_model="white-box", epsilon=8.0,
               defense="UnMask", threshold=THRESHOLD):
    return Row(defense, threat_model, attack, LINF, epsilon, 0.1, threshold,
               Judged(np.array(m), PARTS[positions], np.array(detection, dtype=float), np.array(unmask)), positions)


def alone_row(defense, m, *, threat_model="white-box", epsilon=8.0):
    return Row(defense, threat_model, "m_apgd_linf", LINF, epsilon, 0.1, None, Judged(np.array(m)), EVERY)


def rows():
    # joint: evades on 0 and 1 (M wrong, unflagged); 2 fooled but flagged, re-classified right
    joint = unmask_row("joint_linf", [1, 0, 0, 0, 1, 2, 0, 1], [0.1, 0.2, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1],
                       [1, 0, 2, 0, 1, 2, 0, 1])
    # reclassify on the images joint left unbroken for the re-classification (all but 0, 1): breaks 2, 3 (flagged)
    # and 4 (not flagged: M's right class is deployed)
    reclassify = unmask_row("reclassify_linf", [2, 0, 1, 2, 0, 1], [0.9, 0.9, 0.1, 0.1, 0.1, 0.1],
                            [1, 1, 0, 2, 0, 1], positions=np.array([2, 3, 4, 5, 6, 7]))
    undefended = alone_row("undefended M", [1, 2, 0, 1, 2, 0, 1, 2])  # every image fooled
    baseline = alone_row("adversarial training", [0, 1, 2, 1, 1, 2, 0, 0])  # 3 and 7 fooled
    return [joint, reclassify, undefended, baseline]


@pytest.fixture
def metrics():
    return summarise(rows(), LABELS, CLEAN, seed=0)


def summary_of(metrics, defense, over="all attacks"):
    return next(row for row in metrics["adaptive_summary"] if row["defense"] == defense and row["over"] == over)


def test_each_row_reports_its_figures_on_the_images_it_attacked(metrics):
    joint, reclassify, undefended, _ = metrics["adaptive"]
    assert joint["n_images"] == 8 and reclassify["n_images"] == 6
    assert joint["success_rate"] == 2 / 8  # 0 and 1; 2 is fooled but flagged: no success
    assert joint["accuracy_m"] == 5 / 8
    # handled: not 0, 1 (fooled, unflagged) and not 7 (flagged when clean)
    assert joint["robust_accuracy_with_detection"] == 5 / 8
    assert joint["accuracy_system"] == 6 / 8  # 2's flag deploys its right re-classification
    assert reclassify["accuracy_unmask"] == 3 / 6
    assert undefended["success_rate"] == 1.0 and undefended["accuracy_unmask"] is None
    low, high = joint["intervals"]["success_rate"]
    assert low < 0.25 < high  # a Wilson interval around the rate


def test_the_worst_case_takes_per_image_the_worst_of_every_attack(metrics):
    unmask = summary_of(metrics, "UnMask")
    assert unmask["success_rate"] == 2 / 8
    assert unmask["accuracy_unmask"] == 3 / 8  # 0, 1 (joint), 2, 3, 4 (reclassify) wrong
    # system: joint breaks 0, 1; reclassify 2 and 3 (flagged, re-classified wrong), not 4 (not flagged, M right)
    assert unmask["accuracy_system"] == 4 / 8
    assert unmask["robust_accuracy_with_detection"] == 5 / 8  # flagged attacked images are handled; 7 is not
    assert unmask["strongest"]["accuracy_unmask"] == "white-box reclassify_linf"  # three images against two
    assert unmask["strongest"]["success_rate"] == "white-box joint_linf"
    assert summary_of(metrics, "adversarial training")["accuracy_m"] == 6 / 8
    low, high = unmask["intervals"]["accuracy_system"]
    assert low <= 4 / 8 <= high


def test_unmask_minus_each_baseline_is_paired_on_the_same_images(metrics):
    comparison = next(c for c in metrics["adaptive_comparisons"] if c["baseline"] == "undefended M"
                      and c["figure"] == "accuracy_system")
    assert comparison["difference"] == pytest.approx(4 / 8 - 0)
    assert comparison["significant"] and comparison["interval"][0] > 0
    against = next(c for c in metrics["adaptive_comparisons"] if c["baseline"] == "adversarial training"
                   and c["figure"] == "robust_accuracy_with_detection")
    assert against["difference"] == pytest.approx(5 / 8 - 6 / 8)  # handled: 2 to 6; the baseline: all but 3, 7


def test_the_tables_and_the_figure_show_each_defense_under_its_own_worst_case(metrics):
    tables = format_threat_models({**metrics, "config": {"class_set": "cs3-1", "model": "compact"}})
    headline = next(line for line in tables.splitlines() if line.startswith("| 10.0 | linf | 8 |"))
    cells = [cell.strip() for cell in headline.strip("|").split("|")]
    assert cells[3].startswith("0.0 [") and cells[4].startswith("75.0 [")  # undefended M, adversarial training
    assert [cell.split(" [")[0] for cell in cells[5:]] == ["62.5", "25.0", "37.5", "50.0"]
    assert "| 10.0 | 8 | UnMask | white-box joint_linf | " in tables
    series = {line.label: line for line in threat_model_series(metrics, "linf", 0.1)}
    assert series["UnMask: system (deployed decision)"].y == [50.0]
    assert series["adversarial training: accuracy"].y == [75.0]
    assert all(line.low[0] <= line.y[0] <= line.high[0] for line in series.values())


def test_the_worst_case_at_a_budget_counts_what_a_smaller_budget_of_the_same_norm_broke():
    # at 8 joint evades on 0 and 1; at 16 (on the other images) it evades on 2 only; an image within 8 is within 16
    small = unmask_row("joint_linf", [1, 0, 2, 0, 1, 2, 0, 1], [0.1] * 8, [1, 0, 2, 0, 1, 2, 0, 1])
    large = unmask_row("joint_linf", [1, 0, 1, 2, 0, 1], [0.1] * 6, [2, 0, 1, 2, 0, 1],
                       positions=np.array([2, 3, 4, 5, 6, 7]), epsilon=16.0)
    summary = summarise([small, large], LABELS, CLEAN, seed=0)["adaptive_summary"]
    at = {row["epsilon"]: row for row in summary if row["defense"] == "UnMask" and row["over"] == "all attacks"}
    assert at[8.0]["success_rate"] == 2 / 8 and at[16.0]["success_rate"] == 3 / 8
    assert at[16.0]["attacks"] == ["white-box joint_linf:8", "white-box joint_linf"]
    assert at[16.0]["strongest"]["success_rate"] == "white-box joint_linf:8"  # two images against one


# --- two UnMask-like defenses: each judged by its own threshold and its own clean images ----------


def test_each_unmask_like_defense_is_judged_at_its_own_threshold_against_its_own_clean_images():
    # the same attacked verdicts; UnMask-R's threshold is 0.3 and its clean images all score 0.1
    m, detection, unmask = [1, 0, 0, 0, 1, 2, 0, 1], [0.1, 0.4, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1], [1, 0, 2, 0, 1, 2, 0, 1]
    rows = [unmask_row("joint_linf", m, detection, unmask),
            unmask_row("joint_linf", m, detection, unmask, defense="UnMask-R", threshold=0.3),
            alone_row("adversarial training", [0, 1, 2, 1, 1, 2, 0, 0])]
    clean = {**CLEAN, "UnMask-R": CleanView(np.full(8, 0.1), PARTS)}
    metrics = summarise(rows, LABELS, clean, seed=0)
    unmask, robust = summary_of(metrics, "UnMask"), summary_of(metrics, "UnMask-R")
    # UnMask at 0.5: 0 and 1 evade; image 7 is flagged when clean (0.7) and is not handled
    assert unmask["success_rate"] == 2 / 8 and unmask["robust_accuracy_with_detection"] == 5 / 8
    # UnMask-R at 0.3 flags 1 too; with its own clean scores nothing is flagged clean (with UnMask's: 6 / 8)
    assert robust["success_rate"] == 1 / 8 and robust["robust_accuracy_with_detection"] == 7 / 8
    assert [entry["detection_threshold"] for entry in metrics["adaptive"]] == [0.5, 0.3, None]
    pairs = {(c["defense"], c["baseline"]) for c in metrics["adaptive_comparisons"]}
    assert pairs == {("UnMask", "adversarial training"), ("UnMask-R", "adversarial training")}
    with pytest.raises(ValueError, match="UnMask-R: no clean detection scores"):
        summarise(rows, LABELS, CLEAN, seed=0)


def test_the_robust_comparison_and_figure_have_one_line_per_defense(tmp_path):
    from unmask.report import format_robust, plot_robust, robust_series

    m, detection, unmask = [1, 0, 0, 0, 1, 2, 0, 1], [0.1, 0.4, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1], [1, 0, 2, 0, 1, 2, 0, 1]
    rows = [unmask_row("joint_linf", m, detection, unmask),
            unmask_row("joint_linf", m, detection, unmask, defense="UnMask-R", threshold=0.3),
            unmask_row("k_vanish_linf", m, detection, unmask, defense="UnMask-R", threshold=0.3, epsilon=64.0),
            alone_row("undefended M", [1, 2, 0, 1, 2, 0, 1, 2]),
            alone_row("adversarial training", [0, 1, 2, 1, 1, 2, 0, 0])]
    metrics = summarise(rows, LABELS, {**CLEAN, "UnMask-R": CleanView(np.full(8, 0.1), PARTS)}, seed=0)
    clean = {"accuracy_m": 0.9, "accuracy_unmask": 0.95, "accuracy_system": 0.92, "intervals": {}}
    metrics["defenses"] = [
        {"defense": "UnMask", "fpr_target": 0.1, "detection_threshold": 0.5, "k": "k", "flag_rate": 0.08, **clean},
        {"defense": "UnMask-R", "fpr_target": 0.1, "detection_threshold": 0.3, "k": "k_robust", "flag_rate": 0.12,
         **clean},
        {"defense": "undefended M", "fpr_target": 0.1, "detection_threshold": None, "k": None, "flag_rate": None,
         "accuracy_m": 0.9, "accuracy_unmask": None, "accuracy_system": 0.9, "intervals": {}},
        {"defense": "adversarial training", "fpr_target": 0.1, "detection_threshold": None, "k": None,
         "flag_rate": None, "accuracy_m": 0.85, "accuracy_unmask": None, "accuracy_system": 0.85, "intervals": {}}]
    metrics["k"] = {"map_mask_50": 0.8, "part_precision": 0.98, "part_recall": 0.96}
    metrics["k_robust"] = {"map_mask_50": 0.7, "part_precision": 0.95, "part_recall": 0.9}
    metrics["unflagged_wrong_class"] = [{"defense": "UnMask-R", "fpr_target": 0.1, "detection_threshold": 0.3,
                                         "n_images": 8, "rate": 0.25, "interval": [0.07, 0.59]}]
    table = format_robust(metrics)
    assert "| UnMask-R | 10.0 | 0.300 | 8 | 25.0 [7.0, 59.0] | 75.0 |" in table
    assert "| UnMask-R | 10.0 | 0.300 | 90.0 | 95.0 | 92.0 | 12.0 | robust K | 0.700 | 0.950 | 0.900 |" in table
    assert "| adversarial training | 10.0 | n/a | 85.0 | – | 85.0 | – | – | – | – | – |" in table
    under = [line for line in table.splitlines() if line.startswith("| 10.0 | linf | 8 |")]
    assert [line.split(" | ")[3] for line in under] == ["undefended M", "adversarial training", "UnMask", "UnMask-R"]
    assert next(line for line in under if "| UnMask-R |" in line).split(" | ")[5].startswith("87.5 [")
    assert "| UnMask-R | k_vanish_linf | 64 | 10.0 | 8 |" in table
    assert "fine-tune per epoch" not in table  # no training record: no table
    metrics["k_robust"]["training"] = {"kept_epoch": 2, "epochs": [
        {"epoch": 1, "loss": 0.8, "val_part_recall": 0.98, "val_reclassify_accuracy": 0.5, "seconds": 52.4},
        {"epoch": 2, "loss": 0.7, "val_part_recall": 0.99, "val_reclassify_accuracy": 0.625, "seconds": 51.0},
        {"epoch": 3, "loss": 0.6, "val_part_recall": 0.99, "val_reclassify_accuracy": 0.5, "seconds": 50.0}]}
    table = format_robust(metrics)
    assert "| epoch | training loss | part recall | re-classification, transplant attack | seconds |" in table
    assert "| 2 * | 0.700 | 99.0 | 62.5 | 51 |" in table and "| 3 | 0.600 | 99.0 | 50.0 | 50 |" in table
    series = {line.label: line for line in robust_series(metrics, "robust_accuracy_with_detection")}
    assert list(series) == ["undefended M", "adversarial training", "UnMask", "UnMask-R"]
    assert series["UnMask"].y == [62.5, 62.5] and series["UnMask-R"].y == [87.5, 87.5]  # 8, then 64 counting 8
    assert all(path.stat().st_size > 1000 for path in plot_robust(metrics, tmp_path / "robust"))


# --- the evaluation's wiring, on stand-ins for the models: UnMask-R is its own pipeline ----------


class _Classifier:
    """A stand-in M: reads each image's class off its first pixel."""

    def __init__(self, name):
        self.model, self.fingerprint = f"{name} model", {"weights": name}
        self.inference = self

    @staticmethod
    def predict(images):
        return (images[:, 0, 0, 0] * 10).round().long()


class _PartExtractor:
    """A stand-in K: the clean one sees every expected part of an image's class, the robust one only the first."""

    def __init__(self, name, *, every_part):
        self.extractor = type("Extractor", (), {"model": f"{name} model", "score_threshold": 0.5})()
        self.fingerprint, self.every_part = {"weights": name}, every_part

    def parts(self, labels, class_set):
        expected = np.asarray(class_set.expected, dtype=bool)[labels]
        if not self.every_part:
            expected = expected & (np.cumsum(expected, axis=1) == 1)
        return expected


class _Evaluator:
    """What ``adaptive_evaluation`` reads of an ``Evaluator``, with the stand-ins' predictions."""

    def __init__(self, path, decision=None):
        from types import SimpleNamespace

        import torch

        from unmask.experiment.plan import DecisionSpec
        from unmask.parts import ClassSet

        self.class_set = ClassSet.named("cs3-1")
        labels = torch.tensor([0, 1, 2, 0, 1, 2])
        images = torch.zeros(6, 3, 4, 4)
        images[:, 0, 0, 0] = labels / 10
        self.test = SimpleNamespace(images=images, labels=labels, fingerprint={"data": "test"})
        self.validation_images = SimpleNamespace(images=images, labels=labels, fingerprint={"data": "val"})
        self.m, self.adv_trained = _Classifier("M"), None
        self.k, self.k_robust = _PartExtractor("K", every_part=True), _PartExtractor("robust K", every_part=False)
        self.folder, self.clean_files = SimpleNamespace(path=path), []
        self.spec = SimpleNamespace(seed=0, batch_size=4, decision=decision or DecisionSpec())
        self.runtime = SimpleNamespace(progress=False)

    @property
    def labels(self):
        return self.test.labels.numpy()

    def scored(self, labels, m_classes, k):
        from unmask.evaluation import Predictions, Scored

        parts = k.parts(labels, self.class_set)
        return Scored.of(Predictions(m=m_classes, parts=parts, part_scores=parts.astype(float)), self.class_set)

    def clean_predictions(self, images, path, *, baseline=True, m=None, k=None, what):
        self.clean_files.append((path.name, m or self.m, k or self.k))
        return self.scored(images.labels.numpy(), images.labels.numpy(), k or self.k)

    def clean(self):
        return self.clean_predictions(self.test, self.folder.path / "clean.npz", what="clean")

    def validation(self):
        return self.clean_predictions(self.validation_images, self.folder.path / "validation.npz", what="validation")

    def attacked(self, vector, options, *, sample=None, path=None, what=None, m=None, k=None):
        labels = self.labels[sample]
        return self.scored(labels, (labels + 1) % 3, k or self.k)  # PGD fools M on every image

    def key(self, images=None, **computation):
        return computation

    def result(self, path, key, count, compute, *, what, batch_size=None):
        return compute(0, np.arange(count))[0]


def test_unmask_r_is_attacked_and_judged_with_its_own_k_and_thresholds(tmp_path, monkeypatch):
    import torch

    from unmask.attacks import AttackOptions
    from unmask.attacks.adaptive import ADAPTIVE_ATTACKS, AdaptiveOptions, Verdict
    from unmask.evaluation import fix_thresholds
    from unmask.experiment.adaptive import adaptive_evaluation
    from unmask.experiment.plan import AdaptiveSpec

    evaluator = _Evaluator(tmp_path)
    attacked_with, judged_by = [], []

    def hard_judge(m, extractor, class_set, threshold):  # the paper's decision: called as before the rules
        judged_by.append((extractor.model, threshold))

        def judge(images):
            n = len(images)
            return Verdict(m.predict(images), torch.full((n,), 0.5), torch.zeros(n, dtype=torch.bool),
                           m.predict(images), torch.zeros(n, 44, dtype=torch.bool))

        return judge

    def adaptive_attack(target, images, labels, vector, options, *, indices):
        attacked_with.append((vector.name, target.part_model, target.detection_threshold))
        return type("Result", (), {"verdict": target.judge(images), "images": images, "distances": None,
                                   "success": torch.zeros(len(images), dtype=torch.bool)})()

    monkeypatch.setattr(sequence, "hard_judge", hard_judge)
    monkeypatch.setattr(sequence, "adaptive_attack", adaptive_attack)
    spec = AdaptiveSpec(vectors=ADAPTIVE_ATTACKS.parse(["joint_linf:8", "k_vanish_linf:64"]),
                        threat_models=("white-box",), fprs=(0.1,), max_images=0, options=AdaptiveOptions(),
                        batch_size=4)
    metrics = adaptive_evaluation(evaluator, spec, {}, gray_box_options=AttackOptions())

    own = {name: fix_thresholds(evaluator.scored(evaluator.labels, evaluator.labels, k), 0.1).set_jaccard
           for name, k in (("UnMask", evaluator.k), ("UnMask-R", evaluator.k_robust))}
    assert own["UnMask"] != own["UnMask-R"]
    assert ("unmask-r-validation.npz", evaluator.m, evaluator.k_robust) in evaluator.clean_files
    # every adaptive attack runs against each UnMask-like defense, crafted and judged with its own K and threshold
    assert sorted(attacked_with, key=str) == sorted(
        [(name, f"{k} model", own[defense]) for name in ("joint_linf", "k_vanish_linf")
         for defense, k in (("UnMask", "K"), ("UnMask-R", "robust K"))]
        + [("m_apgd_linf", None, 1.0)] * 2, key=str)  # M alone, at 8 and 64
    assert set(judged_by) == {("K model", own["UnMask"]), ("robust K model", own["UnMask-R"])}
    for entry in metrics["adaptive"]:
        assert entry["detection_threshold"] == own.get(entry["defense"]), entry
    assert {(e["defense"], e["threat_model"]) for e in metrics["adaptive"]} == {
        (d, t) for d in ("UnMask", "UnMask-R") for t in ("gray-box", "white-box")} | {
        ("undefended M", "gray-box"), ("undefended M", "white-box")}
    # the clean figures: each defense's own threshold, the robust K's metrics section; the robust K's clean
    # images score above the clean K's, so a threshold fixed with the clean K would flag all of them
    robust = next(e for e in metrics["defenses"] if e["defense"] == "UnMask-R")
    assert robust["detection_threshold"] == own["UnMask-R"] and robust["k"] == "k_robust"
    assert robust["flag_rate"] == 0.0 and robust["accuracy_m"] == 1.0
    gray = next(e for e in metrics["adaptive"] if (e["defense"], e["threat_model"]) == ("UnMask-R", "gray-box"))
    assert gray["part_recall"] == 1.0  # judged by the robust K: its parts, against its own clean parts
    # what no K could defend: each defense's own clean parts, at its own threshold, on the sample
    from unmask.defense import unflagged_wrong_class

    ceilings = {e["defense"]: e for e in metrics["unflagged_wrong_class"]}
    assert set(ceilings) == {"UnMask", "UnMask-R"}
    for name, k in (("UnMask", evaluator.k), ("UnMask-R", evaluator.k_robust)):
        expected = unflagged_wrong_class(k.parts(evaluator.labels, evaluator.class_set), evaluator.labels,
                                         evaluator.class_set, own[name])
        assert ceilings[name]["detection_threshold"] == own[name] and ceilings[name]["n_images"] == 6
        assert ceilings[name]["rate"] == expected.mean()


def test_an_image_broken_at_a_smaller_budget_is_not_attacked_again(monkeypatch):
    attacked = []

    def evades_on_the_first_image(evaluator, spec, sample, positions, vector, *rest, **options):
        attacked.append((vector.label, positions.tolist()))
        m = LABELS[positions].copy()
        m[:1] = (m[:1] + 1) % 3  # M fooled, not flagged: the first covered image is evaded
        return Judged(m, PARTS[positions], np.full(len(positions), 0.1), LABELS[positions])

    monkeypatch.setattr(sequence, "attacked", evades_on_the_first_image)
    rows = []
    for epsilon in (8, 16):
        rows += sequence.attack_sequence(
            SimpleNamespace(labels=LABELS, class_set=SimpleNamespace(classes=("a", "b", "c"))), _spec(), EVERY,
            np.arange(0), rows, [ADAPTIVE_ATTACKS.vector("joint_linf", epsilon)],
            SimpleNamespace(name="UnMask", k="K", clean=None),
            "white-box", 0.1, 1, THRESHOLD, None, THRESHOLD, CLEAN_DETECTION)
    assert attacked == [("joint_linf:8", list(range(8))), ("joint_linf:16", list(range(1, 8)))]
    assert [row.positions.tolist() for row in rows] == [list(range(8)), list(range(1, 8))]


def _spec(rungs=(1,)):
    from unmask.attacks.adaptive import AdaptiveOptions
    from unmask.experiment.plan import BudgetLadder

    return SimpleNamespace(options=AdaptiveOptions(), batch_size=4, ladder=BudgetLadder(rungs))


def test_an_attack_s_revision_keys_its_saved_results() -> None:
    """A change to what an attack computes bumps its revision, and the saved key with it; an attack
    at revision 0 keeps the key it had before revisions existed."""
    fabricate, vanish = ADAPTIVE_ATTACKS.vector("k_fabricate_linf", 64), ADAPTIVE_ATTACKS.vector("k_vanish_linf", 64)
    assert fabricate.attack.attack_class.revision >= 1
    assert sequence.revision(fabricate) == {"revision": fabricate.attack.attack_class.revision}
    assert sequence.revision(vanish) == {}


def test_the_saved_key_carries_the_attack_s_revision(monkeypatch, tmp_path):
    """The key a saved adaptive result is looked up by names the attack's revision (from 1 on),
    so a result saved by an earlier revision of the attack is not reused."""
    from pathlib import Path

    from unmask.attacks.adaptive import AdaptiveOptions
    from unmask.attacks.adaptive.classifier_only import ClassifierAttack
    from unmask.parts import ClassSet

    keys = []
    evaluator = SimpleNamespace(
        class_set=ClassSet.named("cs5-2"), folder=SimpleNamespace(path=Path(tmp_path)),
        test=SimpleNamespace(images=np.zeros((8, 3, 4, 4), np.float32), labels=LABELS),
        key=lambda **parts: parts,
        result=lambda path, key, n, compute, **kw: keys.append(key) or {"m": LABELS[:n], "goal": np.zeros(n, bool)})
    defense = SimpleNamespace(name="undefended M", k=None,
                              m=SimpleNamespace(inference=SimpleNamespace(model=None), fingerprint={"weights": "m"}))
    spec = SimpleNamespace(options=AdaptiveOptions(), batch_size=4)
    vector = ADAPTIVE_ATTACKS.vector("m_apgd_linf", 8)
    for revision in (0, 2):
        monkeypatch.setattr(ClassifierAttack, "revision", revision)
        sequence.attacked(evaluator, spec, EVERY, np.arange(8), vector, defense, "white-box", None, None, None, None)
    assert "revision" not in keys[0]["attack"] and keys[1]["attack"]["revision"] == 2
    assert {name: value for name, value in keys[1]["attack"].items() if name != "revision"} == keys[0]["attack"]


def test_a_deployed_rule_judges_every_row_and_keys_every_saved_result(tmp_path, monkeypatch):
    """With ``--decision-rule agreement`` each UnMask-like defense fixes the rule on its own clean
    validation images, the judge and the attacker get it, the rows are judged by its flags (here
    M is fooled to a class its parts do not best match, so agreement flags what the paper's
    threshold might not), the saved results are keyed by it, and the clean figures and the
    ceiling are the rule's."""
    import torch

    from unmask.attacks import AttackOptions
    from unmask.attacks.adaptive import ADAPTIVE_ATTACKS, AdaptiveOptions
    from unmask.experiment.adaptive import adaptive_evaluation
    from unmask.experiment.plan import AdaptiveSpec, DecisionSpec
    from unmask.experiment.stages import hard_verdict
    from unmask.rules import AgreementRule

    evaluator = _Evaluator(tmp_path, DecisionSpec("agreement", "reject"))
    rules_seen, keys = [], []

    def hard_judge(m, extractor, class_set, threshold, *, rule=None):
        rules_seen.append(rule)
        k = evaluator.k if extractor is evaluator.k.extractor else evaluator.k_robust

        def judge(images):
            labels = m.predict(images).numpy()
            fooled = (labels + 1) % 3  # M says the next class; K still sees the true class's parts
            parts = k.parts(labels, class_set)
            return hard_verdict(fooled, parts, class_set, threshold, rule=rule, part_scores=parts.astype(float))

        return judge

    def adaptive_attack(target, images, labels, vector, options, *, indices):
        if target.part_model is not None:  # an UnMask-like defense (M alone has no rule)
            assert isinstance(target.rule, AgreementRule) and target.rule.reject
        verdict = target.judge(images)
        return type("Result", (), {"verdict": verdict, "images": images, "distances": None,
                                   "success": verdict.evades(labels)})()

    monkeypatch.setattr(sequence, "hard_judge", hard_judge)
    monkeypatch.setattr(sequence, "adaptive_attack", adaptive_attack)
    original_key = evaluator.key
    evaluator.key = lambda images=None, **computation: keys.append(computation) or original_key(images, **computation)
    spec = AdaptiveSpec(vectors=ADAPTIVE_ATTACKS.parse(["joint_linf:8"]), threat_models=("white-box",), fprs=(0.1,),
                        max_images=0, options=AdaptiveOptions(), batch_size=4)
    metrics = adaptive_evaluation(evaluator, spec, {}, gray_box_options=AttackOptions())
    assert rules_seen and all(isinstance(rule, AgreementRule) and rule.target_fpr == 0.1 for rule in rules_seen)
    # the joint attack aims at evasion: it runs the same under both variants, so its results are
    # keyed by the rule and the re-classifying variant (only the deployed decision's attack by reject)
    assert all(key["decision_rule"] == "agreement" and key["flagged"] == "reclassify" for key in keys
               if key.get("threat_model") == "white-box" and key["defense"]["k"] is not None)
    for entry in metrics["adaptive"]:
        if entry["defense"] in ("UnMask", "UnMask-R"):
            # the fooled class's parts are absent, the true class's present: agreement flags every image
            assert entry["success_rate"] == 0.0, entry
            assert entry["robust_accuracy_with_detection"] == 1.0, entry
            assert entry["accuracy_system"] == 0.0, entry  # rejected: no class is deployed
    clean = {e["defense"]: e for e in metrics["defenses"]}
    assert clean["UnMask"]["decision_rule"]["rule"] == "agreement" and clean["UnMask"]["flag_rate"] == 0.0
    assert clean["UnMask"]["accuracy_system"] == 1.0
    ceilings = {e["defense"]: e for e in metrics["unflagged_wrong_class"]}
    assert ceilings["UnMask"]["rate"] == 0.0  # another class is never the best match of a class's own parts

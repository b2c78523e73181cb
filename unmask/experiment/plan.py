"""The one place where the configuration becomes the components' options.

``build_plan(config)`` checks every option's declared choices (``unmask.config.Choices``) and
every name against its registry, and builds one options object per component: the data, M and
the adversarially trained M (``ClassifierSpec``), K (``PartExtractorSpec``) and the robust K's
adversarial training (``PartExtractorAdversarialTraining``), the attacks
(``AttackVector``s and one ``AttackOptions``), the evaluation and the adaptive evaluation.
Options declared ``to="<component>.<field>"`` reach their component through
``Config.options_for``. Everything downstream takes these objects; the plan does not carry the
configuration, only what its results depend on (``results``, for the run's name and records).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from unmask.attacks import GRAY_BOX_ATTACKS, AttackOptions, AttackVector
from unmask.attacks.adaptive import ADAPTIVE_ATTACKS, AdaptiveOptions
from unmask.attacks.adaptive.active import ActiveTestOptions, active_tests_of
from unmask.attacks.adaptive.options import LADDER_GROWTHS, rung_options
from unmask.config import Config, ConfigError, check_choices, option_name
from unmask.data.synthetic import SyntheticSpec, parse_image_size
from unmask.io import stable_hash
from unmask.models.classifier import InferenceOptions
from unmask.models.part_extractor import TRAINING_EPOCHS, DetectionRule
from unmask.parts import ClassSet, UnknownNameError
from unmask.rules import FLAGGED_DECISIONS
from unmask.runtime import Runtime, resolve_device
from unmask.train.classifier import AdversarialTraining, ClassifierSpec, ClassifierTraining
from unmask.train.part_extractor import PartExtractorSpec, PartExtractorTraining
from unmask.train.robust_part_extractor import PartExtractorAdversarialTraining

T = TypeVar("T")

THREAT_MODELS: tuple[str, ...] = ("gray-box", "transfer", "white-box")
"""What the attacker knows: M only (the paper's), M and a surrogate K', or M, K and the thresholds."""

ADAPTIVE_THREAT_MODELS: tuple[str, ...] = THREAT_MODELS[1:]
"""The threat models of the adaptive attacks (gray-box rows are always shown beside them)."""


@dataclass(frozen=True)
class DataSpec:
    """Where the images come from: ``dataset`` under ``root``, M's images of ``class_set`` at
    ``image_size``; ``synthetic`` is the world to generate there (None for a real dataset)."""

    dataset: str
    root: Path
    class_set: ClassSet
    image_size: int
    synthetic: SyntheticSpec | None
    synthetic_workers: int | None = None


@dataclass(frozen=True)
class PascalPartSpec:
    """``prepare --dataset pascal-part``: the raw PASCAL-Part folder, the name merge and the
    split's seed."""

    root: Path | None
    merge_mode: str
    seed: int


FLAGGED_DEFAULT = FLAGGED_DECISIONS[0]
"""What a flagged image gets unless told: the paper's re-classification."""


@dataclass(frozen=True)
class DecisionSpec:
    """UnMask's deployed decision: the rule (``unmask.rules.DECISION_RULES``) and what a flagged
    image gets (``unmask.rules.FLAGGED_DECISIONS``). The default is the paper's."""

    rule: str = "paper"
    flagged: str = FLAGGED_DEFAULT
    classifier_data: str = "clean"
    """What the part-classifier rule is trained on (``unmask.rules.PART_CLASSIFIER_DATA``)."""

    def __post_init__(self) -> None:
        if self.classifier_data != "clean" and self.rule != "part-classifier":
            raise ValueError(f"training data {self.classifier_data!r} is for the part-classifier rule's classifier; "
                             f"the rule is {self.rule!r}")

    @property
    def reject(self) -> bool:
        return self.flagged == "reject"

    @property
    def is_paper(self) -> bool:
        """The paper's rule and re-classification: every path runs as before the rules existed."""
        return self.rule == "paper" and not self.reject

    def key(self, *, aims: str | None = "system") -> dict[str, str]:
        """What a saved result judged by the rule depends on: empty for the paper's decision, so
        the results saved before the rules existed are reused. An attack that ``aims`` at another
        output than the deployed decision (``system``) runs and is saved the same whatever a
        flagged image gets (the figures apply the variant when read), so the reject variant reuses
        the re-classifying variant's results of those attacks."""
        if self.is_paper:
            return {}
        key = {"decision_rule": self.rule, "flagged": self.flagged if aims == "system" else FLAGGED_DEFAULT}
        return key if self.classifier_data == "clean" else {**key, "classifier_data": self.classifier_data}


@dataclass(frozen=True)
class EvaluationSpec:
    """How the attacked predictions are made and judged: detection thresholds fixed on clean
    validation images at ``detection_fpr``; at most ``max_images`` test images (0: all), drawn
    with ``seed``; images computed (and sharded over processes) in batches of ``batch_size``;
    ``decision``: the deployed decision rule."""

    detection_fpr: float
    max_images: int
    seed: int
    batch_size: int
    decision: DecisionSpec = DecisionSpec()


@dataclass(frozen=True)
class BudgetLadder:
    """The white-box evaluation as rungs of growing budget: ``rungs``, multiples of the first
    rung's budget (the run's ``AdaptiveOptions``), powers of 2 from 1 (``(1,)``: the run's budget
    alone). Each rung's budget is the one below grown by a doubling of ``growth``
    (``rung_options``; the i-th doubling is ``growth[i]``, the last repeating), and its attacks
    skip the runs a smaller rung already made on the same image. The ladder stops once every
    headline figure moved by at most ``tolerance`` images over the last doubling.
    ``published``: the folder of published runs (``<name>/metrics.json``) whose ladders give a
    run at one rung its measured offsets (None: none looked up)."""

    rungs: tuple[int, ...] = (1,)
    growth: tuple[str, ...] = ("steps", "losses", "targets")
    tolerance: int = 2
    published: Path | None = None

    def __post_init__(self) -> None:
        rungs = tuple(self.rungs)
        if not rungs or rungs[0] != 1 or any(rung < 1 or rung & (rung - 1) for rung in rungs) \
                or list(rungs) != sorted(set(rungs)):
            raise ValueError(f"expected increasing powers of 2 from 1 (multiples of the first rung's budget, "
                             f"e.g. 1,2,4,8), got {','.join(map(str, rungs))}")
        if not self.growth or not set(self.growth) <= set(LADDER_GROWTHS):
            raise ValueError(f"expected doublings among {', '.join(LADDER_GROWTHS)}, got {','.join(self.growth)}")
        if self.tolerance < 0:
            raise ValueError(f"expected a tolerance of 0 images or more, got {self.tolerance}")
        object.__setattr__(self, "rungs", rungs)
        object.__setattr__(self, "growth", tuple(self.growth))

    def doublings(self, rung: int) -> tuple[str, ...]:
        """How the first rung's budget grows to ``rung``'s: one kind per doubling."""
        return tuple(self.growth[min(index, len(self.growth) - 1)] for index in range(rung.bit_length() - 1))

    def options(self, base: AdaptiveOptions, rung: int, *, targeted: bool, chooses_losses: bool,
                classes: int) -> AdaptiveOptions:
        """An attack's options at ``rung`` (``rung_options`` of ``base``), with the runs the rung
        below already made on the same images (``AdaptiveOptions.already_made``)."""
        grown = rung_options(base, self.doublings(rung), targeted=targeted, chooses_losses=chooses_losses,
                             classes=classes)
        below = [smaller for smaller in self.rungs if smaller < rung]
        if not below:
            return grown
        made = rung_options(base, self.doublings(below[-1]), targeted=targeted, chooses_losses=chooses_losses,
                            classes=classes)
        return dataclasses.replace(grown, already_made=made.runs_made())


@dataclass(frozen=True)
class AdaptiveSpec:
    """The security evaluation beyond the paper: ``vectors`` (adaptive attacks at their budgets)
    under each of ``threat_models`` (and the gray-box M-only PGD of the same norms and budgets
    beside them), on a seeded, class-stratified sample of at most ``max_images`` test images M
    gets right when clean, with detection thresholds fixed on clean validation images at each
    of ``fprs``; the attacks' hyper-parameters are ``options``; images go in batches of
    ``batch_size``. The label-only attacks run on a sub-sample of at most ``label_only_images``.
    The white-box attacks aimed at an output climb the budget ``ladder``."""

    vectors: tuple[AttackVector, ...]
    threat_models: tuple[str, ...]
    fprs: tuple[float, ...]
    max_images: int
    options: AdaptiveOptions
    batch_size: int
    label_only_images: int = 0
    ladder: BudgetLadder = BudgetLadder()
    defenses: tuple[str, ...] = ()
    """The UnMask-like defenses the attacks aim at, by file name (``slug``; empty: all of them); the
    others get their clean figures and their rule's ceiling, and no row of the threat-model table."""

    def attacks(self, defense_slug: str) -> bool:
        """Whether the white-box and transfer attacks aim at the UnMask-like defense ``defense_slug``."""
        return not self.defenses or defense_slug in self.defenses

    @property
    def enabled(self) -> bool:
        return bool(self.vectors)


@dataclass(frozen=True)
class ActiveTestSpec:
    """The attack unit tests (``python main.py active-tests``): ``vectors`` (adaptive attacks on
    UnMask's outputs at their L-inf budgets) each put through its tests, on a seeded,
    class-stratified ``max_images`` of the adaptive evaluation's white-box sample (0: all of it),
    the modified pipelines built as ``options`` say; the attacks take the adaptive evaluation's
    options, sample and detection thresholds (``AdaptiveSpec``)."""

    vectors: tuple[AttackVector, ...]
    max_images: int
    options: ActiveTestOptions


@dataclass(frozen=True)
class GridShard:
    """Which configurations of ``--grid`` this job runs: those whose number modulo ``count`` is
    ``index`` (the whole grid: 0 of 1)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"grid shard {self.index}/{self.count}: expected 0 <= I < N")

    @property
    def whole(self) -> bool:
        return self.count == 1

    def takes(self, number: int) -> bool:
        return number % self.count == self.index

    @classmethod
    def parse(cls, text: str, environment: Mapping[str, str]) -> GridShard:
        """``I/N``, or ``N`` with I from SLURM_ARRAY_TASK_ID (minus SLURM_ARRAY_TASK_MIN), or empty."""
        if not text:
            return cls()
        index, slash, count = text.partition("/")
        if not slash:
            count, index = index, ""
            if "SLURM_ARRAY_TASK_ID" not in environment:
                raise ValueError(f"{text!r} gives no shard number and SLURM_ARRAY_TASK_ID is not set; expected I/N "
                                 "(e.g. 0/4), or N inside a SLURM job array")
            index = str(int(environment["SLURM_ARRAY_TASK_ID"]) - int(environment.get("SLURM_ARRAY_TASK_MIN", 0)))
        try:
            return cls(int(index), int(count))
        except ValueError:
            raise ValueError(f"{text!r}: expected I/N with whole numbers, e.g. 0/4, or N in a SLURM job array") \
                from None


@dataclass(frozen=True)
class RuntimeSpec:
    """Where and how loudly a run executes (``Runtime.start`` resolves it)."""

    device: str
    workers: int
    verbosity: int

    def start(self) -> Runtime:
        return Runtime.start(self.device, workers=self.workers, verbosity=self.verbosity)


@dataclass(frozen=True)
class Plan:
    """Everything one experiment run needs, resolved and checked once from a ``Config``.

    ``m`` is the classifier UnMask protects (the adversarially trained one with
    ``--m-adv-trained``); ``adv_trained`` the adversarial-training baseline (None without it).
    ``k_robust``: the recipe of UnMask-R's robust K, K fine-tuned adversarially from ``k``
    (None without ``--k-adv-training``).
    ``m_checkpoint`` / ``k_checkpoint`` replace training by a user's weights file. ``results``
    is the configuration that determines the run's numbers (saved with them, hashed into
    ``run_name``); ``grid`` the plans of ``--grid``, in order.
    """

    data: DataSpec
    m: ClassifierSpec
    adv_trained: ClassifierSpec | None
    k: PartExtractorSpec
    vectors: tuple[AttackVector, ...]
    attack: AttackOptions
    evaluation: EvaluationSpec
    adaptive: AdaptiveSpec
    m_checkpoint: Path | None
    k_checkpoint: Path | None
    original_m: Path | None
    """``import-m``: the original's pickled M, and where to write it (None: the default place)."""
    imported_m: Path | None
    allow_random_init: bool
    output_dir: Path
    runtime: RuntimeSpec
    run_name: str
    results: Mapping[str, Any]
    pascal: PascalPartSpec
    grid_shard: GridShard = GridShard()
    inference: InferenceOptions = InferenceOptions()
    """How the evaluation runs M (``ClassifierInference``) and K (``PartExtractor``'s precision)."""
    grid: tuple[Plan, ...] = ()
    k_robust: PartExtractorAdversarialTraining | None = None
    active: ActiveTestSpec | None = None
    """The attack unit tests' options (``active-tests``)."""

    @property
    def class_set(self) -> ClassSet:
        return self.data.class_set

    @property
    def verbosity(self) -> int:
        return self.runtime.verbosity

    @property
    def models_dir(self) -> Path:
        """Where trained models are cached, shared by every run of this output folder."""
        return self.output_dir / "models"

    @property
    def k_splits(self) -> tuple[str, ...]:
        """K's splits a run reads: the test split, and train and val when K is to be trained
        (from scratch, or adversarially from ``--k-checkpoint``)."""
        trained = self.k_checkpoint is None or self.k_robust is not None
        return ("train", "val", "test") if trained else ("test",)

    @property
    def title(self) -> str:
        """The run as the grid names it: class set, M, and whether M is adversarially trained."""
        return f"{self.class_set.name}/{self.m.architecture}{'/advM' if self.m.adversarial else ''}"


def _checked(option: str | None, build: Callable[[], T]) -> T:
    """``build()``, with a bad value reported as a ``ConfigError`` naming the option (when the
    error's own message does not)."""
    try:
        return build()
    except ConfigError:
        raise
    except (UnknownNameError, ValueError) as error:
        raise ConfigError(f"{option_name(option)}: {error}" if option else str(error)) from None


def _run_name(config: Config, class_set: ClassSet, results: Mapping[str, Any]) -> str:
    """``<class set>-<model>[-advM]-<hash of the result-determining configuration>``, or ``--run-name``."""
    if config.run_name:
        return config.run_name
    adversarial = "-advM" if config.m_adv_trained else ""
    return f"{class_set.name}-{config.model}{adversarial}-{stable_hash(dict(results))}"


def build_plan(config: Config, *, with_grid: bool = True) -> Plan:
    """The run ``config`` describes; raises ``ConfigError`` naming the first bad option. With
    ``with_grid``, also the plans of its ``--grid`` (``Plan.grid``)."""
    check_choices(config)
    class_set = _checked("class_set", lambda: ClassSet.named(config.class_set))
    grid_shard = _checked("grid_shard", lambda: GridShard.parse(config.grid_shard, os.environ))
    device = _checked("device", lambda: resolve_device(config.device))
    on_gpu = device.type == "cuda"  # mixed precision only takes effect there, so only there is it part of a model
    vectors = _checked("attacks", lambda: GRAY_BOX_ATTACKS.parse(config.attacks, image_size=config.image_size))
    if not vectors:
        raise ConfigError("--attacks: no attack vectors given; expected e.g. 'paper' or 'pgd_linf:8,pgd_l2:300'")
    attack = _checked("mim_decay", lambda: AttackOptions(**config.options_for("attack")))

    synthetic = None
    if config.dataset == "synthetic":
        k_image_size = _checked("synthetic_k_image_size", lambda: parse_image_size(config.synthetic_k_image_size))
        synthetic = _checked(None, lambda: SyntheticSpec(
            image_size=config.image_size, images_per_class=config.synthetic_images_per_class,
            k_images=config.synthetic_k_images, distractor_prob=config.synthetic_distractor_prob, seed=config.seed,
            k_image_size=k_image_size))
    data = DataSpec(config.dataset, Path(config.data_dir), class_set, config.image_size, synthetic,
                    config.synthetic_workers or None)

    training = ClassifierTraining(**config.options_for("m_training"), seed=config.seed, amp=config.amp and on_gpu)
    standard = ClassifierSpec(config.model, class_set.classes, config.image_size, training,
                              pretrained=config.pretrained, weights_path=config.weights_path)
    adversarial = None
    if config.adv_training or config.m_adv_trained:
        recipe = _checked("adv_epsilon", lambda: AdversarialTraining(**config.options_for("adversarial")))
        adversarial = dataclasses.replace(standard, training=dataclasses.replace(
            training, epochs=config.adv_epochs or config.epochs, adversarial=recipe))

    k = _checked("k_pretrained", lambda: PartExtractorSpec(
        config.k_model, config.image_size,
        training=_checked("k_epochs", lambda: PartExtractorTraining(
            **config.options_for("k_training"), epochs=config.k_epochs or TRAINING_EPOCHS[config.k_model],
            seed=config.seed, amp=config.amp and on_gpu)),
        rule=_checked("k_score_threshold", lambda: DetectionRule(**config.options_for("k_rule"))),
        pretrained=config.k_pretrained, weights_path=config.k_weights_path))

    k_robust = None
    if config.k_adv_training:
        k_robust = _checked(None, lambda: PartExtractorAdversarialTraining(
            **config.options_for("k_adversarial")))

    adaptive_options = _checked("adaptive_steps", lambda: AdaptiveOptions(**config.options_for("adaptive"),
                                                                          seed=config.seed))
    adaptive = AdaptiveSpec(
        vectors=_checked("adaptive_attacks", lambda: ADAPTIVE_ATTACKS.parse(config.adaptive_attacks,
                                                                            image_size=config.image_size)),
        threat_models=tuple(dict.fromkeys(config.adaptive_threat_models)),
        fprs=tuple(sorted(set(float(fpr) for fpr in config.adaptive_fprs))), max_images=config.adaptive_max_images,
        options=adaptive_options, batch_size=adaptive_options.batch_size,
        label_only_images=config.adaptive_label_only_images,
        defenses=tuple(dict.fromkeys(config.adaptive_defenses)),
        ladder=_checked("adaptive_ladder", lambda: BudgetLadder(
            tuple(config.adaptive_ladder), tuple(config.adaptive_ladder_growth), config.adaptive_ladder_tolerance,
            Path(config.adaptive_published) if config.adaptive_published else None)))

    active_vectors = _checked("active_attacks", lambda: ADAPTIVE_ATTACKS.parse(config.active_attacks,
                                                                              image_size=config.image_size))
    for vector in active_vectors:
        _checked("active_attacks", lambda vector=vector: active_tests_of(vector))
    active = ActiveTestSpec(active_vectors, config.active_max_images, _checked(
        None, lambda: ActiveTestOptions(**config.options_for("active"), seed=config.seed)))

    results = config.results()
    grid = ()
    if with_grid:
        grid = tuple(build_plan(dataclasses.replace(config, class_set=name, model=model, m_adv_trained=adversarial,
                                                    run_name=""), with_grid=False)
                     for name in config.grid_class_sets for model in config.grid_models
                     for adversarial in (False, True))
    return Plan(
        data=data,
        m=adversarial if config.m_adv_trained else standard,
        adv_trained=adversarial if config.adv_training else None,
        k=k, vectors=vectors, attack=attack,
        evaluation=EvaluationSpec(config.detection_fpr, config.eval_max_images, config.seed, config.attack_batch_size,
                                  _checked("part_classifier_data",
                                           lambda: DecisionSpec(**config.options_for("decision")))),
        adaptive=adaptive,
        m_checkpoint=Path(config.m_checkpoint) if config.m_checkpoint else None,
        k_checkpoint=Path(config.k_checkpoint) if config.k_checkpoint else None,
        original_m=Path(config.original_m) if config.original_m else None,
        imported_m=Path(config.imported_m) if config.imported_m else None,
        allow_random_init=config.allow_random_init, output_dir=Path(config.output_dir),
        runtime=RuntimeSpec(config.device, config.workers, config.verbosity),
        run_name=_run_name(config, class_set, results), results=results,
        pascal=PascalPartSpec(Path(config.pascal_root) if config.pascal_root else None, config.pascal_merge,
                              config.seed),
        grid_shard=grid_shard, inference=InferenceOptions(**config.options_for("inference")), grid=grid,
        k_robust=k_robust, active=active,
    )

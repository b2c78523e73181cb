"""The one place where the configuration becomes the components' options.

``build_plan(config)`` checks every name against its registry (class sets, datasets, models,
attacks, devices) and builds one options object per component: the data, M and the
adversarially trained M (``ClassifierSpec``), K (``PartExtractorSpec``), the attacks
(``AttackVector``s and one ``AttackOptions``) and the evaluation. Everything downstream takes
these objects; nothing below this module reads the configuration's fields.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from unmask.attacks import AttackOptions, AttackVector, parse_attack_vectors
from unmask.attacks.adaptive import ADAPTIVE_ATTACK_NORMS, AdaptiveOptions
from unmask.attacks.vectors import max_epsilon
from unmask.config import Config, ConfigError, option_name
from unmask.data import DATASETS
from unmask.data.synthetic import SyntheticSpec, parse_image_size
from unmask.models.classifier import CLASSIFIER_NAMES, PRECISIONS, InferenceOptions
from unmask.models.part_extractor import PART_EXTRACTOR_NAMES, DetectionRule
from unmask.parts import MERGE_MODES, ClassSet, UnknownNameError
from unmask.runtime import resolve_device
from unmask.train.classifier import (
    LR_SCHEDULES,
    OPTIMIZERS,
    AdversarialTraining,
    ClassifierSpec,
    ClassifierTraining,
)
from unmask.train.part_extractor import PartExtractorSpec, PartExtractorTraining

T = TypeVar("T")


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
class EvaluationSpec:
    """How the attacked predictions are made and judged: detection thresholds fixed on clean
    validation images at ``detection_fpr``; at most ``max_images`` test images (0: all), drawn
    with ``seed``; images computed (and sharded over processes) in batches of ``batch_size``."""

    detection_fpr: float
    max_images: int
    seed: int
    batch_size: int


THREAT_MODELS: tuple[str, ...] = ("gray-box", "transfer", "white-box")
"""What the attacker knows: M only (the paper's), M and a surrogate K', or M, K and the thresholds."""

FULL_ADAPTIVE: tuple[str, ...] = (
    "joint_linf:8", "joint_linf:16", "joint_linf:32", "joint_linf:64",
    "joint_l2:300", "joint_l2:600", "joint_l2:1200", "joint_l2:2400",
    "orthogonal_linf:8", "orthogonal_linf:16", "orthogonal_l2:300", "orthogonal_l2:600",
    "reclassify_linf:8", "reclassify_linf:16", "reclassify_l2:300", "reclassify_l2:600",
    "k_vanish_linf:64", "k_fabricate_linf:64", "hsj_linf:8", "hsj_linf:16", "hsj_l2:300", "hsj_l2:600",
)
"""``--adaptive-attacks full``: every adaptive attack at the paper's budgets (L-inf 8 and 16, L2 300
and 600), the joint attack further out (L-inf 32 and 64, L2 1200 and 2400: where it should reach
100%), and K-only sanity attacks at 64."""


@dataclass(frozen=True)
class AdaptiveVector:
    """One adaptive attack at one budget (0-255 scale)."""

    name: str
    epsilon: float

    @property
    def norm(self) -> str:
        return ADAPTIVE_ATTACK_NORMS[self.name]

    @property
    def label(self) -> str:
        return f"{self.name}:{self.epsilon:g}"


def parse_adaptive_vectors(specs: tuple[str, ...], *, image_size: int) -> tuple[AdaptiveVector, ...]:
    """``name:epsilon`` strings, ``full`` (``FULL_ADAPTIVE``) or ``none`` (no adaptive evaluation)."""
    if tuple(specs) in ((), ("none",)):
        return ()
    vectors = []
    for spec in specs:
        if spec == "full":
            vectors.extend(parse_adaptive_vectors(FULL_ADAPTIVE, image_size=image_size))
            continue
        name, _, epsilon = spec.partition(":")
        if name not in ADAPTIVE_ATTACK_NORMS:
            raise UnknownNameError(f"unknown adaptive attack {name!r} in {spec!r}; expected one of: full, none, "
                                   f"{', '.join(ADAPTIVE_ATTACK_NORMS)}")
        try:
            value = float(epsilon)
        except ValueError:
            raise ValueError(f"{spec!r}: expected name:epsilon with epsilon on the 0-255 scale, e.g. {name}:8") \
                from None
        limit = max_epsilon(ADAPTIVE_ATTACK_NORMS[name], image_size)
        if not (math.isfinite(value) and 0 < value <= limit):
            raise ValueError(f"{spec!r}: epsilon must be a finite number in (0, {limit:g}] on the 0-255 scale")
        vectors.append(AdaptiveVector(name, value))
    return tuple(dict.fromkeys(vectors))


@dataclass(frozen=True)
class AdaptiveSpec:
    """The security evaluation beyond the paper: ``vectors`` under each of ``threat_models`` (and
    the gray-box M-only PGD of the same norms and budgets beside them), on a seeded,
    class-stratified sample of at most ``max_images`` test images M gets right when clean, with
    detection thresholds fixed on clean validation images at each of ``fprs``; the attacks'
    hyper-parameters are ``options``; images go in batches of ``batch_size``. The label-only
    attacks (``LABEL_ONLY_ATTACKS``) run on a sub-sample of at most ``label_only_images`` of them."""

    vectors: tuple[AdaptiveVector, ...]
    threat_models: tuple[str, ...]
    fprs: tuple[float, ...]
    max_images: int
    options: AdaptiveOptions
    batch_size: int
    label_only_images: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.vectors)


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
class Plan:
    """Everything one experiment run needs, resolved and checked once from a ``Config``.

    ``m`` is the classifier UnMask protects (the adversarially trained one with
    ``--m-adv-trained``); ``adv_trained`` the adversarial-training baseline (None without it).
    ``m_checkpoint`` / ``k_checkpoint`` replace training by a user's weights file.
    """

    config: Config
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
    allow_random_init: bool
    output_dir: Path
    device: str
    workers: int
    verbosity: int
    grid_shard: GridShard = GridShard()
    inference: InferenceOptions = InferenceOptions()
    """How the evaluation runs M (``inference.prepare(model)``, ``predict(..., precision=...)``) and
    K (``PartExtractor(..., precision=...)``)."""

    @property
    def class_set(self) -> ClassSet:
        return self.data.class_set

    @property
    def models_dir(self) -> Path:
        """Where trained models are cached, shared by every run of this output folder."""
        return self.output_dir / "models"


def _checked(option: str | None, build: Callable[[], T]) -> T:
    """``build()``, with a bad value reported as a ``ConfigError`` naming the option (when the
    error's own message does not)."""
    try:
        return build()
    except ConfigError:
        raise
    except (UnknownNameError, ValueError) as error:
        raise ConfigError(f"{option_name(option)}: {error}" if option else str(error)) from None


def _choose(option: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{option_name(option)}: unknown value {value!r}; expected one of: {', '.join(valid)}")


def build_plan(config: Config) -> Plan:
    """The run ``config`` describes; raises ``ConfigError`` naming the first bad option."""
    class_set = _checked("class_set", lambda: ClassSet.named(config.class_set))
    for name in config.grid_class_sets:
        _checked("grid_class_sets", lambda name=name: ClassSet.named(name))
    _choose("dataset", config.dataset, DATASETS)
    _choose("model", config.model, CLASSIFIER_NAMES)
    for name in config.grid_models:
        _choose("grid_models", name, CLASSIFIER_NAMES)
    grid_shard = _checked("grid_shard", lambda: GridShard.parse(config.grid_shard, os.environ))
    _choose("k_model", config.k_model, PART_EXTRACTOR_NAMES)
    _choose("pascal_merge", config.pascal_merge, MERGE_MODES)
    _choose("optimizer", config.optimizer, OPTIMIZERS)
    _choose("lr_schedule", config.lr_schedule, LR_SCHEDULES)
    _choose("inference_precision", config.inference_precision, PRECISIONS)
    device = _checked("device", lambda: resolve_device(config.device))
    on_gpu = device.type == "cuda"  # mixed precision only takes effect there, so only there is it part of a model
    vectors = _checked("attacks", lambda: parse_attack_vectors(config.attacks, image_size=config.image_size))
    attack = _checked("mim_decay", lambda: AttackOptions(
        steps=config.attack_steps, original_step=config.attack_original_step, decay=config.mim_decay,
        batch_size=config.attack_batch_size))

    synthetic = None
    if config.dataset == "synthetic":
        k_image_size = _checked("synthetic_k_image_size", lambda: parse_image_size(config.synthetic_k_image_size))
        synthetic = _checked(None, lambda: SyntheticSpec(
            image_size=config.image_size, images_per_class=config.synthetic_images_per_class,
            k_images=config.synthetic_k_images, distractor_prob=config.synthetic_distractor_prob, seed=config.seed,
            k_image_size=k_image_size))
    data = DataSpec(config.dataset, Path(config.data_dir), class_set, config.image_size, synthetic,
                    config.synthetic_workers or None)

    training = ClassifierTraining(
        epochs=config.epochs, batch_size=config.batch_size, optimizer=config.optimizer, lr=config.lr,
        momentum=config.momentum, weight_decay=config.weight_decay, nesterov=config.nesterov,
        lr_schedule=config.lr_schedule, augment=config.augment, seed=config.seed, amp=config.amp and on_gpu)
    standard = ClassifierSpec(config.model, class_set.classes, config.image_size, training,
                              pretrained=config.pretrained, weights_path=config.weights_path)
    adversarial = None
    if config.adv_training or config.m_adv_trained:
        recipe = _checked("adv_epsilon", lambda: AdversarialTraining(
            epsilon=config.adv_epsilon, steps=config.adv_steps, step_size=config.adv_step_size,
            random_start=config.adv_random_start))
        adversarial = dataclasses.replace(standard, training=dataclasses.replace(
            training, epochs=config.adv_epochs or config.epochs, adversarial=recipe))

    k = PartExtractorSpec(
        config.k_model, config.image_size,
        training=_checked("k_epochs", lambda: PartExtractorTraining(
            epochs=config.k_epochs, batch_size=config.k_batch_size, lr=config.k_lr, momentum=config.k_momentum,
            weight_decay=config.k_weight_decay, warmup_steps=config.k_warmup_steps, seed=config.seed,
            amp=config.amp and on_gpu)),
        rule=_checked("k_score_threshold", lambda: DetectionRule(
            config.k_score_threshold, config.k_nms_threshold, config.k_max_detections)),
        pretrained=config.k_pretrained, weights_path=config.k_weights_path)
    if k.pretrained and k.architecture == "lean":
        raise ConfigError("--k-pretrained: the lean part extractor has no pretrained weights; it trains from "
                          "scratch (use --no-k-pretrained, or --k-model resnet50-fpn for COCO weights)")

    adaptive_vectors = _checked("adaptive_attacks", lambda: parse_adaptive_vectors(config.adaptive_attacks,
                                                                                   image_size=config.image_size))
    for model in config.adaptive_threat_models:
        _choose("adaptive_threat_models", model, tuple(m for m in THREAT_MODELS if m != "gray-box"))
    adaptive = AdaptiveSpec(
        vectors=adaptive_vectors, threat_models=tuple(dict.fromkeys(config.adaptive_threat_models)),
        fprs=tuple(sorted(set(float(fpr) for fpr in config.adaptive_fprs))), max_images=config.adaptive_max_images,
        options=_checked("adaptive_steps", lambda: AdaptiveOptions(
            steps=config.adaptive_steps, restarts=config.adaptive_restarts, targets=config.adaptive_targets or None,
            relative_step=config.adaptive_relative_step, batch_size=config.adaptive_batch_size, seed=config.seed)),
        batch_size=config.adaptive_batch_size, label_only_images=config.adaptive_label_only_images)

    return Plan(
        config=config, data=data,
        m=adversarial if config.m_adv_trained else standard,
        adv_trained=adversarial if config.adv_training else None,
        k=k, vectors=vectors, attack=attack,
        evaluation=EvaluationSpec(config.detection_fpr, config.eval_max_images, config.seed, config.attack_batch_size),
        adaptive=adaptive,
        m_checkpoint=Path(config.m_checkpoint) if config.m_checkpoint else None,
        k_checkpoint=Path(config.k_checkpoint) if config.k_checkpoint else None,
        allow_random_init=config.allow_random_init, output_dir=Path(config.output_dir), device=config.device,
        workers=config.workers, verbosity=config.verbosity, grid_shard=grid_shard,
        inference=InferenceOptions(config.inference_precision, config.channels_last, config.compile),
    )

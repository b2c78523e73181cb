"""The experiment configuration's schema: every option, its type, default and help, and the profiles.

The repository's ``config.py`` is the file users edit (``SETTINGS`` there overrides the defaults
below); this module owns what the options are, so every signature can say ``Config``.

Every field below is a command-line option: ``class_set`` is ``--class-set``, ``adv_training`` is
``--adv-training`` / ``--no-adv-training``, tuples take comma-separated values
(``--attacks pgd_linf:8,mim_l2:300``). ``python main.py --help`` lists them all with their help.

Values are resolved in this order: the defaults below, then ``SETTINGS`` in the repository's
``config.py``, then the profile chosen with ``--profile`` (``PROFILES`` at the end of this file),
then the command line (``resolve_config``). The resolved
configuration is printed at the start of every run and saved with its results.

Sizes: pixel budgets (``epsilon``, ``step_size``) are on the paper's 0-255 scale; the code works
on images in [0, 1] and divides by 255 itself.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from unmask.constants import FULL_ADAPTIVE_BUDGET, GREY_LEVELS, MIN_IMAGE_SIZE, REDUCED_ADAPTIVE_BUDGET
from unmask.io import UnmaskError


@dataclass(frozen=True)
class Choices:
    """The values an option may take, named where they are defined (``"module:attribute"``, a
    tuple of names or a registry with ``choices``), so the list has one owner and this schema
    imports nothing from the layers after it. ``what`` names a value in messages; ``exact``
    False also accepts any capitalisation (the paper's class-set names)."""

    source: str
    what: str = "value"
    exact: bool = True

    def values(self) -> tuple[str, ...]:
        module, _, attribute = self.source.partition(":")
        found: Any = importlib.import_module(module)
        for name in attribute.split("."):
            found = getattr(found, name)
        return tuple(getattr(found, "choices", found))

    def allows(self, value: str) -> bool:
        """Whether ``value`` (or, for ``name:epsilon`` specs, its name) is one of the values."""
        name = value.partition(":")[0]
        values = self.values()
        return name in values or (not self.exact and name.lower() in {v.lower() for v in values})


def _default_of(config_field: dataclasses.Field) -> Any:
    """A field's default, from its default factory for a tuple option."""
    if config_field.default_factory is not dataclasses.MISSING:
        return config_field.default_factory()
    return config_field.default


def option(default: Any, help: str, *, group: str | None = None, aliases: tuple[str, ...] = (),  # noqa: A002
           choices: Choices | None = None, at_least: float | None = None, above: float | None = None,
           at_most: float | None = None, below: float | None = None, reason: str = "", results: bool = True,
           to: str | None = None, named_when_set: bool = False) -> Any:
    """A configuration field and everything it means, declared in one place:

    - ``help`` (``--help``), ``group`` (starts a new group of options there), ``aliases`` (more flags);
    - ``choices``: the valid values (``Choices``), checked when the plan is built and listed in ``--help``;
    - ``at_least`` / ``above`` / ``at_most`` / ``below``: the range of a number (of each item of a
      tuple), checked on resolution (``reason`` says why, in the error);
    - ``results``: False for options that never change a run's numbers (left out of the run's
      name and of its saved configuration);
    - ``to``: ``"<component>.<field>"``, the field of a component's options object it sets
      (``Config.options_for``), so that a new option of a component is this one line;
    - ``named_when_set``: a result option left out of the run's name and records while it has
      its default, so that the runs made before the option existed (which all had that
      behaviour) keep their names and cached results.
    """
    metadata = {"help": help, "group": group, "aliases": aliases, "choices": choices, "at_least": at_least,
                "above": above, "at_most": at_most, "below": below, "reason": reason, "results": results, "to": to,
                "named_when_set": named_when_set or None}
    metadata = {key: value for key, value in metadata.items() if value is not None}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=metadata)
    return field(default=default, metadata=metadata)


_CLASSIFIERS = Choices("unmask.models.classifier:CLASSIFIER_NAMES", "model")
_CLASS_SETS = Choices("unmask.parts:CLASS_SET_NAMES", "class set", exact=False)
_REDUCED = REDUCED_ADAPTIVE_BUDGET


@dataclass
class Config:
    # --- general ---------------------------------------------------------------------------
    seed: int = option(0, "Seed for data generation, training, attacks and sampling.", group="general")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps; auto takes this process's GPU when there is one.",
                         results=False)
    workers: int = option(0, "DataLoader worker processes (0: load in the main process); also decode M's images "
                          "in parallel when they are read into memory.", at_least=0, results=False)
    inference_precision: str = option("auto", "Precision of M's predictions and K's part extraction (attacks and "
                                      "training are unaffected): auto (on a GPU mixed precision, bfloat16 where it "
                                      "supports it, else float16; float32 on the CPU), float32, or bfloat16 / float16 "
                                      "autocast on any device (bfloat16 is faster on CPUs with AVX512-BF16 or AMX).",
                                      choices=Choices("unmask.models.classifier:PRECISIONS", "precision"),
                                      to="inference.precision")
    channels_last: bool = option(False, "Run M in channels-last memory format: about 1.25x faster attacks on "
                                 "ResNet50 on a CPU, slower for compact (K always runs channels-last).",
                                 to="inference.channels_last")
    compile: bool = option(False, "torch.compile M's forward for the evaluation (compiles for tens of seconds "
                           "first; little gain for ResNet50 on a CPU, worth trying on a GPU).", to="inference.compile")
    verbosity: int = option(1, "0: quiet, 1: progress bars and stage messages, 2: debug detail.", results=False)
    output_dir: str = option("results", "Where runs write results/<run name>/ and cached models results/models/.",
                             results=False)
    run_name: str = option("", "Name of the results folder; empty: <class set>-<model>-<hash of the config>.",
                           results=False)

    # --- data ------------------------------------------------------------------------------
    dataset: str = option("synthetic", "synthetic: the embedded part world, generated on first use; "
                          "unmask: the real UnMask dataset (data.zip) in its original layout.", group="data",
                          choices=Choices("unmask.data:DATASETS", "dataset"))
    data_dir: str = option("data/synthetic", aliases=("--out",), help="Dataset root: <root>/<class set>/{train,val,test}/<class>/ for M "
                           "and <root>/VOC2010/{train,val,test}.json with Images/ for K.")
    class_set: str = option("cs5-2", "The class set (the paper's names CS3a, CS3b, CS5a, CS5b too).", choices=_CLASS_SETS)
    image_size: int = option(128, "Side of the square images M and K see (the original: 150).", at_least=MIN_IMAGE_SIZE,
                             reason="too small: parts stop being recognisable below it; the original uses 150")
    synthetic_images_per_class: int = option(300, aliases=("--images-per-class",), help="Synthetic world: M images per class, over train/val/test.",
                                             at_least=1)
    synthetic_k_images: int = option(1600, "Synthetic world: K images (all 16 classes), over train/val/test.",
                                     at_least=1)
    synthetic_distractor_prob: float = option(0.0, "Synthetic world: chance that an object carries one "
                                              "part of another class (marked in the annotations).", at_least=0,
                                              at_most=1)
    synthetic_k_image_size: str = option("", "Synthetic world: K's images about WIDTHxHEIGHT pixels, PASCAL VOC-like "
                                         "(e.g. 500x375: the shorter side varies by up to 12 percent, a quarter are "
                                         "portrait); empty: square at --image-size, as M's.")
    pascal_root: str = option("", "prepare --dataset pascal-part: folder with Annotations_Part/ and JPEGImages/.")
    pascal_merge: str = option("explicit", "PASCAL-Part name merge: explicit (the corrected table) or "
                               "original (the original's substring merge, with handlebar->hand and chainwheel->wheel).",
                               choices=Choices("unmask.parts:MERGE_MODES", "merge mode"))
    synthetic_workers: int = option(0, "Synthetic world: processes drawing images (0: one per CPU core, at most 8); "
                                    "the images do not depend on it.", at_least=0, results=False)

    # --- model M, the protected classifier -----------------------------------------------------
    model: str = option("compact", "M's architecture: compact and resnet18 (CPU demo) or the paper's.",
                        group="model M", choices=_CLASSIFIERS)
    pretrained: bool = option(False, "Start M from ImageNet weights (torchvision cache or --weights-path).")
    weights_path: str = option("", "File with ImageNet weights for M's backbone (instead of torchvision's cache).")
    allow_random_init: bool = option(True, "When pretrained weights are missing offline, start from random "
                                     "weights instead of stopping with an error.")
    m_checkpoint: str = option("", "Use this trained M instead of training or the cache.")
    original_m: str = option("", "import-m: the original's released M, a torchvision model saved whole with "
                             "torch.save(model); read without a full unpickle (only torch and torchvision classes).",
                             results=False)
    imported_m: str = option("", "import-m: the weights file to write, for --m-checkpoint (empty: "
                             "<output-dir>/imported/m-<model>-<class set>.pt).", results=False)
    batch_size: int = option(32, "M's training batch size (the original: 32).", at_least=1, to="m_training.batch_size")
    epochs: int = option(15, "M's training epochs; the best validation epoch is kept (the original: 30).", at_least=1,
                         to="m_training.epochs")
    optimizer: str = option("sgd", "M's optimiser.", choices=Choices("unmask.train.classifier:OPTIMIZERS", "optimizer"),
                            to="m_training.optimizer")
    lr: float = option(0.05, "M's learning rate (the original: 0.001).", at_least=0, to="m_training.lr")
    momentum: float = option(0.9, "SGD momentum (the original: 0.9).", at_least=0, to="m_training.momentum")
    weight_decay: float = option(0.0002, "Weight decay (the original: 0.0002).", at_least=0,
                                 to="m_training.weight_decay")
    nesterov: bool = option(False, "Nesterov momentum for SGD.", to="m_training.nesterov")
    augment: bool = option(False, "Augment M's training images (flip, crop, colour jitter).", to="m_training.augment")
    lr_schedule: str = option("cosine", "M's learning-rate schedule: constant (the original) or cosine "
                              "(decays towards 0 over the epochs).",
                              choices=Choices("unmask.train.classifier:LR_SCHEDULES", "schedule"),
                              to="m_training.lr_schedule")

    # --- the adversarial-training baseline ---------------------------------------------------
    adv_training: bool = option(True, "Train and evaluate the adversarial-training baseline "
                                "(Madry PGD-Linf training).", group="adversarial training")
    adv_epsilon: float = option(4.0, "Training epsilon, 0-255 scale (the original searched 1, 2, 4, 6, 8, 16).",
                                at_least=0, at_most=GREY_LEVELS, reason="255 is the whole 0-255 pixel range",
                                to="adversarial.epsilon")
    adv_steps: int = option(7, "PGD steps per training batch.", at_least=1, to="adversarial.steps")
    adv_step_size: float = option(2.0, "PGD step size per training step, 0-255 scale.", at_least=0,
                                  to="adversarial.step_size")
    adv_random_start: bool = option(True, "Start training PGD at a random point of the epsilon ball.",
                                    to="adversarial.random_start")
    adv_epochs: int = option(0, "Epochs of adversarial training (0: the same as --epochs).", at_least=0)
    m_adv_trained: bool = option(False, "UnMask protects the adversarially trained M instead of the standard one "
                                 "(the original's grid runs both).")

    # --- model K, the part extractor -------------------------------------------------------------
    k_model: str = option("slim", "K's architecture: slim (half-width ResNet-18 trunk of three stages, 32-channel "
                          "FPN, trainable BatchNorm: the synthetic world on a CPU), lean (ResNet-18 FPN: the default "
                          "K before slim, for earlier figures) or resnet50-fpn (torchvision's Mask R-CNN v2, for real "
                          "data).", group="model K",
                          choices=Choices("unmask.models.part_extractor:PART_EXTRACTOR_NAMES", "part extractor"))
    k_pretrained: bool = option(False, "Start K from COCO weights (torchvision cache or --k-weights-path).")
    k_weights_path: str = option("", "File with COCO Mask R-CNN weights for K.")
    k_checkpoint: str = option("", "Use this trained K instead of training or the cache.")
    k_epochs: int = option(0, "K's training epochs (the original: 40); 0: the architecture's own (slim 10, lean 5, "
                           "resnet50-fpn 40: unmask.models.part_extractor.TRAINING_EPOCHS).", at_least=0)
    k_batch_size: int = option(8, "K's training batch size.", at_least=1, to="k_training.batch_size")
    k_lr: float = option(0.04, "K's peak SGD learning rate (warm-up, then cosine decay to 0).", at_least=0,
                         to="k_training.lr")
    k_momentum: float = option(0.9, "K's SGD momentum.", at_least=0, to="k_training.momentum")
    k_weight_decay: float = option(0.0001, "K's weight decay.", at_least=0, to="k_training.weight_decay")
    k_warmup_steps: int = option(100, "Linear learning-rate warm-up steps for K.", at_least=0,
                                 to="k_training.warmup_steps")
    k_score_threshold: float = option(0.5, "Keep K's detections scoring at least this (the original: 0.0, every detection).",
                                      at_least=0, at_most=1, to="k_rule.score_threshold")
    k_nms_threshold: float = option(0.3, "K's non-maximum suppression IoU threshold (the original: 0.3).", at_least=0,
                                    at_most=1, to="k_rule.nms_threshold")
    k_max_detections: int = option(100, "K's detections per image at most (the original: 100).", at_least=1,
                                   to="k_rule.max_detections")
    amp: bool = option(True, "Mixed precision when training on a GPU (ignored on the CPU).")

    # --- adversarial training of K (UnMask-R's robust K) ---------------------------------------
    k_adv_training: bool = option(False, "Also train UnMask-R's robust K: the clean K fine-tuned adversarially, "
                                  "its inner attack aimed at K's part decisions as the white-box attacks aim "
                                  "(unmask/train/robust_part_extractor.py; cached like K).",
                                  group="adversarial training of K")
    k_adv_epsilon: float = option(8.0, "L-inf epsilon of K's training perturbations, 0-255 scale.", above=0,
                                  at_most=GREY_LEVELS, reason="255 is the whole 0-255 pixel range",
                                  to="k_adversarial.epsilon")
    k_adv_recipe: str = option("fgsm", "K's inner loop: pgd (random start, --k-adv-steps steps), fgsm (FGSM with "
                               "a random start, one step of 1.25 epsilon; Wong et al. 2020) or free (each batch "
                               "replayed --k-adv-steps times, the perturbation following each update's gradient; "
                               "Shafahi et al. 2019; needs --k-adv-losses training).",
                               choices=Choices("unmask.train.robust_part_extractor:INNER_LOOPS", "inner loop"),
                               to="k_adversarial.inner_loop")
    k_adv_steps: int = option(1, "PGD steps (pgd) or replays per batch (free) of K's inner loop.", at_least=1,
                              to="k_adversarial.steps")
    k_adv_step_size: float = option(0.0, "Step of K's inner loop, 0-255 scale (0: pgd 2.5 epsilon / steps, fgsm "
                                    "1.25 epsilon, free epsilon).", at_least=0, to="k_adversarial.step_size")
    k_adv_losses: tuple[str, ...] = option(("vanish", "transplant"), "What K's inner attack maximises, one loss per "
                                           "image in turn: training (K's Mask R-CNN losses; Zhang & Wang 2019), "
                                           "vanish (the white-box hinges that make every part vanish), transplant "
                                           "(the hinges towards another class's parts).",
                                           choices=Choices("unmask.train.robust_part_extractor:INNER_LOSSES",
                                                           "inner loss"), to="k_adversarial.losses")
    k_adv_target: str = option("random", "The transplant loss's class: random, nearest or farthest (the other "
                               "class whose parts overlap most or least with the image's annotated parts).",
                               choices=Choices("unmask.train.robust_part_extractor:TRANSPLANT_TARGETS", "target"),
                               to="k_adversarial.transplant_target")
    k_adv_clean_weight: float = option(0.0, "Weight w of the clean images in K's update: (1 - w) x K's losses on "
                                       "the adversarial images + w x on the clean ones.", at_least=0, at_most=1,
                                       to="k_adversarial.clean_weight")
    k_adv_trades: float = option(0.0, "Weight of the TRADES-style consistency of K's part probabilities, clean "
                                 "against adversarial, on the clean image's proposals (0: none).", at_least=0,
                                 to="k_adversarial.trades")
    k_adv_epochs: int = option(2, "Epochs of K's adversarial fine-tune from the clean K.", at_least=1,
                               to="k_adversarial.epochs")
    k_adv_lr: float = option(0.004, "Peak SGD learning rate of K's adversarial fine-tune (warm-up, then cosine "
                             "decay to 0).", at_least=0, to="k_adversarial.lr")
    k_adv_keep: str = option("last", "Which epoch of K's adversarial fine-tune is kept: last, or reclassify (the "
                             "epoch with the highest validation re-classification accuracy under a PGD transplant "
                             "attack; early stopping on robust validation accuracy, Rice et al. 2020).",
                             choices=Choices("unmask.train.robust_part_extractor:KEPT_EPOCHS", "kept epoch"),
                             to="k_adversarial.keep", named_when_set=True)
    k_adv_val_images: int = option(32, "Validation images of each epoch's robust figures (vanish part recall, "
                                   "re-classification accuracy under attack); 0: none.", at_least=0,
                                   to="k_adversarial.val_images", named_when_set=True)
    k_adv_val_steps: int = option(5, "PGD steps of each epoch's validation attacks.", at_least=1,
                                  to="k_adversarial.val_steps", named_when_set=True)

    # --- attacks ---------------------------------------------------------------------------
    attacks: tuple[str, ...] = option(("paper",), "Gray-box attack vectors on M, name:epsilon (0-255 scale), "
                                      "comma-separated; 'paper' is the paper's eight.", group="attacks",
                                      choices=Choices("unmask.attacks:GRAY_BOX_ATTACKS", "attack"))
    attack_steps: int = option(20, "Iterations of the iterative attacks (the original: 20).", at_least=1,
                               to="attack.steps")
    attack_original_step: bool = option(False, "Reproduce the original's step size of 2.0 in [0,1] pixels "
                                        "(it overshoots every step) instead of the corrected step.",
                                        to="attack.original_step")
    mim_decay: float = option(1.0, "Momentum decay of the MIM attacks (the original: 1.0).", at_least=0,
                              to="attack.decay")
    attack_batch_size: int = option(64, "Images per attack batch.", at_least=1, to="attack.batch_size")

    # --- adaptive evaluation ------------------------------------------------------------------
    adaptive_attacks: tuple[str, ...] = option(
        tuple(f"{name}_linf:{epsilon}" for epsilon in (8, 16, 32, 64) for name in ("joint", "reclassify", "transplant")),
        "Adaptive attacks on UnMask, name:epsilon (0-255 scale), comma-separated, run per budget in this order (each "
        "aimed at one output: joint at evading detection, reclassify at the re-classification, transplant at the "
        "deployed decision; each skips the images an earlier one broke for its output); the baselines (M alone) "
        "meet m_apgd at the same budgets. 'full' is the full evaluation's list, 'none' turns the adaptive "
        "evaluation off.", group="adaptive evaluation",
        choices=Choices("unmask.attacks.adaptive:ADAPTIVE_ATTACKS", "adaptive attack"))
    adaptive_threat_models: tuple[str, ...] = option(
        ("white-box",), "Threat models of the adaptive attacks: white-box (the attacker knows M, K, the part table "
        "and the thresholds) and transfer (crafted on M and a surrogate K' trained with another seed on half of K's "
        "training split, judged on the real K). Gray-box rows (the paper's M-only PGD) are always shown beside them.",
        choices=Choices("unmask.experiment.plan:ADAPTIVE_THREAT_MODELS", "threat model"))
    adaptive_defenses: tuple[str, ...] = option(
        (), "The UnMask-like defenses the white-box and transfer attacks aim at, by name in file names: unmask, "
        "unmask-r, unmask-r-adv-m (empty: every one the run has). The others get their clean figures and their "
        "rule's ceiling only; the baselines (M alone) are always attacked.",
        choices=Choices("unmask.experiment.adaptive.defenses:PART_BASED_DEFENSES", "defense"), named_when_set=True)
    adaptive_fprs: tuple[float, ...] = option((0.10,), "False-positive rates (on clean validation images) at which "
                                              "the detection threshold is fixed for the adaptive evaluation.",
                                              above=0, below=1)
    adaptive_max_images: int = option(100, "Adaptive evaluation on a seeded, class-stratified sample of this many "
                                      "test images that M classifies correctly (0: all of them).", at_least=0)
    adaptive_steps: int = option(_REDUCED.steps, "PGD steps per run of the adaptive attacks.", at_least=1,
                                 to="adaptive.steps")
    adaptive_restarts: int = option(_REDUCED.restarts, "Runs per target class (the first from the clean image, the "
                                    "others from random points of the epsilon ball).", at_least=1,
                                    to="adaptive.restarts")
    adaptive_targets: int = option(_REDUCED.targets, "Target classes the targeted adaptive attacks try per image, "
                                   "best-ranked first (0: every class but the true one).", at_least=0,
                                   to="adaptive.targets")
    adaptive_step_schedule: str = option("apgd", "Step rule of the adaptive attacks: apgd (APGD's step-size "
                                         "control, Croce & Hein 2020), cosine (from twice the base step down to 0) "
                                         "or constant.",
                                         choices=Choices("unmask.attacks.adaptive.options:STEP_SCHEDULES", "rule"),
                                         to="adaptive.step_schedule")
    adaptive_reclassify_losses: tuple[str, ...] = option(
        _REDUCED.reclassify_losses, "The re-classification attack's runs, in order: targeted (towards each of "
        "--adaptive-targets best-matching other classes), dlr and ce (untargeted, APGD's losses on K's soft Jaccards "
        "as logits).", choices=Choices("unmask.attacks.adaptive.options:RECLASSIFY_LOSSES", "loss"),
        to="adaptive.reclassify_losses")
    adaptive_label_only_images: int = option(20, "The label-only attack (HopSkipJump, a check against gradient "
                                             "masking) runs on a seeded, class-stratified sub-sample of this many of "
                                             "the adaptive sample's images (0: all): about a minute per image on a "
                                             "CPU.", at_least=0)
    adaptive_relative_step: float = option(_REDUCED.relative_step, "Base step of the cosine and constant step "
                                           "rules: this x epsilon / steps (cosine from twice that down to 0; APGD "
                                           "sets its own steps).", above=0,
                                           to="adaptive.relative_step")
    adaptive_batch_size: int = option(32, "Images per adaptive-attack batch (the unit of sharding and resume).",
                                      at_least=1, to="adaptive.batch_size")
    adaptive_ladder: tuple[int, ...] = option(
        (1,), "The budget ladder: rungs as multiples of the budget above (--adaptive-steps, --adaptive-restarts, "
        "--adaptive-targets, --adaptive-reclassify-losses), increasing powers of 2 from 1, e.g. 1,2,4,8. Each rung "
        "attacks, per attack, only the images whose aimed-at output every smaller rung and budget left standing, "
        "and stops the ladder once every headline figure moved by at most --adaptive-ladder-tolerance images over "
        "the last doubling (docs/convergence.md). 1: the run's budget alone.", at_least=1)
    adaptive_ladder_growth: tuple[str, ...] = option(
        ("steps", "losses", "targets"), "How each doubling of the ladder grows an attack's budget, in order (the "
        "last repeats): steps (twice the steps), losses (the re-classification attack's untargeted DLR and CE "
        "runs), targets (twice the target classes, up to every other class), restarts (twice the runs per target, "
        "from random starts); where one cannot grow an attack, its restarts double (docs/convergence.md: why this "
        "order).",
        choices=Choices("unmask.attacks.adaptive.options:LADDER_GROWTHS", "growth"))
    adaptive_ladder_tolerance: int = option(2, "The ladder's stopping rule: a figure has converged when doubling "
                                            "the budget moves it by at most this many images of the sample.",
                                            at_least=0)
    adaptive_published: str = option("results/published", "Published runs (<name>/metrics.json): a run at one rung "
                                     "shows by how much a published ladder on the same models and sample moved each "
                                     "white-box figure (empty: look none up).", results=False)

    # --- attack unit tests (python main.py active-tests) ------------------------------------------
    # results=False: they change only the tests' own results (keyed by them), not a run's numbers or name
    active_attacks: tuple[str, ...] = option(
        tuple(f"{name}_linf:{epsilon}" for epsilon in (8, 16) for name in ("joint", "transplant", "reclassify")),
        "active-tests: the adaptive attacks put through the attack unit tests (Zimmermann et al. 2022), "
        "name:epsilon, L-inf: joint, orthogonal, transplant and hsj in the evasion and inverted tests, reclassify in "
        "the re-classification test; each runs with the --adaptive-* options.", group="attack unit tests",
        choices=Choices("unmask.attacks.adaptive:ADAPTIVE_ATTACKS", "adaptive attack"), results=False)
    active_max_images: int = option(0, "active-tests: a seeded, class-stratified sub-sample of this many of the "
                                    "white-box sample (--adaptive-max-images; 0: all of it).", at_least=0,
                                    results=False)
    active_inner_points: int = option(256, "active-tests: inner points (the clean image and 8-bit points of the "
                                      "ball shrunk by 5 percent) the binarized M's readout must keep at the true class.",
                                      at_least=2, results=False, to="active.inner_points")
    active_k_inner_points: int = option(32, "active-tests: inner points of the re-classification test's modified K "
                                        "(each costs a pass of K).", at_least=1, results=False,
                                        to="active.k_inner_points")
    active_closeness: float = option(0.9, "active-tests: where each readout's boundary lies between the inner "
                                     "points (0) and the planted point (1).", above=0, below=1, results=False,
                                     to="active.closeness")
    active_random_samples: int = option(32, "active-tests: points of the ball (half uniform, half corners) the "
                                        "random-search baseline tries per image and test.", at_least=2,
                                        results=False, to="active.random_samples")
    active_plant_steps: int = option(200, "active-tests: steps of the search for the evasion test's planted point "
                                     "(K's parts made to pass detection for a target class).", at_least=1,
                                     results=False, to="active.plant_steps")
    active_plant_targets: int = option(3, "active-tests: target classes tried per image for a planted point, "
                                       "nearest first (0: every eligible class).", at_least=0, results=False,
                                       to="active.plant_targets")

    # --- evaluation ----------------------------------------------------------------------------
    detection_fpr: float = option(0.10, "Target false-positive rate for the detection threshold, fixed on "
                                  "the clean validation split.", group="evaluation", at_least=0, at_most=1)
    eval_max_images: int = option(0, "Evaluate at most this many test images (0: all).", at_least=0)
    decision_rule: str = option("paper", "UnMask's deployed decision rule (docs/unmask-r.md), each fixed on the clean "
                                "validation images at the stated FPR and known to the white-box attacks: "
                                "paper (the paper's Jaccard threshold), agreement (also flag when M's class is not "
                                "the best match of K's parts), per-class (one threshold per M class), "
                                "part-classifier (a classifier on K's part evidence, trained on K's outputs for the "
                                "clean training images, re-classifies and must agree with M).",
                                choices=Choices("unmask.rules:DECISION_RULES", "decision rule"),
                                to="decision.rule", named_when_set=True)
    flagged_decision: str = option("reclassify", "What a flagged image gets: reclassify (the rule's re-classified "
                                   "class, the paper's) or reject (no class: a detector's answer).",
                                   choices=Choices("unmask.rules:FLAGGED_DECISIONS", "decision"),
                                   to="decision.flagged", named_when_set=True)
    part_classifier_data: str = option("clean", "What the part-classifier rule's classifier is trained on: clean (K's "
                                       "outputs for M's clean training images) or clean+attacked (also K's outputs "
                                       "for them under a K-only 10-step PGD at L-inf 8 towards another class's "
                                       "parts, labelled with their own class).",
                                       choices=Choices("unmask.rules:PART_CLASSIFIER_DATA", "training data"),
                                       to="decision.classifier_data", named_when_set=True)
    grid_class_sets: tuple[str, ...] = option(("cs3-1", "cs3-2", "cs5-1", "cs5-2"), "Class sets of --grid.",
                                              choices=_CLASS_SETS, results=False)
    grid_models: tuple[str, ...] = option(("compact", "resnet18"), "Models M of --grid.", choices=_CLASSIFIERS,
                                          results=False)
    grid_shard: str = option("", "Run only a share of --grid, as one job of several (a SLURM job array): I/N runs "
                             "configurations I, I+N, ... (from 0); N alone takes I from SLURM_ARRAY_TASK_ID. "
                             "python main.py grid-report then combines the finished ones. Empty: the whole grid.",
                             results=False)

    def options_for(self, component: str) -> dict[str, Any]:
        """The values of every option declared ``to="<component>.<field>"``, by field name: the
        keyword arguments of that component's options object."""
        prefix = f"{component}."
        return {config_field.metadata["to"].removeprefix(prefix): getattr(self, config_field.name)
                for config_field in dataclasses.fields(self)
                if config_field.metadata.get("to", "").startswith(prefix)}

    def results(self) -> dict[str, Any]:
        """The options that determine a run's numbers (``results`` not declared False), by name."""
        return {config_field.name: getattr(self, config_field.name) for config_field in dataclasses.fields(self)
                if config_field.metadata.get("results", True)
                and not (config_field.metadata.get("named_when_set")
                         and getattr(self, config_field.name) == _default_of(config_field))}


PROFILES: dict[str, dict[str, object]] = {
    # the defaults above: runs on a laptop CPU in minutes on the synthetic world
    "demo": {},
    # the paper's models, image size and hyper-parameters (a GPU is strongly advised)
    "paper": {
        "image_size": 150,
        "synthetic_k_image_size": "500x375",  # PASCAL-Part's images, for K (resnet50-fpn resizes them to 800 px)
        "channels_last": True,
        "model": "resnet50",
        "pretrained": True,
        "allow_random_init": False,
        "batch_size": 32,
        "epochs": 30,
        "optimizer": "sgd",
        "lr": 0.001,
        "momentum": 0.9,
        "weight_decay": 0.0002,
        "nesterov": False,
        "lr_schedule": "constant",
        "k_model": "resnet50-fpn",
        "k_pretrained": True,
        "k_epochs": 40,
        "k_batch_size": 4,
        "k_lr": 0.01,
        "k_score_threshold": 0.0,
        "grid_models": ("vgg16", "resnet50", "densenet121"),
    },
    # the full adaptive evaluation (python main.py --profile adaptive-full): every adaptive attack at
    # every budget, both threat models, both FPRs, 100 steps x 2 runs for every target class
    "adaptive-full": {
        "adaptive_attacks": ("full",),
        "adaptive_threat_models": ("white-box", "transfer"),
        "adaptive_fprs": (0.05, 0.10),
        **{f"adaptive_{name}": value for name, value in FULL_ADAPTIVE_BUDGET.as_dict().items()},
    },
    # UnMask-R against adversarial training (python main.py --profile robust): the robust K beside K, every
    # UnMask-like defense under the white-box attacks aimed at each of its outputs at L-inf 4, 8 and 16, and the
    # K-only sanity attacks at 64 (they must still win: robustness that holds there means broken gradients);
    # M, K and the adversarially trained M keep the defaults' options, so their cached weights are reused
    "robust": {
        "k_adv_training": True,
        "adaptive_attacks": (*(f"{name}_linf:{epsilon}" for epsilon in (4, 8, 16)
                               for name in ("joint", "reclassify", "transplant")),
                             "k_vanish_linf:64", "k_fabricate_linf:64"),
        "adaptive_threat_models": ("white-box",),
        "adaptive_fprs": (0.05, 0.10),
    },
    # the converged white-box figures (python main.py --profile converged): the budget ladder 1x to 32x on the
    # default run's models (cached, reused), white-box at L-inf 8 and 16, detection at 10% FPR, 100 images; the
    # steps double twice (the joint attack finds the evasions its unit tests plant only with runs of 160-200
    # steps: docs/active_tests.md), then the losses, then the targets; for the robust profile's defenses:
    # --profile robust with these adaptive options
    "converged": {
        "adaptive_attacks": tuple(f"{name}_linf:{epsilon}" for epsilon in (8, 16)
                                  for name in ("joint", "reclassify", "transplant")),
        "adaptive_threat_models": ("white-box",),
        "adaptive_fprs": (0.10,),
        "adaptive_max_images": 100,
        "adaptive_ladder": (1, 2, 4, 8, 16, 32),
        "adaptive_ladder_growth": ("steps", "steps", "losses", "targets"),
    },
}
"""Named sets of overrides, applied on top of the defaults by ``--profile``."""


class ConfigError(UnmaskError, ValueError):
    """An invalid configuration value; the message names the option and what was expected."""


def option_name(field_name: str) -> str:
    """The command-line spelling of a field: ``class_set`` -> ``--class-set``."""
    return "--" + field_name.replace("_", "-")


def resolve_config(
    settings: Mapping[str, Any] | None = None,
    profile: str = "demo",
    overrides: Mapping[str, Any] | None = None,
    *,
    profiles: Mapping[str, Mapping[str, Any]] = PROFILES,
) -> Config:
    """Defaults -> ``settings`` (the repository's config.py) -> ``profile`` -> ``overrides`` (the
    command line), with every number checked. Names (class sets, models, attacks) are checked
    when the experiment's plan is built from the result (``unmask.experiment.build_plan``)."""
    if profile not in profiles:
        raise ConfigError(f"unknown profile {profile!r}; expected one of: {', '.join(profiles)}")
    names = {f.name for f in dataclasses.fields(Config)}
    values: dict[str, Any] = {}
    for source, mapping in (("config.py SETTINGS", settings or {}), (f"profile {profile!r}", profiles[profile]),
                            ("overrides", overrides or {})):
        for key, value in mapping.items():
            if key not in names:
                raise ConfigError(f"{source}: unknown option {key!r}; expected one of: {', '.join(sorted(names))}")
            values[key] = value
    config = Config(**values)
    check_values(config)
    return config


def check_values(config: Config) -> None:
    """Every numeric option finite and in its declared range (``option``'s ``at_least``,
    ``above``, ``at_most``, ``below``; each item of a tuple); raises ``ConfigError`` naming the
    option."""
    for config_field in dataclasses.fields(config):
        value, metadata = getattr(config, config_field.name), config_field.metadata
        name = option_name(config_field.name)
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, bool) or not isinstance(item, int | float):
                continue
            # argparse's float() takes "inf" and "nan"; NaN passes every comparison below unnoticed
            if not math.isfinite(item):
                raise ConfigError(f"{name}: expected a finite number, got {item}")
            why = f" ({metadata['reason']})" if "reason" in metadata else ""
            for bound, holds, words in (("at_least", item >= metadata.get("at_least", -math.inf), ">="),
                                        ("above", item > metadata.get("above", -math.inf), ">"),
                                        ("at_most", item <= metadata.get("at_most", math.inf), "<="),
                                        ("below", item < metadata.get("below", math.inf), "<")):
                if not holds:
                    raise ConfigError(f"{name}: expected a number {words} {metadata[bound]:g}, got {item:g}{why}")


def check_choices(config: Config) -> None:
    """Every option with declared ``choices`` holds one of them (each item of a tuple; the name
    of a ``name:epsilon`` spec); raises ``ConfigError`` naming the option and listing the choices.
    Imports each owner of a list of choices (so it runs where the plan is built, not on load)."""
    for config_field in dataclasses.fields(config):
        choices: Choices | None = config_field.metadata.get("choices")
        if choices is None:
            continue
        value = getattr(config, config_field.name)
        for item in value if isinstance(value, tuple) else (value,):
            if not choices.allows(str(item)):
                raise ConfigError(f"{option_name(config_field.name)}: unknown {choices.what} {str(item).partition(':')[0]!r}"
                                  f"{f' in {item!r}' if ':' in str(item) else ''}; expected one of: "
                                  f"{', '.join(choices.values())}")


def format_config(config: Config) -> str:
    """The resolved configuration, one ``name = value`` line per field, grouped as in the schema."""
    lines = []
    for config_field in dataclasses.fields(config):
        if "group" in config_field.metadata:
            lines.append(f"[{config_field.metadata['group']}]")
        lines.append(f"  {config_field.name} = {show_value(getattr(config, config_field.name))}")
    return "\n".join(lines)


def show_value(value: Any) -> str:
    """An option's value as the command line writes it."""
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "(none)"
    return repr(value) if isinstance(value, str) else str(value)

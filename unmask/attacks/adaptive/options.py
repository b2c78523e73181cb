"""``AdaptiveOptions``: the hyper-parameters every adaptive attack shares (sizes on the 0-255 scale)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from unmask.constants import FULL_ADAPTIVE_BUDGET as FULL
from unmask.constants import REDUCED_ADAPTIVE_BUDGET as REDUCED

TARGET_RANKINGS: tuple[str, ...] = ("loss", "jaccard", "logits")
STEP_SCHEDULES: tuple[str, ...] = ("apgd", "cosine", "constant")
RECLASSIFY_LOSSES: tuple[str, ...] = ("targeted", "dlr", "ce")
LADDER_GROWTHS: tuple[str, ...] = ("steps", "losses", "targets", "restarts")
"""How one doubling of the budget ladder grows an attack's budget (``rung_options``)."""


@dataclass(frozen=True)
class RunsMade:
    """The runs a smaller rung of the budget ladder already made on the images an attack is
    given: ``steps`` per run, ``restarts`` runs per target, the first ``targets`` target ranks (0:
    every one) and the re-classification attack's ``reclassify_losses``, in that order. Each
    image's run is deterministic (its start derives from the seed and the image's index), so a
    run of the same steps, restart, target rank and loss would fail again: it is not made again."""

    steps: int
    restarts: int
    targets: int
    reclassify_losses: tuple[str, ...]


@dataclass(frozen=True)
class AdaptiveOptions:
    """Hyper-parameters of the adaptive attacks.

    Budget
        - ``steps``: PGD iterations per run (one run = one target x lambda x restart).
        - ``restarts``: runs per target and lambda; restart r > 0 (or every one with
          ``random_start``) starts at a random point of the epsilon ball drawn from
          (``seed``, image index, run), so it does not depend on which images share a batch.
        - ``targets``: target classes tried per image by the targeted attacks (``joint_*``,
          ``orthogonal_*``), best-ranked first; 0: every class but the true one.
        - ``target_ranking``: ``loss`` (the targeted attack's own loss on the clean image:
          M's margin plus the first lambda times K's hinges; lowest first), ``jaccard`` (soft
          Jaccard of the clean image's soft parts with each class's parts) or ``logits`` (M's).
        - ``lambdas``: weights of K's hinge loss against M's margin (joint attack), tried in order.
        - ``early_stop``: stop attacking an image once the judge confirms a success (the
          remaining runs and steps go to the other images); False keeps looking for the
          success with the lowest detection score.
        - ``batch_size``: images per forward/backward pass (the images still under attack
          fill each pass).
        - ``seed``: of the random starts and of HopSkipJump.
        - ``already_made``: the runs a smaller rung of the budget ladder already made on these
          images (``RunsMade``), which are not made again; None: every run is made.
    Steps
        - ``step_schedule``: ``apgd`` (APGD's step-size control, Croce & Hein 2020: from 2
          epsilon, momentum 0.75, halved at checkpoints where the loss stalled, restarting from
          the best point; ``steps.APGDSteps``), ``cosine`` (from twice the base step down to 0,
          same mean) or ``constant``.
        - ``step_size`` (``cosine``, ``constant``): absolute base step on the 0-255 scale; None:
          ``relative_step * epsilon / steps`` (8: at 20 steps the first cosine step is 0.8
          epsilon). L-inf steps are whole grey levels (at least 1).
        - ``random_start``: start every run at a random point (else only restarts > 0 do).
    Losses
        - ``kappa``: M's logit margin (C&W); ``part_margin`` (log-probability) and
          ``part_kappa`` (argmax logit margin): K's hinge margins (see ``part_view``);
          ``tau``: smooth-max temperature; ``temperature``: soft 0/1 presence temperature.
        - ``reclassify_losses``: the re-classification attack's runs, in order: ``targeted``
          (towards each of ``targets`` other classes), ``dlr``, ``ce`` (untargeted, on K's soft
          Jaccards as logits); ``reclassify_temperature``: of those logits for ``ce``;
          ``reclassify_hinge``: weight of K's hinges towards the target (or the best other
          class) beside the soft Jaccard loss (0: the soft Jaccards alone).
        - ``clean_proposals``: also score the clean image's proposals (DAG), not only the
          current image's.
    Judging
        - ``judge_every``: also judge every active image every this many steps (0: only the
          iterates the surrogate says succeed, and the returned images).
    Label-only (``hsj_*``; HopSkipJump only)
        - ``hsj_steps``, ``hsj_initial_evals``, ``hsj_max_evals``: HopSkipJump iterations and
          gradient-estimation queries (Chen et al. 2020; foolbox's defaults 64, 100, 10000).
    """

    steps: int = REDUCED.steps
    restarts: int = REDUCED.restarts
    targets: int = REDUCED.targets
    target_ranking: str = "loss"
    lambdas: tuple[float, ...] = (1.0,)
    early_stop: bool = True
    batch_size: int = 32
    step_size: float | None = None
    relative_step: float = REDUCED.relative_step
    step_schedule: str = "apgd"
    apgd_initial_step: float = 2.0
    random_start: bool = False
    kappa: float = 1.0
    part_margin: float = 0.3
    part_kappa: float = 0.5
    tau: float = 0.05
    temperature: float = 0.05
    reclassify_losses: tuple[str, ...] = REDUCED.reclassify_losses
    reclassify_temperature: float = 0.05
    reclassify_hinge: float = 0.1
    clean_proposals: bool = False
    judge_every: int = 0
    seed: int = 0
    hsj_steps: int = 16
    hsj_initial_evals: int = 50
    hsj_max_evals: int = 1000
    already_made: RunsMade | None = None

    def __post_init__(self) -> None:
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AdaptiveOptions.{name} must be an integer >= 1, got {value!r}")

        for name in ("steps", "restarts", "batch_size", "hsj_steps", "hsj_initial_evals", "hsj_max_evals"):
            positive_int(name)
        if isinstance(self.targets, bool) or not isinstance(self.targets, int) or self.targets < 0:
            raise ValueError(f"AdaptiveOptions.targets must be an integer >= 0 (0: every class), got {self.targets!r}")
        if self.target_ranking not in TARGET_RANKINGS:
            raise ValueError(f"AdaptiveOptions.target_ranking must be one of {TARGET_RANKINGS}, "
                             f"got {self.target_ranking!r}")
        lambdas = tuple(self.lambdas)
        if not lambdas or not all(isinstance(v, int | float) and math.isfinite(v) and v >= 0 for v in lambdas):
            raise ValueError(f"AdaptiveOptions.lambdas must be a non-empty sequence of finite numbers >= 0, "
                             f"got {self.lambdas!r}")
        object.__setattr__(self, "lambdas", tuple(float(v) for v in lambdas))
        if self.step_schedule not in STEP_SCHEDULES:
            raise ValueError(f"AdaptiveOptions.step_schedule must be one of {STEP_SCHEDULES}, "
                             f"got {self.step_schedule!r}")
        if self.step_size is not None and not (math.isfinite(self.step_size) and self.step_size > 0):
            raise ValueError(f"AdaptiveOptions.step_size must be positive (0-255 scale), got {self.step_size!r}")
        if not self.reclassify_losses or not set(self.reclassify_losses) <= set(RECLASSIFY_LOSSES):
            raise ValueError(f"AdaptiveOptions.reclassify_losses must be a non-empty sequence of {RECLASSIFY_LOSSES}, "
                             f"got {self.reclassify_losses!r}")
        object.__setattr__(self, "reclassify_losses", tuple(self.reclassify_losses))
        for name in ("relative_step", "tau", "temperature", "reclassify_temperature"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"AdaptiveOptions.{name} must be positive, got {value!r}")
        for name in ("kappa", "part_margin", "part_kappa", "reclassify_hinge"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"AdaptiveOptions.{name} must be >= 0, got {value!r}")
        if isinstance(self.judge_every, bool) or not isinstance(self.judge_every, int) or self.judge_every < 0:
            raise ValueError(f"AdaptiveOptions.judge_every must be an integer >= 0, got {self.judge_every!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"AdaptiveOptions.seed must be an integer, got {self.seed!r}")


    def runs_made(self) -> RunsMade:
        """The runs these options make (for the next rung of the ladder: ``already_made``)."""
        return RunsMade(self.steps, self.restarts, self.targets, self.reclassify_losses)


def rung_options(base: AdaptiveOptions, doublings: Sequence[str], *, targeted: bool, chooses_losses: bool,
                 classes: int) -> AdaptiveOptions:
    """The options of one rung of the budget ladder: ``base`` (the first rung's) grown by each
    of ``doublings`` in turn (``LADDER_GROWTHS``), for an attack that is ``targeted`` or not and
    ``chooses_losses`` (reads ``reclassify_losses``), on a class set of ``classes`` classes.

    - ``targets``: twice the target classes, up to every other class (0);
    - ``losses``: the re-classification attack adds its untargeted DLR and CE runs (APGD's
      losses on K's soft Jaccards, Croce & Hein 2020);
    - ``restarts``: twice the runs per target, the new ones from random points of the ball;
    - ``steps``: twice the steps of every run.

    Where ``targets`` or ``losses`` cannot grow an attack (an untargeted attack, every class
    already tried, the losses already there, an attack with one loss), its restarts double
    instead, so every doubling doubles about every attack's work.
    """
    options = base
    others = classes - 1
    for doubling in doublings:
        if doubling not in LADDER_GROWTHS:
            raise ValueError(f"unknown ladder growth {doubling!r}; expected one of: {', '.join(LADDER_GROWTHS)}")
        tried = min(options.targets or others, others)
        if doubling == "targets" and targeted and tried < others:
            grown = min(2 * tried, others)
            options = replace(options, targets=0 if grown == others else grown)
        elif doubling == "losses" and chooses_losses and set(RECLASSIFY_LOSSES) - set(options.reclassify_losses):
            missing = tuple(loss for loss in RECLASSIFY_LOSSES if loss not in options.reclassify_losses)
            options = replace(options, reclassify_losses=options.reclassify_losses + missing)
        elif doubling == "steps":
            options = replace(options, steps=2 * options.steps)
        else:
            options = replace(options, restarts=2 * options.restarts)
    return options


REDUCED_BUDGET = AdaptiveOptions()
"""The default run's budget (``unmask.constants.REDUCED_ADAPTIVE_BUDGET``), lambda 1, cosine steps from
0.8 epsilon (L-inf), early stop."""

FULL_BUDGET = AdaptiveOptions(**FULL.as_dict())
"""The full evaluation's budget and the convergence check's (``unmask.constants.FULL_ADAPTIVE_BUDGET``)."""

"""The machinery every adaptive attack shares: what an adaptive attack says about itself, 8-bit
iterates, reproducible per-image random starts, the PGD loop over a shrinking set of active
images, and keeping each image's best iterate as judged by the hard pipeline.

``AdaptiveAttack`` is the base of every adaptive attack: class attributes say what it is
(``family``, ``norms``, ``kind``, ``targeted``), and ``describe()`` turns them into the
registry's entries. ``GradientAttack`` is the PGD engine the gradient attacks subclass: they
provide ``evaluate`` (the loss or gradient and the surrogate's verdict of one iterate) and, when
the default does not fit, ``judged`` (success and key from the hard judge's ``Verdict``) and
``runs`` (which PGD runs to make). Everything one call computes lives in a typed ``Batch`` and
each run's settings in a ``Run``; the attack object itself holds only its configuration.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from unmask.attacks.adaptive.options import AdaptiveOptions
from unmask.attacks.adaptive.part_view import PartOutputs, PartView, soft_jaccard
from unmask.attacks.adaptive.steps import step_rule
from unmask.attacks.adaptive.target import DefenseTarget, Verdict
from unmask.attacks.base import AttackInfo, AttackKind, frozen_eval
from unmask.attacks.norms import Norm
from unmask.constants import NO_PREDICTION, to_unit_scale
from unmask.parts import PARTS

# --- 8-bit iterates, steps and random starts --------------------------------------------------


def quantize_ste(x: torch.Tensor, x0: torch.Tensor, epsilon: float, norm: Norm) -> torch.Tensor:
    """``norm.quantize`` forward, identity backward (straight-through)."""
    return x + (norm.quantize(x, x0, epsilon) - x).detach()


def image_seed(seed: int, index: int, stream: tuple[int | str, ...]) -> int:
    """A 63-bit seed from (seed, image index, run): an image's random start does not depend on
    which other images share its batch, so shards of an evaluation reproduce a single run."""
    text = ":".join(str(v) for v in (seed, index, *stream))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def random_start(x0: torch.Tensor, indices: torch.Tensor, epsilon: float, norm: Norm, *, seed: int,
                 stream: tuple[int, ...]) -> torch.Tensor:
    """A random point of the epsilon ball around each image (uniform in the ball), in [0, 1]."""
    noise = torch.empty_like(x0, device="cpu")
    for row, index in enumerate(indices.tolist()):
        generator = torch.Generator().manual_seed(image_seed(seed, index, stream))
        noise[row] = norm.random_offset(x0[row].shape, epsilon, generator)
    return norm.project(x0 + noise.to(x0.device), x0, epsilon)


# --- losses and the hard rules, in torch ----------------------------------------------------------


def hard_reclassify(similarities: torch.Tensor) -> torch.Tensor:
    """Argmax class (ties: the earlier class), ``NO_PREDICTION`` where every similarity is 0."""
    best = similarities.argmax(dim=1)  # torch returns the first maximal index
    return torch.where(similarities.amax(dim=1) > 0, best, torch.full_like(best, NO_PREDICTION))


def cw_margin(logits: torch.Tensor, targets: torch.Tensor, kappa: float) -> torch.Tensor:
    """Targeted C&W margin relu(max_{c != t} z_c - z_t + kappa): 0 once M says t by kappa."""
    target_logit = logits.gather(1, targets.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, targets.view(-1, 1), float("-inf")).amax(dim=1)
    return torch.relu(others - target_logit + kappa)


def dlr_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The DLR loss of Croce & Hein 2020 as a margin to minimise: (z_y - max_{c != y} z_c) /
    (z_(1) - z_(3)), z_(k) the k-th largest logit; shift- and scale-invariant, so it does not
    fade where a softmax saturates. Below 0 once the label is not the argmax. Needs 3 classes."""
    label_logit = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, labels.view(-1, 1), float("-inf")).amax(dim=1)
    ordered = logits.sort(dim=1, descending=True).values
    return (label_logit - others) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def logit_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """z_y - max_{c != y} z_c: positive while the label is the argmax."""
    label_logit = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    return label_logit - logits.scatter(1, labels.view(-1, 1), float("-inf")).amax(dim=1)


UNTARGETED_LOSSES = ("ce", "dlr")
"""APGD's untargeted losses, as the engine minimises them: minus the cross-entropy of the label,
and the DLR margin."""


def untargeted_loss(name: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per image, the untargeted loss ``name`` (``UNTARGETED_LOSSES``) of ``logits`` to minimise."""
    if name == "ce":
        return -torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    if name == "dlr":
        return dlr_margin(logits, labels)
    raise ValueError(f"unknown untargeted loss {name!r}; expected one of: {', '.join(UNTARGETED_LOSSES)}")


def flat_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.flatten(1) * b.flatten(1)).sum(1).view(-1, *([1] * (a.ndim - 1)))


def orthogonal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image, ``a`` minus its projection on ``b`` (``a`` where ``b`` is 0)."""
    return a - flat_dot(a, b) / flat_dot(b, b).clamp(min=1e-20) * b


def empty_verdict() -> Verdict:
    """The verdict of no images (the judge is not asked)."""
    nothing = torch.zeros(0, dtype=torch.int64)
    return Verdict(nothing, nothing.double(), nothing.bool(), nothing, torch.zeros(0, len(PARTS), dtype=torch.bool))


# --- results ------------------------------------------------------------------------------------


@dataclass
class AdaptiveResult:
    """An adaptive attack's output for N images.

    - ``images`` (N, 3, H, W): 8-bit quantised adversarial images in [0, 1], inside the ball.
    - ``targets`` (N,) int64: the class the kept image was attacked towards (targeted attacks,
      ``k_fabricate``), else -1.
    - ``success`` (N,) bool: the attack's goal holds on the hard pipeline (the judge's verdict
      of ``images``; for the M-fooling attacks: M wrong and not flagged).
    - ``verdict``: the judge's verdict of ``images``.
    - ``stats``: counts (steps run, judge calls, surrogate/judge disagreements) and wall time.
    - ``distances`` (N,): for minimisation attacks (HopSkipJump), the distance (0-255 scale, in
      the attack's norm) of the adversarial found before projection onto the ball; inf where
      none was found.
    """

    images: torch.Tensor
    targets: torch.Tensor
    success: torch.Tensor
    verdict: Verdict
    stats: dict[str, float] = field(default_factory=dict)
    distances: torch.Tensor | None = None


@dataclass(frozen=True)
class AdaptiveAttackInfo(AttackInfo):
    """An adaptive attack as its registry lists it: the description plus the class that runs it."""

    attack_class: type[AdaptiveAttack] | None = field(default=None, compare=False)


class AdaptiveAttack:
    """One adaptive attack against a ``DefenseTarget`` at one epsilon (0-255 scale) and norm.

    Class attributes say what it is: ``family`` (names are ``<family>_<norm>``), the ``norms`` it
    comes in, its ``kind``, whether it is ``targeted``, whether it ``needs_part_model`` (an
    attack on UnMask needs K; an attack on M alone attacks defenses that have none) and which of
    the defense's outputs it ``aims`` at (``evaded``: M wrong and not flagged; ``reclassification``;
    ``system``: the deployed decision; None: a sanity check of the surrogate, aimed at K alone);
    the first line of its docstring is its summary. ``__call__(images, labels, indices)`` attacks
    and returns an ``AdaptiveResult``.
    """

    family: ClassVar[str] = ""
    norms: ClassVar[tuple[Norm, ...]] = ()
    kind: ClassVar[AttackKind] = AttackKind.FIXED_EPSILON
    targeted: ClassVar[bool] = False
    needs_part_model: ClassVar[bool] = True
    aims: ClassVar[str | None] = "evaded"
    revision: ClassVar[int] = 0
    """Bumped when a change to the attack changes what it computes: saved results of an earlier
    revision are not reused (revision 0 leaves the saved keys as they were before revisions)."""

    def __init__(self, target: DefenseTarget, *, epsilon: float, norm: Norm, options: AdaptiveOptions) -> None:
        if norm not in self.norms:
            raise ValueError(f"{self.family}: no {norm.title} version; it comes in "
                             f"{', '.join(n.title for n in self.norms)}")
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise ValueError(f"{self.family}: epsilon must be positive (0-255 scale), got {epsilon!r}")
        if self.needs_part_model and target.part_model is None:
            raise ValueError(f"{self.family}: attacks UnMask through K, but the defense has no part model")
        self.epsilon = to_unit_scale(epsilon)
        self.target = target
        self.norm = norm
        self.options = options
        self.device = next(target.classifier.parameters()).device

    @classmethod
    def describe(cls) -> tuple[AdaptiveAttackInfo, ...]:
        """The registry's entries of this attack: one per norm."""
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        return tuple(AdaptiveAttackInfo(f"{cls.family}_{norm.name}", norm, cls.kind, cls.targeted, summary,
                                        attack_class=cls) for norm in cls.norms)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> AdaptiveResult:
        raise NotImplementedError


# --- the PGD engine -----------------------------------------------------------------------------


@dataclass
class Evaluation:
    """The surrogate's view of one iterate of n images.

    ``loss`` (n,) to minimise (with graph) or ``gradient`` (the direction's source, computed by
    the attack); ``success`` (n,) bool as the surrogate sees it; ``key`` (n,): for successes,
    the value the judge's key is compared with (lower is better); ``failure_key`` (n,): for
    failures, lower is better.
    """

    success: torch.Tensor
    key: torch.Tensor
    failure_key: torch.Tensor
    loss: torch.Tensor | None = None
    gradient: torch.Tensor | None = None


class Best:
    """Each image's best iterate so far: judged successes first (lowest key), then surrogate
    failures (lowest failure key)."""

    def __init__(self, images: torch.Tensor) -> None:
        n = len(images)
        self.images = images.clone()
        self.success = torch.zeros(n, dtype=torch.bool)
        self.key = torch.full((n,), math.inf, dtype=torch.float64)
        self.failure_key = torch.full((n,), math.inf, dtype=torch.float64)
        self.targets = torch.full((n,), -1, dtype=torch.int64)


@dataclass
class CleanPass:
    """What one pass over the clean images gives every run: M's logits, K's soft presence and
    proposals, and each target class's joint loss (M's margin + the first lambda x K's hinges)."""

    logits: torch.Tensor
    presence: torch.Tensor
    parts_soft: torch.Tensor
    proposals: list[torch.Tensor]
    target_loss: torch.Tensor


@dataclass
class Batch:
    """Everything one call of a gradient attack works on: the clean images ``x0`` and their
    ``labels`` (on the attack's device), each image's ``indices`` in the whole evaluation (its
    random starts derive from them), the best iterates so far, the clean pass and the counts."""

    x0: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    best: Best
    clean: CleanPass | None = None
    stats: dict[str, float] = field(default_factory=lambda: {
        "image_steps": 0, "judge_calls": 0, "judged_images": 0, "disagreements": 0})
    labels_cpu: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.labels_cpu = self.labels.cpu()

    def __len__(self) -> int:
        return len(self.x0)


@dataclass(frozen=True)
class Run:
    """One PGD run over a batch: its random-start ``stream`` (and whether it starts at random),
    the target class of each batch row (targeted attacks; CPU), the weight of K's hinges and,
    for attacks that try several, the ``loss`` it minimises; ``rank`` (the targets' rank, -1
    for an untargeted run) and ``restart`` say which run it is, for ``made_before``."""

    stream: tuple[int, ...]
    random: bool
    targets: torch.Tensor | None = None
    weight: float = 1.0
    loss: str = ""
    rank: int = -1
    restart: int = 0


class GradientAttack(AdaptiveAttack):
    """The PGD engine: ``runs`` PGD runs per image (early stop per image once the judge confirms
    a success), on 8-bit iterates through a straight-through quantiser, every iterate scored by
    the subclass's ``evaluate`` and the promising ones confirmed by the judge."""

    def __init__(self, target: DefenseTarget, *, epsilon: float, norm: Norm, options: AdaptiveOptions) -> None:
        super().__init__(target, epsilon=epsilon, norm=norm, options=options)
        self.view = None if target.part_model is None else PartView(
            target.part_model, score_threshold=target.k_score_threshold, tau=options.tau,
            temperature=options.temperature, margin=options.part_margin, kappa=options.part_kappa)
        self.class_parts = target.class_parts.to(self.device)

    # --- subclass hooks ---------------------------------------------------------------------

    def evaluate(self, batch: Batch, run: Run, x: torch.Tensor, x_q: torch.Tensor, rows: torch.Tensor) -> Evaluation:
        """The surrogate's view of iterates ``x_q`` (quantised from the leaf ``x``) of batch rows ``rows``."""
        raise NotImplementedError

    def judged(self, batch: Batch, run: Run, verdict: Verdict, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(success (n,) bool, key (n,) float64, lower is better) of judged images ``rows``;
        by default M wrong and not flagged, keyed by the detection score."""
        return verdict.evades(batch.labels_cpu[rows]), verdict.detection_score.double()

    def final_success(self, verdict: Verdict, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(N,) bool success of the returned images from their verdict (labels, targets on the CPU)."""
        return verdict.evades(labels)

    def runs(self, batch: Batch) -> Iterator[Run]:
        """The PGD runs to make: targeted attacks run per target (best-ranked first), per lambda and
        per restart; untargeted ones per restart. Restart r > 0 (or every run with
        ``options.random_start``) starts at a random point."""
        if not self.targeted:
            for restart in range(self.options.restarts):
                yield Run((restart,), self.options.random_start or restart > 0, restart=restart)
            return
        ranks = self.ranked_targets(batch).cpu()
        for rank in range(min(self.options.targets or ranks.shape[1], ranks.shape[1])):
            targets = ranks[:, rank].contiguous()
            for lambda_index, weight in enumerate(self.lambdas()):
                for restart in range(self.options.restarts):
                    yield Run((rank, lambda_index, restart), self.options.random_start or restart > 0, targets, weight,
                              rank=rank, restart=restart)

    def made_before(self, run: Run) -> bool:
        """Whether a smaller rung of the budget ladder already made ``run`` on these images
        (``options.already_made``: the same steps, a restart and target rank it made), so that it
        would fail again and is skipped."""
        made = self.options.already_made
        if made is None or made.steps != self.options.steps or run.restart >= made.restarts:
            return False
        return run.rank < 0 or made.targets == 0 or run.rank < made.targets

    def lambdas(self) -> tuple[float, ...]:
        """The weights of K's hinges tried per target, in order (``options.lambdas``)."""
        return self.options.lambdas

    # --- shared pieces ----------------------------------------------------------------------

    def outputs(self, batch: Batch, x_q: torch.Tensor, rows: torch.Tensor) -> PartOutputs:
        """K's outputs on iterates ``x_q`` of batch rows ``rows`` (with the clean image's proposals
        too under ``options.clean_proposals``)."""
        extra = [batch.clean.proposals[i] for i in rows.tolist()] if self.options.clean_proposals else None
        return self.view(x_q, extra)

    def forward(self, batch: Batch, x_q: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, PartOutputs]:
        """M's logits and K's outputs on iterates ``x_q`` of batch rows ``rows``."""
        return self.target.classifier(x_q), self.outputs(batch, x_q, rows)

    def hard_similarities(self, outputs: PartOutputs) -> tuple[torch.Tensor, torch.Tensor]:
        """K's hard parts (n, 44) bool and their set Jaccard with every class (n, C)."""
        parts = self.view.hard_presence(outputs)
        return parts, soft_jaccard(parts.float(), self.class_parts)

    def rule_decisions(self, classes: torch.Tensor, outputs: PartOutputs) -> dict[str, torch.Tensor]:
        """The deployed rule (``target.rule``) on iterates were M to say ``classes``: K's hard
        parts, with the soft presence where they are detected as their confidences."""
        with torch.no_grad():
            parts = self.view.hard_presence(outputs)
            confidence = self.view.presence(outputs) * parts
            return self.target.rule.hard(classes, parts, confidence)

    def hard_decisions(self, logits: torch.Tensor, outputs: PartOutputs) -> dict[str, torch.Tensor]:
        """The surrogate's exact copy of the hard pipeline on iterates: M's class, the detection
        score against it, the flag, the re-classified class and the deployed decision (under the
        deployed rule, ``target.rule``, when there is one)."""
        if self.target.rule is not None:
            predicted = logits.detach().argmax(1)
            return {"m": predicted, **self.rule_decisions(predicted, outputs)}
        with torch.no_grad():
            predicted = logits.argmax(1)
            _, similarities = self.hard_similarities(outputs)
            score = 1.0 - similarities.gather(1, predicted.view(-1, 1)).squeeze(1)
            flagged = score >= self.target.detection_threshold
            reclassified = hard_reclassify(similarities)
            return {"m": predicted, "score": score, "flagged": flagged, "reclassified": reclassified,
                    "deployed": torch.where(flagged, reclassified, predicted)}

    def fooling(self, batch: Batch, logits: torch.Tensor, outputs: PartOutputs, rows: torch.Tensor,
                loss: torch.Tensor | None = None, gradient: torch.Tensor | None = None) -> Evaluation:
        """The surrogate's exact verdict for the M-fooling attacks: success = M wrong and not
        flagged; key = detection score; failures: M fooled first, then the lowest detection score."""
        decisions = self.hard_decisions(logits, outputs)
        fooled = decisions["m"] != batch.labels[rows]
        success = fooled & ~decisions["flagged"]
        failure_key = 2.0 * (~fooled).float() + decisions["score"]
        return Evaluation(success, decisions["score"], failure_key, loss=loss, gradient=gradient)

    @torch.no_grad()
    def clean_pass(self, x0: torch.Tensor) -> CleanPass:
        """On the clean batch: M's logits, K's soft presence and proposals, and each target's
        joint loss (M's margin + first lambda x K's hinges), for ranking targets. Without a K
        (an attack on M alone), M's logits only, and the targets' losses are M's margins."""
        logits, presences, proposals, losses = [], [], [], []
        weight = self.options.lambdas[0]
        for start in range(0, len(x0), self.options.batch_size):
            chunk = x0[start:start + self.options.batch_size]
            outputs = self.view(chunk) if self.view is not None else None
            chunk_logits = self.target.classifier(chunk)
            logits.append(chunk_logits)
            if outputs is not None:
                presences.append(self.view.presence(outputs))
                proposals.extend(outputs.proposals)
            per_class = []
            for c in range(len(self.class_parts)):
                targets = torch.full((len(chunk),), c, dtype=torch.int64, device=self.device)
                expected = self.class_parts[targets]
                loss = cw_margin(chunk_logits, targets, self.options.kappa)
                if weight > 0 and outputs is not None:
                    loss = loss + weight * self.view.hinge_loss(outputs, add=expected, remove=1 - expected)
                per_class.append(loss)
            losses.append(torch.stack(per_class, 1))
        logits = torch.cat(logits)
        presence = torch.cat(presences) if presences else logits.new_zeros(len(logits), self.class_parts.shape[1])
        parts_soft = self.view.indicator(presence) if self.view is not None else presence
        return CleanPass(logits, presence, parts_soft, proposals, torch.cat(losses))

    def ranked_targets(self, batch: Batch) -> torch.Tensor:
        """(N, C - 1): every class but the true one, the most promising first (``target_ranking``)."""
        ranking, clean = self.options.target_ranking, batch.clean
        if ranking == "loss":
            score = -clean.target_loss
        elif ranking == "jaccard":
            score = soft_jaccard(clean.parts_soft, self.class_parts) + 1e-3 * clean.logits.softmax(1)
        else:
            score = clean.logits
        score = score.scatter(1, batch.labels.view(-1, 1), float("-inf"))
        return score.argsort(dim=1, descending=True, stable=True)[:, :-1]

    def pgd(self, batch: Batch, run: Run) -> None:
        """One PGD run on the batch (skipping confirmed successes with early stop)."""
        options, best = self.options, batch.best
        rows = torch.arange(len(batch))
        if options.early_stop:
            rows = rows[~best.success[rows]]
        if len(rows) == 0:
            return
        x0_all = batch.x0[rows]
        if run.random:
            x = random_start(x0_all, batch.indices[rows], self.epsilon, self.norm, seed=options.seed,
                             stream=run.stream)
        else:
            x = x0_all.clone()
        alive = torch.ones(len(rows), dtype=torch.bool)
        rule = step_rule(options, self.norm, self.epsilon, x)
        for k in range(options.steps + 1):
            positions = alive.nonzero().flatten()
            if len(positions) == 0:
                break
            need_grad = k < options.steps
            for chunk in positions.split(options.batch_size):
                chunk_rows = rows[chunk]
                x0 = x0_all[chunk]
                leaf = x[chunk].detach().requires_grad_(need_grad)
                with torch.set_grad_enabled(need_grad):
                    x_q = quantize_ste(leaf, x0, self.epsilon, self.norm)
                    evaluation = self.evaluate(batch, run, leaf, x_q, chunk_rows)
                judge_all = options.judge_every > 0 and k % options.judge_every == 0
                self.offer(batch, run, chunk_rows, x_q.detach(), evaluation, judge_all=judge_all)
                if need_grad:
                    gradient = evaluation.gradient
                    if gradient is None:
                        gradient = torch.autograd.grad(evaluation.loss.sum(), leaf)[0]
                    x[chunk] = rule.step(k, chunk, leaf.detach(), x0, evaluation.loss.detach(), gradient)
                    batch.stats["image_steps"] += len(chunk)
            if options.early_stop:
                alive &= ~best.success[rows]

    def offer(self, batch: Batch, run: Run, rows: torch.Tensor, x_q: torch.Tensor, evaluation: Evaluation, *,
              judge_all: bool) -> None:
        """Keep iterates ``x_q`` of ``rows`` that beat each image's best (judge confirms successes)."""
        best, stats = batch.best, batch.stats
        no_targets = torch.full((len(batch),), -1, dtype=torch.int64)
        targets = run.targets if run.targets is not None else no_targets
        success = evaluation.success.cpu()
        key = evaluation.key.detach().double().cpu()
        failure_key = evaluation.failure_key.detach().double().cpu()
        candidates = success & (~best.success[rows] | (key < best.key[rows]))
        if judge_all:
            candidates = torch.ones_like(candidates)
        confirmed = torch.zeros_like(candidates)
        if candidates.any():
            picked = candidates.nonzero().flatten()
            verdict = self.target.judge(x_q[picked])
            stats["judge_calls"] += 1
            stats["judged_images"] += len(picked)
            judged_success, judged_key = self.judged(batch, run, verdict, rows[picked])
            stats["disagreements"] += int((judged_success != success[picked]).sum())
            better = judged_success & (~best.success[rows[picked]] | (judged_key < best.key[rows[picked]]))
            confirmed[picked[judged_success]] = True
            if better.any():
                winners = rows[picked[better]]
                best.images[winners] = x_q[picked[better]].to(best.images)
                best.success[winners] = True
                best.key[winners] = judged_key[better]
                best.targets[winners] = targets[winners]
        # failures (including surrogate successes the judge did not confirm)
        better = ~confirmed & ~best.success[rows] & (failure_key < best.failure_key[rows])
        if better.any():
            winners = rows[better]
            best.images[winners] = x_q[better].to(best.images)
            best.failure_key[winners] = failure_key[better]
            best.targets[winners] = targets[winners]

    # --- entry point ------------------------------------------------------------------------

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> AdaptiveResult:
        """Attack every image; forward/backward passes take ``options.batch_size`` of the images
        still being attacked at a time (with early stop, finished images leave the passes, so
        the remaining ones fill full batches)."""
        started = time.perf_counter()
        models = [model for model in (self.target.classifier, self.target.part_model) if model is not None]
        with frozen_eval(*models):
            x0 = images.detach().to(self.device, torch.float32)
            batch = Batch(x0, labels.to(self.device, torch.int64), indices.cpu(), Best(x0.cpu()))
            if len(batch):
                batch.clean = self.clean_pass(x0)
                for run in self.runs(batch):
                    if not self.made_before(run):
                        self.pgd(batch, run)
        adversarial, chosen = batch.best.images, batch.best.targets
        verdict = self.target.judge(adversarial.to(self.device)) if len(adversarial) else empty_verdict()
        stats = {**batch.stats, "seconds": time.perf_counter() - started}
        success = self.final_success(verdict, labels.cpu(), chosen)
        return AdaptiveResult(adversarial.to(images.device), chosen, success, verdict, stats)

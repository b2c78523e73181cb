"""The machinery every gradient-based adaptive attack shares: epsilon balls, 8-bit quantisation,
reproducible per-image random starts, the PGD loop over a shrinking set of active images, and
keeping each image's best iterate as judged by the hard pipeline.

An attack subclasses ``AdaptiveAttack`` and provides ``evaluate`` (loss or gradient and the
surrogate's verdict of one iterate), ``judged`` (success and key from the hard judge's
``Verdict``) and ``run`` (which PGD runs to make: targets, lambdas, restarts).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from unmask.attacks.adaptive.options import AdaptiveOptions
from unmask.attacks.adaptive.part_view import PartOutputs, PartView, soft_jaccard
from unmask.attacks.adaptive.target import NO_PREDICTION, DefenseTarget, Verdict
from unmask.parts import PARTS

NORMS: tuple[str, ...] = ("linf", "l2")
GREY_LEVELS = 255


# --- epsilon balls and 8-bit images -------------------------------------------------------------


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of: {', '.join(NORMS)}")
    return norm


def check_budget(attack: str, epsilon: float) -> float:
    """``epsilon`` (0-255 scale) checked positive and finite, on the [0, 1] pixel scale."""
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"{attack}: epsilon must be positive (0-255 scale), got {epsilon!r}")
    return float(epsilon) / GREY_LEVELS


def _flat_norm(delta: torch.Tensor) -> torch.Tensor:
    return delta.flatten(1).norm(dim=1).view(-1, *([1] * (delta.ndim - 1)))


def project(x: torch.Tensor, x0: torch.Tensor, epsilon: float, norm: str) -> torch.Tensor:
    """``x`` projected onto the epsilon ball (in [0, 1] pixels) around ``x0``, then onto [0, 1]."""
    delta = x - x0
    if norm == "linf":
        delta = delta.clamp(-epsilon, epsilon)
    else:
        delta = delta * (epsilon / _flat_norm(delta).clamp(min=1e-12)).clamp(max=1.0)
    return (x0 + delta).clamp(0.0, 1.0)


def quantize(x: torch.Tensor, x0: torch.Tensor, epsilon: float, norm: str) -> torch.Tensor:
    """8-bit version of ``x`` (round(x * 255) / 255) that stays in [0, 1] and in the epsilon ball
    around ``x0`` (an 8-bit image, as the data's PNG files are).

    L-inf: rounded to the nearest grey level, then clamped to the grey levels inside the ball.
    L2: rounded to the nearest grey level; where that leaves the ball, each pixel is instead
    rounded towards ``x0`` (no pixel moves further from ``x0``, so the norm does not grow).
    Where ``x0`` is not 8-bit and no 8-bit point is found inside the ball, ``x0`` is returned.
    """
    levels = float(GREY_LEVELS)
    x = x.detach()
    rounded = torch.round(x * levels) / levels
    if norm == "linf":
        low = torch.ceil(((x0 - epsilon) * levels).clamp(min=0.0) - 1e-4) / levels
        high = torch.floor(((x0 + epsilon) * levels).clamp(max=levels) + 1e-4) / levels
        out = torch.minimum(torch.maximum(rounded, low), high)
        inside = ((out - x0).flatten(1).abs().amax(1) <= epsilon + 1e-6)
    else:
        step = (x - x0) * levels
        towards = x0 + torch.trunc(step) / levels
        towards = torch.round(towards * levels) / levels  # exact grid values when x0 is 8-bit
        too_far = _flat_norm(rounded - x0) > epsilon
        out = torch.where(too_far, towards, rounded)
        inside = _flat_norm(out - x0).flatten() <= epsilon * (1 + 1e-6)
    return torch.where(inside.view(-1, 1, 1, 1), out, x0)


def quantize_ste(x: torch.Tensor, x0: torch.Tensor, epsilon: float, norm: str) -> torch.Tensor:
    """``quantize`` forward, identity backward (straight-through)."""
    return x + (quantize(x, x0, epsilon, norm) - x).detach()


def step_sizes(epsilon: float, norm: str, options: AdaptiveOptions) -> list[float]:
    """The PGD step of each iteration in [0, 1] pixels (``epsilon`` in [0, 1] pixels too).

    The base step is ``options.step_size`` (0-255 scale) or ``relative_step * epsilon / steps``;
    ``constant`` keeps it, ``cosine`` starts near twice it and decays to 0 along a half cosine
    (sampled at mid-steps: the same mean step). L-inf steps are whole numbers of grey levels (at least 1), which keeps
    iterates 8-bit.
    """
    base = options.step_size / GREY_LEVELS if options.step_size is not None else \
        options.relative_step * epsilon / options.steps
    if options.step_schedule == "cosine":
        steps = [base * (1 + math.cos(math.pi * (k + 0.5) / options.steps)) for k in range(options.steps)]
    else:
        steps = [base] * options.steps
    if norm == "linf":
        steps = [max(1, round(step * GREY_LEVELS)) / GREY_LEVELS for step in steps]
    return steps


def direction(gradient: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-descent direction of unit norm: sign (L-inf) or gradient / ||gradient||_2 (L2)."""
    if norm == "linf":
        return gradient.sign()
    return gradient / _flat_norm(gradient).clamp(min=1e-12)


def image_seed(seed: int, index: int, stream: tuple[int, ...]) -> int:
    """A 63-bit seed from (seed, image index, run): an image's random start does not depend on
    which other images share its batch, so shards of an evaluation reproduce a single run."""
    text = ":".join(str(v) for v in (seed, index, *stream))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def random_start(x0: torch.Tensor, indices: torch.Tensor, epsilon: float, norm: str, *, seed: int,
                 stream: tuple[int, ...]) -> torch.Tensor:
    """A random point of the epsilon ball around each image (uniform in the ball), in [0, 1]."""
    noise = torch.empty_like(x0, device="cpu")
    for row, index in enumerate(indices.tolist()):
        generator = torch.Generator().manual_seed(image_seed(seed, index, stream))
        if norm == "linf":
            noise[row].uniform_(-epsilon, epsilon, generator=generator)
        else:
            gaussian = torch.randn(x0[row].shape, generator=generator)
            radius = epsilon * torch.rand((), generator=generator) ** (1.0 / gaussian.numel())
            noise[row] = gaussian * (radius / gaussian.norm().clamp(min=1e-12))
    return project(x0 + noise.to(x0.device), x0, epsilon, norm)


# --- the hard rules, in torch, for the surrogate's exact verdict --------------------------------


def hard_reclassify(similarities: torch.Tensor) -> torch.Tensor:
    """Argmax class (ties: the earlier class), ``NO_PREDICTION`` where every similarity is 0."""
    best = similarities.argmax(dim=1)  # torch returns the first maximal index
    return torch.where(similarities.amax(dim=1) > 0, best, torch.full_like(best, NO_PREDICTION))


def cw_margin(logits: torch.Tensor, targets: torch.Tensor, kappa: float) -> torch.Tensor:
    """Targeted C&W margin relu(max_{c != t} z_c - z_t + kappa): 0 once M says t by kappa."""
    target_logit = logits.gather(1, targets.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, targets.view(-1, 1), float("-inf")).amax(dim=1)
    return torch.relu(others - target_logit + kappa)


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


# --- the attack base class ----------------------------------------------------------------------


@contextmanager
def frozen_eval(*models: nn.Module) -> Iterator[None]:
    """Models in eval mode with frozen parameters inside the block; restored afterwards."""
    states = [(m, m.training, [p.requires_grad for p in m.parameters()]) for m in models]
    for model in models:
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
    try:
        yield
    finally:
        for model, training, flags in states:
            for parameter, flag in zip(model.parameters(), flags, strict=True):
                parameter.requires_grad_(flag)
            model.train(training)


class AdaptiveAttack:
    """One adaptive attack against a ``DefenseTarget`` at one epsilon (0-255 scale) and norm.

    Subclasses implement ``evaluate``, ``judged`` and ``run``; ``__call__`` batches the images,
    runs the attack and returns an ``AdaptiveResult``.
    """

    name = "adaptive"
    targeted = False

    def __init__(self, target: DefenseTarget, *, epsilon: float, norm: str, options: AdaptiveOptions) -> None:
        self.epsilon = check_budget(self.name, epsilon)
        self.epsilon255 = float(epsilon)
        self.target = target
        self.norm = check_norm(norm)
        self.options = options
        self.view = PartView(target.part_model, score_threshold=target.k_score_threshold, tau=options.tau,
                             temperature=options.temperature, margin=options.part_margin, kappa=options.part_kappa)
        self.alphas = step_sizes(self.epsilon, norm, options)
        self.device = next(target.classifier.parameters()).device
        self.class_parts = target.class_parts.to(self.device)
        self.stats: dict[str, float] = {}

    # --- subclass hooks ---------------------------------------------------------------------

    def evaluate(self, x: torch.Tensor, x_q: torch.Tensor, rows: torch.Tensor, context: dict) -> Evaluation:
        raise NotImplementedError

    def judged(self, verdict: Verdict, rows: torch.Tensor, context: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(success (n,) bool, key (n,) float64, lower is better) of judged images ``rows``;
        by default M wrong and not flagged, keyed by the detection score."""
        return verdict.evades(self.labels_cpu[rows]), verdict.detection_score.double()

    def final_success(self, verdict: Verdict, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(N,) bool success of the returned images from their verdict (labels, targets on the CPU)."""
        return verdict.evades(labels)

    def run(self) -> None:
        """Make the PGD runs (``self.pgd``) for the current batch."""
        raise NotImplementedError

    # --- shared pieces ----------------------------------------------------------------------

    def forward(self, x_q: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, PartOutputs]:
        """M's logits and K's outputs on iterates ``x_q`` of batch rows ``rows``."""
        extra = [self.clean_proposals[i] for i in rows.tolist()] if self.options.clean_proposals else None
        return self.target.classifier(x_q), self.view(x_q, extra)

    def hard_similarities(self, outputs: PartOutputs) -> tuple[torch.Tensor, torch.Tensor]:
        """K's hard parts (n, 44) bool and their set Jaccard with every class (n, C)."""
        parts = self.view.hard_presence(outputs)
        return parts, soft_jaccard(parts.float(), self.class_parts)

    def fooling(self, logits: torch.Tensor, outputs: PartOutputs, rows: torch.Tensor,
                loss: torch.Tensor | None = None, gradient: torch.Tensor | None = None) -> Evaluation:
        """The surrogate's exact verdict for the M-fooling attacks: success = M wrong and not
        flagged; key = detection score; failures: M fooled first, then the lowest detection score."""
        with torch.no_grad():
            predicted = logits.argmax(1)
            _, similarities = self.hard_similarities(outputs)
            score = 1.0 - similarities.gather(1, predicted.view(-1, 1)).squeeze(1)
            fooled = predicted != self.labels[rows]
            success = fooled & (score < self.target.detection_threshold)
            failure_key = 2.0 * (~fooled).float() + score
        return Evaluation(success, score, failure_key, loss=loss, gradient=gradient)

    @torch.no_grad()
    def clean_pass(self) -> None:
        """On the clean batch: M's logits, K's soft presence and proposals, and each target's
        joint loss (M's margin + first lambda x K's hinges), for ranking targets."""
        logits, presences, proposals, losses = [], [], [], []
        weight = self.options.lambdas[0]
        for start in range(0, len(self.x0), self.options.batch_size):
            chunk = self.x0[start:start + self.options.batch_size]
            outputs = self.view(chunk)
            chunk_logits = self.target.classifier(chunk)
            logits.append(chunk_logits)
            presences.append(self.view.presence(outputs))
            proposals.extend(outputs.proposals)
            per_class = []
            for c in range(len(self.class_parts)):
                targets = torch.full((len(chunk),), c, dtype=torch.int64, device=self.device)
                expected = self.class_parts[targets]
                loss = cw_margin(chunk_logits, targets, self.options.kappa)
                if weight > 0:
                    loss = loss + weight * self.view.hinge_loss(outputs, add=expected, remove=1 - expected)
                per_class.append(loss)
            losses.append(torch.stack(per_class, 1))
        self.clean_logits = torch.cat(logits)
        self.clean_presence = torch.cat(presences)
        self.clean_parts_soft = self.view.indicator(self.clean_presence)
        self.clean_proposals = proposals
        self.clean_target_loss = torch.cat(losses)

    def ranked_targets(self) -> torch.Tensor:
        """(N, C - 1): every class but the true one, the most promising first (``target_ranking``)."""
        ranking = self.options.target_ranking
        if ranking == "loss":
            score = -self.clean_target_loss
        elif ranking == "jaccard":
            score = soft_jaccard(self.clean_parts_soft, self.class_parts) + 1e-3 * self.clean_logits.softmax(1)
        else:
            score = self.clean_logits
        score = score.scatter(1, self.labels.view(-1, 1), float("-inf"))
        return score.argsort(dim=1, descending=True, stable=True)[:, :-1]

    def targeted_runs(self, lambdas: tuple[float, ...]) -> None:
        """PGD runs towards the best-ranked targets: per target, per lambda, per restart."""
        ranks = self.ranked_targets().cpu()
        count = min(self.options.targets or ranks.shape[1], ranks.shape[1])
        rows = torch.arange(len(self.x0))
        for rank in range(count):
            context = {"targets": ranks[:, rank].contiguous()}
            for lambda_index, weight in enumerate(lambdas):
                context["lambda"] = weight
                for restart in range(self.options.restarts):
                    self.pgd(rows, (rank, lambda_index, restart), context,
                             random=self.options.random_start or restart > 0)

    def restart_runs(self, context: dict) -> None:
        """``options.restarts`` PGD runs on every image (untargeted attacks)."""
        rows = torch.arange(len(self.x0))
        for restart in range(self.options.restarts):
            self.pgd(rows, (restart,), context, random=self.options.random_start or restart > 0)

    def pgd(self, rows: torch.Tensor, stream: tuple[int, ...], context: dict, *, random: bool) -> None:
        """One PGD run on batch rows ``rows`` (skipping confirmed successes with early stop)."""
        options = self.options
        if options.early_stop:
            rows = rows[~self.best.success[rows]]
        if len(rows) == 0:
            return
        x0_all = self.x0[rows]
        if random:
            x = random_start(x0_all, self.indices[rows], self.epsilon, self.norm, seed=options.seed, stream=stream)
        else:
            x = x0_all.clone()
        alive = torch.ones(len(rows), dtype=torch.bool)
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
                    evaluation = self.evaluate(leaf, x_q, chunk_rows, context)
                judge_all = options.judge_every > 0 and k % options.judge_every == 0
                self.offer(chunk_rows, x_q.detach(), evaluation, context, judge_all=judge_all)
                if need_grad:
                    gradient = evaluation.gradient
                    if gradient is None:
                        gradient = torch.autograd.grad(evaluation.loss.sum(), leaf)[0]
                    x[chunk] = project(leaf.detach() - self.alphas[k] * direction(gradient, self.norm), x0,
                                       self.epsilon, self.norm)
                    self.stats["image_steps"] += len(chunk)
            if options.early_stop:
                alive &= ~self.best.success[rows]

    def offer(self, rows: torch.Tensor, x_q: torch.Tensor, evaluation: Evaluation, context: dict, *,
              judge_all: bool) -> None:
        """Keep iterates ``x_q`` of ``rows`` that beat each image's best (judge confirms successes)."""
        best = self.best
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
            self.stats["judge_calls"] += 1
            self.stats["judged_images"] += len(picked)
            judged_success, judged_key = self.judged(verdict, rows[picked], context)
            self.stats["disagreements"] += int((judged_success != success[picked]).sum())
            better = judged_success & (~best.success[rows[picked]] | (judged_key < best.key[rows[picked]]))
            confirmed[picked[judged_success]] = True
            if better.any():
                winners = rows[picked[better]]
                best.images[winners] = x_q[picked[better]].to(best.images)
                best.success[winners] = True
                best.key[winners] = judged_key[better]
                best.targets[winners] = context.get("targets", self._no_targets)[winners]
        # failures (including surrogate successes the judge did not confirm)
        better = ~confirmed & ~best.success[rows] & (failure_key < best.failure_key[rows])
        if better.any():
            winners = rows[better]
            best.images[winners] = x_q[better].to(best.images)
            best.failure_key[winners] = failure_key[better]
            best.targets[winners] = context.get("targets", self._no_targets)[winners]

    # --- entry point ------------------------------------------------------------------------

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> AdaptiveResult:
        """Attack every image; forward/backward passes take ``options.batch_size`` of the images
        still being attacked at a time (with early stop, finished images leave the passes, so
        the remaining ones fill full batches)."""
        started = time.perf_counter()
        self.stats = {"image_steps": 0, "judge_calls": 0, "judged_images": 0, "disagreements": 0}
        with frozen_eval(self.target.classifier, self.target.part_model):
            self.x0 = images.detach().to(self.device, torch.float32)
            self.labels = labels.to(self.device, torch.int64)
            self.labels_cpu = self.labels.cpu()
            self.indices = indices.cpu()
            self.best = Best(self.x0.cpu())
            self._no_targets = torch.full((len(self.x0),), -1, dtype=torch.int64)
            if len(self.x0):
                self.clean_pass()
                self.run()
        adversarial, chosen = self.best.images, self.best.targets
        verdict = self.target.judge(adversarial.to(self.device)) if len(adversarial) else empty_verdict()
        self.stats["seconds"] = time.perf_counter() - started
        success = self.final_success(verdict, labels.cpu(), chosen)
        return AdaptiveResult(adversarial.to(images.device), chosen, success, verdict, dict(self.stats))

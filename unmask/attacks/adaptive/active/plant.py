"""The modified pipelines of the attack unit tests, one per image: where the planted point is, which
readout plants it, and what a random search of the ball finds there.

Evasion test (the attacks aimed at detection and at the deployed decision). For image x0 of class
y, the target t is a class that K's clean parts get flagged for (so that evading needs K to move),
nearest first; the planted point x* is a point of the ball where K's real parts pass detection
for t, found by a K-only search (``PlantingSearch``: only its existence matters); M is then
binarized (``BinarizedClassifier``): a readout on M's penultimate features trained to say y on
the inner points (and on other corners of the ball) and t on x*. The planted point is judged on the pipeline with the binarized M and
the real K: M says t and the image is not flagged, so an evading image exists within epsilon.

Inverted test. The planted point is a corner of the ball where K's real parts *are* flagged for t
(the reference code's rejection sampling, inverted), M binarized the same way: an image with M
wrong and flagged exists. The attacks are not told anything is inverted (they still aim at
evading the flag), so success is M wrong, flagged as planted or, more than asked, not.

Re-classification test (the attack on UnMask's re-classification). The target t is the class
nearest to K's clean parts whose parts, added to them, change the re-classification; the planted
point is a corner of the ball; K's box classifier gets, for each part of t that K does not find
there, a linear readout on its box features (``PlantedPartsPredictor``) that lowers the part's
logit on every proposal of the inner points (and of other corners of the ball) and raises it on
one proposal of the planted point
enough that K reports the part. Judged with the modified K: the planted point is re-classified
as another class than y, and every inner point still as y.

Each setup is judged by the caller's hard pipeline (``JudgeFor``), as the attacks are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import MaskRCNN

from unmask.attacks.adaptive.active.ball import ball_points, random_search_points
from unmask.attacks.adaptive.active.options import STATUSES, ActiveTestOptions
from unmask.attacks.adaptive.detector import FabricateAttack
from unmask.attacks.adaptive.engine import Batch, Run, hard_reclassify
from unmask.attacks.adaptive.options import AdaptiveOptions
from unmask.attacks.adaptive.part_view import NUM_LABELS, soft_jaccard
from unmask.attacks.adaptive.target import DefenseTarget, Judge, Verdict
from unmask.attacks.norms import LINF
from unmask.constants import GREY_LEVELS
from unmask.models.planted import (
    BinarizedClassifier,
    PlantedPartsPredictor,
    anchors_apart,
    box_outputs,
    penultimate,
    separating_readout,
    with_box_predictor,
)
from unmask.parts import PARTS

JudgeFor = Callable[[nn.Module, MaskRCNN], Judge]
"""(M, K) -> the hard pipeline with that M and K (M's argmax, K's detection rule, UnMask's rules
at the real thresholds), as the evaluation judges: the caller builds it (from ``unmask.defense``)."""

CRITERIA: dict[str, Callable[[Verdict, torch.Tensor], torch.Tensor]] = {
    "evaded": lambda verdict, labels: verdict.evades(labels),
    "system": lambda verdict, labels: verdict.deployed != labels.cpu(),
    "inverted": lambda verdict, labels: verdict.m_prediction != labels.cpu(),
    "reclassification": lambda verdict, labels: verdict.unmask_prediction != labels.cpu(),
}
"""What counts as a success, per criterion, from the hard verdict: ``evaded`` (M wrong and not
flagged), ``system`` (the deployed decision wrong), ``inverted`` (M wrong: the inverted test's
planted point is flagged, and an attack that is not told the flag is inverted still aims at
evading it, so an image with M wrong and not flagged is more than the test asks, not less),
``reclassification`` (the re-classification wrong)."""

PLANTED: dict[str, Callable[[Verdict, torch.Tensor], torch.Tensor]] = {
    "evasion": CRITERIA["evaded"],
    "inverted": lambda verdict, labels: (verdict.m_prediction != labels.cpu()) & verdict.flagged,
}
"""What the planted point of the evasion and inverted tests is on the binarized pipeline: M wrong
and not flagged; M wrong and flagged."""

TEST_CRITERIA: dict[str, tuple[str, ...]] = {
    "evasion": ("evaded", "system"), "inverted": ("inverted",), "reclassification": ("reclassification",)}
"""The criteria each test's setup records (clean image and random search)."""

STATUS = {name: code for code, name in enumerate(STATUSES)}


@dataclass
class Setup:
    """One test's modified pipelines for N images, as arrays (saved and read back as they are).

    - ``status`` (N,) int8: index into ``STATUSES``; ``target`` (N,) the class t (-1: none).
    - ``planted`` (N, 3, H, W) uint8: the planted point (0 where none); ``distance`` (N,) its
      L-inf distance to the clean image in grey levels.
    - ``weight``, ``bias``: the readouts, M's (N, d) and (N,) (evasion and inverted tests) or K's
      per part (N, 44, D) and (N, 44) (re-classification test), in logit units; ``parts`` (N, 44)
      bool: the re-classification test's planted parts.
    - ``clean`` and ``random``: per criterion of the test (``TEST_CRITERIA``), (N,) bool: the clean
      image already meets it on the modified pipeline; some random point of the ball does.
    - ``inner_changed`` (N,): the share of fresh inner points (``random_samples`` of them, not
      those the readouts were fitted on) whose modified output is not y's (the binarized M's class;
      the modified K's re-classification): the reference code's inner validation accuracy, as a
      miss rate; 0 where the modified model holds the whole shrunk ball.
    """

    test: str
    status: np.ndarray
    target: np.ndarray
    planted: np.ndarray
    distance: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    parts: np.ndarray
    clean: dict[str, np.ndarray] = field(default_factory=dict)
    random: dict[str, np.ndarray] = field(default_factory=dict)
    inner_changed: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def empty(cls, test: str, images: torch.Tensor, weight_shape: tuple[int, ...]) -> Setup:
        n = len(images)
        return cls(test, np.full(n, STATUS["no_target"], np.int8), np.full(n, -1, np.int64),
                   np.zeros((n, *images.shape[1:]), np.uint8), np.zeros(n, np.float64),
                   np.zeros((n, *weight_shape), np.float32), np.zeros((n, *weight_shape[:-1]), np.float32),
                   np.zeros((n, len(PARTS)), bool),
                   {c: np.zeros(n, bool) for c in TEST_CRITERIA[test]}, {c: np.zeros(n, bool) for c in TEST_CRITERIA[test]},
                   np.zeros(n, np.float64))

    @property
    def ok(self) -> np.ndarray:
        return self.status == STATUS["ok"]

    def arrays(self) -> dict[str, np.ndarray]:
        """The setup as named per-image arrays (``from_arrays`` reads them back)."""
        arrays = {"status": self.status, "target": self.target, "planted": self.planted, "distance": self.distance,
                  "weight": self.weight, "bias": self.bias, "parts": self.parts, "inner_changed": self.inner_changed}
        arrays.update({f"clean_{c}": v for c, v in self.clean.items()})
        arrays.update({f"random_{c}": v for c, v in self.random.items()})
        return arrays

    @classmethod
    def from_arrays(cls, test: str, arrays: dict[str, np.ndarray]) -> Setup:
        criteria = TEST_CRITERIA[test]
        return cls(test, arrays["status"].astype(np.int8), arrays["target"].astype(np.int64), arrays["planted"],
                   arrays["distance"], arrays["weight"], arrays["bias"], arrays["parts"].astype(bool),
                   {c: arrays[f"clean_{c}"].astype(bool) for c in criteria},
                   {c: arrays[f"random_{c}"].astype(bool) for c in criteria}, arrays["inner_changed"])

    def planted_images(self, rows: np.ndarray | None = None) -> torch.Tensor:
        planted = self.planted if rows is None else self.planted[rows]
        return torch.from_numpy(planted).float() / GREY_LEVELS


# --- the search for the evasion test's planted point ------------------------------------------------


class PlantingSearch(FabricateAttack):
    """K's parts made to pass UnMask's detection for a given class: the evasion test's planted point.

    The K-only fabrication attack (``k_fabricate``: TOG's fabrication with DAG's one label per
    proposal) on the same engine, but towards each image's ``candidates`` (N, R) in turn (-1:
    none; the image's first candidate is tried again in its place) instead of the class least like
    the image, stopping per image at its first success. Not an attack under test: only whether
    its result exists matters.
    """

    family = "active_plant"

    def __init__(self, target: DefenseTarget, *, epsilon: float, options: AdaptiveOptions,
                 candidates: torch.Tensor) -> None:
        super().__init__(target, epsilon=epsilon, norm=LINF, options=options)
        self.candidates = candidates.cpu()

    def runs(self, batch: Batch) -> Iterator[Run]:
        first = self.candidates[:, :1].expand_as(self.candidates)
        filled = torch.where(self.candidates >= 0, self.candidates, first)
        for rank in range(filled.shape[1]):
            for restart in range(self.options.restarts):
                yield Run((rank, restart), self.options.random_start or restart > 0, filled[:, rank].contiguous())


def planting_options(attack_options: AdaptiveOptions, options: ActiveTestOptions) -> AdaptiveOptions:
    """The planting search's engine options: the attacks' (``attack_options``), with the steps and
    runs of ``options`` and early stop (the first point found is enough). The attacks' target
    count and re-classification losses are reset: the search tries its own candidates and has no
    re-classification run, and the setup's saved result is keyed by these options, so testing the
    attacks at a larger budget (more targets or losses, as the budget ladder grows it) reuses it."""
    return replace(attack_options, steps=options.plant_steps, restarts=options.plant_restarts, early_stop=True,
                   targets=AdaptiveOptions.targets, reclassify_losses=AdaptiveOptions.reclassify_losses)


def flagged_targets(parts: torch.Tensor, labels: torch.Tensor, class_parts: torch.Tensor, threshold: float,
                    limit: int) -> torch.Tensor:
    """(N, R): per image, the classes other than its label that its ``parts`` (N, 44 bool) get
    flagged for (1 - J >= ``threshold``), most similar (highest J) first, at most ``limit`` (0:
    all); -1 pads."""
    similarity = soft_jaccard(parts.double(), class_parts.double())
    eligible = similarity <= 1.0 - threshold
    eligible[torch.arange(len(labels)), labels] = False
    return _ranked(similarity, eligible, limit)


def reclassifying_targets(parts: torch.Tensor, labels: torch.Tensor, class_parts: torch.Tensor,
                          limit: int) -> torch.Tensor:
    """(N, R): per image, the classes c other than its label whose parts, added to ``parts``,
    change UnMask's re-classification away from the label, most similar first (at most ``limit``,
    0: all; -1 pads)."""
    similarity = soft_jaccard(parts.double(), class_parts.double())
    eligible = torch.zeros_like(similarity, dtype=torch.bool)
    for c in range(len(class_parts)):
        grown = parts.bool() | class_parts[c].bool().unsqueeze(0)
        eligible[:, c] = hard_reclassify(soft_jaccard(grown.double(), class_parts.double())) != labels
    eligible[torch.arange(len(labels)), labels] = False
    return _ranked(similarity, eligible, limit)


def _ranked(similarity: torch.Tensor, eligible: torch.Tensor, limit: int) -> torch.Tensor:
    order = similarity.masked_fill(~eligible, -math.inf).argsort(dim=1, descending=True, stable=True)
    ranked = torch.where(eligible.gather(1, order), order, torch.full_like(order, -1))
    width = max(1, int(eligible.sum(1).max().item()) if len(eligible) else 1)
    return ranked[:, :min(width, limit) if limit else width]


# --- the evasion and inverted tests: M binarized ------------------------------------------------------


def evasion_setup(target: DefenseTarget, judge_for: JudgeFor, images: torch.Tensor, labels: torch.Tensor,
                  indices: torch.Tensor, *, epsilon: float, options: ActiveTestOptions,
                  attack_options: AdaptiveOptions) -> Setup:
    """The evasion test's binarized M for each of ``images`` (8-bit, (N, 3, H, W), of classes
    ``labels``, at positions ``indices`` of the evaluation: their random points derive from
    them) at L-inf ``epsilon`` (0-255 scale), against ``target``'s real K and thresholds; the
    planting search runs on the engine with ``attack_options`` but ``options``' steps, runs and
    targets."""
    clean = target.judge(images)
    candidates = flagged_targets(clean.parts, labels.cpu(), target.class_parts, target.detection_threshold,
                                 options.plant_targets)
    setup = Setup.empty("evasion", images, (_feature_size(target.classifier, images),))
    searched = np.flatnonzero((candidates[:, 0] >= 0).numpy())
    setup.status[searched] = STATUS["no_planted_point"]
    if len(searched):
        search = PlantingSearch(target, epsilon=epsilon, candidates=candidates[searched],
                                options=planting_options(attack_options, options))
        found = search(images[searched], labels[searched], indices[searched].cpu())
        for row, image, t, success in zip(searched, found.images, found.targets.tolist(), found.success.tolist(),
                                          strict=True):
            if success:
                setup.status[row], setup.target[row] = STATUS["ok"], t
                _plant(setup, row, image, images[row])
    binarize(setup, target, judge_for, images, labels, indices, epsilon=epsilon, options=options)
    return setup


def inverted_setup(target: DefenseTarget, judge_for: JudgeFor, images: torch.Tensor, labels: torch.Tensor,
                   indices: torch.Tensor, *, epsilon: float, options: ActiveTestOptions,
                   targets: np.ndarray | None = None) -> Setup:
    """The inverted test's binarized M for each image: the target is ``targets``' (the evasion
    test's, where it has one) else the class nearest to K's clean parts that they get flagged
    for; the planted point is the first of ``options.random_samples`` corners of the ball whose
    real K parts are flagged for it."""
    clean = target.judge(images)
    candidates = flagged_targets(clean.parts, labels.cpu(), target.class_parts, target.detection_threshold, 1)
    chosen = candidates[:, 0].numpy().copy()
    if targets is not None:
        chosen = np.where(targets >= 0, targets, chosen)
    setup = Setup.empty("inverted", images, (_feature_size(target.classifier, images),))
    for row in np.flatnonzero(chosen >= 0):
        setup.status[row] = STATUS["no_planted_point"]
        corners = ball_points(images[row], options.random_samples, epsilon, kind="corner", seed=options.seed,
                              index=int(indices[row]), stream=("inverted", "plant", epsilon))
        parts = target.judge(corners).parts
        similarity = soft_jaccard(parts.double(), target.class_parts.double())[:, int(chosen[row])]
        flagged = np.flatnonzero((1.0 - similarity >= target.detection_threshold).numpy())
        if len(flagged):
            setup.status[row], setup.target[row] = STATUS["ok"], chosen[row]
            _plant(setup, row, corners[flagged[0]], images[row])
    binarize(setup, target, judge_for, images, labels, indices, epsilon=epsilon, options=options)
    return setup


def binarized_classifier(target: DefenseTarget, setup: Setup, images: torch.Tensor, labels: torch.Tensor,
                         rows: np.ndarray) -> BinarizedClassifier:
    """The binarized M of ``setup``'s images ``rows`` (their clean ``images`` are its anchors)."""
    device = images.device
    return BinarizedClassifier(
        penultimate(target.classifier), images[rows], torch.from_numpy(setup.weight[rows]).to(device),
        torch.from_numpy(setup.bias[rows]).to(device), labels[rows].to(device),
        torch.from_numpy(setup.target[rows]).to(device), num_classes=len(target.class_parts)).to(device)


def anchor_groups(images: torch.Tensor, rows: np.ndarray, epsilon: float) -> list[np.ndarray]:
    """``rows`` cut into groups whose images' epsilon balls (0-255 scale) are pairwise disjoint,
    so one binarized M serves each group: all of them at once when they are (real images are)."""
    unit = epsilon / GREY_LEVELS
    if anchors_apart(images[rows], unit):
        return [rows] if len(rows) else []
    groups: list[list[int]] = []
    for row in rows.tolist():
        for group in groups:
            if anchors_apart(images[[*group, row]], unit):
                group.append(row)
                break
        else:
            groups.append([row])
    return [np.array(group) for group in groups]


def binarize(setup: Setup, target: DefenseTarget, judge_for: JudgeFor, images: torch.Tensor,
             labels: torch.Tensor, indices: torch.Tensor, *, epsilon: float, options: ActiveTestOptions) -> None:
    """Binarize M around each planted point of ``setup`` (an evasion or inverted setup whose
    ``ok`` images have their target and planted point), in place: fit each readout (status
    ``not_separable`` where none separates), check the planted point's outcome and that M still
    says y on every inner point on the binarized pipeline (``not_verified`` where not), and
    record the clean image's and the random search's outcomes."""
    features = penultimate(target.classifier)
    with torch.no_grad():
        margins = _margins(target.classifier(images), labels)
    inner: dict[int, torch.Tensor] = {}
    for row in np.flatnonzero(setup.ok):
        inner[row] = _held_points(setup.test, images, indices, row, epsilon, options.inner_points,
                                  options.other_corners, options, planted=setup.planted_images([row])[0])
        with torch.no_grad():
            negative = _features(features, inner[row])
            positive = _features(features, setup.planted_images([row]).to(images.device))
        readout = separating_readout(negative, positive, closeness=options.closeness)
        if readout is None:
            setup.status[row] = STATUS["not_separable"]
            continue
        # in M's logit units: the binarized M is as sure of y on the clean image as M itself is
        scale = margins[row] / max(-float(readout(negative[:1])[0]), 1e-12)
        setup.weight[row], setup.bias[row] = readout.weight * scale, readout.bias * scale
    for group in anchor_groups(images, np.flatnonzero(setup.ok), epsilon):
        classifier = binarized_classifier(target, setup, images, labels, group)
        judge = judge_for(classifier, target.part_model)
        for row in group.tolist():
            y = labels[row:row + 1].cpu()
            with torch.no_grad():  # the inner points only need M: K's parts do not enter "M says y"
                kept = classifier(inner[row]).argmax(1).cpu() == y
            planted = judge(setup.planted_images([row]).to(images.device))
            if not (bool(kept.all()) and bool(PLANTED[setup.test](planted, y)[0])):
                setup.status[row] = STATUS["not_verified"]
                continue
            with torch.no_grad():
                fresh = classifier(_fresh_inner(setup.test, images, indices, row, epsilon, options)).argmax(1).cpu()
            setup.inner_changed[row] = float((fresh != y).double().mean())
            _clean_and_random(setup, judge, images, labels, indices, row, epsilon=epsilon, options=options)


def _clean_and_random(setup: Setup, judge: Judge, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
                      row: int, *, epsilon: float, options: ActiveTestOptions) -> None:
    """Record, per criterion of the test, whether the clean image already meets it on the
    modified pipeline, and whether one of the random search's points does."""
    y = labels[row:row + 1].cpu()
    clean = judge(images[row:row + 1])
    points = random_search_points(images[row], options.random_samples, epsilon, seed=options.seed,
                                  index=int(indices[row]), stream=(setup.test, "random", epsilon))
    found = judge(points)
    for criterion in TEST_CRITERIA[setup.test]:
        setup.clean[criterion][row] = bool(CRITERIA[criterion](clean, y)[0])
        setup.random[criterion][row] = bool(CRITERIA[criterion](found, y.expand(len(points))).any())


def _held_points(test: str, images: torch.Tensor, indices: torch.Tensor, row: int, epsilon: float, inner: int,
                 corners: int, options: ActiveTestOptions, *, planted: torch.Tensor) -> torch.Tensor:
    """The points a readout must keep at y: image ``row`` itself, ``inner - 1`` inner points, and
    ``corners`` corners of the ball other than the ``planted`` point (so that the modified model's
    adversarial region is the planted point's neighbourhood, not every corner of the ball)."""
    others = ball_points(images[row], corners, epsilon, kind="corner", seed=options.seed, index=int(indices[row]),
                         stream=(test, "held corners", epsilon))
    others = others[(others != planted.to(others)).flatten(1).any(1)]
    return torch.cat([images[row:row + 1], ball_points(
        images[row], inner - 1, epsilon, kind="inner", gap=options.gap, seed=options.seed, index=int(indices[row]),
        stream=(test, "inner", epsilon)), others])


def _fresh_inner(test: str, images: torch.Tensor, indices: torch.Tensor, row: int, epsilon: float,
                 options: ActiveTestOptions) -> torch.Tensor:
    """``options.random_samples`` inner points of image ``row`` drawn apart from those fitted on."""
    return ball_points(images[row], options.random_samples, epsilon, kind="inner", gap=options.gap, seed=options.seed,
                       index=int(indices[row]), stream=(test, "validation", epsilon))


def _feature_size(classifier: nn.Module, images: torch.Tensor) -> int:
    with torch.no_grad():
        return int(_features(penultimate(classifier), images[:1]).shape[1]) if len(images) else 1


def _features(features: nn.Module, images: torch.Tensor, *, chunk: int = 64) -> np.ndarray:
    """M's penultimate features of ``images`` as float64 rows."""
    return torch.cat([features(images[start:start + chunk]).flatten(1).double().cpu()
                      for start in range(0, len(images), chunk)]).numpy()


def _margins(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """M's logit margin z_y - max_{c != y} z_c on each image (at least 0.1: a readout needs a scale)."""
    labels = labels.to(logits.device)
    own = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, labels.view(-1, 1), -math.inf).amax(1)
    return (own - others).clamp(min=0.1).double().cpu().numpy()


def _plant(setup: Setup, row: int, planted: torch.Tensor, clean: torch.Tensor) -> None:
    """Record ``planted`` (an 8-bit image in [0, 1]) as image ``row``'s planted point, and its distance."""
    setup.planted[row] = torch.round(planted.detach().cpu() * GREY_LEVELS).to(torch.uint8).numpy()
    setup.distance[row] = float((planted.detach().cpu() - clean.detach().cpu()).abs().max()) * GREY_LEVELS


# --- the re-classification test: K's box classifier with planted parts ---------------------------------


def reclassification_setup(target: DefenseTarget, judge_for: JudgeFor, images: torch.Tensor, labels: torch.Tensor,
                           indices: torch.Tensor, *, epsilon: float, options: ActiveTestOptions) -> Setup:
    """The re-classification test's modified K for each of ``images`` (see the module's docstring)."""
    model = target.part_model
    clean = target.judge(images)
    candidates = reclassifying_targets(clean.parts, labels.cpu(), target.class_parts, options.plant_targets)
    box_features = int(box_outputs(model, images[:1])[0].features.shape[1]) if len(images) else 1
    setup = Setup.empty("reclassification", images, (len(PARTS), box_features))
    clean_wrong = (clean.unmask_prediction != labels.cpu()).numpy()
    setup.status[clean_wrong] = STATUS["clean_wrong"]
    for row in np.flatnonzero((candidates[:, 0] >= 0).numpy() & ~clean_wrong):
        setup.status[row] = STATUS["no_planted_point"]
        planted = ball_points(images[row], 1, epsilon, kind="corner", seed=options.seed, index=int(indices[row]),
                              stream=("reclassification", "plant", epsilon))
        inner = _held_points(setup.test, images, indices, row, epsilon, options.k_inner_points,
                             min(options.other_corners, options.k_inner_points), options, planted=planted[0])
        negative = torch.cat([outputs.features for outputs in box_outputs(model, inner)]).double().cpu().numpy()
        at_planted = box_outputs(model, planted)[0]
        found = target.judge(planted).parts[0]
        y = labels[row:row + 1].cpu()
        for t in (c for c in candidates[row].tolist() if c >= 0):
            added = target.class_parts[t].bool() & ~found
            planting = _plant_parts(at_planted, negative, torch.nonzero(added).flatten().tolist(),
                                    threshold=target.k_score_threshold, closeness=options.closeness)
            if planting is None:
                setup.status[row] = STATUS["not_separable"]
                continue
            part_labels, weight, bias = planting
            predictor = PlantedPartsPredictor(model.roi_heads.box_predictor, part_labels, weight, bias)
            judge = judge_for(target.classifier, with_box_predictor(model, predictor.to(images.device)))
            kept = judge(inner).unmask_prediction == y
            if not (bool(kept.all()) and bool(CRITERIA["reclassification"](judge(planted), y)[0])):
                setup.status[row] = STATUS["not_verified"]
                continue
            setup.status[row], setup.target[row] = STATUS["ok"], t
            _plant(setup, row, planted[0], images[row])
            fresh = judge(_fresh_inner(setup.test, images, indices, row, epsilon, options)).unmask_prediction
            setup.inner_changed[row] = float((fresh != y).double().mean())
            setup.parts[row, (part_labels - 1).numpy()] = True
            setup.weight[row, (part_labels - 1).numpy()] = weight.numpy()
            setup.bias[row, (part_labels - 1).numpy()] = bias.numpy()
            _clean_and_random(setup, judge, images, labels, indices, row, epsilon=epsilon, options=options)
            break
    return setup


def planted_part_model(target: DefenseTarget, setup: Setup, row: int) -> MaskRCNN:
    """The re-classification test's modified K of image ``row`` of ``setup``."""
    parts = np.flatnonzero(setup.parts[row])
    model = target.part_model
    device = next(model.parameters()).device
    predictor = PlantedPartsPredictor(model.roi_heads.box_predictor, torch.from_numpy(parts + 1),
                                      torch.from_numpy(setup.weight[row, parts]), torch.from_numpy(setup.bias[row, parts]))
    return with_box_predictor(model, predictor.to(device))


LOGIT_MARGIN = 1.0
"""How far (in logits) a planted proposal's part clears what K's rule needs of it."""
PROPOSALS_TRIED = 16
"""How many of the planted point's most part-like proposals are tried for each planted part."""


def _plant_parts(at_planted, negative: np.ndarray, parts: list[int], *, threshold: float,
                 closeness: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """For each part index of ``parts``: a proposal of the planted point of its own (the most
    part-like one whose box for the part is valid), and a readout on box features negative on
    every ``negative`` proposal (the inner points'), scaled so that the proposal reports the part
    by ``LOGIT_MARGIN`` more than K's score threshold needs. (labels, weight, bias) or None."""
    logits, valid = at_planted.logits.double().cpu(), at_planted.valid.cpu()
    features = at_planted.features.double().cpu().numpy()
    effective = max(threshold, 1.0 / NUM_LABELS)
    needed = math.log(effective / (1.0 - effective)) if effective < 1.0 else math.inf
    chosen: dict[int, int] = {}  # part -> its proposal
    for part in parts:
        label = part + 1
        others = logits.clone()
        others[:, label] = -math.inf
        margin = logits[:, label] - others.amax(1)
        candidates = [r for r in margin.argsort(descending=True).tolist()
                      if bool(valid[r, label]) and r not in chosen.values()]
        if not candidates:
            return None
        # the most part-like proposal that a readout separates cheaply from the inner points, else the most part-like
        separable = (r for r in candidates[:PROPOSALS_TRIED] if separating_readout(
            negative, features[r:r + 1], closeness=closeness, fallback=False) is not None)
        chosen[part] = next(separable, candidates[0])
    labels, weights, biases = [], [], []
    for part, proposal in chosen.items():
        label = part + 1
        others = logits[proposal].clone()
        others[label] = -math.inf
        # negative on the inner points' proposals and on the other planted parts' proposals too, so
        # that each planted proposal is raised for its own part only
        rivals = [r for r in chosen.values() if r != proposal]
        readout = separating_readout(np.concatenate([negative, features[rivals]]), features[proposal:proposal + 1],
                                     closeness=closeness)
        if readout is None:
            return None
        # K reports the part when it is the argmax and its probability reaches the threshold
        required = max(float(torch.logsumexp(others, 0)) + needed, float(others.max())) \
            - float(logits[proposal, label]) + LOGIT_MARGIN
        scale = max(required, LOGIT_MARGIN) / float(readout(features[proposal:proposal + 1])[0])
        labels.append(label)
        weights.append(torch.from_numpy(readout.weight * scale).float())
        biases.append(readout.bias * scale)
    weight = torch.stack(weights) if weights else torch.zeros(0, features.shape[1])
    return torch.tensor(labels, dtype=torch.int64), weight, torch.tensor(biases, dtype=torch.float32)

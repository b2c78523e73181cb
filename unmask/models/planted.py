"""M and K modified so that an adversarial example provably exists: the models of the attack unit
tests (Zimmermann, Brendel, Tramèr, Carlini, NeurIPS 2022, "Increasing Confidence in
Adversarial Robustness Evaluations"; reference code google-research/active-adversarial-tests).

- ``BinarizedClassifier``: M's penultimate features with M's last layer replaced, per test image,
  by a linear readout trained to say the image's class y on *inner* points (the clean image and
  points of the slightly shrunk epsilon ball) and a target class t on a *planted* point of the
  ball (every other class is out of reach). Several images' readouts live in one module: each
  input uses the readout of the clean image (its *anchor*) nearest to it in L-inf, so one model
  serves a batch of images whose epsilon balls do not overlap, as the attacks batch them.
- ``PlantedPartsPredictor``: K's box classifier plus, for each planted part p, a linear readout on
  the box features that adds to every proposal's logit of p: negative on every proposal of the
  inner points (p stays absent there), large enough on one proposal of the planted point that K
  reports p there. ``with_box_predictor`` makes the modified K without copying K's weights.
- ``separating_readout``: the readouts' fit, a whitened (Fisher) direction or else a logistic
  regression (scikit-learn) that must separate the two sets perfectly (None otherwise), its
  boundary then placed between them.

These models exist only for the tests (``unmask.attacks.adaptive.active``); nothing else uses them.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.ops import clip_boxes_to_image

OUT_OF_REACH = -1.0e4
"""The binarized M's logit of every class but y and t: no point of the ball can make M say one."""
MIN_BOX_SIZE = 1e-2
"""K's small-box rule (``remove_small_boxes(min_size=1e-2)``): a proposal whose box for a class is
smaller cannot report that class."""


# --- the readout fit ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Readout:
    """A linear score ``features @ weight + bias`` (float64), normalised so that the largest score of
    the negative set is ``-closeness`` and the smallest of the positive set ``1 - closeness``."""

    weight: np.ndarray
    bias: float

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, dtype=np.float64) @ self.weight + self.bias


RIDGE = 1e-3
"""The whitened direction's ridge, relative to the negatives' mean variance."""


def separating_readout(negative: np.ndarray, positive: np.ndarray, *, closeness: float,
                       fallback: bool = True) -> Readout | None:
    """A linear readout positive on every row of ``positive`` and negative on every row of
    ``negative`` (features, one row per point), or None when none is found (the reference
    code's "perfect solution" requirement).

    The direction is first the whitened (Fisher) one, the positives' mean minus the negatives'
    through the negatives' ridge-regularised covariance (a linear solve: it separates a single
    point from a cloud in most cases); where that does not separate, and ``fallback``, a logistic
    regression's (nearly unregularised, classes weighted by their sizes, on standardised
    features; much slower). Either way the boundary is then placed at ``closeness`` of the way
    from the highest negative score to the lowest positive one (0.5: the middle; near 1: the
    positive points are barely on their side, the reference code's
    ``decision_boundary_closeness`` for detectors), and the scores scaled so that this gap is 1.
    """
    if not 0.0 < closeness < 1.0:
        raise ValueError(f"closeness must lie in (0, 1), got {closeness}")
    negative, positive = np.asarray(negative, np.float64), np.asarray(positive, np.float64)
    if len(negative) == 0 or len(positive) == 0:
        raise ValueError("separating_readout needs points on both sides")
    directions = [_whitened_direction(negative, positive)]
    if fallback:
        directions.append(_regression_direction)
    for direction in directions:
        weight = direction(negative, positive) if callable(direction) else direction
        highest_negative, lowest_positive = (negative @ weight).max(), (positive @ weight).min()
        gap = lowest_positive - highest_negative
        if np.isfinite(gap) and gap > 0:
            threshold = highest_negative + closeness * gap
            return Readout(weight / gap, float(-threshold / gap))
    return None


def _whitened_direction(negative: np.ndarray, positive: np.ndarray) -> np.ndarray:
    centred = negative - negative.mean(0)
    covariance = centred.T @ centred / max(len(negative) - 1, 1)
    ridge = RIDGE * max(float(np.trace(covariance)) / len(covariance), 1e-12)
    return np.linalg.solve(covariance + ridge * np.eye(len(covariance)), positive.mean(0) - negative.mean(0))


def _regression_direction(negative: np.ndarray, positive: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    features = np.concatenate([negative, positive])
    mean, scale = features.mean(0), features.std(0)
    scale[scale == 0] = 1.0
    labels = np.concatenate([np.zeros(len(negative)), np.ones(len(positive))])
    regression = LogisticRegression(C=1e6, class_weight="balanced", max_iter=5000, tol=1e-8)
    regression.fit((features - mean) / scale, labels)
    return regression.coef_[0] / scale


# --- M: the binarized classifier -------------------------------------------------------------------


def penultimate(classifier: nn.Module) -> nn.Module:
    """A copy of ``classifier`` that returns the input of its last linear layer (its head) instead
    of the logits: M's penultimate features, for every architecture M can be (the head is the
    last ``nn.Linear`` in module order). In eval mode; ``classifier`` is not changed."""
    heads = [name for name, module in classifier.named_modules() if isinstance(module, nn.Linear)]
    if not heads:
        raise ValueError(f"{type(classifier).__name__} has no linear layer to read features before")
    features = copy.deepcopy(classifier).eval()
    parent_name, _, child = heads[-1].rpartition(".")
    setattr(features.get_submodule(parent_name) if parent_name else features, child, nn.Identity())
    return features


def nearest_anchor(images: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(n,) index of the anchor nearest to each image in L-inf."""
    distances = (images.flatten(1).unsqueeze(1) - anchors.flatten(1).unsqueeze(0)).abs().amax(-1)
    return distances.argmin(1)


class BinarizedClassifier(nn.Module):
    """M with its head replaced by per-image binary readouts (Zimmermann et al. 2022, section 3).

    For an input nearest (L-inf) to anchor i, with M's penultimate features f and readout score
    s = f . weight[i] + bias[i]: the logit of ``labels[i]`` is -s / 2, of ``targets[i]`` +s / 2,
    and of every other class ``OUT_OF_REACH``; so M says the target exactly where s > 0.

    Args:
        features: M's penultimate features (``penultimate(M)``), [0, 1] images -> (n, d).
        anchors: (N, 3, H, W) the clean images; their epsilon balls must not overlap (L-inf
            distance above 2 epsilon between any two), which ``anchors_apart`` checks.
        weight, bias: (N, d) and (N,) the readouts, in M's logit units.
        labels, targets: (N,) each image's class y and target t.
        num_classes: M's number of classes.
    """

    def __init__(self, features: nn.Module, anchors: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 labels: torch.Tensor, targets: torch.Tensor, *, num_classes: int) -> None:
        super().__init__()
        n = len(anchors)
        if weight.shape[0] != n or bias.shape != (n,) or labels.shape != (n,) or targets.shape != (n,):
            raise ValueError(f"BinarizedClassifier: {n} anchors need weight (N, d), bias, labels and targets (N,); "
                             f"got {tuple(weight.shape)}, {tuple(bias.shape)}, {tuple(labels.shape)}, "
                             f"{tuple(targets.shape)}")
        if bool((labels == targets).any()):
            raise ValueError("BinarizedClassifier: a target equals its image's class")
        self.features = features
        self.num_classes = num_classes
        self.register_buffer("anchors", anchors.float())
        self.register_buffer("weight", weight.float())
        self.register_buffer("bias", bias.float())
        self.register_buffer("labels", labels.long())
        self.register_buffer("targets", targets.long())
        self.eval()  # M's BatchNorm statistics, never a batch's: as M runs in the evaluation

    def score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n,) each image's anchor and (n,) its readout score s (positive: M says the target)."""
        index = nearest_anchor(images.detach(), self.anchors)
        return index, (self.features(images).flatten(1) * self.weight[index]).sum(1) + self.bias[index]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        index, score = self.score(images)
        logits = score.new_full((len(images), self.num_classes), OUT_OF_REACH)
        logits = logits.scatter(1, self.labels[index].view(-1, 1), (-score / 2).view(-1, 1))
        return logits.scatter(1, self.targets[index].view(-1, 1), (score / 2).view(-1, 1))


def anchors_apart(anchors: torch.Tensor, epsilon: float) -> bool:
    """Whether every two anchors are more than 2 ``epsilon`` apart in L-inf (their balls are disjoint)."""
    if len(anchors) < 2:
        return True
    flat = anchors.flatten(1)
    distances = (flat.unsqueeze(1) - flat.unsqueeze(0)).abs().amax(-1)
    distances.fill_diagonal_(math.inf)
    return bool((distances > 2 * epsilon).all())


# --- K: the box classifier with planted parts --------------------------------------------------------


@dataclass
class BoxOutputs:
    """K's box head on one image, per RPN proposal: ``features`` (R, D) the box features the box
    classifier reads, ``logits`` (R, 45) its class logits, ``valid`` (R, 45) whether the proposal's
    box for each class survives K's small-box rule."""

    features: torch.Tensor
    logits: torch.Tensor
    valid: torch.Tensor


@torch.no_grad()
def box_outputs(model: MaskRCNN, images: torch.Tensor) -> list[BoxOutputs]:
    """``BoxOutputs`` of each of ``images`` (N, 3, H, W) in [0, 1], from K's eval-mode modules
    (transform, backbone, RPN, RoIAlign, box head, box classifier), in K's proposal order."""
    was_training = model.training
    model.eval()
    try:
        image_list, _ = model.transform(list(images))
        features = model.backbone(image_list.tensors)
        proposals, _ = model.rpn(image_list, features)
        heads = model.roi_heads
        box_features = heads.box_head(heads.box_roi_pool(features, proposals, image_list.image_sizes))
        logits, regression = heads.box_predictor(box_features)
        boxes = heads.box_coder.decode(regression.float(), proposals)  # (proposals, classes, 4)
    finally:
        model.train(was_training)
    counts = [len(p) for p in proposals]
    outputs = []
    for chunk_features, chunk_logits, chunk_boxes, shape in zip(
            box_features.split(counts), logits.split(counts), boxes.split(counts), image_list.image_sizes,
            strict=True):
        clipped = clip_boxes_to_image(chunk_boxes.reshape(-1, 4), shape).reshape(chunk_boxes.shape)
        sizes = clipped[..., 2:] - clipped[..., :2]
        outputs.append(BoxOutputs(chunk_features.float(), chunk_logits.float(), (sizes >= MIN_BOX_SIZE).all(-1)))
    return outputs


class PlantedPartsPredictor(nn.Module):
    """K's box classifier (``predictor``) with planted parts: for planted part k (label
    ``labels[k]``, part index + 1), every proposal's logit of that label gets
    ``features @ weight[k] + bias[k]`` added (a linear readout on the box features, in logit units).
    The box regression is K's. Linear, so the attacks' gradients see it everywhere."""

    def __init__(self, predictor: nn.Module, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        if weight.ndim != 2 or labels.shape != (len(weight),) or bias.shape != (len(weight),):
            raise ValueError(f"PlantedPartsPredictor: expected labels (k,), weight (k, D), bias (k,); got "
                             f"{tuple(labels.shape)}, {tuple(weight.shape)}, {tuple(bias.shape)}")
        self.predictor = predictor
        self.register_buffer("labels", labels.long())
        self.register_buffer("weight", weight.float())
        self.register_buffer("bias", bias.float())
        self.train(predictor.training)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, regression = self.predictor(features)
        if len(self.labels) == 0:
            return logits, regression
        shift = features.flatten(1).to(self.weight.dtype) @ self.weight.T + self.bias
        return logits.index_add(1, self.labels, shift.to(logits.dtype)), regression


def with_box_predictor(model: MaskRCNN, predictor: nn.Module) -> MaskRCNN:
    """A K that is ``model`` with its box classifier replaced by ``predictor``: every other module
    (and every weight) is ``model``'s own, shared, not copied; ``model`` is not changed."""
    modified = copy.copy(model)
    modified._modules = dict(model._modules)
    heads = copy.copy(model.roi_heads)
    heads._modules = dict(model.roi_heads._modules)
    heads.box_predictor = predictor
    modified.roi_heads = heads
    return modified

"""Adversarial training of K, the part extractor: UnMask-R's robust K.

White-box attacks that know K break UnMask because K's part decisions move as easily as M's
class (docs/threat-models.md). Here K is fine-tuned from the clean K (as Sitawarin et al. 2023
fine-tune their part models adversarially from a normally trained checkpoint) on adversarial
images whose inner maximisation attacks what the white-box evaluation attacks:

- ``training``: K's own Mask R-CNN training losses (RPN objectness and box regression, RoI
  classification and box regression) on the image's annotations (Zhang & Wang 2019, "Towards
  Adversarially Robust Object Detection": attacking the detector's classification and
  localisation losses); the mask loss is left out (UnMask reads part sets, not masks);
- ``vanish``: the white-box attacks' own hinge losses on K's box-head probabilities
  (``unmask.attacks.adaptive.part_view``) that make every part vanish (TOG vanishing, the
  ``k_vanish`` check);
- ``transplant``: the same hinges towards another class's parts (add V[t], remove every part
  not in V[t]: what the ``transplant`` and ``reclassify`` attacks do to K), t a class of
  ``unmask.parts.CLASS_PARTS`` other than the one the image's annotated parts match best.

Each image of a batch is attacked with one of the recipe's inner losses (assigned in turn): one
attack per batch whatever the number of losses, and no scale to balance between losses in
different units (L-inf steps follow the gradient's sign). The inner loop is PGD with a random
start (Madry et al. 2018), FGSM with a random start (Wong, Rice & Kolter 2020, "Fast is better
than free") or free replays (Shafahi et al. 2019). The update minimises K's standard losses on
the adversarial images, optionally mixed with the clean images' (Goodfellow et al. 2015; Zhang &
Wang mix clean images in), plus optionally a TRADES-style consistency term (Zhang et al. 2019):
the KL divergence between the box-head part probabilities of the clean and the adversarial image
on the same (the clean image's) proposals.

BatchNorm (the synthetic-world Ks' BatchNorm layers train). The inner attack runs with BatchNorm in eval
mode: it then attacks the K that is deployed and evaluated (running statistics), its k steps do
not pull the running statistics towards the iterates', and an image's perturbation does not
depend on the other images of its batch. The update runs in train mode, as K was trained, so
the running statistics follow the images K now trains on. Two exceptions, each for a reason:
free replays take the perturbation's gradient from the update's own backward pass (that is what
makes them free), so in train mode; and the consistency term is computed in eval mode, because
it regularises the deployed K's part decisions, which are what the attacks move.

Adversarial training images stay in [0, 1] and in the epsilon ball; they are not rounded to 8
bits (the evaluation's attacks are, which only removes perturbations smaller than a grey level).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision.models.detection import MaskRCNN

from unmask.attacks.adaptive.part_view import PartView, soft_jaccard
from unmask.attacks.base import frozen_eval
from unmask.attacks.norms import LINF
from unmask.constants import GREY_LEVELS, to_unit_scale
from unmask.data.coco import PartSegmentationDataset
from unmask.io import stable_hash
from unmask.models.part_extractor import PartExtractor
from unmask.parts import CLASS_PARTS, PART_INDEX, PARTS
from unmask.provenance import tensors_digest
from unmask.train import loop
from unmask.train.part_extractor import (
    PartExtractorSpec,
    PartExtractorTraining,
    TrainingStep,
    _actual_parts,
    load_part_extractor_weights,
    part_set_precision_recall,
    train_part_extractor,
)

INNER_LOSSES: tuple[str, ...] = ("training", "vanish", "transplant")
"""What the inner maximisation attacks: K's training losses, or the white-box attacks' hinges on
its part decisions (every part vanishes; another class's parts replace the image's)."""

INNER_LOOPS: tuple[str, ...] = ("pgd", "fgsm", "free")
"""pgd: random start, ``steps`` steps; fgsm: random start, one step of 1.25 epsilon (Wong et al.
2020); free: each batch replayed ``steps`` times, the perturbation updated from each update's
own gradient (Shafahi et al. 2019)."""

TRANSPLANT_TARGETS: tuple[str, ...] = ("random", "nearest", "farthest")
"""Which other class the ``transplant`` loss aims at: drawn at random, or the one whose parts
overlap most (what the white-box attacks try first) or least with the image's annotated parts."""

KEPT_EPOCHS: tuple[str, ...] = ("last", "reclassify")
"""Which epoch's weights the fine-tune keeps: the last, or the one with the highest validation
re-classification accuracy under attack (``val_reclassify_accuracy``; early stopping on robust
validation accuracy, Rice, Wong & Kolter 2020, "Overfitting in adversarially robust deep
learning")."""

TRAINING_TERMS: tuple[str, ...] = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
"""K's training losses the ``training`` inner loss sums (the mask loss is left out)."""



def _class_matrix() -> torch.Tensor:
    matrix = torch.zeros(len(CLASS_PARTS), len(PARTS))
    for row, parts in enumerate(CLASS_PARTS.values()):
        matrix[row, [PART_INDEX[part] for part in parts]] = 1.0
    return matrix


CLASS_MATRIX = _class_matrix()
"""V[c] of every class of ``CLASS_PARTS`` (rows in its order), 0/1 over ``PARTS``: K is one
model for every class set, so its transplant targets are every class with parts."""


@dataclass(frozen=True)
class PartExtractorAdversarialTraining:
    """A recipe of adversarial training for K (sizes on the 0-255 scale); the module docstring
    says what each piece does and why.

    Inner maximisation
        - ``epsilon``: L-inf budget of the training perturbations.
        - ``inner_loop``: one of ``INNER_LOOPS``; ``steps``: PGD iterations (``pgd``) or replays
          per batch (``free``; ``fgsm`` takes one step whatever it says).
        - ``step_size``: per step; 0: the loop's default (``pgd`` 2.5 epsilon / steps, Madry et
          al. 2018; ``fgsm`` 1.25 epsilon, Wong et al. 2020; ``free`` epsilon, Shafahi et al. 2019).
        - ``losses``: the inner losses (``INNER_LOSSES``), one per image in turn; ``free``
          needs ``("training",)``: its perturbation follows the update's own loss.
        - ``transplant_target``: ``TRANSPLANT_TARGETS``.
    Update
        - ``clean_weight`` w: minimise (1 - w) x K's losses on the adversarial images + w x on
          the clean ones; ``trades`` beta: + beta x KL(clean || adversarial) of the box-head part
          probabilities on the clean image's proposals (TRADES-style; 0: none).
        - ``epochs``, ``lr``, ``warmup_steps``: the fine-tune from the clean K (SGD with K's
          momentum, weight decay, batch size and clipping; warm-up, then cosine decay to 0).
    Validation, per epoch
        - part recall of ``val_images`` validation images under a ``val_steps``-step PGD
          vanish attack at ``epsilon`` (from a fixed random start), beside the clean figures;
        - re-classification accuracy of the same images, clean and under a ``val_steps``-step PGD
          transplant attack towards the nearest other class (``reclassify_accuracy``).
        - ``keep``: ``KEPT_EPOCHS``, which epoch's weights the fine-tune keeps.
    """

    epsilon: float = 8.0
    inner_loop: str = "fgsm"
    steps: int = 1
    step_size: float = 0.0
    losses: tuple[str, ...] = ("vanish", "transplant")
    transplant_target: str = "random"
    clean_weight: float = 0.0
    trades: float = 0.0
    epochs: int = 2
    lr: float = 0.004
    warmup_steps: int = 20
    val_images: int = 32
    val_steps: int = 5
    keep: str = "last"

    def __post_init__(self) -> None:
        object.__setattr__(self, "losses", tuple(self.losses))
        problems = []
        if not 0 < self.epsilon <= GREY_LEVELS:
            problems.append(f"epsilon must lie in (0, {GREY_LEVELS}], got {self.epsilon}")
        if self.inner_loop not in INNER_LOOPS:
            problems.append(f"inner_loop must be one of {', '.join(INNER_LOOPS)}, got {self.inner_loop!r}")
        if not self.losses or not set(self.losses) <= set(INNER_LOSSES):
            problems.append(f"losses must be a non-empty sequence of {', '.join(INNER_LOSSES)}, got {self.losses!r}")
        if self.inner_loop == "free" and self.losses != ("training",):
            problems.append("free replays take the perturbation's gradient from the update's own loss, so they need "
                            f"losses ('training',), got {self.losses!r}")
        if self.transplant_target not in TRANSPLANT_TARGETS:
            problems.append(f"transplant_target must be one of {', '.join(TRANSPLANT_TARGETS)}, "
                            f"got {self.transplant_target!r}")
        if not 0 <= self.clean_weight <= 1 or self.trades < 0 or self.step_size < 0 or self.lr < 0:
            problems.append(f"expected 0 <= clean_weight <= 1 and trades, step_size, lr >= 0, got {self.clean_weight}, "
                            f"{self.trades}, {self.step_size}, {self.lr}")
        if self.keep not in KEPT_EPOCHS:
            problems.append(f"keep must be one of {', '.join(KEPT_EPOCHS)}, got {self.keep!r}")
        if self.keep == "reclassify" and self.val_images == 0:
            problems.append("keep 'reclassify' picks the epoch by its validation figure: val_images must be at least 1")
        if self.clean_weight == 1 and self.trades == 0:
            problems.append("clean_weight 1 without trades trains on clean images only: that is not adversarial training")
        if min(self.steps, self.epochs, self.val_steps) < 1 or min(self.warmup_steps, self.val_images) < 0:
            problems.append(f"expected steps, epochs, val_steps >= 1 and warmup_steps, val_images >= 0, got {self}")
        if problems:
            raise ValueError("K's adversarial training: " + "; ".join(problems))

    @property
    def step(self) -> float:
        """The inner loop's step on the 0-255 scale."""
        if self.step_size > 0:
            return self.step_size
        return {"pgd": 2.5 * self.epsilon / self.steps, "fgsm": 1.25 * self.epsilon, "free": self.epsilon}[
            self.inner_loop]

    @property
    def attack_steps(self) -> int:
        """Gradient steps of the inner attack before the update (free: 0, its steps are the replays)."""
        return {"pgd": self.steps, "fgsm": 1, "free": 0}[self.inner_loop]

    @property
    def replays(self) -> int:
        """Optimiser steps per batch."""
        return self.steps if self.inner_loop == "free" else 1


# --- the inner maximisation --------------------------------------------------------------------


@dataclass(frozen=True)
class InnerGoals:
    """Per image of a batch: the inner loss it is attacked with (``kinds``), and the parts K's
    hinges push it to show (``add``, (N, 44) 0/1) and to lose (``remove``)."""

    kinds: tuple[str, ...]
    add: torch.Tensor
    remove: torch.Tensor


@contextmanager
def training_losses_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in train mode (it returns its losses) with BatchNorm in eval mode, and no mask
    branch, inside the block; the mode it had is restored afterwards."""
    training = model.training
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    boxes_only = getattr(getattr(model, "roi_heads", None), "boxes_only", nullcontext)
    try:
        with boxes_only():
            yield
    finally:
        model.train(training)


class InnerAttack:
    """The inner maximisation of K's adversarial training (the recipe's loop, losses and budget).

    ``perturb(model, images, targets, goals, generator)`` returns the adversarial images (a list,
    as K takes images of any size), each in [0, 1] and in the epsilon ball around its clean one;
    ``objective`` is what it ascends. ``score_threshold`` is K's detection threshold, which K's
    hinges mirror (``PartView``).
    """

    def __init__(self, recipe: PartExtractorAdversarialTraining, *, score_threshold: float) -> None:
        self.recipe = recipe
        self.score_threshold = score_threshold
        self.epsilon = to_unit_scale(recipe.epsilon)
        self.step = to_unit_scale(recipe.step)

    def goals(self, targets: list[dict[str, torch.Tensor]] | None, count: int, *, batch: int,
              generator: torch.Generator) -> InnerGoals:
        """The inner loss of each of ``count`` images (image i of batch b: loss (b + i) mod L) and
        the hinges' parts; ``targets`` (the annotations) choose the transplant targets."""
        losses = self.recipe.losses
        kinds = tuple(losses[(batch + row) % len(losses)] for row in range(count))
        add, remove = torch.zeros(count, len(PARTS)), torch.zeros(count, len(PARTS))
        for row, kind in enumerate(kinds):
            if kind == "vanish":
                remove[row] = 1.0
            elif kind == "transplant":
                if targets is None:
                    raise ValueError("the transplant loss needs the images' annotations to choose its targets")
                goal = CLASS_MATRIX[self.transplant_target(targets[row]["labels"], generator)]
                add[row], remove[row] = goal, 1.0 - goal
        return InnerGoals(kinds, add, remove)

    def transplant_target(self, labels: torch.Tensor, generator: torch.Generator) -> int:
        """A class (row of ``CLASS_MATRIX``) other than those the annotated parts (K's labels,
        part index + 1) match best by set Jaccard, as the recipe's ``transplant_target`` says."""
        annotated = torch.zeros(1, len(PARTS))
        annotated[0, labels.cpu() - 1] = 1.0
        similarity = soft_jaccard(annotated, CLASS_MATRIX)[0]
        candidates = (similarity < similarity.max()).nonzero().flatten()
        if len(candidates) == 0:  # no parts annotated: every class is another class
            candidates = torch.arange(len(CLASS_MATRIX))
        if self.recipe.transplant_target == "random":
            return int(candidates[torch.randint(len(candidates), (), generator=generator)])
        pick = similarity[candidates].argmax() if self.recipe.transplant_target == "nearest" \
            else similarity[candidates].argmin()
        return int(candidates[pick])

    def objective(self, model: nn.Module, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None,
                  goals: InnerGoals) -> torch.Tensor:
        """What the attack ascends, summed over the images: K's training losses (of the images
        attacked with ``training``; BatchNorm in eval mode) minus K's hinge losses (of the others:
        0 once the attacker's goal for K holds, with margin), each image through its own losses."""
        total = images[0].new_zeros(())
        trained = [row for row, kind in enumerate(goals.kinds) if kind == "training"]
        viewed = [row for row, kind in enumerate(goals.kinds) if kind != "training"]
        if trained:
            if targets is None:
                raise ValueError("the training loss needs the images' annotations")
            with training_losses_mode(model):
                losses = model([images[row] for row in trained], [targets[row] for row in trained])
            # torchvision averages over the batch: times its size, a sum over images as the hinges are
            total = total + len(trained) * sum(losses[name] for name in TRAINING_TERMS)
        if viewed:
            training = model.training
            model.eval()
            try:
                view = PartView(model, score_threshold=self.score_threshold)
                outputs = view([images[row] for row in viewed])
            finally:
                model.train(training)
            rows = torch.tensor(viewed)
            hinge = view.hinge_loss(outputs, add=goals.add[rows].to(total.device),
                                    remove=goals.remove[rows].to(total.device))
            total = total - hinge.sum()
        return total

    def start(self, images: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
        """A random point of the epsilon ball around each image (in [0, 1])."""
        return [LINF.project(image + LINF.random_offset(image.shape, self.epsilon, generator).to(image), image,
                             self.epsilon) for image in images]

    def ascend(self, x: list[torch.Tensor], gradients: list[torch.Tensor] | tuple[torch.Tensor, ...],
               images: list[torch.Tensor]) -> list[torch.Tensor]:
        """One signed step of the recipe's size, projected onto the ball and [0, 1]."""
        return [LINF.project(point.detach() + self.step * gradient.sign(), image, self.epsilon)
                for point, gradient, image in zip(x, gradients, images, strict=True)]

    def perturb(self, model: nn.Module, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None,
                goals: InnerGoals, *, generator: torch.Generator, steps: int | None = None) -> list[torch.Tensor]:
        """The adversarial images: a random start, then ``steps`` (the recipe's attack steps)
        signed gradient steps on ``objective``; ``model``'s parameters are frozen meanwhile and
        its mode restored afterwards."""
        images = [image.detach() for image in images]
        x = self.start(images, generator)
        with frozen_eval(model):
            for _ in range(self.recipe.attack_steps if steps is None else steps):
                leaves = [point.requires_grad_() for point in x]
                gradients = torch.autograd.grad(self.objective(model, leaves, targets, goals), leaves)
                x = self.ascend(leaves, gradients, images)
        return [point.detach() for point in x]


def part_consistency(model: MaskRCNN, clean: list[torch.Tensor], adversarial: list[torch.Tensor], *,
                     score_threshold: float) -> torch.Tensor:
    """TRADES's consistency for K: the mean over the clean image's proposals of KL(p || p~), p
    and p~ the box-head class probabilities of the clean and the adversarial image on the same
    boxes (the clean image's proposals), in eval mode (the deployed K's decisions), with the
    graph of both."""
    training = model.training
    model.eval()
    try:
        view = PartView(model, score_threshold=score_threshold)
        clean_outputs = view(clean)
        # the adversarial image's own proposals come first, the clean image's are appended last
        adversarial_outputs = view(adversarial, extra_proposals=clean_outputs.proposals)
    finally:
        model.train(training)
    divergences = []
    for row, proposals in enumerate(clean_outputs.proposals):
        count, total = len(proposals), int(adversarial_outputs.mask[row].sum())
        log_p = clean_outputs.logits[row, :count].log_softmax(-1)
        log_q = adversarial_outputs.logits[row, total - count:total].log_softmax(-1)
        divergences.append((log_p.exp() * (log_p - log_q)).sum(-1))
    return torch.cat(divergences).mean() if divergences else clean_outputs.logits.new_zeros(())


# --- one batch of adversarial training, and its validation ---------------------------------------


class AdversarialStep(TrainingStep):
    """One batch of K's adversarial training as ``recipe`` says (``train_part_extractor``'s
    ``step``): the inner attack (random starts drawn from ``seed`` and the batch's number, so a
    resumed training draws the same), then the update; free replays yield one update per replay
    and move the perturbation by the sign of its gradient in between."""

    title = "robust K"

    def __init__(self, recipe: PartExtractorAdversarialTraining, *, score_threshold: float, seed: int) -> None:
        self.recipe = recipe
        self.attack = InnerAttack(recipe, score_threshold=score_threshold)
        self.score_threshold = score_threshold
        self.seed = seed
        self.replays = recipe.replays
        self.score = "val_reclassify_accuracy" if recipe.keep == "reclassify" else None

    def settings(self) -> dict[str, object]:
        return {"adversarial": recipe_record(self.recipe), "score_threshold": self.score_threshold}

    def generator(self, batch: int) -> torch.Generator:
        return torch.Generator().manual_seed(int(stable_hash([self.seed, "k-adversarial", batch], length=15), 16))

    def losses(self, network: nn.Module, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]], *,
               batch: int) -> Iterator[dict[str, torch.Tensor]]:
        generator = self.generator(batch)
        model = loop.unwrap(network)
        if self.recipe.inner_loop != "free":
            goals = self.attack.goals(targets, len(images), batch=batch, generator=generator)
            adversarial = self.attack.perturb(model, images, targets, goals, generator=generator)
            yield self.update_losses(network, adversarial, images, targets)
            return
        x = self.attack.start(images, generator)
        for _ in range(self.recipe.steps):
            leaves = [point.detach().requires_grad_() for point in x]
            yield self.update_losses(network, leaves, images, targets)
            # the loop has run the update's backward pass: its gradient reached the images too
            x = self.attack.ascend(leaves, [leaf.grad for leaf in leaves], images)

    def update_losses(self, network: nn.Module, adversarial: list[torch.Tensor], clean: list[torch.Tensor],
                      targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The update's weighted terms (their sum is minimised): K's losses on the adversarial
        images x (1 - w), on the clean ones (``clean_loss``) x w, and the consistency x beta."""
        weight, terms = self.recipe.clean_weight, {}
        if weight < 1:
            terms = {name: (1 - weight) * value for name, value in network(adversarial, targets).items()}
        if weight > 0:
            terms["clean_loss"] = weight * sum(network(clean, targets).values())
        if self.recipe.trades > 0:
            terms["consistency"] = self.recipe.trades * part_consistency(
                loop.unwrap(network), clean, adversarial, score_threshold=self.score_threshold)
        return terms

    def validate(self, model: nn.Module, val_set: PartSegmentationDataset, *, device: torch.device,
                 score_threshold: float) -> dict[str, float]:
        if self.recipe.val_images == 0:
            return {}
        figures = vanish_part_recall(model, val_set, epsilon=self.recipe.epsilon, steps=self.recipe.val_steps,
                                     images=self.recipe.val_images, score_threshold=score_threshold, device=device)
        figures.update(reclassify_accuracy(model, val_set, epsilon=self.recipe.epsilon, steps=self.recipe.val_steps,
                                           images=self.recipe.val_images, score_threshold=score_threshold,
                                           device=device))
        return figures


def _attacked_images(model: nn.Module, dataset: PartSegmentationDataset, recipe: PartExtractorAdversarialTraining, *,
                     count: int, score_threshold: float, device: torch.device | str, batch_size: int,
                     seed: int) -> list[torch.Tensor]:
    """The first ``count`` images of ``dataset`` attacked by ``recipe``'s inner attack (a random
    start drawn from ``seed``, then its steps), rounded to 8 bits inside the ball as the
    evaluation's attacks are."""
    attack = InnerAttack(recipe, score_threshold=score_threshold)
    generator = torch.Generator().manual_seed(seed)
    attacked = []
    for start in range(0, count, batch_size):
        indices = range(start, min(start + batch_size, count))
        clean = [dataset.image(index).to(device) for index in indices]
        targets = [{"labels": torch.as_tensor(dataset.images[index].part_indices() + 1)} for index in indices]
        goals = attack.goals(targets, len(clean), batch=0, generator=generator)
        for point, image in zip(attack.perturb(model, clean, targets, goals, generator=generator), clean, strict=True):
            attacked.append(LINF.quantize(point[None], image[None], attack.epsilon)[0])
    return attacked


def _extracted_parts(model: nn.Module, images: list[torch.Tensor], *, score_threshold: float,
                     device: torch.device | str) -> torch.Tensor:
    training = model.training
    parts = PartExtractor(model, score_threshold=score_threshold, device=device).extract(images).parts
    model.train(training)
    return torch.as_tensor(parts, dtype=torch.float32)


def vanish_part_recall(model: nn.Module, dataset: PartSegmentationDataset, *, epsilon: float, steps: int,
                       images: int, score_threshold: float, device: torch.device | str = "cpu",
                       batch_size: int = 16, seed: int = 0) -> dict[str, float]:
    """A cheap robustness figure for K's training history: K's part recall (against the
    annotations) on the first ``images`` images of ``dataset`` under a ``steps``-step PGD vanish
    attack at ``epsilon`` (0-255) from a random start drawn from ``seed``, its images rounded to
    8 bits inside the ball as the evaluation's are."""
    count = min(images, len(dataset))
    recipe = PartExtractorAdversarialTraining(epsilon=epsilon, inner_loop="pgd", steps=steps, losses=("vanish",))
    attacked = _attacked_images(model, dataset, recipe, count=count, score_threshold=score_threshold, device=device,
                                batch_size=batch_size, seed=seed)
    parts = _extracted_parts(model, attacked, score_threshold=score_threshold, device=device).numpy().astype(bool)
    figures = part_set_precision_recall(parts, _actual_parts(dataset)[:count])
    return {"val_vanish_part_recall": figures["part_recall"]}


def reclassified_correctly(parts: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """Per image, whether UnMask's re-classification from ``parts`` (N, 44) 0/1 — the first class
    of ``CLASS_MATRIX`` whose parts match best by Jaccard — is a class that the annotated parts
    ``annotated`` (N, 44) 0/1 match best (K serves every class set, so every class with parts
    competes; ties among the annotation's best classes all count as right)."""
    predicted = soft_jaccard(parts.float(), CLASS_MATRIX).argmax(-1)
    reference = soft_jaccard(annotated.float(), CLASS_MATRIX)
    best = reference == reference.max(-1, keepdim=True).values
    return best.gather(1, predicted[:, None])[:, 0]


def reclassify_accuracy(model: nn.Module, dataset: PartSegmentationDataset, *, epsilon: float, steps: int,
                        images: int, score_threshold: float, device: torch.device | str = "cpu",
                        batch_size: int = 16, seed: int = 0) -> dict[str, float]:
    """The figure a robust K is for, cheaply, for K's training history: on the first ``images``
    images of ``dataset``, the share whose re-classification from K's parts is right
    (``reclassified_correctly``), clean (``val_clean_reclassify_accuracy``) and under a
    ``steps``-step PGD attack at ``epsilon`` (0-255; random start from ``seed``, 8-bit images)
    with the transplant hinges towards the nearest other class, the target the white-box
    attacks rank first (``val_reclassify_accuracy``). Every class with parts is a candidate,
    not only a class set's: a lower bound on a class set's figure under this attack, for
    choosing an epoch, not a result (the evaluation's attacks give those)."""
    count = min(images, len(dataset))
    annotated = torch.as_tensor(_actual_parts(dataset)[:count])
    clean = [dataset.image(index) for index in range(count)]
    clean_parts = _extracted_parts(model, clean, score_threshold=score_threshold, device=device)
    recipe = PartExtractorAdversarialTraining(epsilon=epsilon, inner_loop="pgd", steps=steps, losses=("transplant",),
                                              transplant_target="nearest")
    attacked = _attacked_images(model, dataset, recipe, count=count, score_threshold=score_threshold, device=device,
                                batch_size=batch_size, seed=seed)
    attacked_parts = _extracted_parts(model, attacked, score_threshold=score_threshold, device=device)
    return {"val_clean_reclassify_accuracy": float(reclassified_correctly(clean_parts, annotated).float().mean()),
            "val_reclassify_accuracy": float(reclassified_correctly(attacked_parts, annotated).float().mean())}


# --- the robust K in the model cache ---------------------------------------------------------------


def robust_training(spec: PartExtractorSpec, recipe: PartExtractorAdversarialTraining) -> PartExtractorTraining:
    """The fine-tune's optimiser settings: the clean K's, with the recipe's epochs, lr and warm-up."""
    return dataclasses.replace(spec.training, epochs=recipe.epochs, lr=recipe.lr, warmup_steps=recipe.warmup_steps)


def recipe_record(recipe: PartExtractorAdversarialTraining) -> dict[str, object]:
    """``recipe`` as recorded in a robust K's identity, resume settings and weights' metadata:
    its fields, ``keep`` left out at its default ("last") so that the Ks trained before it
    existed keep their folders and resume."""
    record = dataclasses.asdict(recipe)
    if recipe.keep == "last":
        del record["keep"]
    return record


def robust_identity(spec: PartExtractorSpec, recipe: PartExtractorAdversarialTraining, *, start_weights: str,
                    data_fingerprint: str) -> dict[str, object]:
    """What determines a robust K: the clean K it starts from (its weights' digest), the recipe,
    the fine-tune's optimiser settings, K's score threshold (its hinges mirror it), the
    architecture and the training data."""
    return {"start_weights": start_weights, "adversarial": recipe_record(recipe),
            "training": dataclasses.asdict(robust_training(spec, recipe)),
            "score_threshold": spec.rule.score_threshold, "architecture": spec.architecture,
            "image_size": spec.image_size, "data": data_fingerprint}


def robust_part_extractor_cache_key(spec: PartExtractorSpec, recipe: PartExtractorAdversarialTraining, *,
                                    start_weights: str, data_fingerprint: str) -> str:
    """Folder name of a robust K: ``k-adv-<hash of robust_identity>``."""
    return f"k-adv-{stable_hash(robust_identity(spec, recipe, start_weights=start_weights, data_fingerprint=data_fingerprint))}"


def train_or_load_robust_part_extractor(
    spec: PartExtractorSpec,
    recipe: PartExtractorAdversarialTraining,
    *,
    start: Mapping[str, torch.Tensor],
    train_set: Callable[[], Dataset],
    val_set: Callable[[], PartSegmentationDataset | None],
    data_fingerprint: str,
    cache: loop.ModelCache,
) -> tuple[MaskRCNN, Path]:
    """The robust K: ``spec``'s K with the clean weights ``start``, fine-tuned as ``recipe`` says
    on ``train_set()`` (data with ``data_fingerprint``) in the cache's folder
    ``robust_part_extractor_cache_key`` (resumed when interrupted), or loaded from there when
    finished; returns the model and the folder. Its ``weights.pt`` records, beside what every
    K's does, the recipe and the digest of the clean weights it started from."""
    model = dataclasses.replace(spec, pretrained=False).build()
    loop.load_model_weights(model, dict(start), source="the clean K's weights")
    start_weights = tensors_digest(start)
    identity = robust_identity(spec, recipe, start_weights=start_weights, data_fingerprint=data_fingerprint)
    folder = cache.folder(robust_part_extractor_cache_key(spec, recipe, start_weights=start_weights,
                                                          data_fingerprint=data_fingerprint))
    runtime = cache.runtime
    finished = loop.describe_cache(folder, identity, epochs=recipe.epochs,
                                   what=f"robust K ({spec.architecture}, adversarial fine-tune of K)", log=runtime.log)
    if finished < recipe.epochs:
        train_part_extractor(model, train_set(), val_set(), robust_training(spec, recipe), device=runtime.device,
                             checkpoint_dir=folder, workers=runtime.workers, score_threshold=spec.rule.score_threshold,
                             progress=runtime.verbosity > 0,
                             metadata={**spec.metadata, "adversarial": recipe_record(recipe),
                                       "start_weights": start_weights},
                             step=AdversarialStep(recipe, score_threshold=spec.rule.score_threshold,
                                                  seed=spec.training.seed))
    load_part_extractor_weights(model, folder / loop.WEIGHTS_FILE, spec, log=runtime.log)
    return model, folder


__all__ = [
    "INNER_LOOPS", "INNER_LOSSES", "KEPT_EPOCHS", "TRANSPLANT_TARGETS", "AdversarialStep", "InnerAttack",
    "InnerGoals", "PartExtractorAdversarialTraining", "part_consistency", "reclassified_correctly",
    "reclassify_accuracy", "recipe_record", "robust_part_extractor_cache_key", "train_or_load_robust_part_extractor",
    "vanish_part_recall",
]

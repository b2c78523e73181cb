"""A label-only (decision-based) attack on the whole hard pipeline, against gradient masking."""

from __future__ import annotations

import math
import time
from typing import Any

import eagerpy as ep
import foolbox as fb
import torch
from torch import nn

from unmask.attacks.adaptive.engine import AdaptiveAttack, AdaptiveResult, empty_verdict, image_seed
from unmask.attacks.adaptive.target import DefenseTarget, Verdict
from unmask.attacks.base import AttackKind
from unmask.attacks.norms import L2, LINF, Norm, to_8bit
from unmask.constants import GREY_LEVELS


class PipelineDecision(nn.Module):
    """The hard pipeline as a foolbox model: images -> (N, 2) [M's class, flagged], judged on
    8-bit versions of the images (round(x * 255) / 255). Counts its queries."""

    def __init__(self, target: DefenseTarget) -> None:
        super().__init__()
        self.target = target
        self.queries = 0
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # foolbox wants a device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.queries += len(images)
        verdict = self.target.judge(to_8bit(images.detach()))
        return torch.stack([verdict.m_prediction.double(), verdict.flagged.double()], 1).to(images)


class EvadesUnMask(fb.criteria.Criterion):
    """Adversarial: M's class differs from the label and UnMask does not flag the image
    (outputs of ``PipelineDecision``)."""

    def __init__(self, labels: Any) -> None:
        super().__init__()
        self.labels = ep.astensor(labels)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.labels!r})"

    def __call__(self, perturbed: Any, outputs: Any) -> Any:
        outputs_, restore_type = ep.astensor_(outputs)
        is_adv = ep.logical_and(outputs_[:, 0] != self.labels.astype(outputs_.dtype), outputs_[:, 1] == 0)
        return restore_type(is_adv)


def _distance(a: torch.Tensor, b: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Per image, the distance on the 0-255 scale."""
    return norm.size((a - b) * GREY_LEVELS)


class HopSkipJump(AdaptiveAttack):
    """HopSkipJump on the hard pipeline's decisions (Chen et al. 2020): the gradient-masking check.

    HopSkipJump (Chen, Jordan and Wainwright 2020, "HopSkipJumpAttack: A Query-Efficient
    Decision-Based Attack"; foolbox's implementation) on the full hard pipeline: a label-only
    check against gradient masking (Tramer et al. 2020; Sitawarin et al. 2023). It must not beat
    the gradient attacks.

    Adversarial = M wrong AND not flagged, from the judge on 8-bit images. Each image starts at
    the nearest (in the attack's norm) image of the batch that the pipeline already gets "wrong"
    for it (another class's clean image M assigns to its own class, not flagged), then
    HopSkipJump minimises the distance (``hsj_steps`` iterations, ``hsj_initial_evals`` to
    ``hsj_max_evals`` gradient-estimation queries). One image at a time with its own RNG seed
    (``options.seed``, image index), so results do not depend on batching. The found adversarial
    is projected onto the epsilon ball and quantised; ``AdaptiveResult.distances`` keeps its
    distance before projection, so one run answers every epsilon (success at epsilon: distance
    <= epsilon). Norm: L2 (``hsj_l2``) or L-inf (``hsj_linf``).
    """

    family = "hsj"
    norms = (L2, LINF)
    kind = AttackKind.LABEL_ONLY

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> AdaptiveResult:
        started = time.perf_counter()
        if len(images) == 0:
            return AdaptiveResult(images.detach().float().clone(), torch.zeros(0, dtype=torch.int64),
                                  torch.zeros(0, dtype=torch.bool), empty_verdict(), {"queries": 0.0},
                                  distances=torch.zeros(0, dtype=torch.float64))
        device = self.device
        clean = images.detach().to(device, torch.float32)
        labels_cpu = labels.cpu().to(torch.int64)
        model = PipelineDecision(self.target).to(device).eval()
        foolbox_model = fb.PyTorchModel(model, bounds=(0, 1), device=device)
        attack = fb.attacks.HopSkipJumpAttack(
            steps=self.options.hsj_steps, initial_gradient_eval_steps=self.options.hsj_initial_evals,
            max_gradient_eval_steps=self.options.hsj_max_evals, constraint=self.norm.name)
        pool = self.target.judge(clean)
        found = clean.clone()
        distances = torch.full((len(clean),), math.inf, dtype=torch.float64)
        for row in range(len(clean)):
            label = int(labels_cpu[row])
            candidates = ((pool.m_prediction != label) & ~pool.flagged).nonzero().flatten()
            if len(candidates) == 0:
                continue
            gaps = _distance(clean[candidates], clean[row:row + 1], self.norm)
            start = clean[candidates[gaps.argmin()]].unsqueeze(0)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(image_seed(self.options.seed, int(indices[row]), ("hsj",)))
                adversarial = attack.run(foolbox_model, clean[row:row + 1], EvadesUnMask(labels_cpu[row:row + 1].to(device)),
                                         starting_points=start)
            adversarial = to_8bit(adversarial.detach())
            found[row] = adversarial[0]
            distances[row] = float(_distance(adversarial, clean[row:row + 1], self.norm)[0])
        final = self.norm.quantize(self.norm.project(found, clean, self.epsilon), clean, self.epsilon)
        verdict: Verdict = self.target.judge(final)
        stats = {"queries": float(model.queries), "seconds": time.perf_counter() - started}
        return AdaptiveResult(final.to(images.device), torch.full((len(clean),), -1, dtype=torch.int64),
                              verdict.evades(labels_cpu), verdict, stats, distances=distances)

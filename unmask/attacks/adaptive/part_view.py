"""A differentiable view of K: per-proposal class probabilities, soft part presence, and hinge
losses that mirror K's detection rule.

K (``unmask.models.part_extractor``) reports, per RPN proposal, only its most probable class
among 45 (0 = background, part p = label p + 1), kept when that class is a part and its
probability is at least K's score threshold t; then small-box removal, per-part NMS and the top
100. NMS only removes duplicates of a part that stays present, and the synthetic-world Ks have at most 100
proposals per image, so a part is present exactly when

    some proposal r has argmax_c z_rc = p + 1  and  q_rp >= t   (q = softmax(z), z = logits)

(and r's box for p is not degenerate, which ``PartOutputs.valid`` carries). ``PartView`` runs
K's eval-mode modules (transform -> backbone -> RPN -> RoIAlign -> box head -> predictor), not
its training losses, and returns the logits of the proposals of the *current* image (torchvision
detaches proposals from the image: gradients reach it through the RoIAlign features), optionally
joined by extra proposals (e.g. the clean image's, as DAG does).

Soft presence. With the argmax margin m_rp = z_rp - max_{c != p} z_rc and t_eff = max(t, 1/45)
(an argmax class always has q >= 1/45, so t_eff gives the same rule as t), each proposal scores

    s_rp = q_rp                               if m_rp >= 0   (p is r's argmax)
    s_rp = min(q_rp, t_eff * exp(m_rp / tau))  otherwise      (< t_eff: cannot detect p)

and ``presence`` s_p = max_r s_rp, with the gradient of the smooth maximum tau*logsumexp(s/tau).
So ``presence >= t_eff`` holds exactly when K detects p (``hard_presence``). ``indicator``
sigma((s_p - t_eff) / temperature) is a soft 0/1 presence for the soft Jaccard.

Hinges (Tramer et al. 2020: stop pushing once satisfied), in log units with margin mu, kappa:
- add p: ONE proposal with log q_rp >= log t_add and m_rp >= kappa
  (t_add = min(t_eff e^mu, 0.95)): relu(-max_r min(log q_rp - log t_add, m_rp - kappa));
- remove p: EVERY proposal with log q_rp <= log t_remove or m_rp <= -kappa
  (t_remove = t_eff e^-mu): sum_r relu(min(log q_rp - log t_remove, m_rp + kappa)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import clip_boxes_to_image, roi_align

from unmask.parts import PARTS

NUM_LABELS = len(PARTS) + 1
MIN_BOX_SIZE = 1e-2
"""K's small-box rule (``remove_small_boxes(min_size=1e-2)``)."""
_NEG = -1e4


@dataclass
class PartOutputs:
    """K's box-head outputs for N images, padded to R proposals per image.

    - ``logits`` (N, R, 45): class logits (padding rows are 0; see ``mask``).
    - ``mask`` (N, R) bool: a real proposal (not padding).
    - ``valid`` (N, R) bool: a real proposal whose box for its argmax class is not degenerate.
    - ``proposals``: the proposals used, per image, in K's transformed coordinates (detached).
    """

    logits: torch.Tensor
    mask: torch.Tensor
    valid: torch.Tensor
    proposals: list[torch.Tensor]

    @property
    def log_probabilities(self) -> torch.Tensor:
        return self.logits.log_softmax(-1)

    def part_margins(self) -> torch.Tensor:
        """(N, R, 44): m_rp = z_rp - max_{c != p} z_rc (positive: p is the argmax)."""
        z = self.logits
        top2 = z.topk(2, dim=-1).values
        parts = z[..., 1:]
        best_other = torch.where(parts >= top2[..., :1], top2[..., 1:2], top2[..., :1])
        return parts - best_other


class PartView:
    """The differentiable K: ``view(images)`` -> ``PartOutputs``; presence and losses on them.

    Args:
        model: K, a torchvision ``MaskRCNN`` (run in eval mode; its mode is not changed here,
            call ``model.eval()`` first).
        score_threshold: K's detection score threshold t (0.0 as the original, 0.5 default K).
        tau: temperature of the smooth maximum over proposals and of the off-argmax decay.
        temperature: of ``indicator`` (soft 0/1 presence).
        margin: mu, log-probability margin of the hinges.
        kappa: argmax logit margin of the hinges.
    """

    def __init__(self, model: MaskRCNN, *, score_threshold: float, tau: float = 0.05, temperature: float = 0.05,
                 margin: float = 0.3, kappa: float = 0.5) -> None:
        if not 0.0 <= score_threshold < 1.0:
            raise ValueError(f"score_threshold must lie in [0, 1), got {score_threshold}")
        self.model = model
        self.threshold = score_threshold
        self.effective_threshold = max(score_threshold, 1.0 / NUM_LABELS)
        self.tau = tau
        self.temperature = temperature
        self.margin = margin
        self.kappa = kappa
        self.log_add = min(math.log(self.effective_threshold) + margin, math.log(0.95))
        self.log_remove = math.log(self.effective_threshold) - margin

    # --- forward ------------------------------------------------------------------------------

    def __call__(self, images: torch.Tensor | Sequence[torch.Tensor],
                 extra_proposals: list[torch.Tensor] | None = None) -> PartOutputs:
        """Box-head logits of ``images`` (N, 3, H, W) in [0, 1], or a sequence of (3, H, W) (may
        require grad)."""
        model = self.model
        batch, image_sizes = self._transformed(images)
        features = model.backbone(batch)
        with torch.no_grad():  # torchvision detaches proposals from the image anyway
            proposals, _ = model.rpn(ImageList(batch, image_sizes), features)
        if extra_proposals is not None:
            if len(extra_proposals) != len(proposals):
                raise ValueError(f"extra_proposals: expected {len(proposals)} tensors, got {len(extra_proposals)}")
            proposals = [torch.cat([p, e.to(p)]) for p, e in zip(proposals, extra_proposals, strict=True)]
        heads = model.roi_heads
        pooled, order = self._pooled_by_level(features, proposals, image_sizes)
        box_features = heads.box_head(pooled)
        class_logits, box_regression = heads.box_predictor(box_features)
        if order is not None:  # back to K's proposal order (a small gather of logits, not of RoI features)
            restore = torch.empty_like(order)
            restore[order] = torch.arange(len(order), device=order.device)
            class_logits, box_regression = class_logits[restore], box_regression[restore]
        counts = [len(p) for p in proposals]
        width = max(counts, default=0)
        n = len(images)
        # one padded copy (a per-image slice assignment would clone the whole gradient per image)
        logits = (pad_sequence(list(class_logits.split(counts)), batch_first=True) if n
                  else class_logits.new_zeros(0, 0, NUM_LABELS))
        mask = torch.zeros(n, width, dtype=torch.bool, device=class_logits.device)
        valid = torch.zeros_like(mask)
        with torch.no_grad():
            labels = class_logits.argmax(-1)
            boxes = heads.box_coder.decode(box_regression.detach(), proposals)
            boxes = boxes[torch.arange(len(labels), device=labels.device), labels]
        for i, (k, chunk_boxes, shape) in enumerate(zip(counts, boxes.split(counts), image_sizes, strict=True)):
            mask[i, :k] = True
            clipped = clip_boxes_to_image(chunk_boxes, shape)
            wh = clipped[:, 2:] - clipped[:, :2]
            valid[i, :k] = (wh >= MIN_BOX_SIZE).all(-1)
        return PartOutputs(logits, mask, valid, proposals)

    def _transformed(self, images: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """K's input transform on a batch: the normalised images, padded, and their sizes.

        torchvision's ``GeneralizedRCNNTransform`` normalises, resizes and pads one image at a
        time and copies each into the batch; differentiated, each of those N slice copies
        clones the whole (N, 3, H, W) gradient, O(N^2) copies that were a third of an attack
        step at batch 32. When the transform would neither resize nor pad (the synthetic
        world's Ks take images at their own size, a multiple of 32), the batched
        normalisation below gives the same values, bit for bit; otherwise torchvision's
        transform runs as it is.
        """
        transform = self.model.transform
        sizes = {tuple(image.shape[-2:]) for image in images}
        if len(sizes) != 1 or not self._identity_resize(*next(iter(sizes))):
            image_list, _ = transform(list(images))
            return image_list.tensors, image_list.image_sizes
        if not isinstance(images, torch.Tensor):  # a list of images of one size (K's training batches)
            images = torch.stack(list(images))
        height, width = images.shape[-2:]
        mean = torch.as_tensor(transform.image_mean, dtype=images.dtype, device=images.device)
        std = torch.as_tensor(transform.image_std, dtype=images.dtype, device=images.device)
        return (images - mean[:, None, None]) / std[:, None, None], [(height, width)] * len(images)

    def _identity_resize(self, height: int, width: int) -> bool:
        """Whether K's transform leaves an image of this size unresized and unpadded (eval mode)."""
        transform = self.model.transform
        if transform.training or transform.fixed_size is not None or len(transform.min_size) != 1:
            return False
        divisible = transform.size_divisible
        if height % divisible or width % divisible:
            return False
        # torchvision's scale: min(min_size / shorter side, max_size / longer side), in float32
        scale = min(float(torch.tensor(float(transform.min_size[-1])) / torch.tensor(float(min(height, width)))),
                    float(torch.tensor(float(transform.max_size)) / torch.tensor(float(max(height, width)))))
        return scale == 1.0

    def _pooled_by_level(self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor],
                         image_sizes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """K's box RoIAlign features of every proposal, grouped by pyramid level, and the order
        that grouped them (None: K's own order).

        ``MultiScaleRoIAlign`` scatters each level's RoIs into a zero tensor in proposal order;
        differentiated, that scatter and its gather cost as much as the RoIAlign backward
        itself. The box head treats each RoI alone, so the RoIs stay grouped by level here and
        only the head's small outputs are put back in order (``__call__``). The maps are made
        contiguous: RoIAlign on channels-last maps (the synthetic-world Ks' layout) returns channels-last
        RoIs, which make the box head's forward and backward 2x slower (same values).
        """
        pool = self.model.roi_heads.box_roi_pool
        maps = [features[name].contiguous() for name in pool.featmap_names]
        if pool.scales is None or pool.map_levels is None or len(maps) == 1:
            pooled = pool(dict(zip(pool.featmap_names, maps, strict=True)), proposals, image_sizes)
            return pooled, None
        rois = torch.cat([torch.cat([torch.full_like(boxes[:, :1], i), boxes], dim=1)
                          for i, boxes in enumerate(proposals)])
        levels = pool.map_levels(proposals)
        order = torch.argsort(levels, stable=True)
        pieces = []
        for level, (feature_map, scale) in enumerate(zip(maps, pool.scales, strict=True)):
            chosen = order[levels[order] == level]
            pieces.append(roi_align(feature_map, rois[chosen], output_size=pool.output_size,
                                    spatial_scale=scale, sampling_ratio=pool.sampling_ratio))
        return torch.cat(pieces), order

    # --- presence -----------------------------------------------------------------------------

    def proposal_scores(self, outputs: PartOutputs) -> torch.Tensor:
        """(N, R, 44) s_rp; padding and degenerate boxes score 0."""
        log_q = outputs.log_probabilities[..., 1:]
        q = log_q.exp()
        m = outputs.part_margins()
        off = torch.minimum(q, self.effective_threshold * torch.exp(m.clamp(max=0) / self.tau))
        s = torch.where(m >= 0, q, off)
        return s * outputs.valid.unsqueeze(-1)

    def presence(self, outputs: PartOutputs) -> torch.Tensor:
        """(N, 44) soft presence s_p in [0, 1]: value max_r s_rp, gradient of a smooth maximum."""
        s = self.proposal_scores(outputs)
        if s.shape[1] == 0:
            return s.new_zeros(s.shape[0], len(PARTS))
        weights_logits = (s / self.tau).masked_fill(~outputs.valid.unsqueeze(-1), _NEG)
        smooth = self.tau * torch.logsumexp(weights_logits, dim=1)
        hard = s.amax(dim=1)
        return hard.detach() + smooth - smooth.detach()

    def hard_presence(self, outputs: PartOutputs) -> torch.Tensor:
        """(N, 44) bool: K's detection rule on these outputs (what ``PartExtractor`` reports)."""
        with torch.no_grad():
            q = outputs.logits.softmax(-1)
            best, labels = q.max(-1)
            keep = outputs.valid & (labels > 0) & (best >= self.threshold)
            one_hot = torch.nn.functional.one_hot(labels, NUM_LABELS).bool() & keep.unsqueeze(-1)
            return one_hot.any(dim=1)[:, 1:]

    def indicator(self, presence: torch.Tensor) -> torch.Tensor:
        """Soft 0/1 presence: sigmoid((s_p - t_eff) / temperature)."""
        return torch.sigmoid((presence - self.effective_threshold) / self.temperature)

    # --- hinge losses -------------------------------------------------------------------------

    def _add_margins_per_proposal(self, outputs: PartOutputs) -> torch.Tensor:
        """(N, R, 44): min(log q_rp - log t_add, m_rp - kappa); ``_NEG`` for invalid proposals."""
        log_q = outputs.log_probabilities[..., 1:]
        a = torch.minimum(log_q - self.log_add, outputs.part_margins() - self.kappa)
        return a.masked_fill(~outputs.valid.unsqueeze(-1), _NEG)

    def add_margins(self, outputs: PartOutputs) -> torch.Tensor:
        """(N, 44): max_r min(log q_rp - log t_add, m_rp - kappa); >= 0 when p is detected with margin."""
        a = self._add_margins_per_proposal(outputs)
        if a.shape[1] == 0:
            return a.new_full((a.shape[0], len(PARTS)), _NEG)
        return a.amax(dim=1)

    def remove_violations(self, outputs: PartOutputs) -> torch.Tensor:
        """(N, R, 44): min(log q_rp - log t_remove, m_rp + kappa); <= 0 when r cannot report p."""
        log_q = outputs.log_probabilities[..., 1:]
        b = torch.minimum(log_q - self.log_remove, outputs.part_margins() + self.kappa)
        return b.masked_fill(~outputs.valid.unsqueeze(-1), _NEG)

    def distinct_add_margins(self, outputs: PartOutputs, add: torch.Tensor) -> torch.Tensor:
        """(N, 44): for each part in ``add`` (N, 44 0/1), the add margin of a proposal of its own.

        A proposal reports one class, so two parts cannot both be added through it; but
        ``add_margins`` takes each part's best proposal, and when many parts are to be added,
        several pick the same one and pull it their own ways. Here the parts are matched to
        distinct proposals greedily, highest margin first (DAG's one target label per proposal),
        the matching recomputed at every step and not differentiated. A part left without a
        valid proposal gets ``_NEG``."""
        a = self._add_margins_per_proposal(outputs)
        n, r, parts = a.shape
        if n == 0 or r == 0:
            return a.new_full((n, parts), _NEG)
        chosen = torch.full((n, parts), -1, dtype=torch.long, device=a.device)
        with torch.no_grad():
            wanted = add.to(a.device).bool().unsqueeze(1) & outputs.valid.unsqueeze(-1)
            free = a.detach().masked_fill(~wanted, -math.inf)
            everyone = torch.arange(n, device=a.device)
            for _ in range(int(add.sum(-1).max().item())):
                best, index = free.flatten(1).max(1)
                found = everyone[best > -math.inf]
                if len(found) == 0:
                    break
                proposal, part = index[found] // parts, index[found] % parts
                chosen[found, part] = proposal
                free[found, proposal, :] = -math.inf
                free[found, :, part] = -math.inf
        margins = a.gather(1, chosen.clamp(min=0).unsqueeze(1)).squeeze(1)
        return torch.where(chosen >= 0, margins, torch.full_like(margins, _NEG))

    def hinge_loss(self, outputs: PartOutputs, add: torch.Tensor | None = None,
                   remove: torch.Tensor | None = None, *, distinct: bool = False) -> torch.Tensor:
        """(N,) loss: sum over parts in ``add`` (N, 44 0/1) of relu(-add margin), plus sum over
        parts in ``remove`` and proposals of relu(remove violation). 0 once all are satisfied.
        ``distinct``: each added part's margin is that of a proposal of its own
        (``distinct_add_margins``), not its best one."""
        n = outputs.logits.shape[0]
        loss = outputs.logits.new_zeros(n)
        if add is not None:
            margins = self.distinct_add_margins(outputs, add) if distinct else self.add_margins(outputs)
            loss = loss + (torch.relu(-margins) * add.to(loss)).sum(-1)
        if remove is not None:
            violations = torch.relu(self.remove_violations(outputs)) * remove.to(loss).unsqueeze(1)
            loss = loss + violations.sum(dim=(1, 2))
        return loss


def soft_jaccard(presence: torch.Tensor, class_parts: torch.Tensor) -> torch.Tensor:
    """(N, C) Jaccard sum(min)/sum(max) of soft presences (N, 44) in [0, 1] with each class's
    0/1 parts (C, 44); 0 where both are empty. On 0/1 presences it is the set Jaccard."""
    expected = class_parts.to(presence)
    intersection = presence @ expected.T
    union = expected.sum(-1).unsqueeze(0) + presence.sum(-1, keepdim=True) - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1e-12), torch.zeros_like(union))

"""The attack on UnMask's re-classification (the defended prediction depends on K alone)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from unmask.attacks.adaptive.engine import Batch, Evaluation, GradientAttack, Run, hard_reclassify, untargeted_loss
from unmask.attacks.adaptive.part_view import soft_jaccard
from unmask.attacks.adaptive.target import Verdict
from unmask.attacks.norms import L2, LINF


class ReclassifyAttack(GradientAttack):
    """APGD on K's soft Jaccards as logits, targeted and untargeted, against the re-classification.

    UnMask re-classifies an image as argmax_c J(V[c], K's parts). Here the soft Jaccards
    J~_c of K's soft 0/1 part presence (``part_view``) with each class's parts play the logits
    (Tramer et al. 2020: attack the defended classifier end to end; BPDA judging, Athalye et al.
    2018), and the runs are, per image, in order (``options.reclassify_losses``):

    - ``targeted``: towards each of the ``options.targets`` other classes t whose parts best
      match K's clean parts (0: every other class): the margin max_{c != t} J~_c - J~_t plus
      ``reclassify_hinge`` x K's hinges that add V[t] and remove every part not in V[t] (the
      soft Jaccard's gradient fades for parts far from K's threshold; the hinges do not);
    - ``dlr`` and ``ce``: untargeted, APGD's DLR margin and cross-entropy (Croce & Hein 2020) of
      the true class on J~ / ``reclassify_temperature``, plus ``reclassify_hinge`` x K's hinges
      towards the currently best other class c* (add V[c*] - V[y], remove V[y] - V[c*]);

    each ``options.restarts`` times, stopping per image at the first success. Under a deployed
    rule with a learned re-classifier (``part-classifier``, ``target.rule``) its logits on K's
    soft presence and confidences replace the soft Jaccards. Success: the
    judge's re-classification is not y (no prediction, when every J is 0, counts: UnMask then
    has no answer). M is not used. Norm: L-inf or L2 (``reclassify_linf``, ``reclassify_l2``).
    """

    family = "reclassify"
    norms = (LINF, L2)
    targeted = True  # towards target classes first; the kept image's target is -1 when an untargeted run made it
    aims = "reclassification"

    def learned_logits(self, indicator: torch.Tensor, presence: torch.Tensor) -> torch.Tensor | None:
        """The deployed rule's own re-classifier logits from K's soft 0/1 presence and its
        confidences (the ``part-classifier`` rule's), or None when it re-classifies by argmax J."""
        rule = self.target.rule
        return None if rule is None else rule.reclassifier_logits(indicator, presence * indicator)

    def class_scores(self, indicator: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        """What plays the logits: the deployed re-classifier's logits, else the soft Jaccards."""
        learned = self.learned_logits(indicator, presence)
        return soft_jaccard(indicator, self.class_parts) if learned is None else learned

    def runs(self, batch: Batch) -> Iterator[Run]:
        clean = self.class_scores(batch.clean.parts_soft, batch.clean.presence)
        ranks = clean.scatter(1, batch.labels.view(-1, 1), float("-inf")).argsort(dim=1, descending=True,
                                                                                   stable=True)[:, :-1].cpu()
        for index, loss in enumerate(self.options.reclassify_losses):
            targets = range(min(self.options.targets or ranks.shape[1], ranks.shape[1])) if loss == "targeted" \
                else (None,)
            for rank in targets:
                for restart in range(self.options.restarts):
                    yield Run((index, -1 if rank is None else rank, restart), self.options.random_start or restart > 0,
                              None if rank is None else ranks[:, rank].contiguous(), loss=loss,
                              rank=-1 if rank is None else rank, restart=restart)

    def made_before(self, run: Run) -> bool:
        """As every attack's, and the smaller rung ran the run's loss at the same place in its
        order (its random starts derive from that place)."""
        made, losses = self.options.already_made, self.options.reclassify_losses
        return (super().made_before(run) and run.loss in made.reclassify_losses
                and made.reclassify_losses.index(run.loss) == losses.index(run.loss))

    def evaluate(self, batch: Batch, run: Run, x: torch.Tensor, x_q: torch.Tensor, rows: torch.Tensor) -> Evaluation:
        outputs = self.outputs(batch, x_q, rows)
        labels = batch.labels[rows]
        presence = self.view.presence(outputs)
        indicator = self.view.indicator(presence)
        learned = self.learned_logits(indicator, presence)
        similarities = soft_jaccard(indicator, self.class_parts) if learned is None else learned
        own = self.class_parts[labels]
        if run.loss == "targeted":
            targets = run.targets[rows].to(self.device)
            others = similarities.scatter(1, targets.view(-1, 1), float("-inf")).amax(1)
            loss = others - similarities.gather(1, targets.view(-1, 1)).squeeze(1)
            goal = self.class_parts[targets]
            add, remove = goal, 1 - goal
        else:
            # the temperature sharpens Jaccards in [0, 1]; a learned re-classifier's logits are already logits
            temperature = self.options.reclassify_temperature if learned is None else 1.0
            loss = untargeted_loss(run.loss, similarities / temperature, labels)
            best_other = self.class_parts[similarities.detach().scatter(1, labels.view(-1, 1), float("-inf")).argmax(1)]
            add, remove = best_other * (1 - own), own * (1 - best_other)
        if self.options.reclassify_hinge > 0:
            loss = loss + self.options.reclassify_hinge * self.view.hinge_loss(outputs, add=add, remove=remove)
        with torch.no_grad():
            parts, hard = self.hard_similarities(outputs)
            if self.target.rule is not None:  # the deployed rule's re-classifier on K's hard evidence
                success = self.rule_decisions(labels, outputs)["reclassified"] != labels
                learned_hard = self.learned_logits(parts.float(), presence.detach())
                hard = hard if learned_hard is None else learned_hard
            else:
                success = hard_reclassify(hard) != labels
            hard_gap = hard.scatter(1, labels.view(-1, 1), float("-inf")).amax(1) - hard.gather(
                1, labels.view(-1, 1)).squeeze(1)
            failure_key = (-hard_gap - 1e-3 * loss.detach()).double()
        return Evaluation(success, torch.zeros_like(failure_key), failure_key, loss=loss)

    def judged(self, batch: Batch, run: Run, verdict: Verdict, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return verdict.unmask_prediction != batch.labels_cpu[rows], torch.zeros(len(rows), dtype=torch.float64)

    def final_success(self, verdict: Verdict, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return verdict.unmask_prediction != labels

"""The security evaluation the paper never had: attacks that know K, beside the paper's gray-box
attacks, each aimed at one of UnMask's outputs, the baselines attacked just as hard, all judged
on the real pipeline, and a budget ladder that runs until more budget stops helping.

On a seeded, class-stratified sample of test images that M classifies correctly when clean, and
for each detection threshold (fixed on clean validation images at each false-positive rate of
``--adaptive-fprs``), every attack and budget runs in batches (sharded over ``torchrun``'s
processes, resumable, stamped with what made it), and every adversarial image — 8-bit, as it
would be saved — is judged by the hard pipeline: M's argmax, K's real detection rule, UnMask's
set-Jaccard detection score against the threshold, its re-classification and the decision it
deploys (M's class unless flagged, else the re-classified one).

Defenses (``defenses``): UnMask (M and K); with a robust K (``--k-adv-training``) UnMask-R and
UnMask-R + adv. M; and the same M alone ("undefended M") and the adversarially trained M alone
("adversarial training"), which the white-box evaluation attacks with the same engine, budgets,
ladder and images (``m_apgd``: APGD-CE and APGD-DLR on M).

Threat models (every row names its own):

- ``gray-box``: the paper's attacker knows M only: PGD on M (``pgd_linf`` / ``pgd_l2``) at the
  same budgets (the baseline attacked through its own gradients);
- ``transfer``: crafted against M and a surrogate K' (K's recipe, another seed, half of K's
  training split; for UnMask-R too: K' is not adversarially trained) with thresholds fixed the
  same way on K' and the defense's M; judged on the defense's real K;
- ``white-box``: crafted against M, K, the part table and the real thresholds.

The modules, in the order the data flows:

- ``defenses``: the defenses and their clean figures;
- ``sequence``: defense x attack x budget x rung, each attack on the images whose output it
  aims at every earlier attack, smaller budget and smaller rung left standing (the carried
  breaks), saved and judged;
- ``rows``: one row per attack as ``metrics.json``'s ``adaptive`` section writes it;
- ``worst_cases``: the per-image worst cases over the attacks with bootstrap 95% intervals,
  the attack that did the most per figure, and the paired differences to the baselines;
- ``ladder``: each headline figure's curve over the ladder's rungs, the stopping rule, and a
  one-rung run's offsets measured by a published ladder on the same models;
- ``evaluate``: ``adaptive_evaluation``, the sequence in order and its sections.
"""

from unmask.experiment.adaptive.defenses import (
    ADVERSARIAL_TRAINING,
    UNDEFENDED,
    UNMASK,
    UNMASK_R,
    UNMASK_R_ADV,
    CleanView,
    Defense,
    clean_figures,
    defenses_of,
    unflagged_wrong_classes,
)
from unmask.experiment.adaptive.evaluate import adaptive_evaluation
from unmask.experiment.adaptive.rows import FIGURES, HEADLINE_FIGURES, Judged, Row
from unmask.experiment.adaptive.worst_cases import summarise

__all__ = [
    "ADVERSARIAL_TRAINING", "FIGURES", "HEADLINE_FIGURES", "UNDEFENDED", "UNMASK", "UNMASK_R", "UNMASK_R_ADV",
    "CleanView", "Defense", "Judged", "Row", "adaptive_evaluation", "clean_figures", "defenses_of", "summarise",
    "unflagged_wrong_classes",
]

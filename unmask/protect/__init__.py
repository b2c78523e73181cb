"""UnMask as a library: protect any classifier from Python, attack it with any attack library.

- ``UnMask(classifier, part_extractor, class_set)``, or ``UnMask.from_run(folder)`` for a finished
  ``python main.py`` run: ``fix_threshold(clean_images, fpr=...)``, then ``unmask(images)`` ->
  ``UnMaskResult`` (M's class, detection score, flagged, re-classified class, the deployed
  decision, K's parts; ``explain(i)``), and ``judge(images)``: the same on 8-bit images.
- ``unmask.stand_in()``: a differentiable ``nn.Module`` whose logits follow UnMask's decision
  (BPDA), for foolbox, torchattacks, AutoAttack, ART.
- ``FinishedRun``: a run's models, thresholds and images (``FinishedRun.open(folder)``, or
  ``FinishedRun.latest()``: the run that finished last); ``load_classifier``: M from a weights
  file (a run's, or ``import-m``'s of the original's released M).

This package comes after the experiment in the one-way import order (it reads run folders), so
``unmask`` exports its names lazily: ``import unmask`` stays light.
"""

from unmask.attacks.norms import to_8bit
from unmask.protect.pipeline import DECISIONS, Explanation, UnMask, UnMaskResult
from unmask.protect.run import FinishedRun, RunFolderError, SavedClassifier, load_classifier
from unmask.protect.stand_in import StandIn

__all__ = ["DECISIONS", "Explanation", "FinishedRun", "RunFolderError", "SavedClassifier", "StandIn", "UnMask",
           "UnMaskResult", "load_classifier", "to_8bit"]

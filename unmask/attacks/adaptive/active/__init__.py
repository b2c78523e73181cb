"""Attack unit tests ("active tests"; Zimmermann, Brendel, Tramèr, Carlini, NeurIPS 2022,
"Increasing Confidence in Adversarial Robustness Evaluations"): modify UnMask slightly so that an
adversarial example of a known kind provably exists within epsilon of each test image, then ask
each white-box attack, run exactly as in the evaluation, to find one.

- ``evasion_setup``: M binarized (a readout on its penultimate features: the image's class on the
  inner points, a target class t on a planted point where K's real parts pass detection for t):
  an image that evades detection (and breaks the deployed decision) exists;
- ``inverted_setup``: the same with a planted point K's parts get flagged at: an image with M
  wrong *and* flagged exists, and that is what counts;
- ``reclassification_setup``: K's box classifier with planted parts (linear readouts on its box
  features) that make a corner of the ball re-classified as another class;
- ``attack_outcomes``: an attack of the registry against those pipelines, judged as always.

The modified models are in ``unmask.models.planted``; the experiment that runs the tests on a
run's models and reports them is ``unmask.experiment.active_tests``.
"""

from unmask.attacks.adaptive.active.options import STATUSES, TESTS, ActiveTestOptions
from unmask.attacks.adaptive.active.outcomes import OUTCOMES, active_tests_of, attack_outcomes, criterion_of
from unmask.attacks.adaptive.active.plant import (
    CRITERIA,
    TEST_CRITERIA,
    JudgeFor,
    PlantingSearch,
    Setup,
    evasion_setup,
    inverted_setup,
    reclassification_setup,
)

__all__ = ["CRITERIA", "OUTCOMES", "STATUSES", "TESTS", "TEST_CRITERIA", "ActiveTestOptions", "JudgeFor",
           "PlantingSearch", "Setup", "active_tests_of", "attack_outcomes", "criterion_of", "evasion_setup",
           "inverted_setup", "reclassification_setup"]

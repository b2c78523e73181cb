"""The constants and presets several layers share, each defined once.

Every module that needs one of these imports it from here (this module imports nothing of the
package), so a fact has one owner whichever layer reads it: the configuration's checks, the
data generators, the attacks and the defense.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

GREY_LEVELS = 255
"""An 8-bit image's largest value: pixel budgets are written on this 0-255 scale (the paper's),
images are in [0, 1], and an 8-bit image takes the values k / GREY_LEVELS."""

MIN_IMAGE_SIZE = 32
"""The smallest image side: below it the smallest parts are a few pixels wide and stop being
recognisable (the original uses 150)."""

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Every dataset's splits, in this order (M's class folders and K's annotation files alike)."""

NO_PREDICTION = -1
"""The class index of "no class": UnMask's re-classification when no class shares a part with
K's parts (it counts as wrong)."""


def to_unit_scale(value: float) -> float:
    """A pixel budget on the 0-255 scale as a distance between images in [0, 1]."""
    return float(value) / GREY_LEVELS


@dataclass(frozen=True)
class AdaptiveBudget:
    """How much work an adaptive attack spends per image and budget: ``steps`` per run,
    ``restarts`` runs per target class, ``targets`` target classes (0: every class but the true
    one), the base step ``relative_step * epsilon / steps`` (the cosine and constant rules), and
    the re-classification attack's runs (``reclassify_losses``: targeted towards each target,
    then APGD's DLR and CE)."""

    steps: int
    restarts: int
    targets: int
    relative_step: float
    reclassify_losses: tuple[str, ...]

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)


REDUCED_ADAPTIVE_BUDGET = AdaptiveBudget(steps=40, restarts=1, targets=2, relative_step=8.0,
                                         reclassify_losses=("targeted",))
"""The default run's budget: one run of 40 steps towards each of the 2 best-ranked targets (the
re-classification attack: towards the 2 best-matching other classes). One longer run beats two
short ones at equal cost: the step-size control needs the steps to converge (docs/convergence.md:
how far this budget is from converged)."""

FULL_ADAPTIVE_BUDGET = AdaptiveBudget(steps=100, restarts=2, targets=0, relative_step=20.0,
                                      reclassify_losses=("targeted", "dlr", "ce"))
"""The full evaluation's budget (``--profile adaptive-full``): 100 steps, every target, 2 runs
each (from the clean image, then from a random point), and the re-classification attack's
untargeted DLR and CE runs after the targeted ones."""

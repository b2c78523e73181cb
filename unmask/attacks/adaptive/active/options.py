"""``ActiveTestOptions``: how the attack unit tests build their modified pipelines (sizes on the 0-255 scale)."""

from __future__ import annotations

from dataclasses import dataclass

TESTS: tuple[str, ...] = ("evasion", "inverted", "reclassification")
"""The tests: ``evasion`` (an image that evades UnMask's detection, M wrong and not flagged, is
planted), ``inverted`` (an image with M wrong *and* flagged is planted; M wrong counts, flagged or not),
``reclassification`` (a point whose K parts change UnMask's re-classification is planted)."""

STATUSES: tuple[str, ...] = ("ok", "no_target", "no_planted_point", "not_separable", "not_verified", "clean_wrong")
"""Why an image's modified pipeline was or was not set up: ``ok``; ``no_target`` (no class the
test can aim at: every other class already passes detection with K's clean parts, or no class's
parts change the re-classification when added); ``no_planted_point`` (the search found no point
of the ball to plant); ``not_separable`` (no linear readout separates the planted point from the
inner points); ``not_verified`` (the modified pipeline, judged like the real one, does not give
the planted point's outcome, or changes an inner point's); ``clean_wrong`` (the real pipeline
already gets the output the test is about wrong on the clean image: nothing to test)."""


@dataclass(frozen=True)
class ActiveTestOptions:
    """Hyper-parameters of the attack unit tests (Zimmermann et al. 2022; defaults in brackets).

    - ``inner_points`` [256]: points the binarized M's readout must keep at the true class: the
      clean image and points drawn uniformly from the ball shrunk by ``gap``, 8-bit.
    - ``k_inner_points`` [32]: the same for the modified K of the re-classification test (each
      costs a pass of K and adds its ~100 proposals to the readouts' negatives).
    - ``other_corners`` [32]: corners of the ball (other than a planted one) every readout must
      also keep at y, so that the modified model's adversarial region is the planted point's
      neighbourhood and not every corner (the modified K takes at most ``k_inner_points`` of them).
    - ``gap`` [0.05]: the inner points lie within (1 - gap) epsilon of the clean image (rounded
      towards it to whole grey levels): the reference code's relative inner-boundary gap.
    - ``closeness`` [0.9]: where each readout's boundary lies between the inner points' highest
      score (0) and the planted point's (1); near 1 the planted point is barely on its side.
    - ``random_samples`` [32]: points of the ball (half uniform, half its corners) a random search
      tries per image and test: the baseline an attack is compared with; as many fresh inner
      points check how much of the shrunk ball the modified model keeps at y.
    - ``plant_steps`` [200], ``plant_restarts`` [1], ``plant_targets`` [3]: the search for the
      evasion test's planted point (K's parts made to pass detection for a target class, a
      K-only attack on the same engine): steps per run, runs per target, and how many target
      classes it tries per image, nearest first (0: every class K's clean parts are flagged for).
      ``plant_targets`` also bounds the re-classification test's candidate targets (0: every class).
    - ``seed`` [0]: of every random point drawn (per image, test and budget).
    """

    inner_points: int = 256
    k_inner_points: int = 32
    other_corners: int = 32
    gap: float = 0.05
    closeness: float = 0.9
    random_samples: int = 32
    plant_steps: int = 200
    plant_restarts: int = 1
    plant_targets: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        for name, least in (("inner_points", 1), ("k_inner_points", 1), ("random_samples", 1), ("plant_steps", 1),
                            ("plant_restarts", 1), ("other_corners", 0), ("plant_targets", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"ActiveTestOptions.{name} must be an integer >= {least}, got {value!r}")
        if not 0.0 <= self.gap < 1.0:
            raise ValueError(f"ActiveTestOptions.gap must lie in [0, 1), got {self.gap!r}")
        if not 0.0 < self.closeness < 1.0:
            raise ValueError(f"ActiveTestOptions.closeness must lie in (0, 1), got {self.closeness!r}")

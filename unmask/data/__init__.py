"""Datasets: the synthetic part world, PASCAL-Part conversion, and loaders for both layouts."""

DATASETS: tuple[str, ...] = ("synthetic", "unmask")
"""Datasets an experiment runs on: the generated part world, or the real UnMask dataset."""

PREPARE_SOURCES: tuple[str, ...] = ("synthetic", "pascal-part")
"""What ``python main.py prepare --dataset`` can build: the part world, or K's training data
converted from raw PASCAL-Part."""

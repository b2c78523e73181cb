"""Fixtures of the library's tests: models whose answers the test chooses, tiny real models, and a
tiny finished run.

``tiny_run``: ``python main.py`` on a tiny synthetic world in a temporary folder (seconds): M
trained for two epochs, K a randomly initialised lean Mask R-CNN whose box classifier is
sharpened so that it reports a varied handful of parts, given with ``--k-checkpoint``, one
gray-box vector and no adaptive evaluation. Its output folder is module-independent: the tests
only read it (a test that changes a run copies it first).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from unmask.config import resolve_config
from unmask.experiment import build_plan, run_experiment
from unmask.parts import ClassSet
from unmask.train.loop import save_weights
from unmask.train.part_extractor import PartExtractorSpec, PartExtractorTraining

TINY_RUN = {
    "image_size": 48, "synthetic_images_per_class": 10, "synthetic_k_images": 24, "synthetic_workers": 1,
    "epochs": 2, "adv_training": False, "attacks": ("pgd_linf:16",), "attack_steps": 2, "class_set": "cs3-1",
    "verbosity": 0, "adaptive_attacks": ("none",), "k_score_threshold": 0.5, "k_model": "lean",
}
CLASS_SET = ClassSet.named("cs3-1")  # car, person, train


def sharpened_k(image_size: int, *, seed: int = 0, sharpen: float = 30.0) -> nn.Module:
    """A randomly initialised lean K at ``image_size`` whose box classifier is sharpened: it
    reports a varied handful of parts with confident scores."""
    torch.manual_seed(seed)
    model = PartExtractorSpec("lean", image_size, PartExtractorTraining()).build()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(sharpen)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a finished tiny run (see the module's docstring)."""
    root = tmp_path_factory.mktemp("tiny-run")
    k_file = root / "k-weights.pt"
    save_weights(k_file, sharpened_k(TINY_RUN["image_size"]),
                 PartExtractorSpec("lean", TINY_RUN["image_size"], PartExtractorTraining()).metadata)
    plan = build_plan(resolve_config(overrides={**TINY_RUN, "data_dir": str(root / "data"),
                                                "output_dir": str(root / "results"), "k_checkpoint": str(k_file)}))
    return run_experiment(plan)


class Says(nn.Module):
    """An M whose answer the test chooses: image i (its first pixel is i / 255) gets logits
    ``table[i]``."""

    def __init__(self, table: Sequence[Sequence[float]]) -> None:
        super().__init__()
        self.register_buffer("table", torch.tensor(table, dtype=torch.float32))
        self.anchor = nn.Parameter(torch.zeros(()))  # M needs a parameter (its device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.table[index_of(images)] + 0 * self.anchor


def index_of(images: torch.Tensor) -> torch.Tensor:
    """The index each image of ``numbered`` carries in its first pixel (rounded down: an image
    off the 8-bit grid by less than a grey level above i / 255 still carries i)."""
    return torch.floor(images[:, 0, 0, 0] * 255 + 1e-3).long()


def numbered(count: int, size: int = 8) -> torch.Tensor:
    """``count`` grey 8-bit images, image i carrying i in its first pixel (i / 255)."""
    images = torch.full((count, 3, size, size), 128 / 255)
    images[:, 0, 0, 0] = torch.arange(count) / 255
    return images


def one_hot(classes: Sequence[int], count: int = 3) -> list[list[float]]:
    return [list(np.eye(count)[c] * 5) for c in classes]

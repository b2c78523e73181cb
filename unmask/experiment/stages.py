"""The experiment's stages: data -> M and the adversarially trained M -> K -> predictions.

Each stage takes the plan's options object for its component and the ``Runtime``. Trained
models are cached under ``<output dir>/models/<kind>-<hash of what determines them>/`` (resumed
when interrupted, reused when finished); the predictions stages are pure computations whose
results the run stores. The ``train-m`` and ``train-k`` commands use the same stages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unmask.attacks import AttackOptions, AttackVector, attack
from unmask.data.coco import PartSegmentationDataset, split_paths
from unmask.data.folders import ClassFolderDataset
from unmask.data.synthetic import ensure_synthetic
from unmask.evaluation import Predictions
from unmask.experiment.plan import DataSpec, Plan
from unmask.io import stable_hash
from unmask.models.classifier import predict
from unmask.models.part_extractor import PartExtractor
from unmask.runtime import Runtime, seed_everything
from unmask.train.classifier import ClassifierSpec, load_trained_classifier, train_or_load_classifier
from unmask.train.loop import WEIGHTS_FILE
from unmask.train.part_extractor import (
    evaluate_part_extractor,
    load_part_extractor_weights,
    part_extractor_cache_key,
    train_part_extractor,
)

SPLITS = ("train", "val", "test")


# --- data ---------------------------------------------------------------------------------------


def prepare_data(spec: DataSpec, runtime: Runtime) -> None:
    """Generate the synthetic world when it is missing or differs from ``spec`` (on the main
    process; the others wait). Real datasets are checked by their loaders."""
    if spec.synthetic is not None and runtime.distributed.is_main:
        ensure_synthetic(spec.root, spec.synthetic, progress=runtime.verbosity > 0, workers=spec.synthetic_workers)
    runtime.distributed.barrier()


def load_classifier_data(spec: DataSpec) -> dict[str, ClassFolderDataset]:
    """M's train, val and test splits of the class set, decoded once into memory."""
    return {split: ClassFolderDataset(spec.root, spec.class_set, split, image_size=spec.image_size, cache=True)
            for split in SPLITS}


# --- M and the adversarially trained M ----------------------------------------------------------


@dataclass
class TrainedClassifier:
    model: nn.Module
    description: str
    seconds: float


def trained_classifiers(plan: Plan, data: dict[str, ClassFolderDataset], runtime: Runtime,
                        ) -> tuple[TrainedClassifier, TrainedClassifier | None]:
    """(the M UnMask protects, the adversarial-training baseline or None), trained or loaded
    from the cache (or M from ``--m-checkpoint``); a spec both roles share is trained once."""
    data_fingerprint = stable_hash([data["train"].fingerprint(), data["val"].fingerprint()])
    trained: dict[ClassifierSpec, TrainedClassifier] = {}

    def train_or_load(spec: ClassifierSpec) -> TrainedClassifier:
        if spec not in trained:  # with --m-adv-trained the baseline is M itself: trained once
            result = train_or_load_classifier(
                spec, train_set=data["train"], val_set=data["val"], data_fingerprint=data_fingerprint,
                models_dir=plan.models_dir, device=runtime.device, allow_random_init=plan.allow_random_init,
                workers=runtime.workers, progress=runtime.verbosity > 0)
            description = (f"{spec.architecture} (models/{result.checkpoint_dir.name}), best epoch "
                           f"{result.best_epoch} of {spec.training.epochs}")
            trained[spec] = TrainedClassifier(result.model, description, sum(r["seconds"] for r in result.history))
        return trained[spec]

    if plan.m_checkpoint is not None:
        model = load_trained_classifier(plan.m_checkpoint, plan.m.architecture, len(plan.m.classes),
                                        device=runtime.device)
        m = TrainedClassifier(model, f"{plan.m.architecture} from {plan.m_checkpoint}", 0.0)
    else:
        m = train_or_load(plan.m)
    return m, train_or_load(plan.adv_trained) if plan.adv_trained is not None else None


# --- K ------------------------------------------------------------------------------------------


@dataclass
class TrainedPartExtractor:
    extractor: PartExtractor
    directory: Path
    """The folder of K's weights (its cache folder, or the folder of ``--k-checkpoint``)."""


def part_extractor_data_fingerprint(spec: DataSpec) -> str:
    """What K trains on: the dataset kind and the training annotations' contents."""
    annotation_file = split_paths(spec.root, "train")[0]
    if not annotation_file.is_file():
        raise FileNotFoundError(f"K's training annotations {annotation_file} do not exist; expected "
                                f"<data dir>/VOC2010/train.json (python main.py prepare builds the synthetic ones)")
    return stable_hash({"dataset": spec.dataset,
                        "train_annotations": stable_hash(annotation_file.read_bytes().decode("utf-8"), length=16)})


def trained_part_extractor(plan: Plan, runtime: Runtime) -> TrainedPartExtractor:
    """K trained as the plan says (resuming or reusing its cache folder), or loaded from
    ``--k-checkpoint``."""
    spec = plan.k
    seed_everything(spec.training.seed)
    if plan.k_checkpoint is not None:
        model = replace(spec, pretrained=False).build()  # the weights come from the user's file
        directory = plan.k_checkpoint.parent
        load_part_extractor_weights(model, plan.k_checkpoint)
    else:
        model = spec.build(allow_random_init=plan.allow_random_init)
        directory = plan.models_dir / part_extractor_cache_key(spec, part_extractor_data_fingerprint(plan.data))
        if not (directory / WEIGHTS_FILE).is_file():
            # a mirrored photo of a car's left side shows a right side; the synthetic sides differ in colour
            train_set = PartSegmentationDataset(*split_paths(plan.data.root, "train"), hflip_prob=0.5,
                                                mirror_sides=plan.data.synthetic is None)
            val_set = PartSegmentationDataset(*split_paths(plan.data.root, "val"))
            train_part_extractor(model, train_set, val_set, spec.training, device=runtime.device,
                                 checkpoint_dir=directory, workers=runtime.workers,
                                 score_threshold=spec.rule.score_threshold, progress=runtime.verbosity > 0)
        load_part_extractor_weights(model, directory / WEIGHTS_FILE)
    extractor = PartExtractor(model, score_threshold=spec.rule.score_threshold, device=runtime.device)
    return TrainedPartExtractor(extractor, directory)


def part_extractor_metrics(plan: Plan, k: TrainedPartExtractor, runtime: Runtime) -> dict[str, Any]:
    """K's COCO mAP and part-set precision/recall on the test split, computed once per K and
    score threshold and cached beside its weights."""
    path = k.directory / f"metrics-test-thr{plan.k.rule.score_threshold:g}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return evaluate_part_extractor(k.extractor, *split_paths(plan.data.root, "test"), output_file=path,
                                   progress=runtime.verbosity > 0)


# --- predictions --------------------------------------------------------------------------------


def attack_seed(seed: int, vector: AttackVector, model_role: str) -> int:
    """The random-start seed of ``vector`` against one model (``m`` or ``adv_trained``)."""
    return int(stable_hash([seed, vector.label, model_role], length=12), 16)


def clean_predictions(images: torch.Tensor, m: nn.Module, adv_trained: nn.Module | None,
                      extractor: PartExtractor) -> Predictions:
    """What M, the baseline (if any) and K say about clean images."""
    extraction = extractor.extract(images)
    return Predictions(m=predict(m, images).cpu().numpy(), parts=extraction.parts,
                       part_scores=extraction.part_scores,
                       adv_trained=None if adv_trained is None else predict(adv_trained, images).cpu().numpy())


def attacked_predictions(vector: AttackVector, images: torch.Tensor, labels: torch.Tensor, m: nn.Module,
                         adv_trained: nn.Module | None, extractor: PartExtractor, *, options: AttackOptions,
                         seed: int) -> tuple[Predictions, torch.Tensor]:
    """M's and K's view of the images attacked through M's gradients, and the baseline's
    prediction on images attacked through its own gradients (gray-box: K is never attacked).
    Also returns the adversarial images (against M)."""
    torch.manual_seed(attack_seed(seed, vector, "m"))
    adversarial = attack(m, images, labels, vector, options)
    extraction = extractor.extract(adversarial)
    baseline_predictions = None
    if adv_trained is not None:
        torch.manual_seed(attack_seed(seed, vector, "adv-trained"))
        baseline_predictions = predict(adv_trained, attack(adv_trained, images, labels, vector, options)).cpu().numpy()
    predictions = Predictions(m=predict(m, adversarial).cpu().numpy(), parts=extraction.parts,
                              part_scores=extraction.part_scores, adv_trained=baseline_predictions)
    return predictions, adversarial


def classifier_summary(trained: TrainedClassifier, images: torch.Tensor, labels: torch.Tensor,
                       vectors: tuple[AttackVector, ...], options: AttackOptions, *, seed: int) -> dict[str, float]:
    """Test accuracy of one trained M, clean and under ``vectors`` (what ``train-m`` prints)."""
    torch.manual_seed(seed)  # the random starts: the same figures on every run
    figures = {"clean": (predict(trained.model, images) == labels).float().mean().item()}
    for vector in vectors:
        adversarial = attack(trained.model, images, labels, vector, options)
        figures[vector.label] = (predict(trained.model, adversarial) == labels).float().mean().item()
    return figures

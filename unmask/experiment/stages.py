"""The experiment's stages: data -> M and the adversarially trained M -> K -> predictions.

Each stage takes the plan's options object for its component and the ``Runtime``. Trained
models are cached under ``<output dir>/models/<kind>-<hash of what determines them>/`` (resumed
when interrupted, reused when finished); the predictions stages are pure computations whose
results the run stores. The ``train-m`` and ``train-k`` commands use the same stages.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from unmask.attacks import AttackOptions, AttackVector, attack
from unmask.attacks.adaptive import Judge, Verdict
from unmask.data.coco import PartSegmentationDataset, check_part_split, load_coco_parts, split_paths
from unmask.data.folders import ClassFolderDataset, check_class_folders
from unmask.data.synthetic import ensure_synthetic
from unmask.defense import detection_scores, reclassify_batch
from unmask.evaluation import Predictions
from unmask.experiment.plan import DataSpec, Plan
from unmask.io import atomic_write_json, stable_hash
from unmask.models.classifier import predict
from unmask.models.part_extractor import PartExtractor
from unmask.parts import ClassSet
from unmask.provenance import bytes_digest, cached, digest, files_digest, tensors_digest
from unmask.runtime import Runtime, seed_everything
from unmask.train.classifier import ClassifierSpec, load_trained_classifier, train_or_load_classifier
from unmask.train.part_extractor import (
    evaluate_part_extractor,
    load_part_extractor_weights,
    train_or_load_part_extractor,
)

SPLITS = ("train", "val", "test")


# --- data ---------------------------------------------------------------------------------------


def prepare_data(spec: DataSpec, runtime: Runtime, *, m_splits: tuple[str, ...] = SPLITS,
                 k_splits: tuple[str, ...] = ()) -> None:
    """Generate the synthetic world when it is missing or differs from ``spec``, then check the
    data the run will read before any training: M's ``m_splits`` and K's ``k_splits`` (layouts,
    annotation files, every image's header), reporting every bad file at once. On the main
    process; the others wait."""
    if runtime.distributed.is_main:
        if spec.synthetic is not None:
            ensure_synthetic(spec.root, spec.synthetic, progress=runtime.verbosity > 0,
                             workers=spec.synthetic_workers)
        if m_splits:
            check_class_folders(spec.root, spec.class_set, m_splits)
        for split in k_splits:
            check_part_split(spec.root, split)
    runtime.distributed.barrier()


def k_splits_needed(plan: Plan) -> tuple[str, ...]:
    """K's splits a run reads: the test split, and train and val when K is to be trained."""
    return ("test",) if plan.k_checkpoint is not None else ("train", "val", "test")


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
    fingerprint: str
    """Digest of the weights: what every saved prediction of this model is stamped with."""


def trained_classifiers(plan: Plan, data: dict[str, ClassFolderDataset], runtime: Runtime,
                        ) -> tuple[TrainedClassifier, TrainedClassifier | None]:
    """(the M UnMask protects, the adversarial-training baseline or None), trained or loaded
    from the cache (or M from ``--m-checkpoint``); a spec both roles share is trained once."""
    data_fingerprint = digest([data["train"].fingerprint(), data["val"].fingerprint()])
    trained: dict[ClassifierSpec, TrainedClassifier] = {}

    def train_or_load(spec: ClassifierSpec) -> TrainedClassifier:
        if spec not in trained:  # with --m-adv-trained the baseline is M itself: trained once
            result = train_or_load_classifier(
                spec, train_set=data["train"], val_set=data["val"], data_fingerprint=data_fingerprint,
                models_dir=plan.models_dir, device=runtime.device, allow_random_init=plan.allow_random_init,
                workers=runtime.workers, progress=runtime.verbosity > 0, log=runtime.log)
            description = (f"{spec.architecture} (models/{result.checkpoint_dir.name}), best epoch "
                           f"{result.best_epoch} of {spec.training.epochs}")
            trained[spec] = TrainedClassifier(result.model, description, sum(r["seconds"] for r in result.history),
                                              tensors_digest(result.model.state_dict()))
        return trained[spec]

    if plan.m_checkpoint is not None:
        model = load_trained_classifier(plan.m_checkpoint, plan.m, device=runtime.device, log=runtime.log)
        m = TrainedClassifier(model, f"{plan.m.architecture} from {plan.m_checkpoint}", 0.0,
                              tensors_digest(model.state_dict()))
    else:
        m = train_or_load(plan.m)
    return m, train_or_load(plan.adv_trained) if plan.adv_trained is not None else None


# --- K ------------------------------------------------------------------------------------------


@dataclass
class TrainedPartExtractor:
    extractor: PartExtractor
    directory: Path
    """The folder of K's weights (its cache folder, or the folder of ``--k-checkpoint``)."""
    fingerprint: dict[str, Any]
    """Digest of the weights and the detection rule: what K's saved outputs are stamped with."""


def part_data_fingerprint(root: Path, split: str) -> str:
    """Digest of a split of K's data: the annotation file's bytes and the image files (names,
    sizes, modification times)."""
    annotation_file, image_dir = split_paths(root, split)
    if not annotation_file.is_file():
        raise FileNotFoundError(f"K's {split} annotations {annotation_file} do not exist; expected "
                                f"<data dir>/VOC2010/{split}.json (python main.py prepare builds the synthetic ones)")
    images = sorted(image_dir.iterdir()) if image_dir.is_dir() else []
    return digest({"annotations": bytes_digest(annotation_file), "images": files_digest(images, image_dir)})


def trained_part_extractor(plan: Plan, runtime: Runtime) -> TrainedPartExtractor:
    """K trained as the plan says (resuming or reusing its cache folder), or loaded from
    ``--k-checkpoint``."""
    spec = plan.k
    seed_everything(spec.training.seed)
    if plan.k_checkpoint is not None:
        model = replace(spec, pretrained=False).build()  # the weights come from the user's file
        load_part_extractor_weights(model, plan.k_checkpoint, spec, log=runtime.log)
        directory = plan.k_checkpoint.parent
    else:
        root = plan.data.root
        model, directory = train_or_load_part_extractor(
            spec,
            # a mirrored photo of a car's left side shows a right side; the synthetic sides differ in colour
            train_set=lambda: PartSegmentationDataset(*split_paths(root, "train"), hflip_prob=0.5,
                                                      mirror_sides=plan.data.synthetic is None),
            val_set=lambda: PartSegmentationDataset(*split_paths(root, "val")),
            data_fingerprint=digest({"dataset": plan.data.dataset, "train": part_data_fingerprint(root, "train")}),
            models_dir=plan.models_dir, device=runtime.device, allow_random_init=plan.allow_random_init,
            workers=runtime.workers, progress=runtime.verbosity > 0, log=runtime.log)
    return _part_extractor(model, directory, plan, runtime)


def trained_surrogate_part_extractor(plan: Plan, runtime: Runtime) -> TrainedPartExtractor:
    """K', the transfer threat model's surrogate of K: K's architecture and recipe trained with
    another seed on a seeded half of K's training split (cached like K)."""
    spec = replace(plan.k, training=replace(plan.k.training, seed=plan.k.training.seed + 1))
    seed_everything(spec.training.seed)
    root = plan.data.root

    def training_images() -> PartSegmentationDataset:
        return PartSegmentationDataset(*split_paths(root, "train"), hflip_prob=0.5,
                                       mirror_sides=plan.data.synthetic is None)

    count = len(load_coco_parts(*split_paths(root, "train")))
    half = np.sort(np.random.default_rng(spec.training.seed).permutation(count)[:count // 2])
    model, directory = train_or_load_part_extractor(
        spec, train_set=lambda: Subset(training_images(), half.tolist()),
        val_set=lambda: PartSegmentationDataset(*split_paths(root, "val")),
        data_fingerprint=digest({"dataset": plan.data.dataset, "train": part_data_fingerprint(root, "train"),
                                 "half": digest(half.tolist())}),
        models_dir=plan.models_dir, device=runtime.device, allow_random_init=plan.allow_random_init,
        workers=runtime.workers, progress=runtime.verbosity > 0, log=runtime.log)
    return _part_extractor(model, directory, plan, runtime)


def _part_extractor(model: nn.Module, directory: Path, plan: Plan, runtime: Runtime) -> TrainedPartExtractor:
    """K's detection rule and inference precision around trained weights, and their fingerprint."""
    precision = plan.inference.effective_precision(runtime.device)
    extractor = PartExtractor(model, score_threshold=plan.k.rule.score_threshold, device=runtime.device,
                              precision=precision)
    fingerprint = {"weights": tensors_digest(model.state_dict()), "rule": asdict(plan.k.rule), "precision": precision}
    return TrainedPartExtractor(extractor, directory, fingerprint)


def part_extractor_metrics(plan: Plan, k: TrainedPartExtractor, runtime: Runtime) -> tuple[dict[str, Any], Path]:
    """K's COCO mAP and part-set precision/recall on the test split of the plan's data, and the
    file they are kept in: ``<models>/evaluations/k-<digest>.json``, stamped with K's weights,
    its detection rule and the test split's contents (so any run of that K on that data reuses
    it, and no other does)."""
    fingerprint = {"k": k.fingerprint, "data": part_data_fingerprint(plan.data.root, "test")}
    path = plan.models_dir / "evaluations" / f"k-{digest(fingerprint)}.json"
    metrics = cached(path, fingerprint,
                     lambda: evaluate_part_extractor(k.extractor, *split_paths(plan.data.root, "test"),
                                                     progress=runtime.verbosity > 0),
                     save=lambda value, target: atomic_write_json(target, value),
                     load=lambda source: json.loads(source.read_text(encoding="utf-8")),
                     what="K's test metrics", log=runtime.log)
    return metrics, path


# --- predictions --------------------------------------------------------------------------------


def attack_seed(seed: int, vector: AttackVector, model_role: str, batch: int) -> int:
    """The random-start seed of ``vector`` against one model (``m`` or ``adv-trained``) on one
    evaluation batch: the same whichever process attacks the batch, and whatever ran before."""
    return int(stable_hash([seed, vector.label, model_role, batch], length=12), 16)


def clean_predictions(images: torch.Tensor, m: nn.Module, adv_trained: nn.Module | None,
                      extractor: PartExtractor, *, precision: str = "float32") -> Predictions:
    """What M, the baseline (if any) and K say about clean images (M and the baseline predict in
    ``precision``; K in its extractor's)."""
    extraction = extractor.extract(images)
    return Predictions(m=predict(m, images, precision=precision).cpu().numpy(), parts=extraction.parts,
                       part_scores=extraction.part_scores,
                       adv_trained=None if adv_trained is None else
                       predict(adv_trained, images, precision=precision).cpu().numpy())


def attacked_predictions(vector: AttackVector, images: torch.Tensor, labels: torch.Tensor, m: nn.Module,
                         adv_trained: nn.Module | None, extractor: PartExtractor, *, options: AttackOptions,
                         seed: int, batch: int, precision: str = "float32") -> tuple[Predictions, torch.Tensor]:
    """M's and K's view of one batch of images attacked through M's gradients, and the
    baseline's prediction on them attacked through its own gradients (gray-box: K is never
    attacked). Also returns the adversarial images (against M)."""
    torch.manual_seed(attack_seed(seed, vector, "m", batch))
    adversarial = attack(m, images, labels, vector, options)
    extraction = extractor.extract(adversarial)
    baseline_predictions = None
    if adv_trained is not None:
        torch.manual_seed(attack_seed(seed, vector, "adv-trained", batch))
        baseline_adversarial = attack(adv_trained, images, labels, vector, options)
        baseline_predictions = predict(adv_trained, baseline_adversarial, precision=precision).cpu().numpy()
    predictions = Predictions(m=predict(m, adversarial, precision=precision).cpu().numpy(), parts=extraction.parts,
                              part_scores=extraction.part_scores, adv_trained=baseline_predictions)
    return predictions, adversarial


def hard_judge(m: nn.Module, extractor: PartExtractor, class_set: ClassSet, detection_threshold: float, *,
               precision: str = "float32") -> Judge:
    """The real, non-differentiable pipeline as the adaptive attacks' judge: M's argmax, K's
    detection rule, UnMask's set-Jaccard detection score against ``detection_threshold`` and its
    re-classification, on the images as given (the attacks pass 8-bit ones)."""

    def judge(images: torch.Tensor) -> Verdict:
        predictions = clean_predictions(images, m, None, extractor, precision=precision)
        scores = detection_scores(predictions.parts, predictions.m, class_set)
        return Verdict(m_prediction=predictions.m, detection_score=scores, flagged=scores >= detection_threshold,
                       unmask_prediction=reclassify_batch(predictions.parts, class_set), parts=predictions.parts)

    return judge


def classifier_summary(trained: TrainedClassifier, images: torch.Tensor, labels: torch.Tensor,
                       vectors: tuple[AttackVector, ...], options: AttackOptions, *, seed: int) -> dict[str, float]:
    """Test accuracy of one trained M, clean and under ``vectors`` (what ``train-m`` prints)."""
    torch.manual_seed(seed)  # the random starts: the same figures on every run
    figures = {"clean": (predict(trained.model, images) == labels).float().mean().item()}
    for vector in vectors:
        adversarial = attack(trained.model, images, labels, vector, options)
        figures[vector.label] = (predict(trained.model, adversarial) == labels).float().mean().item()
    return figures

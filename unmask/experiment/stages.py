"""The experiment's stages: data -> M and the adversarially trained M -> K -> predictions.

Each stage takes the plan's options object for its component and the ``Runtime``. Trained
models are cached under ``<output dir>/models/<kind>-<hash of what determines them>/`` (resumed
when interrupted, reused when finished); the predictions stages are pure computations whose
results the run stores. The ``train-m`` and ``train-k`` commands use the same stages.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from unmask.attacks import AttackOptions, AttackVector, attack
from unmask.attacks.adaptive import Judge, Verdict
from unmask.constants import SPLITS
from unmask.data.coco import PartSegmentationDataset, check_part_split, load_coco_parts, split_paths
from unmask.data.folders import ClassFolderDataset, check_class_folders
from unmask.data.synthetic import ensure_synthetic
from unmask.defense import detection_scores, reclassify_batch
from unmask.evaluation import Predictions
from unmask.experiment.plan import DataSpec
from unmask.io import atomic_write_json, stable_hash
from unmask.models.classifier import ClassifierInference, InferenceOptions
from unmask.models.part_extractor import PartExtractor
from unmask.parts import ClassSet
from unmask.provenance import bytes_digest, cached, digest, files_digest, tensors_digest
from unmask.rules import DecisionRule, Evidence
from unmask.runtime import Runtime, seed_everything
from unmask.train.classifier import ClassifierSpec, load_trained_classifier, train_or_load_classifier
from unmask.train.loop import WEIGHTS_FILE, ModelCache, read_history
from unmask.train.part_extractor import (
    PartExtractorSpec,
    evaluate_part_extractor,
    load_part_extractor_weights,
    train_or_load_part_extractor,
)
from unmask.train.robust_part_extractor import PartExtractorAdversarialTraining, train_or_load_robust_part_extractor

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


def load_classifier_data(spec: DataSpec) -> dict[str, ClassFolderDataset]:
    """M's train, val and test splits of the class set, decoded once into memory."""
    return {split: ClassFolderDataset(spec.root, spec.class_set, split, image_size=spec.image_size, cache=True)
            for split in SPLITS}


# --- M and the adversarially trained M ----------------------------------------------------------


@dataclass
class TrainedClassifier:
    """A trained M as the evaluation runs it, with where it came from and its training time;
    ``weights_file`` is the file its weights were read from, ``history`` its training's
    per-epoch records (None when it came from ``--m-checkpoint``: no training of this run's)."""

    inference: ClassifierInference
    description: str
    seconds: float
    weights_file: Path | None = None
    history: list[dict[str, float]] | None = None

    @property
    def model(self) -> torch.nn.Module:
        return self.inference.model

    @property
    def fingerprint(self) -> dict[str, object]:
        """What every saved prediction of this M is stamped with (weights and inference settings)."""
        return self.inference.fingerprint


def trained_classifiers(m: ClassifierSpec, adv_trained: ClassifierSpec | None, data: dict[str, ClassFolderDataset],
                        cache: ModelCache, *, m_checkpoint: Path | None = None,
                        inference: InferenceOptions | None = None,
                        ) -> tuple[TrainedClassifier, TrainedClassifier | None]:
    """(the M UnMask protects, the adversarial-training baseline or None), trained or loaded
    from the cache (or M from ``m_checkpoint``), each made ready to run as ``inference`` says;
    a spec both roles share is trained once."""
    inference = inference or InferenceOptions()
    data_fingerprint = digest([data["train"].fingerprint(), data["val"].fingerprint()])
    trained: dict[ClassifierSpec, TrainedClassifier] = {}

    def train_or_load(spec: ClassifierSpec) -> TrainedClassifier:
        if spec not in trained:  # with --m-adv-trained the baseline is M itself: trained once
            result = train_or_load_classifier(spec, train_set=data["train"], val_set=data["val"],
                                              data_fingerprint=data_fingerprint, cache=cache)
            description = (f"{spec.architecture} (models/{result.checkpoint_dir.name}), best epoch "
                           f"{result.best_epoch} of {spec.training.epochs}")
            trained[spec] = TrainedClassifier(ClassifierInference(result.model, inference), description,
                                              sum(r["seconds"] for r in result.history),
                                              result.checkpoint_dir / WEIGHTS_FILE, result.history)
        return trained[spec]

    if m_checkpoint is not None:
        model = load_trained_classifier(m_checkpoint, m, device=cache.runtime.device, log=cache.runtime.log)
        standard = TrainedClassifier(ClassifierInference(model, inference), f"{m.architecture} from {m_checkpoint}",
                                     0.0, m_checkpoint)
    else:
        standard = train_or_load(m)
    return standard, train_or_load(adv_trained) if adv_trained is not None else None


# --- K ------------------------------------------------------------------------------------------


@dataclass
class TrainedPartExtractor:
    extractor: PartExtractor
    directory: Path
    """The folder of K's weights (its cache folder, or the folder of ``--k-checkpoint``)."""
    fingerprint: dict[str, Any]
    """Digest of the weights and the detection rule: what K's saved outputs are stamped with."""
    weights_file: Path | None = None
    """The file K's weights were read from."""
    history: list[dict[str, float]] | None = None
    """K's training's per-epoch records (None when it came from ``--k-checkpoint``)."""


def part_data_fingerprint(root: Path, split: str) -> str:
    """Digest of a split of K's data: the annotation file's bytes and the image files (names,
    sizes, modification times)."""
    annotation_file, image_dir = split_paths(root, split)
    if not annotation_file.is_file():
        raise FileNotFoundError(f"K's {split} annotations {annotation_file} do not exist; expected "
                                f"<data dir>/VOC2010/{split}.json (python main.py prepare builds the synthetic ones)")
    images = sorted(image_dir.iterdir()) if image_dir.is_dir() else []
    return digest({"annotations": bytes_digest(annotation_file), "images": files_digest(images, image_dir)})


def _training_fingerprint(data: DataSpec) -> str:
    """What K's training data is, for its cache key: the dataset and its training split's contents."""
    return digest({"dataset": data.dataset, "train": part_data_fingerprint(data.root, "train")})


def _training_images(data: DataSpec) -> PartSegmentationDataset:
    # a mirrored photo of a car's left side shows a right side; the synthetic sides differ in colour
    return PartSegmentationDataset(*split_paths(data.root, "train"), hflip_prob=0.5,
                                   mirror_sides=data.synthetic is None)


def trained_part_extractor(spec: PartExtractorSpec, data: DataSpec, cache: ModelCache, *,
                           checkpoint: Path | None = None, precision: str = "float32") -> TrainedPartExtractor:
    """K trained as ``spec`` says on ``data``'s K split (resuming or reusing its cache folder), or
    loaded from ``checkpoint``; extracting in ``precision``."""
    seed_everything(spec.training.seed)
    if checkpoint is not None:
        return load_part_extractor(spec, checkpoint, device=cache.runtime.device, precision=precision,
                                   log=cache.runtime.log)
    model, directory = train_or_load_part_extractor(
        spec, train_set=lambda: _training_images(data),
        val_set=lambda: PartSegmentationDataset(*split_paths(data.root, "val")),
        data_fingerprint=_training_fingerprint(data), cache=cache)
    return _part_extractor(model, directory / WEIGHTS_FILE, spec, cache.runtime.device, precision,
                           history=read_history(directory))


def trained_robust_part_extractor(spec: PartExtractorSpec, recipe: PartExtractorAdversarialTraining, data: DataSpec,
                                  cache: ModelCache, *, checkpoint: Path | None = None,
                                  precision: str = "float32") -> TrainedPartExtractor:
    """UnMask-R's robust K: the clean K of ``spec`` (trained first when the cache lacks it, or
    ``checkpoint``) fine-tuned adversarially as ``recipe`` says on ``data``'s K training split,
    with per-epoch validation on its val split (resuming or reusing its own cache folder,
    ``k-adv-<hash>`` of the clean weights and the recipe); ``spec``'s detection rule, extracting
    in ``precision``, stamped with its own weights' digest like every K."""
    clean = trained_part_extractor(spec, data, cache, checkpoint=checkpoint, precision=precision)
    seed_everything(spec.training.seed)
    model, directory = train_or_load_robust_part_extractor(
        spec, recipe, start=clean.extractor.model.state_dict(), train_set=lambda: _training_images(data),
        val_set=lambda: PartSegmentationDataset(*split_paths(data.root, "val")),
        data_fingerprint=_training_fingerprint(data), cache=cache)
    return _part_extractor(model, directory / WEIGHTS_FILE, spec, cache.runtime.device, precision,
                           history=read_history(directory))


def load_part_extractor(spec: PartExtractorSpec, weights_file: Path, *, device: torch.device | str,
                        precision: str = "float32", log: Callable[[str], None] = print) -> TrainedPartExtractor:
    """K as ``spec`` describes it with the weights of ``weights_file`` (``--k-checkpoint``, or a
    cache folder's ``weights.pt``; weights recorded for another architecture or image size are
    refused), extracting on ``device`` in ``precision``; nothing is trained or written."""
    model = replace(spec, pretrained=False).build()  # the weights come from the file
    load_part_extractor_weights(model, weights_file, spec, log=log)
    return _part_extractor(model, weights_file, spec, device, precision)


def trained_surrogate_part_extractor(spec: PartExtractorSpec, data: DataSpec, cache: ModelCache, *,
                                     precision: str = "float32") -> TrainedPartExtractor:
    """K', the transfer threat model's surrogate of K: K's architecture and recipe trained with
    another seed on a seeded half of K's training split (cached like K)."""
    spec = replace(spec, training=replace(spec.training, seed=spec.training.seed + 1))
    seed_everything(spec.training.seed)
    count = len(load_coco_parts(*split_paths(data.root, "train")))
    half = np.sort(np.random.default_rng(spec.training.seed).permutation(count)[:count // 2])
    model, directory = train_or_load_part_extractor(
        spec, train_set=lambda: Subset(_training_images(data), half.tolist()),
        val_set=lambda: PartSegmentationDataset(*split_paths(data.root, "val")),
        data_fingerprint=digest({"dataset": data.dataset, "train": part_data_fingerprint(data.root, "train"),
                                 "half": digest(half.tolist())}),
        cache=cache)
    return _part_extractor(model, directory / WEIGHTS_FILE, spec, cache.runtime.device, precision,
                           history=read_history(directory))


def _part_extractor(model: torch.nn.Module, weights_file: Path, spec: PartExtractorSpec, device: torch.device | str,
                    precision: str, *, history: list[dict[str, float]] | None = None) -> TrainedPartExtractor:
    """K's detection rule and inference precision around trained weights, and their fingerprint."""
    extractor = PartExtractor(model, score_threshold=spec.rule.score_threshold, device=device, precision=precision)
    fingerprint = {"weights": tensors_digest(model.state_dict()), "rule": asdict(spec.rule), "precision": precision}
    return TrainedPartExtractor(extractor, weights_file.parent, fingerprint, weights_file, history)


def part_extractor_metrics(k: TrainedPartExtractor, data: DataSpec, cache: ModelCache) -> tuple[dict[str, Any], Path]:
    """K's COCO mAP and part-set precision/recall on the test split of ``data``, and the file
    they are kept in: ``<models>/evaluations/k-<digest>.json``, stamped with K's weights, its
    detection rule and the test split's contents (so any run of that K on that data reuses it,
    and no other does)."""
    fingerprint = {"k": k.fingerprint, "data": part_data_fingerprint(data.root, "test")}
    path = cache.folder("evaluations") / f"k-{digest(fingerprint)}.json"
    metrics = cached(path, fingerprint,
                     lambda: evaluate_part_extractor(k.extractor, *split_paths(data.root, "test"),
                                                     progress=cache.runtime.verbosity > 0),
                     save=lambda value, target: atomic_write_json(target, value),
                     load=lambda source: json.loads(source.read_text(encoding="utf-8")),
                     what="K's test metrics", log=cache.runtime.log)
    return metrics, path


# --- predictions --------------------------------------------------------------------------------


def attack_seed(seed: int, vector: AttackVector, model_role: str, batch: int) -> int:
    """The random-start seed of ``vector`` against one model (``m`` or ``adv-trained``) on one
    evaluation batch: the same whichever process attacks the batch, and whatever ran before."""
    return int(stable_hash([seed, vector.label, model_role, batch], length=12), 16)


def clean_predictions(images: torch.Tensor, m: ClassifierInference, adv_trained: ClassifierInference | None,
                      extractor: PartExtractor) -> Predictions:
    """What M, the baseline (if any) and K say about clean images."""
    extraction = extractor.extract(images)
    return Predictions(m=m.predict(images).cpu().numpy(), parts=extraction.parts,
                       part_scores=extraction.part_scores,
                       adv_trained=None if adv_trained is None else adv_trained.predict(images).cpu().numpy())


def attacked_predictions(vector: AttackVector, images: torch.Tensor, labels: torch.Tensor, m: ClassifierInference,
                         adv_trained: ClassifierInference | None, extractor: PartExtractor, *,
                         options: AttackOptions, seed: int, batch: int) -> tuple[Predictions, torch.Tensor]:
    """M's and K's view of one batch of images attacked through M's gradients, and the
    baseline's prediction on them attacked through its own gradients (gray-box: K is never
    attacked). Also returns the adversarial images (against M)."""
    torch.manual_seed(attack_seed(seed, vector, "m", batch))
    adversarial = attack(m.model, images, labels, vector, options)
    extraction = extractor.extract(adversarial)
    baseline_predictions = None
    if adv_trained is not None:
        torch.manual_seed(attack_seed(seed, vector, "adv-trained", batch))
        baseline_adversarial = attack(adv_trained.model, images, labels, vector, options)
        baseline_predictions = adv_trained.predict(baseline_adversarial).cpu().numpy()
    predictions = Predictions(m=m.predict(adversarial).cpu().numpy(), parts=extraction.parts,
                              part_scores=extraction.part_scores, adv_trained=baseline_predictions)
    return predictions, adversarial


def hard_verdict(m_prediction: np.ndarray, parts: np.ndarray, class_set: ClassSet,
                 detection_threshold: float, *, rule: DecisionRule | None = None,
                 part_scores: np.ndarray | None = None) -> Verdict:
    """UnMask's rules on M's classes (N,) and K's part matrix (N, 44): the set-Jaccard detection
    score against M's class, flagged when it is at least ``detection_threshold``, and the
    re-classification from the parts. With a fixed ``rule`` (``unmask.rules``), that rule's
    score, flag, re-classification and reject variant instead (``detection_threshold`` unused),
    on K's ``part_scores`` too (the part classifier reads them)."""
    if rule is not None:
        decision = rule.decide(Evidence(m_prediction, parts, part_scores))
        return Verdict(m_prediction=m_prediction, detection_score=decision.score, flagged=decision.flagged,
                       unmask_prediction=decision.reclassified, parts=parts, reject=rule.reject)
    scores = detection_scores(parts, m_prediction, class_set)
    return Verdict(m_prediction=m_prediction, detection_score=scores, flagged=scores >= detection_threshold,
                   unmask_prediction=reclassify_batch(parts, class_set), parts=parts)


def hard_judge(m: ClassifierInference, extractor: PartExtractor, class_set: ClassSet,
               detection_threshold: float, *, rule: DecisionRule | None = None) -> Judge:
    """The real, non-differentiable pipeline as the adaptive attacks' judge: M's argmax, K's
    detection rule, UnMask's set-Jaccard detection score against ``detection_threshold`` and its
    re-classification (or the deployed ``rule``'s decision), on the images as given (the attacks
    pass 8-bit ones)."""

    def judge(images: torch.Tensor) -> Verdict:
        predictions = clean_predictions(images, m, None, extractor)
        return hard_verdict(predictions.m, predictions.parts, class_set, detection_threshold, rule=rule,
                            part_scores=predictions.part_scores)

    return judge


def classifier_summary(trained: TrainedClassifier, images: torch.Tensor, labels: torch.Tensor,
                       vectors: tuple[AttackVector, ...], options: AttackOptions, *, seed: int) -> dict[str, float]:
    """Test accuracy of one trained M, clean and under ``vectors`` (what ``train-m`` prints)."""
    torch.manual_seed(seed)  # the random starts: the same figures on every run
    m = trained.inference
    figures = {"clean": (m.predict(images) == labels).float().mean().item()}
    for vector in vectors:
        adversarial = attack(m.model, images, labels, vector, options)
        figures[vector.label] = (m.predict(adversarial) == labels).float().mean().item()
    return figures

"""Training and evaluating K, the Mask R-CNN part extractor.

Training: SGD with a linear warm-up then cosine decay (stepped per iteration), horizontal-flip
augmentation from the dataset, mixed precision on a GPU, in the training loop of
``unmask.train.loop`` (per-epoch state for exact resume). The loop runs unchanged under ``torchrun``
(DistributedSampler, DistributedDataParallel, only rank 0 writes and shows progress).

Evaluation: COCO box and mask mAP with pycocotools' COCOeval on every detection (ranked by
score, as mAP requires), and the part-set precision and recall at K's score threshold, which is
what UnMask consumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from torchvision.models.detection import MaskRCNN
from tqdm import tqdm

from unmask.data.coco import PartSegmentationDataset, collate_detection
from unmask.io import atomic_write_json, stable_hash
from unmask.models.part_extractor import (
    DetectionRule,
    PartExtractor,
    build_part_extractor,
    check_pretrained,
    coco_weights_path,
)
from unmask.parts import PART_INDEX, PARTS
from unmask.provenance import file_digest
from unmask.runtime import init_distributed
from unmask.train import loop


@dataclass(frozen=True)
class PartExtractorTraining:
    """How K is trained: SGD at peak ``lr`` with ``warmup_steps`` of linear warm-up, then cosine
    decay to 0 over ``epochs`` (stepped per iteration); ``max_grad_norm`` clips the gradient
    norm (None: no clipping; from-scratch training at a high rate otherwise diverges in its
    first steps now and then); ``amp`` trains in float16 autocast (CUDA only)."""

    epochs: int = 40
    batch_size: int = 8
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    max_grad_norm: float | None = 10.0
    seed: int = 0
    amp: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"K training: expected epochs >= 1 and batch_size >= 1, got {self.epochs} and "
                             f"{self.batch_size}")


@dataclass(frozen=True)
class PartExtractorSpec:
    """Everything that determines a trained K, with the data it trains on: the architecture and
    its input side (``unmask.models.part_extractor``), COCO initialisation, the detection rule
    (its score threshold only affects inference) and the training."""

    architecture: str
    image_size: int
    training: PartExtractorTraining
    rule: DetectionRule = DetectionRule()
    pretrained: bool = False
    weights_path: str = ""

    def __post_init__(self) -> None:
        check_pretrained(self.architecture, self.pretrained)

    def build(self, *, allow_random_init: bool = False) -> MaskRCNN:
        """The untrained model (COCO weights when ``pretrained``)."""
        return build_part_extractor(self.architecture, image_size=self.image_size, pretrained=self.pretrained,
                                    weights_path=self.weights_path or None, allow_random_init=allow_random_init,
                                    rule=self.rule)

    @property
    def metadata(self) -> dict[str, object]:
        """What its weights file records, and loading checks: architecture, image size, parts."""
        return {"model": "part_extractor", "architecture": self.architecture, "image_size": self.image_size,
                "parts": list(PARTS)}


def part_extractor_cache_key(spec: PartExtractorSpec, data_fingerprint: str) -> str:
    """Folder name of a trained K: ``k-<hash>`` of what determines its weights: the spec but its
    detection rule (which only applies at inference, so changing it never retrains K), the
    training data's fingerprint and the COCO weights file it starts from."""
    return f"k-{stable_hash(_cache_identity(spec, data_fingerprint))}"


def _cache_identity(spec: PartExtractorSpec, data_fingerprint: str) -> dict[str, object]:
    determining = {key: value for key, value in dataclasses.asdict(spec).items() if key != "rule"}
    identity: dict[str, object] = {"spec": determining, "data": data_fingerprint}
    if spec.pretrained:
        identity["coco_weights"] = file_digest(coco_weights_path(spec.weights_path or None))
    return identity


def train_or_load_part_extractor(
    spec: PartExtractorSpec,
    *,
    train_set: Callable[[], Dataset],
    val_set: Callable[[], PartSegmentationDataset | None],
    data_fingerprint: str,
    cache: loop.ModelCache,
) -> tuple[MaskRCNN, Path]:
    """The K that ``spec`` describes, trained on ``train_set()`` (data with ``data_fingerprint``)
    in the cache's folder ``<part_extractor_cache_key>``, or loaded from there when finished;
    returns the model with its weights and the folder. The datasets are built only when
    training is needed."""
    model = spec.build(allow_random_init=cache.allow_random_init)
    if spec.pretrained and not coco_weights_path(spec.weights_path or None).is_file():
        spec = dataclasses.replace(spec, pretrained=False)  # random weights after all: cache it as such
    folder = cache.folder(part_extractor_cache_key(spec, data_fingerprint))
    runtime = cache.runtime
    finished = loop.describe_cache(folder, _cache_identity(spec, data_fingerprint), epochs=spec.training.epochs,
                              what=f"K ({spec.architecture})", log=runtime.log)
    if finished < spec.training.epochs:
        train_part_extractor(model, train_set(), val_set(), spec.training, device=runtime.device,
                             checkpoint_dir=folder, workers=runtime.workers,
                             score_threshold=spec.rule.score_threshold, progress=runtime.verbosity > 0,
                             metadata=spec.metadata)
    load_part_extractor_weights(model, folder / loop.WEIGHTS_FILE, spec, log=runtime.log)
    return model, folder


@dataclass
class PartExtractorTrainingResult:
    """What a call of ``train_part_extractor`` did: per-epoch ``history`` (mean losses, learning
    rate, seconds, validation part precision/recall), the loss of every step this call ran,
    the epochs it found finished, and the final weights file."""

    history: list[dict[str, float]]
    step_losses: list[float]
    resumed_epochs: int
    weights_path: Path | None
    seconds: float

    @property
    def steps(self) -> int:
        """Optimiser steps this call ran (0 when it found the training finished)."""
        return len(self.step_losses)


class TrainingStep:
    """What one batch of K's training trains on: the losses of each optimiser step the batch
    takes. This class is standard training (one step on the batch's own losses);
    ``unmask.train.robust_part_extractor.AdversarialStep`` trains on adversarial images."""

    replays: int = 1
    """Optimiser steps per batch (free adversarial training replays each batch)."""
    title: str = "K"
    """How progress bars and epoch lines name the model."""
    score: str | None = None
    """The epoch record's key whose highest value picks the kept epoch (None: the last)."""

    def settings(self) -> dict[str, object]:
        """What a resumed training must share with the interrupted one, beyond ``PartExtractorTraining``."""
        return {}

    def losses(self, network: nn.Module, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]], *,
               batch: int) -> Iterator[dict[str, torch.Tensor]]:
        """For each optimiser step on this batch (``replays`` of them), the named losses whose sum it
        minimises, with their graph; the loop steps the optimiser after each item, before asking
        for the next. ``batch``: the batch's number over the whole training (from 0)."""
        yield network(images, targets)

    def validate(self, model: nn.Module, val_set: PartSegmentationDataset, *, device: torch.device,
                 score_threshold: float) -> dict[str, float]:
        """Figures of the epoch's model beside the validation part precision and recall."""
        return {}


def warmup_cosine(total_steps: int, warmup_steps: int, *, warmup_factor: float = 0.001) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warm-up from ``warmup_factor`` to 1, then cosine to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return warmup_factor + (1 - warmup_factor) * step / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train_part_extractor(
    model: nn.Module,
    train_set: Dataset,
    val_set: PartSegmentationDataset | None,
    training: PartExtractorTraining,
    *,
    device: torch.device | str = "cpu",
    checkpoint_dir: str | Path | None = None,
    workers: int = 0,
    score_threshold: float = 0.5,
    progress: bool = True,
    metadata: Mapping[str, object] | None = None,
    step: TrainingStep | None = None,
) -> PartExtractorTrainingResult:
    """Train K (a torchvision ``MaskRCNN``) on ``train_set`` items ``(image, target)`` as
    ``training`` says; after every epoch, part-set precision/recall on ``val_set`` at
    ``score_threshold``. ``checkpoint_dir`` holds the per-epoch state (``unmask.train.loop``):
    a rerun resumes exactly, and a finished training is not repeated; the final weights are
    ``weights.pt``, with ``metadata``. ``step`` says what one batch trains on (None: the batch
    itself, ``TrainingStep``; adversarial training: ``unmask.train.robust_part_extractor``).
    """
    step = step or TrainingStep()
    device = torch.device(device)
    distributed = init_distributed(device)
    torch.manual_seed(training.seed)
    model.to(device)
    use_amp = training.amp and device.type == "cuda"
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=training.lr, momentum=training.momentum,
                                weight_decay=training.weight_decay)
    sampler: Any
    if distributed.enabled:
        sampler = DistributedSampler(train_set, num_replicas=distributed.world_size, rank=distributed.rank,
                                     shuffle=True, seed=training.seed, drop_last=True)
    else:
        sampler = RandomSampler(train_set, generator=torch.Generator())
    loader = DataLoader(train_set, batch_size=training.batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=collate_detection, drop_last=True, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0)
    if len(loader) == 0:
        raise ValueError(f"the training set has {len(train_set)} images, fewer than one batch of "
                         f"{training.batch_size} per process; lower the batch size")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        training.epochs * len(loader) * step.replays, training.warmup_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    network: nn.Module = model
    if distributed.enabled:
        network = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    show = progress and distributed.is_main
    step_losses: list[float] = []

    def run_epoch(epoch: int) -> dict[str, float]:
        if distributed.enabled:
            sampler.set_epoch(epoch - 1)
        else:
            sampler.generator.manual_seed(training.seed * 1_000_003 + epoch - 1)  # the same order after a resume
        network.train()
        sums: dict[str, float] = {}
        bar = tqdm(loader, desc=f"{step.title} epoch {epoch}/{training.epochs}", disable=not show, leave=False,
                   dynamic_ncols=True)
        for number, (images, targets) in enumerate(bar):
            images = [image.to(device, non_blocking=True) for image in images]
            targets = [{key: value.to(device, non_blocking=True) for key, value in t.items()} for t in targets]
            updates = step.losses(network, images, targets, batch=(epoch - 1) * len(loader) + number)
            while True:  # one optimiser step per item (several for free adversarial training's replays)
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    losses = next(updates, None)
                    if losses is None:
                        break
                    loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"K's training loss became {loss.item()} at epoch {epoch} "
                                             f"({_format_losses(losses)}); lower --k-lr or raise --k-warmup-steps")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if training.max_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(parameters, training.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step_losses.append(loss.item())
                for key, value in losses.items():
                    sums[key] = sums.get(key, 0.0) + value.item() / step.replays
                sums["loss"] = sums.get("loss", 0.0) + loss.item() / step.replays
                bar.set_postfix_str(_format_losses({"loss": loss, **losses}))
        bar.close()
        record = {**{key: value / len(loader) for key, value in sums.items()}, "lr": optimizer.param_groups[0]["lr"]}
        if val_set is not None and distributed.is_main:
            trained = loop.unwrap(network)
            record.update(_val_part_metrics(trained, val_set, device=device, score_threshold=score_threshold))
            record.update(step.validate(trained, val_set, device=device, score_threshold=score_threshold))
            network.train()
        return record

    def describe(record: dict[str, float]) -> str:
        return f"{step.title} epoch {record['epoch']}/{training.epochs}: " + ", ".join(
            f"{key} {value:.4g}" for key, value in record.items() if key != "epoch")

    result = loop.fit(model, epochs=training.epochs, run_epoch=run_epoch, optimizer=optimizer, scheduler=scheduler,
                 scaler=scaler, checkpoint_dir=checkpoint_dir, distributed=distributed,
                 settings={**dataclasses.asdict(training), "world_size": distributed.world_size, **step.settings()},
                 describe=describe if show else None, metadata=metadata, score=step.score)
    return PartExtractorTrainingResult(result.history, step_losses, result.resumed_epochs, result.weights_path,
                                       result.seconds)


def _format_losses(losses: dict[str, torch.Tensor]) -> str:
    short = {"loss_classifier": "cls", "loss_box_reg": "box", "loss_mask": "mask", "loss_objectness": "obj",
             "loss_rpn_box_reg": "rpn"}
    return " ".join(f"{short.get(key, key)}={value.item():.3f}" for key, value in losses.items())


def load_part_extractor_weights(model: nn.Module, path: str | Path, spec: PartExtractorSpec | None = None, *,
                                log: Callable[[str], None] = print) -> nn.Module:
    """Load trained weights (``weights.pt`` of ``train_part_extractor``, or a plain state dict)
    into ``model``; with ``spec``, weights recorded for another architecture or image size are
    refused, and ``log`` says when a plain state dict leaves that unchecked."""
    weights, metadata = loop.load_weights(path)
    if spec is not None:
        unchecked = loop.check_metadata(path, metadata, {k: v for k, v in spec.metadata.items() if k != "model"})
        if unchecked:
            log(f"warning: {path} does not record its model's {', '.join(unchecked)}; they cannot be checked")
    loop.load_model_weights(model, weights, source=path)
    return model


# --- evaluation ------------------------------------------------------------------------------


def part_set_precision_recall(predicted: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """Precision and recall of predicted part sets (bool (images, 44) each).

    ``part_precision``/``part_recall``: per image, then averaged over images (an empty
    prediction has precision 1, an empty truth recall 1). The ``_micro`` variants pool every
    (image, part) decision.
    """
    predicted, actual = np.asarray(predicted, dtype=bool), np.asarray(actual, dtype=bool)
    if predicted.shape != actual.shape:
        raise ValueError(f"predicted and actual part matrices differ in shape: {predicted.shape} vs {actual.shape}")
    hits = (predicted & actual).sum(axis=1)
    n_predicted, n_actual = predicted.sum(axis=1), actual.sum(axis=1)
    precision = np.where(n_predicted > 0, hits / np.maximum(n_predicted, 1), 1.0)
    recall = np.where(n_actual > 0, hits / np.maximum(n_actual, 1), 1.0)
    return {
        "part_precision": float(precision.mean()) if len(precision) else float("nan"),
        "part_recall": float(recall.mean()) if len(recall) else float("nan"),
        "part_precision_micro": float(hits.sum() / max(n_predicted.sum(), 1)),
        "part_recall_micro": float(hits.sum() / max(n_actual.sum(), 1)),
    }


def _actual_parts(dataset: PartSegmentationDataset) -> np.ndarray:
    actual = np.zeros((len(dataset), len(PARTS)), dtype=bool)
    for row, entry in enumerate(dataset.images):
        actual[row, entry.part_indices()] = True
    return actual


def _load_images(dataset: PartSegmentationDataset, indices: Sequence[int]) -> list[torch.Tensor]:
    return [dataset.image(i) for i in indices]


@torch.no_grad()
def _val_part_metrics(model: nn.Module, dataset: PartSegmentationDataset, *, device: torch.device,
                      score_threshold: float, batch_size: int = 32) -> dict[str, float]:
    extractor = PartExtractor(model, score_threshold=score_threshold, batch_size=batch_size, device=device)
    presence = np.concatenate([
        extractor.extract(_load_images(dataset, range(start, min(start + batch_size, len(dataset))))).parts
        for start in range(0, len(dataset), batch_size)
    ])
    metrics = part_set_precision_recall(presence, _actual_parts(dataset))
    return {"val_part_precision": metrics["part_precision"], "val_part_recall": metrics["part_recall"]}


COCO_STATS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")


def evaluate_part_extractor(
    extractor: PartExtractor,
    coco_file: str | Path,
    image_dir: str | Path,
    *,
    score_threshold: float | None = None,
    batch_size: int = 32,
    output_file: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """COCO mAP of K's boxes and masks (pycocotools COCOeval) and part-set precision/recall.

    mAP ranks every detection K returns, whatever its score; precision and recall count the
    detections scoring at least ``score_threshold`` (default: the extractor's). Detected parts
    are mapped back to the file's category ids by name (the UnMask dataset's start at 0).
    Returns ``map_box``, ``map_mask``, ``map_box_50``, ``map_mask_50`` (and the other COCO
    summary numbers), ``part_precision``, ``part_recall`` (per image, averaged over images),
    their ``_micro`` variants, the number of images and seconds; also written to ``output_file``.
    """
    started = time.perf_counter()
    threshold = extractor.score_threshold if score_threshold is None else score_threshold
    dataset = PartSegmentationDataset(coco_file, image_dir, cache=False)
    ground_truth = _ground_truth(coco_file)
    category_of_part = {PART_INDEX[c["name"]]: c["id"] for c in ground_truth.loadCats(ground_truth.getCatIds())}
    results: dict[str, list[dict[str, Any]]] = {"bbox": [], "segm": []}
    presence = np.zeros((len(dataset), len(PARTS)), dtype=bool)
    bar = tqdm(total=len(dataset), desc="K evaluation", disable=not progress, leave=False, dynamic_ncols=True)
    for start in range(0, len(dataset), batch_size):
        indices = range(start, min(start + batch_size, len(dataset)))
        extraction = extractor.extract(_load_images(dataset, indices), score_threshold=0.0, keep_detections=True)
        for row, detections in zip(indices, extraction.detections or [], strict=True):
            image_id = dataset.images[row].id
            presence[row, detections.parts[detections.scores >= threshold]] = True
            for box, part, score, mask in zip(detections.boxes, detections.parts, detections.scores,
                                              detections.masks, strict=True):
                common = {"image_id": image_id, "category_id": category_of_part[int(part)], "score": float(score)}
                x0, y0, x1, y1 = (float(v) for v in box)
                results["bbox"].append({**common, "bbox": [x0, y0, x1 - x0, y1 - y0]})
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                results["segm"].append({**common, "segmentation": {"size": rle["size"],
                                                                   "counts": rle["counts"].decode("ascii")}})
        bar.update(len(indices))
    bar.close()
    metrics: dict[str, Any] = {"images": len(dataset), "detections": len(results["bbox"]),
                               "score_threshold": threshold}
    for iou_type, suffix in (("bbox", "box"), ("segm", "mask")):
        stats = _coco_stats(ground_truth, results[iou_type], iou_type)
        for name, value in zip(COCO_STATS, stats, strict=True):
            metrics[name.replace("map", f"map_{suffix}", 1)] = value
    metrics.update(part_set_precision_recall(presence, _actual_parts(dataset)))
    metrics["seconds"] = time.perf_counter() - started
    if output_file is not None:
        atomic_write_json(output_file, metrics)
    return metrics


def _ground_truth(coco_file: str | Path) -> COCO:
    """The annotation file as pycocotools' COCO, with annotation ids renumbered from 1: COCOeval
    takes a match to annotation id 0 for no match, so files numbering from 0 lose a detection."""
    data = json.loads(Path(coco_file).read_text(encoding="utf-8"))
    for number, annotation in enumerate(data["annotations"], start=1):
        annotation["id"] = number
        annotation.setdefault("iscrowd", 0)
    ground_truth = COCO()
    ground_truth.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth.createIndex()
    return ground_truth


def _coco_stats(ground_truth: COCO, results: list[dict[str, Any]], iou_type: str) -> list[float]:
    """COCOeval's summary numbers (AP at IoU .50:.95, .50, .75, small, medium, large); zeros
    when there are no detections (pycocotools cannot load an empty result list)."""
    if not results:
        return [0.0] * len(COCO_STATS)
    with contextlib.redirect_stdout(io.StringIO()):
        detections = ground_truth.loadRes(results)
        evaluation = COCOeval(ground_truth, detections, iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # -1 marks "no ground truth of this size"; report it as NaN rather than a fake score
    return [float(v) if v >= 0 else float("nan") for v in evaluation.stats[: len(COCO_STATS)]]

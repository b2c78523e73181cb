"""Training M, the protected classifier, and its adversarially trained baseline.

The original's recipe is the ``paper`` profile: SGD lr 0.001, momentum 0.9, weight decay 0.0002,
batch 32, 30 epochs, keeping the epoch with the best validation accuracy. The baseline is Madry
et al.'s (2018) PGD-L-inf adversarial training (epsilon 4/255, 7 steps of 2/255, random start),
keeping the epoch with the best mean of clean and adversarial validation accuracy, as the original.

Training runs in ``unmask.train.loop.fit``: a checkpoint folder holds the per-epoch state for
exact resume, the kept weights (``weights.pt``) and the history. Runs unchanged under
``torchrun`` (data split across processes, DistributedDataParallel, files written by the main
process).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from unmask.attacks import GRAY_BOX_ATTACKS, AttackOptions, attack
from unmask.io import CheckpointError, stable_hash
from unmask.models.classifier import (
    INPUT_NORMALIZATIONS,
    build_classifier,
    imagenet_weights_file,
    pretrained_weights_available,
)
from unmask.models.original import ORIGINAL_ARCHITECTURES, file_sha256, original_weights
from unmask.provenance import file_digest
from unmask.runtime import Distributed, init_distributed, seed_everything
from unmask.train import loop
from unmask.train.loop import ModelCache, check_metadata, describe_cache, fit, load_model_weights, load_weights, unwrap

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
"""constant: the original's; cosine: decays from lr towards 0 over the epochs (per epoch)."""


@dataclass(frozen=True)
class AdversarialTraining:
    """Madry et al. 2018 PGD-L-inf adversarial training; sizes on the 0-255 scale.

    The model trains on PGD examples only; the same attack measures adversarial validation accuracy.
    """

    epsilon: float = 4.0
    steps: int = 7
    step_size: float = 2.0
    random_start: bool = True

    def __post_init__(self) -> None:
        if not (self.epsilon > 0 and self.step_size > 0 and self.steps >= 1):
            raise ValueError(f"adversarial training needs epsilon > 0, step_size > 0 and steps >= 1, got {self}")

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        options = AttackOptions(steps=self.steps, step_size=self.step_size, random_start=self.random_start)
        return attack(unwrap(model), images, labels, GRAY_BOX_ATTACKS.vector("pgd_linf", self.epsilon), options)


@dataclass(frozen=True)
class ClassifierTraining:
    """How M is trained: cross-entropy with ``optimizer`` at ``lr`` (``lr_schedule``: one of
    ``LR_SCHEDULES``) for ``epochs``, keeping the best validation epoch; ``augment`` flips,
    shifts and jitters the training images; ``amp`` trains in float16 autocast (CUDA only);
    ``adversarial`` trains on PGD examples instead of the clean images (the baseline)."""

    epochs: int = 30
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0002
    nesterov: bool = False
    lr_schedule: str = "constant"
    augment: bool = False
    seed: int = 0
    amp: bool = False
    adversarial: AdversarialTraining | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; expected one of: {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown learning-rate schedule {self.lr_schedule!r}; expected one of: "
                             f"{', '.join(LR_SCHEDULES)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"expected epochs >= 1 and batch_size >= 1, got {self.epochs} and {self.batch_size}")


@dataclass
class TrainResult:
    """A trained classifier (the best epoch's weights loaded) and how it got there."""

    model: nn.Module
    best_epoch: int
    """1-based epoch whose weights ``model`` holds."""
    history: list[dict[str, float]]
    """One entry per epoch: epoch, train_loss, train_accuracy (on the images trained on: adversarial ones with
    adversarial training), val_accuracy, val_adversarial_accuracy (adversarial training only), score, seconds."""
    checkpoint_dir: Path | None

    @property
    def best(self) -> dict[str, float]:
        return self.history[self.best_epoch - 1]


def train_classifier(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    training: ClassifierTraining,
    *,
    device: str | torch.device = "cpu",
    checkpoint_dir: str | Path | None = None,
    workers: int = 0,
    progress: bool = True,
    metadata: Mapping[str, object] | None = None,
) -> TrainResult:
    """Train ``model`` (taking [0, 1] images) as ``training`` says; keep the best validation epoch.

    The score of an epoch is the validation accuracy, or with adversarial training the mean of
    clean and adversarial validation accuracy; ties keep the earlier epoch. ``checkpoint_dir``
    (None: keep nothing on disk) holds the per-epoch training state (``unmask.train.loop``) and
    the best weights with ``metadata``. Returns the model with the best weights.
    """
    device = torch.device(device)
    runtime = init_distributed(device)
    model = model.to(device)
    if training.optimizer == "sgd":
        optim: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=training.lr, momentum=training.momentum,
                                                       weight_decay=training.weight_decay, nesterov=training.nesterov)
    else:
        optim = torch.optim.Adam(model.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=training.epochs)
                 if training.lr_schedule == "cosine" else None)
    scaler = torch.amp.GradScaler("cuda") if training.amp and device.type == "cuda" else None
    network = _wrap(model, device, runtime)
    train_sampler = DistributedSampler(train_set, num_replicas=runtime.world_size, rank=runtime.rank, shuffle=True,
                                       seed=training.seed)
    loader = DataLoader(train_set, batch_size=training.batch_size, sampler=train_sampler, num_workers=workers,
                        drop_last=len(train_set) > training.batch_size * runtime.world_size,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    show = progress and runtime.is_main

    def run_epoch(epoch: int) -> dict[str, float]:
        # augmentation and random starts: the same draws whether or not the run was resumed
        seed_everything(int(stable_hash([training.seed, epoch, runtime.rank]), 16))
        train_sampler.set_epoch(epoch)
        loss, accuracy = _train_epoch(network, loader, optim, device=device, augment=training.augment,
                                      adversarial=training.adversarial, scaler=scaler,
                                      description=f"epoch {epoch}/{training.epochs}" if show else None)
        if scheduler is not None:
            scheduler.step()
        return {"train_loss": loss, "train_accuracy": accuracy,
                **_validate(model, val_set, batch_size=training.batch_size, device=device,
                            adversarial=training.adversarial, runtime=runtime)}

    result = fit(model, epochs=training.epochs, run_epoch=run_epoch, optimizer=optim, scheduler=scheduler,
                 scaler=scaler, checkpoint_dir=checkpoint_dir, score="score", distributed=runtime,
                 settings={**dataclasses.asdict(training), "world_size": runtime.world_size},
                 describe=(lambda record: _describe(record, training.epochs)) if show else None,
                 metadata=metadata)
    model = unwrap(model).eval()
    return TrainResult(model=model, best_epoch=result.kept_epoch, history=result.history,
                       checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None)


def augment_batch(images: torch.Tensor, *, max_shift: float = 0.1, jitter: float = 0.2) -> torch.Tensor:
    """Random horizontal flip, translation by up to ``max_shift`` of the side (edge padding) and
    brightness/contrast jitter of up to ``jitter``, per image; draws from torch's global RNG."""
    count, _, height, width = images.shape
    flip = torch.rand(count, device=images.device) < 0.5
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    pad_y, pad_x = round(height * max_shift), round(width * max_shift)
    if pad_y or pad_x:
        padded = nn.functional.pad(images, (pad_x, pad_x, pad_y, pad_y), mode="replicate")
        offset_y = torch.randint(0, 2 * pad_y + 1, (count,)).tolist()
        offset_x = torch.randint(0, 2 * pad_x + 1, (count,)).tolist()
        images = torch.stack([padded[index, :, y:y + height, x:x + width]
                              for index, (y, x) in enumerate(zip(offset_y, offset_x, strict=True))])
    scale = 1 + (torch.rand(count, 2, 1, 1, 1, device=images.device) * 2 - 1) * jitter
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * scale[:, 0] + mean * scale[:, 1]
    return images.clamp(0, 1)


def _train_epoch(network: nn.Module, loader: DataLoader, optim: torch.optim.Optimizer, *, device: torch.device,
                 augment: bool, adversarial: AdversarialTraining | None, scaler: torch.amp.GradScaler | None,
                 description: str | None) -> tuple[float, float]:
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    batches = tqdm(loader, desc=description, leave=False, disable=description is None, unit="batch")
    for images, labels in batches:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if augment:
            images = augment_batch(images)
        if adversarial is not None:
            images = adversarial.perturb(network, images, labels)
        network.train()
        with torch.autocast(device.type, dtype=torch.float16, enabled=scaler is not None):
            logits = network(images)
            loss = nn.functional.cross_entropy(logits, labels)
        optim.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optim)
            scaler.update()
        else:
            loss.backward()
            optim.step()
        total_loss += loss.detach() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum()
        seen += len(labels)
        if description is not None:
            batches.set_postfix(loss=f"{total_loss.item() / seen:.3f}", refresh=False)
    return total_loss.item() / max(seen, 1), correct.item() / max(seen, 1)


def _validate(model: nn.Module, val_set: Dataset, *, batch_size: int, device: torch.device,
              adversarial: AdversarialTraining | None, runtime: Distributed) -> dict[str, float]:
    model = unwrap(model)
    model.eval()
    shard = torch.utils.data.Subset(val_set, range(runtime.rank, len(val_set), runtime.world_size))
    counts = torch.zeros(3, device=device)  # images, clean correct, adversarial correct
    for images, labels in DataLoader(shard, batch_size=batch_size):
        images, labels = images.to(device), labels.to(device)
        with torch.no_grad():
            counts[1] += (model(images).argmax(dim=1) == labels).sum()
        if adversarial is not None:
            adversarials = adversarial.perturb(model, images, labels)
            with torch.no_grad():
                counts[2] += (model(adversarials).argmax(dim=1) == labels).sum()
        counts[0] += len(labels)
    if runtime.enabled:
        dist.all_reduce(counts)
    images_seen = max(counts[0].item(), 1)
    record = {"val_accuracy": counts[1].item() / images_seen}
    if adversarial is not None:
        record["val_adversarial_accuracy"] = counts[2].item() / images_seen
        record["score"] = (record["val_accuracy"] + record["val_adversarial_accuracy"]) / 2
    else:
        record["score"] = record["val_accuracy"]
    return record


def _wrap(model: nn.Module, device: torch.device, runtime: Distributed) -> nn.Module:
    if not runtime.enabled:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _describe(record: dict[str, float], epochs: int) -> str:
    text = (f"epoch {record['epoch']}/{epochs}: loss {record['train_loss']:.3f}, train accuracy "
            f"{record['train_accuracy']:.3f}, val accuracy {record['val_accuracy']:.3f}")
    if "val_adversarial_accuracy" in record:
        text += f", val adversarial accuracy {record['val_adversarial_accuracy']:.3f}"
    return text + f" ({record['seconds']:.1f} s)"


# --- what determines a trained M, and the cache built on it ---------------------------------


@dataclass(frozen=True)
class ClassifierSpec:
    """Everything that determines a trained M, with the data it trains on: the architecture
    (``unmask.models.classifier.ARCHITECTURES``), its classes in label order, the image side,
    ImageNet initialisation (from ``weights_path`` or torchvision's cache) and the training."""

    architecture: str
    classes: tuple[str, ...]
    image_size: int
    training: ClassifierTraining
    pretrained: bool = False
    weights_path: str = ""

    @property
    def adversarial(self) -> bool:
        return self.training.adversarial is not None


    @property
    def metadata(self) -> dict[str, object]:
        """What its weights file records, and loading checks: architecture, classes, image size."""
        return {"model": "classifier", "architecture": self.architecture, "classes": list(self.classes),
                "image_size": self.image_size}


def classifier_cache_key(spec: ClassifierSpec, data_fingerprint: str) -> str:
    """Folder name of a trained M: ``m-<hash>``, or ``m-adv-<hash>`` for adversarial training, of
    the spec, the training data's fingerprint and the ImageNet weights file it starts from."""
    prefix = "m-adv" if spec.adversarial else "m"
    return f"{prefix}-{stable_hash(_cache_identity(spec, data_fingerprint))}"


def _cache_identity(spec: ClassifierSpec, data_fingerprint: str) -> dict[str, object]:
    identity: dict[str, object] = {"spec": dataclasses.asdict(spec), "data": data_fingerprint}
    if spec.pretrained:
        identity["imagenet_weights"] = file_digest(spec.weights_path or imagenet_weights_file(spec.architecture))
    return identity


def train_or_load_classifier(
    spec: ClassifierSpec,
    *,
    train_set: Dataset,
    val_set: Dataset,
    data_fingerprint: str,
    cache: ModelCache,
) -> TrainResult:
    """Build and train the M that ``spec`` describes on data with ``data_fingerprint`` in the
    cache's folder ``<classifier_cache_key>``: resumes an interrupted run, and returns a finished
    one without training. The cache's log says which of the three it does, and why."""
    torch.manual_seed(spec.training.seed)  # the initial weights
    model = build_classifier(spec.architecture, len(spec.classes), pretrained=spec.pretrained,
                             weights_path=spec.weights_path or None, allow_random_init=cache.allow_random_init)
    if spec.pretrained and not pretrained_weights_available(spec.architecture, spec.weights_path or None):
        spec = dataclasses.replace(spec, pretrained=False)  # random weights after all: cache it as such
    folder = cache.folder(classifier_cache_key(spec, data_fingerprint))
    runtime = cache.runtime
    describe_cache(folder, _cache_identity(spec, data_fingerprint), epochs=spec.training.epochs,
                   what=f"M ({spec.architecture}{', adversarially trained' if spec.adversarial else ''})",
                   log=runtime.log)
    return train_classifier(model, train_set, val_set, spec.training, device=runtime.device, checkpoint_dir=folder,
                            workers=runtime.workers, progress=runtime.verbosity > 0, metadata=spec.metadata)


def load_trained_classifier(path: str | Path, spec: ClassifierSpec, *, device: str | torch.device = "cpu",
                            log: Callable[[str], None] = print) -> nn.Module:
    """A trained M from a weights file (``weights.pt`` of a checkpoint folder, or any state dict of
    classifier ``spec.architecture``), in eval mode on ``device``. Weights recorded for another
    architecture, other classes (or another order of them) or another image size are refused;
    a plain state dict cannot be checked, and ``log`` says so. M normalises its input as the file
    records (``input_normalization``: the original's imported M takes un-normalised images)."""
    weights, metadata = load_weights(path)
    unchecked = check_metadata(path, metadata, {key: value for key, value in spec.metadata.items() if key != "model"})
    if unchecked:
        log(f"warning: {path} does not record its model's {', '.join(unchecked)}; they cannot be checked against "
            f"this run ({', '.join(spec.classes)} at {spec.image_size} px)")
    model = build_classifier(spec.architecture, len(spec.classes),
                             input_normalization=recorded_input_normalization(path, metadata))
    load_model_weights(model, weights, source=path)
    return model.to(device).eval()


def load_classifier_file(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[nn.Module, ClassifierSpec]:
    """A trained M from a weights file this project wrote (a cache folder's ``weights.pt``, or
    ``import-m``'s file), built from what the file records (architecture, classes in label
    order, image size, input normalisation), in eval mode on ``device``; with the spec read off
    the file (its ``training`` is the default: the file does not record how it was trained)."""
    _, metadata = load_weights(path)
    if not metadata or metadata.get("model") != "classifier" or not {"architecture", "classes", "image_size"} <= set(
            metadata):
        raise CheckpointError(f"{path} does not record which classifier it holds (architecture, classes, image "
                              "size); expected a weights file of python main.py (models/m-*/weights.pt) or of "
                              "import-m. A plain state dict needs its architecture and classes: build the model and "
                              "load it yourself")
    spec = ClassifierSpec(str(metadata["architecture"]), tuple(metadata["classes"]), int(metadata["image_size"]),
                          ClassifierTraining())
    return load_trained_classifier(path, spec, device=device), spec


INPUT_NORMALIZATION_KEY = "input_normalization"
"""The metadata field of a weights file that says what M does first to its images; a file without
it (every M this project trained before the field existed) normalises with ImageNet's mean/std."""


def recorded_input_normalization(path: str | Path, metadata: Mapping[str, object] | None) -> str:
    """The input normalisation the weights file ``path`` records (``INPUT_NORMALIZATIONS``)."""
    value = (metadata or {}).get(INPUT_NORMALIZATION_KEY, "imagenet")
    if value not in INPUT_NORMALIZATIONS:
        raise CheckpointError(f"{path} records {INPUT_NORMALIZATION_KEY} {value!r}; expected one of: "
                              f"{', '.join(INPUT_NORMALIZATIONS)}")
    return str(value)


def import_original_classifier(source: str | Path, destination: str | Path, spec: ClassifierSpec) -> nn.Module:
    """Write the original's released M (``source``: a torchvision model pickled whole, read safely
    by ``unmask.models.original``) as a weights file at ``destination`` that ``--m-checkpoint``
    loads with ``spec`` (architecture, classes in the class set's order, image size); returns it.

    The file records ``spec.metadata``, that M takes un-normalised images (as the original was
    trained) and the SHA-256 of ``source``; the head is reordered from the original's
    alphabetical labels to ``spec.classes``, so the imported M predicts what the original did."""
    if spec.architecture not in ORIGINAL_ARCHITECTURES:
        raise ValueError(f"the original's M is a torchvision model; --model {spec.architecture} is not one of: "
                         f"{', '.join(ORIGINAL_ARCHITECTURES)}")
    model = build_classifier(spec.architecture, len(spec.classes), input_normalization="none")
    weights = original_weights(source, network=model.network, classes=spec.classes)
    load_model_weights(model.network, weights, source=source)
    loop.save_weights(destination, model, {**spec.metadata, INPUT_NORMALIZATION_KEY: model.input_normalization,
                                      "source_sha256": file_sha256(source)})
    return model.eval()

"""Training M, the protected classifier, and its adversarially trained baseline.

The original's recipe is the ``paper`` profile: SGD lr 0.001, momentum 0.9, weight decay 0.0002,
batch 32, 30 epochs, keeping the epoch with the best validation accuracy. The baseline is Madry
et al.'s (2018) PGD-L-inf adversarial training (epsilon 4/255, 7 steps of 2/255, random start),
keeping the epoch with the best mean of clean and adversarial validation accuracy, as the original.

Each finished epoch leaves a training state in the checkpoint folder (``state.pt``), so a rerun
continues exactly where the last one stopped; the best epoch's weights are ``best.pt`` (a state
dict) and the per-epoch figures ``history.json``. Runs unchanged under ``torchrun`` (data split
across processes, DistributedDataParallel, files written by the main process).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from unmask.attacks import attack
from unmask.io import CheckpointError, atomic_torch_save, atomic_write_json, load_checkpoint, stable_hash
from unmask.models.classifier import build_classifier, pretrained_weights_available
from unmask.runtime import Distributed, init_distributed, seed_everything
from unmask.train.common import load_model_weights, load_training_state, save_training_state, unwrap

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
"""constant: the original's; cosine: decays from lr towards 0 over the epochs (per epoch)."""
STATE_FILE = "state.pt"
BEST_FILE = "best.pt"
HISTORY_FILE = "history.json"


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
        return attack(unwrap(model), images, labels, "pgd_linf", self.epsilon, steps=self.steps,
                      step_size=self.step_size, random_start=self.random_start)


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
    *,
    epochs: int,
    batch_size: int = 32,
    optimizer: str = "sgd",
    lr: float = 0.001,
    momentum: float = 0.9,
    weight_decay: float = 0.0002,
    nesterov: bool = False,
    lr_schedule: str = "constant",
    augment: bool = False,
    adversarial: AdversarialTraining | None = None,
    device: str | torch.device = "cpu",
    checkpoint_dir: str | Path | None = None,
    workers: int = 0,
    seed: int = 0,
    amp: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` (taking [0, 1] images) with cross-entropy; keep the best validation epoch.

    The score of an epoch is the validation accuracy, or with ``adversarial`` the mean of clean and
    adversarial validation accuracy; ties keep the earlier epoch. ``checkpoint_dir`` (None: keep
    nothing on disk) holds the per-epoch training state: a rerun with the same settings resumes
    after the last finished epoch, and one whose epochs are all done returns at once. ``amp``
    uses float16 autocast on CUDA (ignored elsewhere). ``lr_schedule``: one of ``LR_SCHEDULES``.
    Returns the model with the best weights.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of: {', '.join(OPTIMIZERS)}")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {lr_schedule!r}; expected one of: {', '.join(LR_SCHEDULES)}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"expected epochs >= 1 and batch_size >= 1, got {epochs} and {batch_size}")
    device = torch.device(device)
    runtime = init_distributed(device)
    model = model.to(device)
    settings = {"epochs": epochs, "batch_size": batch_size, "optimizer": optimizer, "lr": lr, "momentum": momentum,
                "weight_decay": weight_decay, "nesterov": nesterov, "lr_schedule": lr_schedule, "augment": augment,
                "seed": seed, "adversarial": dataclasses.asdict(adversarial) if adversarial else None,
                "world_size": runtime.world_size}  # a resumed run must continue the same run
    if optimizer == "sgd":
        optim: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                                       weight_decay=weight_decay, nesterov=nesterov)
    else:
        optim = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=epochs) if lr_schedule == "cosine" else None
    use_amp = amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None

    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    finished, history, best_epoch = 0, [], 0
    if folder is not None and (folder / STATE_FILE).is_file():
        # every epoch seeds its own RNG (below), so a resumed run needs no saved RNG state
        finished, extra = load_training_state(folder / STATE_FILE, model=model, optimizer=optim, scheduler=scheduler,
                                              scaler=scaler, restore_rng=False)
        _check_settings(folder / STATE_FILE, extra.get("settings", {}), settings)
        history, best_epoch = list(extra["history"]), int(extra["best_epoch"])
    best_weights = _state_copy(model) if folder is None else None

    if finished < epochs:
        network = _wrap(model, device, runtime)
        train_sampler = DistributedSampler(train_set, num_replicas=runtime.world_size, rank=runtime.rank,
                                           shuffle=True, seed=seed)
        loader = DataLoader(train_set, batch_size=batch_size, sampler=train_sampler, num_workers=workers,
                            drop_last=len(train_set) > batch_size * runtime.world_size,
                            pin_memory=device.type == "cuda", persistent_workers=workers > 0)
        show = progress and runtime.is_main
        for epoch in range(finished + 1, epochs + 1):
            started = time.perf_counter()
            # augmentation and random starts: the same draws whether or not the run was resumed
            seed_everything(int(stable_hash([seed, epoch, runtime.rank]), 16))
            train_sampler.set_epoch(epoch)
            loss, accuracy = _train_epoch(network, loader, optim, device=device, augment=augment,
                                          adversarial=adversarial, scaler=scaler,
                                          description=f"epoch {epoch}/{epochs}" if show else None)
            if scheduler is not None:
                scheduler.step()
            record = {"epoch": epoch, "train_loss": loss, "train_accuracy": accuracy}
            record.update(_validate(model, val_set, batch_size=batch_size, device=device,
                                    adversarial=adversarial, runtime=runtime))
            record["seconds"] = time.perf_counter() - started
            history.append(record)
            if best_epoch == 0 or record["score"] > history[best_epoch - 1]["score"]:
                best_epoch = epoch
                if folder is None:
                    best_weights = _state_copy(model)
                elif runtime.is_main:
                    atomic_torch_save(unwrap(model).state_dict(), folder / BEST_FILE)
            if folder is not None and runtime.is_main:
                save_training_state(folder / STATE_FILE, model=model, optimizer=optim, epoch=epoch, scheduler=scheduler,
                                    scaler=scaler,
                                    extra={"history": history, "best_epoch": best_epoch, "settings": settings})
                atomic_write_json(folder / HISTORY_FILE, {"best_epoch": best_epoch, "history": history})
            if show:
                tqdm.write(_describe(record, epochs))
            runtime.barrier()

    model = unwrap(model)
    if folder is not None:
        load_model_weights(model, load_checkpoint(folder / BEST_FILE, map_location=device), source=folder / BEST_FILE)
    else:
        model.load_state_dict(best_weights)
    model.eval()
    return TrainResult(model=model, best_epoch=best_epoch, history=history, checkpoint_dir=folder)


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


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return copy.deepcopy(unwrap(model).state_dict())


def _check_settings(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    differences = [f"{key}: file {saved.get(key)!r}, now {value!r}" for key, value in current.items()
                   if saved.get(key) != value]
    if differences:
        raise CheckpointError(f"{path} was written by a training run with other settings ({'; '.join(differences)}); "
                              "use another checkpoint folder or delete this one to start over")


def _describe(record: dict[str, float], epochs: int) -> str:
    text = (f"epoch {record['epoch']}/{epochs}: loss {record['train_loss']:.3f}, train accuracy "
            f"{record['train_accuracy']:.3f}, val accuracy {record['val_accuracy']:.3f}")
    if "val_adversarial_accuracy" in record:
        text += f", val adversarial accuracy {record['val_adversarial_accuracy']:.3f}"
    return text + f" ({record['seconds']:.1f} s)"


# --- what determines a trained M, and the cache built on it ---------------------------------


@dataclass(frozen=True)
class ClassifierSpec:
    """Everything that determines a trained M; ``classifier_cache_key`` hashes it."""

    model: str
    classes: tuple[str, ...]
    image_size: int
    data_fingerprint: str
    pretrained: bool
    weights_path: str
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool
    lr_schedule: str
    augment: bool
    seed: int
    adversarial: AdversarialTraining | None = None


def classifier_specs(
    *,
    model: str,
    classes: Sequence[str],
    image_size: int,
    data_fingerprint: str,
    pretrained: bool,
    weights_path: str,
    epochs: int,
    batch_size: int,
    optimizer: str,
    lr: float,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
    lr_schedule: str,
    augment: bool,
    seed: int,
    adv_training: bool,
    adv_epsilon: float,
    adv_steps: int,
    adv_step_size: float,
    adv_random_start: bool,
    adv_epochs: int,
) -> tuple[ClassifierSpec, ClassifierSpec | None]:
    """The standard M and, with ``adv_training``, the adversarially trained M, from the experiment's
    options (named as the configuration fields). ``adv_epochs`` 0 means ``epochs``."""
    standard = ClassifierSpec(model=model, classes=tuple(classes), image_size=image_size,
                              data_fingerprint=data_fingerprint, pretrained=pretrained, weights_path=weights_path,
                              epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
                              weight_decay=weight_decay, nesterov=nesterov, lr_schedule=lr_schedule, augment=augment,
                              seed=seed)
    if not adv_training:
        return standard, None
    adversarial = AdversarialTraining(epsilon=adv_epsilon, steps=adv_steps, step_size=adv_step_size,
                                      random_start=adv_random_start)
    return standard, dataclasses.replace(standard, epochs=adv_epochs or epochs, adversarial=adversarial)


def classifier_cache_key(spec: ClassifierSpec) -> str:
    """Folder name of a trained M: ``m-<hash>``, or ``m-adv-<hash>`` for adversarial training."""
    prefix = "m-adv" if spec.adversarial is not None else "m"
    return f"{prefix}-{stable_hash(dataclasses.asdict(spec))}"


def train_or_load_classifier(
    spec: ClassifierSpec,
    *,
    train_set: Dataset,
    val_set: Dataset,
    models_dir: str | Path,
    device: str | torch.device,
    allow_random_init: bool = True,
    workers: int = 0,
    amp: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Build and train the M that ``spec`` describes in ``models_dir/<classifier_cache_key>``:
    resumes an interrupted run, and returns a finished one without training."""
    torch.manual_seed(spec.seed)  # the initial weights
    model = build_classifier(spec.model, len(spec.classes), pretrained=spec.pretrained,
                             weights_path=spec.weights_path or None, allow_random_init=allow_random_init)
    if spec.pretrained and not pretrained_weights_available(spec.model, spec.weights_path or None):
        spec = dataclasses.replace(spec, pretrained=False)  # random weights after all: cache it as such
    return train_classifier(
        model, train_set, val_set, epochs=spec.epochs, batch_size=spec.batch_size, optimizer=spec.optimizer,
        lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay, nesterov=spec.nesterov,
        lr_schedule=spec.lr_schedule, augment=spec.augment, adversarial=spec.adversarial, device=device,
        checkpoint_dir=Path(models_dir) / classifier_cache_key(spec), workers=workers, seed=spec.seed, amp=amp,
        progress=progress,
    )


def load_trained_classifier(path: str | Path, name: str, num_classes: int, *,
                            device: str | torch.device = "cpu") -> nn.Module:
    """A trained M from a weights file (``best.pt`` of a checkpoint folder, or any state dict of
    classifier ``name`` with ``num_classes`` classes), in eval mode on ``device``."""
    model = build_classifier(name, num_classes)
    load_model_weights(model, load_checkpoint(path), source=path)
    return model.to(device).eval()

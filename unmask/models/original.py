"""The original's released M: a whole torchvision model pickled with ``torch.save(model)``, read
without a full unpickle, as a state dict in this project's label order
(``unmask.train.classifier.import_original_classifier`` writes it as a weights file).

A full unpickle (``weights_only=False``) can run any code the file names, so the file is read
with ``torch.load(weights_only=True)`` and an explicit allow-list (``ORIGINAL_GLOBALS``) of the
torch and torchvision classes the four architectures of the paper (and ``resnet18``) are built
of, under ``torch.serialization.safe_globals``; any other global the file names (``posix.system``,
``builtins.exec``, a class of the original's own code) is refused before anything of it runs.

Two things differ in that M, and the import keeps both so that it predicts exactly as it did:

- its labels follow ``torchvision.datasets.ImageFolder``'s order of the class folders (sorted by
  name), not the class set's order: the head's output rows are permuted into the class set's
  order (the logits are permuted, not changed);
- it was trained on un-normalised [0, 1] images: its ``Classifier`` has no ImageNet mean/std
  layer (``input_normalization="none"``, recorded in the weights file).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import densenet, resnet, vgg

from unmask.io import CheckpointError, as_state_dict, checkpoint_error, load_checkpoint
from unmask.models.classifier import ARCHITECTURES

ORIGINAL_GLOBALS: tuple[type[nn.Module], ...] = (
    # the layers of ResNet, DenseNet and VGG
    nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Linear, nn.Dropout,
    nn.Sequential,
    # torchvision's model classes
    resnet.ResNet, resnet.BasicBlock, resnet.Bottleneck,
    densenet.DenseNet, densenet._DenseBlock, densenet._DenseLayer, densenet._Transition,
    vgg.VGG,
    # a model trained under nn.DataParallel is pickled inside it
    nn.DataParallel,
)
"""What a safe load may create from the original's pickle, beside what torch's ``weights_only``
load always allows (tensors, parameters, ``OrderedDict``, ``set``, dtypes: its own pickling).
Every entry is a module class: ``torch.save(model)`` stores each module as its class, created
with ``__new__``, and its attributes, set by ``nn.Module.__setstate__``; the most a tampered
file can make of one is a call of its constructor, which builds layers and nothing else."""

ORIGINAL_ARCHITECTURES: tuple[str, ...] = tuple(
    name for name, architecture in ARCHITECTURES.items() if architecture.weights is not None)
"""The architectures the original's M can be: torchvision's (those with ImageNet weights)."""

ORIGINAL_OPTION = "--original-m"
ORIGINAL_M = ("the original's M as torch.save(model) wrote it (torch 1.6 or later): a torchvision "
              f"{', '.join(ORIGINAL_ARCHITECTURES)} of only torch and torchvision classes, or that model's state dict "
              "(torch.save(model.state_dict()), e.g. saved from an older file where you trust it)")
"""What ``--original-m`` takes, as its errors say."""


def imagefolder_order(classes: Sequence[str]) -> tuple[str, ...]:
    """The label order ``torchvision.datasets.ImageFolder`` gave the original's class folders:
    sorted by name (``cs5-2``: bird, car, dog, person, train), whatever the class set's order."""
    return tuple(sorted(classes))


def original_weights(path: str | Path, *, network: nn.Module, classes: Sequence[str],
                     user_option: str = ORIGINAL_OPTION) -> dict[str, torch.Tensor]:
    """The original's M from ``path`` as a state dict for ``network`` (a torchvision model built
    with a head for ``classes``) whose head's outputs are in the order of ``classes``.

    ``path`` holds a whole torchvision model pickled by ``torch.save(model)`` (or inside
    ``nn.DataParallel``), or its state dict, with the head in ``imagefolder_order(classes)``.
    Raises ``CheckpointError`` naming the file for a global outside ``ORIGINAL_GLOBALS`` (and the
    refused class), a file that is not a torch pickle, a model of another class than ``network``'s
    or a head of another size; loading the result into ``network`` (``load_model_weights``)
    checks the rest of the architecture key by key.
    """
    path = Path(path)
    with torch.serialization.safe_globals(list(ORIGINAL_GLOBALS)):
        loaded = load_checkpoint(path, user_option=user_option, expected=ORIGINAL_M)
    weights = _network_weights(loaded, path, expected_type=type(network), user_option=user_option)
    head = _head_name(network)
    _check_head(weights, head, path, classes)
    return _in_class_set_order(weights, head, classes)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in chunks (the original's ResNet50 file is ~95 MB)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def _network_weights(loaded: Any, path: Path, *, expected_type: type[nn.Module], user_option: str,
                     ) -> dict[str, torch.Tensor]:
    """The torchvision state dict in what the safe load read: a model (unwrapped from
    DataParallel) of ``expected_type``, or a state dict (``module.`` prefixes of DataParallel dropped)."""
    if isinstance(loaded, nn.DataParallel):
        loaded = loaded.module
    if isinstance(loaded, nn.Module):
        if type(loaded) is not expected_type:
            raise CheckpointError(f"{path} (given with {user_option}) holds a {type(loaded).__module__}."
                                  f"{type(loaded).__name__}, not the {expected_type.__name__} of this run's --model; "
                                  "pass the --model it is")
        return dict(loaded.state_dict())
    if not isinstance(loaded, dict):
        raise checkpoint_error(path, f"it holds a {type(loaded).__name__}, not a model", user_option=user_option,
                               expected=ORIGINAL_M)
    weights = as_state_dict(loaded, path, user_option=user_option, expected=ORIGINAL_M)
    if weights and all(key.startswith("module.") for key in weights):
        weights = {key.removeprefix("module."): value for key, value in weights.items()}
    return weights


def _head_name(network: nn.Module) -> str:
    """The name of the classification head: the last linear layer (``fc`` of a ResNet,
    ``classifier`` of a DenseNet, ``classifier.6`` of a VGG)."""
    return [name for name, module in network.named_modules() if isinstance(module, nn.Linear)][-1]


def _check_head(weights: dict[str, torch.Tensor], head: str, path: Path, classes: Sequence[str]) -> None:
    """A head with another number of outputs than ``classes``, said in those words (the
    architecture itself is checked key by key when the weights are loaded)."""
    head_weight = weights.get(f"{head}.weight")
    if head_weight is not None and head_weight.ndim == 2 and head_weight.shape[0] != len(classes):
        raise CheckpointError(f"{path}: the model's head ({head}) has {head_weight.shape[0]} outputs, but this run's "
                              f"class set has {len(classes)} classes ({', '.join(classes)}); pass the --class-set "
                              "it was trained on")


def _in_class_set_order(weights: dict[str, torch.Tensor], head: str, classes: Sequence[str],
                        ) -> dict[str, torch.Tensor]:
    """``weights`` with the head's output rows moved from ``imagefolder_order(classes)`` to the
    order of ``classes``: output j of the result is the original's output for ``classes[j]``."""
    alphabetical = imagefolder_order(classes)
    rows = torch.tensor([alphabetical.index(name) for name in classes])
    reordered = dict(weights)
    for key in (f"{head}.weight", f"{head}.bias"):
        if key in reordered:
            reordered[key] = reordered[key][rows].clone()
    return reordered

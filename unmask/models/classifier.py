"""Model M: the protected classifier.

Every classifier takes images in [0, 1] (any size the architecture accepts) and returns logits;
the ImageNet mean/std normalisation is the model's first layer (none for the original's imported
M, which was trained on un-normalised images), so attacks and UnMask work in [0, 1] pixel space.
The paper's models (ResNet50, DenseNet121, VGG16, ResNet101) keep their torchvision architecture
with the head replaced for the class set; ``resnet18`` and ``compact`` are small enough for the
CPU demo.
"""

from __future__ import annotations

import re
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tv
from torchvision.models import WeightsEnum

from unmask.io import CheckpointError, UnmaskError, read_weights
from unmask.provenance import tensors_digest

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_NORMALIZATIONS: tuple[str, ...] = ("imagenet", "none")
"""What M does first to its [0, 1] images: ``imagenet`` normalises them with ImageNet's mean/std
(every M this project trains); ``none`` passes them on unchanged, as the original's M was trained."""
DOWNLOAD_TIMEOUT_S = 30


class PretrainedWeightsError(UnmaskError, RuntimeError):
    """ImageNet weights that were asked for but cannot be found or used; says what to fetch and where."""


def warn_random_weights(message: str) -> None:
    """Say on stderr, in a line of its own, that a model starts from random weights instead of the
    pretrained ones asked for: a Python warning may be filtered or scroll by unseen, and such a
    run's figures say nothing about the paper's."""
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; constants, so not part of the state dict."""

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


class Classifier(nn.Module):
    """[0, 1] images -> logits: normalisation (``input_normalization``, one of
    ``INPUT_NORMALIZATIONS``), then ``network``. Either way the state dict is the network's alone."""

    def __init__(self, network: nn.Module, *, name: str, num_classes: int,
                 input_normalization: str = "imagenet") -> None:
        super().__init__()
        if input_normalization not in INPUT_NORMALIZATIONS:
            raise ValueError(f"unknown input normalisation {input_normalization!r}; expected one of: "
                             f"{', '.join(INPUT_NORMALIZATIONS)}")
        self.input_normalization = input_normalization
        self.normalize = Normalize() if input_normalization == "imagenet" else nn.Identity()
        self.network = network
        self.name = name
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(self.normalize(images))


def _conv_block(in_channels: int, out_channels: int, *, kernel_size: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=(kernel_size - 1) // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class CompactCNN(nn.Sequential):
    """A small CNN for the CPU demo: 2x2 average pooling and a 2x2 stride-2 convolution (a 4x4
    stride-4 patch embedding whose patches are pooled first), two stride-2 3x3 blocks, global
    average pooling and a linear head; 24 k parameters at ``width=16``.

    Why this shape: an attack costs one forward and backward pass per step, at full input
    resolution. Pooling first keeps that cheap at 128 px (on a 2-core CPU, about twice the
    attack throughput of a plain 4x4 stride-4 convolution, whose input gradient is slow)."""

    def __init__(self, num_classes: int, *, width: int = 16) -> None:
        super().__init__(
            nn.AvgPool2d(2),
            _conv_block(3, width, kernel_size=2, stride=2),
            _conv_block(width, 2 * width, kernel_size=3, stride=2),
            _conv_block(2 * width, 4 * width, kernel_size=3, stride=2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * width, num_classes),
        )


@dataclass(frozen=True)
class Architecture:
    """How to build one classifier: the network with ImageNet's 1000-class head, its ImageNet
    weights (None: it has none) and how to swap the head for ``num_classes``."""

    build: Callable[[], nn.Module]
    weights: WeightsEnum | None
    replace_head: Callable[[nn.Module, int], None]


def _replace_attribute_head(attribute: str) -> Callable[[nn.Module, int], None]:
    def replace(network: nn.Module, num_classes: int) -> None:
        head = getattr(network, attribute)
        setattr(network, attribute, nn.Linear(head.in_features, num_classes))

    return replace


def _replace_vgg_head(network: nn.Module, num_classes: int) -> None:
    head = network.classifier[-1]
    network.classifier[-1] = nn.Linear(head.in_features, num_classes)


def _torchvision(builder: Callable[..., nn.Module], weights: WeightsEnum,
                 replace_head: Callable[[nn.Module, int], None]) -> Architecture:
    return Architecture(build=lambda: builder(weights=None), weights=weights, replace_head=replace_head)


def _compact() -> Architecture:
    # built directly with its final head; a 1000-class head would only be replaced
    return Architecture(build=lambda: CompactCNN(1000), weights=None, replace_head=_replace_compact_head)


def _replace_compact_head(network: nn.Module, num_classes: int) -> None:
    network[-1] = nn.Linear(network[-1].in_features, num_classes)


ARCHITECTURES: dict[str, Architecture] = {
    "compact": _compact(),
    "resnet18": _torchvision(tv.resnet18, tv.ResNet18_Weights.IMAGENET1K_V1, _replace_attribute_head("fc")),
    "resnet50": _torchvision(tv.resnet50, tv.ResNet50_Weights.IMAGENET1K_V1, _replace_attribute_head("fc")),
    "densenet121": _torchvision(tv.densenet121, tv.DenseNet121_Weights.IMAGENET1K_V1,
                                _replace_attribute_head("classifier")),
    "vgg16": _torchvision(tv.vgg16, tv.VGG16_Weights.IMAGENET1K_V1, _replace_vgg_head),
    "resnet101": _torchvision(tv.resnet101, tv.ResNet101_Weights.IMAGENET1K_V1, _replace_attribute_head("fc")),
}
"""The classifiers M can be, by name: the CPU demo's ``compact`` and ``resnet18``, then the paper's."""

CLASSIFIER_NAMES: tuple[str, ...] = tuple(ARCHITECTURES)

PAPER_IMAGE_SIZE = 150
"""The original's input side (Resize(150) -> CenterCrop(150)) for the paper's models."""


def build_classifier(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    allow_random_init: bool = True,
    input_normalization: str = "imagenet",
) -> Classifier:
    """Classifier ``name`` with a ``num_classes`` head, taking [0, 1] images (normalised first as
    ``input_normalization`` says: ``INPUT_NORMALIZATIONS``).

    With ``pretrained``, the backbone starts from ImageNet weights: the file ``weights_path``
    (a torchvision state dict, ``.pth`` or ``.safetensors``) or torchvision's file in
    ``torch.hub.get_dir()/checkpoints/``, downloaded there when this machine can. When neither
    can be had, ``allow_random_init`` starts from random weights with a WARNING line on stderr; otherwise
    ``PretrainedWeightsError`` says which file to fetch and where to put it.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown classifier {name!r}; expected one of: {', '.join(CLASSIFIER_NAMES)}")
    if num_classes < 2:
        raise ValueError(f"classifier {name}: expected at least 2 classes, got {num_classes}")
    architecture = ARCHITECTURES[name]
    network = architecture.build()
    if pretrained:
        weights = _imagenet_state_dict(name, architecture, weights_path, allow_random_init=allow_random_init)
        if weights is not None:
            _load_imagenet_weights(network, weights, name=name, source=weights_path or "torchvision's cache")
    architecture.replace_head(network, num_classes)
    return Classifier(network, name=name, num_classes=num_classes, input_normalization=input_normalization)


def imagenet_weights_file(name: str) -> Path | None:
    """Where torchvision keeps ``name``'s ImageNet weights (None: ``name`` has none)."""
    weights = ARCHITECTURES[name].weights
    if weights is None:
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def pretrained_weights_available(name: str, weights_path: str | Path | None = None) -> bool:
    """Whether ``build_classifier(name, pretrained=True)`` finds ImageNet weights without a download."""
    if weights_path:
        return Path(weights_path).is_file()
    file = imagenet_weights_file(name)
    return file is not None and file.is_file()


def _imagenet_state_dict(name: str, architecture: Architecture, weights_path: str | Path | None, *,
                         allow_random_init: bool) -> dict[str, torch.Tensor] | None:
    if weights_path:
        # a file the user named must exist: falling back to random weights would hide a typo
        return read_weights(Path(weights_path), user_option="--weights-path",
                           expected=f"ImageNet weights of {name} (a torchvision state dict, .pth or .safetensors)")
    file = imagenet_weights_file(name)
    if file is None:
        problem = f"classifier {name!r} has no ImageNet weights (only {', '.join(_with_weights())} do)"
    else:
        if not file.is_file():
            _try_download(architecture.weights.url, file)
        if file.is_file():
            return read_weights(file, expected=f"torchvision's ImageNet weights of {name}",
                                remedy=f"delete it and fetch {architecture.weights.url} again")
        problem = (f"the ImageNet weights of {name} are not on this machine and cannot be downloaded: fetch "
                   f"{architecture.weights.url} and put it at {file}, or pass its path with --weights-path")
    if allow_random_init:
        warn_random_weights(f"M ({name}) starts from random weights, not the ImageNet weights asked for: {problem}. "
                            "Its results will be far from the paper's (--no-allow-random-init stops instead)")
        return None
    raise PretrainedWeightsError(f"{problem} (or allow random initialisation with --allow-random-init)")


def _with_weights() -> list[str]:
    return [name for name, architecture in ARCHITECTURES.items() if architecture.weights is not None]


def _try_download(url: str, file: Path) -> None:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # an unreachable network must not hang the run
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(file), progress=False)
    except OSError:  # URLError, timeouts, unwritable cache: the caller explains what to do
        pass
    finally:
        socket.setdefaulttimeout(previous)


_OLD_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def _load_imagenet_weights(network: nn.Module, weights: dict[str, torch.Tensor], *, name: str, source: object) -> None:
    # torchvision's DenseNet files name layers "norm.1"; the modules are now "norm1"
    weights = {_OLD_DENSENET_KEY.sub(r"\1\2", key): value for key, value in weights.items()}
    try:
        network.load_state_dict(weights)
    except RuntimeError as error:
        first_line = str(error).splitlines()[0]
        raise CheckpointError(f"{source}: not ImageNet weights of {name} ({first_line})") from None


# --- inference speed: precision, memory format, compilation ----------------------------------------

PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
"""Inference precisions: ``auto`` is mixed precision on a CUDA GPU (bfloat16 autocast where the
GPU supports it, float16 otherwise) and float32 elsewhere; ``float32`` never autocasts;
``bfloat16`` and ``float16`` autocast on every device (on a CPU: torch's CPU autocast)."""


def autocast_dtype(device: torch.device | str, precision: str) -> torch.dtype | None:
    """The autocast dtype that ``precision`` means on ``device`` (None: plain float32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of: {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "float32":
        return None
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type not in ("cuda", "cpu"):  # e.g. mps: autocast support varies; stay exact
        return None
    return torch.bfloat16 if precision == "bfloat16" else torch.float16


@contextmanager
def inference_autocast(device: torch.device | str, precision: str) -> Iterator[torch.dtype | None]:
    """Run the block's inference in ``precision`` on ``device`` (``autocast_dtype``); yields the
    autocast dtype, or None when the block runs in float32."""
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        yield None
        return
    with torch.autocast(torch.device(device).type, dtype=dtype):
        yield dtype


def use_channels_last(model: nn.Module) -> nn.Module:
    """Keep ``model``'s 4-d weights in channels-last memory format (in place; returns it).

    Convolutions then run channels-last whatever the input's layout (oneDNN's and cuDNN's
    preferred one for mixed precision): on this project's 2-core CPU, ResNet50 at 150 px
    predicts about 1.3x and back-propagates (an attack step) about 1.25x faster; the
    ``compact`` CNN is about 15% slower, so it is not a default. The weights' values, the state
    dict and its digest do not change; outputs differ by float rounding only."""
    return model.to(memory_format=torch.channels_last)


def compile_model(model: nn.Module) -> nn.Module:
    """``torch.compile`` ``model``'s forward in place (``nn.Module.compile``: the state dict keeps
    its keys, so checkpoints are unaffected); returns it. The first call of every new input
    shape compiles (tens of seconds on a CPU); on this project's 2-core CPU the compiled
    ``compact`` CNN predicts 2x and back-propagates 1.35x faster, ResNet50 at 150 px gains
    under 10%, so it is off by default and worth trying mainly on a GPU."""
    model.compile()
    return model


@dataclass(frozen=True)
class InferenceOptions:
    """How the evaluation runs M and K: ``precision`` (``PRECISIONS``) for M's predictions and K's
    extraction, M in channels-last memory format (``use_channels_last``) and compiled
    (``compile_model``). None of it changes weights or what is cached; outputs differ by float
    rounding only (mixed precision: see ``predict`` and ``PartExtractor``)."""

    precision: str = "auto"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; expected one of: {', '.join(PRECISIONS)}")

    def effective_precision(self, device: torch.device | str) -> str:
        """What ``precision`` means on ``device``: float32, bfloat16 or float16 (e.g. for the
        fingerprint of saved predictions, which differ by rounding between precisions)."""
        dtype = autocast_dtype(device, self.precision)
        return "float32" if dtype is None else str(dtype).removeprefix("torch.")

    def prepare(self, model: nn.Module) -> nn.Module:
        """``model`` (M) made ready for the evaluation as these options say, in place; returns it."""
        if self.channels_last:
            use_channels_last(model)
        if self.compile:
            compile_model(model)
        return model


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, *, batch_size: int = 128,
            precision: str = "float32") -> torch.Tensor:
    """Predicted class indices (int64, on ``images``' device) of [0, 1] images, in eval mode
    on the model's device; the model's mode is restored afterwards.

    ``precision`` (``PRECISIONS``): ``auto`` predicts in mixed precision on a CUDA GPU (bfloat16
    where supported, else float16) and in float32 elsewhere. Mixed precision rounds the logits
    to about 3 significant digits, so an image whose two best classes are that close (an
    adversarial image just across the boundary) can get the other one."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with inference_autocast(device, precision):
            predictions = [
                model(images[start:start + batch_size].to(device, non_blocking=True)).argmax(dim=1).to(images.device)
                for start in range(0, len(images), batch_size)
            ]
    finally:
        model.train(was_training)
    return torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.int64, device=images.device)


class ClassifierInference:
    """M as the evaluation runs it: the model made ready as ``options`` say (channels-last and
    compiled in place, ``InferenceOptions.prepare``), on its device, predicting in the effective
    precision there. ``fingerprint`` is what every saved prediction of this M is stamped with:
    its weights and each inference setting that changes its float rounding (and so its attacks).

    ``model`` is what attacks differentiate through; ``predict`` is its argmax without gradients.
    """

    def __init__(self, model: nn.Module, options: InferenceOptions | None = None) -> None:
        options = options or InferenceOptions()
        self.weights = tensors_digest(model.state_dict())  # before compiling: the keys stay as saved
        # not in the state dict, yet it changes every prediction (the original's M takes raw pixels)
        self.input_normalization = getattr(model, "input_normalization", "imagenet")
        self.model = options.prepare(model)
        self.options = options
        self.device = next(model.parameters()).device
        self.precision = options.effective_precision(self.device)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """M's classes (int64, on ``images``' device) of [0, 1] images, in ``precision``."""
        return predict(self.model, images, precision=self.precision)

    @property
    def fingerprint(self) -> dict[str, object]:
        return {"weights": self.weights, "input_normalization": self.input_normalization,
                "precision": self.precision, "channels_last": self.options.channels_last, "compile": self.options.compile}

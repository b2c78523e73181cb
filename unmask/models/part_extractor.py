"""Model K: the Mask R-CNN part extractor over the 44 parts (+ background), one model for every
class set.

Three architectures, all torchvision ``MaskRCNN`` instances:

- ``slim`` (the default): a ResNet-18-style trunk at half width and three stages (strides 4, 8,
  16) with a 32-channel FPN, for the synthetic world on a CPU, trained from scratch. One attack
  step (forward and backward to the image) costs about a fifth of ``lean``'s FLOPs: the
  synthetic parts are flat shapes and textures a few to a few dozen pixels wide (median box side
  17 pixels, 99% under 80), so torchvision's box pooler sends nearly every RoI to the stride-4
  level and a fourth stage at stride 32 (a 4 x 4 map at 128 pixels) only fed proposals for
  objects larger than any part.
- ``lean``: a ResNet-18 FPN for the synthetic world on a CPU, trained from scratch (the default
  K before ``slim``; kept so that earlier figures stay reproducible).
- ``resnet50-fpn``: torchvision's Mask R-CNN v2 recipe (Li et al. 2021, "Benchmarking Detection
  Transfer Learning with Vision Transformers"), started from COCO weights when they are at hand;
  the faithful choice for real PASCAL-Part data (the original used a ResNet-101 Mask R-CNN in
  Keras).

Both synthetic-world Ks train their BatchNorm layers (torchvision's detection backbones freeze
BatchNorm, which only makes sense with pretrained statistics); FPN, heads, anchors and proposal
counts are sized for small images.

Detections follow the original's Mask R-CNN: each proposal reports one part, its most probable
class (proposals whose most probable class is the background report nothing), then per-part NMS
(IoU 0.3) and at most 100 detections. torchvision's default instead scores every part of every
proposal, so with no score threshold (the original) nearly every part would be "detected" in
every image.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import (
    MaskRCNN_ResNet50_FPN_V2_Weights,
    MaskRCNNHeads,
    MaskRCNNPredictor,
)
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.resnet import BasicBlock
from torchvision.ops import MultiScaleRoIAlign, batched_nms, clip_boxes_to_image, remove_small_boxes

from unmask.io import CheckpointError, read_weights
from unmask.models.classifier import PRECISIONS, inference_autocast, warn_random_weights
from unmask.parts import PARTS

PART_EXTRACTOR_NAMES: tuple[str, ...] = ("slim", "lean", "resnet50-fpn")
"""K's architectures, the default first."""

TRAINING_EPOCHS: dict[str, int] = {"slim": 10, "lean": 5, "resnet50-fpn": 40}
"""Each architecture's training epochs unless given (``--k-epochs 0``): the slim K's validation
part recall still rose at its tenth epoch (0.95 at the fifth, 0.98 at the tenth); the lean K's
five are those of every figure made with it; the original trained its K for 40."""

NUM_CLASSES = len(PARTS) + 1
"""44 parts + background; a part's label is its index in ``PARTS`` plus 1."""

COCO_WEIGHTS = MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1
COCO_WEIGHTS_FILE = COCO_WEIGHTS.url.rsplit("/", 1)[-1]


# --- detection post-processing ----------------------------------------------------------------


class PartRoIHeads(RoIHeads):
    """torchvision's RoI heads with the original's detection rule: one label per proposal.

    ``masks_enabled`` switches the mask branch off at inference when only the part sets are
    needed (pasting masks into the image is most of the synthetic-world Ks' inference time).
    """

    masks_enabled: bool = True

    @classmethod
    def replacing(cls, heads: RoIHeads) -> PartRoIHeads:
        """New heads with the same modules and settings as torchvision's ``heads``."""
        return cls(
            heads.box_roi_pool, heads.box_head, heads.box_predictor,
            fg_iou_thresh=heads.proposal_matcher.high_threshold,
            bg_iou_thresh=heads.proposal_matcher.low_threshold,
            batch_size_per_image=heads.fg_bg_sampler.batch_size_per_image,
            positive_fraction=heads.fg_bg_sampler.positive_fraction,
            bbox_reg_weights=heads.box_coder.weights,
            score_thresh=heads.score_thresh, nms_thresh=heads.nms_thresh,
            detections_per_img=heads.detections_per_img,
            mask_roi_pool=heads.mask_roi_pool, mask_head=heads.mask_head, mask_predictor=heads.mask_predictor,
        )  # fmt: skip

    def has_mask(self) -> bool:
        return self.masks_enabled and super().has_mask()

    @contextmanager
    def boxes_only(self) -> Iterator[None]:
        """Skip the mask branch inside the block."""
        previous, self.masks_enabled = self.masks_enabled, False
        try:
            yield
        finally:
            self.masks_enabled = previous

    def postprocess_detections(
        self,
        class_logits: torch.Tensor,
        box_regression: torch.Tensor,
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        # in float32 even under autocast: box decoding casts the proposals to the regression's dtype
        probabilities = class_logits.float().softmax(-1)
        scores, labels = probabilities.max(-1)
        boxes = self.box_coder.decode(box_regression.float(), proposals)  # (proposals, classes, 4)
        boxes = boxes[torch.arange(len(labels), device=labels.device), labels]
        counts = [len(p) for p in proposals]
        all_boxes, all_scores, all_labels = [], [], []
        for image_boxes, image_scores, image_labels, shape in zip(
            boxes.split(counts), scores.split(counts), labels.split(counts), image_shapes, strict=True
        ):
            image_boxes = clip_boxes_to_image(image_boxes, shape)
            keep = torch.where((image_labels > 0) & (image_scores >= self.score_thresh))[0]
            keep = keep[remove_small_boxes(image_boxes[keep], min_size=1e-2)]
            image_boxes, image_scores, image_labels = image_boxes[keep], image_scores[keep], image_labels[keep]
            keep = batched_nms(image_boxes, image_scores, image_labels, self.nms_thresh)[: self.detections_per_img]
            all_boxes.append(image_boxes[keep])
            all_scores.append(image_scores[keep])
            all_labels.append(image_labels[keep])
        return all_boxes, all_scores, all_labels


# --- building ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectionRule:
    """Which of K's detections count: those scoring at least ``score_threshold``, after per-part
    NMS at ``nms_threshold`` IoU, at most ``max_detections`` per image (the original's: every
    detection, NMS 0.3, 100)."""

    score_threshold: float = 0.0
    nms_threshold: float = 0.3
    max_detections: int = 100

    def __post_init__(self) -> None:
        for name in ("score_threshold", "nms_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"detection rule: {name} must lie in [0, 1], got {getattr(self, name)}")
        if self.max_detections < 1:
            raise ValueError(f"detection rule: max_detections must be at least 1, got {self.max_detections}")


def build_part_extractor(
    name: str,
    *,
    image_size: int,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    allow_random_init: bool = False,
    rule: DetectionRule = DetectionRule(),
    fpn_channels: int | None = None,
) -> MaskRCNN:
    """K as a torchvision ``MaskRCNN`` with ``NUM_CLASSES`` classes (label = part index + 1).

    - ``name``: ``slim`` or ``lean`` (from scratch; ``fpn_channels`` sets the FPN's width, 32 and
      64 by default, ``image_size`` the input size and anchors) or ``resnet50-fpn``
      (torchvision's v2 recipe at its own 800-pixel input scale; ``image_size`` and
      ``fpn_channels`` do not apply).
    - ``pretrained``: start ``resnet50-fpn`` from COCO weights, read from ``weights_path`` (a
      torch or safetensors file) or else torchvision's cache. Missing offline: a
      ``FileNotFoundError`` naming the file to fetch, or random weights with a WARNING line on
      stderr when ``allow_random_init``.
    - ``rule``: its NMS threshold and detection count; the model itself keeps detections of
      every score (COCO mAP ranks them all), ``PartExtractor`` applies the rule's score threshold.
    """
    check_pretrained(name, pretrained)
    detection = {"box_score_thresh": 0.0, "box_nms_thresh": rule.nms_threshold,
                 "box_detections_per_img": rule.max_detections}
    if name == "slim":
        model = _slim(image_size=image_size, fpn_channels=fpn_channels or 32, **detection)
    elif name == "lean":
        model = _lean(image_size=image_size, fpn_channels=fpn_channels or 64, **detection)
    else:
        model = _resnet50_fpn(pretrained=pretrained, weights_path=weights_path,
                              allow_random_init=allow_random_init, **detection)
    model.roi_heads = PartRoIHeads.replacing(model.roi_heads)
    # from the start, so training under autocast sees the same heads whether or not a validation
    # (which wraps the model in a PartExtractor) has run yet, and a resumed run the same as a whole one
    return float32_outputs(model)


def check_pretrained(name: str, pretrained: bool) -> None:
    """``ValueError`` for an unknown architecture, or for pretrained weights asked of one that
    has none (the synthetic-world Ks train from scratch)."""
    if name not in PART_EXTRACTOR_NAMES:
        raise ValueError(f"unknown part extractor {name!r}; expected one of: {', '.join(PART_EXTRACTOR_NAMES)}")
    if pretrained and name in ("slim", "lean"):
        raise ValueError(f"the {name} part extractor has no pretrained weights; it trains from scratch "
                         "(use --no-k-pretrained, or --k-model resnet50-fpn for COCO weights)")


class ChannelsLastBackbone(BackboneWithFPN):
    """A backbone that runs in channels-last memory format (oneDNN's native layout: the lean
    K extracted parts about 14% faster on a CPU); its weights are those of ``BackboneWithFPN``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return super().forward(x.contiguous(memory_format=torch.channels_last))


def _anchors(image_size: int, levels: int) -> AnchorGenerator:
    """One anchor size per pyramid level (strides 4, 8, ...), from 1/16 of the image doubling per
    level, in three aspect ratios."""
    sizes = tuple((max(4, round(image_size * fraction)),) for fraction in (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)[:levels])
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


def _small_image_mask_rcnn(backbone: BackboneWithFPN, *, image_size: int, stages: int, fpn_channels: int,
                           representation: int, proposals: int, proposals_before_nms: int,
                           **detection: Any) -> MaskRCNN:
    """torchvision's Mask R-CNN around ``backbone`` (``stages`` trunk stages plus the FPN's pooled
    level), sized for CPU training on small images: one RoIAlign sample per bin and 64 sampled
    RoIs per image (CPU RoIAlign backward is slow), and 7x7 mask features giving 14x14 masks,
    enough for parts a few to a few dozen pixels wide; together these halve a training step
    against torchvision's defaults. ``proposals`` per image at inference (at most 100, so that K's
    per-part NMS and top 100 never drop a part that a proposal reports: ``PartView`` relies on
    it), chosen among the ``proposals_before_nms`` best-scoring anchors of each level."""
    if proposals > 100:
        raise ValueError(f"at most 100 proposals per image (K's detections per image), got {proposals}")
    levels = [str(stage) for stage in range(stages)]
    return MaskRCNN(
        backbone,
        num_classes=None,
        min_size=image_size, max_size=image_size,
        rpn_anchor_generator=_anchors(image_size, stages + 1),
        rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=proposals_before_nms, rpn_post_nms_top_n_test=proposals,
        rpn_batch_size_per_image=128,
        box_roi_pool=MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=1),
        box_head=TwoMLPHead(fpn_channels * 7 * 7, representation),
        box_predictor=FastRCNNPredictor(representation, NUM_CLASSES),
        box_batch_size_per_image=64,
        mask_roi_pool=MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=1),
        mask_head=MaskRCNNHeads(fpn_channels, [fpn_channels, fpn_channels], 1, norm_layer=nn.BatchNorm2d),
        mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, NUM_CLASSES),
        **detection,
    )  # fmt: skip


class SlimTrunk(nn.Module):
    """A ResNet-18-style trunk: a 7x7 stride-2 stem, a max-pool, then two torchvision
    ``BasicBlock`` per stage at ``widths`` channels, strides 4, 8, 16, ... Its children are named
    as torchvision's ResNet's, so ``BackboneWithFPN`` takes its stages by name."""

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = widths[0]
        for stage, width in enumerate(widths, start=1):
            stride = 1 if stage == 1 else 2
            shortcut = None
            if stride != 1 or channels != width:
                shortcut = nn.Sequential(nn.Conv2d(channels, width, kernel_size=1, stride=stride, bias=False),
                                         nn.BatchNorm2d(width))
            self.add_module(f"layer{stage}", nn.Sequential(BasicBlock(channels, width, stride, shortcut),
                                                           BasicBlock(width, width)))
            channels = width


SLIM_WIDTHS = (32, 64, 128)
"""The slim trunk's channels per stage: ResNet-18's first three at half width."""


def _slim(*, image_size: int, fpn_channels: int, **detection: Any) -> MaskRCNN:
    backbone = ChannelsLastBackbone(
        SlimTrunk(SLIM_WIDTHS), return_layers={f"layer{stage}": str(stage - 1) for stage in range(1, 4)},
        in_channels_list=list(SLIM_WIDTHS), out_channels=fpn_channels,
    )
    # 64 proposals, not 100: RoIAlign and the box head cost per proposal, and an attack step runs
    # 14% faster; on the synthetic test split the part recall drops from 0.980 to 0.976 and mask
    # mAP@0.5 from 0.865 to 0.852 (measured on the trained K). 150 anchors per level before the
    # RPN's NMS, not 300: the same proposals survive (measured), with half the NMS work
    return _small_image_mask_rcnn(backbone, image_size=image_size, stages=len(SLIM_WIDTHS), fpn_channels=fpn_channels,
                                  representation=4 * fpn_channels, proposals=64, proposals_before_nms=150,
                                  **detection)


def _lean(*, image_size: int, fpn_channels: int, **detection: Any) -> MaskRCNN:
    trunk = resnet18(weights=None, norm_layer=nn.BatchNorm2d)
    backbone = ChannelsLastBackbone(
        trunk, return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[64, 128, 256, 512], out_channels=fpn_channels,
    )
    return _small_image_mask_rcnn(backbone, image_size=image_size, stages=4, fpn_channels=fpn_channels,
                                  representation=4 * fpn_channels, proposals=100, proposals_before_nms=300,
                                  **detection)


def coco_weights_path(weights_path: str | Path | None = None) -> Path:
    """Where COCO weights are looked for: the given file, else torchvision's cache."""
    if weights_path:
        return Path(weights_path)
    return Path(torch.hub.get_dir()) / "checkpoints" / COCO_WEIGHTS_FILE


def _resnet50_fpn(*, pretrained: bool, weights_path: str | Path | None, allow_random_init: bool,
                  **detection: Any) -> MaskRCNN:
    path = coco_weights_path(weights_path) if pretrained else None
    if path is not None and not path.is_file():
        if weights_path or not allow_random_init:
            raise FileNotFoundError(
                f"COCO Mask R-CNN weights {path} do not exist. Fetch {COCO_WEIGHTS.url} and put it there "
                f"(or pass --k-weights-path FILE), or train from scratch with --no-k-pretrained"
            )
        warn_random_weights(f"K (resnet50-fpn) starts from random weights, not the COCO weights asked for: {path} "
                            f"is missing (offline?); fetch {COCO_WEIGHTS.url} and put it there. Its parts will be "
                            "far from the paper's (--no-allow-random-init stops instead)")
        path = None
    model = maskrcnn_resnet50_fpn_v2(num_classes=len(COCO_WEIGHTS.meta["categories"]), **detection)
    if path is not None:
        if weights_path:
            weights = read_weights(path, user_option="--k-weights-path",
                                   expected="torchvision's COCO Mask R-CNN v2 weights (maskrcnn_resnet50_fpn_v2)")
        else:
            weights = read_weights(path, expected="torchvision's COCO Mask R-CNN v2 weights",
                                   remedy=f"delete it and fetch {COCO_WEIGHTS.url} again")
        try:
            model.load_state_dict(weights)
        except RuntimeError as error:  # torch lists every missing and unexpected key
            raise CheckpointError(f"{path}: not torchvision's COCO Mask R-CNN v2 weights "
                                  f"({str(error).splitlines()[0]})") from None
        # torchvision's fine-tuning default: the stem and first stage stay as COCO trained them
        for parameter_name, parameter in model.backbone.body.named_parameters():
            if not parameter_name.startswith(("layer2", "layer3", "layer4")):
                parameter.requires_grad_(False)
    # the 91 COCO classes' predictors give way to the parts'
    box_in = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(box_in, NUM_CLASSES)
    mask_in = model.roi_heads.mask_predictor.conv5_mask.in_channels
    model.roi_heads.mask_predictor = MaskRCNNPredictor(mask_in, 256, NUM_CLASSES)
    # channels-last convolutions, as the synthetic-world Ks': about 1.2x faster extraction at 800 px on a
    # 2-core CPU (float32 and bfloat16), and the layout GPUs' mixed-precision kernels prefer
    model.backbone.to(memory_format=torch.channels_last)
    return model


# --- extraction --------------------------------------------------------------------------------


@dataclass
class PartDetections:
    """One image's detections: boxes (D, 4) x0, y0, x1, y1 in pixels, part indices (D,) into
    ``PARTS``, scores (D,), and masks (D, H, W) bool."""

    boxes: np.ndarray
    parts: np.ndarray
    scores: np.ndarray
    masks: np.ndarray


@dataclass
class PartExtraction:
    """K's output for a batch of N images.

    ``parts`` (N, 44) bool (which parts K detected) and ``part_scores`` (N, 44) float (each
    part's highest detection score, 0 where absent) have one column per part of ``PARTS``: they
    are the part matrices ``unmask.defense`` takes (set Jaccard and its confidence-weighted
    variant). ``detections``: every kept detection per image, when asked for.
    """

    parts: np.ndarray
    part_scores: np.ndarray
    detections: list[PartDetections] | None = None


class PartExtractor:
    """K in inference mode: images in [0, 1] -> detected part sets, batched on K's device.

    ``score_threshold``: detections scoring at least this count (0.0: every detection K returns,
    as the original). ``batch_size``: images per forward pass. ``precision``
    (``unmask.models.classifier.PRECISIONS``): ``auto`` runs K in mixed precision on a CUDA GPU
    (bfloat16 autocast where the GPU supports it, float16 otherwise) and in float32 elsewhere;
    ``bfloat16`` forces autocast on a CPU too. Under autocast the convolutions and linear layers
    run in the low precision while the region proposals, box decoding, scores and NMS stay in
    float32 (``float32_outputs``), so only detections scoring within rounding of the threshold
    can change.
    """

    def __init__(self, model: MaskRCNN, *, score_threshold: float = 0.0, batch_size: int = 16,
                 device: torch.device | str | None = None, precision: str = "float32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected one of: {', '.join(PRECISIONS)}")
        self.model = float32_outputs(model)
        self.score_threshold = score_threshold
        self.batch_size = batch_size
        self.precision = precision
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device).eval()

    @torch.inference_mode()
    def extract(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        *,
        score_threshold: float | None = None,
        batch_size: int | None = None,
        keep_detections: bool = False,
    ) -> PartExtraction:
        """Parts detected in each image of ``images``: a tensor (N, 3, H, W) in [0, 1] (the one
        M sees) or a sequence of (3, H, W) tensors of any sizes. ``keep_detections`` also returns
        boxes, scores and masks (slower: masks are computed and pasted into the images).

        Images of different sizes are batched with others of the same orientation and similar
        size (results come back in the given order): a batch is padded to its largest height and
        width, so a portrait image beside landscape ones would nearly double its cost."""
        threshold = self.score_threshold if score_threshold is None else score_threshold
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"score_threshold must lie in [0, 1], got {threshold}")
        images = _check_images(images)
        batch_size = batch_size or self.batch_size
        self.model.eval()
        presence = torch.zeros(len(images), NUM_CLASSES, dtype=torch.bool)
        scores = torch.zeros(len(images), NUM_CLASSES)
        found: dict[int, PartDetections] = {}
        heads = self.model.roi_heads
        order = batch_order(images)
        for start in range(0, len(images), batch_size):
            indices = order[start:start + batch_size]
            batch = [images[index].to(self.device, torch.float32, non_blocking=True) for index in indices]
            with inference_autocast(self.device, self.precision):
                if keep_detections or not isinstance(heads, PartRoIHeads):
                    outputs = self.model(batch)
                else:
                    with heads.boxes_only():
                        outputs = self.model(batch)
            kept = [output["scores"] >= threshold for output in outputs]
            labels = torch.cat([o["labels"][k] for o, k in zip(outputs, kept, strict=True)]).cpu()
            best = torch.cat([o["scores"][k] for o, k in zip(outputs, kept, strict=True)]).float().cpu()
            rows = torch.repeat_interleave(torch.tensor(indices, dtype=torch.int64),
                                           torch.tensor([int(k.sum()) for k in kept]))
            presence[rows, labels] = True
            scores.view(-1).scatter_reduce_(0, rows * NUM_CLASSES + labels, best, reduce="amax")
            if keep_detections:
                found.update((index, _detections(o, k)) for index, o, k in zip(indices, outputs, kept, strict=True))
        detections = [found[index] for index in range(len(images))] if keep_detections else None
        return PartExtraction(presence[:, 1:].numpy(), scores[:, 1:].numpy(), detections)


def batch_order(images: Sequence[torch.Tensor]) -> list[int]:
    """The order in which ``extract`` batches ``images``: as given when they are all of one size
    (a tensor always is), else landscape before portrait, each by size (stable)."""
    if isinstance(images, torch.Tensor) or len({tuple(image.shape) for image in images}) <= 1:
        return list(range(len(images)))
    return sorted(range(len(images)), key=lambda index: (images[index].shape[1] > images[index].shape[2],
                                                         images[index].shape[1], images[index].shape[2]))


def _to_float32(module: nn.Module, inputs: Any, output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.float()
    if isinstance(output, (list, tuple)):
        return type(output)(_to_float32(module, inputs, item) for item in output)
    return output


def float32_outputs(model: MaskRCNN) -> MaskRCNN:
    """Make K's prediction heads return float32 under autocast (in place; returns ``model``).

    torchvision decodes boxes in the dtype of the regression outputs, casting the anchors and
    proposals to it: in bfloat16 (8 significant bits) a box corner near pixel 800 would be
    rounded to a multiple of 4 pixels. With these hooks the RPN head's objectness and deltas,
    the box predictor's scores and deltas and the mask logits are float32, so proposals, boxes,
    scores and NMS are computed as without autocast; the backbone, FPN and heads' layers still
    run in the low precision. Forward hooks: the state dict does not change. Idempotent."""
    for module in (model.rpn.head, model.roi_heads.box_predictor, model.roi_heads.mask_predictor):
        if module is not None and not getattr(module, "_unmask_float32_outputs", False):
            module.register_forward_hook(_to_float32)
            module._unmask_float32_outputs = True
    return model


def _check_images(images: torch.Tensor | Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
    if isinstance(images, torch.Tensor) and images.ndim != 4:
        raise ValueError(f"expected images as a tensor (N, 3, H, W), got shape {tuple(images.shape)}")
    for image in images:
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected RGB images (3, H, W), got shape {tuple(image.shape)}")
    if len(images) and isinstance(images, torch.Tensor) and (images.min() < 0 or images.max() > 1):
        raise ValueError(f"expected pixel values in [0, 1], got [{images.min():.3g}, {images.max():.3g}]")
    return images


def _detections(output: dict[str, torch.Tensor], kept: torch.Tensor) -> PartDetections:
    return PartDetections(
        boxes=output["boxes"][kept].float().cpu().numpy(),
        parts=(output["labels"][kept] - 1).cpu().numpy(),
        scores=output["scores"][kept].float().cpu().numpy(),
        masks=(output["masks"][kept, 0] >= 0.5).cpu().numpy(),
    )

"""Model K: the Mask R-CNN part extractor."""

PART_EXTRACTOR_NAMES: tuple[str, ...] = ("lean", "resnet50-fpn")

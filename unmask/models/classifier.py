"""Model M: the protected classifier."""

CLASSIFIER_NAMES: tuple[str, ...] = ("compact", "resnet18", "resnet50", "densenet121", "vgg16", "resnet101")

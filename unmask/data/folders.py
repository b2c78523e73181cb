"""M's images in the UnMask dataset's folder layout: ``<root>/<class set>/<split>/<class>/<image>``.

Labels follow the class set's order from ``unmask.parts.CLASS_SETS`` (not alphabetical, as
torchvision's ImageFolder would have it): that order fixes M's label indices and breaks UnMask's
re-classification ties. Images are decoded to RGB, ``Resize(size) -> CenterCrop(size)`` as the
original, and returned as float tensors in [0, 1].
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from unmask.constants import GREY_LEVELS, SPLITS
from unmask.data.images import IMAGE_SUFFIXES, BadImagesError, ImageError, check_images, open_rgb
from unmask.io import UnmaskError
from unmask.parts import ClassSet

PREPARE_HINT = "python main.py prepare --dataset synthetic generates the synthetic one"


class DataLayoutError(UnmaskError, FileNotFoundError):
    """A dataset folder that does not have the expected layout; the message names the folder."""


class ClassFolderDataset(Dataset[tuple[torch.Tensor, int]]):
    """One split of one class set: ``(image, label)`` pairs, image (3, size, size) in [0, 1].

    ``cache`` decodes every image once, here, and keeps it in memory as uint8 (a 128 px image
    takes 48 KiB): re-decoding files every epoch dominates training time on a small CPU. Then
    every file that cannot be decoded is found, and one ``BadImagesError`` lists them all.
    ``workers`` > 0 decodes them in that many worker processes (real JPEGs decode at a few
    hundred per second per core); the tensors are the same as with 0.
    """

    def __init__(self, root: str | Path, class_set: ClassSet, split: str, *, image_size: int,
                 cache: bool = False, workers: int = 0) -> None:
        self.class_set = class_set
        self.root = Path(root)
        self.folder = self.root / class_set.name / split
        self.image_size = image_size
        self.samples = _find_samples(self.folder, self.classes)
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.int64)
        self._cache = self._read_all(workers) if cache else None
        self._fingerprint: str | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        return self.class_set.classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self._cache[index] if self._cache is not None else self._read(self.samples[index][0])
        return image.float().div_(GREY_LEVELS), self.samples[index][1]

    def tensors(self, *, pin_memory: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """All images (N, 3, size, size) in [0, 1] and their int64 labels (N,). ``pin_memory``
        puts the images in page-locked memory (when CUDA is available), so that batches copy to
        the GPU asynchronously (``.to(device, non_blocking=True)``)."""
        if not self.samples:
            return torch.zeros(0, 3, self.image_size, self.image_size), self.labels.clone()
        images = torch.stack([self[index][0] for index in range(len(self))])
        if pin_memory and torch.cuda.is_available():
            images = images.pin_memory()
        return images, self.labels.clone()

    def fingerprint(self) -> str:
        """Digest of what this split feeds M: every image's name, label and decoded pixels at this
        image size (computed once). Any changed, added or removed image changes it; the same
        images copied elsewhere keep it."""
        if self._fingerprint is None:
            hasher = hashlib.sha256(f"{self.class_set.name}:{self.image_size}".encode())
            for index, (path, label) in enumerate(self.samples):
                pixels = self._cache[index] if self._cache is not None else self._read(path)
                hasher.update(f"{path.relative_to(self.folder).as_posix()}:{label}:".encode())
                hasher.update(pixels.numpy().tobytes())
            self._fingerprint = hasher.hexdigest()[:16]
        return self._fingerprint

    def _read_all(self, workers: int = 0) -> list[torch.Tensor]:
        paths = [path for path, _ in self.samples]
        if workers > 0 and len(paths) > 1:
            # batches of decoded images come back in order, one shared-memory tensor per batch
            loader = DataLoader(_Decoding(paths, self.image_size), batch_size=_DECODE_BATCH, num_workers=workers,
                                collate_fn=_collate_decoded)
            results = [result for batch in loader for result in _uncollate_decoded(*batch)]
        else:
            results = [_decode(path, self.image_size) for path in paths]
        failures = [(path, result) for path, result in zip(paths, results, strict=True) if isinstance(result, str)]
        if failures:
            raise BadImagesError(failures, total=len(self.samples), where=str(self.folder))
        return results

    def _read(self, path: Path) -> torch.Tensor:
        return read_resized(path, self.image_size)


_DECODE_BATCH = 16


def read_resized(path: Path, image_size: int) -> torch.Tensor:
    """An image file as uint8 (3, size, size): RGB, ``Resize(size) -> CenterCrop(size)``."""
    image = open_rgb(path)
    # PIL's bilinear resize with antialiasing, as the original's transforms.Resize on PIL images
    image = TF.center_crop(TF.resize(image, [image_size]), [image_size, image_size])
    return TF.pil_to_tensor(image)


def _decode(path: Path, image_size: int) -> torch.Tensor | str:
    """The decoded image, or why it cannot be decoded."""
    try:
        return read_resized(path, image_size)
    except ImageError as error:
        return error.reason
    except FileNotFoundError:  # removed since the folder was listed
        return "does not exist"


def _collate_decoded(results: list[torch.Tensor | str]) -> tuple[torch.Tensor | None, list[str | None]]:
    images = [result for result in results if not isinstance(result, str)]
    return (torch.stack(images) if images else None,
            [result if isinstance(result, str) else None for result in results])


def _uncollate_decoded(images: torch.Tensor | None, reasons: list[str | None]) -> list[torch.Tensor | str]:
    # a copy in ordinary memory: thousands of kept shared-memory tensors would each hold a file descriptor
    decoded = iter(images.clone().unbind(0) if images is not None else ())
    return [reason if reason is not None else next(decoded) for reason in reasons]


class _Decoding(Dataset):
    """Image files to decode in DataLoader workers: item i is ``_decode(paths[i])``."""

    def __init__(self, paths: Sequence[Path], image_size: int) -> None:
        self.paths = list(paths)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor | str:
        return _decode(self.paths[index], self.image_size)


def _find_samples(folder: Path, classes: tuple[str, ...]) -> list[tuple[Path, int]]:
    layout = f"<root>/<class set>/<split>/<class>/*{{{','.join(IMAGE_SUFFIXES)}}} with class folders {', '.join(classes)}"
    if not folder.is_dir():
        raise DataLayoutError(f"dataset folder {folder} does not exist; expected the layout {layout} "
                              f"({PREPARE_HINT})")
    samples: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        class_folder = folder / name
        if not class_folder.is_dir():
            raise DataLayoutError(f"class folder {class_folder} does not exist; expected the layout {layout} "
                                  f"({PREPARE_HINT})")
        images = sorted(path for path in class_folder.iterdir()
                        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."))
        if not images:
            raise DataLayoutError(f"class folder {class_folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        samples.extend((path, label) for path in images)
    return samples


def check_class_folders(root: str | Path, class_set: ClassSet, splits: Sequence[str] = SPLITS) -> int:
    """Check M's data before any work: every split's layout (``DataLayoutError`` naming the
    first missing or empty folder) and every image file's header (one ``BadImagesError`` listing
    every bad file of every split; see ``unmask.data.images.check_images``). Returns the number
    of image files checked."""
    paths = [path for split in splits for path, _ in _find_samples(Path(root) / class_set.name / split,
                                                                    class_set.classes)]
    return check_images(paths, where=f"{Path(root) / class_set.name} ({', '.join(splits)})")

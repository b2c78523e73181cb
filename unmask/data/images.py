"""Reading image files: the one decoder every loader uses, and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
"""File names loaders look for (case-insensitive)."""


def open_rgb(path: str | Path) -> Image.Image:
    """The image file at ``path`` as an 8-bit RGB PIL image (any format PIL reads: JPEG, PNG,
    BMP, GIF, WebP; grayscale, palette, CMYK and alpha images are converted).

    Raises ``FileNotFoundError`` or ``ValueError`` naming the file.
    """
    try:
        with Image.open(path) as file:
            return file.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} does not exist") from None
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ValueError(f"cannot decode image {path}: {error}. Expected a JPEG, PNG, BMP, GIF or WebP file") \
            from None


def read_image(path: str | Path) -> torch.Tensor:
    """An image file as a uint8 tensor (3, H, W), RGB."""
    return torch.from_numpy(np.asarray(open_rgb(path)).copy()).permute(2, 0, 1)

"""8-bit points of an L-inf ball around an 8-bit image: the inner points, the ball's corners and
uniform points, each drawn from a seed of its own per image (``engine.image_seed``)."""

from __future__ import annotations

import math

import torch

from unmask.attacks.adaptive.engine import image_seed
from unmask.constants import GREY_LEVELS

KINDS: tuple[str, ...] = ("inner", "uniform", "corner")


def grey_levels(epsilon: float) -> int:
    """An L-inf budget on the 0-255 scale as the whole grey levels an 8-bit point can move."""
    return int(math.floor(epsilon + 1e-9))


def ball_points(image: torch.Tensor, count: int, epsilon: float, *, kind: str, seed: int, index: int,
                stream: tuple[int | str, ...], gap: float = 0.0) -> torch.Tensor:
    """``count`` 8-bit points (count, 3, H, W) of the L-inf ball of radius ``epsilon`` (0-255 scale)
    around the 8-bit ``image`` (3, H, W) in [0, 1], clipped to [0, 1]:

    - ``inner``: uniform in the ball shrunk by ``gap``, each offset rounded towards the image to
      whole grey levels (so they stay strictly inside, at most floor((1 - gap) epsilon) levels);
    - ``uniform``: whole grey levels uniform in [-epsilon, epsilon];
    - ``corner``: +-epsilon on every pixel (the ball's corners, as far as the image allows).

    Drawn on the CPU from the seed of (``seed``, ``index``, ``stream``, ``kind``): an image's
    points do not depend on the other images."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of ball point {kind!r}; expected one of: {', '.join(KINDS)}")
    levels = grey_levels(epsilon)
    generator = torch.Generator().manual_seed(image_seed(seed, index, (*stream, kind)))
    shape = (count, *image.shape)
    if kind == "inner":
        offsets = torch.trunc(torch.empty(shape).uniform_(-1, 1, generator=generator) * (1 - gap) * epsilon)
    elif kind == "uniform":
        offsets = torch.randint(-levels, levels + 1, shape, generator=generator).float()
    else:
        offsets = (torch.randint(0, 2, shape, generator=generator) * 2 - 1).float() * levels
    points = image.detach().cpu().unsqueeze(0) + offsets / GREY_LEVELS
    return (torch.round(points * GREY_LEVELS) / GREY_LEVELS).clamp(0, 1).to(image.device)


def random_search_points(image: torch.Tensor, count: int, epsilon: float, *, seed: int, index: int,
                         stream: tuple[int | str, ...]) -> torch.Tensor:
    """The random search's ``count`` points: half uniform in the ball, half its corners (the
    reference code's surface and corner samples)."""
    corners = count // 2
    return torch.cat([ball_points(image, count - corners, epsilon, kind="uniform", seed=seed, index=index,
                                  stream=stream),
                      ball_points(image, corners, epsilon, kind="corner", seed=seed, index=index, stream=stream)])

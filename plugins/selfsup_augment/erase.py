"""``erase``: boxes erased from each image, several per image, drawn batch-wise.

Box count, area and aspect are ranges; the fill is per-pixel uniform noise,
zero or each image's mean colour. Kornia's ``RandomErasing`` erases one box
per call with a scalar fill, hence plain tensor ops. The ``cutout`` task
erases its boxes with this augmentation.

Example:
    >>> images, params = Erase(p=1.0, boxes=(1, 3))(torch.rand(4, 3, 32, 32))
    >>> params["boxes"].shape, params["mask"].shape
    (torch.Size([4, 3, 4]), torch.Size([4, 1, 32, 32]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from selfsup_augment.ops import select
from selfsup_core import Augmentation, AugmentationOptions, range_option
from selfsup_core.options import option, probability

Fill = Literal["noise", "zero", "mean"]
FILLS = get_args(Fill)


def draw_boxes(
    n: int,
    height: int,
    width: int,
    boxes: tuple[int, int],
    area: tuple[float, float],
    aspect: tuple[float, float],
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """Draw up to ``boxes[1]`` boxes for each of ``n`` images.

    Returns:
        ``(coords, active)``: ``coords`` is ``(n, K, 4)`` long ``(top, left,
        height, width)`` in pixels; ``active`` is ``(n, K)`` bool, True for the
        first ``count`` boxes of each image (count uniform in ``boxes``).
    """
    k = boxes[1]
    count = torch.randint(boxes[0], boxes[1] + 1, (n, 1), device=device)
    active = torch.arange(k, device=device) < count
    frac = torch.empty(n, k, device=device).uniform_(*area)
    # Log-uniform aspect so that 1/3 and 3 are equally likely.
    log_ar = torch.empty(n, k, device=device).uniform_(math.log(aspect[0]), math.log(aspect[1]))
    pixels = frac * height * width
    h = (pixels * log_ar.exp()).sqrt().round().clamp(1, height).long()
    w = (pixels / log_ar.exp()).sqrt().round().clamp(1, width).long()
    top = (torch.rand(n, k, device=device) * (height - h + 1)).long()
    left = (torch.rand(n, k, device=device) * (width - w + 1)).long()
    return torch.stack([top, left, h, w], dim=-1), active


def boxes_to_mask(coords: Tensor, active: Tensor, height: int, width: int) -> Tensor:
    """Rasterise boxes from :func:`draw_boxes` into a ``(n, 1, H, W)`` bool mask."""
    ys = torch.arange(height, device=coords.device)
    xs = torch.arange(width, device=coords.device)
    top, left, h, w = coords.unbind(-1)
    rows = (ys >= top[..., None]) & (ys < (top + h)[..., None]) & active[..., None]  # (n, K, H)
    cols = (xs >= left[..., None]) & (xs < (left + w)[..., None])  # (n, K, W)
    mask = torch.zeros(len(coords), height, width, dtype=torch.bool, device=coords.device)
    for i in range(coords.shape[1]):  # K is small; one (n, H, W) op per box slot
        mask |= rows[:, i, :, None] & cols[:, i, None, :]
    return mask[:, None]


@dataclass(frozen=True)
class EraseOptions(AugmentationOptions):
    """Options of :class:`Erase` (defaults after torchvision's ``RandomErasing``)."""

    p: float = option(0.5, check=probability, help="probability that an image has boxes erased")
    boxes: tuple[int, int] = range_option((1, 1), low=1, high=32, help="boxes per image (min, max), 1 to 32")
    area: tuple[float, float] = range_option((0.02, 0.33), low=1e-6, high=1.0,
                                             help="area of each box (min, max), as a fraction of the image")
    aspect: tuple[float, float] = range_option((0.3, 3.3), low=1e-3, high=1e3,
                                               help="height / width of each box (min, max), drawn log-uniformly")
    fill: Fill = option("zero", help="what fills the boxes: uniform per-pixel noise, zero, "
                                     "or each image's mean colour")


class Erase(Augmentation):
    """Erase boxes. Params: ``applied`` ``(B,)``, ``boxes`` ``(B, K, 4)`` (top, left,
    height, width in pixels), ``active`` ``(B, K)``, ``mask`` ``(B, 1, H, W)`` (the
    boxes, before ``applied``), and ``noise`` ``(B, C, H, W)`` for ``fill="noise"``."""

    name = "erase"
    summary = "Erase 1 or more boxes per image; fill with noise, zero or the image mean."
    Options = EraseOptions
    options: EraseOptions

    def sample(self, images: Tensor) -> dict[str, Tensor]:
        n, _, height, width = images.shape
        o = self.options
        coords, active = draw_boxes(n, height, width, o.boxes, o.area, o.aspect, device=images.device)
        params = {
            "applied": torch.rand(n, device=images.device) < o.p,
            "boxes": coords,
            "active": active,
            "mask": boxes_to_mask(coords, active, height, width),
        }
        if o.fill == "noise":
            params["noise"] = torch.rand_like(images)
        return params

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        if self.options.fill == "noise":
            fill = params["noise"].to(images.dtype)
        elif self.options.fill == "zero":
            fill = torch.zeros((), dtype=images.dtype, device=images.device)
        else:
            fill = images.mean(dim=(2, 3), keepdim=True)
        return select(params["mask"] & params["applied"][:, None, None, None], fill, images)

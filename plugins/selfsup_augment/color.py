"""``color_jitter`` and ``grayscale``: per-image colour changes as batched tensor arithmetic.

Colour jitter applies, in this fixed order (torchvision draws a random
order per call): brightness (multiply by ``b``), contrast (blend with the
image's mean grey by ``c``), saturation (blend with the pixel's grey by
``s``), hue (rotate the chroma plane of YIQ by ``h`` turns), clamping to
``[0, 1]`` after each step. Every factor is drawn per image; each step is one
broadcast op over the batch, the hue a per-image 3 x 3 matrix (``einsum``).
Grey is ITU-R 601 luma, as torchvision and Kornia use.

Example:
    >>> out, params = ColorJitter(p=1.0)(torch.rand(4, 3, 32, 32))
    >>> sorted(params)
    ['applied', 'brightness', 'contrast', 'hue', 'saturation']
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from selfsup_augment.ops import select
from selfsup_core import Augmentation, AugmentationOptions
from selfsup_core.options import option, probability, within

LUMA = (0.299, 0.587, 0.114)
# RGB -> YIQ (FCC NTSC); its first row is LUMA, so a hue rotation keeps the grey level.
RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.5959, -0.2746, -0.3213), (0.2115, -0.5227, 0.3112))
_TO_YIQ = torch.tensor(RGB_TO_YIQ, dtype=torch.float64)
_FROM_YIQ = torch.linalg.inv(_TO_YIQ)


def grey(images: Tensor) -> Tensor:
    """``(B, 1, H, W)`` luma of ``(B, 3, H, W)`` RGB images."""
    # Elementwise (no autocast to bf16), and twice as fast on a CPU as an einsum or a weighted sum.
    r, g, b = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    return (r * LUMA[0]).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2])


def hue_matrices(turns: Tensor) -> Tensor:
    """``(B, 3, 3)`` RGB matrices rotating the YIQ chroma plane by ``turns`` (a fraction of 360 degrees)."""
    to_yiq, from_yiq = _TO_YIQ.to(turns.device), _FROM_YIQ.to(turns.device)
    angle = 2 * math.pi * turns.double()
    cos, sin = angle.cos(), angle.sin()
    rotation = torch.zeros(len(turns), 3, 3, dtype=torch.float64, device=turns.device)
    rotation[:, 0, 0] = 1
    # Clockwise in the (I, Q) plane: a positive shift turns red towards yellow, as in HSV.
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, sin
    rotation[:, 2, 1], rotation[:, 2, 2] = -sin, cos
    return from_yiq @ rotation @ to_yiq


def _column(values: Tensor, like: Tensor) -> Tensor:
    return values.to(like.dtype)[:, None, None, None]


@dataclass(frozen=True)
class ColorJitterOptions(AugmentationOptions):
    """Options of :class:`ColorJitter` (SimCLR's strength-0.5 jitter, applied with p=0.8)."""

    brightness: float = option(0.4, check=within(0.0, 1.0), help="brightness factor drawn in [1-x, 1+x]")
    contrast: float = option(0.4, check=within(0.0, 1.0), help="contrast factor drawn in [1-x, 1+x]")
    saturation: float = option(0.4, check=within(0.0, 1.0), help="saturation factor drawn in [1-x, 1+x]")
    hue: float = option(0.1, check=within(0.0, 0.5), help="hue shift drawn in [-h, h] turns (0.5: half a turn)")
    p: float = option(0.8, check=probability, help="probability that an image is jittered")


class ColorJitter(Augmentation):
    """Brightness, contrast, saturation and hue, in that order, with probability ``p``.

    Params (``(B,)`` each): ``applied`` and the drawn ``brightness``,
    ``contrast``, ``saturation`` factors and ``hue`` shift.
    """

    name = "color_jitter"
    summary = "Jitter brightness, contrast, saturation and hue (fixed order), per image."
    Options = ColorJitterOptions
    options: ColorJitterOptions

    def sample(self, images: Tensor) -> dict[str, Tensor]:
        n, device, o = len(images), images.device, self.options

        def factor(x: float) -> Tensor:
            return torch.empty(n, device=device).uniform_(1 - x, 1 + x)

        return {
            "applied": torch.rand(n, device=device) < o.p,
            "brightness": factor(o.brightness),
            "contrast": factor(o.contrast),
            "saturation": factor(o.saturation),
            "hue": torch.empty(n, device=device).uniform_(-o.hue, o.hue),
        }

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        x = (images * _column(params["brightness"], images)).clamp(0, 1)
        mean = grey(x).mean(dim=(1, 2, 3), keepdim=True)
        x = torch.lerp(mean, x, _column(params["contrast"], x)).clamp(0, 1)
        x = torch.lerp(grey(x), x, _column(params["saturation"], x)).clamp(0, 1)
        x = torch.einsum("bij,bjhw->bihw", hue_matrices(params["hue"]).to(x.dtype), x).clamp(0, 1)
        return select(params["applied"], x, images)


@dataclass(frozen=True)
class GrayscaleOptions(AugmentationOptions):
    """Options of :class:`Grayscale`."""

    p: float = option(0.2, check=probability, help="probability that an image turns grey")


class Grayscale(Augmentation):
    """Grey (luma in all three channels) with probability ``p``. Params: ``applied`` ``(B,)``."""

    name = "grayscale"
    summary = "Turn images grey (luma in all three channels) with probability p."
    Options = GrayscaleOptions
    options: GrayscaleOptions

    def sample(self, images: Tensor) -> dict[str, Tensor]:
        return {"applied": torch.rand(len(images), device=images.device) < self.options.p}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        return select(params["applied"], grey(images).expand_as(images), images)

"""crappify's degradations as augmentations: ``down_up``, ``noise``, ``text`` and ``jpeg``.

Registered by this package's ``selfsup_register_augmentations`` hook, so any
task, ``finetune --augment`` and crappify itself use them by name. Each is
applied to an image with probability ``p`` and returns a per-image bool
``applied`` with its other draws; every other parameter is drawn for every
image, so a task may change ``applied`` between ``sample`` and ``apply``
(crappify does, to give every image at least one degradation).

Example:
    >>> out, params = Jpeg(p=1.0, quality=(10, 30))(torch.rand(4, 3, 32, 32))
    >>> params["quality"].shape, bool(params["applied"].all())
    (torch.Size([4]), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from selfsup_augment.ops import flags, select
from torch import Tensor

from selfsup_core import Augmentation, AugmentationOptions, range_option
from selfsup_core.options import at_least, option, probability
from selfsup_crappify.jpeg import jpeg
from selfsup_crappify.overlay import composite_marks, draw_marks, render_text_bank
from selfsup_crappify.resample import down_up


@dataclass(frozen=True)
class DownUpOptions(AugmentationOptions):
    """Options of :class:`DownUp`."""

    p: float = option(0.5, check=probability,
                      help="probability that an image is area down-sampled, then bilinearly up-sampled back")
    factor: tuple[float, float] = range_option(
        (1.5, 4.0), low=1.0, high=64.0, help="down-sampling factor (min, max), 1 to 64, drawn log-uniformly")


class DownUp(Augmentation):
    """Lose resolution: area down-sampling by a factor per image, bilinear back to size.

    Params: ``applied``, ``factor`` (``(B,)`` each).
    """

    name = "down_up"
    summary = "Down-sample each image by its own factor (area), then up-sample it back (bilinear)."
    Options = DownUpOptions
    options: DownUpOptions

    def sample(self, images: Tensor) -> dict[str, Tensor]:
        n, device = len(images), images.device
        lo, hi = self.options.factor
        factor = torch.empty(n, device=device).uniform_(math.log(lo), math.log(hi)).exp()
        return {"applied": flags(n, self.options.p, device), "factor": factor}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        return select(params["applied"], down_up(images, params["factor"]), images)


@dataclass(frozen=True)
class NoiseOptions(AugmentationOptions):
    """Options of :class:`Noise`."""

    p: float = option(0.5, check=probability, help="probability of additive Gaussian noise")
    std: tuple[float, float] = range_option(
        (0.02, 0.1), low=0.0, high=1.0, help="standard deviation (min, max) of the noise, in [0, 1] pixel units")


class Noise(Augmentation):
    """Additive Gaussian noise, a standard deviation per image, clamped to ``[0, 1]``.

    Params: ``applied``, ``std`` (``(B,)``) and the unit ``noise`` ``(B, C, H, W)``.
    """

    name = "noise"
    summary = "Add Gaussian noise with a standard deviation drawn per image."
    Options = NoiseOptions
    options: NoiseOptions

    def sample(self, images: Tensor) -> dict[str, Tensor]:
        n, device = len(images), images.device
        return {
            "applied": flags(n, self.options.p, device),
            "std": torch.empty(n, device=device).uniform_(*self.options.std),
            "noise": torch.randn_like(images),
        }

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        noisy = images + params["noise"].to(images.dtype) * params["std"].to(images.dtype)[:, None, None, None]
        return select(params["applied"], noisy.clamp(0, 1), images)


@dataclass(frozen=True)
class TextOptions(AugmentationOptions):
    """Options of :class:`Text`."""

    p: float = option(0.5, check=probability,
                      help="probability of overlaid text: random 1-6 character strings, random colour and opacity")
    marks: tuple[int, int] = range_option((1, 3), low=1, high=16, help="strings overlaid per image (min, max), 1 to 16")
    height: tuple[float, float] = range_option(
        (0.08, 0.25), low=0.01, high=1.0, help="text height (min, max), as a fraction of the image height")
    bank_size: int = option(64, check=at_least(1), help="rendered strings the text is drawn from")


class Text(Augmentation):
    """Overlaid strings from a bank rendered once (a non-persistent buffer ``bank``).

    Params: ``applied`` ``(B,)`` and, per mark slot, ``active``, ``which``,
    ``box``, ``opacity``, ``colour`` (see :func:`~selfsup_crappify.overlay.draw_marks`).
    """

    name = "text"
    summary = "Overlay 1-3 short random strings per image, in random colours and opacities."
    Options = TextOptions
    options: TextOptions

    def __init__(self, options: TextOptions | None = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        o = self.options
        # Rendered once (no bank when p is 0); follows the module to its device, stays out of checkpoints.
        bank = render_text_bank(o.bank_size) if o.p > 0 else torch.zeros(1, 1, 32, 128)
        self.register_buffer("bank", bank, persistent=False)

    def sample(self, images: Tensor) -> dict[str, Tensor]:
        marks = draw_marks(images, len(self.bank), self.options.marks, self.options.height)
        return {"applied": flags(len(images), self.options.p, images.device), **marks}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        marks = {key: value for key, value in params.items() if key != "applied"}
        return composite_marks(images, self.bank.to(images.device), marks, apply=params["applied"])


@dataclass(frozen=True)
class JpegOptions(AugmentationOptions):
    """Options of :class:`Jpeg`."""

    p: float = option(0.8, check=probability,
                      help="probability of JPEG artefacts (tensor-op JPEG, quality drawn per image)")
    quality: tuple[int, int] = range_option((10, 60), low=1, high=100,
                                            help="JPEG quality (min, max), whole numbers 1 to 100")


class Jpeg(Augmentation):
    """A baseline JPEG round trip at a quality per image (tensor ops, see :mod:`selfsup_crappify.jpeg`).

    Params: ``applied``, ``quality`` (``(B,)`` each; ``quality`` an integer).
    """

    name = "jpeg"
    summary = "JPEG artefacts at a quality drawn per image (block-DCT tensor ops on the device)."
    Options = JpegOptions
    options: JpegOptions

    def sample(self, images: Tensor) -> dict[str, Tensor]:
        n, device = len(images), images.device
        lo, hi = self.options.quality
        return {"applied": flags(n, self.options.p, device),
                "quality": torch.randint(lo, hi + 1, (n,), device=device)}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        return select(params["applied"], jpeg(images, params["quality"]), images)


DEGRADATIONS: tuple[type[Augmentation], ...] = (DownUp, Noise, Text, Jpeg)

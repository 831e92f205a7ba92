"""Pixel values in, encoder inputs out: the one uint8 -> float conversion and normaliser.

Images travel as uint8 and become floats in ``[0, 1]`` on the device
(:func:`to_unit_range`); tasks work in that range. Right before the network,
a :class:`Normalizer` built from the mean and std recorded with the encoder
(``encoder.json``) maps them to what the encoder expects, and maps back for
tasks or previews that need the image itself.

Example:
    >>> normalizer = Normalizer()
    >>> x = torch.rand(2, 3, 8, 8)
    >>> torch.allclose(normalizer.denormalize(normalizer.normalize(x)), x, atol=1e-6)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_unit_range(images: Tensor) -> Tensor:
    """uint8 images (any shape) as float32 in ``[0, 1]``, on the same device."""
    return images.float().div_(255)


class Normalizer(nn.Module):
    """Per-channel ``(x - mean) / std`` and its inverse, for ``(B, C, H, W)`` images.

    A module so its constants follow the model to the device; they are not
    saved in checkpoints (the encoder's ``encoder.json`` records them).

    Args:
        mean: Per-channel mean the encoder was trained with.
        std: Per-channel standard deviation, each above 0.
        channels_last: Return normalised images in channels-last memory
            format (faster convolutions on GPUs).

    Raises:
        ValueError: Not three finite means, or a std that is not above 0.
    """

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        check_statistics(mean, std)
        self.register_buffer("mean", torch.tensor(tuple(mean), dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(tuple(std), dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.channels_last = channels_last

    def normalize(self, images: Tensor) -> Tensor:
        """Images in ``[0, 1]`` -> what the encoder expects."""
        out = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def denormalize(self, inputs: Tensor) -> Tensor:
        """Normalised inputs -> images in ``[0, 1]`` (the inverse of :meth:`normalize`)."""
        return inputs * self.std.to(inputs.dtype) + self.mean.to(inputs.dtype)

    def forward(self, images: Tensor) -> Tensor:
        return self.normalize(images)


def check_statistics(mean: Sequence[float], std: Sequence[float]) -> None:
    """Raise ``ValueError`` unless mean and std are three finite numbers each, std > 0."""
    for name, values in (("mean", mean), ("std", std)):
        if (not isinstance(values, Sequence) or len(values) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           for v in values)):
            raise ValueError(f"{name} must be three finite numbers, got {values!r}")
    if not all(v > 0 for v in std):
        raise ValueError(f"std must be above 0 for every channel, got {tuple(std)!r}")

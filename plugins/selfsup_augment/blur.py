"""``blur``: Gaussian blur with a sigma per image, as one grouped separable convolution.

The batch's channels become the groups of one ``conv2d`` call per axis, each
with its own image's 1-D Gaussian, so every image gets its own sigma in two
convolutions whatever the batch size. The kernel spans about 10 % of the
image side (odd, at least 3; SimCLR's choice), borders are reflected.

Example:
    >>> out, params = Blur(p=1.0)(torch.rand(4, 3, 32, 32))
    >>> params["sigma"].shape, kernel_size(32, 32), kernel_size(224, 224)
    (torch.Size([4]), 3, 23)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup_augment.ops import select
from selfsup_core import Augmentation, AugmentationOptions, range_option
from selfsup_core.options import option, probability


def kernel_size(height: int, width: int) -> int:
    """About 10 % of the shorter side, odd, at least 3."""
    return max(3, int(0.1 * min(height, width)) | 1)


def gaussian_kernels(sigma: Tensor, size: int) -> Tensor:
    """``(B, size)`` normalised 1-D Gaussians, one per sigma."""
    x = torch.arange(size, dtype=sigma.dtype, device=sigma.device) - (size - 1) / 2
    kernels = torch.exp(-(x[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    return kernels / kernels.sum(dim=1, keepdim=True)


def gaussian_blur(images: Tensor, sigma: Tensor) -> Tensor:
    """Blur each image of ``(B, C, H, W)`` with its own ``sigma[b]`` (pixels)."""
    b, c, h, w = images.shape
    size = kernel_size(h, w)
    kernels = gaussian_kernels(sigma.to(images.dtype), size).repeat_interleave(c, dim=0)  # (B*C, size)
    pad = size // 2
    x = F.pad(images.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, kernels[:, None, None, :], groups=b * c)  # along W
    x = F.conv2d(x, kernels[:, None, :, None], groups=b * c)  # along H
    return x.view(b, c, h, w)


@dataclass(frozen=True)
class BlurOptions(AugmentationOptions):
    """Options of :class:`Blur` (SimCLR's blur)."""

    sigma: tuple[float, float] = range_option((0.1, 2.0), low=1e-3, high=100.0,
                                              help="standard deviation (min, max) of the Gaussian, in pixels")
    p: float = option(0.5, check=probability, help="probability that an image is blurred")


class Blur(Augmentation):
    """Gaussian blur, sigma uniform per image. Params: ``applied``, ``sigma`` (``(B,)`` each)."""

    name = "blur"
    summary = "Gaussian blur with a sigma drawn per image (kernel about 10% of the side)."
    Options = BlurOptions
    options: BlurOptions

    def sample(self, images: Tensor) -> dict[str, Tensor]:
        n, device = len(images), images.device
        return {
            "applied": torch.rand(n, device=device) < self.options.p,
            "sigma": torch.empty(n, device=device).uniform_(*self.options.sigma),
        }

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        return select(params["applied"], gaussian_blur(images, params["sigma"]), images)

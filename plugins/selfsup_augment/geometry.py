"""``crop_flip``: random resized crop and horizontal flip in one resampling.

Each image's crop box and flip become one affine map, so a single
``F.grid_sample`` call (bilinear) crops, flips and resizes the whole batch
back to its own size. Its grid is the one ``F.affine_grid`` gives for that
map, built by broadcasting (:func:`crop_grid`: ``affine_grid`` took longer
than ``grid_sample`` itself on a CPU). Against Kornia's ``RandomResizedCrop``
+ ``RandomHorizontalFlip``: docs/tasks.md ("Augmentations") has the timings.

Box sampling follows torchvision's ``RandomResizedCrop``: area fraction
uniform in ``scale``, aspect ratio log-uniform in ``ratio``; where the box
would not fit, its sides are clipped to the image (torchvision redraws up to
ten times, then falls back to a centre crop).

Example:
    >>> views, params = CropFlip(scale=(0.35, 1.0))(torch.rand(4, 3, 32, 32))
    >>> views.shape, params["box"].shape, params["flip"].dtype
    (torch.Size([4, 3, 32, 32]), torch.Size([4, 4]), torch.bool)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup_core import Augmentation, AugmentationOptions, range_option
from selfsup_core.options import option, probability


@dataclass(frozen=True)
class CropFlipOptions(AugmentationOptions):
    """Options of :class:`CropFlip` (torchvision's ``RandomResizedCrop`` defaults but ``scale``)."""

    scale: tuple[float, float] = range_option((0.2, 1.0), low=1e-4, high=1.0,
                                              help="area of the crop (min, max), as a fraction of the image")
    ratio: tuple[float, float] = range_option((0.75, 1.3333), low=1e-2, high=1e2,
                                              help="width / height of the crop (min, max), drawn log-uniformly")
    flip_p: float = option(0.5, check=probability, help="probability of a horizontal flip")


class CropFlip(Augmentation):
    """Random resized crop + horizontal flip, output the size of the input.

    Params: ``box`` ``(B, 4)`` = centre x, centre y, width, height as fractions
    of the image; ``flip`` ``(B,)`` bool.
    """

    name = "crop_flip"
    summary = "Random resized crop + horizontal flip, fused into one bilinear resampling."
    Options = CropFlipOptions
    options: CropFlipOptions

    def sample(self, images: Tensor) -> dict[str, Tensor]:
        n, _, height, width = images.shape
        device, o = images.device, self.options
        area = torch.empty(n, device=device).uniform_(*o.scale)
        log_ratio = torch.empty(n, device=device).uniform_(math.log(o.ratio[0]), math.log(o.ratio[1]))
        # In pixels w * h = area * W * H and w / h = ratio; as fractions of W and H:
        aspect = log_ratio.exp() * (height / width)
        w = (area * aspect).sqrt().clamp(max=1.0)
        h = (area / aspect).sqrt().clamp(max=1.0)
        cx = w / 2 + torch.rand(n, device=device) * (1 - w)
        cy = h / 2 + torch.rand(n, device=device) * (1 - h)
        flip = torch.rand(n, device=device) < o.flip_p
        return {"box": torch.stack([cx, cy, w, h], dim=1), "flip": flip}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        return F.grid_sample(images, crop_grid(params["box"], params["flip"], images),
                             mode="bilinear", padding_mode="border", align_corners=False)


def crop_grid(box: Tensor, flip: Tensor, images: Tensor) -> Tensor:
    """The ``(B, H, W, 2)`` sampling grid of each image's box, mirrored where ``flip``.

    The same grid as ``F.affine_grid`` with ``theta = [[±w, 0, 2cx - 1], [0, h,
    2cy - 1]]`` (``align_corners=False``), built by broadcasting: the map is
    axis-aligned, so x depends on the column only and y on the row only, and
    this takes a tenth of ``affine_grid``'s time (its batched matmul over every
    pixel cost more than ``grid_sample`` itself on a CPU).
    """
    n, _, height, width = images.shape
    cx, cy, w, h = box.to(images.dtype).unbind(1)
    sign = 1 - 2 * flip.to(images.dtype)
    # Pixel centres in normalised [-1, 1] output coordinates.
    xs = (torch.arange(width, dtype=images.dtype, device=images.device) * 2 + 1) / width - 1
    ys = (torch.arange(height, dtype=images.dtype, device=images.device) * 2 + 1) / height - 1
    gx = (sign * w)[:, None] * xs + (2 * cx - 1)[:, None]  # (B, W): input x read by each output column
    gy = h[:, None] * ys + (2 * cy - 1)[:, None]  # (B, H)
    return torch.stack([gx[:, None, :].expand(n, height, width), gy[:, :, None].expand(n, height, width)], dim=-1)

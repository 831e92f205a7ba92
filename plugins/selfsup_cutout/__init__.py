"""Built-in task ``cutout``: restore boxes erased from each image (inpainting).

Several boxes per image are drawn batch-wise on the device (count, area and
aspect ranges), filled with noise, zeros or the image mean, and a U-Net
restores the original. The erasing is the ``erase`` augmentation of
``selfsup_augment`` applied to every image (Kornia's ``RandomErasing`` erases
one box with a scalar fill). The drawn boxes *are* the mask: both are kept in
``PretextBatch.extras`` so the loss never re-derives them.

Example:
    >>> task = CutoutTask(boxes=(1, 3), area=(0.05, 0.15))
    >>> batch = task.make_batch(torch.rand(4, 3, 32, 32))
    >>> batch.extras["mask"].shape, batch.extras["boxes"].shape
    (torch.Size([4, 1, 32, 32]), torch.Size([4, 3, 4]))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from selfsup_augment.erase import FILLS, Erase, Fill, boxes_to_mask, draw_boxes
from torch import Tensor

from selfsup_core import PretextBatch, ReconstructionOptions, ReconstructionTask, hookimpl, psnr, range_option
from selfsup_core.options import at_least, option, skip_count

__all__ = ["FILLS", "CutoutOptions", "CutoutTask", "Fill", "boxes_to_mask", "draw_boxes"]


@dataclass(frozen=True)
class CutoutOptions(ReconstructionOptions):
    """Options of :class:`CutoutTask` (after the U-Net's ``drop_skips`` and ``residual``)."""

    drop_skips: int | Literal["all"] = option(
        2, check=skip_count,
        help="shallowest U-Net skip connections left out (0: all kept; 2: the inpainting has to pass "
             "through the deeper stages, which kNN and the linear probe read; all: none kept)")
    residual: bool = option(False, help="predict a correction of the input rather than the image (off: "
                                        "a noise-filled box is better replaced than corrected)")
    # Many small boxes (about a third of the image erased) rather than a few large ones: the inpainting
    # then needs the deep stages everywhere; on Imagenette at 32 px it raised kNN and fine-tuning (docs/tasks.md).
    boxes: tuple[int, int] = range_option((8, 16), low=1, high=32, help="boxes per image (min, max), 1 to 32")
    area: tuple[float, float] = range_option((0.02, 0.05), low=1e-6, high=1.0,
                                             help="area of each box (min, max), as a fraction of the image")
    aspect: tuple[float, float] = range_option((0.3, 3.3), low=1e-3, high=1e3,
                                               help="height / width of each box (min, max), drawn log-uniformly")
    fill: Fill = option("noise", help="what fills the boxes: uniform per-pixel noise (a flat fill tells "
                                      "the network where to paint), zero, or each image's mean colour")
    whole_weight: float = option(0.0, check=at_least(0),
                                 help="weight of the L1 loss on the whole image, added to the L1 loss "
                                      "inside the boxes (0: boxes only)")


class CutoutTask(ReconstructionTask):
    """Erase boxes and restore them.

    Options: see :class:`CutoutOptions`; a ``(min, max)`` range given as one
    number ``x`` means ``(x, x)``.
    """

    name = "cutout"
    summary = "Restore boxes erased from each image (inpainting) with a U-Net around the encoder."
    Options = CutoutOptions
    options: CutoutOptions

    def __init__(self, options: CutoutOptions | None = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        o = self.options
        self.erase = Erase(p=1.0, boxes=o.boxes, area=o.area, aspect=o.aspect, fill=o.fill)

    def make_batch(self, images: Tensor) -> PretextBatch:
        inputs, params = self.erase(images)
        return PretextBatch(
            inputs=inputs,
            targets=images,
            extras={"mask": params["mask"], "boxes": params["boxes"], "active": params["active"]},
        )

    def loss(self, outputs: Tensor, batch: PretextBatch) -> Tensor:
        error = (outputs.float() - batch.targets.float()).abs()
        mask = batch.extras["mask"].float()
        inside = (error * mask).sum() / (mask.sum() * error.shape[1]).clamp_min(1)
        return inside + self.options.whole_weight * error.mean()

    @staticmethod
    def inpainted(outputs: Tensor, batch: PretextBatch) -> Tensor:
        """The restored image: the network's pixels inside the boxes, the known ones elsewhere."""
        return torch.where(batch.extras["mask"], outputs.to(batch.inputs.dtype), batch.inputs)

    def metrics(self, outputs: Tensor, batch: PretextBatch) -> dict[str, Tensor]:
        mask = batch.extras["mask"]
        return {
            "psnr_masked": psnr(outputs, batch.targets, mask),
            "psnr_masked_input": psnr(batch.inputs, batch.targets, mask),
            "psnr": psnr(self.inpainted(outputs, batch), batch.targets),
            "psnr_input": psnr(batch.inputs, batch.targets),
            "psnr_raw_output": psnr(outputs, batch.targets),
            "erased": mask.float().mean(),
        }

    def preview(self, outputs: Tensor, batch: PretextBatch) -> dict[str, Tensor]:
        columns = super().preview(outputs, batch)
        columns["restored"] = self.inpainted(outputs.detach().float().clamp(0, 1), batch)
        return columns


@hookimpl
def selfsup_register_tasks() -> list[type[CutoutTask]]:
    return [CutoutTask]

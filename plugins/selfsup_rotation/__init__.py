"""Built-in task ``rotation``: predict which quarter turn (or flip) was applied.

RotNet-style: each image gets one transform drawn at random, and the network
learns to tell which. Four quarter turns by default; ``num_transforms=6``
gives the original tutorial's set (0/90/180/270 degrees plus vertical and
horizontal flip), whose flips are nearly indistinguishable from some turns
and so make a weaker pretext.

Example:
    >>> task = RotationTask()
    >>> batch = task.make_batch(torch.rand(8, 3, 32, 32))
    >>> batch.targets.shape
    torch.Size([8])
"""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup_core import PretextBatch, TaskSpec, hookimpl
from selfsup_core.task import ClassificationTask

TRANSFORM_NAMES = ("rot0", "rot90", "rot180", "rot270", "vflip", "hflip")


def apply_transform(images: Tensor, index: int) -> Tensor:
    """Apply transform ``index`` (see :data:`TRANSFORM_NAMES`) to ``(B, C, H, W)`` images."""
    if index < 4:
        return torch.rot90(images, k=index, dims=(-2, -1))
    return images.flip(-2) if index == 4 else images.flip(-1)


class RotationTask(ClassificationTask):
    """Classify the quarter turn (and optionally flip) applied to each image.

    Args:
        num_transforms: 4 (quarter turns) or 6 (plus vertical and horizontal flip).
    """

    name = "rotation"
    summary = "Predict the quarter turn (4-way) or turn/flip (6-way) applied to each image."

    def __init__(self, num_transforms: int = 4) -> None:
        if num_transforms not in (4, 6):
            raise ValueError(f"num_transforms must be 4 or 6, got {num_transforms}")
        super().__init__(num_transforms=num_transforms)
        self.num_transforms = self.num_classes = num_transforms

    def make_batch(self, images: Tensor) -> PretextBatch:
        if images.shape[-1] != images.shape[-2]:
            raise ValueError("rotation needs square images")
        labels = torch.randint(self.num_transforms, (len(images),), device=images.device)
        inputs = images.clone()
        # One vectorised op per transform over the images that drew it.
        for index in range(1, self.num_transforms):
            chosen = labels == index
            inputs[chosen] = apply_transform(images[chosen], index)
        return PretextBatch(inputs=inputs, targets=labels)


@hookimpl
def selfsup_register_tasks() -> list[TaskSpec]:
    return [TaskSpec(RotationTask.name, RotationTask, RotationTask.summary)]

"""Built-in task ``rotation``: predict which quarter turn (or flip) was applied.

RotNet-style: each image gets one transform drawn at random, and the network
learns to tell which. Four quarter turns by default; ``num_transforms=6``
gives the original tutorial's set (0/90/180/270 degrees plus vertical and
horizontal flip), whose flips are nearly indistinguishable from some turns
and so make a weaker pretext.

Optionally, each image is randomly cropped and resized (Kornia's
``RandomResizedCrop``, batch-wise on the device) and mirrored before the
turn, against the pretext memorising its training images on long runs. Off
by default: at 32 px and 15 epochs on Imagenette every variant tried lowered
the encoder's kNN accuracy (see docs/tasks.md).

Example:
    >>> task = RotationTask()
    >>> batch = task.make_batch(torch.rand(8, 3, 32, 32))
    >>> batch.targets.shape
    torch.Size([8])
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from selfsup_core import PretextBatch, TaskSpec, hookimpl
from selfsup_core.tasks.base import ClassificationTask

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
        crop_scale: Area range ``(min, max)`` of a random crop taken before
            the turn, as a fraction of the image; ``1`` (default) means none.
        flip: Mirror half the images before the turn (4-way only: with
            6-way a mirror image is itself a label).
    """

    name = "rotation"
    summary = "Predict the quarter turn (4-way) or turn/flip (6-way) applied to each image."

    def __init__(
        self,
        num_transforms: int = 4,
        crop_scale: float | Sequence[float] = 1.0,
        flip: bool = False,
    ) -> None:
        if num_transforms not in (4, 6):
            raise ValueError(f"num_transforms must be 4 or 6, got {num_transforms}")
        scale = (crop_scale, 1.0) if isinstance(crop_scale, (int, float)) else tuple(crop_scale)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"crop_scale must be (min, max) with 0 < min <= max <= 1, got {crop_scale!r}")
        if flip and num_transforms == 6:
            raise ValueError("flip=true cannot go with num_transforms=6: flips are labels there")
        super().__init__(num_transforms=num_transforms, crop_scale=list(scale), flip=flip)
        self.num_transforms = self.num_classes = num_transforms
        self.crop_scale, self.flip = scale, flip
        self._augmenters: dict[tuple[int, int], nn.Module | None] = {}

    def _augmenter(self, size: tuple[int, int]) -> nn.Module | None:
        # Kornia's crop takes its output size at construction: one per size.
        if size not in self._augmenters:
            steps: list[nn.Module] = []
            if self.crop_scale != (1.0, 1.0):
                steps.append(K.RandomResizedCrop(size, scale=self.crop_scale))
            if self.flip:
                steps.append(K.RandomHorizontalFlip())
            self._augmenters[size] = K.AugmentationSequential(*steps) if steps else None
        return self._augmenters[size]

    def _augmented(self, images: Tensor) -> Tensor:
        augment = self._augmenter(tuple(images.shape[-2:]))
        return images if augment is None else augment(images)

    def make_batch(self, images: Tensor) -> PretextBatch:
        if images.shape[-1] != images.shape[-2]:
            raise ValueError("rotation needs square images")
        images = self._augmented(images)
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

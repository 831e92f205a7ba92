"""Example third-party task ``jigsaw``: predict how 2 x 2 tiles were shuffled.

Each image is cut into four tiles, which are put back in one of the 24
possible orders; the label is that order's index. Everything runs batch-wise
on the device with plain tensor ops. Head, loss (cross-entropy) and accuracy
come from :class:`~selfsup_core.task.ClassificationTask`.

The package also contributes an augmentation, ``posterize`` (fewer bits per
colour channel), usable by name wherever selfsup takes augmentations:
``selfsup finetune --augment posterize``, crappify's ``degradations``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from selfsup_core import (
    Augmentation,
    AugmentationOptions,
    ClassificationTask,
    PretextBatch,
    TaskOptions,
    hookimpl,
    range_option,
)
from selfsup_core.options import option, probability, within

PERMUTATIONS = list(itertools.permutations(range(4)))


@dataclass(frozen=True)
class JigsawOptions(TaskOptions):
    """Options of :class:`JigsawTask`, each declared once: type, default, help, check."""

    num_permutations: int = option(24, check=within(2, len(PERMUTATIONS)),
                                   help="use the first N of the 24 tile orders (2 to 24)")


class JigsawTask(ClassificationTask):
    """Classify which permutation of the 2 x 2 tiles was applied.

    Options: see :class:`JigsawOptions`.
    """

    name = "jigsaw"
    summary = "Predict the order in which 2 x 2 tiles of each image were shuffled."
    Options = JigsawOptions
    options: JigsawOptions

    def __init__(self, options: JigsawOptions | None = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)  # checks the options, sets self.options
        # Derived state only: the permutation table, a buffer that follows the task to the device.
        table = torch.tensor(PERMUTATIONS[: self.options.num_permutations])
        self.register_buffer("permutations", table, persistent=False)

    @property
    def num_classes(self) -> int:
        return self.options.num_permutations

    def make_batch(self, images: Tensor) -> PretextBatch:
        b, c, h, w = images.shape
        if h % 2 or w % 2:
            raise ValueError(f"jigsaw needs even image sizes, got {h} x {w}")
        labels = torch.randint(self.num_classes, (b,), device=images.device)
        # (B, C, 2, H/2, 2, W/2) -> (B, 4, C, H/2, W/2): the four tiles in reading order.
        tiles = images.view(b, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5).reshape(b, 4, c, h // 2, w // 2)
        order = self.permutations[labels]  # (B, 4)
        shuffled = tiles[torch.arange(b, device=images.device)[:, None], order]
        inputs = shuffled.view(b, 2, 2, c, h // 2, w // 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
        return PretextBatch(inputs=inputs, targets=labels)


@hookimpl
def selfsup_register_tasks() -> list[type[JigsawTask]]:
    return [JigsawTask]


@dataclass(frozen=True)
class PosterizeOptions(AugmentationOptions):
    """Options of :class:`Posterize`."""

    bits: tuple[int, int] = range_option((2, 5), low=1, high=8, help="bits kept per channel (min, max), 1 to 8")
    p: float = option(0.5, check=probability, help="probability that an image is posterized")


class Posterize(Augmentation):
    """Keep the top ``bits`` bits of each 8-bit channel value, ``bits`` drawn per image.

    Params: ``applied`` (bool) and ``bits`` (integer), one per image.
    """

    name = "posterize"
    summary = "Keep 2-5 bits per colour channel (drawn per image), with probability p."
    Options = PosterizeOptions
    options: PosterizeOptions

    def sample(self, images: Tensor) -> dict[str, Tensor]:
        n, device = len(images), images.device
        low, high = self.options.bits
        return {"applied": torch.rand(n, device=device) < self.options.p,
                "bits": torch.randint(low, high + 1, (n,), device=device)}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        step = (2.0 ** (8 - params["bits"])).to(images.dtype)[:, None, None, None]  # 8-bit levels per bin
        posterized = torch.floor(torch.round(images.clamp(0, 1) * 255) / step) * step / 255
        return torch.where(params["applied"][:, None, None, None], posterized, images)


@hookimpl
def selfsup_register_augmentations() -> list[type[Posterize]]:
    return [Posterize]

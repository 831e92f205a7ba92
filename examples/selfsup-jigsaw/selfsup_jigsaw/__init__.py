"""Example third-party task ``jigsaw``: predict how 2 x 2 tiles were shuffled.

Each image is cut into four tiles, which are put back in one of the 24
possible orders; the label is that order's index. Everything runs batch-wise
on the device with plain tensor ops. Head, loss (cross-entropy) and accuracy
come from :class:`~selfsup_core.task.ClassificationTask`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from selfsup_core import ClassificationTask, PretextBatch, TaskOptions, hookimpl
from selfsup_core.options import option, within

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

"""Built-in task ``simclr``: contrastive learning of two augmented views (SimCLR).

Each image gives two views, made on the device by the installed augmentation
plugins named in ``augmentations`` (by default random resized crop + flip,
colour jitter and greyscale: SimCLR's CIFAR recipe). Both views go through the
encoder in ONE forward pass, so BatchNorm statistics cover both; a projection
MLP follows, and the NT-Xent loss pulls the two views of an image together
and pushes every other image of the global batch away. Under multi-process
training the negatives come from every process (``PretextTask.gather``).

Example:
    >>> task = SimCLRTask(temperature=0.2)
    >>> batch = task.make_batch(torch.rand(8, 3, 32, 32))
    >>> [tuple(view.shape) for view in batch.inputs]
    [(8, 3, 32, 32), (8, 3, 32, 32)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup_core import (
    Pipeline,
    PretextBatch,
    PretextTask,
    TaskOptions,
    create_augmentation,
    hookimpl,
    mlp_head,
)
from selfsup_core.options import at_least, option, positive


def nt_xent(z1: Tensor, z2: Tensor, temperature: float, gather: Any = None, rank: int = 0) -> Tensor:
    """The NT-Xent (normalised temperature-scaled cross-entropy) loss of two views.

    Each of the ``2n`` local projections is a query; the keys are the
    projections of every process (``gather``, default none), so the loss of
    each process is the mean over its own queries, and the mean over
    processes equals the one-process loss on the whole batch.

    Args:
        z1: ``(n, d)`` projections of the first views of this process's images.
        z2: ``(n, d)`` projections of their second views.
        temperature: Softmax temperature.
        gather: Concatenates a tensor from every process along dim 0, with
            gradients (``PretextTask.gather``); ``None`` for one process.
        rank: This process's index (where its images sit in the gathered batch).

    Example:
        >>> z = torch.randn(4, 8)
        >>> float(nt_xent(z, z, 0.5)) < float(nt_xent(z, torch.randn(4, 8), 0.5))
        True
    """
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    keys1, keys2 = (gather(z1), gather(z2)) if gather is not None else (z1, z2)
    n, total = len(z1), len(keys1)
    queries = torch.cat([z1, z2])
    logits = queries @ torch.cat([keys1, keys2]).T / temperature  # (2n, 2N)
    own = torch.arange(n, device=z1.device) + rank * n  # this process's images in the gathered batch
    itself = torch.cat([own, own + total])
    logits[torch.arange(2 * n, device=z1.device), itself] = float("-inf")  # a view is not its own positive
    positives = torch.cat([own + total, own])
    return F.cross_entropy(logits, positives)


@dataclass(frozen=True)
class SimCLROptions(TaskOptions):
    augmentations: list[str] = option(
        help="augmentation plugins making each view, in order (selfsup augmentations lists them)",
        default_factory=lambda: ["crop_flip", "color_jitter", "grayscale"],
        default_text="[crop_flip, color_jitter, grayscale]")
    temperature: float = option(0.2, check=positive, help="NT-Xent softmax temperature")
    projection_dim: int = option(128, check=at_least(1), help="width of the projection (the loss's space)")
    hidden_dim: int = option(512, check=at_least(1), help="hidden width of the projection MLP")


class SimCLRTask(PretextTask):
    """Two augmented views per image, one encoder pass, a projection MLP and NT-Xent.

    Options: see :class:`SimCLROptions` (``selfsup tasks --options simclr``).
    """

    name = "simclr"
    summary = "Contrastive (SimCLR): two augmented views of each image, NT-Xent over the global batch."
    Options = SimCLROptions
    options: SimCLROptions

    def __init__(self, options: SimCLROptions | None = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        # Built once from the plugins; a third-party augmentation works as well as a built-in.
        self.views = Pipeline([create_augmentation(name) for name in self.options.augmentations])

    def make_batch(self, images: Tensor) -> PretextBatch:
        return PretextBatch(inputs=(self.views(images)[0], self.views(images)[0]))

    def build_head(self, encoder: nn.Module) -> nn.Module:
        o = self.options
        return mlp_head(encoder.feature_dim, o.hidden_dim, o.projection_dim)

    def forward_model(self, encoder: nn.Module, head: nn.Module, inputs: Any, batch: PretextBatch) -> Any:
        first, second = inputs
        # One pass over both views: BatchNorm sees them together, as in SimCLR.
        projections = head(encoder(torch.cat([first, second])))
        return projections.chunk(2)

    def loss(self, outputs: tuple[Tensor, Tensor], batch: PretextBatch) -> Tensor:
        return nt_xent(*outputs, self.options.temperature, gather=self.gather, rank=self.rank())

    def metrics(self, outputs: tuple[Tensor, Tensor], batch: PretextBatch) -> dict[str, Tensor]:
        """How often a view's nearest other view in the local batch is its pair."""
        z1, z2 = (F.normalize(z.detach().float(), dim=1) for z in outputs)
        similarity = z1 @ z2.T
        matched = similarity.argmax(dim=1) == torch.arange(len(z1), device=z1.device)
        return {"pair_acc": matched.float().mean()}


@hookimpl
def selfsup_register_tasks() -> list[type[PretextTask]]:
    return [SimCLRTask]

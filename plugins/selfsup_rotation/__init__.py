"""Built-in task ``rotation``: predict which quarter turn (or flip) was applied.

RotNet-style: each image gets one transform drawn at random, and the network
learns to tell which. Four quarter turns by default; ``num_transforms=6``
gives the original tutorial's set (0/90/180/270 degrees plus vertical and
horizontal flip), whose flips are nearly indistinguishable from some turns
and so make a weaker pretext.

Optionally, each image is randomly cropped and resized and mirrored before
the turn (the built-in ``crop_flip`` augmentation, batch-wise on the
device), against the pretext memorising its training images on long runs.
Off by default: at 32 px and 15 epochs on Imagenette every variant tried
lowered the encoder's kNN accuracy (see docs/tasks.md).

Example:
    >>> task = RotationTask()
    >>> batch = task.make_batch(torch.rand(8, 3, 32, 32))
    >>> batch.targets.shape
    torch.Size([8])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from selfsup_core import (
    Augmentation,
    ClassificationTask,
    Pipeline,
    PretextBatch,
    TaskOptions,
    create_augmentation,
    hookimpl,
    mlp_head,
)
from selfsup_core.options import above, all_of, ascending, at_least, one_of, option, within

TRANSFORM_NAMES = ("rot0", "rot90", "rot180", "rot270", "vflip", "hflip")


def apply_transform(images: Tensor, index: int) -> Tensor:
    """Apply transform ``index`` (see :data:`TRANSFORM_NAMES`) to ``(B, C, H, W)`` images."""
    if index < 4:
        return torch.rot90(images, k=index, dims=(-2, -1))
    return images.flip(-2) if index == 4 else images.flip(-1)


def _crop_scale(value: Any) -> Any:
    """``crop_scale`` given as one number ``c`` means the area range ``(c, 1)``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (value, 1.0)
    return value


def variance_covariance(features: Tensor) -> Tensor:
    """VICReg's variance and covariance terms of ``(B, D)`` features, unweighted.

    The first is the mean shortfall of each feature's standard deviation
    below 1; the second the sum of squared off-diagonal covariances over
    ``D``. Both are 0 for whitened features and grow as the batch's features
    collapse onto fewer directions.

    Example:
        >>> round(float(variance_covariance(torch.ones(8, 4))), 2)  # every feature constant
        0.99
    """
    centred = features - features.mean(0)
    std = torch.sqrt(centred.var(0) + 1e-4)  # VICReg's epsilon: a finite gradient at 0
    cov = centred.T @ centred / (len(features) - 1)
    off_diagonal = cov - torch.diag(torch.diag(cov))
    return torch.relu(1 - std).mean() + off_diagonal.pow(2).sum() / features.shape[1]


@dataclass(frozen=True)
class RotationOptions(TaskOptions):
    """Options of :class:`RotationTask`."""

    num_transforms: int = option(4, help="4 (quarter turns) or 6 (plus vertical and horizontal flip)",
                                 check=one_of(4, 6))
    crop_scale: tuple[float, float] = option(
        (1.0, 1.0), convert=_crop_scale, check=all_of(above(0), within(0, 1), ascending),
        help="area (min, max) of a random crop taken before the turn, as a fraction of the image; "
             "one number c means (c, 1); 1 means no crop")
    flip: bool = option(False, help="mirror half the images before the turn (4-way only: with 6-way "
                                    "a mirror image is itself a label)")

    augmentations: list[str] = option(
        default_factory=list, default_text="none",
        help="augmentation plugins applied before the turn, in order, e.g. [color_jitter, grayscale] "
             "(selfsup augmentations lists them)")
    all_turns: bool = option(False, help="show the first 1/num_transforms of each batch in every orientation "
                                         "(RotNet's own recipe) instead of one random turn per image")
    head_hidden: int = option(0, check=at_least(0),
                              help="width of a hidden layer (BatchNorm, ReLU) between the pooled features "
                                   "and the turn logits; 0: one linear layer")
    spread: float = option(0.0, check=at_least(0),
                           help="weight of a variance-covariance penalty (VICReg's) on the pooled features, "
                                "against the turn classifier collapsing them; 0: off")

    def validate(self) -> None:
        if self.flip and self.num_transforms == 6:
            raise ValueError("flip=true cannot go with num_transforms=6: flips are labels there")


class RotationTask(ClassificationTask):
    """Classify the quarter turn (and optionally flip) applied to each image.

    Options: see :class:`RotationOptions`.
    """

    name = "rotation"
    summary = "Predict the quarter turn (4-way) or turn/flip (6-way) applied to each image."
    Options = RotationOptions
    options: RotationOptions

    def __init__(self, options: RotationOptions | None = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self.augmentations = Pipeline(self._crop_flip() + [create_augmentation(name)
                                                           for name in self.options.augmentations])

    def _crop_flip(self) -> list[Augmentation]:
        """The ``crop_flip`` augmentation that ``crop_scale`` and ``flip`` ask for, if any."""
        crop, flip = self.options.crop_scale != (1.0, 1.0), self.options.flip
        if not (crop or flip):
            return []
        # Without a crop the box is the whole image: a square box keeps the mirror a plain mirror.
        ratio = {} if crop else {"ratio": (1.0, 1.0)}
        return [create_augmentation("crop_flip", scale=self.options.crop_scale, flip_p=0.5 if flip else 0.0,
                                    **ratio)]

    @property
    def num_classes(self) -> int:
        return self.options.num_transforms

    def build_head(self, encoder: nn.Module) -> nn.Module:
        if self.options.head_hidden:
            return mlp_head(encoder.feature_dim, self.options.head_hidden, self.num_classes)
        return super().build_head(encoder)

    def forward_model(self, encoder: nn.Module, head: nn.Module, inputs: Any, batch: PretextBatch) -> Any:
        if not self.options.spread:
            return super().forward_model(encoder, head, inputs, batch)
        features = encoder(inputs)
        return head(features), features  # the penalty needs the pooled features too

    def loss(self, outputs: Any, batch: PretextBatch) -> Tensor:
        logits, features = self._split(outputs)
        loss = super().loss(logits, batch)
        return loss if features is None else loss + self.options.spread * variance_covariance(features)

    def metrics(self, outputs: Any, batch: PretextBatch) -> dict[str, Tensor]:
        logits, features = self._split(outputs)
        metrics = super().metrics(logits, batch)
        return metrics if features is None else {**metrics, "spread": variance_covariance(features.detach())}

    def _split(self, outputs: Any) -> tuple[Tensor, Tensor | None]:
        """The turn logits, and the pooled features when ``spread`` needs them."""
        return outputs if self.options.spread else (outputs, None)

    def make_batch(self, images: Tensor) -> PretextBatch:
        if images.shape[-1] != images.shape[-2]:
            raise ValueError("rotation needs square images")
        images, _ = self.augmentations(images)
        labels = torch.randint(self.num_classes, (len(images),), device=images.device)
        if self.options.all_turns:
            # Same batch size: image i // n in turn i % n (a tail that fills no whole group keeps random turns).
            group = len(images) // self.num_classes * self.num_classes
            images = torch.cat([images[:group // self.num_classes].repeat_interleave(self.num_classes, 0),
                                images[group:]])
            labels[:group] = torch.arange(group, device=images.device) % self.num_classes
        inputs = images.clone()
        # One vectorised op per transform over the images that drew it.
        for index in range(1, self.num_classes):
            chosen = labels == index
            inputs[chosen] = apply_transform(images[chosen], index)
        return PretextBatch(inputs=inputs, targets=labels)


@hookimpl
def selfsup_register_tasks() -> list[type[RotationTask]]:
    return [RotationTask]

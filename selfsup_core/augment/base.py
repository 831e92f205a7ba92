"""The :class:`Augmentation` base class: what an augmentation plugin implements.

An augmentation works on a whole ``(B, C, H, W)`` batch of float images in
``[0, 1]`` on the training device. It first *samples* its parameters for
every image at once (on that device, from torch's seeded generators), then
*applies* them. The parameters are returned with the images: a pretext task
can learn to predict them, a view pipeline can replay them, a test can check
them (Kornia's ``forward_parameters`` / ``apply`` split).

Example:
    A complete augmentation that inverts a random share of the images::

        @dataclass(frozen=True)
        class InvertOptions(AugmentationOptions):
            p: float = option(0.5, help="probability of inverting an image", check=probability)

        class Invert(Augmentation):
            name = "invert"
            summary = "Invert the colours of some images."
            Options = InvertOptions

            def sample(self, images):
                return {"applied": torch.rand(len(images), device=images.device) < self.options.p}

            def apply(self, images, params):
                return torch.where(params["applied"][:, None, None, None], 1 - images, images)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from selfsup_core.errors import ConfigError
from selfsup_core.options import Options

Params = dict[str, Tensor]
"""Per-image parameters an augmentation drew: each tensor's first dimension is the batch."""


@dataclass(frozen=True)
class AugmentationOptions(Options):
    """Base class of every augmentation's options (declare subclasses ``@dataclass(frozen=True)``)."""


class Augmentation(nn.Module):
    """Base class of every batch-wise augmentation.

    Subclasses set :attr:`name`, :attr:`summary` and :attr:`Options`, and
    implement :meth:`sample` and :meth:`apply`. Calling the module samples
    and applies: ``images, params = augmentation(images)``.

    Attributes:
        name: The registered name (``--augment NAME``, a task's list option).
        summary: One line shown by ``selfsup augmentations``.
        Options: The options dataclass; ``self.options`` holds the values.
    """

    name: ClassVar[str] = "unnamed"
    summary: ClassVar[str] = ""
    Options: ClassVar[type[AugmentationOptions]] = AugmentationOptions

    def __init__(self, options: AugmentationOptions | None = None, **kwargs: Any) -> None:
        super().__init__()
        if options is not None and kwargs:
            raise TypeError("give an options object or keyword options, not both")
        self.options = options if options is not None else type(self).Options.from_mapping(
            kwargs, source=f"augmentation {self.name!r}")

    def sample(self, images: Tensor) -> Params:
        """Draw the parameters for every image of ``images``, batch-wise on its device.

        By convention a per-image bool ``applied`` says which images are
        changed, and every other parameter is drawn for every image, so a
        caller may change ``applied`` before :meth:`apply`.
        """
        raise NotImplementedError

    def apply(self, images: Tensor, params: Params) -> Tensor:
        """Apply drawn ``params`` to ``images`` (deterministic: the same params, the same result)."""
        raise NotImplementedError

    def forward(self, images: Tensor) -> tuple[Tensor, Params]:
        """Sample, then apply; in the images' own precision even inside an autocast region.

        Under the trainer's bf16 autocast, matmuls and convolutions would
        otherwise return bf16 from float32 images: a dtype clash in the
        augmentation's arithmetic, and lost detail the task may ask for.
        """
        with torch.autocast(images.device.type, enabled=False):
            params = self.sample(images)
            return self.apply(images, params), params


class Pipeline(nn.Module):
    """Augmentations applied in order; their parameters are kept under ``"NAME.PARAM"``.

    Example:
        >>> pipeline = Pipeline([create_augmentation("crop_flip"), create_augmentation("grayscale")])  # doctest: +SKIP
        >>> views, params = pipeline(torch.rand(8, 3, 32, 32))  # doctest: +SKIP
    """

    def __init__(self, steps: Sequence[Augmentation]) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)

    def forward(self, images: Tensor) -> tuple[Tensor, Params]:
        drawn: Params = {}
        for step in self.steps:
            images, params = step(images)
            drawn.update({f"{step.name}.{key}": value for key, value in params.items()})
        return images, drawn


def check_augmentation_name(name: object) -> str:
    """A usable augmentation name, or a :class:`ConfigError`."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"an augmentation name must be a non-empty string, got {name!r}")
    return name

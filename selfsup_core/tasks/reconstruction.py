"""Shared base of the image-restoration tasks (cutout, crappify).

A restoration task only has to say how it degrades images (:meth:`make_batch`)
and how it scores the result; this base builds the U-Net decoder as the head,
feeds it the encoder's stages and makes the preview columns.

Example:
    >>> class Blur(ReconstructionTask):
    ...     name = "blur"
    ...     def make_batch(self, images):
    ...         return PretextBatch(inputs=images.roll(1, -1), targets=images)
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from selfsup_core.tasks.base import PretextBatch, PretextTask
from selfsup_core.models.unet import UNetDecoder


class ReconstructionTask(PretextTask):
    """A task whose head is a U-Net decoder and whose targets are clean images.

    Args:
        drop_skips: Shallowest skip connections the U-Net leaves out (see
            :class:`~selfsup_core.unet.UNetDecoder`).
        residual: The decoder predicts a correction added to the degraded
            input (suits mild degradations: the output starts as good as the
            input) instead of the image itself.
        **options: Further options of the subclass, saved with the run.
    """

    reconstructs = True

    def __init__(self, drop_skips: int = 0, residual: bool = False, **options: Any) -> None:
        if not isinstance(drop_skips, int) or isinstance(drop_skips, bool) or drop_skips < 0:
            raise ValueError(f"drop_skips must be a non-negative integer, got {drop_skips!r}")
        if not isinstance(residual, bool):
            raise ValueError(f"residual must be true or false, got {residual!r}")
        super().__init__(drop_skips=drop_skips, residual=residual, **options)
        self.drop_skips = drop_skips
        self.residual = residual

    def build_head(self, encoder: nn.Module) -> nn.Module:
        return UNetDecoder.for_encoder(encoder, drop_skips=self.drop_skips, residual=self.residual)

    def forward_model(self, encoder: nn.Module, head: nn.Module, inputs: Any, batch: PretextBatch) -> Tensor:
        # A residual decoder corrects the degraded image itself: the batch's
        # inputs, in [0, 1], before normalisation.
        base = batch.inputs if self.residual else None
        return head(encoder.forward_stages(inputs), size=tuple(inputs.shape[-2:]), base=base)

    def loss(self, outputs: Tensor, batch: PretextBatch) -> Tensor:
        return F.l1_loss(outputs, batch.targets)

    def preview(self, outputs: Tensor, batch: PretextBatch) -> dict[str, Tensor]:
        return {
            "input": batch.inputs.detach().clamp(0, 1),
            "restored": outputs.detach().float().clamp(0, 1),
            "original": batch.targets.detach(),
        }


def check_range(name: str, value: Any, low: float, high: float, integer: bool = False) -> tuple:
    """Validate a ``(min, max)`` option (a single number means ``(x, x)``).

    Returns:
        The pair as a tuple of floats (or ints with ``integer=True``).

    Raises:
        ValueError: Not one or two numbers, ``min > max``, or outside ``[low, high]``.
    """
    pair = (value, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    try:
        a, b = pair
        kind = int if integer else float
        if integer and (a != int(a) or b != int(b)):
            raise TypeError
        a, b = kind(a), kind(b)
    except (TypeError, ValueError):
        what = "integers" if integer else "numbers"
        raise ValueError(f"{name} must be one or two {what} (min, max), got {value!r}") from None
    if not (low <= a <= b <= high):
        raise ValueError(f"{name} must satisfy {low} <= min <= max <= {high}, got {value!r}")
    return a, b


def check_probability(name: str, value: Any) -> float:
    """Validate a probability option; raises ValueError outside ``[0, 1]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)

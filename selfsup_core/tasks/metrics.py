"""Metrics that tasks log: accuracy of class predictions, PSNR of restored images."""

from __future__ import annotations

import torch
from torch import Tensor


def top1(predictions: Tensor, targets: Tensor) -> Tensor:
    """Share of predicted class indices equal to ``targets``, as a 0-dim tensor."""
    return (predictions == targets).float().mean()


def accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    """Top-1 accuracy of ``(B, classes)`` logits against class indices, as a 0-dim tensor.

    Example:
        >>> accuracy(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0])).item()
        0.5
    """
    return top1(logits.argmax(dim=1), targets)


def psnr(prediction: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean PSNR in dB of images in ``[0, 1]``, optionally inside a ``mask``.

    The mask broadcasts against the images (``(B, 1, H, W)`` is typical);
    PSNR is computed per image, then averaged over the batch.
    """
    squared = (prediction.float().clamp(0, 1) - target.float()) ** 2
    if mask is None:
        mse = squared.flatten(1).mean(dim=1)
    else:
        weights = mask.float().expand_as(squared)
        mse = (squared * weights).flatten(1).sum(1) / weights.flatten(1).sum(1).clamp_min(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean()

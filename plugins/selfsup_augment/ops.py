"""Small batched helpers shared by the built-in augmentations (crappify's degradations use them too)."""

from __future__ import annotations

import torch
from torch import Tensor


def select(applied: Tensor, augmented: Tensor, images: Tensor) -> Tensor:
    """``augmented`` where ``applied``, else ``images``: exactly ``torch.where``, but faster.

    ``applied`` is a ``(B,)`` per-image flag or a bool mask that broadcasts to
    the images (``(B, 1, H, W)``); ``augmented`` broadcasts to them too.
    ``torch.lerp`` with a 0/1 weight returns its start or its end bit for bit,
    (finite values), and on a CPU it runs about 4x faster than ``torch.where`` with a
    broadcast bool mask (45 against 180 us on a 32 x 3 x 64 x 64 batch, one
    thread).
    """
    if applied.dim() == 1:
        applied = applied.view(-1, *([1] * (images.dim() - 1)))
    augmented = augmented.to(images.dtype).expand_as(images)
    return torch.lerp(images, augmented, applied.to(images.dtype))


def flags(n: int, p: float, device: torch.device) -> Tensor:
    """``(n,)`` bool, each True with probability ``p`` (drawn on ``device``)."""
    return torch.rand(n, device=device) < p

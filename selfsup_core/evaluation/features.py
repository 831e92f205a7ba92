"""Pooled features of decoded images from a frozen encoder."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup_core.errors import DataError
from selfsup_core.models.normalization import IMAGENET_MEAN, IMAGENET_STD, Normalizer, to_unit_range


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    images: Tensor,
    *,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    batch_size: int = 256,
    device: torch.device | None = None,
) -> Tensor:
    """Pooled features of uint8 images, with the encoder frozen in eval mode.

    Args:
        encoder: Any module mapping normalised ``(B, 3, S, S)`` images to ``(B, D)``.
        images: ``(N, 3, S, S)`` uint8 (as decoded; already centre-cropped).
        mean: Normalisation the encoder was trained with (``encoder.json``).
        std: Likewise.
        batch_size: Images per forward pass.
        device: Where to run; default :func:`default_device`.

    Returns:
        ``(N, D)`` float32 features on the CPU.

    Example:
        >>> feats = extract_features(build_encoder("tiny"), torch.zeros(4, 3, 32, 32, dtype=torch.uint8))
        >>> tuple(feats.shape)
        (4, 64)
    """
    device = device or default_device()
    was_training = encoder.training
    encoder.eval().to(device)  # BatchNorm uses running statistics: features do not depend on the batch
    normalizer = Normalizer(mean, std).to(device)
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = to_unit_range(images[start:start + batch_size].to(device))
        chunks.append(encoder(normalizer(batch)).float().flatten(1).cpu())
    encoder.train(was_training)
    if not chunks:
        raise DataError("no images to compute features of.")
    return torch.cat(chunks)

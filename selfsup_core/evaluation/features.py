"""Pooled features of decoded images from a frozen encoder."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from selfsup_core.data.decoded import DecodedImages
from selfsup_core.errors import ConfigError, DataError
from selfsup_core.models.normalization import IMAGENET_MEAN, IMAGENET_STD, Normalizer, to_unit_range

if TYPE_CHECKING:
    from lightning_fabric import Fabric


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_stage(encoder: nn.Module, stage: int) -> None:
    """Raise :class:`ConfigError` unless ``stage`` indexes one of ``encoder``'s stages (negative: from the deepest).

    Example:
        >>> check_stage(build_encoder("tiny"), -3)  # the tiny encoder's three stages: 0-2, or -3 to -1
    """
    count = len(encoder.stage_channels)
    if not -count <= stage < count:
        raise ConfigError(f"--stage {stage}: this encoder has {count} stages, 0 to {count - 1} "
                          f"(or -{count} to -1 from the deepest).")


class StageFeatures(nn.Module):
    """The mean-pooled feature map of one stage of an encoder, as ``(B, C)`` features.

    A pretext can specialise an encoder's deepest stage on itself (rotation
    at 32 px turns its last stage into the hidden layers of the turn
    classifier); reading a shallower stage shows what the rest learnt. With
    the deepest stage of a ResNet it gives what the encoder itself returns.

    Args:
        encoder: An encoder with ``forward_stages`` and ``stage_channels``.
        stage: Index into its stages, shallow to deep (for the ResNets 0 is
            the stem and 1-4 are ``layer1``-``layer4``); negative counts from
            the deepest (-1).

    Raises:
        ConfigError: ``stage`` is not one of the encoder's stages.

    Example:
        >>> StageFeatures(build_encoder("tiny"), 1)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 32])
    """

    def __init__(self, encoder: nn.Module, stage: int) -> None:
        super().__init__()
        check_stage(encoder, stage)
        self.encoder, self.stage = encoder, stage
        self.feature_dim = encoder.stage_channels[stage]

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder.forward_stages(x)[self.stage].mean(dim=(2, 3))


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    images: DecodedImages | Tensor,
    *,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    batch_size: int = 256,
    device: torch.device | None = None,
    processes: Fabric | None = None,
) -> Tensor:
    """Pooled features of uint8 images, with the encoder frozen in eval mode.

    Args:
        encoder: Any module mapping normalised ``(B, 3, S, S)`` images to ``(B, D)``.
        images: Decoded images (a whole data set or a view, read a batch at a
            time), or ``(N, 3, S, S)`` uint8 (as decoded; already centre-cropped).
        mean: Normalisation the encoder was trained with (``encoder.json``).
        std: Likewise.
        batch_size: Images per forward pass.
        device: Where to run; default :func:`default_device`.
        processes: A launched Lightning ``Fabric`` of several processes
            (``selfsup evaluate --devices N``): each computes the features of
            every N-th image and all of them get every feature, in order.
            ``None``: this process computes them all.

    Returns:
        ``(N, D)`` float32 features on the CPU.

    Example:
        >>> feats = extract_features(build_encoder("tiny"), torch.zeros(4, 3, 32, 32, dtype=torch.uint8))
        >>> tuple(feats.shape)
        (4, 64)
    """
    if processes is not None and processes.world_size > 1:
        return _shared_features(encoder, images, processes, mean=mean, std=std, batch_size=batch_size)
    device = device or default_device()
    was_training = encoder.training
    encoder.eval().to(device)  # BatchNorm uses running statistics: features do not depend on the batch
    normalizer = Normalizer(mean, std).to(device)
    chunks = []
    for uint8 in _batches(images, batch_size):
        batch = to_unit_range(uint8.to(device))
        chunks.append(encoder(normalizer(batch)).float().flatten(1).cpu())
    encoder.train(was_training)
    if not chunks:
        raise DataError("no images to compute features of.")
    return torch.cat(chunks)


def _batches(images: DecodedImages | Tensor, batch_size: int) -> Iterator[Tensor]:
    """Consecutive uint8 batches; a :class:`DecodedImages` view is gathered batch by batch, never whole.

    Example:
        >>> [len(b) for b in _batches(torch.zeros(5, 3, 2, 2, dtype=torch.uint8), 2)]
        [2, 2, 1]
    """
    for start in range(0, len(images), batch_size):
        window = slice(start, start + batch_size)
        yield images.take(window) if isinstance(images, DecodedImages) else images[window]


def _shared_features(encoder: nn.Module, images: DecodedImages | Tensor, processes: Fabric, *,
                     mean: tuple[float, float, float], std: tuple[float, float, float], batch_size: int) -> Tensor:
    """:func:`extract_features` with the images dealt out to the processes, then gathered in order."""
    n, count, rank = len(images), processes.world_size, processes.global_rank
    rows = torch.arange(rank, n, count)
    mine = images.subset(rows) if isinstance(images, DecodedImages) else images[rows]
    local = extract_features(encoder, mine, mean=mean, std=std, batch_size=batch_size, device=processes.device)
    # all_gather needs equal shapes: pad every share to the largest (the first process's).
    width = -(-n // count)
    padded = torch.zeros(width, local.shape[1], dtype=local.dtype, device=processes.device)
    padded[:len(local)] = local.to(processes.device)
    shares = [torch.empty_like(padded) for _ in range(count)]
    torch.distributed.all_gather(shares, padded)  # no gradients needed: not Lightning's autograd gather
    gathered = torch.stack(shares).cpu()
    features = torch.empty(n, local.shape[1], dtype=local.dtype)
    for share in range(count):
        features[share::count] = gathered[share, :len(range(share, n, count))]
    return features

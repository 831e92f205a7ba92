"""A light U-Net decoder that sits on any :class:`~selfsup_core.encoders.Encoder`.

The encoder stays a separate module: the decoder only consumes the feature
maps of ``encoder.forward_stages(x)``, so after pretraining the encoder is
exported alone, exactly as for a classification task.

The known trap of restoration pretexts: with skip connections from the
full-resolution stages, the decoder can rebuild the image from the shallow
stages alone and the deep layers -- the ones that are reused -- learn little.
``drop_skips`` removes the ``k`` shallowest skips (``"all"``: every one) so
the image has to pass through the deep stages; ``skip_dropout`` drops all
skips for a random share of the images at each training step, so the deep
stages learn to restore while the finished decoder still has its skips.

Example:
    >>> from selfsup_core.encoders import build_encoder
    >>> enc = build_encoder("tiny")
    >>> dec = UNetDecoder.for_encoder(enc, drop_skips=1)
    >>> x = torch.zeros(2, 3, 32, 32)
    >>> dec(enc.forward_stages(x), size=(32, 32)).shape
    torch.Size([2, 3, 32, 32])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def decoder_widths(stage_channels: Sequence[int], min_width: int = 16) -> tuple[int, ...]:
    """Decoder width at each stage's resolution: half the encoder's, at least ``min_width``."""
    return tuple(max(min_width, c // 2) for c in stage_channels)


class UNetDecoder(nn.Module):
    """Decode encoder stages back to a ``(B, 3, H, W)`` image in ``[0, 1]``.

    From the deepest stage upwards, each level up-samples to the next shallower
    stage's resolution, concatenates that stage (unless its skip is dropped)
    and applies one 3x3 conv block. A last block at input resolution and a
    1x1 conv give the image: through a sigmoid, or with ``residual=True``
    added to a ``base`` image (the degraded input), starting as the identity.

    Args:
        stage_channels: The encoder's ``stage_channels``, shallow to deep.
        drop_skips: How many of the shallowest skip connections to leave out
            (0 = classic U-Net; ``"all"`` or ``len(stage_channels) - 1`` = no
            skips at all, everything passes through the deepest stage).
        min_width: Narrowest decoder block.
        residual: Predict a correction of ``base`` instead of the image.
        skip_dropout: Probability that an image's remaining skips are all
            zeroed for one training step (drawn per image; never in eval mode).

    Raises:
        ValueError: ``drop_skips`` outside ``[0, len(stage_channels) - 1]``
            and not ``"all"``, ``skip_dropout`` outside ``[0, 1]``, or
            ``skip_dropout`` with no skip left to drop.
    """

    def __init__(
        self,
        stage_channels: Sequence[int],
        drop_skips: int | Literal["all"] = 0,
        min_width: int = 16,
        residual: bool = False,
        skip_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        stage_channels = tuple(int(c) for c in stage_channels)
        n_skips = len(stage_channels) - 1
        if drop_skips == "all":
            drop_skips = n_skips
        if isinstance(drop_skips, bool) or not isinstance(drop_skips, int) or not 0 <= drop_skips <= n_skips:
            raise ValueError(
                f"drop_skips must be 'all' or between 0 and {n_skips} (the encoder has "
                f"{len(stage_channels)} stages), got {drop_skips!r}"
            )
        if not 0.0 <= skip_dropout <= 1.0:
            raise ValueError(f"skip_dropout must be between 0 and 1, got {skip_dropout}")
        if skip_dropout > 0 and drop_skips == n_skips:
            raise ValueError(f"skip_dropout drops skips, but drop_skips={drop_skips} leaves none "
                             f"(the encoder has {n_skips}): set drop_skips below {n_skips}")
        self.stage_channels = stage_channels
        self.drop_skips = drop_skips
        self.skip_dropout = skip_dropout
        widths = decoder_widths(stage_channels, min_width)
        blocks = []
        in_channels = stage_channels[-1]
        # Level i works at stage i's resolution, for i = n-2 .. 0.
        for i in range(n_skips - 1, -1, -1):
            skip = stage_channels[i] if self.uses_skip(i) else 0
            blocks.append(_conv_block(in_channels + skip, widths[i]))
            in_channels = widths[i]
        self.up_blocks = nn.ModuleList(blocks)
        self.final_block = _conv_block(in_channels, min_width)
        self.to_image = nn.Conv2d(min_width, 3, 1)
        self.residual = residual
        if residual:
            # Start as the identity: output = base, so training only improves on it.
            nn.init.zeros_(self.to_image.weight)
            nn.init.zeros_(self.to_image.bias)

    @classmethod
    def for_encoder(cls, encoder: nn.Module, drop_skips: int | Literal["all"] = 0, residual: bool = False,
                    skip_dropout: float = 0.0) -> UNetDecoder:
        """The decoder matching ``encoder.stage_channels``."""
        return cls(encoder.stage_channels, drop_skips=drop_skips, residual=residual, skip_dropout=skip_dropout)

    def uses_skip(self, stage: int) -> bool:
        """Whether stage ``stage`` (0 = shallowest) feeds the decoder through a skip."""
        return stage >= self.drop_skips

    def forward(
        self, stages: Sequence[Tensor], size: tuple[int, int], base: Tensor | None = None
    ) -> Tensor:
        """Decode ``stages`` (from ``encoder.forward_stages``) to an image of ``size``.

        ``base`` (``(B, 3, *size)`` in ``[0, 1]``) is required with ``residual=True``;
        the residual output is not clamped (metrics and previews clamp).
        """
        if len(stages) != len(self.stage_channels):
            raise ValueError(f"expected {len(self.stage_channels)} stages, got {len(stages)}")
        x = stages[-1]
        keep = None
        if self.training and self.skip_dropout > 0:
            # One draw per image for all its skips: a dropped image is restored from the deepest stage alone.
            keep = (torch.rand(len(x), 1, 1, 1, device=x.device) >= self.skip_dropout).to(x.dtype)
        for block, i in zip(self.up_blocks, range(len(stages) - 2, -1, -1)):
            # Interpolating to the stage's exact size handles odd input sizes.
            x = F.interpolate(x, size=stages[i].shape[-2:], mode="bilinear", align_corners=False)
            if self.uses_skip(i):
                skip = stages[i] if keep is None else stages[i] * keep.to(stages[i].dtype)
                x = torch.cat([x, skip], dim=1)
            x = block(x)
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        x = self.to_image(self.final_block(x))
        if not self.residual:
            return torch.sigmoid(x)
        if base is None:
            raise ValueError("a residual decoder needs the base image")
        return base + x

"""Down-sample then up-sample each image by its own factor, as batched matmuls.

``F.interpolate`` takes one output size per call, so per-image factors would
mean one call per image. Instead each image's round trip (area down-sampling
to ``round(H / f)``, bilinear back up) is folded into one ``H x H`` matrix per
axis, zero-padded to a common shape, and applied as ``My @ x @ Mx.T``.

Example:
    >>> x = torch.rand(2, 3, 32, 32)
    >>> y = down_up(x, torch.tensor([1.0, 4.0]))
    >>> torch.allclose(y[0], x[0], atol=1e-5)
    True
"""

from __future__ import annotations

import torch
from torch import Tensor


def down_up_matrix(size: int, factor: Tensor) -> Tensor:
    """``(B, size, size)`` matrices: area down-sample by ``factor`` then bilinear up-sample.

    Args:
        size: Length of the axis.
        factor: ``(B,)`` factors >= 1; the small size is ``round(size / factor)``.
    """
    device = factor.device
    small = (size / factor.float()).round().clamp(1, size)  # (B,)
    idx = torch.arange(size, device=device, dtype=torch.float32)
    valid = idx[None, :] < small[:, None]  # (B, size) rows of the small image that exist
    # Area down-sampling: small pixel i averages [i * s, (i + 1) * s) of the big axis.
    step = (size / small)[:, None, None]
    lo, hi = idx[None, :, None] * step, (idx[None, :, None] + 1) * step
    j = idx[None, None, :]
    overlap = (torch.minimum(hi, j + 1) - torch.maximum(lo, j)).clamp_min(0)
    down = overlap / step * valid[:, :, None]  # (B, small_max, size)
    # Bilinear up-sampling with half-pixel centres (align_corners=False).
    src = ((idx[None, :] + 0.5) * small[:, None] / size - 0.5)
    src = torch.minimum(src.clamp_min(0), (small - 1)[:, None])  # (B, size)
    up = (1 - (src[:, :, None] - idx[None, None, :]).abs()).clamp_min(0) * valid[:, None, :]
    return up @ down


def down_up(images: Tensor, factor: Tensor) -> Tensor:
    """Lose detail: each image down-sampled by ``factor[b]`` and brought back to size.

    Args:
        images: ``(B, C, H, W)``.
        factor: ``(B,)`` factors >= 1 (1 leaves the image unchanged).
    """
    h, w = images.shape[-2:]
    my = down_up_matrix(h, factor).to(images.dtype)
    mx = down_up_matrix(w, factor).to(images.dtype)
    return my[:, None] @ images @ mx[:, None].transpose(-1, -2)

"""JPEG compression artefacts as batched tensor ops (no encoder, no entropy coding).

What a baseline JPEG round trip does to the pixels, nothing else: RGB to
YCbCr (JFIF), 4:2:0 chroma by 2 x 2 averaging, 8 x 8 block DCT as two
matmuls, quantisation with the IJG standard tables scaled by quality the way
libjpeg does it, then back, with libjpeg's "fancy" (triangular) chroma
up-sampling. Each image may have its own quality. Huffman coding is lossless
and skipped, which is why this runs at GPU speed.

Example:
    >>> images = torch.rand(4, 3, 32, 32)
    >>> out = jpeg(images, torch.tensor([10, 30, 50, 90]))
    >>> out.shape, bool(out.min() >= 0), bool(out.max() <= 1)
    (torch.Size([4, 3, 32, 32]), True, True)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# ITU T.81 Annex K tables, in natural (row-major) order.
LUMA_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
CHROMA_TABLE = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
)  # fmt: skip

_RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168735892, -0.331264108, 0.5),
    (0.5, -0.418687589, -0.081312411),
)


def dct_matrix(device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """The orthonormal 8-point DCT-II matrix ``D`` (``D @ x`` transforms columns).

    The JPEG forward DCT of a block ``X`` is exactly ``D @ X @ D.T``.
    """
    k = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d.to(device=device, dtype=dtype)


def quality_tables(quality: Tensor) -> tuple[Tensor, Tensor]:
    """Luma and chroma tables ``(B, 8, 8)`` for qualities 1-100, as libjpeg scales them.

    libjpeg (``jpeg_quality_scaling`` + ``jpeg_add_quant_table`` with
    baseline forced, as Pillow uses it): ``scale = 5000 / q`` below 50,
    ``200 - 2 q`` above; ``entry = clamp((base * scale + 50) // 100, 1, 255)``.
    """
    q = quality.to(torch.float32).clamp(1, 100)
    scale = torch.where(q < 50, torch.floor(5000 / q), 200 - 2 * q)[:, None, None]
    tables = []
    for base in (LUMA_TABLE, CHROMA_TABLE):
        base_t = torch.tensor(base, dtype=torch.float32, device=quality.device).view(1, 8, 8)
        tables.append(torch.floor((base_t * scale + 50) / 100).clamp(1, 255))
    return tables[0], tables[1]


def _blocks(plane: Tensor) -> Tensor:
    """``(B, H, W)`` -> ``(B, H/8, W/8, 8, 8)``."""
    b, h, w = plane.shape
    return plane.view(b, h // 8, 8, w // 8, 8).transpose(2, 3)


def _unblocks(blocks: Tensor) -> Tensor:
    b, nh, nw = blocks.shape[:3]
    return blocks.transpose(2, 3).reshape(b, nh * 8, nw * 8)


def _quantise(plane: Tensor, table: Tensor, dct2: Tensor) -> Tensor:
    """Block DCT, quantise/dequantise with ``table`` ``(B, 8, 8)``, inverse DCT.

    ``dct2`` is ``kron(D, D)``: one ``(N, 64) @ (64, 64)`` GEMM does every
    block's ``D @ X @ D.T`` at once, far faster than batches of 8 x 8 matmuls.
    """
    blocks = _blocks(plane - 128)
    shape = blocks.shape
    coeffs = (blocks.reshape(-1, 64) @ dct2.T).view(shape)
    t = table[:, None, None]
    coeffs = torch.round(coeffs / t) * t
    return _unblocks((coeffs.reshape(-1, 64) @ dct2).view(shape)) + 128


def jpeg(images: Tensor, quality: Tensor | int) -> Tensor:
    """Round-trip ``images`` through baseline JPEG (4:2:0) at ``quality``.

    Args:
        images: ``(B, 3, H, W)`` RGB in ``[0, 1]``, any float dtype, any size
            (padded to multiples of 16 by edge replication, like libjpeg).
        quality: One quality for all, or a ``(B,)`` tensor of qualities in 1-100.

    Returns:
        The decoded images, same shape, dtype and device, quantised to 8 bits.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"jpeg needs (B, 3, H, W) images, got {tuple(images.shape)}")
    b, _, h, w = images.shape
    device, dtype = images.device, images.dtype
    if not isinstance(quality, Tensor):
        quality = torch.full((b,), int(quality), device=device)
    luma_t, chroma_t = quality_tables(quality.to(device))
    # float32 throughout: bf16 would swamp the quantisation error we simulate.
    x = torch.round(images.float().clamp(0, 1) * 255)
    pad_h, pad_w = -h % 16, -w % 16
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    m = torch.tensor(_RGB_TO_YCBCR, device=device)
    ycc = torch.einsum("ij,bjhw->bihw", m, x)
    ycc[:, 1:] += 128
    d = dct_matrix(device)
    d = torch.kron(d, d)
    y = _quantise(ycc[:, 0], luma_t, d)
    chroma = F.avg_pool2d(ycc[:, 1:], 2)
    hc, wc = chroma.shape[-2:]
    chroma = torch.stack(
        [_quantise(chroma[:, i], chroma_t, d) for i in range(2)], dim=1
    )
    # Bilinear x2 with half-pixel centres is libjpeg's triangular "fancy" filter.
    chroma = F.interpolate(chroma, size=(2 * hc, 2 * wc), mode="bilinear", align_corners=False)
    ycc = torch.cat([y[:, None], chroma - 128], dim=1)
    inverse = torch.linalg.inv(torch.tensor(_RGB_TO_YCBCR, dtype=torch.float64)).to(device, torch.float32)
    rgb = torch.einsum("ij,bjhw->bihw", inverse, ycc)
    rgb = torch.round(rgb).clamp(0, 255)[:, :, :h, :w] / 255
    return rgb.to(dtype)
